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
 * This file does not know their formats: it hands each trampoline to the
 * active backend once (see "epochs" below).  Whatever the backend, the
 * first time a trampoline is named it is also described to gdb through its
 * JIT interface (Python/perf_gdb_jit.c), so that debugger backtraces, live
 * or from a core file, show the same names.
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
 * Setting _PYTHON_PERF_GENERIC_CALLS=1 before activation installs the hook
 * under another name, which ceval.c treats like any other hook: it exists to
 * measure the difference.
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
 * The free room is what the jitdump backend needs after each piece of code
 * (perf maps the unwind information there), so that the fake libraries perf
 * makes of two neighbouring trampolines never overlap.
 *
 * Arenas are never unmapped while the interpreter runs: deactivation only
 * removes the hook, and frames that are still running inside trampolines
 * (in this thread or any other) return through them safely.  Reactivation,
 * a switch of backend and fork() reuse the existing trampolines, so repeated
 * cycles allocate nothing.  Arenas are released when the main interpreter is
 * finalised, when no Python frame can run anymore.
 *
 * Each code object finds its trampoline through its co_extra slot (PEP 523's
 * _PyCode_SetExtra), so PyCodeObject keeps the layout of stock 3.11.  The
 * slot points at a code_entry, kept beside the arena, never at the code.
 *
 * Epochs
 * ------
 * A code_entry remembers the epoch of the output that last described it.
 * Whenever the output starts over (another backend, a forked child that
 * writes its own file), the epoch advances and each trampoline is described
 * again, at the same address, the next time its code runs.
 *
 * Threads and fork
 * ----------------
 * The hook, the arenas and this file's state are used with the GIL held.
 * The map file is also written by C code without the GIL (PyUnstable_* API),
 * so Python/perf_map.c serialises it with its own lock.  After fork() the
 * child keeps the trampolines and writes its own files; see
 * _PyPerfTrampoline_AfterForkChild().
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
#include <stdlib.h>                 // strtol(), getenv(), wcstombs()
#include <string.h>                 // memcpy()
#include <wchar.h>                  // wcsncmp()

#ifdef PY_HAVE_PERF_TRAMPOLINE
#  include <sys/mman.h>             // mmap(), mprotect()
#  include <unistd.h>               // sysconf()
#endif


#ifdef PY_HAVE_PERF_TRAMPOLINE

/* The template and its labels, from Python/asm_trampoline.S. */
extern char _Py_trampoline_func_start[];
extern char _Py_trampoline_frame_pushed[];
extern char _Py_trampoline_frame_set[];
extern char _Py_trampoline_frame_popped[];
extern char _Py_trampoline_func_end[];

/* Bytes after the code that hold the slot's own address. */
#define IDENTITY_SIZE sizeof(uintptr_t)
#define SLOT_ALIGNMENT 16
#define ARENA_MIN_SIZE (64 * 1024)


/* ---- State -------------------------------------------------------------- */

typedef struct {
    _PyPerf_TrampolineFunc trampoline;
    /* The epoch in which the backend last described this trampoline. */
    unsigned int epoch;
} code_entry;

typedef struct perf_arena {
    struct perf_arena *next;
    char *memory;               // read+exec after filling
    size_t mapped_size;
    code_entry *entries;        // one per slot, in ordinary memory
    size_t capacity;
    size_t used;
} perf_arena;

/* An interpreter that has used the perf support. */
typedef struct interp_record {
    struct interp_record *next;
    PyInterpreterState *interp;
    Py_ssize_t extra_index;     // its co_extra index for code_entry pointers
    int active;                 // our hook is installed
} interp_record;

static struct {
    /* The backend whose output is open, or NULL. */
    const _PyPerf_Backend *backend;
    /* Advanced whenever the output starts over; never 0. */
    unsigned int epoch;
    int persist_after_fork;
    perf_arena *arenas;
    interp_record *interps;
    /* The record that the hook used last, to skip the search. */
    interp_record *last;
    /* A failure was reported on stderr since the last activation from
       Python: one warning per failure, not one per call. */
    int warned;
} perf_state = {.epoch = 1};

static _PyPerf_TrampolineLayout layout;


/* ---- The template ------------------------------------------------------- */

const _PyPerf_TrampolineLayout *
_PyPerf_GetTrampolineLayout(void)
{
    if (layout.code_size == 0) {
        char *start = _Py_trampoline_func_start;
        layout.frame_pushed = (size_t)(_Py_trampoline_frame_pushed - start);
        layout.frame_set = (size_t)(_Py_trampoline_frame_set - start);
        layout.frame_popped = (size_t)(_Py_trampoline_frame_popped - start);
        layout.code_size = (size_t)(_Py_trampoline_func_end - start);
    }
    return &layout;
}

