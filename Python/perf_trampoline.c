/*
 * Perf trampolines: letting native profilers see Python functions.
 *
 * The problem
 * -----------
 * Under `perf record -g`, every Python function looks the same: a native
 * backtrace through the interpreter shows _PyEval_EvalFrameDefault once per
 * Python call, and nothing says which Python function each of them runs.
 *
 * The idea
 * --------
 * Before the interpreter evaluates a frame, it jumps through a tiny piece of
 * machine code that belongs to the frame's code object alone: a copy of the
 * assembly template _Py_trampoline_func_start (Python/asm_trampoline.S) that
 * only builds a frame and calls the evaluator.  Each copy has its own address,
 * so its return address on the native stack identifies the Python function,
 * and the profiler is told what lives at that address:
 *
 *     perf record -g                  perf report
 *     ...                              ...
 *     _PyEval_EvalFrameDefault         _PyEval_EvalFrameDefault
 *     <copy at 0x7f..1020>      -->    py::bar:/app/demo.py
 *     _PyEval_EvalFrameDefault         _PyEval_EvalFrameDefault
 *     <copy at 0x7f..1000>      -->    py::baz:/app/demo.py
 *
 * How the profiler learns the names is the business of a backend:
 *   - "perf" (Python/perf_map.c) appends "START SIZE py::qualname:filename"
 *     lines to /tmp/perf-PID.map, which perf reads at report time;
 *   - "perf_jit" (Python/perf_jit_trampoline.c) writes a jitdump with the
 *     code bytes and DWARF unwind information for `perf inject --jit`.
 * This file does not know their formats, nor which backends exist (it
 * iterates the list in Python/perf_backends.c), nor how one is chosen (-X,
 * the environment and the sys functions: Python/perf_config.c): it hands
 * each trampoline to the active backend once (see "epochs" below).  Whatever the backend, the
 * first time a trampoline is named it is also described to gdb through its
 * JIT interface (Python/perf_gdb_jit.c), so that debugger backtraces, live
 * or from a core file, show the same names; each arena's unwind rules are
 * described to gdb as soon as it is filled, so that backtraces go through
 * the trampolines that have no names yet.
 *
 * The hook
 * --------
 * 3.11 lets a frame evaluation function replace _PyEval_EvalFrameDefault for
 * an interpreter (PEP 523).  Activation installs _PyPerfTrampoline_EvalFrame()
 * there; it is called for every Python frame that starts or resumes (calls,
 * generator and coroutine resumes), finds the code object's trampoline and
 * calls
 *
 *     trampoline(tstate, frame, throwflag, _PyEval_EvalFrameDefault)
 *
 * Activation refuses to replace another hook (a debugger's, a JIT's).
 *
 * Any other hook makes 3.11 give up two optimisations of Python-to-Python
 * calls: the caller no longer pushes the callee's frame itself (every call
 * goes through vectorcall and _PyEval_Vector), and calls are no longer
 * specialised (CALL_PY_EXACT_ARGS, CALL_PY_WITH_DEFAULTS).  This hook only
 * needs each frame to run through its trampoline, so Python/ceval.c keeps
 * both for it: the call site pushes the frame the fast way and hands it to
 * the hook instead of jumping into it (see CAN_PUSH_CALLEE_FRAME there).
 * _PyPerfTrampoline_SetGenericCalls() (for the benchmarks, through
 * _testinternalcapi) installs the hook under another name, which ceval.c
 * treats like any other hook: it exists to measure the difference.  When the C stack runs low, the call site runs
 * the callee in its own evaluator without the hook (see "The C stack").
 *
 * Memory
 * ------
 * Trampolines are carved from arenas of anonymous memory.  An arena is mapped
 * writable, filled with copies of the template all at once, then made
 * read-only and executable: memory is never writable and executable at once,
 * and handing out a trampoline costs no system call.  A slot holds
 *
 *     [ code of the template | its own address | free room ]
 *       \______ described to the profiler ____/
 *
 * The address is never executed: it makes the bytes of every trampoline
 * unique, since perf derives the identity of jitted code from its bytes.
 * The free room is what a backend needs after each piece of code: none for
 * the perf map, the unwind information for the jitdump (perf maps it
 * there), so that the fake libraries perf makes of two neighbouring
 * trampolines never overlap.  Each slot size has arenas of its own: 16
 * bytes a trampoline on x86-64 under the perf map.  A trampoline made for
 * the map and later described in a jitdump moves to a roomier slot.
 *
 * A forked child never adds trampolines to an arena it inherited: see
 * _PyPerfTrampoline_AfterForkChild().
 *
 * Slots are never reused, and arenas are never unmapped, not even when the
 * interpreter is finalised: perf names a sample by its address, so an
 * address must keep one name for the life of the process, and any thread's
 * native stack may still hold a return address into a trampoline (a daemon
 * thread that wakes up during finalisation and unwinds through pthread_exit,
 * a frame still running after deactivation).  A new initialisation of the
 * runtime in the same process (an embedder) reuses them.  If the machine
 * refuses executable memory (SELinux execmem, prctl(PR_SET_MDWE)), the first
 * arena fails and activation says so.
 *
 * Each code object finds its trampoline through its co_extra slot (PEP 523's
 * extra data), so PyCodeObject keeps the layout of stock 3.11.  The slot
 * holds 1 + the index of a code_entry in one table; the table is ours alone,
 * so "is this value ours" is one comparison: a value that another PEP 523
 * user stored at our index (possible in the deep-frozen code objects that
 * all interpreters share) is never followed.  Each interpreter reserves its
 * co_extra index when it starts, before any other user can ask for one, so
 * the index is 0: the co_extra blocks that we create are one slot long, and
 * code_dealloc() never calls another user's free function on a code object
 * that only we gave extra data (stock 3.11 would not call it there either).
 * When a code object dies, its entry returns to a free list; its slot stays,
 * named, in the profiler's files.
 *
 * Epochs
 * ------
 * A code_entry remembers the epoch of the output that last described it.
 * Whenever the output starts over (another backend, a forked child that
 * writes its own file, a closed output), the epoch advances and each
 * trampoline is described again, at the same address, the next time its
 * code runs.
 *
 * The C stack
 * -----------
 * 3.11 runs a Python-to-Python call in the caller's C frame; through the
 * hook, each call costs a C frame of the evaluator and one of its
 * trampoline.  So that deep recursion does not run out of C stack where
 * stock 3.11 does not, calls go through trampolines only near the top of
 * each thread's C stack (an eighth of it, at most 256 KiB: hundreds of
 * levels of calls); deeper, they are made the stock way, inside the
 * caller's evaluator, or straight into the evaluator when C code calls
 * Python, and the deepest frames go unnamed (_PyPerf_StackHasRoom()).
 *
 * Threads and fork
 * ----------------
 * The hook, the arenas and this file's state are used with the GIL held.
 * The map file is also written by C code without the GIL (PyUnstable_* API),
 * so Python/perf_map.c serialises it with its own lock, under which nothing
 * may take the GIL.  After fork() the child keeps the trampolines and writes
 * its own files; see _PyPerfTrampoline_AfterForkChild().
 *
 * Subinterpreters
 * ---------------
 * The hook belongs to one interpreter: activating in one does not change the
 * others.  The backend and its files belong to the process: an interpreter
 * cannot activate a backend other than the one that another interpreter is
 * using.  -X perf and the environment variables activate the main
 * interpreter only.
 *
 * Build advice
 * ------------
 * `perf record -g` walks frame pointers: build with
 * -fno-omit-frame-pointer -mno-omit-leaf-frame-pointer.  Without them use
 * the perf_jit backend and `perf record --call-graph dwarf`.
 */

