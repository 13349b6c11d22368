"""Regression tests for faults found in the perf support.

Each class is about one fault: its docstring states the fault, and a
comment above it says how the tests failed on the interpreter built before
the fix.  Every scenario runs in a child interpreter (through the helpers of
test_perf_profiler), with a timeout, so that a crash or a deadlock of the
child fails the test instead of taking the test run down; the files that
the children write in /tmp are removed afterwards.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import textwrap
import unittest

from test import support
from test.support import import_helper, os_helper, threading_helper


# The package's helpers skip this module, at import, where the perf support
# cannot run (see test_perf_profiler/__init__.py).

from test.test_perf_profiler import test_failures
from test.test_perf_profiler.util import (
    CHILD_PREAMBLE, SUBPROCESS_TIMEOUT, UNSHARE, JitDump, PerfMap,
    PerfTestCase, entry_name, jitdump_path, map_path, probe_once, unshare)


BACKENDS = ("perf", "perf_jit")

# A child that deadlocks is killed after this many seconds (the scenarios
# that can deadlock take well under a second when they work).
HANG_TIMEOUT = 10


def describe_status(rc):
    """The exit status of a child, in words."""
    if rc < 0:
        try:
            return f"was killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"was killed by signal {-rc}"
    return f"exited with {rc}"


class HardeningTestCase(PerfTestCase):

    def assertExitedOk(self, res):
        """The child exited normally with status 0."""
        if res.rc != 0:
            cmd = " ".join(arg if len(arg) < 80 else arg[:60] + "..."
                           for arg in self.last_cmd)
            self.fail(f"{cmd} {describe_status(res.rc)}\n"
                      f"stdout:\n{res.out.decode(errors='replace')[-3000:]}\n"
                      f"stderr:\n{res.err.decode(errors='replace')[-3000:]}")

    def child_script(self, code, name="script"):
        """A script of code (dedented) after CHILD_PREAMBLE: what
        run_child() runs, for the children that must be run otherwise."""
        return self.make_script(CHILD_PREAMBLE + textwrap.dedent(code), name)


# ---- F1: daemon threads at exit ---------------------------------------------

# A daemon thread keeps calling a Python function that sleeps; at exit, a
# codec search function's default argument has a __del__ that sleeps while
# the interpreter is being finalised.
DAEMON_EXIT_SCRIPT = """\
import threading, time, codecs

def sleeper():
    time.sleep(0.2)

def worker():
    while True:
        sleeper()

threading.Thread(target=worker, daemon=True).start()

class Slow:
    def __del__(self, sleep=time.sleep):
        sleep(0.5)

codecs.register(lambda name, _keep=Slow(): None)
time.sleep(0.05)
print("main done")
"""


# Before the fix: every run crashed at exit, 3 of 3 under each backend:
#   AssertionError: .../fp-before/python -I -X perf .../script.py was
#   killed by SIGSEGV   (stdout: "main done")
@threading_helper.requires_working_threading()
class TestDaemonThreadsAtExit(HardeningTestCase):
    """Fault: SIGSEGV at exit with a daemon thread.  Finalisation unmapped
    the trampolines while a daemon thread still had frames in them; when
    that thread woke up (the GIL released by a __del__ that runs during
    finalisation), pthread_exit() unwound its stack through the unmapped
    code and crashed."""

    RUNS = 3

    def test_exit_with_daemon_thread(self):
        script = self.make_script(DAEMON_EXIT_SCRIPT)
        for backend in BACKENDS:
            for run in range(self.RUNS):
                with self.subTest(backend=backend, run=run):
                    res = self.run_python("-X", backend, script)
                    self.assertExitedOk(res)
                    self.assertEqual(res.out, b"main done\n")


# ---- F2: a descriptor reused after the program closed it --------------------

# argv[1] is the application's log file.  The program closes every
# descriptor above 2 (as daemonising code does) and opens its log, which gets
# the lowest free descriptor: the one the profiler's file had.
CLOSERANGE_SCRIPT = """\
import os, sys
PATH = sys.argv[1]

def before():
    return 1

before()
os.closerange(3, 1024)
log = open(PATH, "w", buffering=1)
log.write("app line 1\\n")

def after_daemonize():
    return 2

after_daemonize()
exec("def more(): return 3")
more()
log.write("app line 2\\n")
log.close()
print(open(PATH).read())
"""

# Started with descriptor 2 closed: the descriptors of the process, by
# number, after it ran some functions.
FDS_CODE = """
    import json, os
    def first():
        return 1
    first()
    for i in range(20):
        exec(f"def gen_{i}():\\n    return {i}\\n")
        globals()[f"gen_{i}"]()
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[name] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass            # the descriptor of the listing itself
    print("fds=" + json.dumps(fds), flush=True)
