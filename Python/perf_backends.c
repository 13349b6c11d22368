/*
 * The list of perf backends.
 *
 * The problem
 * -----------
 * The trampolines (Python/perf_trampoline.c) and the start-up options
 * (Python/perf_config.c) work with any backend: what a backend tells the
 * profiler is its own business (see _PyPerf_Backend in
 * Include/internal/pycore_perf_trampoline.h).  Something must still know
 * which backends exist.
 *
 * The design
 * ----------
 * This list, and nothing else.  The core iterates it (fork), the start-up
 * code iterates it (-X NAME, the environment variables) and looks names up
 * in it (sys.activate_stack_trampoline()).  Adding a backend means writing
 * it and adding it here; no other file changes.
 *
 * The order is that of the environment variables at start-up: the first
 * backend whose variable is set wins, so the jitdump (which also serves
 * frame-pointer unwinding) comes first.
 */

#include "Python.h"
#include "pycore_perf_trampoline.h"   // _PyPerf_Backend

#include <string.h>                   // strcmp()

#ifdef PY_HAVE_PERF_TRAMPOLINE

const _PyPerf_Backend *const _PyPerf_Backends[] = {
    &_PyPerf_JitdumpBackend,
    &_PyPerf_MapBackend,
    NULL,
};

const _PyPerf_Backend *
_PyPerf_FindBackend(const char *name)
{
    for (const _PyPerf_Backend *const *b = _PyPerf_Backends; *b; b++) {
        if (strcmp((*b)->name, name) == 0) {
            return *b;
        }
    }
    return NULL;
}

#endif /* PY_HAVE_PERF_TRAMPOLINE */
