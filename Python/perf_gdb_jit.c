/*
 * Naming perf trampolines in gdb: the JIT compilation interface.
 *
 * The problem
 * -----------
 * While the perf trampolines are active (Python/perf_trampoline.c), every
 * Python call runs through a copy of a tiny piece of assembly that lives in
 * anonymous memory.  perf learns what each copy stands for from a map file
 * or a jitdump, but gdb reads neither: a backtrace of a live process or of
 * a core file shows each copy as "?? ()", and without unwind information
 * for those addresses gdb may stop at the first one:
 *
 *     #5 _PyEval_EvalFrameDefault (...)    #5 _PyEval_EvalFrameDefault (...)
 *     #6 0x00007f2c1e3ff020 in ?? ()  -->  #6 py::baz:/app/demo.py ()
 *     #7 _PyEval_EvalFrameDefault (...)    #7 _PyEval_EvalFrameDefault (...)
 *     ...                                  ...
 *
 * The interface
 * -------------
 * gdb (and lldb) know how to learn about code generated at run time: the
 * process exports two symbols with agreed names,
 *
 *     struct { uint32_t version;          // 1
 *              uint32_t action_flag;      // 0 none, 1 register, 2 unregister
 *              entry *relevant_entry;     // the entry the action is about
 *              entry *first_entry; }      // a doubly-linked list of entries
 *         __jit_debug_descriptor;
 *     void __jit_debug_register_code(void);   // empty, never inlined
 *
 * and each entry {next, prev, symfile_addr, uint64_t symfile_size} points at
 * an object file kept in the process's memory.  gdb puts a breakpoint on
 * __jit_debug_register_code(): to announce an object, the process links its
 * entry, sets relevant_entry and action_flag, and calls the function; gdb
 * stops there, reads the object from memory (lazily: parts of it may be read
 * later, e.g. when it first unwinds through the code) and loads its symbols
 * and unwind information like those of a shared library.  To withdraw an
 * object, the process unlinks its entry and calls again with action 2.
 * gdb also walks the list when it attaches to a running process and when it
 * opens a core file, so names show in post-mortem backtraces too.
 *
 * The two symbols are looked up by name, in the dynamic symbol table when
 * the binary is stripped: they must have default visibility although
 * CPython builds with -fvisibility=hidden.  If another library in the
 * process defines them too (LLVM, LuaJIT, a JVM...), the dynamic linker's
 * symbol interposition decides: either every JIT shares one list (each
 * keeps its own entries consistent; they serialise with their own locks
 * only, which the protocol cannot help), or each library keeps its own
 * copy, and gdb reads every descriptor it finds.
 *
 * The objects
 * -----------
 * Two kinds of objects are registered: one per trampoline arena, made when
 * the arena is, that only says how to unwind through each of its
 * trampolines (see "Arenas" below), and the chunks' objects, which name
 * the trampolines once they have run.  Each object is a small ELF64 file
 * that describes code without carrying any (its byte order and machine
 * are the process's own).  A chunk's object is
 *
 *   ELF header        ET_DYN, EM_X86_64 or EM_AARCH64, no program headers
 *   section headers   [0] null         [1] .text        [2] .eh_frame
 *                     [3] .debug_info  [4] .debug_abbrev
 *                     [5] .debug_str   [6] .symtab      [7] .strtab
 *                     [8] .shstrtab
 *   .shstrtab         the section names
 *   .debug_abbrev     two abbreviations: the unit, a function
 *   .symtab           the null symbol, then one STT_FUNC symbol per
 *                     trampoline, in .text: its absolute address (the
 *                     symbols of an ET_DYN are addresses, not offsets in
 *                     their section) and its size
 *   .eh_frame         one CIE, one FDE per trampoline, a zero terminator
 *   .debug_info       one DWARF 4 unit in C whose children are one
 *                     DW_TAG_subprogram per trampoline: name, low_pc, size
 *   .strtab           "\0<python perf trampolines>\0py::foo:/app/demo.py\0"
 *                     and the other names; .debug_str is the same bytes
 *
 * .text is SHT_NOBITS: no code is copied.  gdb places each SHF_ALLOC
 * section at its sh_addr, so .text (from the first trampoline to the end of
 * the last) is exactly where the trampolines are.
 *
 * The .eh_frame says how each trampoline's frame is built, instruction by
 * instruction, so gdb unwinds through it into the interpreter and on to
 * main(), wherever the thread stopped.  The CIE and the FDE are those of
 * the jitdump (_PyPerf_BuildEhFrame() in Python/perf_jit_trampoline.c
 * writes both), except that the FDE's pointers are absolute (augmentation
 * "zR" with DW_EH_PE_absptr: pc_begin and pc_range take 8 bytes each).
 * The jitdump's pc-relative 4-byte pointers would not do: an object lives
 * in the heap, possibly more than 2 GiB away from the code, and has no
 * address of its own for gdb.  The FDEs differ only in pc_begin and in
 * their pointer back to the CIE: one is built once, then copied.
 *
 * Why DWARF entries besides the symbols: gdb guesses the language of a
 * symbol of .symtab from its name, and its Ada decoder claims lower-case
 * names with a dot, printing "py::baz:/app/demo.py" as
 * "py::baz:/app/demo[py]".  A function of .debug_info has the language of
 * its unit, C, whose names print as they are, and gdb's backtraces prefer
 * it to the symbol.  Each entry names its function with the offset of the
 * symbol's name (DW_FORM_strp), .debug_str being .strtab under another
 * section header: names are stored once and entries have a fixed size.
 *
 * Arenas: unwinding before the names
 * ----------------------------------
 * Names reach a watching gdb late by design (see "When to publish" below),
 * and a core file shows the list as it was when the process died.  A
 * trampoline that runs before its chunk is published must not stop the
 * backtrace: gdb, with no unwind rule for its address, would take it for
 * a frameless function and lose every outer frame, main() included ("??"
 * frames, then "Backtrace stopped").  So when Python/perf_trampoline.c
 * has filled a new arena, before any trampoline in it runs, the arena is
 * described at once, whoever watches: one registration, one gdb stop per
 * arena (thousands of trampolines), never withdrawn, since arenas are
 * never unmapped.  Its object is
 *
 *   ELF header        as a chunk's, with four section headers
 *   section headers   [0] null  [1] .text  [2] .eh_frame  [3] .shstrtab
 *   .eh_frame         the CIE, then one FDE per slot of the arena, each
 *                     with the template's rules, and the terminator
 *
 * gdb then unwinds through any trampoline of the arena, named or not: it
 * shows "?? ()" for a trampoline whose chunk has not been published yet,
 * and its name once it is.  The rules depend on the offset in the
 * template, so each slot has its FDE (40 bytes on x86-64), a copy of the
 * template's with its own pc_begin; the free room after the code of a
 * slot, which never runs, has none.
 *
 * The .text of an arena's object is empty.  gdb keeps a map of the
 * sections of all its objects by address, and of two overlapping sections
 * it keeps the one that starts first: a .text over the whole arena would
 * push the .text of every chunk in it out of the map (gdb 13 still names
 * the frames, from .debug_info, but says "unexpected overlap ... Will
 * ignore section B" under "set complaints", and any lookup through the
 * map would find the arena's nameless section).  An empty section is not
 * in the map, so the chunks' sections stay as they were; the unwinder
 * finds the FDEs by address, in every object, without a section.  Where a
 * chunk's object describes a trampoline too, its FDE says the same.
 *
 * Chunks: few objects, few stops
 * ------------------------------
 * While gdb is attached, every call of __jit_debug_register_code() is a
 * breakpoint stop, and gdb's work at each stop grows with what it holds.
 * So trampolines are grouped: a chunk describes up to CHUNK_SYMBOLS
 * trampolines that lie next to each other (the arenas hand them out in
 * address order), so that its .text covers trampoline memory only.  When a
 * trampoline is named for the first time, it joins the open chunk (or
 * opens a new one): the chunk's object is rebuilt with one more symbol and
 * registered again ("published").
 *
 * gdb may read a registered object at any time, lazily, so its bytes must
 * not change until it is withdrawn.  Each open chunk therefore has two
 * images of its object: the live one, registered, and a building one.
 * Adding a trampoline brings the building image up to date (the images
 * have the same layout, so the symbols that it lacks are copied from the
 * live one), appends the new symbol, FDE and name; publishing registers
 * the building image and only then withdraws the old live image, which
 * becomes the building one.  At every instant, each entry in the list
 * points at a complete, unchanging object, so a core dump or an attach at
 * any moment sees consistent objects.  (Between the two calls, gdb holds
 * both images, whose .text overlap: with "set complaints", it reports that
 * it ignores the newer section until the older is withdrawn, at the next
 * stop.)  Each region of an object has room for CHUNK_SYMBOLS entries and
 * the string table comes last, so appending costs a few small copies, not
 * a rebuild; a full chunk is sealed and its spare image freed.
 *
 * When to publish: at once, while no debugger watches (two calls of an
 * empty function), so that core files and attaching debuggers find every
 * name.  A watching debugger (gdb or lldb has a breakpoint instruction
 * over __jit_debug_register_code()) gets up to PUBLISH_BUDGET
 * publications per PUBLISH_INTERVAL at once, so that a few new functions
 * are named before they run; the rest of a burst of new code is published
 * when the chunk is full or by a flusher thread at most PUBLISH_INTERVAL
 * later.  The number of stops then grows with the number of new functions
 * and with time, not faster: start-up under gdb stays linear.  Meanwhile,
 * the arena's object lets gdb unwind through the trampolines it has no
 * names for yet.
 *
 * When the code objects of all the trampolines of a sealed chunk have died
 * (_PyPerfGdb_ForgetTrampoline()), the chunk is withdrawn and freed: what
 * a long-running program keeps is what describes its living code.
 *
 * Threads and fork
 * ----------------
 * Everything here runs under one pthread mutex.  The list is updated in an
 * order that keeps it walkable from first_entry at every instruction
 * (gdb may stop the process anywhere); compiler barriers keep that order.
 * A forked child keeps the descriptions (the arenas' and the chunks'),
 * which describe its own copies of the same trampolines, and describes the
 * arenas it maps itself; it re-initialises the mutex: the parent's other
 * threads do not exist in the child.  The trampolines are named with the
 * GIL held and the thread that forks holds it, so the lock is never held
 * by another thread in the middle of an update at fork time.
 *
 * Memory
 * ------
 * Objects and chunks come from malloc().  Nothing here raises or
 * reports: if an allocation fails, the trampolines named from then on are
 * simply not described (the latch `failed`), or an arena has no unwind
 * rules (its trampolines get them with their names); the objects
 * registered so far stay valid.  An arena's object takes 2.5 times the
 * arena's size with the perf map's 16-byte slots (160 KiB for 4096 slots
 * on x86-64), less with roomier slots.  The descriptions live as long as
 * the trampolines they describe: for the life of the process, since the
 * arenas are never unmapped.  Python's allocators are not used: their
 * hooks (tracemalloc's) may take the GIL, which must never be waited for
 * under gdb_lock.
 */