"""

APP_LINES = b"app line 1\napp line 2\n"


def close_stderr():
    os.close(2)


# Before the fix:
# - closerange, -X perf: the map lines went into the application's log:
#     AssertionError: b'7f4e63f45900 10 py::IncrementalEncoder.__[247
#     chars] 2\n' != b'app line 1\napp line 2\n'
# - closerange, -X perf_jit: jitdump records went into the log, then a write
#   into the program's next file failed and the jitdump closed that
#   descriptor; the child exited with 1:
#     Python: warning: perf profiler support stopped: cannot write
#     /tmp/jit-PID.dump: Bad file descriptor
#     OSError: [Errno 9] Bad file descriptor   (print(open(PATH).read()))
# - stderr closed: the map (the jitdump) was opened as descriptor 2:
#     AssertionError: Lists differ: [2] != [] ... descriptors 0-2 refer to
#     /tmp/perf-PID.map: {0: '/dev/null', 1: 'pipe:[...]',
#     2: '/tmp/perf-PID.map'}
class TestReusedDescriptor(HardeningTestCase):
    """Fault: the profiler kept writing to the descriptor of its file after
    the program closed it, so it wrote into whatever file the program opened
    next with that number; and a file opened while descriptor 2 was closed
    became the process's stderr."""

    def run_closerange(self, backend):
        script = self.make_script(CLOSERANGE_SCRIPT)
        log = os.path.join(self.tmp, "app-data.log")
        res = self.run_python("-X", backend, script, log)
        self.assertExitedOk(res)
        with open(log, "rb") as f:
            self.assertEqual(f.read(), APP_LINES)
        self.assertEqual(res.out, APP_LINES + b"\n")
        return res, script

    def test_closerange_map(self):
        res, script = self.run_closerange("perf")
        # Profiling went on after the descriptor was closed.
        pmap = self.read_map(res.pid)
        self.assertNamedOnce(pmap, "before", "after_daemonize",
                             filename=script)
        self.assertNamedOnce(pmap, "more", filename="<string>")

    def test_closerange_jitdump(self):
        res, script = self.run_closerange("perf_jit")
        # A valid dump (one header: reopened for appending) that goes on
        # after the descriptor was closed.
        names = self.jitdump_names(res.pid)
        for name in (entry_name("before", script),
                     entry_name("after_daemonize", script),
                     entry_name("more", "<string>")):
            self.assertEqual(names.count(name), 1, name)

    def check_stderr_closed(self, backend, path_of):
        script = self.child_script(FDS_CODE)
        res = self.run_python("-X", backend, script, preexec_fn=close_stderr)
        self.assertExitedOk(res)
        match = re.search(rb"^fds=(.*)$", res.out, re.M)
        self.assertIsNotNone(match, res)
        fds = {int(fd): target for fd, target in json.loads(match[1]).items()}
        path = path_of(res.pid)
        mine = sorted(fd for fd, target in fds.items() if target == path)
        self.assertEqual([fd for fd in mine if fd <= 2], [],
                         f"descriptors 0-2 refer to {path}: {fds}")
        for fd in mine:
            self.assertGreaterEqual(fd, 3)
        return res, script

    def test_stderr_closed_map(self):
        res, script = self.check_stderr_closed("perf", map_path)
        pmap = self.read_map(res.pid)
        self.assertNamedOnce(pmap, "first", filename=script)
        self.assertNamedOnce(pmap, "gen_19", filename="<string>")

    def test_stderr_closed_jitdump(self):
        res, script = self.check_stderr_closed("perf_jit", jitdump_path)
        names = self.jitdump_names(res.pid)
        for name in (entry_name("first", script),
                     entry_name("gen_19", "<string>")):
            self.assertEqual(names.count(name), 1, name)


# ---- F3: copying a map without the GIL while tracemalloc is on --------------

# argv[1]: the map to copy.  A thread copies it COPIES times through the C
# API called with ctypes.CDLL (which releases the GIL around the call) while
# the main thread keeps making and calling new functions, so the interpreter
# keeps writing map entries.
COPY_COPIES = 20
COPY_CODE = """
    import ctypes, sys, threading, tracemalloc
    COPIES = %d
    source = sys.argv[1].encode()
    copy = ctypes.CDLL(None).PyUnstable_CopyPerfMapFile
    copy.argtypes = [ctypes.c_char_p]
    copy.restype = ctypes.c_int
    tracemalloc.start()
    results = []
    def copier():
        for _ in range(COPIES):
            results.append(copy(source))
    thread = threading.Thread(target=copier)
    thread.start()
    made = 0
    while thread.is_alive() or made < 100:
        ns = {}
        exec(f"def fresh_{made}(x):\\n    return x + {made}\\n", ns)
        ns[f"fresh_{made}"](made)
        made += 1
    thread.join()
    print(f"results={results}", flush=True)
    print(f"made={made}", flush=True)
""" % COPY_COPIES


# Before the fix: the child deadlocked in 39 of 40 runs, so the test runs it
# 3 times and fails at the first deadlock:
#   AssertionError: ['.../fp-before/python', '-I', '-X', 'perf',
#   '.../script.py', '.../source.map'] timed out; stdout: b'pid=N\n'
# The deadlock needs the GIL holder to be running when the copy grows its
# buffer: the copier copies without pause, and the long line comes after
# 10000 short ones, so that the main thread has the time to take the GIL
# back and block on the map lock.  (A pause between copies, or the long
# line first, made the deadlock rare.)  With _testinternalcapi.
# copy_perf_map_file(), which held the GIL before the fix, the same child
# finished (results all 0): hence ctypes.CDLL, which releases the GIL and
# needs no change to _testinternalcapi.
@threading_helper.requires_working_threading()
class TestCopyWithTracemalloc(HardeningTestCase):
    """Fault: deadlock.  PyUnstable_CopyPerfMapFile(), called without the
    GIL, reallocated its buffer (for a line longer than 64 KiB) under the
    map lock; with tracemalloc on, the allocation hook waits for the GIL,
    while the GIL holder waits for the map lock to write a map entry."""

    ATTEMPTS = 3

    def setUp(self):
        super().setUp()
        import_helper.import_module("ctypes")
        import_helper.import_module("tracemalloc")

    def test_copy_in_thread_without_gil(self):
        # 10000 short lines, then one of 200 KiB: the copy buffer (64 KiB)
        # must grow while the lock is held.
        huge = b"abc 10 huge_" + b"h" * (200 * 1024)
        lines = [b"%x 10 copied_%d" % (0x1000 + i, i) for i in range(10000)]
        lines.append(huge)
        source = os.path.join(self.tmp, "source.map")
        with open(source, "wb") as f:
            f.write(b"\n".join(lines) + b"\n")
        script = self.child_script(COPY_CODE)

        for _ in range(self.ATTEMPTS):
            res = self.run_python("-X", "perf", script, source,
                                  timeout=HANG_TIMEOUT)
            self.assertExitedOk(res)
            self.assertIn(b"results=[%s]" % b", ".join([b"0"] * COPY_COPIES),
                          res.out)
            made = int(re.search(rb"^made=(\d+)$", res.out, re.M)[1])

            pmap = self.read_map(res.pid, python_only=False)
            self.assertEqual(pmap.lines.count(huge), COPY_COPIES)
            self.assertEqual(pmap.lines.count(b"1000 10 copied_0"),
                             COPY_COPIES)
            names = set(pmap.names())
            for i in range(made):
                self.assertIn(entry_name(f"fresh_{i}", "<string>"), names)
            del pmap, names
            os.unlink(map_path(res.pid))    # 8 MiB each


