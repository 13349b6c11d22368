"""The real perf tool reading what the interpreter writes: perf record -g
with the perf map (TestRealPerf, which needs frame pointers), perf record
--call-graph dwarf and perf inject --jit with the jitdump
(TestRealPerfJit)."""

import os
import re
import subprocess
import sys
import sysconfig
import unittest

from test.support import import_helper
from test.test_perf_profiler.util import (
    MIN_COMPLETE_SHARE, PERF, PERF_TIMEOUT, PerfTestCase, count_chains,
    needs, perf_record, perf_stacks)


# ---- The real perf ----------------------------------------------------------

PERF_SCRIPT = """\
import os, sys, time
print(os.getpid(), flush=True)
{activation}
def foo():
    x = 0
    # 0.3 s of CPU time, however busy the machine is.
    end = time.process_time() + 0.3
    while time.process_time() < end:
        for i in range(1000):
            x += i
    return x

def bar():
    return foo()

def baz():
    return bar()

baz()
"""


# perf record -g follows frame pointers: it can only walk an interpreter that
# keeps them.
HAS_FRAME_POINTERS = "-fno-omit-frame-pointer" in (
    sysconfig.get_config_var("PY_CORE_CFLAGS") or "")


@needs("perf_samples")
class RealPerfTestCase(PerfTestCase):
    """Profile PERF_SCRIPT under the real perf."""

    # How perf record collects call chains.
    call_graph = ("-F", "999", "-g")

    def setUp(self):
        super().setUp()
        if PERF is None:
            self.unavailable("perf is not installed")

    def perf_run(self, *args):
        cmd = (perf_record(self, args[1:]) if args[:1] == ("record",)
               else [PERF, *args])
        return subprocess.run(cmd, stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=PERF_TIMEOUT)

    def samples_of(self, data):
        """The file that perf script reads for what perf record wrote to
        data: data itself, unless a step such as perf inject comes first."""
        return data

    def record(self, *python_args, activation=""):
        script = self.make_script(PERF_SCRIPT.format(activation=activation))
        data = os.path.join(self.tmp, "perf.data")
        proc = self.perf_run("record", *self.call_graph, "-N", "-o", data,
                             "--", sys.executable, "-I", *python_args,
                             script)
        out = proc.stdout.decode(errors="replace").split()
        if out and out[0].isdigit():
            pid = int(out[0])
            self.forget_pid(pid)
        if proc.returncode != 0 or not out:
            self.unavailable(
                f"perf record failed ({proc.returncode}):\n"
                f"{proc.stderr.decode(errors='replace')}")
        data = self.samples_of(data)
        report = self.perf_run("script", "-i", data, "--no-inline")
        if report.returncode != 0:
            self.fail(f"perf script failed ({report.returncode}):\n"
                      f"{report.stderr.decode(errors='replace')}")
        text = report.stdout.decode("utf-8", "replace")
        return text, pid, script

    def check_python_stacks(self, text, pid, script,
                            callers=("bar", "baz", "<module>")):
        stacks = perf_stacks(text, pid)
        self.assertGreater(len(stacks), 50, "too few samples")
        with_foo, complete = count_chains(stacks, script, ("foo", *callers))
        self.assertGreater(with_foo, 20,
                           f"py::foo in few of {len(stacks)} samples:\n"
                           f"{text[:3000]}")
        self.assertGreater(complete, with_foo * MIN_COMPLETE_SHARE,
                           f"{complete} of {with_foo} stacks show "
                           f"<module> > baz > bar > foo")


class RealPerfChecks:
    """The checks of both backends under the real perf; the class that
    mixes this in names its backend."""

    backend = None

    def test_x_option(self):
        text, pid, script = self.record("-X", self.backend)
        self.check_python_stacks(text, pid, script)

    def test_sys_activate(self):
        # The module's code was entered before the activation: it has no
        # trampoline, but everything it calls afterwards has.
        text, pid, script = self.record(
            activation=f'sys.activate_stack_trampoline("{self.backend}")')
        self.check_python_stacks(text, pid, script, callers=("bar", "baz"))

    def test_without_trampoline(self):
        text, pid, script = self.record()
        self.assertGreater(len(perf_stacks(text, pid)), 50)
        self.assertNotIn("py::", text)
        self.assertNoMap(pid)


@unittest.skipUnless(HAS_FRAME_POINTERS,
                     "built without frame pointers: perf record -g cannot "
                     "walk the interpreter (TestRealPerfJit covers it)")
class TestRealPerf(RealPerfChecks, RealPerfTestCase):
    """perf record -g with the perf map."""

    backend = "perf"


