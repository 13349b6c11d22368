/*
 * The "perf_jit" backend: describing trampolines in a jitdump.
 *
 * The problem
 * -----------
 * `perf record -g` follows frame pointers, and most Python interpreters in
 * the wild (Debian's own among them) are built without them: the walk stops
 * at the first function that does not keep one.  perf can instead copy a
 * slice of the stack with each sample and unwind it afterwards with DWARF
 * call frame information (`perf record --call-graph dwarf`).  The
 * interpreter's own code has that information in its .eh_frame; trampolines
 * live in anonymous memory and have none, so the unwinder would stop at the
 * first one.
 *
 * The answer
 * ----------
 * For each trampoline, this backend writes to the jitdump
 * (Python/perf_jitdump.c knows the format) its name, its first source line
 * and an .eh_frame/.eh_frame_hdr pair that describes exactly how the
 * trampoline's frame is built, instruction by instruction.  `perf inject
 * --jit` turns that into jitted-PID-N.so files that perf report can symbolise
 * and unwind through, down into the interpreter and up to main().
 *
 * The unwind information is built by Python/perf_unwind.c (its format is
 * described there): the same bytes for every trampoline, built once.  perf
 * maps it right after the code ("mapped size"); the trampoline arenas
 * leave that much room after each trampoline (reserved_after), so that the
 * generated libraries never overlap.
 */

#include "Python.h"
#include "pycore_perf_trampoline.h"   // _PyPerf_Backend

#ifdef PY_HAVE_PERF_TRAMPOLINE

#include <stdint.h>                   // uint8_t
#include <string.h>                   // memcpy()

/* ---- The backend -------------------------------------------------------- */

static _PyPerf_InjectUnwind unwind;
static size_t unwind_for_size;  // the code size unwind was built for

static const _PyPerf_InjectUnwind *
get_unwind_info(size_t code_size)
{
    if (unwind_for_size != code_size) {
        _PyPerf_BuildInjectUnwind(&unwind, code_size);
        unwind_for_size = code_size;
    }
    return &unwind;
}

static size_t
jit_reserved_after(size_t code_size)
{
    /* perf maps the unwind information after the code rounded up to 8. */
    size_t padding = _Py_SIZE_ROUND_UP(code_size, 8) - code_size;
    return padding + get_unwind_info(code_size)->size;
}

static int
jit_open(void)
{
    return _PyJitdump_Open();
}

static int
jit_emit(const _PyPerf_Description *what)
{
    const _PyPerf_InjectUnwind *info = get_unwind_info(what->size);
    _PyJitdump_Code record = {
        .code = what->code,
        .code_size = what->size,
        .name = what->name,
        .filename = what->filename,
        .lineno = what->lineno,
        .unwind_data = info->bytes,
        .unwind_size = info->size,
        .eh_frame_hdr_size = info->eh_frame_hdr_size,
        .unwind_mapped_size = info->size,
    };
    return _PyJitdump_WriteCode(&record);
}

static void
jit_close(void)
{
    _PyJitdump_Close();
}

static int
jit_after_fork_child(int Py_UNUSED(persist))
{
    /* The parent's dump is not the child's, active or not.  The child's
       starts at its first record: the trampolines it inherited are
       described again, at the same addresses, as they run. */
    _PyJitdump_AfterForkChild();
    return 0;
}

const _PyPerf_Backend _PyPerf_JitdumpBackend = {
    .name = "perf_jit",
    .env_variable = "PYTHON_PERF_JIT_SUPPORT",
    .reserved_after = jit_reserved_after,
    .open = jit_open,
    .emit = jit_emit,
    .close = jit_close,
    .before_fork = _PyJitdump_BeforeFork,
    .after_fork_parent = _PyJitdump_AfterForkParent,
    .after_fork_child = jit_after_fork_child,
};

#endif /* PY_HAVE_PERF_TRAMPOLINE */