#include "Python.h"
#include "pycore_perf_trampoline.h"   // _PyPerfGdb_AddTrampoline(),
                                      // _PyPerf_CleanName()

#if defined(PY_HAVE_PERF_TRAMPOLINE) \
    && (defined(__x86_64__) \
        || (defined(__aarch64__) && defined(__BYTE_ORDER__) \
            && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__))
#  define GDB_JIT_SUPPORTED 1
#endif

#ifdef GDB_JIT_SUPPORTED

#include <elf.h>                      // Elf64_Ehdr, Elf64_Shdr, Elf64_Sym
#include <errno.h>                    // EINTR
#include <signal.h>                   // pthread_sigmask()
#include <pthread.h>                  // pthread_mutex_t
#include <stdint.h>                   // uint64_t, uintptr_t
#include <stdlib.h>                   // malloc(), free()
#include <string.h>                   // memcpy(), strlen()
#include <time.h>                     // clock_gettime()

#if defined(__x86_64__)
#  define ELF_MACHINE EM_X86_64
#else
#  define ELF_MACHINE EM_AARCH64
#endif


/* ---- The protocol ------------------------------------------------------- */

enum {
    GDB_JIT_NOACTION = 0,
    GDB_JIT_REGISTER = 1,
    GDB_JIT_UNREGISTER = 2,
};