# ---- F4: another interpreter's co_extra data --------------------------------

# Run in a subinterpreter: take a co_extra index (i) and store garbage at
# every index up to i in the code of posixpath.join, which is deep-frozen and
# so shared by all interpreters.
FOREIGN_EXTRA_SUBINTERP_CODE = """\
import ctypes, posixpath
api = ctypes.pythonapi
api._PyEval_RequestCodeExtraIndex.argtypes = [ctypes.c_void_p]
api._PyEval_RequestCodeExtraIndex.restype = ctypes.c_ssize_t
api._PyCode_SetExtra.argtypes = [ctypes.py_object, ctypes.c_ssize_t,
                                 ctypes.c_void_p]
api._PyCode_SetExtra.restype = ctypes.c_int
index = api._PyEval_RequestCodeExtraIndex(None)
assert index >= 0, index
for k in range(index + 1):
    res = api._PyCode_SetExtra(ctypes.py_object(posixpath.join.__code__), k,
                               ctypes.c_void_p(0x4141414141414141))
    assert res == 0, res
"""

# argv[1]: a file holding the code above; argv[2]: "ended" (the
# subinterpreter is gone when the main interpreter calls os.path.join()
# again) or "alive" (it is destroyed afterwards).
FOREIGN_EXTRA_CODE = """
    import os, sys
    sub_script, mode = sys.argv[1:]
    with open(sub_script) as f:
        sub_code = f.read()
    os.path.join("x", "y")
    if mode == "ended":
        import _testcapi
        assert _testcapi.run_in_subinterp(sub_code) == 0
    else:
        import _xxsubinterpreters as interpreters
        sub = interpreters.create()
        interpreters.run_string(sub, sub_code)
    print("join=" + os.path.join("a", "b"), flush=True)
    for i in range(200):
        assert os.path.join("c", str(i)) == f"c/{i}"
        os.path.split(f"/x/{i}")
    if mode == "alive":
        interpreters.destroy(sub)
    print("done", flush=True)
"""


# Before the fix:
# - test_subinterpreter_ended: the child crashed at the first call of
#   os.path.join() after the subinterpreter ended:
#     AssertionError: .../fp-before/python -I -X perf .../script.py
#     .../sub.py ended was killed by SIGSEGV   (stdout: only "pid=N")
# - test_subinterpreter_alive PASSED: while another interpreter exists, the
#   hook takes the foreign pointer for another interpreter's data and leaves
#   it alone.  It is kept as a guard for the fix.
class TestForeignCodeExtra(HardeningTestCase):
    """Fault: SIGSEGV.  Another interpreter stored its own data in the
    co_extra slots of a deep-frozen code object (shared by all
    interpreters); once no other interpreter existed, the hook took what was
    in its slot for its own trampoline data and followed the pointer."""

    def setUp(self):
        super().setUp()
        import_helper.import_module("ctypes")

    def run_foreign(self, mode):
        sub_script = self.make_script(FOREIGN_EXTRA_SUBINTERP_CODE, "sub")
        res = self.run_python("-X", "perf",
                              self.child_script(FOREIGN_EXTRA_CODE),
                              sub_script, mode)
        self.assertExitedOk(res)
        self.assertIn(b"\njoin=a/b\n", res.out)
        self.assertTrue(res.out.endswith(b"\ndone\n"), res.out)

    def test_subinterpreter_ended(self):
        import_helper.import_module("_testcapi")
        self.run_foreign("ended")

    def test_subinterpreter_alive(self):
        import_helper.import_module("_xxsubinterpreters")
        self.run_foreign("alive")


# ---- F5: deep recursion -----------------------------------------------------

DEEP_MAIN_SCRIPT = """\
import sys
sys.setrecursionlimit(250000)

def f(n):
    return f(n - 1) + 1 if n else 0

print(f(200000))
"""

DEEP_THREAD_SCRIPT = """\
import threading
threading.stack_size(256 * 1024)

def f(n):
    return f(n - 1) + 1 if n else 0

result = []
thread = threading.Thread(target=lambda: result.append(f(950)))
thread.start()
thread.join()
print(result[0] if result else "no result")
"""

# Recursion through a C function that calls back into Python, deep enough
# to use most of an 8 MiB C stack in stock 3.11 (about 85%: stock itself
# runs out near a limit of 26,000 on x86-64), then RecursionError.
DEEP_CALLBACK_SCRIPT = """\
import sys
sys.setrecursionlimit(22000)

def down(n):
    return list(map(lambda x: down(n + 1), [1]))

try:
    down(0)
except RecursionError:
    print("RecursionError")
"""

MAIN_STACK = 8 * 1024 * 1024


def limit_stack():
    """preexec_fn: the default stack of 8 MiB (ulimit -s 8192)."""
    import resource
    _, hard = resource.getrlimit(resource.RLIMIT_STACK)
    resource.setrlimit(resource.RLIMIT_STACK, (MAIN_STACK, hard))


