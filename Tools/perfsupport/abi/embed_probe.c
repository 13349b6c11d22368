/*
 * embed_probe: an embedding application for Tools/perfsupport/abi-check.sh.
 *
 * Compiled against the headers of a STOCK CPython 3.11 build and linked
 * against the stock libpython3.11.so.1.0, it is then run with
 * LD_LIBRARY_PATH pointing at the PATCHED build's library.  The PyConfig
 * structure lives on this program's stack with the stock size: if the perf
 * support had grown it, PyConfig_InitPythonConfig() would write past it.
 *
 * With PYTHONPERFSUPPORT=1 in the environment, the patched library starts
 * the perf trampolines, so /tmp/perf-PID.map must name embedded_probe.
 * Prints "embedded_probe=<value> pid=<pid> trampoline=<state>".
 */

#include <Python.h>

static const char probe_script[] =
    "import os, sys\n"
    "def embedded_probe(n):\n"
    "    total = 0\n"
    "    for i in range(n):\n"
    "        total += i * i\n"
    "    return total\n"
    "active = getattr(sys, 'is_stack_trampoline_active', None)\n"
    "state = 'absent' if active is None else str(active())\n"
    "print('embedded_probe=%d pid=%d trampoline=%s'\n"
    "      % (embedded_probe(10), os.getpid(), state))\n";

int
main(int argc, char **argv)
{
    PyConfig config;
    PyStatus status;

    PyConfig_InitPythonConfig(&config);
    status = PyConfig_SetBytesString(&config, &config.program_name, argv[0]);
    if (PyStatus_Exception(status)) {
        PyConfig_Clear(&config);
        Py_ExitStatusException(status);
    }
    status = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(status)) {
        Py_ExitStatusException(status);
    }
    int rc = PyRun_SimpleString(probe_script);
    if (Py_FinalizeEx() < 0) {
        return 120;
    }
    return rc == 0 ? 0 : 1;
}
