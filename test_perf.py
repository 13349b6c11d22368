"""End-to-end check of the patched interpreter under the real Linux perf.

Run it with the interpreter to check (built with frame pointers):

    build/fp/python test_perf.py

PERF_TEST_NOFP_PYTHON names an interpreter of the same source built without
frame pointers, for the jitdump checks (`make test` sets it).  The script
profiles the foo/bar/baz example of the documentation as a user would, and
prints, for each mode, the share of the samples inside py::foo whose stack
also holds py::bar, py::baz and py::<module>.

How `perf script` output is read and how complete the chains must be come
from the in-tree test (Lib/test/test_perf_profiler/util.py: perf_stacks(),
count_chains(), MIN_COMPLETE_SHARE), so that both ask the same.
"""

import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import unittest

# The interpreter under test has its own Lib/test.  The module raises
# SkipTest on import where it cannot run (no trampolines in this build).
try:
    from test.test_perf_profiler.util import (MIN_COMPLETE_SHARE, PERF,
                                              count_chains, perf_stacks)
except unittest.SkipTest as exc:
    sys.exit(f"{sys.executable}: {exc}")

NOFP_PYTHON = os.environ.get("PERF_TEST_NOFP_PYTHON")

# The example of the documentation, also profiled by "make demo".
DEMO_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                         "Tools", "perfsupport", "demo.py")
with open(DEMO_PATH) as demo_file:
    DEMO = demo_file.read()

# The callers of foo in the example, innermost first.
CALLERS = ("bar", "baz", "<module>")


def clean_environment():
    env = dict(os.environ)
    for name in list(env):
        if name.startswith("PYTHON"):
            del env[name]
    return env


def perf_version():
    out = subprocess.run([PERF, "--version"], capture_output=True, text=True)
    numbers = out.stdout.split()[-1].split(".")
    return tuple(int(n) for n in numbers[:2] if n.isdigit())


class PerfCase(unittest.TestCase):

    def setUp(self):
        if PERF is None:
            self.fail("perf is not installed (make deps installs it)")
        self.tmp = tempfile.mkdtemp(prefix="test_perf_")
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.script = os.path.join(self.tmp, "demo.py")
        with open(self.script, "w") as f:
            f.write(DEMO)

    def forget_pid(self, pid):
        """Remove what the profiled process pid left in /tmp."""
        patterns = [f"/tmp/perf-{pid}.map", f"/tmp/jit-{pid}.dump",
                    f"/tmp/jitted-{pid}-*.so"]
        for pattern in patterns:
            for path in glob.glob(pattern):
                os.unlink(path)

    def record(self, python, xoption, record_options, n):
        data = os.path.join(self.tmp, "perf.data")
        cmd = [PERF, "record", "-o", data, *record_options, "--",
               python, *xoption, "-c",
               "import os, runpy, sys; print(os.getpid(), flush=True); "
               "sys.argv = [sys.argv[1], sys.argv[2]]; "
               "runpy.run_path(sys.argv[0], run_name='__main__')",
               self.script, str(n)]
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              env=clean_environment(), cwd=self.tmp)
        out = proc.stdout.split()
        pid = int(out[0]) if out and out[0].isdigit() else None
        if pid is not None:
            self.addCleanup(self.forget_pid, pid)
        self.assertEqual(proc.returncode, 0,
                         f"perf record failed:\n{proc.stderr[-2000:]}")
        return data, pid

    def script_output(self, data):
        proc = subprocess.run([PERF, "script", "-i", data, "--no-inline"],
                              cwd=self.tmp,
                              capture_output=True, text=True)
        self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
        return proc.stdout

    def inject(self, data):
        injected = data + ".jit"
        proc = subprocess.run([PERF, "inject", "--jit", "-i", data,
                               "-o", injected], cwd=self.tmp,
                              capture_output=True, text=True)
        self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
        return injected

    def check_chains(self, label, data, pid, min_samples,
                     callers=CALLERS):
        """Print the share of the samples in py::foo that show the whole
        chain of callers above it, and check it as the in-tree test does."""
        stacks = perf_stacks(self.script_output(data), pid)
        with_foo, complete = count_chains(stacks, self.script,
                                          ("foo", *callers))
        self.assertGreaterEqual(with_foo, min_samples,
                                "too few samples in py::foo")
        share = 100.0 * complete / with_foo
        names = [f"py::{q}" for q in callers]
        above = " and ".join([", ".join(names[:-1]), names[-1]])
        print(f"\n  {label}: {complete} of {with_foo} samples in py::foo "
              f"have {above} above it: {share:.1f}%", flush=True)
        self.assertGreater(complete, with_foo * MIN_COMPLETE_SHARE,
                           f"{label}: {complete} of {with_foo} samples in "
                           f"py::foo show the chain of its callers")