typedef struct gdb_jit_entry {
    struct gdb_jit_entry *next;
    struct gdb_jit_entry *prev;
    const char *symfile_addr;
    uint64_t symfile_size;
} gdb_jit_entry;

typedef struct {
    uint32_t version;
    uint32_t action_flag;
    gdb_jit_entry *relevant_entry;
    gdb_jit_entry *first_entry;
} gdb_jit_descriptor;

/* The names are fixed by the protocol (hence no _Py prefix).  Visible from
   outside the binary despite -fvisibility=hidden; "used" keeps the
   definitions through link-time optimisation. */
#define GDB_JIT_EXPORT __attribute__((visibility("default")))

GDB_JIT_EXPORT extern gdb_jit_descriptor __jit_debug_descriptor;
GDB_JIT_EXPORT void __jit_debug_register_code(void);

GDB_JIT_EXPORT __attribute__((used)) gdb_jit_descriptor
__jit_debug_descriptor = {
    .version = 1,
    .action_flag = GDB_JIT_NOACTION,
    .relevant_entry = NULL,
    .first_entry = NULL,
};

/* gdb's breakpoint.  The empty asm with a memory clobber keeps the compiler
   from removing calls to a function without effects and makes every store
   to the descriptor happen before the call. */
GDB_JIT_EXPORT __attribute__((used, noinline)) void
__jit_debug_register_code(void)
{
    __asm__ __volatile__("" ::: "memory");
}

/* Keeps the stores to the list in program order. */
#define COMPILER_BARRIER() __asm__ __volatile__("" ::: "memory")


/* ---- The layout of an object -------------------------------------------- */

/* Trampolines per chunk. */
#define CHUNK_SYMBOLS 256
/* While a debugger watches: registrations made at once per interval (in
   nanoseconds); what comes beyond waits for the next interval. */
#define PUBLISH_INTERVAL (100 * 1000 * 1000)
#define PUBLISH_BUDGET 8
/* A trampoline joins the open chunk only if it starts less than this many
   bytes after the chunk's end: no other mapping fits in a smaller gap
   between two arenas, so .text never covers someone else's code. */
#define CHUNK_MAX_GAP 4096
/* The room for names in a new object; it grows as needed. */
#define STRTAB_INITIAL_SIZE 2048
/* The name of the compilation unit, first in .strtab (.debug_str). */
#define UNIT_NAME "<python perf trampolines>"
/* The bytes of .strtab before the first trampoline's name. */
#define STRTAB_START (1 + sizeof(UNIT_NAME))

enum {
    SEC_NULL,
    SEC_TEXT,
    SEC_EH_FRAME,
    SEC_DEBUG_INFO,
    SEC_DEBUG_ABBREV,
    SEC_DEBUG_STR,
    SEC_SYMTAB,
    SEC_STRTAB,
    SEC_SHSTRTAB,
    SEC_COUNT
};

static const char *const section_names[SEC_COUNT] = {
    "", ".text", ".eh_frame", ".debug_info", ".debug_abbrev", ".debug_str",
    ".symtab", ".strtab", ".shstrtab",
};

/* DWARF 4 debugging information entries: a C compilation unit whose
   children are the trampolines. */
#define DW_TAG_compile_unit     0x11
#define DW_TAG_subprogram       0x2e
#define DW_CHILDREN_no          0
#define DW_CHILDREN_yes         1
#define DW_AT_name              0x03
#define DW_AT_language          0x13
#define DW_AT_low_pc            0x11
#define DW_AT_high_pc           0x12
#define DW_AT_external          0x3f
#define DW_FORM_addr            0x01
#define DW_FORM_data2           0x05
#define DW_FORM_data4           0x06
#define DW_FORM_data8           0x07
#define DW_FORM_strp            0x0e
#define DW_FORM_flag_present    0x19
#define DW_LANG_C99             0x000c

enum { ABBREV_UNIT = 1, ABBREV_FUNCTION = 2 };

/* Every code and value fits in one byte of LEB128. */
static const uint8_t debug_abbrev[] = {
    ABBREV_UNIT, DW_TAG_compile_unit, DW_CHILDREN_yes,
        DW_AT_name, DW_FORM_strp,
        DW_AT_language, DW_FORM_data2,
        DW_AT_low_pc, DW_FORM_addr,
        DW_AT_high_pc, DW_FORM_data8,       // a length, from DWARF 4 on
        0, 0,
    ABBREV_FUNCTION, DW_TAG_subprogram, DW_CHILDREN_no,
        DW_AT_name, DW_FORM_strp,
        DW_AT_external, DW_FORM_flag_present,
        DW_AT_low_pc, DW_FORM_addr,
        DW_AT_high_pc, DW_FORM_data4,
        0, 0,
    0,
};

/* The unit header (unit_length 4, version 2, debug_abbrev_offset 4,
   address_size 1), then the unit's entry. */
