"""Tests for gdb backtraces through the perf trampolines.

While -X perf or -X perf_jit is on, every trampoline is also described to
gdb through its JIT interface (Python/perf_gdb_jit.c): a backtrace names
each trampoline frame "py::qualname:filename" and unwinds through it down to
main(), whether gdb started the process, attached to it or reads a core
file.

Each scenario runs the script below in a child interpreter under gdb; the
child prints "pid=N" so that the test removes its /tmp/perf-N.map and
/tmp/jit-N.dump.  Without gdb the tests skip (they fail instead under
PERF_TESTS_REQUIRE_TOOLS=1, as in this project's "make test").
"""

import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import sysconfig
import textwrap
import unittest

from test import support
from test.support import os_helper, script_helper


# The package's helpers skip this module, at import, where the perf support
# cannot run (see test_perf_profiler/__init__.py).
from test.test_perf_profiler.util import tool_unavailable


TIMEOUT = support.SHORT_TIMEOUT

# foo -> bar -> baz, then baz stops the process as told by argv[1]: "trap"
# (SIGTRAP: gdb stops there), "wait" (blocks reading stdin, for gdb to
# attach), "abort" (a core dump) or "exit".  Before that, enough other
# functions run that <module> and foo are described in different chunks.
# "switch" runs foo under both backends, then traps; "fork" traps in a
# forked child, under a function that only the child runs.  "quiet" waits,
# then runs three new functions that trap at once.  "now" traps at once,
# then again after a wait; "attach" waits for a debugger to attach, then
# runs a burst of new functions and does what "now" does; "control" traps
# in a function whose name holds control characters.
#
# While gdb watches, a burst of new functions reaches it at most
# FLUSH_DELAY later (Python/perf_gdb_jit.c, "Chunks"): "trap" waits that
# long before it stops, after the burst of f0..f149, foo, bar and baz.
# "now", "attach" and "abort" stop within that time: gdb may have no names
# yet for foo, bar and baz, but must unwind through them all the same.
FLUSH_DELAY = 0.1
SCRIPT = f"""\
import os
import signal
import sys
import time

print(f"pid={{os.getpid()}}", flush=True)

def baz(action):
    if action == "trap":
        time.sleep({3 * FLUSH_DELAY:.1f})
        os.kill(os.getpid(), signal.SIGTRAP)
    elif action == "now":
        os.kill(os.getpid(), signal.SIGTRAP)
        time.sleep({3 * FLUSH_DELAY:.1f})
        os.kill(os.getpid(), signal.SIGTRAP)
    elif action == "wait":
        print("ready", flush=True)
        sys.stdin.buffer.read(1)
    elif action == "abort":
        os.abort()

def bar(action):
    baz(action)

def foo(action):
    bar(action)

def burst(prefix):
    namespace = {{}}
    exec("".join(f"def {{prefix}}{{i}}(): pass\\n" for i in range(150)),
         namespace)
    for i in range(150):
        namespace[f"{{prefix}}{{i}}"]()

burst("f")
action = sys.argv[1]
if action == "attach":
    print("ready", flush=True)
    while True:
        with open("/proc/self/status") as status:
            if "TracerPid:\\t0\\n" not in status.read():
                break
        time.sleep(0.01)
    burst("g")
    foo("now")
elif action == "quiet":
    time.sleep({3 * FLUSH_DELAY:.1f})
    exec('''
def qbaz():
    os.kill(os.getpid(), signal.SIGTRAP)
def qbar():
    qbaz()
def qfoo():
    qbar()
qfoo()
''')
elif action == "switch":
    foo("exit")
    sys.activate_stack_trampoline("perf_jit")
    foo("exit")
    sys.deactivate_stack_trampoline()
    sys.activate_stack_trampoline("perf")
    foo("trap")
elif action == "control":
    def trap():
        time.sleep({3 * FLUSH_DELAY:.1f})
        os.kill(os.getpid(), signal.SIGTRAP)
    trap.__code__ = trap.__code__.replace(co_qualname="red\\x1b[31mname\\x7f")
    trap()
elif action == "fork":
    pid = os.fork()
    if pid == 0:
        def child():
            print(f"pid={{os.getpid()}}", flush=True)
            foo("trap")
        child()
        os._exit(0)
    os.waitpid(pid, 0)
else:
    foo(action)
"""