# Before the fix: the baselines (no option) passed; under -X perf and
# -X perf_jit both scripts crashed:
#   AssertionError: .../fp-before/python -I -X perf .../script.py was
#   killed by SIGSEGV
class TestDeepRecursion(HardeningTestCase):
    """Fault: SIGSEGV (stack overflow).  Under the trampoline each Python
    call took native stack, so recursion that 3.11 runs without native
    recursion overflowed the C stack far below the recursion limit."""

    def setUp(self):
        super().setUp()
        resource = import_helper.import_module("resource")
        _, hard = resource.getrlimit(resource.RLIMIT_STACK)
        if hard != resource.RLIM_INFINITY and hard < MAIN_STACK:
            self.unavailable(f"the hard stack limit ({hard} bytes) is "
                             f"below 8 MiB")

    def check_depth(self, source, expected):
        """source prints expected (bytes) without an option, under -X perf
        and under -X perf_jit, with an 8 MiB main stack."""
        script = self.make_script(source)
        for options in ((), ("-X", "perf"), ("-X", "perf_jit")):
            # The baseline first: without an option it must pass, or the
            # scenario says nothing about the trampolines.
            with self.subTest(options=options):
                res = self.run_python(*options, script,
                                      preexec_fn=limit_stack)
                self.assertExitedOk(res)
                self.assertEqual(res.out, expected)

    def test_main_thread(self):
        self.check_depth(DEEP_MAIN_SCRIPT, b"200000\n")

    # AddressSanitizer's larger frames: the control run (no -X option)
    # crashes too, at the depth where stock raises RecursionError.
    @unittest.skipIf(support.check_sanitizer(address=True),
                     "AddressSanitizer's stack frames are larger than the "
                     "recursion limit of this test allows for")
    def test_through_c_callbacks(self):
        # Found after the first fix, which covered Python-to-Python calls
        # only: frames that C code starts went through trampolines at any
        # depth, and the program crashed where stock raises RecursionError.
        self.check_depth(DEEP_CALLBACK_SCRIPT, b"RecursionError\n")

    @threading_helper.requires_working_threading()
    def test_thread_with_small_stack(self):
        self.check_depth(DEEP_THREAD_SCRIPT, b"950\n")


# ---- F6: back to the jitdump ------------------------------------------------

SWITCH_BACK_CODE = """
    import sys
    def f1():
        return 1
    def f2():
        return 2
    def f3():
        return 3
    sys.activate_stack_trampoline("perf_jit")
    f1()
    sys.activate_stack_trampoline("perf")
    f2()
    sys.activate_stack_trampoline("perf_jit")
    f3()
"""


# Before the fix: the dump was truncated when perf_jit came back:
#   AssertionError: 0 != 1 : f1
class TestSwitchBackToJitdump(HardeningTestCase):
    """Fault: switching from perf back to perf_jit truncated the jitdump,
    losing the records written before the first switch."""

    def test_perf_jit_perf_perf_jit(self):
        _, (pid,) = self.run_child(SWITCH_BACK_CODE)
        # read_jitdump() validates: one header, then records only.
        dump = self.read_jitdump(pid)
        names = [load.name for _, load in dump.code_loads()]
        for qualname in ("f1", "f3"):
            self.assertEqual(names.count(entry_name(qualname, "<string>")),
                             1, qualname)
        self.assertNotIn(entry_name("f2", "<string>"), names)
        self.assertNamedOnce(self.read_map(pid), "f2", filename="<string>")


# ---- F7: persistence after fork() in every state ----------------------------

# argv[1]: "inactive" (nothing activated), "active" (run with -X perf_jit) or
# "deactivated" (run with -X perf, deactivated before the C API writes).
PERSIST_STATE_CODE = """
    import os, sys, _testinternalcapi as t
    state = sys.argv[1]
    def parent_func():
        return 1
    if state == "deactivated":
        parent_func()
        sys.deactivate_stack_trampoline()
    assert t.perf_map_state_init() == 0
    assert t.write_perf_map_entry(0x1000, 16, "jit_a") == 0
    assert t.set_perf_trampoline_persist_after_fork(True) == 0
    if state == "replaced":
        path = f"/tmp/perf-{os.getpid()}.map"
        os.rename(path, path + ".moved")
        with open(path, "w") as f:
            f.write("dead 1 impostor\\n")
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            print(f"pid={os.getpid()}", flush=True)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, status
"""

C_API_LINE = b"1000 10 jit_a"


# Before the fix: the forked child had no map at all, in each state:
#   AssertionError: unexpectedly None : /tmp/perf-CHILDPID.map was not
#   written
@support.requires_fork()
class TestPersistAfterForkStates(HardeningTestCase):
    """Fault: PyUnstable_PerfTrampoline_SetPersistAfterFork(1) did nothing
    unless the perf backend was active: with nothing activated, with
    perf_jit active, or after deactivation, the forked child's map did not
    start with its parent's lines."""

    def setUp(self):
        super().setUp()
        import_helper.import_module("_testinternalcapi")

    def check_persisted(self, state, xoptions=()):
        _, (parent, child) = self.run_child(PERSIST_STATE_CODE, state,
                                            xoptions=xoptions)
        parent_map = self.read_map(parent, python_only=False)
        self.assertIn(C_API_LINE, parent_map.lines)
        child_map = PerfMap.read(child)
        self.assertIsNotNone(child_map, f"{map_path(child)} was not written")
        self.assertWellFormed(child_map, python_only=False)
        # The child wrote nothing itself: its map is its parent's.
        self.assertIn(C_API_LINE, child_map.lines)
        self.assertEqual(child_map.lines[:len(parent_map.lines)],
                         parent_map.lines)
        return parent_map, child_map

    def test_nothing_activated(self):
        self.check_persisted("inactive")

    def test_perf_jit_active(self):
        self.check_persisted("active", xoptions=("-X", "perf_jit"))

    def test_after_deactivation(self):
        parent_map, child_map = self.check_persisted(
            "deactivated", xoptions=("-X", "perf"))
        line = self.the_entry(parent_map, "parent_func", "<string>").line
        self.assertIn(line, child_map.lines)

    def test_parent_map_renamed(self):
        # The child copies the file its parent writes, through the
        # descriptor it inherits, not whatever has the name now.
        _, (parent, child) = self.run_child(PERSIST_STATE_CODE, "replaced")
        self.addCleanup(os_helper.unlink, map_path(parent) + ".moved")
        child_map = PerfMap.read(child)
        self.assertIsNotNone(child_map, f"{map_path(child)} was not written")
        self.assertIn(C_API_LINE, child_map.lines)
        self.assertNotIn(b"dead 1 impostor", child_map.lines)