#include "Python.h"
#include "pycore_ceval.h"           // _PyEval_EvalFrameDefault()
#include "pycore_frame.h"           // _PyInterpreterFrame
#include "pycore_interp.h"          // PyInterpreterState.eval_frame
#include "pycore_perf_trampoline.h" // _PyPerf_Backend
#include "pycore_pyerrors.h"        // _PyErr_Fetch()
#include "pycore_pystate.h"         // _PyInterpreterState_GET()

#include <errno.h>                  // errno
#include <stdint.h>                 // uintptr_t
#include <string.h>                 // memcpy(), memset()

#ifdef PY_HAVE_PERF_TRAMPOLINE
#  include <pthread.h>              // pthread_getattr_np()
#  include <sys/mman.h>             // mmap(), mprotect()
#  include <unistd.h>               // sysconf()
#endif

/* Built with BTI (-mbranch-protection=bti or standard), the template starts
   with a "bti c" landing pad.  The CPU checks landing pads only on pages
   mapped with PROT_BTI: without it, an indirect branch to any instruction of
   any trampoline would be accepted, which leaves gadgets such as the
   template's "blr x3" reachable in a process otherwise protected by BTI. */
#if defined(__aarch64__) && defined(__ARM_FEATURE_BTI_DEFAULT) \
    && __ARM_FEATURE_BTI_DEFAULT
#  ifndef PROT_BTI
#    define PROT_BTI 0x10           // <asm/mman.h> of arm64 Linux
#  endif
#  define TRAMPOLINE_PROT_BTI PROT_BTI
#else
#  define TRAMPOLINE_PROT_BTI 0
#endif


#ifdef PY_HAVE_PERF_TRAMPOLINE

/* Bytes after the code that hold the slot's own address. */
#define IDENTITY_SIZE sizeof(uintptr_t)
#define SLOT_ALIGNMENT 16
#define ARENA_MIN_SIZE (64 * 1024)
/* Slot sizes in use at once: one per backend at most. */
#define MAX_SLOT_SIZES 4


/* ---- State -------------------------------------------------------------- */

/* What a code object's co_extra slot leads to (through its index). */
typedef struct {
    _PyPerf_TrampolineFunc trampoline;  // NULL until it has one
    /* The epoch in which the backend last described this trampoline; 0:
       never described. */
    uint32_t epoch;
    uint16_t slot_size;         // of the trampoline's slot
    uint16_t in_use;            // 0 while on the free list
} code_entry;

typedef struct perf_arena {
    struct perf_arena *next;
    char *memory;               // read+exec after filling
    size_t mapped_size;
    size_t slot_size;
    size_t capacity;            // slots
    size_t used;
} perf_arena;

/* An interpreter that has started: the perf support may be used there. */
typedef struct interp_record {
    struct interp_record *next;
    PyInterpreterState *interp;
    Py_ssize_t extra_index;     // its co_extra index for code_entry indexes
    int active;                 // our hook is installed
} interp_record;

static struct {
    /* The backend whose output is open, or NULL. */
    const _PyPerf_Backend *backend;
    /* Advanced whenever the output starts over; never 0. */
    uint32_t epoch;
    int persist_after_fork;
    /* Every arena ever made, newest first, and the one being filled for
       each slot size. */
    perf_arena *arenas;
    perf_arena *filling[MAX_SLOT_SIZES];
    interp_record *interps;
    /* The co_extra index of every interpreter, when they all have the
       same (the usual case: 0), else -1: the hook's fast path then needs
       not find the interpreter's record. */
    Py_ssize_t common_index;
    /* The record that the slow path used last, to skip the search. */
    interp_record *last;
    /* A failure was reported on stderr since the last activation from
       Python: one warning per failure, not one per call. */
    int warned;
    /* In a forked child, while the interpreter's own after-fork hooks run
       (threading's, for one), and for good in a child of subprocess that
       runs preexec_fn: new code runs without being named, so that a child
       that calls exec() next leaves no file behind. */
    int child_at_fork;
    /* That child of subprocess: it activates nothing either. */
    int will_exec;
    /* Describe trampolines to gdb (PYTHON_PERF_GDB=0 turns it off). */
    int gdb_enabled;
    /* Install the hook under another name (for the benchmarks). */
    int generic_calls;
} perf_state = {.epoch = 1, .common_index = -1, .gdb_enabled = 1};

