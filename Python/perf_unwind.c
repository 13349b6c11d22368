/*
 * Unwind information for the perf trampolines.
 *
 * The problem
 * -----------
 * A trampoline (Python/asm_trampoline.S, copied by Python/perf_trampoline.c)
 * lives in anonymous memory, where no .eh_frame says how to find its
 * caller.  An unwinder that works from DWARF call frame information (perf
 * with --call-graph dwarf after `perf inject --jit`, gdb) stops at the
 * first trampoline unless it is told how the trampoline's frame is built.
 * Two users need that description: the jitdump backend
 * (Python/perf_jit_trampoline.c) and the gdb descriptions
 * (Python/perf_gdb_jit.c).  It lives here, where both depend on it and it
 * depends on neither.
 *
 * The design
 * ----------
 * The template exports labels at the instruction boundaries where the
 * canonical frame address (CFA) changes; _PyPerf_GetTrampolineLayout()
 * reads them, and the rules below are built from them, so they stay true if
 * the template changes.  On x86-64, with
 * "push %rbp; mov %rsp,%rbp; call *%rcx; pop %rbp; ret":
 *
 *     start         CFA = rsp + 8      return address at CFA - 8
 *     frame_pushed  CFA = rsp + 16     rbp at CFA - 16
 *     frame_set     CFA = rbp + 16
 *     frame_popped  CFA = rsp + 8      rbp restored
 *
 * and on AArch64, with "stp x29,x30,[sp,-16]!; mov x29,sp; blr x3;
 * ldp x29,x30,[sp],16; ret":
 *
 *     start         CFA = sp + 0       return address in x30
 *     frame_pushed  CFA = sp + 16      x29 at CFA - 16, x30 at CFA - 8
 *     frame_set     CFA = x29 + 16
 *     frame_popped  CFA = sp + 0       x29, x30 restored
 *
 * The formats
 * -----------
 * _PyPerf_BuildEhFrame() writes one CIE, one FDE and a zero terminator (an
 * .eh_frame section), with the FDE's code pointers either relative
 * (DW_EH_PE_pcrel | DW_EH_PE_sdata4) or absolute (DW_EH_PE_absptr, for gdb,
 * whose objects live in ordinary memory far from the code).
 *
 * _PyPerf_BuildInjectUnwind() adds an .eh_frame_hdr with a one-entry search
 * table, for the jitdump's unwinding record.  `perf inject --jit` lays each
 * generated ELF file out as
 *
 *     [ code (code_size bytes) | .eh_frame | .eh_frame_hdr ]
 *
 * so every relative pointer is known from code_size alone: the bytes are
 * the same for every trampoline and are built once.
 */

#include "Python.h"
#include "pycore_perf_trampoline.h"   // _PyPerf_TrampolineLayout

#ifdef PY_HAVE_PERF_TRAMPOLINE

#include <stdint.h>                   // uint8_t
#include <string.h>                   // memcpy()

/* The template and its labels, from Python/asm_trampoline.S. */
extern char _Py_trampoline_func_start[];
extern char _Py_trampoline_frame_pushed[];
extern char _Py_trampoline_frame_set[];
extern char _Py_trampoline_frame_popped[];
extern char _Py_trampoline_func_end[];

static _PyPerf_TrampolineLayout layout;

const _PyPerf_TrampolineLayout *
_PyPerf_GetTrampolineLayout(void)
{
    if (layout.code_size == 0) {
        char *start = _Py_trampoline_func_start;
        layout.start = start;
        layout.frame_pushed = (size_t)(_Py_trampoline_frame_pushed - start);
        layout.frame_set = (size_t)(_Py_trampoline_frame_set - start);
        layout.frame_popped = (size_t)(_Py_trampoline_frame_popped - start);
        layout.code_size = (size_t)(_Py_trampoline_func_end - start);
    }
    return &layout;
}


/* DWARF call frame instructions and pointer encodings. */
#define DW_CFA_nop                  0x00
#define DW_CFA_advance_loc1         0x02
#define DW_CFA_advance_loc2         0x03
#define DW_CFA_def_cfa              0x0c
#define DW_CFA_def_cfa_register     0x0d
#define DW_CFA_def_cfa_offset       0x0e
#define DW_CFA_advance_loc          0x40    // | delta
#define DW_CFA_offset               0x80    // | register
#define DW_CFA_restore              0xc0    // | register
#define DW_EH_PE_absptr             0x00
#define DW_EH_PE_udata4             0x03
#define DW_EH_PE_sdata4             0x0b
#define DW_EH_PE_pcrel              0x10
#define DW_EH_PE_datarel            0x30