class RealPerfJitTestCase(RealPerfTestCase):
    """perf record --call-graph dwarf + perf inject --jit (perf 6.8 or
    newer)."""

    call_graph = ("-F", "499", "-k", "1", "--call-graph", "dwarf,65528")

    def setUp(self):
        super().setUp()
        version = self.perf_run("--version").stdout.decode().split()[-1]
        major_minor = tuple(int(n) for n in version.split(".")[:2])
        if major_minor < (6, 8):
            self.unavailable(f"perf {version} cannot unwind through jitted "
                             f"code: perf 6.8 or newer is needed")

    def samples_of(self, data):
        injected = data + ".jit"
        proc = self.perf_run("inject", "--jit", "-i", data, "-o", injected)
        if proc.returncode != 0:
            self.fail(f"perf inject failed ({proc.returncode}):\n"
                      f"{proc.stderr.decode(errors='replace')}")
        return injected


# The parent and its child each make a trampoline after fork(): perf names
# the child's samples in the arenas it inherited from the parent's map.
FORK_SCRIPT = """\
import os, time
def spin():
    x = 0
    end = time.process_time() + 0.3
    while time.process_time() < end:
        for i in range(1000):
            x += i
def parent_after_fork():
    spin()
def child_after_fork():
    spin()
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.read(r, 1)                       # after the parent's new trampoline
    child_after_fork()
    os._exit(0)
parent_after_fork()
os.write(w, b"x")
os.waitpid(pid, 0)
print(os.getpid(), pid, flush=True)
"""


@unittest.skipUnless(HAS_FRAME_POINTERS,
                     "built without frame pointers: perf record -g cannot "
                     "walk the interpreter")
class TestRealPerfFork(RealPerfTestCase):
    """perf record -g of a program that forks: each process's samples are
    named after its own functions."""

    def test_child_functions_named(self):
        script = self.make_script(FORK_SCRIPT)
        data = os.path.join(self.tmp, "perf.data")
        proc = self.perf_run("record", *self.call_graph, "-o", data, "--",
                             sys.executable, "-I", "-X", "perf", script)
        pids = [int(p) for p in proc.stdout.split()]
        for pid in pids:
            self.forget_pid(pid)
        self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
        parent, child = pids
        text = self.perf_run("script", "-i", data, "--no-inline"
                             ).stdout.decode(errors="replace")
        child_stacks = perf_stacks(text, child)
        parent_stacks = perf_stacks(text, parent)
        def named(stacks, qualname):
            return [s for s in stacks if f"py::{qualname}:{script}" in s]
        self.assertGreater(len(named(child_stacks, "child_after_fork")), 20)
        self.assertEqual(named(child_stacks, "parent_after_fork"), [])
        self.assertGreater(len(named(parent_stacks, "parent_after_fork")), 20)
        self.assertEqual(named(parent_stacks, "child_after_fork"), [])


class TestRealPerfJit(RealPerfChecks, RealPerfJitTestCase):
    """perf record --call-graph dwarf + perf inject --jit with the jitdump:
    what builds without frame pointers rely on."""

    backend = "perf_jit"


# A program that spends its time in a native library of the system: zlib,
# which distributions build without frame pointers.
NATIVE_SCRIPT = """\
import os, time, zlib
print(os.getpid(), flush=True)
TEXT = b"the quick brown fox jumps over the lazy dog " * 40000
def compress_for_a_while():
    end = time.process_time() + 0.4
    while time.process_time() < end:
        zlib.compress(TEXT, 9)
compress_for_a_while()
"""


class TestNativeLibraryCallers(RealPerfJitTestCase):
    """With -X perf_jit and DWARF call graphs, the samples taken inside a
    native library built without frame pointers keep their Python caller
    (with -X perf and perf record -g they lose it: see the howto's table,
    made by Tools/bench/native_modes.py)."""

    def test_zlib_samples_name_the_caller(self):
        import_helper.import_module("zlib")
        script = self.make_script(NATIVE_SCRIPT)
        data = os.path.join(self.tmp, "perf.data")
        proc = self.perf_run("record", *self.call_graph, "-o", data, "--",
                             sys.executable, "-I", "-X", "perf_jit", script)
        out = proc.stdout.decode(errors="replace").split()
        if out and out[0].isdigit():
            self.forget_pid(out[0])
        self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
        pid = int(out[0])
        text = self.perf_run("script", "-i", self.samples_of(data),
                             "-F", "comm,pid,ip,sym,dso").stdout.decode(
                                 errors="replace")
        in_zlib = [s for s in perf_stacks_with_dso(text, pid)
                   if "libz.so" in s[0]]
        self.assertGreater(len(in_zlib), 20, "few samples inside libz")
        named = [s for s in in_zlib
                 if any(f"py::compress_for_a_while:{script}" in f
                        for f in s)]
        self.assertGreater(len(named), len(in_zlib) * 0.9,
                           f"{len(named)} of {len(in_zlib)} samples in libz "
                           f"name their Python caller")


def perf_stacks_with_dso(text, pid):
    """Like perf_stacks(), but each frame is the whole line, shared object
    included."""
    stacks = []
    for block in re.split(r"\n[ \t]*\n", text):
        lines = [line.strip() for line in block.splitlines() if line.strip()]
        if len(lines) > 1 and lines[0].split()[1:2] == [str(pid)]:
            stacks.append(lines[1:])
    return stacks


if __name__ == "__main__":
    unittest.main()