/* The entries of all code objects, in one table (used with the GIL held;
   it moves when it grows: keep indexes, not pointers, across anything
   that may run Python code).  A co_extra value v is ours when v - 1 <
   used, computed in unsigned arithmetic (NULL is not). */
static struct {
    code_entry *items;
    void **gdb;                 // each entry's description for gdb, or NULL
    size_t used;
    size_t capacity;
    uint32_t *free;             // indexes of entries of dead code objects
    size_t nfree;
    size_t free_capacity;
} entries;

/* ---- The template ------------------------------------------------------- */

/* The size that the backends describe: the code and its identity. */
static size_t
described_size(void)
{
    size_t size = _PyPerf_GetTrampolineLayout()->code_size;
    return _Py_SIZE_ROUND_UP(size, sizeof(uintptr_t)) + IDENTITY_SIZE;
}

/* The distance between two trampolines described by backend: what is
   described plus what the backend needs free after it. */
static size_t
slot_size_for(const _PyPerf_Backend *backend)
{
    size_t described = described_size();
    size_t reserved = backend->reserved_after(described);
    return _Py_SIZE_ROUND_UP(described + reserved, SLOT_ALIGNMENT);
}


/* ---- Arenas ------------------------------------------------------------- */

static perf_arena *
new_arena(size_t slot)
{
    long page = sysconf(_SC_PAGESIZE);
    size_t size = ARENA_MIN_SIZE;
    if (page > 0 && (size_t)page > size) {
        size = (size_t)page;
    }
    size_t capacity = size / slot;

    perf_arena *arena = PyMem_RawCalloc(1, sizeof(perf_arena));
    if (arena == NULL) {
        _PyPerf_SetError(0, "out of memory for perf trampolines");
        return NULL;
    }
    char *memory = mmap(NULL, size, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (memory == MAP_FAILED) {
        _PyPerf_SetError(errno, "cannot map memory for perf trampolines");
        PyMem_RawFree(arena);
        return NULL;
    }

    const _PyPerf_TrampolineLayout *lay = _PyPerf_GetTrampolineLayout();
    size_t identity_offset = described_size() - IDENTITY_SIZE;
    for (size_t i = 0; i < capacity; i++) {
        char *code = memory + i * slot;
        memcpy(code, lay->start, lay->code_size);
        uintptr_t identity = (uintptr_t)code;
        memcpy(code + identity_offset, &identity, sizeof(identity));
    }
    int res = mprotect(memory, size,
                       PROT_READ | PROT_EXEC | TRAMPOLINE_PROT_BTI);
    if (res != 0 && errno == EINVAL && TRAMPOLINE_PROT_BTI != 0) {
        /* A CPU or kernel without BTI refuses PROT_BTI; there the landing
           pad is a NOP and nothing is checked anyway. */
        res = mprotect(memory, size, PROT_READ | PROT_EXEC);
    }
    if (res != 0) {
        _PyPerf_SetError(errno, "cannot make perf trampolines executable "
                         "(is memory-deny-write-execute or an execmem "
                         "policy in force?)");
        munmap(memory, size);       // never executable: nothing points in
        PyMem_RawFree(arena);
        return NULL;
    }
    __builtin___clear_cache(memory, memory + size);
    if (perf_state.gdb_enabled) {
        /* gdb can unwind through the trampolines before they have names
           (they get them when they first run: Python/perf_gdb_jit.c). */
        _PyPerfGdb_AddArena(memory, slot, capacity);
    }

    arena->memory = memory;
    arena->mapped_size = size;
    arena->slot_size = slot;
    arena->capacity = capacity;
    arena->next = perf_state.arenas;
    perf_state.arenas = arena;
    return arena;
}

/* The arena being filled with slots of the given size, with a free slot;
   a new one if needed.  NULL after _PyPerf_SetError(). */
static perf_arena *
arena_with_room(size_t slot)
{
    int vacant = -1;
    for (int i = 0; i < MAX_SLOT_SIZES; i++) {
        perf_arena *arena = perf_state.filling[i];
        if (arena == NULL) {
            if (vacant < 0) {
                vacant = i;
            }
            continue;
        }
        if (arena->slot_size == slot) {
            if (arena->used < arena->capacity) {
                return arena;
            }
            vacant = i;
            break;
        }
    }
    if (vacant < 0) {
        _PyPerf_SetError(0, "too many kinds of perf trampolines");
        return NULL;
    }
    perf_arena *arena = new_arena(slot);
    if (arena != NULL) {
        perf_state.filling[vacant] = arena;
    }
    return arena;
}

static _PyPerf_TrampolineFunc
new_trampoline(size_t slot)
{
    perf_arena *arena = arena_with_room(slot);
    if (arena == NULL) {
        return NULL;
    }
    char *code = arena->memory + arena->used * arena->slot_size;
    arena->used++;
    return (_PyPerf_TrampolineFunc)(void *)code;
}


/* ---- Entries ------------------------------------------------------------ */

/* The entry that a co_extra value stands for, or NULL if the value is not
   one of ours (NULL, or another PEP 523 user's data). */
static inline code_entry *
entry_of(void *value)
{
    size_t index = (size_t)((uintptr_t)value - 1);
    if (index < entries.used) {
        return &entries.items[index];
    }
    return NULL;
}

/* A new entry, without a trampoline; return its index, or -1 after
   _PyPerf_SetError(). */
static Py_ssize_t
new_entry(void)
{
    size_t index;
    if (entries.nfree > 0) {
        index = entries.free[--entries.nfree];
    }
    else {
        if (entries.used == entries.capacity) {
            size_t capacity = entries.capacity ? entries.capacity * 2 : 1024;
            if (capacity > UINT32_MAX) {
                _PyPerf_SetError(0, "too many perf trampolines");
                return -1;
            }
            code_entry *items = PyMem_RawRealloc(
                entries.items, capacity * sizeof(code_entry));
            if (items != NULL) {
                entries.items = items;
            }
            void **gdb = PyMem_RawRealloc(entries.gdb,
                                          capacity * sizeof(void *));
            if (gdb != NULL) {
                entries.gdb = gdb;
            }
            if (items == NULL || gdb == NULL) {
                _PyPerf_SetError(0, "out of memory for perf trampolines");
                return -1;
            }
            entries.capacity = capacity;
        }
        index = entries.used++;
    }
    entries.items[index] = (code_entry){.in_use = 1};
    entries.gdb[index] = NULL;
    return (Py_ssize_t)index;
}

/* The co_extra free function: the code object died.  Its entry goes back
   to the free list; its trampoline's slot is never reused (its address
   keeps its name in the profiler's files). */
static void
release_entry(void *value)
{
    code_entry *entry = entry_of(value);
    if (entry == NULL || !entry->in_use) {
        return;
    }
    if (entries.nfree == entries.free_capacity) {
        size_t capacity = entries.free_capacity ? entries.free_capacity * 2
                                                : 1024;
        uint32_t *free_list = PyMem_RawRealloc(entries.free,
                                               capacity * sizeof(uint32_t));
        if (free_list == NULL) {
            return;             // this entry is simply not reused
        }
        entries.free = free_list;
        entries.free_capacity = capacity;
    }
    size_t index = (size_t)(entry - entries.items);
    _PyPerfGdb_ForgetTrampoline(entries.gdb[index]);
    entries.gdb[index] = NULL;
    *entry = (code_entry){.in_use = 0};
    entries.free[entries.nfree++] = (uint32_t)index;
}


/* ---- co_extra ----------------------------------------------------------- */

/* The layout of co_extra, _PyCodeObjectExtra in Objects/codeobject.c: 3.11
   defines it in that file only, and it is fixed for the life of 3.11.  The
   hook reads it directly because the lookup runs on every call. */
typedef struct {
    Py_ssize_t ce_size;
    void *ce_extras[1];
} code_extra;

static inline void *
get_extra(PyCodeObject *co, Py_ssize_t index)
{
    code_extra *extra = (code_extra *)co->co_extra;
    if (extra == NULL || index >= extra->ce_size) {
        return NULL;
    }
    return extra->ce_extras[index];
}

/* Store value at index, as _PyCode_SetExtra() would, except that a new or
   grown block ends at index: it does not cover the indexes of other users
   that came after us, whose free functions code_dealloc() would otherwise
   call for every code object that we gave extra data (see "Memory").  The
   value replaced, if any, is ours to release.  With the GIL held. */
static int
set_extra(PyCodeObject *co, Py_ssize_t index, void *value)
{
    code_extra *extra = (code_extra *)co->co_extra;
    if (extra == NULL || extra->ce_size <= index) {
        Py_ssize_t old_size = extra ? extra->ce_size : 0;
        extra = PyMem_Realloc(extra, sizeof(code_extra)
                                     + (size_t)index * sizeof(void *));
        if (extra == NULL) {
            return -1;
        }
        for (Py_ssize_t i = old_size; i <= index; i++) {
            extra->ce_extras[i] = NULL;
        }
        extra->ce_size = index + 1;
        co->co_extra = extra;
    }
    release_entry(extra->ce_extras[index]);
    extra->ce_extras[index] = value;
    return 0;
}


/* ---- Interpreters ------------------------------------------------------- */

static interp_record *
find_interp(PyInterpreterState *interp)
{
    for (interp_record *r = perf_state.interps; r != NULL; r = r->next) {
        if (r->interp == interp) {
            return r;
        }
    }
    return NULL;
}

static void
update_common_index(void)
{
    Py_ssize_t common = -1;
    for (interp_record *r = perf_state.interps; r != NULL; r = r->next) {
        if (common >= 0 && r->extra_index != common) {
            common = -1;
            break;
        }
        common = r->extra_index;
    }
    perf_state.common_index = common;
}

/* Make the record of an interpreter that starts, with its co_extra index:
   asked for before anything else can ask, so it is normally 0 (see
   "Memory").  Return NULL after _PyPerf_SetError(). */
static interp_record *
add_interp(PyInterpreterState *interp)
{
    interp_record *record = find_interp(interp);
    if (record != NULL) {
        return record;
    }
    record = PyMem_RawCalloc(1, sizeof(interp_record));
    if (record == NULL) {
        _PyPerf_SetError(0, "out of memory");
        return NULL;
    }
    record->extra_index = _PyEval_RequestCodeExtraIndex(release_entry);
    if (record->extra_index < 0) {
        PyMem_RawFree(record);
        _PyPerf_SetError(0, "no free co_extra index for perf trampolines");
        return NULL;
    }
    record->interp = interp;
    record->next = perf_state.interps;
    perf_state.interps = record;
    update_common_index();
    return record;
}

static void
forget_interp(PyInterpreterState *interp)
{
    for (interp_record **p = &perf_state.interps; *p != NULL;
         p = &(*p)->next)
    {
        if ((*p)->interp == interp) {
            interp_record *record = *p;
            *p = record->next;
            if (perf_state.last == record) {
                perf_state.last = NULL;
            }
            PyMem_RawFree(record);
            update_common_index();
            return;
        }
    }
}

static int
any_interp_active(void)
{
    for (interp_record *r = perf_state.interps; r != NULL; r = r->next) {
        if (r->active) {
            return 1;
        }
    }
    return 0;
}


/* ---- Naming and describing ---------------------------------------------- */

/* UTF-8 bytes of a str, with the original bytes of undecodable file names
   and escapes for anything else; never fails with an exception set. */
static PyObject *
utf8_bytes(PyObject *text)
{
    if (!PyUnicode_Check(text)) {
        return PyBytes_FromString("?");
    }
    PyObject *bytes = PyUnicode_AsEncodedString(text, "utf-8",
                                                "surrogateescape");
    if (bytes == NULL) {
        PyErr_Clear();
        bytes = PyUnicode_AsEncodedString(text, "utf-8", "backslashreplace");
    }
    if (bytes == NULL) {
        PyErr_Clear();
        bytes = PyBytes_FromString("?");
    }
    return bytes;
}

/* What the backends are told of a code object: its name
   "py::<qualname>:<filename>" (the form that the tools that parse perf
   output expect), its file name and first line. */
typedef struct {
    PyObject *name;             // bytes
    PyObject *filename;         // bytes
    int lineno;
} code_names;

/* Fill names for co.  Return 0, or -1 with _PyPerf_SetError(). */
static int
name_code(PyCodeObject *co, code_names *names)
{
    PyObject *qualname = utf8_bytes(co->co_qualname);
    names->filename = utf8_bytes(co->co_filename);
    names->name = NULL;
    names->lineno = co->co_firstlineno;
    if (qualname != NULL && names->filename != NULL) {
        names->name = PyBytes_FromFormat("py::%s:%s",
                                         PyBytes_AS_STRING(qualname),
                                         PyBytes_AS_STRING(names->filename));
    }
    Py_XDECREF(qualname);
    if (names->name == NULL) {
        Py_CLEAR(names->filename);
        PyErr_Clear();
        _PyPerf_SetError(0, "out of memory naming a perf trampoline");
        return -1;
    }
    return 0;
}

static void
release_names(code_names *names)
{
    Py_CLEAR(names->name);
    Py_CLEAR(names->filename);
}

/* Describe entry number index in the current output, giving it a
   trampoline with the room the backend needs first.  Naming may have run
   Python code (a collection while allocating): index, not a pointer. */
static int
describe(size_t index, const code_names *names)
{
    const _PyPerf_Backend *backend = perf_state.backend;
    size_t slot = slot_size_for(backend);
    code_entry *entry = &entries.items[index];
    int first_name = (entry->trampoline == NULL);
    if (entry->trampoline == NULL || entry->slot_size < slot) {
        /* A new trampoline; one made for a backend that needs less room
           stays named as it was, in the files that named it. */
        _PyPerf_TrampolineFunc trampoline = new_trampoline(slot);
        if (trampoline == NULL) {
            return -1;
        }
        entry->trampoline = trampoline;
        entry->slot_size = (uint16_t)slot;
        first_name = 1;
    }
    _PyPerf_Description what = {
        .code = (const void *)entry->trampoline,
        .size = described_size(),
        .name = PyBytes_AS_STRING(names->name),
        .filename = PyBytes_AS_STRING(names->filename),
        .lineno = names->lineno,
    };
    if (backend->emit(&what) < 0) {
        return -1;
    }
    if (first_name && perf_state.gdb_enabled) {
        /* Tell gdb too.  Its description outlives epochs, backends and
           activations. */
        entries.gdb[index] = _PyPerfGdb_AddTrampoline(what.code, what.size,
                                                      what.name);
    }
    entry->epoch = perf_state.epoch;
    return 0;
}


/* ---- Activation --------------------------------------------------------- */

/* The same hook at another address: Python/ceval.c then takes the generic
   road for Python-to-Python calls (vectorcall, no specialisation), as for
   any other hook.  Only for measuring what the fast road saves
   (_PyPerfTrampoline_SetGenericCalls()). */
static PyObject *
eval_frame_generic_calls(PyThreadState *tstate, _PyInterpreterFrame *frame,
                         int throwflag)
{
    return _PyPerfTrampoline_EvalFrame(tstate, frame, throwflag);
}

static _PyFrameEvalFunction
hook_to_install(void)
{
    return perf_state.generic_calls ? eval_frame_generic_calls
                                    : _PyPerfTrampoline_EvalFrame;
}

static int
is_our_hook(_PyFrameEvalFunction hook)
{
    return hook == _PyPerfTrampoline_EvalFrame
           || hook == eval_frame_generic_calls;
}

static int
hook_is_ours(PyInterpreterState *interp)
{
    return is_our_hook(_PyInterpreterState_GetEvalFrameFunc(interp));
}

static void
remove_hook(PyInterpreterState *interp)
{
    if (hook_is_ours(interp)) {
        _PyInterpreterState_SetEvalFrameFunc(interp, _PyEval_EvalFrameDefault);
        /* No new trampoline for a while: let a watching debugger see the
           last ones now. */
        _PyPerfGdb_Flush();
    }
    interp_record *record = find_interp(interp);
    if (record != NULL) {
        record->active = 0;
    }
}

static void
advance_epoch(void)
{
    perf_state.epoch++;
    if (perf_state.epoch == 0) {
        perf_state.epoch = 1;       // 0 means "never described"
    }
}

static void
close_output(void)
{
    if (perf_state.backend != NULL) {
        perf_state.backend->close();
        perf_state.backend = NULL;
        /* No entry is described in a closed output: the hook's fast path
           then needs no test of its own for it. */
        advance_epoch();
    }
}

/* Start the output of backend for this process, unless it is open already.
   Return 0, or -1 after _PyPerf_SetError(). */
static int
open_output(const _PyPerf_Backend *backend)
{
    if (perf_state.backend == backend) {
        return 0;
    }
    /* Executable memory first: a process that may not make any (an
       execmem policy, memory-deny-write-execute) hears so now, not at the
       first call. */
    if (arena_with_room(slot_size_for(backend)) == NULL) {
        return -1;
    }
    /* Open the new output before closing the old: if that fails, the old
       one goes on. */
    if (backend->open() < 0) {
        return -1;
    }
    close_output();
    perf_state.backend = backend;
    /* Everything must be described again in the new output. */
    advance_epoch();
    return 0;
}

_PyPerf_ActivateResult
_PyPerfTrampoline_Activate(PyInterpreterState *interp,
                           const _PyPerf_Backend *backend)
{
    if (perf_state.will_exec) {
        /* Nothing this process runs is named: opening a file now would
           leave it to the program it becomes.  Not an error either: the
           process is about to be replaced. */
        return _PyPerf_ACTIVATED;
    }
    _PyFrameEvalFunction current =
        _PyInterpreterState_GetEvalFrameFunc(interp);
    if (current != _PyEval_EvalFrameDefault && !is_our_hook(current)) {
        return _PyPerf_OTHER_HOOK;
    }
    interp_record *record = add_interp(interp);
    if (record == NULL) {
        return _PyPerf_ACTIVATE_FAILED;
    }
    if (perf_state.backend != NULL && perf_state.backend != backend) {
        for (interp_record *r = perf_state.interps; r != NULL; r = r->next) {
            if (r->active && r->interp != interp) {
                return _PyPerf_BACKEND_IN_USE;
            }
        }
    }
    if (open_output(backend) < 0) {
        return _PyPerf_ACTIVATE_FAILED;     // nothing changed
    }
    _PyInterpreterState_SetEvalFrameFunc(interp, hook_to_install());
    record->active = 1;
    /* A new start: a later failure deserves a warning of its own. */
    perf_state.warned = 0;
    return _PyPerf_ACTIVATED;
}

void
_PyPerfTrampoline_SetGenericCalls(int enabled)
{
    perf_state.generic_calls = enabled != 0;
    PyInterpreterState *interp = _PyInterpreterState_GET();
    if (hook_is_ours(interp)) {
        _PyInterpreterState_SetEvalFrameFunc(interp, hook_to_install());
    }
}

/* Say why, once, on stderr, keeping the exception that may be set. */
static void
warn_once(PyThreadState *tstate, const char *what)
{
    if (perf_state.warned) {
        return;
    }
    perf_state.warned = 1;
    PyObject *type, *value, *tb;
    _PyErr_Fetch(tstate, &type, &value, &tb);
    PySys_WriteStderr("Python: warning: perf profiler support %s: %.400s\n",
                      what, _PyPerf_GetError());
    _PyErr_Restore(tstate, type, value, tb);
}

/* Profiling failed while code was running: say why, once, and let the
   program go on without the hook. */
static void
stop_after_failure(PyThreadState *tstate)
{
    remove_hook(tstate->interp);
    if (!any_interp_active()) {
        close_output();
    }
    warn_once(tstate, "stopped");
}


/* ---- The hook ----------------------------------------------------------- */

static interp_record *
record_of(PyInterpreterState *interp)
{
    interp_record *record = perf_state.last;
    if (record == NULL || record->interp != interp) {
        record = find_interp(interp);
        perf_state.last = record;
    }
    return record;
}

/* Give co an entry with a trampoline described in the current epoch, and
   return it; return NULL after _PyPerf_SetError() when that failed. */
static code_entry *
prepare(PyThreadState *tstate, interp_record *record, PyCodeObject *co)
{
    /* A frame may be resumed to receive an exception (throwflag): keep it
       untouched while naming the code. */
    PyObject *type, *value, *tb;
    _PyErr_Fetch(tstate, &type, &value, &tb);
    code_entry *result = NULL;
    Py_ssize_t index;
    code_entry *entry = entry_of(get_extra(co, record->extra_index));
    if (entry != NULL) {
        index = entry - entries.items;
    }
    else {
        index = new_entry();
        if (index < 0) {
            goto done;
        }
        if (set_extra(co, record->extra_index,
                      (void *)(uintptr_t)(index + 1)) < 0)
        {
            PyErr_Clear();
            release_entry((void *)(uintptr_t)(index + 1));
            _PyPerf_SetError(0, "out of memory attaching a perf trampoline "
                             "to a code object");
            goto done;
        }
    }
    code_names names;
    if (name_code(co, &names) < 0) {
        goto done;
    }
    if (describe((size_t)index, &names) == 0) {
        result = &entries.items[index];
    }
    release_names(&names);
done:
    _PyErr_Restore(tstate, type, value, tb);
    return result;
}

/* Everything but the common case: another interpreter than last time, a
   code object without a trampoline or not described in this output yet,
   another user's data at our index, a closed output. */
Py_NO_INLINE static PyObject *
eval_frame_slow_path(PyThreadState *tstate, _PyInterpreterFrame *frame,
                     int throwflag)
{
    interp_record *record = record_of(tstate->interp);
    if (record == NULL || perf_state.backend == NULL
        || perf_state.child_at_fork)
    {
        return _PyEval_EvalFrameDefault(tstate, frame, throwflag);
    }
    void *value = get_extra(frame->f_code, record->extra_index);
    code_entry *entry = entry_of(value);
    if (value != NULL && entry == NULL) {
        /* Not ours: leave it alone and run this code without a
           trampoline. */
        return _PyEval_EvalFrameDefault(tstate, frame, throwflag);
    }
    if (entry == NULL || entry->epoch != perf_state.epoch) {
        entry = prepare(tstate, record, frame->f_code);
        if (entry == NULL) {
            stop_after_failure(tstate);
            return _PyEval_EvalFrameDefault(tstate, frame, throwflag);
        }
    }
    return entry->trampoline(tstate, frame, throwflag,
                             _PyEval_EvalFrameDefault);
}

/* The common case of the hook: a handful of loads and a tail call into the
   trampoline, for every Python frame that starts or resumes. */
static inline PyObject *
run_through_trampoline(PyThreadState *tstate, _PyInterpreterFrame *frame,
                       int throwflag)
{
    /* -1 (interpreters with different indexes) fails the comparison. */
    size_t index = (size_t)perf_state.common_index;
    code_extra *extra = (code_extra *)frame->f_code->co_extra;
    if (extra != NULL && index < (size_t)extra->ce_size) {
        /* entry_of(), without the pointer it need not make. */
        size_t i = (size_t)((uintptr_t)extra->ce_extras[index] - 1);
        if (i < entries.used && entries.items[i].epoch == perf_state.epoch) {
            return entries.items[i].trampoline(tstate, frame, throwflag,
                                               _PyEval_EvalFrameDefault);
        }
    }
    return eval_frame_slow_path(tstate, frame, throwflag);
}

/* The hook, as PEP 523 calls it: from C code (vectorcall, generator
   resumes, C functions that call back into Python).  Deep in the C stack
   (see "The C stack"), the frame runs without a trampoline, exactly as in
   stock 3.11 (a tail call: no frame of ours remains). */
PyObject *
_PyPerfTrampoline_EvalFrame(PyThreadState *tstate, _PyInterpreterFrame *frame,
                            int throwflag)
{
    if (!_PyPerf_StackHasRoom()) {
        return _PyEval_EvalFrameDefault(tstate, frame, throwflag);
    }
    return run_through_trampoline(tstate, frame, throwflag);
}

PyObject *
_PyPerfTrampoline_EvalPushedFrame(PyThreadState *tstate,
                                  _PyInterpreterFrame *frame)
{
    /* The call site checked the stack before it chose this road. */
    return run_through_trampoline(tstate, frame, 0);
}


/* ---- The C stack -------------------------------------------------------- */

/* The part of a thread's C stack, from its top, in which calls run
   through trampolines: an eighth, at most 256 KiB.  There, each
   Python-to-Python call takes a C frame of the evaluator that stock 3.11
   does not take; a program whose C recursion (callbacks from C code) fills
   its stack almost to the end in stock 3.11 loses at most about half of
   this region.  Typical call depths stay well inside it. */
#define TRAMPOLINE_STACK_FRACTION 8
#define TRAMPOLINE_STACK_MAX (256 * 1024)

/* Until this thread's stack is measured, the floor is as high as can be,
   so that the first check comes to _PyPerf_MeasureStack(). */
_Thread_local uintptr_t _PyPerf_stack_floor = UINTPTR_MAX;
static _Thread_local int stack_measured;

int
_PyPerf_MeasureStack(uintptr_t sp)
{
    if (stack_measured) {
        return 0;               // below the region: run the stock way
    }
    stack_measured = 1;
    /* Unknown: trampolines everywhere, as before this check existed. */
    uintptr_t floor = 0;
    pthread_attr_t attr;
    if (pthread_getattr_np(pthread_self(), &attr) == 0) {
        void *base;
        size_t size;
        if (pthread_attr_getstack(&attr, &base, &size) == 0 && size > 0) {
            /* The stack grows down, from base + size to base.  Its top may
               hold the thread's static TLS (large under some runtimes):
               the region starts where this thread is now, at its first
               Python call. */
            uintptr_t top = Py_MIN(sp, (uintptr_t)base + size);
            if (top > (uintptr_t)base) {
                size_t usable = top - (uintptr_t)base;
                size_t region = Py_MIN(usable / TRAMPOLINE_STACK_FRACTION,
                                       (size_t)TRAMPOLINE_STACK_MAX);
                floor = top - region;
            }
        }
        pthread_attr_destroy(&attr);
    }
    _PyPerf_stack_floor = floor;
    return sp >= floor;
}


/* ---- Used by Python/perf_config.c -------------------------------------- */

int
_PyPerfTrampoline_AddInterpreter(PyInterpreterState *interp)
{
    return add_interp(interp) == NULL ? -1 : 0;
}

void
_PyPerfTrampoline_Deactivate(PyInterpreterState *interp)
{
    remove_hook(interp);
}

const _PyPerf_Backend *
_PyPerfTrampoline_OpenBackend(void)
{
    return perf_state.backend;
}

void
_PyPerfTrampoline_SetGdbEnabled(int enabled)
{
    perf_state.gdb_enabled = enabled;
}

int
_PyPerfTrampoline_IsActive(PyInterpreterState *interp)
{
    return hook_is_ours(interp);
}


/* ---- Lifetime ----------------------------------------------------------- */

void
_PyPerfTrampoline_Fini(PyInterpreterState *interp)
{
    remove_hook(interp);
    forget_interp(interp);
    if (!_Py_IsMainInterpreter(interp)) {
        return;
    }
    /* No Python frame will start in this process from now on, but the
       trampolines stay mapped (and described to gdb): daemon threads may
       still have their return addresses on their stacks. */
    close_output();
    while (perf_state.interps != NULL) {    // leaked subinterpreters
        interp_record *next = perf_state.interps->next;
        PyMem_RawFree(perf_state.interps);
        perf_state.interps = next;
    }
    perf_state.common_index = -1;
    perf_state.last = NULL;
    perf_state.persist_after_fork = 0;
    perf_state.warned = 0;
}

void
_PyPerfTrampoline_BeforeFork(void)
{
    for (const _PyPerf_Backend *const *b = _PyPerf_Backends; *b; b++) {
        (*b)->before_fork();
    }
    _PyPerfGdb_BeforeFork();
}

void
_PyPerfTrampoline_AfterForkParent(void)
{
    _PyPerfGdb_AfterForkParent();
    size_t n = 0;
    while (_PyPerf_Backends[n] != NULL) {
        n++;
    }
    while (n > 0) {
        _PyPerf_Backends[--n]->after_fork_parent();
    }
}

void
_PyPerfTrampoline_AfterForkChild(void)
{
    PyThreadState *tstate = _PyThreadState_GET();
    /* The child's new trampolines go to arenas of its own.  perf gives a
       forked child the parent's view of its mappings: a sample in an
       inherited arena is named from the parent's map.  Were the child to
       go on filling an inherited arena, its new trampolines would take the
       very addresses at which the parent, filling its own copy, names other
       functions.  An arena the child maps is the child's in perf's eyes
       (named from its own map); the inherited ones keep the parent's
       names, which are right for the trampolines made before the fork. */
    memset(perf_state.filling, 0, sizeof(perf_state.filling));
    /* Every backend lets the parent's output go, active or not: the map
       may hold C code's lines, and a persistent copy is made whatever is
       active. */
    int kept = 0;
    for (const _PyPerf_Backend *const *b = _PyPerf_Backends; *b; b++) {
        int res = (*b)->after_fork_child(perf_state.persist_after_fork);
        if (res < 0 && tstate != NULL) {
            warn_once(tstate, "cannot copy the parent's output");
        }
        if (*b == perf_state.backend) {
            kept = (res == 1);
        }
    }
    _PyPerfGdb_AfterForkChild();
    /* Only the thread that forked survives, in the main interpreter. */
    if (tstate == NULL || perf_state.backend == NULL) {
        return;
    }
    perf_state.child_at_fork = 1;
    interp_record *main = find_interp(tstate->interp);
    for (interp_record *r = perf_state.interps; r != NULL; r = r->next) {
        if (r != main) {
            r->active = 0;
        }
    }
    if (!hook_is_ours(tstate->interp)) {
        /* Deactivated before fork(): the parent's output is not ours. */
        close_output();
        return;
    }
    /* The child's output starts when it first describes code, so a child
       that calls exec() leaves none. */
    if (!kept) {
        /* The child's output starts empty: describe each trampoline again,
           at the same address, when its code next runs. */
        advance_epoch();
    }
}


void
_PyPerfTrampoline_AfterForkChildHooks(void)
{
    /* A child that will exec() names nothing, to the end. */
    perf_state.child_at_fork = perf_state.will_exec;
    if (perf_state.will_exec) {
        _PyPerfRemote_ChildWillExec();
    }
    else {
        _PyPerfRemote_AfterForkChild(_PyThreadState_GET());
    }
}

void
_PyPerfTrampoline_ChildWillExec(void)
{
    /* Called before PyOS_AfterFork_Child(), whose hooks see it; not
       undone: the child ends in exec() or _exit(). */
    perf_state.child_at_fork = 1;
    perf_state.will_exec = 1;
}


/* ---- C API -------------------------------------------------------------- */

int
PyUnstable_PerfTrampoline_CompileCode(PyCodeObject *co)
{
    PyThreadState *tstate = _PyThreadState_GET();
    if (!hook_is_ours(tstate->interp) || perf_state.backend == NULL
        || perf_state.child_at_fork)
    {
        return 0;
    }
    interp_record *record = record_of(tstate->interp);
    if (record == NULL) {
        return 0;
    }
    void *value = get_extra(co, record->extra_index);
    code_entry *entry = entry_of(value);
    if ((value != NULL && entry == NULL)        // not ours
        || (entry != NULL && entry->epoch == perf_state.epoch))
    {
        return 0;
    }
    if (prepare(tstate, record, co) == NULL) {
        PyErr_Format(PyExc_RuntimeError, "cannot compile a perf trampoline: "
                     "%s", _PyPerf_GetError());
        return -1;
    }
    return 0;
}

int
PyUnstable_PerfTrampoline_SetPersistAfterFork(int enable)
{
    perf_state.persist_after_fork = enable != 0;
    return 0;
}


#else  /* !PY_HAVE_PERF_TRAMPOLINE */

/* Platforms without the assembly template: the API exists and says so. */

static int will_exec;       // see _PyPerfTrampoline_ChildWillExec()

int
_PyPerfTrampoline_IsActive(PyInterpreterState *interp)
{
    return 0;
}

PyObject *
_PyPerfTrampoline_EvalFrame(PyThreadState *tstate, _PyInterpreterFrame *frame,
                            int throwflag)
{
    /* Never installed. */
    return _PyEval_EvalFrameDefault(tstate, frame, throwflag);
}

void
_PyPerfTrampoline_Fini(PyInterpreterState *interp)
{
}

void
_PyPerfTrampoline_BeforeFork(void)
{
    _PyPerfMap_BeforeFork();
}

void
_PyPerfTrampoline_AfterForkParent(void)
{
    _PyPerfMap_AfterForkParent();
}

void
_PyPerfTrampoline_AfterForkChild(void)
{
    _PyPerfMap_AfterForkChild(0);
}

void
_PyPerfTrampoline_AfterForkChildHooks(void)
{
    if (will_exec) {
        _PyPerfRemote_ChildWillExec();
    }
    else {
        _PyPerfRemote_AfterForkChild(_PyThreadState_GET());
    }
}

void
_PyPerfTrampoline_ChildWillExec(void)
{
    will_exec = 1;
}

void
_PyPerfTrampoline_SetGenericCalls(int enabled)
{
}

PyObject *
_PyPerfTrampoline_EvalPushedFrame(PyThreadState *tstate,
                                  _PyInterpreterFrame *frame)
{
    /* Never installed. */
    return _PyEval_EvalFrameDefault(tstate, frame, 0);
}

int
PyUnstable_PerfTrampoline_CompileCode(PyCodeObject *co)
{
    return 0;
}

int
PyUnstable_PerfTrampoline_SetPersistAfterFork(int enable)
{
    return -1;
}

#endif /* PY_HAVE_PERF_TRAMPOLINE */
