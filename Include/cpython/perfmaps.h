/* Sharing the perf profiler's map file and trampolines with C code.
 *
 * The Linux perf profiler names code it cannot find in any binary with
 * /tmp/perf-PID.map, one "START SIZE name" line per piece of code.  An
 * extension module that generates machine code (a JIT, an FFI thunk) can add
 * its own lines to the interpreter's map through these functions; the lines
 * never interleave with the interpreter's.  See Doc/c-api/perfmaps.rst.
 */
#ifndef Py_LIMITED_API
#ifndef Py_CPYTHON_PERFMAPS_H
#define Py_CPYTHON_PERFMAPS_H
#ifdef __cplusplus
extern "C" {
#endif

/* Open /tmp/perf-PID.map for this process (once; calling again does
   nothing).  Return 0 on success, or -1 with errno set if the file cannot be
   opened or is not safe to write.  Does not need the GIL. */
PyAPI_FUNC(int) PyUnstable_PerfMapState_Init(void);

/* Append "code_addr code_size entry_name" to the map, opening it first if
   needed (also after PyUnstable_PerfMapState_Fini()).  Thread-safe; does not
   need the GIL.  Return 0 on success, or -1 with errno set. */
PyAPI_FUNC(int) PyUnstable_WritePerfMapEntry(
    const void *code_addr,
    unsigned int code_size,
    const char *entry_name);

/* Close the map (the file stays for perf to read). */
PyAPI_FUNC(void) PyUnstable_PerfMapState_Fini(void);

/* Append the lines of another process's map, typically the parent's
   /tmp/perf-PPID.map in a forked child, to this process's map.  Return 0 on
   success, or -1 with errno set. */
PyAPI_FUNC(int) PyUnstable_CopyPerfMapFile(const char *parent_filename);

/* With the perf trampoline active in the current interpreter, give code its
   trampoline now (and write its map line) rather than when it first runs.
   Return 0 on success or when the trampoline is not active, -1 with an
   exception set on failure.  Needs the GIL. */
PyAPI_FUNC(int) PyUnstable_PerfTrampoline_CompileCode(PyCodeObject *code);

/* With enable non-zero, a child created by fork() starts with a copy of the
   parent's map (if the parent had one open, whatever wrote it) instead of
   an empty one, so that the trampolines and the code it inherits are named
   before they run.  Return 0 on success, -1 where perf
   trampolines are not available. */
PyAPI_FUNC(int) PyUnstable_PerfTrampoline_SetPersistAfterFork(int enable);

#ifdef __cplusplus
}
#endif
#endif /* !Py_CPYTHON_PERFMAPS_H */
#endif /* !Py_LIMITED_API */
