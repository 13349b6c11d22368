/* Internal interface of the perf profiler support (Python/perf_*.c).
 *
 * Dependencies run one way: configuration -> core -> backends -> writers.
 * Python/perf_config.c reads -X, the environment and the sys functions and
 * asks the core to activate a backend.  Python/perf_trampoline.c (the
 * core) owns the trampolines and the frame evaluation hook; it hands each
 * new trampoline to the active backend, one of the list in
 * Python/perf_backends.c, which decides what to tell the profiler
 * (Python/perf_map.c: /tmp/perf-PID.map, Python/perf_jit_trampoline.c:
 * /tmp/jit-PID.dump written by Python/perf_jitdump.c).
 * Python/perf_outfile.c opens and writes their files in /tmp safely.
 * Whatever the backend, Python/perf_gdb_jit.c describes the trampolines to
 * gdb.  Python/perf_unwind.c knows the template's layout and builds the
 * DWARF unwind tables that the jitdump and gdb need.
 */
#ifndef Py_INTERNAL_PERF_TRAMPOLINE_H
#define Py_INTERNAL_PERF_TRAMPOLINE_H
#ifdef __cplusplus
extern "C" {
#endif

#ifndef Py_BUILD_CORE
#  error "this header requires Py_BUILD_CORE define"
#endif

#include <stddef.h>               // size_t
#include <stdint.h>               // uint8_t
#ifndef MS_WINDOWS
#  include <pthread.h>            // pthread_mutex_t
#  include <sys/types.h>          // pid_t, dev_t, ino_t
#endif


/* ---- A backend: what to tell the profiler about each trampoline ---- */

/* What the core knows of a trampoline when it names it. */
typedef struct {
    const void *code;           // the trampoline
    size_t size;                // bytes described: its code and identity
    const char *name;           // "py::qualname:filename" (UTF-8)
    const char *filename;       // the code object's file name (UTF-8)
    int lineno;                 // its first line
} _PyPerf_Description;

typedef struct {
    /* The name given to sys.activate_stack_trampoline() and -X. */
    const char *name;
    /* The environment variable that turns it on at start-up. */
    const char *env_variable;
    /* Bytes that must stay free after each described trampoline of
       code_size bytes (the jitdump maps its unwind information there). */
    size_t (*reserved_after)(size_t code_size);
    /* Prepare the output of this process.  Return 0, or -1 after
       _PyPerf_SetError(). */
    int (*open)(void);
    /* Describe one trampoline.  Called with the GIL held.  Return 0, or -1
       after _PyPerf_SetError(). */
    int (*emit)(const _PyPerf_Description *what);
    /* Close the output (the files stay for perf to read). */
    void (*close)(void);
    /* Hold the output's lock across fork(), in the parent. */
    void (*before_fork)(void);
    void (*after_fork_parent)(void);
    /* In every forked child, whether the backend is active or not: let the
       parent's output go without touching it; the child's own starts at
       its first emit.  persist: the child starts its output with a copy of
       the parent's, if the backend can.  Return 1 if the child's output
       describes the parent's trampolines already, 0 if they must be
       described again, -1 after _PyPerf_SetError(). */
    int (*after_fork_child)(int persist);
} _PyPerf_Backend;

/* Every backend, NULL-terminated, in the order in which their environment
   variables are read at start-up (the first one set wins); the list is in
   Python/perf_backends.c, the backends in Python/perf_map.c ("perf") and
   Python/perf_jit_trampoline.c ("perf_jit"). */
extern const _PyPerf_Backend *const _PyPerf_Backends[];
extern const _PyPerf_Backend _PyPerf_MapBackend;
extern const _PyPerf_Backend _PyPerf_JitdumpBackend;
/* The backend of that name, or NULL. */
extern const _PyPerf_Backend * _PyPerf_FindBackend(const char *name);


/* ---- Errors: one message, reported once by the caller ---- */

/* Record why the last operation failed; errnum is an errno value or 0. */
extern void _PyPerf_SetError(int errnum, const char *format, ...);
/* The last recorded message (never NULL). */
extern const char * _PyPerf_GetError(void);


/* ---- Names written for perf (Python/perf_map.c) ---- */

/* Copy the n bytes of name to dest (room for n bytes, no NUL added) with
   each control character (0x00-0x1f, 0x7f) replaced by '?'.  The perf map
   and the jitdump both go through it: a program chooses its function and
   file names, and a newline or an escape in one would let it add lines to
   the map, or frames to perf script's output, that no code of it has. */
extern void _PyPerf_CleanName(char *dest, const char *name, size_t n);


/* ---- Files in /tmp (Python/perf_outfile.c) ---- */

#ifndef MS_WINDOWS

/* One of the profiler's files: /tmp/perf-PID.map or /tmp/jit-PID.dump.
   Every field but the first three is managed by the functions below, with
   the lock held. */
typedef struct {
    pthread_mutex_t lock;
    const char *path_format;    // with one %ld for the pid
    int readable;               // open read-write (to mmap it)
    int always_fresh;           // a process's first open empties any file
    int fd;                     // -1 when closed
    pid_t pid;                  // the process that opened fd
    dev_t dev;                  // the file fd was opened on
    ino_t ino;
    pid_t started_by;           // the process that last opened it first
    int started_here;           // that open created or emptied the file
    char path[64];
} _PyPerfOutput;

#define _PyPerfOutput_INIT(FORMAT, READABLE, ALWAYS_FRESH) \
    {.lock = PTHREAD_MUTEX_INITIALIZER, .path_format = (FORMAT), \
     .readable = (READABLE), .always_fresh = (ALWAYS_FRESH), .fd = -1}

/* What _PyPerfOutput_Prepare() found. */
#define _PyPerfOutput_FAILED (-1)   // see _PyPerf_GetError()
#define _PyPerfOutput_READY 0       // open, with content
#define _PyPerfOutput_EMPTY 1       // open, empty: a format header is due

/* Make out's descriptor usable by this process: keep it if it still leads
   to the file this process opened; otherwise forget it without closing it
   (the program closed or reused it, or it is a forked parent's) and open
   the path, refusing symlinks, non-regular files (without blocking on a
   FIFO), files of other users or with other hard links.  The first open in
   a process empties a file left by an earlier process.  Lock held. */
extern int _PyPerfOutput_Prepare(_PyPerfOutput *out);
/* Write all of buf, retrying on EINTR and short writes; a failed write
   leaves nothing half-written.  Return 0, or -1 after _PyPerf_SetError().
   Lock held, after a successful _PyPerfOutput_Prepare(). */
extern int _PyPerfOutput_Write(_PyPerfOutput *out, const void *buf,
                               size_t size);
/* Close the descriptor if it is still ours; the file stays.  Lock held. */
extern void _PyPerfOutput_Close(_PyPerfOutput *out);
/* Close, and remove the file if the last open created or emptied it. */
extern void _PyPerfOutput_Discard(_PyPerfOutput *out);
/* Hold the lock across fork(), in the parent. */
extern void _PyPerfOutput_BeforeFork(_PyPerfOutput *out);
extern void _PyPerfOutput_AfterForkParent(_PyPerfOutput *out);
/* In a forked child: reset the lock and let the parent's file go.  With
   keep, return the inherited descriptor of the parent's file (for the
   caller to read and close), or -1 if there is none. */
extern int _PyPerfOutput_AfterForkChild(_PyPerfOutput *out, int keep);
/* Reset a lock that another thread of the parent may have held. */
extern void _PyPerf_ResetLockAfterFork(pthread_mutex_t *lock);
#endif


/* ---- The perf map shared with C code (Python/perf_map.c) ---- */

/* Hold and release the map's lock across fork(). */
extern void _PyPerfMap_BeforeFork(void);
extern void _PyPerfMap_AfterForkParent(void);
/* Called by _PyPerfTrampoline_AfterForkChild().  With persist, the child
   gets a copy of the map that the parent had open (whatever wrote it).
   Return 1 if a copy was made, 0 if not, -1 after _PyPerf_SetError(). */
extern int _PyPerfMap_AfterForkChild(int persist);


/* ---- The jitdump file (Python/perf_jitdump.c) ---- */

/* One piece of code and what perf needs to know about it. */
typedef struct {
    const void *code;
    size_t code_size;
    const char *name;            // symbol name
    const char *filename;        // source file of the first line
    int lineno;                  // first line
    const void *unwind_data;     // .eh_frame then .eh_frame_hdr
    size_t unwind_size;          // both together
    size_t eh_frame_hdr_size;    // the .eh_frame_hdr part
    size_t unwind_mapped_size;   // bytes after the code covered by it
} _PyJitdump_Code;

/* Create /tmp/jit-PID.dump with its header and map it executable so that
   perf record sees it.  Return 0, or -1 after _PyPerf_SetError(). */
extern int _PyJitdump_Open(void);
/* Write the debug, unwinding and load records of one piece of code, whole
   and in that order, with the next code index.  Thread-safe. */
extern int _PyJitdump_WriteCode(const _PyJitdump_Code *code);
extern void _PyJitdump_Close(void);
/* Hold and release the dump's lock across fork(). */
extern void _PyJitdump_BeforeFork(void);
extern void _PyJitdump_AfterForkParent(void);
/* In a forked child: forget the parent's dump without touching it. */
extern void _PyJitdump_AfterForkChild(void);


/* ---- Start-up and the sys functions (Python/perf_config.c) ---- */

/* Reserve interp's co_extra index; for the main interpreter, read -X perf,
   -X perf_jit, the backends' environment variables and PYTHON_PERF_GDB, and
   activate the chosen backend.  Never fails: problems are reported on
   stderr and profiling stays off. */
extern void _PyPerfTrampoline_InitFromConfig(PyThreadState *tstate);
/* The implementations of sys.activate_stack_trampoline() and
   sys.deactivate_stack_trampoline(). */
extern PyObject * _PyPerfTrampoline_SysActivate(const char *backend);
extern PyObject * _PyPerfTrampoline_SysDeactivate(void);


/* ---- Switching from outside the process (Python/perf_remote.c) ---- */

/* PYTHON_PERF_REMOTE=1: start the thread that takes switches from
   Tools/perf/perf_switch.py (main interpreter, at start-up). */
extern void _PyPerfRemote_Start(PyThreadState *tstate);
/* Called by _PyPerfTrampoline_AfterForkChildHooks(): the child takes
   switches for its own pid. */
extern void _PyPerfRemote_AfterForkChild(PyThreadState *tstate);
/* Called by _PyPerfTrampoline_ChildWillExec(), in a child of subprocess
   that runs preexec_fn before exec(): it takes no switch. */
extern void _PyPerfRemote_ChildWillExec(void);


/* ---- The trampolines (Python/perf_trampoline.c) ---- */

/* Reserve interp's co_extra index (see "Memory" in perf_trampoline.c).
   Return 0, or -1 after _PyPerf_SetError(). */
extern int _PyPerfTrampoline_AddInterpreter(PyInterpreterState *interp);
typedef enum {
    _PyPerf_ACTIVATED,
    _PyPerf_OTHER_HOOK,         // another frame evaluation function is set
    _PyPerf_BACKEND_IN_USE,     // another interpreter uses another backend
    _PyPerf_ACTIVATE_FAILED,    // see _PyPerf_GetError()
} _PyPerf_ActivateResult;
/* Install the hook in interp, with backend's output open. */
extern _PyPerf_ActivateResult _PyPerfTrampoline_Activate(
    PyInterpreterState *interp, const _PyPerf_Backend *backend);
/* Remove the hook from interp (the output stays open for the others). */
extern void _PyPerfTrampoline_Deactivate(PyInterpreterState *interp);
/* The backend whose output is open, or NULL. */
extern const _PyPerf_Backend * _PyPerfTrampoline_OpenBackend(void);
/* Describe trampolines to gdb too (the default) or not. */
extern void _PyPerfTrampoline_SetGdbEnabled(int enabled);
/* sys.is_stack_trampoline_active(). */
extern int _PyPerfTrampoline_IsActive(PyInterpreterState *interp);
/* For Tools/bench (through _testinternalcapi): install the hook under
   another name, which Python/ceval.c treats like any other PEP 523 hook
   (the generic road for calls), to measure what the fast road saves. */
PyAPI_FUNC(void) _PyPerfTrampoline_SetGenericCalls(int enabled);
/* The frame evaluation hook.  Python/ceval.c recognises it: with it, and no
   other hook, Python-to-Python calls stay specialised and push the callee's
   frame themselves before calling it. */
extern PyObject * _PyPerfTrampoline_EvalFrame(
    PyThreadState *tstate, struct _PyInterpreterFrame *frame, int throwflag);
/* The same for a frame that a Python-to-Python call site of Python/ceval.c
   pushed, after checking _PyPerf_StackHasRoom() itself. */
extern PyObject * _PyPerfTrampoline_EvalPushedFrame(
    PyThreadState *tstate, struct _PyInterpreterFrame *frame);
/* Called by finalize_interp_clear(): remove the hook of interp; for the
   main interpreter also close the outputs (the trampolines stay mapped). */
extern void _PyPerfTrampoline_Fini(PyInterpreterState *interp);
/* Called by PyOS_BeforeFork() and PyOS_AfterFork_Parent(): hold the locks
   of the perf files and of the gdb list across fork(), so that the child
   inherits no half-done update from another thread. */
extern void _PyPerfTrampoline_BeforeFork(void);
extern void _PyPerfTrampoline_AfterForkParent(void);
/* Called by PyOS_AfterFork_Child(), before and after the interpreter's own
   after-fork hooks (code run between them is not named). */
extern void _PyPerfTrampoline_AfterForkChild(void);
extern void _PyPerfTrampoline_AfterForkChildHooks(void);
/* Called by Modules/_posixsubprocess.c, before PyOS_AfterFork_Child(), in
   a child that runs preexec_fn and then exec()s another program: nothing it
   runs is named, so that the program it becomes (the same pid) finds no map
   or dump of this one, and it takes no switch from outside. */
PyAPI_FUNC(void) _PyPerfTrampoline_ChildWillExec(void);

/* Calls run through the hook and a trampoline only near the top of a
   thread's C stack, above this thread's floor.  Below it, Python/ceval.c
   runs Python-to-Python calls the stock way, in the caller's own
   evaluator, and the hook calls the evaluator directly, so that recursion
   reaches the depth it reaches without the hook (see "The C stack" in
   Python/perf_trampoline.c). */
#ifdef PY_HAVE_PERF_TRAMPOLINE
/* initial-exec: a plain load from the thread pointer, also in libpython.so,
   which is loaded with the program (or early enough by dlopen(): the
   variable is small). */
extern _Thread_local uintptr_t _PyPerf_stack_floor
    __attribute__((tls_model("initial-exec")));
/* Measure this thread's stack the first time; then say whether sp is
   above the floor. */
extern int _PyPerf_MeasureStack(uintptr_t sp);

static inline int
_PyPerf_StackHasRoom(void)
{
    uintptr_t sp;
#if defined(__x86_64__)
    __asm__("mov %%rsp, %0" : "=r" (sp));
#elif defined(__aarch64__)
    __asm__("mov %0, sp" : "=r" (sp));
#else
    char here;
    sp = (uintptr_t)&here;
#endif
    if (sp >= _PyPerf_stack_floor) {
        return 1;
    }
    return _PyPerf_MeasureStack(sp);
}
#else
static inline int
_PyPerf_StackHasRoom(void)
{
    return 1;
}
#endif


/* The signature of the assembly template in Python/asm_trampoline.S. */
typedef PyObject *(*_PyPerf_TrampolineFunc)(
    PyThreadState *tstate, struct _PyInterpreterFrame *frame,
    int throwflag, _PyFrameEvalFunction evaluator);

/* ---- The template and its unwind information (Python/perf_unwind.c) ---- */

/* The template's first byte; offsets in bytes from there to the ends of
   the instructions that push the frame, set the frame pointer and pop the
   frame, and its size (from the labels of Python/asm_trampoline.S). */
typedef struct {
    const char *start;
    size_t frame_pushed;
    size_t frame_set;
    size_t frame_popped;
    size_t code_size;
} _PyPerf_TrampolineLayout;

extern const _PyPerf_TrampolineLayout * _PyPerf_GetTrampolineLayout(void);


/* How the FDE written by _PyPerf_BuildEhFrame() encodes its code pointers:
   4 bytes relative to the field itself (DW_EH_PE_pcrel | DW_EH_PE_sdata4),
   or 8-byte absolute addresses (DW_EH_PE_absptr). */
#define _PyPerf_EH_PCREL 0
#define _PyPerf_EH_ABSOLUTE 1

typedef struct {
    size_t size;                // bytes written: CIE, FDE, 4-byte terminator
    size_t fde_offset;          // where the FDE starts (the CIE is before it)
    size_t pc_begin_offset;     // of the FDE's pc_begin field, from the start
} _PyPerf_EhFrame;

/* Write into buffer an .eh_frame section that describes one trampoline: a
   CIE, an FDE with the frame rules of the template (pc_range: its code
   size) and a zero terminator.  pc_begin is left 0 for the caller to fill
   in with the given encoding.  Return 0, or -1 if capacity is too small. */
extern int _PyPerf_BuildEhFrame(uint8_t *buffer, size_t capacity,
                                int encoding, _PyPerf_EhFrame *result);

/* .eh_frame and .eh_frame_hdr for a trampoline of code_size bytes, as
   `perf inject --jit` lays them out: right after the code. */
#define _PyPerf_INJECT_UNWIND_CAPACITY 160
typedef struct {
    uint8_t bytes[_PyPerf_INJECT_UNWIND_CAPACITY];
    size_t size;                // both sections
    size_t eh_frame_hdr_size;   // the .eh_frame_hdr part
} _PyPerf_InjectUnwind;

extern void _PyPerf_BuildInjectUnwind(_PyPerf_InjectUnwind *info,
                                      size_t code_size);


/* ---- gdb's JIT interface (Python/perf_gdb_jit.c) ---- */

/* Describe to debuggers how to unwind through each of the count
   trampolines of a new arena, slot_size bytes apart from memory on, before
   any of them runs and before they have names.  One registration per
   arena; never fails (without memory, the arena is not described). */
extern void _PyPerfGdb_AddArena(const void *memory, size_t slot_size,
                                size_t count);
/* Describe a trampoline of size bytes at code, named name
   ("py::qualname:filename"), to debuggers that read the process's
   __jit_debug_descriptor (gdb, live or from a core file).  Called once per
   trampoline, when it is first named.  Thread-safe; never fails: after an
   allocation failure, trampolines are silently no longer described.
   Return a handle for _PyPerfGdb_ForgetTrampoline(), or NULL. */
extern void * _PyPerfGdb_AddTrampoline(const void *code, size_t size,
                                       const char *name);
/* The code object of the trampoline described under handle died: its
   description may go once its neighbours' have gone too. */
extern void _PyPerfGdb_ForgetTrampoline(void *handle);
/* Register at once what is still waiting for the next registration (see
   "Chunks" in Python/perf_gdb_jit.c). */
extern void _PyPerfGdb_Flush(void);
/* Hold and release the gdb list's lock across fork(). */
extern void _PyPerfGdb_BeforeFork(void);
extern void _PyPerfGdb_AfterForkParent(void);
/* Called by _PyPerfTrampoline_AfterForkChild(): the child keeps the
   descriptions (they are its trampolines too) and resets the lock. */
extern void _PyPerfGdb_AfterForkChild(void);

#ifdef __cplusplus
}
#endif
#endif /* !Py_INTERNAL_PERF_TRAMPOLINE_H */
