/*
 * Switching the perf support on: start-up options and the sys functions.
 *
 * The problem
 * -----------
 * Users turn the support on in three ways, with a precedence between them:
 *
 *     sys.activate_stack_trampoline("perf" | "perf_jit")   at run time, wins
 *     -X perf, -X perf_jit (=0 or =1)                       at start-up
 *     PYTHONPERFSUPPORT=1, PYTHON_PERF_JIT_SUPPORT=1         at start-up
 *
 * The command line wins over the environment (the last -X option of the
 * two wins; -X perf=0 turns off what the environment turned on); when both
 * variables are set, the jitdump wins.  Values are those of other PYTHON*
 * switches: 0 off, any other integer on, "-X perf" alone on; anything else
 * draws one warning and is ignored.  PYTHON_PERF_GDB=0 keeps the
 * trampolines from being described to gdb.  Start-up never fails because
 * of the support: a problem is a warning on stderr and profiling stays off.
 *
 * The design
 * ----------
 * This file parses and reports; Python/perf_trampoline.c does the work
 * (_PyPerfTrampoline_Activate()).  Neither names a backend: the option
 * names and variables come from the list in Python/perf_backends.c.
 */

#include "Python.h"
#include "pycore_interp.h"            // _PyInterpreterState_GetConfig()
#include "pycore_perf_trampoline.h"   // _PyPerfTrampoline_Activate()
#include "pycore_pystate.h"           // _PyInterpreterState_GET()

#include <errno.h>                    // errno
#include <stdlib.h>                   // strtol(), getenv(), wcstombs()
#include <string.h>                   // strcmp(), strcpy()
#include <wchar.h>                    // wcsncmp()

#ifdef PY_HAVE_PERF_TRAMPOLINE

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

/* The backend that -X option names: -X NAME or -X NAME=VALUE.  Return it
   and set *value to what follows '=' (NULL if none), or return NULL. */
static const _PyPerf_Backend *
backend_of_xoption(const wchar_t *option, const wchar_t **value)
{
    for (const _PyPerf_Backend *const *b = _PyPerf_Backends; *b; b++) {
        const char *name = (*b)->name;
        size_t i = 0;
        while (name[i] != '\0' && option[i] == (wchar_t)name[i]) {
            i++;
        }
        if (name[i] != '\0') {
            continue;
        }
        if (option[i] == L'\0') {
            *value = NULL;
            return *b;
        }
        if (option[i] == L'=') {
            *value = option + i + 1;
            return *b;
        }
        // another option, e.g. -X perfx (or -X perf_jit for "perf")
    }
    return NULL;
}

/* -X NAME, -X NAME=VALUE for each backend NAME: the last one on the command
   line wins.  Return the chosen backend's name, "" to disable, or NULL if
   the command line says nothing. */
static const char *
backend_from_xoptions(const PyConfig *config)
{
    const char *chosen = NULL;
    for (Py_ssize_t i = 0; i < config->xoptions.length; i++) {
        const wchar_t *wvalue;
        const _PyPerf_Backend *backend =
            backend_of_xoption(config->xoptions.items[i], &wvalue);
        if (backend == NULL) {
            continue;
        }
        if (wvalue == NULL) {
            chosen = backend->name;
            continue;
        }
        /* Values longer than this are not switches: shown as "...". */
        char value[32];
        size_t n = wcstombs(NULL, wvalue, 0);
        if (n == (size_t)-1 || n >= sizeof(value)) {
            strcpy(value, "...");
        }
        else {
            wcstombs(value, wvalue, sizeof(value));
        }
        int on = parse_switch(value);
        if (on < 0) {
            PySys_WriteStderr("Python: warning: -X %s=%s: invalid value, "
                              "expected 0 or 1; ignored\n", backend->name,
                              value);
            continue;
        }
        chosen = on ? backend->name : "";
    }
    return chosen;
}

/* The switch in environment variable name: 1 on, 0 off, -1 if unset,
   empty or invalid (with a warning). */