#define UNIT_HEADER_SIZE 11
#define UNIT_LOW_PC (UNIT_HEADER_SIZE + 1 + 4 + 2)
#define UNIT_HIGH_PC (UNIT_LOW_PC + 8)
#define UNIT_SIZE (UNIT_HIGH_PC + 8)
/* A trampoline's entry: abbreviation, name, low_pc, high_pc. */
#define FUNCTION_DIE_SIZE (1 + 4 + 8 + 4)

#define ROUND_UP_8(n) _Py_SIZE_ROUND_UP((n), 8)

/* Where each region starts in an object, and the unwind template.  The
   same for every object: computed once. */
static struct {
    int ready;
    size_t shstrtab_offset;
    size_t shstrtab_size;
    uint32_t name_offset[SEC_COUNT];
    size_t debug_abbrev_offset;
    size_t symtab_offset;
    size_t eh_frame_offset;
    size_t cie_size;
    size_t fde_size;
    size_t pc_begin_in_fde;         // offset of pc_begin in an FDE
    size_t debug_info_offset;
    size_t strtab_offset;           // the end of the fixed part
    _PyPerf_EhFrame eh;             // the layout of eh_template
    uint8_t eh_template[128];       // a CIE, an FDE, a terminator
} layout;

static int
compute_layout(void)
{
    if (_PyPerf_BuildEhFrame(layout.eh_template, sizeof(layout.eh_template),
                             _PyPerf_EH_ABSOLUTE, &layout.eh) < 0)
    {
        return -1;
    }
    layout.cie_size = layout.eh.fde_offset;
    layout.fde_size = layout.eh.size - 4 - layout.eh.fde_offset;
    layout.pc_begin_in_fde = layout.eh.pc_begin_offset - layout.eh.fde_offset;

    size_t offset = sizeof(Elf64_Ehdr) + SEC_COUNT * sizeof(Elf64_Shdr);
    layout.shstrtab_offset = offset;
    size_t size = 0;
    for (int i = 0; i < SEC_COUNT; i++) {
        layout.name_offset[i] = (uint32_t)size;
        size += strlen(section_names[i]) + 1;
    }
    layout.shstrtab_size = size;
    offset += size;
    layout.debug_abbrev_offset = offset;
    offset = ROUND_UP_8(offset + sizeof(debug_abbrev));
    layout.symtab_offset = offset;
    offset += (1 + CHUNK_SYMBOLS) * sizeof(Elf64_Sym);
    layout.eh_frame_offset = offset;
    offset += layout.cie_size + CHUNK_SYMBOLS * layout.fde_size + 4;
    layout.debug_info_offset = offset;
    offset += UNIT_SIZE + CHUNK_SYMBOLS * FUNCTION_DIE_SIZE + 1;
    layout.strtab_offset = ROUND_UP_8(offset);
    layout.ready = 1;
    return 0;
}

static Elf64_Shdr *
section_header(unsigned char *object, int index)
{
    /* Offset 64 + 64 * index of a malloc() block: aligned. */
    return (Elf64_Shdr *)(object + sizeof(Elf64_Ehdr)) + index;
}

/* Section header number index, for the section that chunk objects have
   at index name (the names are those of section_names[]). */
static Elf64_Shdr *
new_section(unsigned char *object, int index, int name, uint32_t type,
            size_t offset, size_t alignment)
{
    Elf64_Shdr *header = section_header(object, index);
    header->sh_name = layout.name_offset[name];
    header->sh_type = type;
    header->sh_offset = offset;
    header->sh_addralign = alignment;
    return header;
}

/* Write the size low-order bytes of value at *pos, in the byte order of
   the process (little-endian: see GDB_JIT_SUPPORTED). */
static void
put_le(unsigned char *object, size_t *pos, uint64_t value, size_t size)
{
    memcpy(object + *pos, &value, size);
    *pos += size;
}

/* The ELF header of an object with count section headers, the last one
   for .shstrtab, which holds every name of section_names[]. */
static void
write_elf_header(unsigned char *object, int count)
{
    Elf64_Ehdr *header = (Elf64_Ehdr *)object;
    memcpy(header->e_ident, ELFMAG, SELFMAG);
    header->e_ident[EI_CLASS] = ELFCLASS64;
    header->e_ident[EI_DATA] = ELFDATA2LSB;
    header->e_ident[EI_VERSION] = EV_CURRENT;
    header->e_ident[EI_OSABI] = ELFOSABI_NONE;
    header->e_type = ET_DYN;
    header->e_machine = ELF_MACHINE;
    header->e_version = EV_CURRENT;
    header->e_shoff = sizeof(Elf64_Ehdr);
    header->e_ehsize = sizeof(Elf64_Ehdr);
    header->e_shentsize = sizeof(Elf64_Shdr);
    header->e_shnum = (Elf64_Half)count;
    header->e_shstrndx = (Elf64_Half)(count - 1);

    Elf64_Shdr *sh = new_section(object, count - 1, SEC_SHSTRTAB, SHT_STRTAB,
                                 layout.shstrtab_offset, 1);
    sh->sh_size = layout.shstrtab_size;
    for (int i = 0; i < SEC_COUNT; i++) {
        memcpy(object + layout.shstrtab_offset + layout.name_offset[i],
               section_names[i], strlen(section_names[i]) + 1);
    }
}

/* Write the parts of a chunk's object that never change: the ELF header,
   the section headers but their sizes, the section names, the
   abbreviations, the null symbol, the CIE, the unit's entry and its
   name. */