/* The size that the backends describe: the code and its identity. */
static size_t
described_size(void)
{
    size_t size = _PyPerf_GetTrampolineLayout()->code_size;
    return _Py_SIZE_ROUND_UP(size, sizeof(uintptr_t)) + IDENTITY_SIZE;
}

/* The distance between two trampolines: what is described plus what either
   backend needs free after it, so that a trampoline can be described by
   any backend, now or after a switch. */
static size_t
slot_size(void)
{
    size_t described = described_size();
    size_t reserved = Py_MAX(
        _PyPerf_MapBackend.reserved_after(described),
        _PyPerf_JitdumpBackend.reserved_after(described));
    return _Py_SIZE_ROUND_UP(described + reserved, SLOT_ALIGNMENT);
}


/* ---- Arenas ------------------------------------------------------------- */

static perf_arena *
new_arena(void)
{
    long page = sysconf(_SC_PAGESIZE);
    size_t size = ARENA_MIN_SIZE;
    if (page > 0 && (size_t)page > size) {
        size = (size_t)page;
    }
    size_t slot = slot_size();
    size_t capacity = size / slot;

    perf_arena *arena = PyMem_RawCalloc(1, sizeof(perf_arena));
    code_entry *entries = PyMem_RawCalloc(capacity, sizeof(code_entry));
    if (arena == NULL || entries == NULL) {
        _PyPerf_SetError(0, "out of memory for perf trampolines");
        goto error;
    }
    char *memory = mmap(NULL, size, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (memory == MAP_FAILED) {
        _PyPerf_SetError(errno, "cannot map memory for perf trampolines");
        goto error;
    }

    const _PyPerf_TrampolineLayout *lay = _PyPerf_GetTrampolineLayout();
    size_t identity_offset = described_size() - IDENTITY_SIZE;
    for (size_t i = 0; i < capacity; i++) {
        char *code = memory + i * slot;
        memcpy(code, _Py_trampoline_func_start, lay->code_size);
        uintptr_t identity = (uintptr_t)code;
        memcpy(code + identity_offset, &identity, sizeof(identity));
        entries[i].trampoline = (_PyPerf_TrampolineFunc)(void *)code;
    }
    if (mprotect(memory, size, PROT_READ | PROT_EXEC) != 0) {
        _PyPerf_SetError(errno, "cannot make perf trampolines executable");
        munmap(memory, size);
        goto error;
    }
    __builtin___clear_cache(memory, memory + size);

    arena->memory = memory;
    arena->mapped_size = size;
    arena->entries = entries;
    arena->capacity = capacity;
    arena->next = perf_state.arenas;
    perf_state.arenas = arena;
    return arena;

error:
    PyMem_RawFree(entries);
    PyMem_RawFree(arena);
    return NULL;
}

static code_entry *
new_code_entry(void)
{
    perf_arena *arena = perf_state.arenas;
    if (arena == NULL || arena->used == arena->capacity) {
        arena = new_arena();
        if (arena == NULL) {
            return NULL;
        }
    }
    return &arena->entries[arena->used++];
}

static void
free_arenas(void)
{
    perf_arena *arena = perf_state.arenas;
    while (arena != NULL) {
        perf_arena *next = arena->next;
        munmap(arena->memory, arena->mapped_size);
        PyMem_RawFree(arena->entries);
        PyMem_RawFree(arena);
        arena = next;
    }
    perf_state.arenas = NULL;
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

/* Find or make the record of interp; request its co_extra index once, so
   that repeated activation never exhausts the indexes.  Indexes belong to
   an interpreter, and so do code objects, except the deep-frozen ones of
   the standard library, which all interpreters share: with several
   interpreters, the slot at our index may hold what another interpreter's
   PEP 523 user stored there.  lookup() then checks that an entry is ours
   before using it (see is_our_entry()). */
static interp_record *
get_interp(PyInterpreterState *interp)
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
    /* The entries live in the arenas: nothing to free per code object. */
    record->extra_index = _PyEval_RequestCodeExtraIndex(NULL);
    if (record->extra_index < 0) {
        PyMem_RawFree(record);
        _PyPerf_SetError(0, "no free co_extra index for perf trampolines");
        return NULL;
    }
    record->interp = interp;
    record->next = perf_state.interps;
    perf_state.interps = record;
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

/* "py::<qualname>:<filename>", the form that upstream CPython and the tools
   that parse perf output use.  Return a new bytes object, or NULL with
   _PyPerf_SetError(). */
static PyObject *
trampoline_name(PyCodeObject *co)
{
    PyObject *qualname = utf8_bytes(co->co_qualname);
    PyObject *filename = utf8_bytes(co->co_filename);
    PyObject *name = NULL;
    if (qualname != NULL && filename != NULL) {
        name = PyBytes_FromFormat("py::%s:%s", PyBytes_AS_STRING(qualname),
                                  PyBytes_AS_STRING(filename));
    }
    Py_XDECREF(qualname);
    Py_XDECREF(filename);
    if (name == NULL) {
        PyErr_Clear();
        _PyPerf_SetError(0, "out of memory naming a perf trampoline");
    }
    return name;
}

static int
describe(code_entry *entry, PyCodeObject *co)
{
    PyObject *name = trampoline_name(co);
    if (name == NULL) {
        return -1;
    }
    int res = perf_state.backend->emit((void *)entry->trampoline,
                                       described_size(),
                                       PyBytes_AS_STRING(name), co);
    if (res == 0) {
        if (entry->epoch == 0) {
            /* Named for the first time: tell gdb too.  Its description
               outlives epochs, backends and activations. */
            _PyPerfGdb_AddTrampoline((void *)entry->trampoline,
                                     described_size(),
                                     PyBytes_AS_STRING(name));
        }
        entry->epoch = perf_state.epoch;
    }
    Py_DECREF(name);
    return res;
}


/* ---- Activation --------------------------------------------------------- */

/* The same hook at another address: Python/ceval.c then takes the generic
   road for Python-to-Python calls (vectorcall, no specialisation), as for
   any other hook.  Only for measuring what the fast road saves. */
static PyObject *
eval_frame_generic_calls(PyThreadState *tstate, _PyInterpreterFrame *frame,
                         int throwflag)
{
    return _PyPerfTrampoline_EvalFrame(tstate, frame, throwflag);
}

static _PyFrameEvalFunction
hook_to_install(void)
{
    const char *generic = getenv("_PYTHON_PERF_GENERIC_CALLS");
    if (generic != NULL && strcmp(generic, "1") == 0) {
        return eval_frame_generic_calls;
    }
    return _PyPerfTrampoline_EvalFrame;
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
    /* Open the new output first: if that fails, the old one goes on. */
    if (backend->open() < 0) {
        return -1;
    }
    close_output();
    perf_state.backend = backend;
    /* Everything must be described again in the new output. */
    advance_epoch();
    return 0;
}

typedef enum {
    ACTIVATE_OK,
    ACTIVATE_OTHER_HOOK,        // another frame evaluation function is set
    ACTIVATE_BACKEND_IN_USE,    // another interpreter uses another backend
    ACTIVATE_FAILED,            // see _PyPerf_GetError()
} activate_result;

static activate_result
activate(PyInterpreterState *interp, const _PyPerf_Backend *backend)
{
    _PyFrameEvalFunction current =
        _PyInterpreterState_GetEvalFrameFunc(interp);
    if (current != _PyEval_EvalFrameDefault && !is_our_hook(current)) {
        return ACTIVATE_OTHER_HOOK;
    }
    interp_record *record = get_interp(interp);
    if (record == NULL) {
        return ACTIVATE_FAILED;
    }
    if (perf_state.backend != NULL && perf_state.backend != backend) {
        for (interp_record *r = perf_state.interps; r != NULL; r = r->next) {
            if (r->active && r->interp != interp) {
                return ACTIVATE_BACKEND_IN_USE;
            }
        }
    }
    if (open_output(backend) < 0) {
        return ACTIVATE_FAILED;     // nothing changed
    }
    _PyInterpreterState_SetEvalFrameFunc(interp, hook_to_install());
    record->active = 1;
    return ACTIVATE_OK;
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
    if (!perf_state.warned) {
        perf_state.warned = 1;
        PyObject *type, *value, *tb;
        _PyErr_Fetch(tstate, &type, &value, &tb);
        PySys_WriteStderr("Python: warning: perf profiler support "
                          "stopped: %.400s\n", _PyPerf_GetError());
        _PyErr_Restore(tstate, type, value, tb);
    }
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

/* Give co a trampoline described in the current epoch.  Return NULL after
   _PyPerf_SetError() when that failed. */
static code_entry *
prepare(PyThreadState *tstate, interp_record *record, PyCodeObject *co,
        code_entry *entry)
{
    /* A frame may be resumed to receive an exception (throwflag): keep it
       untouched while naming the code. */
    PyObject *type, *value, *tb;
    _PyErr_Fetch(tstate, &type, &value, &tb);
    if (entry == NULL) {
        entry = new_code_entry();
        if (entry != NULL &&
            _PyCode_SetExtra((PyObject *)co, record->extra_index, entry) < 0)
        {
            PyErr_Clear();
            _PyPerf_SetError(0, "out of memory attaching a perf trampoline "
                             "to a code object");
            entry = NULL;
        }
    }
    if (entry != NULL && describe(entry, co) < 0) {
        entry = NULL;
    }
    _PyErr_Restore(tstate, type, value, tb);
    return entry;
}

/* The layout of co_extra (_PyCodeObjectExtra in Objects/codeobject.c),
   read here directly because the lookup runs on every call; it is fixed for
   the life of 3.11.  _PyCode_SetExtra() writes it. */
typedef struct {
    Py_ssize_t ce_size;
    void *ce_extras[1];
} code_extra;

/* Whether p is one of the entries of our arenas. */
static int
is_our_entry(void *p)
{
    for (perf_arena *arena = perf_state.arenas; arena != NULL;
         arena = arena->next)
    {
        char *start = (char *)arena->entries;
        char *end = (char *)(arena->entries + arena->capacity);
        if ((char *)p >= start && (char *)p < end) {
            return ((char *)p - start) % sizeof(code_entry) == 0;
        }
    }
    return 0;
}

/* An entry that is not ours, in a deep-frozen code object shared with
   another interpreter: leave it alone and run that code without a
   trampoline. */
static code_entry foreign_entry;

/* Deep-frozen code objects are static, created with a reference count of
   999999999 (Tools/scripts/deepfreeze.py); no other code object comes
   anywhere near it. */
#define SHARED_CODE_REFCNT (1 << 28)

static inline int
is_shared_code(PyCodeObject *co)
{
    return Py_REFCNT(co) >= SHARED_CODE_REFCNT;
}

static inline code_entry *
lookup(PyInterpreterState *interp, interp_record *record, PyCodeObject *co)
{
    code_extra *extra = (code_extra *)co->co_extra;
    if (extra == NULL || record->extra_index >= extra->ce_size) {
        return NULL;
    }
    code_entry *entry = extra->ce_extras[record->extra_index];
    if (entry != NULL && is_shared_code(co)
        && interp->runtime->interpreters.head->next != NULL
        && !is_our_entry(entry))
    {
        return &foreign_entry;
    }
    return entry;
}

/* Everything but the common case: another interpreter than last time, a
   code object without a trampoline or not described in this output yet, a
   shared code object, a closed output. */
Py_NO_INLINE static PyObject *
eval_frame_slow_path(PyThreadState *tstate, _PyInterpreterFrame *frame,
                     int throwflag)
{
    interp_record *record = record_of(tstate->interp);
    if (record == NULL || perf_state.backend == NULL) {
        return _PyEval_EvalFrameDefault(tstate, frame, throwflag);
    }
    code_entry *entry = lookup(tstate->interp, record, frame->f_code);
    if (entry == &foreign_entry) {
        return _PyEval_EvalFrameDefault(tstate, frame, throwflag);
    }
    if (entry == NULL || entry->epoch != perf_state.epoch) {
        entry = prepare(tstate, record, frame->f_code, entry);
        if (entry == NULL) {
            stop_after_failure(tstate);
            return _PyEval_EvalFrameDefault(tstate, frame, throwflag);
        }
    }
    return entry->trampoline(tstate, frame, throwflag,
                             _PyEval_EvalFrameDefault);
}

/* The hook.  Its common case is a handful of loads and a tail call into the
   trampoline, for every Python frame that starts or resumes. */
PyObject *
_PyPerfTrampoline_EvalFrame(PyThreadState *tstate, _PyInterpreterFrame *frame,
                            int throwflag)
{
    interp_record *record = perf_state.last;
    PyCodeObject *co = frame->f_code;
    code_extra *extra = (code_extra *)co->co_extra;
    if (record != NULL && record->interp == tstate->interp && extra != NULL
        && record->extra_index < extra->ce_size && !is_shared_code(co))
    {
        code_entry *entry = extra->ce_extras[record->extra_index];
        if (entry != NULL && entry->epoch == perf_state.epoch) {
            return entry->trampoline(tstate, frame, throwflag,
                                     _PyEval_EvalFrameDefault);
        }
    }
    return eval_frame_slow_path(tstate, frame, throwflag);
}


/* ---- Backends by name --------------------------------------------------- */

static const _PyPerf_Backend *
find_backend(const char *name)
{
    if (strcmp(name, _PyPerf_MapBackend.name) == 0) {
        return &_PyPerf_MapBackend;
    }
    if (strcmp(name, _PyPerf_JitdumpBackend.name) == 0) {
        return &_PyPerf_JitdumpBackend;
    }
    return NULL;
}


/* ---- Start-up: -X perf, -X perf_jit and the environment ----------------- */

/* Parse a switch value: "" (as in "-X perf=") and "1" mean on, "0" off,
   other integers are on if non-zero (as for other PYTHON* variables).
   Return -1 for anything else. */
static int
parse_switch(const char *value)
{
    if (value[0] == '\0') {
        return 1;
    }
    char *end;
    errno = 0;
    long n = strtol(value, &end, 10);
    if (errno != 0 || *end != '\0') {
        return -1;
    }
    return n != 0;
}

/* -X perf, -X perf=VALUE, -X perf_jit, -X perf_jit=VALUE: the last one on
   the command line wins.  Return the chosen backend name, "" to disable,
   or NULL if the command line says nothing. */
static const char *
backend_from_xoptions(const PyConfig *config)
{
    const char *chosen = NULL;
    for (Py_ssize_t i = 0; i < config->xoptions.length; i++) {
        const wchar_t *opt = config->xoptions.items[i];
        const char *name;
        size_t len;
        if (wcsncmp(opt, L"perf_jit", 8) == 0) {
            name = "perf_jit";
            len = 8;
        }
        else if (wcsncmp(opt, L"perf", 4) == 0) {
            name = "perf";
            len = 4;
        }
        else {
            continue;
        }
        if (opt[len] == L'\0') {
            chosen = name;
            continue;
        }
        if (opt[len] != L'=') {
            continue;           // another option, e.g. -X perfx
        }
        char value[32];
        size_t n = wcstombs(value, opt + len + 1, sizeof(value));
        if (n >= sizeof(value)) {
            strcpy(value, "...");
        }
        int on = parse_switch(value);
        if (on < 0) {
            PySys_WriteStderr("Python: warning: -X %s=%s: invalid value, "
                              "expected 0 or 1; ignored\n", name, value);
            continue;
        }
        chosen = on ? name : "";
    }
    return chosen;
}

/* PYTHONPERFSUPPORT and PYTHON_PERF_JIT_SUPPORT; the jitdump wins when both
   are on. */
static const char *
backend_from_environment(const PyConfig *config)
{
    static const struct {
        const char *variable;
        const char *backend;
    } variables[] = {
        {"PYTHON_PERF_JIT_SUPPORT", "perf_jit"},
        {"PYTHONPERFSUPPORT", "perf"},
    };
    if (!config->use_environment) {
        return NULL;
    }
    for (size_t i = 0; i < Py_ARRAY_LENGTH(variables); i++) {
        const char *value = getenv(variables[i].variable);
        if (value == NULL || value[0] == '\0') {
            continue;
        }
        int on = parse_switch(value);
        if (on < 0) {
            PySys_FormatStderr("Python: warning: %s=%.50s: invalid value, "
                               "expected 0 or 1; ignored\n",
                               variables[i].variable, value);
            continue;
        }
        if (on) {
            return variables[i].backend;
        }
    }
    return NULL;
}

void
_PyPerfTrampoline_InitFromConfig(PyThreadState *tstate)
{
    if (!_Py_IsMainInterpreter(tstate->interp)) {
        return;
    }
    const PyConfig *config = _PyInterpreterState_GetConfig(tstate->interp);
    const char *name = backend_from_xoptions(config);
    if (name == NULL) {
        name = backend_from_environment(config);
    }
    if (name == NULL || name[0] == '\0') {
        return;
    }
    const char *reason = NULL;
    switch (activate(tstate->interp, find_backend(name))) {
    case ACTIVATE_OK:
        return;
    case ACTIVATE_OTHER_HOOK:
        reason = "another frame evaluation function is installed";
        break;
    case ACTIVATE_BACKEND_IN_USE:
    case ACTIVATE_FAILED:
        reason = _PyPerf_GetError();
        break;
    }
    PySys_WriteStderr("Python: warning: perf profiler support (%s) is "
                      "off: %.400s\n", name, reason);
}


/* ---- sys functions ------------------------------------------------------ */

PyObject *
_PyPerfTrampoline_SysActivate(const char *name)
{
    const _PyPerf_Backend *backend = find_backend(name);
    if (backend == NULL) {
        PyErr_Format(PyExc_ValueError, "invalid backend: %s", name);
        return NULL;
    }
    PyInterpreterState *interp = _PyInterpreterState_GET();
    switch (activate(interp, backend)) {
    case ACTIVATE_OK:
        /* A new start: a later failure deserves a warning of its own. */
        perf_state.warned = 0;
        Py_RETURN_NONE;
    case ACTIVATE_OTHER_HOOK:
        PyErr_SetString(PyExc_RuntimeError,
                        "cannot activate the perf trampoline: another frame "
                        "evaluation function is installed");
        return NULL;
    case ACTIVATE_BACKEND_IN_USE:
        PyErr_Format(PyExc_RuntimeError,
                     "cannot activate the %s backend: another interpreter is "
                     "using the %s backend", name, perf_state.backend->name);
        return NULL;
    case ACTIVATE_FAILED:
        break;
    }
    PyErr_Format(PyExc_RuntimeError, "cannot activate the %s backend: %s",
                 name, _PyPerf_GetError());
    return NULL;
}

PyObject *
_PyPerfTrampoline_SysDeactivate(void)
{
    remove_hook(_PyInterpreterState_GET());
    Py_RETURN_NONE;
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
    /* No Python frame can run in this process from now on. */
    close_output();
    _PyPerfGdb_Fini();
    free_arenas();
    while (perf_state.interps != NULL) {    // leaked subinterpreters
        interp_record *next = perf_state.interps->next;
        PyMem_RawFree(perf_state.interps);
        perf_state.interps = next;
    }
    perf_state.last = NULL;
    perf_state.persist_after_fork = 0;
    perf_state.warned = 0;
}

void
_PyPerfTrampoline_AfterForkChild(void)
{
    _PyPerfMap_AfterForkChild();
    _PyPerfGdb_AfterForkChild();
    /* Only the thread that forked survives, in the main interpreter. */
    PyThreadState *tstate = _PyThreadState_GET();
    if (tstate == NULL || perf_state.backend == NULL) {
        return;
    }
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
    int kept = perf_state.backend->after_fork_child(
        perf_state.persist_after_fork);
    if (kept < 0) {
        perf_state.backend = NULL;
        stop_after_failure(tstate);
        return;
    }
    if (!kept) {
        /* The child's output starts empty: describe each trampoline again,
           at the same address, when its code next runs. */
        advance_epoch();
    }
}


/* ---- C API -------------------------------------------------------------- */

int
PyUnstable_PerfTrampoline_CompileCode(PyCodeObject *co)
{
    PyThreadState *tstate = _PyThreadState_GET();
    if (!hook_is_ours(tstate->interp) || perf_state.backend == NULL) {
        return 0;
    }
    interp_record *record = record_of(tstate->interp);
    code_entry *entry = lookup(tstate->interp, record, co);
    if (entry == &foreign_entry
        || (entry != NULL && entry->epoch == perf_state.epoch))
    {
        return 0;
    }
    if (prepare(tstate, record, co, entry) == NULL) {
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

void
_PyPerfTrampoline_InitFromConfig(PyThreadState *tstate)
{
    if (!_Py_IsMainInterpreter(tstate->interp)) {
        return;
    }
    const PyConfig *config = _PyInterpreterState_GetConfig(tstate->interp);
    int asked = 0;
    for (Py_ssize_t i = 0; i < config->xoptions.length; i++) {
        if (wcsncmp(config->xoptions.items[i], L"perf", 4) == 0) {
            asked = 1;
        }
    }
    if (asked) {
        PySys_WriteStderr("Python: warning: perf profiler support is not "
                          "available on this platform\n");
    }
}

PyObject *
_PyPerfTrampoline_SysActivate(const char *name)
{
    if (strcmp(name, "perf") != 0 && strcmp(name, "perf_jit") != 0) {
        PyErr_Format(PyExc_ValueError, "invalid backend: %s", name);
        return NULL;
    }
    PyErr_SetString(PyExc_ValueError,
                    "perf trampolines are not available on this platform");
    return NULL;
}

PyObject *
_PyPerfTrampoline_SysDeactivate(void)
{
    Py_RETURN_NONE;
}

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
_PyPerfTrampoline_AfterForkChild(void)
{
    _PyPerfMap_AfterForkChild();
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