static int
switch_from_environment(const char *name)
{
    const char *value = getenv(name);
    if (value == NULL || value[0] == '\0') {
        return -1;
    }
    int on = parse_switch(value);
    if (on < 0) {
        PySys_FormatStderr("Python: warning: %s=%.50s: invalid value, "
                           "expected 0 or 1; ignored\n", name, value);
    }
    return on;
}

/* The backends' environment variables (PYTHONPERFSUPPORT,
   PYTHON_PERF_JIT_SUPPORT): the first backend of the list whose variable
   is on wins (the jitdump).  Each variable is read, so that each invalid
   value gets its warning. */
static const char *
backend_from_environment(const PyConfig *config)
{
    if (!config->use_environment) {
        return NULL;
    }
    const char *chosen = NULL;
    for (const _PyPerf_Backend *const *b = _PyPerf_Backends; *b; b++) {
        if (switch_from_environment((*b)->env_variable) == 1
            && chosen == NULL)
        {
            chosen = (*b)->name;
        }
    }
    return chosen;
}

void
_PyPerfTrampoline_InitFromConfig(PyThreadState *tstate)
{
    /* Every interpreter takes its co_extra index now, before any other
       user can: see "Memory" in Python/perf_trampoline.c. */
    if (_PyPerfTrampoline_AddInterpreter(tstate->interp) < 0) {
        PySys_WriteStderr("Python: warning: perf profiler support is "
                          "unavailable: %.400s\n", _PyPerf_GetError());
        return;
    }
    if (!_Py_IsMainInterpreter(tstate->interp)) {
        return;
    }
    const PyConfig *config = _PyInterpreterState_GetConfig(tstate->interp);
    /* Switched from outside later on, whatever starts now. */
    if (config->use_environment
        && switch_from_environment("PYTHON_PERF_REMOTE") == 1)
    {
        _PyPerfRemote_Start(tstate);
    }
    if (config->use_environment
        && switch_from_environment("PYTHON_PERF_GDB") == 0)
    {
        _PyPerfTrampoline_SetGdbEnabled(0);
    }
    const char *name = backend_from_xoptions(config);
    if (name == NULL) {
        name = backend_from_environment(config);
    }
    if (name == NULL || name[0] == '\0') {
        return;
    }
    const char *reason = NULL;
    switch (_PyPerfTrampoline_Activate(tstate->interp,
                                       _PyPerf_FindBackend(name))) {
    case _PyPerf_ACTIVATED:
        return;
    case _PyPerf_OTHER_HOOK:
        reason = "another frame evaluation function is installed";
        break;
    case _PyPerf_BACKEND_IN_USE:
    case _PyPerf_ACTIVATE_FAILED:
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
    const _PyPerf_Backend *backend = _PyPerf_FindBackend(name);
    if (backend == NULL) {
        PyErr_Format(PyExc_ValueError, "invalid backend: %s", name);
        return NULL;
    }
    PyInterpreterState *interp = _PyInterpreterState_GET();
    switch (_PyPerfTrampoline_Activate(interp, backend)) {
    case _PyPerf_ACTIVATED:
        Py_RETURN_NONE;
    case _PyPerf_OTHER_HOOK:
        PyErr_SetString(PyExc_RuntimeError,
                        "cannot activate the perf trampoline: another frame "
                        "evaluation function is installed");
        return NULL;
    case _PyPerf_BACKEND_IN_USE:
        PyErr_Format(PyExc_RuntimeError,
                     "cannot activate the %s backend: another interpreter is "
                     "using the %s backend", name,
                     _PyPerfTrampoline_OpenBackend()->name);
        return NULL;
    case _PyPerf_ACTIVATE_FAILED:
        break;
    }
    PyErr_Format(PyExc_RuntimeError, "cannot activate the %s backend: %s",
                 name, _PyPerf_GetError());
    return NULL;
}

PyObject *
_PyPerfTrampoline_SysDeactivate(void)
{
    _PyPerfTrampoline_Deactivate(_PyInterpreterState_GET());
    Py_RETURN_NONE;
}


#else  /* !PY_HAVE_PERF_TRAMPOLINE */

/* Platforms without the assembly template: the options are accepted and
   the sys functions exist, and they say so. */

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

#endif /* PY_HAVE_PERF_TRAMPOLINE */