# ---- F8: a new process starts new files -------------------------------------

# Run as pid 1 of a new PID namespace.
FRESH_PID_CODE = """\
import os
print(f"nspid={os.getpid()}", flush=True)
def fresh_func():
    return 1
fresh_func()
"""

STALE_MAP = b"dead 10 py::stale:/old.py\n"
STALE_DUMP = b"stale bytes of a dead process, not a jitdump\n" * 4

# argv[1]: the program to exec in the forked child.
EXEC_AFTER_FORK_CODE = """
    import os, sys
    # threading registers Python code that runs in every forked child
    # before os.fork() returns there.
    import threading
    program = sys.argv[1]
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        try:
            os.execv(program, [program])
        finally:
            os._exit(127)
    print(f"pid={pid}", flush=True)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, status
"""

# argv[1] is a program that is not Python.  subprocess runs before_exec()
# in the forked child, then exec()s the program, which keeps the child's pid.
PREEXEC_CODE = """
    import subprocess, sys
    def before_exec():
        return sum(range(10))
    proc = subprocess.Popen([sys.argv[1]], preexec_fn=before_exec)
    print(f"pid={proc.pid}", flush=True)
    assert proc.wait() == 0, proc.returncode
"""

# Before the fix:
# - test_stale_map_of_reused_pid: the stale line stayed at the top of the
#   new process's map:
#     AssertionError: 1 != 0 : the stale line is still in /tmp/perf-1.map
# - test_stale_jitdump_of_reused_pid PASSED: the jitdump was truncated when
#   opened.  It is kept as a guard (the jitdump must not keep a stale file
#   once it is reopened for appending, see TestSwitchBackToJitdump).
# - test_no_files_for_exec_after_fork: the child's files were created at
#   fork() and left behind, empty (-X perf) or with only a header
#   (-X perf_jit):
#     AssertionError: True is not false : /tmp/perf-CHILDPID.map exists
# - test_no_files_for_preexec_fn: the child named before_exec() and left its
#   map (or dump) for the program it became:
#     AssertionError: True is not false : /tmp/perf-CHILDPID.map exists
class TestFreshFilesPerProcess(HardeningTestCase):
    """Fault: a process appended to a map left in /tmp by an earlier process
    with the same pid, so perf read stale names for its addresses; and a
    forked child that runs no Python code (exec() right after fork()) left
    an empty map or jitdump behind."""

    NS_PID = 1
    namespace_error = None      # what the first probe said, if it failed

    def prepare_pid_namespace(self):
        """Check that unshare can make a PID namespace; clean the files of
        pid 1 before and after the test."""
        if UNSHARE is None:
            self.unavailable("unshare (util-linux) is not installed")
        error = probe_once(type(self), [*unshare("--pid", "--fork"), "true"],
                           "make a PID namespace with unshare")
        if error:
            self.unavailable(error)
        for path in (map_path(self.NS_PID), jitdump_path(self.NS_PID)):
            self.remove_if_ours(path)
            self.addCleanup(self.remove_if_ours, path)

    def remove_if_ours(self, path):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if st.st_uid != os.geteuid():
            self.unavailable(f"{path} belongs to uid {st.st_uid}")
        os.unlink(path)

    def plant(self, path, data):
        """Leave data at path as a process that ended an hour ago would
        have: a file of ours, mode 0600, last modified before the new
        process started."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        an_hour_ago = st.st_mtime_ns - 3600 * 10**9
        os.utime(path, ns=(an_hour_ago, an_hour_ago))

    def run_as_pid_1(self, backend):
        res = self.run_python("-X", backend, "-c", FRESH_PID_CODE,
                              wrapper=unshare("--pid", "--fork"))
        if res.rc != 0 and b"Operation not permitted" in res.err:
            self.unavailable(f"unshare --pid: "
                             f"{res.err.decode(errors='replace')}")
        self.assertExitedOk(res)
        self.assertIn(b"nspid=%d\n" % self.NS_PID, res.out)

    def test_stale_map_of_reused_pid(self):
        self.prepare_pid_namespace()
        self.plant(map_path(self.NS_PID), STALE_MAP)
        self.run_as_pid_1("perf")
        pmap = PerfMap.read(self.NS_PID)
        self.assertIsNotNone(pmap, f"{map_path(self.NS_PID)} is gone")
        self.assertEqual(pmap.lines.count(STALE_MAP.rstrip(b"\n")), 0,
                         f"the stale line is still in {map_path(self.NS_PID)}")
        self.assertWellFormed(pmap)
        self.assertNamedOnce(pmap, "fresh_func", filename="<string>")

    def test_stale_jitdump_of_reused_pid(self):
        self.prepare_pid_namespace()
        self.plant(jitdump_path(self.NS_PID), STALE_DUMP)
        self.run_as_pid_1("perf_jit")
        with open(jitdump_path(self.NS_PID), "rb") as f:
            data = f.read()
        self.assertNotIn(b"stale bytes", data)
        try:
            dump = JitDump(data)    # starts with the magic
            names = dump.validate(self.NS_PID)
        except ValueError as exc:
            self.fail(f"invalid {jitdump_path(self.NS_PID)}: {exc}")
        self.assertEqual(names.count(entry_name("fresh_func", "<string>")), 1)

    @support.requires_fork()
    def check_child_leaves_no_files(self, code):
        """code forks a child that exec()s true(1) and prints its pid: the
        child's pid has no map and no dump afterwards."""
        program = shutil.which("true") or "/bin/true"
        if not os.access(program, os.X_OK):
            self.unavailable("true(1) is not installed")
        for backend in BACKENDS:
            with self.subTest(backend=backend):
                out, (parent, child) = self.run_child(
                    code, program, xoptions=("-X", backend))
                self.assertNotWritten(map_path(child), jitdump_path(child))

    def test_no_files_for_exec_after_fork(self):
        self.check_child_leaves_no_files(EXEC_AFTER_FORK_CODE)

    def test_no_files_for_preexec_fn(self):
        self.check_child_leaves_no_files(PREEXEC_CODE)


