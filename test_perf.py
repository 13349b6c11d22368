"""End-to-end check of the patched interpreter under the real Linux perf.

Run it with the interpreter to check (built with frame pointers):

    build/fp/python test_perf.py

PERF_TEST_NOFP_PYTHON names an interpreter of the same source built without
frame pointers, for the jitdump checks (`make test` sets it).  The script
profiles the foo/bar/baz example of the documentation as a user would, and
prints, for each mode, the share of the samples inside py::foo whose stack
also holds py::bar, py::baz and py::<module>.
"""

import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import unittest

PERF = shutil.which("perf")
NOFP_PYTHON = os.environ.get("PERF_TEST_NOFP_PYTHON")

# The example of the documentation, also profiled by "make demo".
DEMO_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                         "Tools", "perfsupport", "demo.py")
with open(DEMO_PATH) as demo_file:
    DEMO = demo_file.read()

CHAIN = ("py::bar:", "py::baz:", "py::<module>:")


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


def parse_samples(script_output):
    """Split `perf script` output into samples: lists of symbol lines."""
    samples, current = [], None
    for line in script_output.splitlines():
        if not line.strip():
            if current is not None:
                samples.append(current)
            current = None
        elif not line[0].isspace():
            if current is not None:
                samples.append(current)
            current = []
        elif current is not None:
            current.append(line.strip())
    if current is not None:
        samples.append(current)
    return samples


def chain_figure(samples, chain=CHAIN):
    """(samples with py::foo, of which with the whole chain above foo)."""
    with_foo = complete = 0
    for stack in samples:
        frames = [f for f in stack if "py::" in f]
        index = next((i for i, f in enumerate(frames) if "py::foo:" in f),
                     None)
        if index is None:
            continue
        with_foo += 1
        callers = frames[index + 1:]    # perf script prints leaf first
        if all(any(name in f for f in callers) for name in chain):
            complete += 1
    return with_foo, complete


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
        pid = proc.stdout.split()[0] if proc.stdout.split() else None
        if pid is not None:
            self.addCleanup(self.forget_pid, pid)
        self.assertEqual(proc.returncode, 0,
                         f"perf record failed:\n{proc.stderr[-2000:]}")
        return data, pid

    def script_output(self, data):
        proc = subprocess.run([PERF, "script", "-i", data], cwd=self.tmp,
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

    def report(self, label, with_foo, complete):
        share = 100.0 * complete / with_foo if with_foo else 0.0
        print(f"\n  {label}: {complete} of {with_foo} samples in py::foo "
              f"have py::bar, py::baz and py::<module> above it: "
              f"{share:.1f}%", flush=True)
        return share


class FramePointerTests(PerfCase):
    """perf record -g on the interpreter built with frame pointers."""

    def setUp(self):
        super().setUp()
        if not sysconfig.get_config_var("PY_HAVE_PERF_TRAMPOLINE"):
            self.fail(f"{sys.executable} was built without perf trampolines")

    def test_perf_map_chain_complete(self):
        data, pid = self.record(sys.executable, ["-X", "perf"],
                                ["-F", "9999", "-g"], 3_000_000)
        samples = parse_samples(self.script_output(data))
        with_foo, complete = chain_figure(samples)
        self.assertGreaterEqual(with_foo, 50, "too few samples in py::foo")
        share = self.report("-X perf, frame pointers", with_foo, complete)
        self.assertEqual(share, 100.0)

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
        with_foo, complete = chain_figure(
            parse_samples(self.script_output(data)), CHAIN[:2])
        self.assertGreater(with_foo, 0)
        self.assertEqual(complete, with_foo)

    def test_no_python_names_without_perf(self):
        data, pid = self.record(sys.executable, [], ["-F", "999", "-g"],
                                1_000_000)
        self.assertNotIn("py::", self.script_output(data))


@unittest.skipIf(NOFP_PYTHON is None and
                 os.environ.get("PERF_TESTS_ALLOW_SKIP") == "1",
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
        injected = self.inject(data)
        samples = parse_samples(self.script_output(injected))
        with_foo, complete = chain_figure(samples)
        self.assertGreaterEqual(with_foo, 20, "too few samples in py::foo")
        share = self.report("-X perf_jit, no frame pointers, DWARF",
                            with_foo, complete)
        self.assertGreaterEqual(share, 95.0)

    def test_no_python_names_without_perf_jit(self):
        data, pid = self.record_dwarf([], 3_000_000)
        injected = self.inject(data)
        self.assertNotIn("py::", self.script_output(injected))


if __name__ == "__main__":
    unittest.main(verbosity=2)