PID_LINE = re.compile(rb"^pid=(\d+)$", re.MULTILINE)
# A frame of a backtrace: "#7  0x00007f... in NAME (...)" or, for frames
# inlined or at the start of a line, "#8  NAME (...)".
FRAME_LINE = re.compile(r"^#(\d+)\s+(?:0x[0-9a-fA-F]+ in )?(.+?) \(",
                        re.MULTILINE)
# What gdb says when the JIT list and what it has loaded disagree.
JIT_ERRORS = ("Unable to find JITed code entry",
              "JITed symbol file is not an object file",
              "Unsupported JIT protocol version")
# Printed by gdb between two backtraces of one session.
MARK = "--- after the wait ---"


def gdb_command(*args):
    """gdb without the user's init files, debuginfod or auto-loaded
    scripts, in batch mode."""
    return [shutil.which("gdb"), "-nx", "-batch",
            "-iex", "set debuginfod enabled off",
            "-iex", "set auto-load python-scripts off",
            "-iex", "set auto-load gdb-scripts off",
            *args]


def clean_environment():
    """The environment of gdb and of the child: no PYTHON* variable (the
    child runs with -I anyway; gdb's own Python must not see them)."""
    return {name: value for name, value in os.environ.items()
            if not name.startswith("PYTHON")}