COPY_CLEAN_CODE = """
    import os, sys, _testinternalcapi as t
    source = sys.argv[1]
    with open(source, "wb") as f:
        f.write(b"1000 10 a\\x00b\\x01c\\x1b[31m\\n")
        f.write(b"2000 10 " + b"x" * (2 * 1024 * 1024) + b"\\n")
        f.write(b"3000 10 ok\\n")
    assert t.copy_perf_map_file(source) == 0
"""


class TestCopyCleansLines(HardeningTestCase):
    """Found by trying to break the first fixes: PyUnstable_CopyPerfMapFile()
    copied control characters and NUL bytes as they were (a line of another
    map could break perf's parsing of ours), and buffered a line of any
    length under the map's lock (a sparse file of 300 MB: 300 MB of NUL
    bytes in the map)."""

    def setUp(self):
        super().setUp()
        import_helper.import_module("_testinternalcapi")

    def test_copy(self):
        source = os.path.join(self.tmp, "source.map")
        _, (pid,) = self.run_child(COPY_CLEAN_CODE, source)
        pmap = self.read_map(pid, python_only=False)
        self.assertEqual(pmap.lines, [b"1000 10 a?b?c?[31m", b"3000 10 ok"])


# ---- F9: failures -----------------------------------------------------------

COPY_DIRECTORY_CODE = """
    import ctypes, errno, sys
    copy = ctypes.CDLL(None, use_errno=True).PyUnstable_CopyPerfMapFile
    copy.argtypes = [ctypes.c_char_p]
    copy.restype = ctypes.c_int
    ctypes.set_errno(0)
    res = copy(sys.argv[1].encode())
    err = ctypes.get_errno()
    print(f"res={res} errno={errno.errorcode.get(err, err)}", flush=True)
"""


# Before the fix: errno was EINVAL (or whatever errno held before the call):
#   AssertionError: 'res=-1 errno=EISDIR\n' not found in
#   'pid=N\nres=-1 errno=EINVAL\n'
class TestCopyDirectoryErrno(HardeningTestCase):
    """Fault: PyUnstable_CopyPerfMapFile() on a directory returned -1 with
    errno EINVAL (or a stale errno) instead of EISDIR."""

    def setUp(self):
        super().setUp()
        import_helper.import_module("ctypes")

    def test_directory(self):
        out, _ = self.run_child(COPY_DIRECTORY_CODE, self.tmp)
        self.assertIn("res=-1 errno=EISDIR\n", out)


# In a /tmp mounted noexec: the names of the profiler's files of this process
# in /tmp after a failed activation of perf_jit (through sys if argv[1] is
# "sys", else through -X perf_jit).
NOEXEC_CODE = """\
import json, os, sys
result = {}
if sys.argv[1] == "sys":
    try:
        sys.activate_stack_trampoline("perf_jit")
    except RuntimeError as exc:
        result["error"] = str(exc)
def after():
    return 1
after()
result["active"] = sys.is_stack_trampoline_active()
pid = os.getpid()
result["left"] = sorted(name for name in os.listdir("/tmp")
                        if name in (f"jit-{pid}.dump", f"perf-{pid}.map"))
print("result=" + json.dumps(result), flush=True)
"""


# Before the fix: the dump created before the mapping failed stayed:
#   AssertionError: Lists differ: ['jit-PID.dump'] != []
class TestFailedJitdumpLeavesNoFile(HardeningTestCase):
    """Fault: a failed activation of perf_jit (the dump cannot be mapped
    executable in a /tmp mounted noexec) left an empty /tmp/jit-PID.dump
    behind."""

    def setUp(self):
        super().setUp()
        if UNSHARE is None:
            self.unavailable("unshare (util-linux) is not installed")
        # The private /tmp of test_perf_profiler, with its probe (the class
        # is not imported by name, or this module would run its tests).
        cls = test_failures.TestPrivateTmp
        self.wrapper = cls.private_tmp(self, "noexec")
        error = probe_once(cls, [*self.wrapper, "true"],
                           "mount a private /tmp")
        if error:
            self.unavailable(error)

    def check_noexec(self, how, xoptions=()):
        script = self.make_script(NOEXEC_CODE)
        res = self.run_python(*xoptions, script, how, wrapper=self.wrapper)
        self.assertExitedOk(res)
        result = json.loads(re.search(rb"^result=(.*)$", res.out, re.M)[1])
        self.assertFalse(result["active"], result)
        self.assertEqual(result["left"], [])
        return result, res

    def test_sys_activate(self):
        result, _ = self.check_noexec("sys")
        self.assertIn("noexec", result.get("error", ""), result)

    def test_x_option(self):
        _, res = self.check_noexec("xoption", xoptions=("-X", "perf_jit"))
        self.assertIn(b"noexec", res.err)