#if defined(__x86_64__)
#  define CODE_ALIGNMENT 1
#  define DATA_ALIGNMENT (-8)
#  define REG_SP 7
#  define REG_FP 6                      // rbp
#  define REG_RA 16                     // rip
#  define ENTRY_CFA_OFFSET 8            // the call pushed the return address
#  define FRAME_CFA_OFFSET 16           // and the trampoline pushed rbp
#elif defined(__aarch64__)
#  define CODE_ALIGNMENT 4
#  define DATA_ALIGNMENT (-8)
#  define REG_SP 31
#  define REG_FP 29
#  define REG_RA 30                     // x30, the link register
#  define ENTRY_CFA_OFFSET 0
#  define FRAME_CFA_OFFSET 16           // x29 and x30 pushed
#else
#  error "no unwind rules for this architecture"
#endif

/* A small writer over a buffer of capacity bytes.  Writing past the end
   sets overflow instead. */
typedef struct {
    uint8_t *bytes;
    size_t pos;
    size_t capacity;
    int overflow;
} writer;

static void
put_bytes(writer *w, const void *data, size_t size)
{
    if (w->overflow || size > w->capacity - w->pos) {
        w->overflow = 1;
        return;
    }
    memcpy(w->bytes + w->pos, data, size);
    w->pos += size;
}

static void
put_u8(writer *w, uint8_t value)
{
    put_bytes(w, &value, 1);
}

static void
put_u32(writer *w, uint32_t value)
{
    put_bytes(w, &value, 4);
}

static void
put_u64(writer *w, uint64_t value)
{
    put_bytes(w, &value, 8);
}

static void
put_i32(writer *w, int32_t value)
{
    put_u32(w, (uint32_t)value);
}

static void
put_uleb128(writer *w, uint64_t value)
{
    do {
        uint8_t byte = value & 0x7f;
        value >>= 7;
        put_u8(w, value ? (byte | 0x80) : byte);
    } while (value);
}

static void
put_sleb128(writer *w, int64_t value)
{
    for (;;) {
        uint8_t byte = value & 0x7f;
        value >>= 7;            // arithmetic shift
        int done = (value == 0 && !(byte & 0x40))
                   || (value == -1 && (byte & 0x40));
        put_u8(w, done ? byte : (byte | 0x80));
        if (done) {
            return;
        }
    }
}

static void
set_u32_at(writer *w, size_t pos, uint32_t value)
{
    if (pos + 4 <= w->pos) {
        memcpy(w->bytes + pos, &value, 4);
    }
}

static void
pad_with_nops(writer *w, size_t start, size_t alignment)
{
    while ((w->pos - start) % alignment != 0 && !w->overflow) {
        put_u8(w, DW_CFA_nop);
    }
}

/* Move the location forward by delta bytes of code. */
static void
advance(writer *w, size_t delta)
{
    size_t units = delta / CODE_ALIGNMENT;
    if (units < 0x40) {
        put_u8(w, (uint8_t)(DW_CFA_advance_loc | units));
    }
    else if (units <= 0xff) {
        put_u8(w, DW_CFA_advance_loc1);
        put_u8(w, (uint8_t)units);
    }
    else {
        put_u8(w, DW_CFA_advance_loc2);
        uint16_t u16 = (uint16_t)units;
        put_u8(w, u16 & 0xff);      // little-endian targets only
        put_u8(w, u16 >> 8);
    }
}

/* A register saved at CFA - offset bytes. */
static void
saved_at(writer *w, int reg, int offset)
{
    put_u8(w, (uint8_t)(DW_CFA_offset | reg));
    put_uleb128(w, (uint64_t)(offset / -DATA_ALIGNMENT));
}

/* The frame rules of the template, after the CIE's initial rules. */
static void
frame_program(writer *w, const _PyPerf_TrampolineLayout *lay)
{
    advance(w, lay->frame_pushed);
    put_u8(w, DW_CFA_def_cfa_offset);
    put_uleb128(w, FRAME_CFA_OFFSET);
    saved_at(w, REG_FP, 16);
#if defined(__aarch64__)
    saved_at(w, REG_RA, 8);
#endif
    advance(w, lay->frame_set - lay->frame_pushed);
    put_u8(w, DW_CFA_def_cfa_register);
    put_uleb128(w, REG_FP);
    advance(w, lay->frame_popped - lay->frame_set);
    put_u8(w, DW_CFA_def_cfa);
    put_uleb128(w, REG_SP);
    put_uleb128(w, ENTRY_CFA_OFFSET);
    put_u8(w, (uint8_t)(DW_CFA_restore | REG_FP));
#if defined(__aarch64__)
    put_u8(w, (uint8_t)(DW_CFA_restore | REG_RA));
#endif
}