static void
write_fixed_part(unsigned char *object)
{
    memset(object, 0, layout.strtab_offset);
    write_elf_header(object, SEC_COUNT);

    Elf64_Shdr *sh;
    sh = new_section(object, SEC_TEXT, SEC_TEXT, SHT_NOBITS,
                     layout.strtab_offset, 16);
    sh->sh_flags = SHF_ALLOC | SHF_EXECINSTR;
    new_section(object, SEC_EH_FRAME, SEC_EH_FRAME, SHT_PROGBITS,
                layout.eh_frame_offset, 8);
    new_section(object, SEC_DEBUG_INFO, SEC_DEBUG_INFO, SHT_PROGBITS,
                layout.debug_info_offset, 1);
    sh = new_section(object, SEC_DEBUG_ABBREV, SEC_DEBUG_ABBREV, SHT_PROGBITS,
                     layout.debug_abbrev_offset, 1);
    sh->sh_size = sizeof(debug_abbrev);
    /* .debug_str and .strtab are the same bytes: the entries name the
       trampolines with the symbols' names. */
    sh = new_section(object, SEC_DEBUG_STR, SEC_DEBUG_STR, SHT_PROGBITS,
                     layout.strtab_offset, 1);
    sh->sh_flags = SHF_MERGE | SHF_STRINGS;
    sh->sh_entsize = 1;
    sh = new_section(object, SEC_SYMTAB, SEC_SYMTAB, SHT_SYMTAB,
                     layout.symtab_offset, 8);
    sh->sh_link = SEC_STRTAB;
    sh->sh_info = 1;                // the first global symbol
    sh->sh_entsize = sizeof(Elf64_Sym);
    new_section(object, SEC_STRTAB, SEC_STRTAB, SHT_STRTAB,
                layout.strtab_offset, 1);

    memcpy(object + layout.debug_abbrev_offset, debug_abbrev,
           sizeof(debug_abbrev));
    /* The null symbol is all zeros already. */
    memcpy(object + layout.eh_frame_offset, layout.eh_template,
           layout.cie_size);

    /* The unit: its length, low_pc and high_pc are set by finish(). */
    size_t pos = layout.debug_info_offset + 4;
    put_le(object, &pos, 4, 2);                 // version
    put_le(object, &pos, 0, 4);                 // debug_abbrev_offset
    put_le(object, &pos, 8, 1);                 // address_size
    put_le(object, &pos, ABBREV_UNIT, 1);
    put_le(object, &pos, 1, 4);                 // name: UNIT_NAME
    put_le(object, &pos, DW_LANG_C99, 2);
    assert(pos == layout.debug_info_offset + UNIT_LOW_PC);

    /* .strtab: the empty name, then the unit's name. */
    object[layout.strtab_offset] = '\0';
    memcpy(object + layout.strtab_offset + 1, UNIT_NAME, sizeof(UNIT_NAME));
}

/* Write at offset fde of object the FDE of the trampoline at code, for
   the .eh_frame that starts at offset eh_frame with the CIE. */
static void
write_fde(unsigned char *object, size_t eh_frame, size_t fde, uintptr_t code)
{
    memcpy(object + fde, layout.eh_template + layout.eh.fde_offset,
           layout.fde_size);
    /* The CIE pointer: from this field back to the CIE. */
    uint32_t cie_pointer = (uint32_t)(fde + 4 - eh_frame);
    memcpy(object + fde + 4, &cie_pointer, 4);
    uint64_t pc_begin = (uint64_t)code;
    memcpy(object + fde + layout.pc_begin_in_fde, &pc_begin, 8);
}

/* ---- Chunks and their images -------------------------------------------- */

/* One version of a chunk's object. */
typedef struct {
    gdb_jit_entry entry;            // in gdb's list while registered
    unsigned char *object;          // the ELF object, or NULL
    size_t capacity;                // bytes allocated at object
    size_t strtab_size;             // bytes of .strtab in use
    int count;                      // trampolines described
    int registered;
} image;

typedef struct chunk {
    struct chunk *older;            // the chunk opened before this one
    struct chunk *newer;            // the chunk opened after it
    image images[2];
    int live;                       // the registered image, or -1
    int sealed;                     // full, or another chunk was opened
    int alive;                      // its trampolines whose code lives
    uintptr_t start;                // the trampolines described
    uintptr_t end;
} chunk;

static pthread_mutex_t gdb_lock = PTHREAD_MUTEX_INITIALIZER;

static struct {
    chunk *newest;
    int failed;                     // an allocation failed: add no more
    int flusher_started;            // see flusher_main()
    int flush_due;                  // the flusher will publish soon
    uint64_t window_start;          // see may_publish_now()
    int window_publishes;
} gdb_state;

/* Whether a debugger has a breakpoint on __jit_debug_register_code(), so
   that every registration is a stop: gdb and lldb write a breakpoint
   instruction over its first instruction while the process runs. */
static int
debugger_watching(void)
{
    const volatile unsigned char *code =
        (const volatile unsigned char *)(uintptr_t)__jit_debug_register_code;
#if defined(__x86_64__)
    return code[0] == 0xcc;                     // int3
#else
    uint32_t insn = (uint32_t)code[0] | (uint32_t)code[1] << 8
                    | (uint32_t)code[2] << 16 | (uint32_t)code[3] << 24;
    return (insn & 0xffe0001f) == 0xd4200000;   // brk #imm
#endif
}

static uint64_t
now_ns(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC_COARSE, &ts) != 0) {
        return 0;
    }
    return (uint64_t)ts.tv_sec * 1000000000 + (uint64_t)ts.tv_nsec;
}

static void
notify(gdb_jit_entry *entry, uint32_t action)
{
    __jit_debug_descriptor.relevant_entry = entry;
    __jit_debug_descriptor.action_flag = action;
    __jit_debug_register_code();
    __jit_debug_descriptor.action_flag = GDB_JIT_NOACTION;
}

static void
register_entry(gdb_jit_entry *entry)
{
    gdb_jit_entry *first = __jit_debug_descriptor.first_entry;
    entry->prev = NULL;
    entry->next = first;
    /* Complete before anything points to it. */
    COMPILER_BARRIER();
    if (first != NULL) {
        first->prev = entry;
    }
    __jit_debug_descriptor.first_entry = entry;
    notify(entry, GDB_JIT_REGISTER);
}