MDWE_CODE = """\
import ctypes, errno, json, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong,
                       ctypes.c_ulong, ctypes.c_ulong]
libc.prctl.restype = ctypes.c_int
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    err = ctypes.get_errno()
    print(f"mdwe={errno.errorcode.get(err, err)}", flush=True)
    sys.exit(0)
def work(n):
    return n + 1
result = {}
for backend in ("perf", "perf_jit"):
    try:
        sys.activate_stack_trampoline(backend)
    except RuntimeError:
        outcome = "RuntimeError"
    else:
        outcome = "activated"
    result[backend] = [outcome, sys.is_stack_trampoline_active()]
    work(1)
    result[backend].append(sys.is_stack_trampoline_active())
print("result=" + json.dumps(result), flush=True)
"""

# Started under MDWE with the perf support asked for at start-up.
MDWE_STARTUP_SCRIPT = """\
import sys
def work(n):
    return n * 2
print(sum(work(i) for i in range(100)))
print("active", sys.is_stack_trampoline_active())
"""

PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1


def mdwe_preexec():
    """A preexec_fn that turns memory-deny-write-execute on (it is kept
    across exec()).  ctypes is prepared here, in the parent: the forked
    child only makes the call."""
    import ctypes
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong,
                      ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int

    def preexec():
        if prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    return preexec


# Before the fix: the activations succeeded and the first call failed
#   AssertionError: Lists differ: ['activated', True, False] !=
#   ['RuntimeError', False, False]
# and at start-up the warning came from the first call ("stopped"):
#   b'Python: warning: perf profiler support stopped: cannot make perf
#   trampolines executable: Permission denied'
class TestMemoryDenyWriteExecute(HardeningTestCase):
    """Fault: under memory-deny-write-execute (prctl PR_SET_MDWE), where no
    memory can become executable, activation succeeded anyway; the first
    call then failed and stopped profiling.  Activation must fail: raise
    RuntimeError from sys, or warn once at start-up."""

    # The warning of a start-up activation that is refused.
    STARTUP_REFUSAL = b"Python: warning: perf profiler support (perf) is off"

    def setUp(self):
        super().setUp()
        import_helper.import_module("ctypes")

    def test_sys_activate(self):
        script = self.make_script(MDWE_CODE)
        res = self.run_python(script)
        self.assertExitedOk(res)
        failed = re.search(rb"^mdwe=(.*)$", res.out, re.M)
        if failed and failed[1] == b"EINVAL":
            self.unavailable("prctl(PR_SET_MDWE) failed with EINVAL: the "
                             "kernel lacks memory-deny-write-execute "
                             "(Linux 6.3)")
        self.assertIsNone(failed, "prctl(PR_SET_MDWE) failed")
        result = json.loads(re.search(rb"^result=(.*)$", res.out, re.M)[1])
        for backend in BACKENDS:
            with self.subTest(backend=backend):
                self.assertEqual(result[backend],
                                 ["RuntimeError", False, False])

    def test_at_startup(self):
        script = self.make_script(MDWE_STARTUP_SCRIPT)
        preexec = mdwe_preexec()
        cases = [((), {"PYTHONPERFSUPPORT": "1"}), (("-X", "perf"), None)]
        for args, env in cases:
            with self.subTest(args=args, env=env):
                try:
                    res = self.run_python(*args, script, env=env,
                                          preexec_fn=preexec)
                except subprocess.SubprocessError as exc:
                    # Only EINVAL (no MDWE in the kernel) is expected here.
                    self.unavailable(f"prctl(PR_SET_MDWE) failed in the "
                                     f"child before exec: {exc}")
                self.assertExitedOk(res)
                self.assertEqual(res.out, b"9900\nactive False\n")
                lines = res.err.splitlines()
                self.assertEqual(len(lines), 1, res.err)
                self.assertTrue(lines[0].startswith(self.STARTUP_REFUSAL),
                                lines[0])


# ---- F11: another co_extra user's free function -----------------------------

# argv[1]: "sys" to activate through sys (else -X perf is on from the
# start).  Another PEP 523 user with a free function takes a co_extra index;
# its free function must never run, since it stores nothing.
FREEFUNC_CODE = """
    import ctypes, gc, sys
    calls = [0]
    FREEFUNC = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
    @FREEFUNC
    def freefunc(ptr):
        calls[0] += 1
    request = ctypes.pythonapi._PyEval_RequestCodeExtraIndex
    request.argtypes = [FREEFUNC]
    request.restype = ctypes.c_ssize_t
    index = request(freefunc)
    assert index >= 0, index
    if sys.argv[1] == "sys":
        sys.activate_stack_trampoline("perf")
    for i in range(100):
        ns = {}
        exec(f"def fresh_{i}():\\n    return {i}\\n", ns)
        ns[f"fresh_{i}"]()
        del ns
    gc.collect()
    print(f"calls={calls[0]}", flush=True)
"""


