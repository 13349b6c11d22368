"""A Python process in its own PID and mount namespaces, with a private /tmp,
recorded from the host: after it has exited, perf still names its Python
functions when Tools/perf/perf_record_ns.py ran the recording."""

import os
import re
import subprocess
import sys
import unittest

from test.test_perf_profiler.test_real_perf import (
    HAS_FRAME_POINTERS, PERF_SCRIPT, RealPerfJitTestCase, RealPerfTestCase)
from test.test_perf_profiler.util import (
    PERF, UNSHARE, count_chains, missing_tool, perf_stacks, perf_tool,
    probe_once)

RECORD_NS = perf_tool("perf_record_ns.py")

# The example of test_real_perf, run with -c (its file name is "<string>"):
# the container's /tmp, where a script would be, is a tmpfs of its own.
CODE = PERF_SCRIPT.format(activation="")

# The container: new PID and mount namespaces, /proc of its own, and a
# tmpfs on /tmp that disappears with it.
CONTAINER = ["--pid", "--fork", "--mount", "--mount-proc", "sh", "-c",
             'mount -t tmpfs tmpfs /tmp && exec "$@"', "sh"]


class ContainerChecks:
    """Mixed into a RealPerfTestCase that names its backend."""

    backend = None
    namespace_error = None

    def setUp(self):
        super().setUp()
        if RECORD_NS is None:
            self.skipTest(missing_tool("perf_record_ns.py"))
        if UNSHARE is None:
            self.unavailable("unshare (util-linux) is not installed")
        if os.geteuid() != 0:
            self.skipTest("needs root (namespaces, the process events "
                          "connector, other processes' /tmp)")
        error = probe_once(type(self), [UNSHARE, *CONTAINER, "true"],
                           "make PID and mount namespaces with a tmpfs /tmp")
        if error:
            self.unavailable(error)

    def record_container(self, keep):
        """Record the container's run; return (perf script text, the host
        pid of its Python process)."""
        data = os.path.join(self.tmp, "perf.data")
        record = [PERF, "record", *self.call_graph, "-o", data, "--",
                  UNSHARE, *CONTAINER, sys.executable, "-X", self.backend,
                  "-c", CODE]
        cmd = [sys.executable, RECORD_NS, "-v", "--", *record] if keep \
            else record
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=self.timeout)
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        comm = self.perf_run("script", "-i", data, "-F", "comm,pid")
        pids = {int(pid) for name, pid in
                re.findall(r"^\s*(\S+)\s+(\d+)\s*$", comm.stdout.decode(),
                           re.M)
                if name == os.path.basename(sys.executable)}
        self.assertEqual(len(pids), 1, comm.stdout[-2000:])
        host_pid = pids.pop()
        self.forget_pid(host_pid)
        self.assertNotEqual(host_pid, 1)
        report = self.perf_run("script", "-i", self.samples_of(data),
                               "--no-inline")
        self.assertEqual(report.returncode, 0, report.stderr[-2000:])
        return report.stdout.decode("utf-8", "replace"), host_pid, proc

    def test_named_after_exit(self):
        text, pid, proc = self.record_container(keep=True)
        stacks = perf_stacks(text, pid)
        with_foo, complete = count_chains(stacks, "<string>",
                                          ("foo", "bar", "baz", "<module>"))
        self.assertGreater(with_foo, 20, f"py::foo in few of {len(stacks)} "
                           f"samples; the tool said:\n"
                           f"{proc.stderr.decode(errors='replace')}")
        self.assertGreater(complete, with_foo * 0.5)

    def test_not_named_without_the_tool(self):
        # What the tool is for: perf alone finds nothing once the process
        # and its /tmp are gone.
        text, pid, proc = self.record_container(keep=False)
        self.assertGreater(len(perf_stacks(text, pid)), 20)
        self.assertNotIn("py::foo", text)


@unittest.skipUnless(HAS_FRAME_POINTERS,
                     "built without frame pointers: perf record -g cannot "
                     "walk the interpreter (TestContainerJit covers it)")
class TestContainerPerfMap(ContainerChecks, RealPerfTestCase):
    """-X perf in the container, perf record -g on the host."""

    backend = "perf"
    timeout = 120


class TestContainerJit(ContainerChecks, RealPerfJitTestCase):
    """-X perf_jit in the container, perf record --call-graph dwarf and
    perf inject --jit on the host."""

    backend = "perf_jit"
    timeout = 300


if __name__ == "__main__":
    unittest.main()