static void
register_image(image *img)
{
    img->registered = 1;
    register_entry(&img->entry);
}

static void
unregister_image(image *img)
{
    gdb_jit_entry *entry = &img->entry;
    if (entry->prev != NULL) {
        entry->prev->next = entry->next;
    }
    else {
        __jit_debug_descriptor.first_entry = entry->next;
    }
    if (entry->next != NULL) {
        entry->next->prev = entry->prev;
    }
    COMPILER_BARRIER();
    img->registered = 0;
    notify(entry, GDB_JIT_UNREGISTER);
}

static void
free_image(image *img)
{
    assert(!img->registered);
    free(img->object);
    img->object = NULL;
    img->capacity = 0;
    img->strtab_size = 0;
    img->count = 0;
}

/* Make room in img for a string table of strtab_size bytes; allocate and
   lay out the object first if needed.  img must not be registered.  Return
   0, or -1 if out of memory (img unchanged). */
static int
reserve(image *img, size_t strtab_size)
{
    assert(!img->registered);
    size_t needed = layout.strtab_offset + strtab_size;
    if (img->object != NULL && needed <= img->capacity) {
        return 0;
    }
    size_t capacity = layout.strtab_offset + STRTAB_INITIAL_SIZE;
    if (img->object != NULL) {
        capacity = img->capacity * 2;
    }
    if (capacity < needed) {
        capacity = needed;
    }
    unsigned char *object = realloc(img->object, capacity);
    if (object == NULL) {
        return -1;
    }
    if (img->object == NULL) {
        write_fixed_part(object);
        img->strtab_size = STRTAB_START;
        img->count = 0;
    }
    img->object = object;
    img->capacity = capacity;
    return 0;
}

static size_t
symbol_offset(int index)
{
    return layout.symtab_offset + (size_t)(1 + index) * sizeof(Elf64_Sym);
}

static size_t
fde_offset(int index)
{
    return layout.eh_frame_offset + layout.cie_size
           + (size_t)index * layout.fde_size;
}

static size_t
die_offset(int index)
{
    return layout.debug_info_offset + UNIT_SIZE
           + (size_t)index * FUNCTION_DIE_SIZE;
}

/* Copy into to what from describes and to lacks: the objects have the same
   layout and to's content is a prefix of from's. */
static void
catch_up(image *to, const image *from)
{
    assert(to->count <= from->count);
    int count = from->count - to->count;
    if (count == 0) {
        return;
    }
    memcpy(to->object + symbol_offset(to->count),
           from->object + symbol_offset(to->count),
           (size_t)count * sizeof(Elf64_Sym));
    memcpy(to->object + fde_offset(to->count),
           from->object + fde_offset(to->count),
           (size_t)count * layout.fde_size);
    memcpy(to->object + die_offset(to->count),
           from->object + die_offset(to->count),
           (size_t)count * FUNCTION_DIE_SIZE);
    memcpy(to->object + layout.strtab_offset + to->strtab_size,
           from->object + layout.strtab_offset + to->strtab_size,
           from->strtab_size - to->strtab_size);
    to->count = from->count;
    to->strtab_size = from->strtab_size;
}

/* Describe one more trampoline in img (room reserved). */
static void
append(image *img, uintptr_t code, size_t size, const char *name,
       size_t name_size)
{
    int index = img->count;
    assert(index < CHUNK_SYMBOLS);

    uint32_t name_offset = (uint32_t)img->strtab_size;
    Elf64_Sym symbol = {
        .st_name = name_offset,
        .st_info = ELF64_ST_INFO(STB_GLOBAL, STT_FUNC),
        .st_other = STV_DEFAULT,
        .st_shndx = SEC_TEXT,
        .st_value = (Elf64_Addr)code,
        .st_size = (Elf64_Xword)size,
    };
    memcpy(img->object + symbol_offset(index), &symbol, sizeof(symbol));

    /* Control characters replaced, as in the perf map: gdb prints names
       as they are, to the terminal of whoever reads the backtrace. */
    char *dest = (char *)img->object + layout.strtab_offset + img->strtab_size;
    _PyPerf_CleanName(dest, name, name_size - 1);
    dest[name_size - 1] = '\0';
    img->strtab_size += name_size;

    write_fde(img->object, layout.eh_frame_offset, fde_offset(index), code);

    size_t pos = die_offset(index);
    put_le(img->object, &pos, ABBREV_FUNCTION, 1);
    put_le(img->object, &pos, name_offset, 4);
    put_le(img->object, &pos, (uint64_t)code, 8);
    put_le(img->object, &pos, size, 4);
    img->count++;
}

/* Set the sizes that depend on the content, and point the entry at it. */
static void
finish(image *img, const chunk *c)
{
    unsigned char *object = img->object;
    size_t eh_frame_size = layout.cie_size
                           + (size_t)img->count * layout.fde_size;
    memset(object + layout.eh_frame_offset + eh_frame_size, 0, 4);
    eh_frame_size += 4;                         // the terminator

    size_t debug_info_size = UNIT_SIZE
                             + (size_t)img->count * FUNCTION_DIE_SIZE;
    object[layout.debug_info_offset + debug_info_size] = 0; // no more DIEs
    debug_info_size += 1;
    size_t pos = layout.debug_info_offset;
    put_le(object, &pos, debug_info_size - 4, 4);   // unit_length
    pos = layout.debug_info_offset + UNIT_LOW_PC;
    put_le(object, &pos, c->start, 8);
    put_le(object, &pos, c->end - c->start, 8);     // high_pc: a length

    Elf64_Shdr *text = section_header(object, SEC_TEXT);
    text->sh_addr = (Elf64_Addr)c->start;
    text->sh_size = (Elf64_Xword)(c->end - c->start);
    section_header(object, SEC_EH_FRAME)->sh_size = eh_frame_size;
    section_header(object, SEC_DEBUG_INFO)->sh_size = debug_info_size;
    section_header(object, SEC_DEBUG_STR)->sh_size = img->strtab_size;
    section_header(object, SEC_SYMTAB)->sh_size =
        (1 + (size_t)img->count) * sizeof(Elf64_Sym);
    section_header(object, SEC_STRTAB)->sh_size = img->strtab_size;

    img->entry.symfile_addr = (const char *)object;
    img->entry.symfile_size = layout.strtab_offset + img->strtab_size;
}