int
_PyPerf_BuildEhFrame(uint8_t *buffer, size_t capacity, int encoding,
                     _PyPerf_EhFrame *result)
{
    const _PyPerf_TrampolineLayout *lay = _PyPerf_GetTrampolineLayout();
    int absolute = (encoding == _PyPerf_EH_ABSOLUTE);
    writer w = {buffer, 0, capacity, 0};

    /* CIE */
    size_t cie = w.pos;
    put_u32(&w, 0);                             // length, set below
    put_u32(&w, 0);                             // CIE id
    put_u8(&w, 1);                              // version
    put_u8(&w, 'z');
    put_u8(&w, 'R');
    put_u8(&w, 0);
    put_uleb128(&w, CODE_ALIGNMENT);
    put_sleb128(&w, DATA_ALIGNMENT);
    put_uleb128(&w, REG_RA);
    put_uleb128(&w, 1);                         // augmentation data size
    put_u8(&w, absolute ? DW_EH_PE_absptr       // FDE pointers
                        : DW_EH_PE_pcrel | DW_EH_PE_sdata4);
    put_u8(&w, DW_CFA_def_cfa);                 // on entry
    put_uleb128(&w, REG_SP);
    put_uleb128(&w, ENTRY_CFA_OFFSET);
#if defined(__x86_64__)
    saved_at(&w, REG_RA, 8);
#endif
    pad_with_nops(&w, cie, 8);
    set_u32_at(&w, cie, (uint32_t)(w.pos - cie - 4));

    /* FDE */
    size_t fde = w.pos;
    put_u32(&w, 0);                             // length, set below
    put_u32(&w, (uint32_t)(w.pos - cie));       // back to the CIE
    size_t pc_begin = w.pos;
    if (absolute) {
        put_u64(&w, 0);                         // pc_begin, by the caller
        put_u64(&w, lay->code_size);            // pc_range
    }
    else {
        put_i32(&w, 0);                         // pc_begin, by the caller
        put_i32(&w, (int32_t)lay->code_size);   // pc_range
    }
    put_uleb128(&w, 0);                         // augmentation data size
    frame_program(&w, lay);
    pad_with_nops(&w, fde, 8);
    set_u32_at(&w, fde, (uint32_t)(w.pos - fde - 4));

    put_u32(&w, 0);                             // terminator
    if (w.overflow) {
        return -1;
    }
    result->size = w.pos;
    result->fde_offset = fde;
    result->pc_begin_offset = pc_begin;
    return 0;
}

void
_PyPerf_BuildInjectUnwind(_PyPerf_InjectUnwind *info, size_t code_size)
{
    _PyPerf_EhFrame eh;
    int res = _PyPerf_BuildEhFrame(info->bytes, _PyPerf_INJECT_UNWIND_CAPACITY,
                                   _PyPerf_EH_PCREL, &eh);
    assert(res == 0);
    (void)res;
    /* pc_begin: from this field back to the code, which perf places
       right before .eh_frame. */
    int32_t pc_begin = -(int32_t)(code_size + eh.pc_begin_offset);
    memcpy(info->bytes + eh.pc_begin_offset, &pc_begin, 4);

    /* .eh_frame_hdr, right after .eh_frame */
    writer w = {info->bytes, eh.size, _PyPerf_INJECT_UNWIND_CAPACITY, 0};
    size_t hdr = w.pos;
    put_u8(&w, 1);                              // version
    put_u8(&w, DW_EH_PE_pcrel | DW_EH_PE_sdata4);   // eh_frame_ptr
    put_u8(&w, DW_EH_PE_udata4);                // fde_count
    put_u8(&w, DW_EH_PE_datarel | DW_EH_PE_sdata4); // table entries
    put_i32(&w, -(int32_t)(w.pos));             // eh_frame_ptr -> .eh_frame
    put_u32(&w, 1);                             // fde_count
    put_i32(&w, -(int32_t)(code_size + hdr));   // initial location
    put_i32(&w, (int32_t)eh.fde_offset - (int32_t)hdr); // FDE address
    assert(!w.overflow);

    info->size = w.pos;
    info->eh_frame_hdr_size = w.pos - eh.size;
}

#endif /* PY_HAVE_PERF_TRAMPOLINE */