class TestGdbBacktrace(unittest.TestCase):

    def setUp(self):
        if shutil.which("gdb") is None:
            self.unavailable("gdb is not installed")
        self.tmp = self.enterContext(os_helper.temp_dir())
        self.script = script_helper.make_script(self.tmp, "script", SCRIPT)
        self.forgotten = set()

    def unavailable(self, reason):
        tool_unavailable(self, reason)

    def forget_pids(self, output):
        """Remove the profiler files of the children named in output."""
        for pid in PID_LINE.findall(output):
            pid = int(pid)
            if pid not in self.forgotten:
                self.forgotten.add(pid)
                self.addCleanup(os_helper.unlink, f"/tmp/perf-{pid}.map")
                self.addCleanup(os_helper.unlink, f"/tmp/jit-{pid}.dump")

    def python_args(self, xoptions, action):
        return [sys.executable, "-I", *xoptions, self.script, action]

    def run_gdb(self, *args):
        """Run gdb with args; return its output (stdout and stderr) as
        text, after removing the files of the children it reports."""
        proc = subprocess.run(gdb_command(*args), stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT,
                              env=clean_environment(), cwd=self.tmp,
                              timeout=TIMEOUT)
        self.forget_pids(proc.stdout)
        output = proc.stdout.decode("utf-8", "replace")
        if ("ptrace: Operation not permitted" in output
                or "Could not trace the inferior process" in output):
            self.unavailable("gdb cannot trace processes here (ptrace)")
        return output

    def run_under_gdb(self, xoptions, action, *commands, before=()):
        """Run the script with action under gdb, then gdb's commands."""
        ex = []
        for command in (*before, "run", *commands):
            ex += ["-ex", command]
        return self.run_gdb(*ex, "--args",
                            *self.python_args(xoptions, action))

    def start_waiting(self, xoptions, action="wait"):
        """Start the script with action "wait" (or "attach"); return the
        process once it is ready: blocked in read() under foo -> bar -> baz
        (or waiting for a debugger)."""
        proc = subprocess.Popen(self.python_args(xoptions, action),
                                stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE,
                                env=clean_environment())
        self.addCleanup(self.finish_waiting, proc)
        first = proc.stdout.readline()
        self.forget_pids(first)
        ready = proc.stdout.readline()
        self.assertEqual(ready, b"ready\n",
                         f"the script did not start: {first + ready!r}")
        return proc

    def finish_waiting(self, proc):
        if proc.poll() is None:
            try:
                proc.stdin.write(b"x")
                proc.stdin.close()
                proc.wait(timeout=TIMEOUT)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
        proc.stdout.close()
        proc.stderr.close()

    def attach(self, proc, *commands):
        ex = []
        for command in commands:
            ex += ["-ex", command]
        return self.run_gdb("-p", str(proc.pid), *ex)

    def frames(self, output):
        return [name for _, name in FRAME_LINE.findall(output)]

    def py_name(self, qualname):
        return f"py::{qualname}:{self.script}"

    def assertPythonBacktrace(self, output):
        """baz, bar, foo and <module> appear, in that order (innermost
        first), with their exact names, and the unwinding goes on through
        the trampolines to main()."""
        for error in JIT_ERRORS:
            self.assertNotIn(error, output)
        frames = self.frames(output)
        positions = []
        for qualname in ("baz", "bar", "foo", "<module>"):
            name = self.py_name(qualname)
            self.assertIn(name, frames, f"no frame {name!r} in:\n{output}")
            positions.append(frames.index(name))
        self.assertEqual(positions, sorted(positions),
                         f"Python frames out of order in:\n{output}")
        below = frames[positions[-1] + 1:]
        self.assertTrue({"Py_BytesMain", "main"} & set(below),
                        f"the backtrace stops before main():\n{output}")
        # One frame per Python function: nothing unnamed in between.
        self.assertNotIn("??", frames[positions[0]:positions[-1]], output)

    def assertUnwindsThroughTrampolines(self, output):
        """gdb unwinds through the trampolines of baz, bar, foo and
        <module>, in that order, to main(): each trampoline frame shows
        once, with its name or as "??" if gdb has none yet, and there is no
        other frame that gdb cannot place."""
        for error in JIT_ERRORS:
            self.assertNotIn(error, output)
        self.assertNotIn("Backtrace stopped", output)
        frames = self.frames(output)
        self.assertTrue({"Py_BytesMain", "main"} & set(frames),
                        f"the backtrace stops before main():\n{output}")
        trampolines = [f for f in frames if f == "??" or f.startswith("py::")]
        expected = [self.py_name(q) for q in ("baz", "bar", "foo", "<module>")]
        self.assertEqual(len(trampolines), len(expected), output)
        for frame, name in zip(trampolines, expected):
            if frame != "??":
                self.assertEqual(frame, name, output)

    def assertNamedAfterTheWait(self, output):
        """Before MARK, gdb stopped the script at once; after it, the names
        had time to come."""
        at_once, mark, later = output.partition(MARK)
        self.assertTrue(mark, output)
        self.assertUnwindsThroughTrampolines(at_once)
        self.assertPythonBacktrace(later)

    # ---- gdb starts the process --------------------------------------

    def test_run_perf(self):
        output = self.run_under_gdb(["-X", "perf"], "trap", "bt")
        self.assertIn("SIGTRAP", output)
        self.assertPythonBacktrace(output)

    def test_run_perf_jit(self):
        output = self.run_under_gdb(["-X", "perf_jit"], "trap", "bt")
        self.assertIn("SIGTRAP", output)
        self.assertPythonBacktrace(output)

    def test_run_new_functions_named_at_once(self):
        # After a quiet moment, a few new functions reach gdb before they
        # run: no waiting for the flusher.
        output = self.run_under_gdb(["-X", "perf"], "quiet", "bt")
        self.assertIn("SIGTRAP", output)
        frames = self.frames(output)
        names = [f"py::{q}:<string>" for q in ("qbaz", "qbar", "qfoo")]
        for name in names:
            self.assertIn(name, frames, output)
        self.assertEqual([frames.index(n) for n in names],
                         sorted(frames.index(n) for n in names), output)

    def test_run_stopped_at_once(self):
        # gdb stops the script right after a burst of new functions, before
        # the last ones are named: it unwinds through their trampolines all
        # the same, and the names come within the publication interval.
        for xoption in ("perf", "perf_jit"):
            with self.subTest(xoption=xoption):
                output = self.run_under_gdb(["-X", xoption], "now", "bt",
                                            f"echo {MARK}\\n", "continue",
                                            "bt")
                self.assertEqual(output.count("SIGTRAP"), 2, output)
                self.assertNamedAfterTheWait(output)

    def test_control_characters_in_names(self):
        # A function may be named anything: gdb prints the names it is
        # given as they are, to its user's terminal.  They come with
        # control characters replaced, as in the perf map.
        for xoption in ("perf", "perf_jit"):
            with self.subTest(xoption=xoption):
                output = self.run_under_gdb(["-X", xoption], "control", "bt")
                self.assertIn("SIGTRAP", output)
                self.assertIn(self.py_name("red?[31mname?"),
                              self.frames(output), output)
                self.assertNotIn("\x1b", output)

    def test_no_python_frames_without_perf(self):
        output = self.run_under_gdb([], "trap", "bt")
        self.assertIn("SIGTRAP", output)
        frames = self.frames(output)
        self.assertTrue({"Py_BytesMain", "main"} & set(frames), output)
        self.assertFalse([f for f in frames if f.startswith("py::")], output)

    def test_described_once(self):
        # Switching backends describes every trampoline again to perf, but
        # gdb has each name once.
        output = self.run_under_gdb(["-X", "perf"], "switch", "bt",
                                    "info functions ^py::foo:")
        self.assertPythonBacktrace(output)
        self.assertEqual(output.count(self.py_name("foo") + "();"), 1,
                         output)

    def test_fork(self):
        # The child keeps the parent's descriptions and adds its own.
        output = self.run_under_gdb(["-X", "perf"], "fork", "bt",
                                    before=["set follow-fork-mode child"])
        self.assertIn("SIGTRAP", output)
        self.assertPythonBacktrace(output)
        frames = self.frames(output)
        self.assertLess(frames.index(self.py_name("foo")),
                        frames.index(self.py_name("child")), output)

    def test_clean_exit(self):
        # Every registration and, at finalisation, every withdrawal is seen
        # by gdb without complaint.
        output = self.run_under_gdb(["-X", "perf"], "exit")
        self.assertIn("exited normally", output)
        for error in JIT_ERRORS:
            self.assertNotIn(error, output)

    # ---- gdb attaches to a running process ---------------------------

    def test_attach(self):
        proc = self.start_waiting(["-X", "perf"])
        output = self.attach(proc, "bt")
        self.assertPythonBacktrace(output)

    def test_attach_stopped_at_once(self):
        # The burst of new functions and foo -> bar -> baz run after gdb
        # attached, and baz traps at once.
        proc = self.start_waiting(["-X", "perf"], "attach")
        output = self.attach(proc, "continue", "bt", f"echo {MARK}\\n",
                             "continue", "bt")
        self.assertEqual(output.count("SIGTRAP"), 2, output)
        self.assertNamedAfterTheWait(output)

    # ---- core files --------------------------------------------------

    def skip_if_gcore_too_big(self):
        if support.check_sanitizer(address=True):
            self.skipTest("gcore would write AddressSanitizer's shadow "
                          "memory (terabytes of address space)")

    def read_core(self, core):
        return self.run_gdb("-ex", "bt", sys.executable, core)

    def gcore(self, xoptions):
        """A core file of the waiting script, written by gdb's gcore."""
        self.skip_if_gcore_too_big()
        proc = self.start_waiting(xoptions)
        core = os.path.join(self.tmp, f"gcore.{proc.pid}")
        output = self.attach(proc, f"gcore {core}")
        self.assertTrue(os.path.exists(core), output)
        return core

    def kernel_core(self, xoptions):
        """A core file dumped by the kernel when the script aborts, or None
        if the kernel's core_pattern does not write a file in the current
        directory (a pipe to a handler, another directory) or none came."""
        try:
            with open("/proc/sys/kernel/core_pattern") as f:
                pattern = f.read().strip()
        except OSError:
            return None
        if not pattern or pattern.startswith("|") or "/" in pattern:
            return None
        soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
        if hard != resource.RLIM_INFINITY and hard < 64 * 1024 * 1024:
            return None

        def allow_core():
            resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))

        before = set(os.listdir(self.tmp))
        proc = subprocess.run(self.python_args(xoptions, "abort"),
                              stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE,
                              env=clean_environment(), cwd=self.tmp,
                              preexec_fn=allow_core, timeout=TIMEOUT)
        self.forget_pids(proc.stdout)
        self.assertEqual(proc.returncode, -signal.SIGABRT, proc.stderr)
        new = sorted(set(os.listdir(self.tmp)) - before)
        cores = [name for name in new if name.startswith("core")]
        if not cores:
            return None
        return os.path.join(self.tmp, cores[0])

    def test_core_file(self):
        core = self.kernel_core(["-X", "perf"])
        if core is None:
            # core_pattern hands cores to a handler: make one with gdb.
            core = self.gcore(["-X", "perf"])
        self.assertPythonBacktrace(self.read_core(core))

    def test_gcore_perf_jit(self):
        core = self.gcore(["-X", "perf_jit"])
        self.assertPythonBacktrace(self.read_core(core))

    def test_gcore_at_once(self):
        # The script aborts under gdb right after a burst of new functions;
        # the core, dumped before the last ones are named, still unwinds.
        self.skip_if_gcore_too_big()
        core = os.path.join(self.tmp, "gcore.at-once")
        output = self.run_under_gdb(["-X", "perf"], "abort", f"gcore {core}")
        self.assertIn("SIGABRT", output)
        self.assertTrue(os.path.exists(core), output)
        self.assertUnwindsThroughTrampolines(self.read_core(core))


if __name__ == "__main__":
    unittest.main()