# Before the fix: the free function ran for every code object that got a
# trampoline (and the child then crashed at exit):
#   AssertionError: 200 != 0 : calls of the other user's free function
# (200: the <module> code of each exec() and the function it defines) and
# test_code crashed under -X perf and -X perf_jit:
#   AssertionError: .../fp-before/python -I -X perf -m test --tempdir
#   .../regrtest-perf test_code was killed by SIGSEGV
#   (stderr: Fatal Python error: Segmentation fault ... test_code.py",
#   line 728 in myfree)
class TestForeignFreeFunction(HardeningTestCase):
    """Fault: the trampoline's co_extra data made 3.11 call the free
    functions of the other co_extra users for code objects where they had
    stored nothing, which stock 3.11 never does."""

    def setUp(self):
        super().setUp()
        import_helper.import_module("ctypes")

    def check_free_calls(self, how, xoptions=()):
        res = self.run_python(*xoptions, self.child_script(FREEFUNC_CODE),
                              how)
        match = re.search(rb"^calls=(\d+)$", res.out, re.M)
        self.assertIsNotNone(match, f"the child {describe_status(res.rc)}:"
                             f"\n{res.err.decode(errors='replace')}")
        self.assertEqual(int(match[1]), 0,
                         "calls of the other user's free function")
        self.assertExitedOk(res)

    def test_sys_activate(self):
        self.check_free_calls("sys")

    def test_x_option(self):
        self.check_free_calls("xoption", xoptions=("-X", "perf"))

    def test_code_suite(self):
        # test_code checks how co_extra and its free functions behave.
        for backend in BACKENDS:
            with self.subTest(backend=backend):
                tempdir = os.path.join(self.tmp, f"regrtest-{backend}")
                res = self.run_python("-X", backend, "-m", "test",
                                      "--tempdir", tempdir, "test_code",
                                      timeout=2 * SUBPROCESS_TIMEOUT)
                self.assertExitedOk(res)



# ---- F12: found by trying to break the reshaped code ------------------------

# The parent names many functions, forks with persistence on, and names new
# ones at once; the child names child_only.  The child prints its map's
# addresses that have more than one name.
PERSIST_RACE_CODE = """
    import os, sys, _testinternalcapi as t
    sys.activate_stack_trampoline("perf")
    t.set_perf_trampoline_persist_after_fork(True)
    def make(name):
        namespace = {}
        exec(f"def {name}():\\n    return 1\\n", namespace)
        return namespace[name]
    for i in range(5000):
        make(f"before_{i}")()
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        make("child_only")()
        names = {}
        with open(f"/tmp/perf-{os.getpid()}.map") as f:
            for line in f:
                start, size, name = line.rstrip("\\n").split(" ", 2)
                names.setdefault(start, set()).add(name)
        clashes = sorted(a for a, n in names.items() if len(n) > 1)
        print(f"pid={os.getpid()}", flush=True)
        print(f"clashes={len(clashes)}", flush=True)
        os._exit(0)
    for i in range(2000):
        make(f"after_{i}")()
    os.waitpid(pid, 0)
"""

# argv[1]: what preexec_fn does in the child of subprocess before it
# exec()s true(1): "activate" the perf support, or "compile" a trampoline.
PREEXEC_ACTS_CODE = """
    import subprocess, sys, _testinternalcapi as t
    act, program = sys.argv[1], sys.argv[2]
    def h():
        return 1
    def before_exec():
        if act == "activate":
            sys.activate_stack_trampoline("perf")
            h()
        else:
            t.compile_perf_trampoline(h.__code__)
    if act == "compile":
        sys.activate_stack_trampoline("perf")
    proc = subprocess.Popen([program], preexec_fn=before_exec)
    print(f"pid={proc.pid}", flush=True)
    assert proc.wait() == 0, proc.returncode
"""


# Before the fixes:
# - test_persisted_map_has_one_name_per_address: the child's copy went on
#   past fork(), into the lines that the parent wrote afterwards for the
#   addresses the child then gave its own code (2 runs of 3):
#     AssertionError: 1 != 0 : addresses with two names in the child's map
# - test_long_x_value: wcstombs() left the buffer unterminated; the value
#   was read from uninitialised stack (valgrind), and the environment
#   variable that should have applied did not:  AssertionError: b'False'
# - test_each_invalid_variable_warned: PYTHONPERFSUPPORT=yes went unnoticed
#   when PYTHON_PERF_JIT_SUPPORT=1 was read first
# - test_preexec_fn_activates / _compiles: the child of subprocess left
#   /tmp/perf-CHILDPID.map (empty, or with py::h) to the program it became
class TestBreakerFindings(HardeningTestCase):
    """Faults found by hostile testing after the code was reshaped."""

    def setUp(self):
        super().setUp()
        import_helper.import_module("_testinternalcapi")

    @support.requires_fork()
    def test_persisted_map_has_one_name_per_address(self):
        for run in range(2):
            with self.subTest(run=run):
                out, (parent, child) = self.run_child(PERSIST_RACE_CODE)
                self.assertIn("clashes=0", out,
                              "addresses with two names in the child's map")

    def test_long_x_value(self):
        value = "a" * 31 + "\u00e9"
        res = self.run_python("-X", f"perf={value}", "-c",
                              "import sys; "
                              "print(sys.is_stack_trampoline_active())",
                              env={**os.environ, "PYTHONPERFSUPPORT": "1",
                                   "PYTHONIOENCODING": "utf-8"})
        self.assertExitedOk(res)
        self.assertEqual(res.out.strip(), b"True")
        self.assertIn(b"-X perf=...: invalid value", res.err)

    def test_each_invalid_variable_warned(self):
        res = self.run_python("-c", "import sys; "
                              "print(sys.is_stack_trampoline_active())",
                              env={**os.environ, "PYTHONPERFSUPPORT": "yes",
                                   "PYTHON_PERF_JIT_SUPPORT": "1"})
        self.assertExitedOk(res)
        self.assertEqual(res.out.strip(), b"True")
        self.assertIn(b"PYTHONPERFSUPPORT=yes: invalid value", res.err)

    def check_preexec(self, act):
        program = shutil.which("true") or "/bin/true"
        if not os.access(program, os.X_OK):
            self.unavailable("true(1) is not installed")
        _, (parent, child) = self.run_child(PREEXEC_ACTS_CODE, act, program)
        self.assertNotWritten(map_path(child), jitdump_path(child))

    def test_preexec_fn_activates(self):
        self.check_preexec("activate")

    def test_preexec_fn_compiles(self):
        self.check_preexec("compile")

if __name__ == "__main__":
    unittest.main()