/* Register what c's building image describes (more than its live image)
   in place of the live image. */
static void
publish(chunk *c)
{
    int building = (c->live == 0) ? 1 : 0;
    image *img = &c->images[building];
    finish(img, c);
    /* The new image first: the names never disappear from the list. */
    register_image(img);
    if (c->live >= 0) {
        unregister_image(&c->images[c->live]);
    }
    c->live = building;
}

static int
has_unpublished(const chunk *c)
{
    int building = (c->live == 0) ? 1 : 0;
    int published = (c->live >= 0) ? c->images[c->live].count : 0;
    return c->images[building].count > published;
}

/* No more trampolines for c: publish what it has, free its spare image. */
static void
seal(chunk *c)
{
    if (c->sealed) {
        return;
    }
    if (has_unpublished(c)) {
        publish(c);
    }
    c->sealed = 1;
    for (int i = 0; i < 2; i++) {
        if (i != c->live) {
            free_image(&c->images[i]);
        }
    }
}

/* Withdraw c and free it: none of its trampolines can run anymore. */
static void
drop(chunk *c)
{
    for (int i = 0; i < 2; i++) {
        if (c->images[i].registered) {
            unregister_image(&c->images[i]);
        }
        free_image(&c->images[i]);
    }
    if (c->newer != NULL) {
        c->newer->older = c->older;
    }
    else {
        gdb_state.newest = c->older;
    }
    if (c->older != NULL) {
        c->older->newer = c->newer;
    }
    free(c);
}

/* Without a debugger watching, registering costs two calls of an empty
   function: do it at once, so that a core dump or an attach at any moment
   finds every name.  While one watches, each registration is a stop whose
   cost grows with what gdb holds: up to PUBLISH_BUDGET registrations per
   PUBLISH_INTERVAL go at once (a few new functions are named at once),
   the rest of a burst of new code waits for the flusher (or for a full
   chunk). */
static int
may_publish_now(void)
{
    if (!debugger_watching()) {
        return 1;
    }
    uint64_t now = now_ns();
    if (now - gdb_state.window_start >= PUBLISH_INTERVAL) {
        gdb_state.window_start = now;
        gdb_state.window_publishes = 0;
    }
    if (gdb_state.window_publishes < PUBLISH_BUDGET) {
        gdb_state.window_publishes++;
        return 1;
    }
    return 0;
}

/* The flusher: a thread, started the first time a registration is held
   back, that publishes the end of a burst, so that what was added reaches
   the watching debugger at most PUBLISH_INTERVAL later even if no new code
   follows.  It only takes gdb_lock: no Python state, no GIL.  It blocks
   every signal, so the program's signals keep going to its own threads. */
static pthread_cond_t flush_wanted = PTHREAD_COND_INITIALIZER;

static void *
flusher_main(void *Py_UNUSED(arg))
{
    pthread_mutex_lock(&gdb_lock);
    for (;;) {
        while (!gdb_state.flush_due) {
            pthread_cond_wait(&flush_wanted, &gdb_lock);
        }
        pthread_mutex_unlock(&gdb_lock);
        struct timespec delay = {0, PUBLISH_INTERVAL};
        while (nanosleep(&delay, &delay) != 0 && errno == EINTR) {
        }
        pthread_mutex_lock(&gdb_lock);
        gdb_state.flush_due = 0;
        chunk *c = gdb_state.newest;
        if (c != NULL && !c->sealed && has_unpublished(c)) {
            publish(c);
        }
    }
    return NULL;
}

/* Ask the flusher to publish soon; with gdb_lock held. */
static void
schedule_flush(void)
{
    if (!gdb_state.flusher_started) {
        pthread_attr_t attr;
        if (pthread_attr_init(&attr) != 0) {
            return;
        }
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, 64 * 1024);
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        pthread_t thread;
        gdb_state.flusher_started =
            (pthread_create(&thread, &attr, flusher_main, NULL) == 0);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        pthread_attr_destroy(&attr);
        if (!gdb_state.flusher_started) {
            return;             // published with the next new code
        }
    }
    if (!gdb_state.flush_due) {
        gdb_state.flush_due = 1;
        pthread_cond_signal(&flush_wanted);
    }
}

static int
fits(const chunk *c, uintptr_t code)
{
    return !c->sealed && code >= c->end && code - c->end < CHUNK_MAX_GAP;
}

static chunk *
add_locked(uintptr_t code, size_t size, const char *name)
{
    if (!layout.ready && compute_layout() < 0) {
        return NULL;
    }
    chunk *c = gdb_state.newest;
    if (c == NULL || !fits(c, code)) {
        chunk *fresh = calloc(1, sizeof(chunk));
        if (fresh == NULL) {
            return NULL;
        }
        if (c != NULL) {
            seal(c);
            c->newer = fresh;
        }
        fresh->live = -1;
        fresh->start = code;
        fresh->end = code;
        fresh->older = c;
        gdb_state.newest = c = fresh;
    }

    image *building = &c->images[(c->live == 0) ? 1 : 0];
    image *live = (c->live >= 0) ? &c->images[c->live] : NULL;
    size_t name_size = strlen(name) + 1;
    /* The building image holds what the live one holds, and maybe more;
       a spare that was live before holds less and catches up. */
    size_t strtab_size = (building->object != NULL) ? building->strtab_size
                                                    : STRTAB_START;
    if (live != NULL && live->strtab_size > strtab_size) {
        strtab_size = live->strtab_size;
    }
    if (reserve(building, strtab_size + name_size) < 0) {
        return NULL;
    }

    /* Nothing can fail from here on. */
    if (live != NULL && building->count < live->count) {
        catch_up(building, live);
    }
    append(building, code, size, name, name_size);
    c->end = code + size;
    c->alive++;

    if (building->count == CHUNK_SYMBOLS) {
        seal(c);
    }
    else if (may_publish_now()) {
        publish(c);
    }
    else {
        schedule_flush();
    }
    return c;
}

