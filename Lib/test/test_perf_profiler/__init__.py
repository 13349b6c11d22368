"""Tests for the Linux perf profiler support.

Covers -X perf / -X perf_jit, PYTHONPERFSUPPORT / PYTHON_PERF_JIT_SUPPORT,
sys.activate_stack_trampoline() and friends, the /tmp/perf-PID.map and
/tmp/jit-PID.dump files (format, fork, threads, subinterpreters, hostile
/tmp, failures to write them) and the real perf tool reading them, one
concern a module:

    test_activation   -X options, environment, sys functions, precedence,
                      warnings, subinterpreters
    test_perf_map     the map: names and format, fork, threads,
                      persistence after fork, a C extension writing it,
                      interpreters that multiprocessing starts, stress
    test_behaviour    generators, coroutines, specialised calls, programs
                      that behave as without profiling
    test_jitdump      the jitdump of perf_jit
    test_failures     hostile /tmp, a full disk, an unwritable /tmp, a
                      failed backend switch
    test_real_perf    the real perf reading the map and the jitdump,
                      and samples inside a native library without frame
                      pointers
    test_remote       switching a running process on and off from outside
                      (PYTHON_PERF_REMOTE, Tools/perf/perf_switch.py),
                      in containers rootful and rootless, an embedder
                      that initialises Python again, a pre-forking
                      server recorded system-wide
    test_containers   a process in its own namespaces recorded from the
                      host and reported after it exited
                      (Tools/perf/perf_record_ns.py)

util holds what they share (PerfTestCase, the readers of the files, the
paths, the parser of perf script output); test_perfmaps and
test_perf_hardening use it too.  The C API (Include/cpython/perfmaps.h) has
its own tests in test_perfmaps.
"""

import os
import sys
import sysconfig
import unittest

from test import support
from test.support import load_package_tests


# Every module of the package, util included, is imported through the
# package: these checks skip all of them.
if not sys.platform.startswith("linux"):
    raise unittest.SkipTest("perf trampolines are only supported on Linux")
if not sysconfig.get_config_var("PY_HAVE_PERF_TRAMPOLINE"):
    raise unittest.SkipTest("this build has no perf trampoline support")
if not support.has_subprocess_support:
    raise unittest.SkipTest("test module requires subprocess")


def load_tests(*args):
    return load_package_tests(os.path.dirname(__file__), *args)
