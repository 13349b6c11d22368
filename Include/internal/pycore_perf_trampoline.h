/* Internal interface of the perf profiler support (Python/perf_*.c).
 *
 * Python/perf_trampoline.c owns the trampolines and the frame evaluation
 * hook; it hands each new trampoline to the active backend, which decides
 * what to tell the profiler (Python/perf_map.c: /tmp/perf-PID.map,
 * Python/perf_jit_trampoline.c: /tmp/jit-PID.dump).  Python/perf_outfile.c
 * opens and writes their files in /tmp safely.  Whatever the backend,
 * Python/perf_gdb_jit.c describes the trampolines to gdb.
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


/* ---- A backend: what to tell the profiler about each trampoline ---- */

typedef struct {
    /* The name given to sys.activate_stack_trampoline(). */
    const char *name;
    /* Bytes that must stay free after each described trampoline of
       code_size bytes (the jitdump maps its unwind information there). */
    size_t (*reserved_after)(size_t code_size);
    /* Prepare the output of this process.  Return 0, or -1 after
       _PyPerf_SetError(). */
    int (*open)(void);
    /* Describe one trampoline: its code, its size in bytes, its
       "py::qualname:filename" name and the code object it stands for.
       Called with the GIL held.  Return 0, or -1 after _PyPerf_SetError(). */
    int (*emit)(const void *code, size_t size, const char *name,
                PyCodeObject *co);
    /* Close the output (the files stay for perf to read). */
    void (*close)(void);
    /* In a child after fork(): start the child's own output.  With persist,
       it may copy what the parent's output says.  Return 1 if the child's
       output describes the parent's trampolines already, 0 if they must be
       described again, or -1 after _PyPerf_SetError(). */
    int (*after_fork_child)(int persist);
} _PyPerf_Backend;

extern const _PyPerf_Backend _PyPerf_MapBackend;       // "perf"
extern const _PyPerf_Backend _PyPerf_JitdumpBackend;   // "perf_jit"


/* ---- Errors: one message, reported once by the caller ---- */

/* Record why the last operation failed; errnum is an errno value or 0. */
extern void _PyPerf_SetError(int errnum, const char *format, ...);
/* The last recorded message (never NULL). */
extern const char * _PyPerf_GetError(void);


/* ---- Files in /tmp (Python/perf_outfile.c) ---- */

/* Open path for appending, refusing symlinks, non-regular files (without
   blocking on a FIFO) and files owned by another user or with other hard
   links; created with mode 0600 and close-on-exec.  flags: */
#define _PyPerf_OUTPUT_TRUNCATE 1   // empty an existing file of ours
#define _PyPerf_OUTPUT_READABLE 2   // open read-write, for mmap()
/* Return the descriptor, or -1 after _PyPerf_SetError(). */
extern int _PyPerf_OpenOutput(const char *path, int flags);
/* Write all of buf, retrying on EINTR and short writes.  Return 0, or -1
   after _PyPerf_SetError(). */
extern int _PyPerf_WriteAll(int fd, const void *buf, size_t size,
                            const char *path);


/* ---- The perf map shared with C code (Python/perf_map.c) ---- */

/* Append "START SIZE name" to /tmp/perf-PID.map.  Thread-safe, with or
   without the GIL.  Return 0, or -1 after _PyPerf_SetError(). */
extern int _PyPerfMap_WriteEntry(const void *code, size_t size,
                                 const char *name);
extern void _PyPerfMap_AfterForkChild(void);


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
/* In a forked child: forget the parent's dump without touching it. */
extern void _PyJitdump_AfterForkChild(void);


/* ---- The trampolines (Python/perf_trampoline.c) ---- */

/* Read -X perf, -X perf_jit, PYTHONPERFSUPPORT and PYTHON_PERF_JIT_SUPPORT
   and activate the chosen backend in the main interpreter.  Never fails:
   problems are reported on stderr and profiling stays off. */
extern void _PyPerfTrampoline_InitFromConfig(PyThreadState *tstate);
/* The implementations of sys.activate_stack_trampoline(),
   sys.deactivate_stack_trampoline() and sys.is_stack_trampoline_active(). */
extern PyObject * _PyPerfTrampoline_SysActivate(const char *backend);
extern PyObject * _PyPerfTrampoline_SysDeactivate(void);
extern int _PyPerfTrampoline_IsActive(PyInterpreterState *interp);
/* The frame evaluation hook.  Python/ceval.c recognises it: with it, and no
   other hook, Python-to-Python calls stay specialised and push the callee's
   frame themselves before calling it. */
extern PyObject * _PyPerfTrampoline_EvalFrame(
    PyThreadState *tstate, struct _PyInterpreterFrame *frame, int throwflag);
/* Called by finalize_interp_clear(): remove the hook of interp; for the
   main interpreter also close the outputs and release the trampolines. */
extern void _PyPerfTrampoline_Fini(PyInterpreterState *interp);
/* Called by PyOS_AfterFork_Child(). */
extern void _PyPerfTrampoline_AfterForkChild(void);


/* The signature of the assembly template in Python/asm_trampoline.S. */
typedef PyObject *(*_PyPerf_TrampolineFunc)(
    PyThreadState *tstate, struct _PyInterpreterFrame *frame,
    int throwflag, _PyFrameEvalFunction evaluator);

/* Offsets in bytes from the start of a trampoline to the ends of the
   instructions that push the frame, set the frame pointer and pop the
   frame, and its size (from the labels of Python/asm_trampoline.S). */
typedef struct {
    size_t frame_pushed;
    size_t frame_set;
    size_t frame_popped;
    size_t code_size;
} _PyPerf_TrampolineLayout;

extern const _PyPerf_TrampolineLayout * _PyPerf_GetTrampolineLayout(void);


/* ---- Unwind information (Python/perf_jit_trampoline.c) ---- */

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


/* ---- gdb's JIT interface (Python/perf_gdb_jit.c) ---- */

/* Describe a trampoline of size bytes at code, named name
   ("py::qualname:filename"), to debuggers that read the process's
   __jit_debug_descriptor (gdb, live or from a core file).  Called once per
   trampoline, when it is first named.  Thread-safe; never fails: after an
   allocation failure, trampolines are silently no longer described. */
extern void _PyPerfGdb_AddTrampoline(const void *code, size_t size,
                                     const char *name);
/* Called by _PyPerfTrampoline_AfterForkChild(): the child keeps the
   descriptions (they are its trampolines too) and resets the lock. */
extern void _PyPerfGdb_AfterForkChild(void);
/* Withdraw and free all descriptions; called when the main interpreter is
   finalised, before the trampolines are unmapped. */
extern void _PyPerfGdb_Fini(void);

#ifdef __cplusplus
}
#endif
#endif /* !Py_INTERNAL_PERF_TRAMPOLINE_H */