/* ---- Arenas: unwinding before the names --------------------------------- */

/* The sections of an arena's object. */
enum {
    ARENA_SEC_NULL,
    ARENA_SEC_TEXT,
    ARENA_SEC_EH_FRAME,
    ARENA_SEC_SHSTRTAB,
    ARENA_SEC_COUNT
};

/* An arena's object, registered for good. */
typedef struct {
    gdb_jit_entry entry;
    unsigned char object[];
} arena_description;

static void
add_arena_locked(uintptr_t memory, size_t slot_size, size_t count)
{
    if (!layout.ready && compute_layout() < 0) {
        return;
    }
    /* The ELF header, the section headers, the section names: laid out
       as in a chunk's object. */
    size_t eh_frame = ROUND_UP_8(layout.shstrtab_offset
                                 + layout.shstrtab_size);
    size_t size = eh_frame + layout.cie_size + count * layout.fde_size + 4;
    arena_description *d = malloc(sizeof(arena_description) + size);
    if (d == NULL) {
        return;                 // the names will come without it
    }
    unsigned char *object = d->object;
    memset(object, 0, eh_frame);
    write_elf_header(object, ARENA_SEC_COUNT);
    /* An empty .text, in no lookup: one over the arena would push the
       chunks' out of gdb's map of sections (see "Arenas" above). */
    Elf64_Shdr *sh = new_section(object, ARENA_SEC_TEXT, SEC_TEXT,
                                 SHT_NOBITS, size, 16);
    sh->sh_flags = SHF_ALLOC | SHF_EXECINSTR;
    sh->sh_addr = (Elf64_Addr)memory;
    sh = new_section(object, ARENA_SEC_EH_FRAME, SEC_EH_FRAME, SHT_PROGBITS,
                     eh_frame, 8);
    sh->sh_size = size - eh_frame;

    memcpy(object + eh_frame, layout.eh_template, layout.cie_size);
    size_t fde = eh_frame + layout.cie_size;
    for (size_t i = 0; i < count; i++) {
        write_fde(object, eh_frame, fde, memory + i * slot_size);
        fde += layout.fde_size;
    }
    memset(object + fde, 0, 4);                 // the terminator

    d->entry.symfile_addr = (const char *)object;
    d->entry.symfile_size = size;
    register_entry(&d->entry);
}

void
_PyPerfGdb_AddArena(const void *memory, size_t slot_size, size_t count)
{
    pthread_mutex_lock(&gdb_lock);
    add_arena_locked((uintptr_t)memory, slot_size, count);
    pthread_mutex_unlock(&gdb_lock);
}

void *
_PyPerfGdb_AddTrampoline(const void *code, size_t size, const char *name)
{
    chunk *c = NULL;
    pthread_mutex_lock(&gdb_lock);
    if (!gdb_state.failed) {
        c = add_locked((uintptr_t)code, size, name);
        if (c == NULL) {
            gdb_state.failed = 1;
        }
    }
    pthread_mutex_unlock(&gdb_lock);
    return c;
}

void
_PyPerfGdb_ForgetTrampoline(void *handle)
{
    if (handle == NULL) {
        return;
    }
    pthread_mutex_lock(&gdb_lock);
    chunk *c = handle;
    c->alive--;
    if (c->sealed && c->alive == 0) {
        drop(c);
    }
    pthread_mutex_unlock(&gdb_lock);
}

void
_PyPerfGdb_Flush(void)
{
    pthread_mutex_lock(&gdb_lock);
    chunk *c = gdb_state.newest;
    if (c != NULL && !c->sealed && has_unpublished(c)) {
        publish(c);
    }
    pthread_mutex_unlock(&gdb_lock);
}

void
_PyPerfGdb_BeforeFork(void)
{
    pthread_mutex_lock(&gdb_lock);
}

void
_PyPerfGdb_AfterForkParent(void)
{
    pthread_mutex_unlock(&gdb_lock);
}

void
_PyPerfGdb_AfterForkChild(void)
{
    _PyPerf_ResetLockAfterFork(&gdb_lock);
    /* The parent's flusher thread does not exist here: the child starts
       its own when it needs one. */
    pthread_cond_init(&flush_wanted, NULL);
    gdb_state.flusher_started = 0;
    gdb_state.flush_due = 0;
}

#else  /* !GDB_JIT_SUPPORTED */

/* No trampolines, or an architecture without unwind rules: nothing to
   describe. */

void
_PyPerfGdb_AddArena(const void *Py_UNUSED(memory), size_t Py_UNUSED(slot_size),
                    size_t Py_UNUSED(count))
{
}

void *
_PyPerfGdb_AddTrampoline(const void *Py_UNUSED(code), size_t Py_UNUSED(size),
                         const char *Py_UNUSED(name))
{
    return NULL;
}

void
_PyPerfGdb_ForgetTrampoline(void *Py_UNUSED(handle))
{
}

void
_PyPerfGdb_Flush(void)
{
}

void
_PyPerfGdb_BeforeFork(void)
{
}

void
_PyPerfGdb_AfterForkParent(void)
{
}

void
_PyPerfGdb_AfterForkChild(void)
{
}

#endif /* GDB_JIT_SUPPORTED */