class FramePointerTests(PerfCase):
    """perf record -g on the interpreter built with frame pointers."""

    def setUp(self):
        super().setUp()
        if not sysconfig.get_config_var("PY_HAVE_PERF_TRAMPOLINE"):
            self.fail(f"{sys.executable} was built without perf trampolines")

    def test_perf_map_chain_complete(self):
        data, pid = self.record(sys.executable, ["-X", "perf"],
                                ["-F", "9999", "-g"], 3_000_000)
        self.check_chains("-X perf, frame pointers", data, pid, 50)

    def test_activated_from_python(self):
        script = os.path.join(self.tmp, "activate.py")
        with open(script, "w") as f:
            f.write(DEMO.replace('if __name__ == "__main__":',
                                 'if __name__ == "__main__":\n'
                                 '    sys.activate_stack_trampoline("perf")'))
        self.script = script
        data, pid = self.record(sys.executable, [], ["-F", "999", "-g"],
                                3_000_000)
        # <module> was running before the activation: it has no trampoline.
        self.check_chains("sys.activate_stack_trampoline(), frame pointers",
                          data, pid, 1, CALLERS[:2])

    def test_no_python_names_without_perf(self):
        data, pid = self.record(sys.executable, [], ["-F", "999", "-g"],
                                1_000_000)
        self.assertNotIn("py::", self.script_output(data))


@unittest.skipIf(NOFP_PYTHON is None and
                 os.environ.get("PERF_TESTS_REQUIRE_TOOLS") != "1",
                 "PERF_TEST_NOFP_PYTHON is not set")
class JitdumpTests(PerfCase):
    """perf record --call-graph dwarf + perf inject --jit, no frame
    pointers."""

    def setUp(self):
        super().setUp()
        if NOFP_PYTHON is None:
            self.fail("PERF_TEST_NOFP_PYTHON must name an interpreter built "
                      "without frame pointers (make test sets it)")
        if perf_version() < (6, 8):
            self.fail(f"perf {perf_version()} cannot unwind through jitted "
                      f"code; perf 6.8 or newer is needed")

    def record_dwarf(self, xoption, n):
        return self.record(NOFP_PYTHON, xoption,
                           ["-F", "99", "-k", "1",
                            "--call-graph", "dwarf,65528"], n)

    def test_build_has_no_frame_pointers(self):
        flags = subprocess.run(
            [NOFP_PYTHON, "-c", "import sysconfig; print(sysconfig."
             "get_config_var('PY_CORE_CFLAGS'))"],
            capture_output=True, text=True, env=clean_environment()).stdout
        self.assertNotIn("no-omit-frame-pointer", flags)

    def test_perf_jit_chain_complete(self):
        data, pid = self.record_dwarf(["-X", "perf_jit"], 60_000_000)
        self.assertTrue(os.path.exists(f"/tmp/jit-{pid}.dump"))
        self.check_chains("-X perf_jit, no frame pointers, DWARF",
                          self.inject(data), pid, 20)

    def test_no_python_names_without_perf_jit(self):
        data, pid = self.record_dwarf([], 3_000_000)
        injected = self.inject(data)
        self.assertNotIn("py::", self.script_output(injected))


if __name__ == "__main__":
    unittest.main(verbosity=2)
