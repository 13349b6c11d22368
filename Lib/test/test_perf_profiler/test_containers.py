"""A Python process in its own PID and mount namespaces, with a private /tmp,
recorded from the host: after it has exited, perf still names its Python
functions when Tools/perf/perf_record_ns.py ran the recording."""

import os
import re
import resource
import shlex
import signal
import stat
import struct
import subprocess
import sys
import unittest

from test.support import os_helper

from test.test_perf_profiler import test_failures
from test.test_perf_profiler.test_real_perf import (
    HAS_FRAME_POINTERS, PERF_SCRIPT, RealPerfJitTestCase, RealPerfTestCase)
from test.test_perf_profiler.util import (
    PERF, TMPFS_ON_TMP, UNSHARE, JitDump, PerfTestCase, as_other_user,
    count_chains, in_new_tmp, jitdump_path, map_path, missing_tool, needs,
    perf_record, perf_stacks, perf_tool, probe_once)

RECORD_NS = perf_tool("perf_record_ns.py")

# The example of test_real_perf, run with -c (its file name is "<string>"):
# the container's /tmp, where a script would be, is a tmpfs of its own.
CODE = PERF_SCRIPT.format(activation="")

# The container: new PID and mount namespaces, /proc of its own, and a
# tmpfs on /tmp that disappears with it.
CONTAINER = ["--pid", "--fork", "--mount", "--mount-proc",
             *in_new_tmp(TMPFS_ON_TMP)]


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
        record = perf_record(self, [
            *self.call_graph, "-o", data, "--", UNSHARE, *CONTAINER,
            sys.executable, "-X", self.backend, "-c", CODE])
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


# ---- What a container plants ------------------------------------------------
#
# Each "container" below is a shell that prints "pid=N" (its pid, also the
# host's: no PID namespace, so the test knows which host files are its),
# makes a mount namespace of its own with a tmpfs on /tmp, and then execs a
# Python that writes what it wants into its /tmp.  Whoever runs a container
# may do all this from an unprivileged user namespace.

# A map of one valid line, then a hole up to 64 MiB - 1: no data in it.
SPARSE_MAP = r"""
import os, time
with open(f"/tmp/perf-{os.getpid()}.map", "wb") as f:
    f.write(b"1000 10 py::planted:/c.py\n")
    f.truncate(64 * 1024 * 1024 - 1)
time.sleep(1)
"""

# A jitdump: its header and one whole code load record; then a child goes
# on appending records of 4 MiB, each a head and a hole (up to 2 GiB),
# while the host copies, after its parent, the container, has ended.
GROWING_JITDUMP = r"""
import os, struct, time
pid = os.getpid()
header = struct.pack("=IIIIIIQQ", 0x4A695444, 1, 40, 62, 0, pid, 0, 0)
name = b"py::planted:/c.py\0"
body = struct.pack("=IIQQQQ", pid, pid, 0, 0x1000, 16, 1) + name
load = struct.pack("=IIQ", 0, 16 + len(body) + 16, 0) + body + b"\xc3" * 16
fd = os.open(f"/tmp/jit-{pid}.dump", os.O_CREAT | os.O_RDWR, 0o600)
os.write(fd, header + load)
size = len(header) + len(load)
child = os.fork()
if child:
    print(f"writer={child}", flush=True)
    time.sleep(0.5)
    os._exit(0)
os.close(1)
os.close(2)
while size < 2 << 30:
    os.pwrite(fd, struct.pack("=IIQ", 2, 4 << 20, 0), size)
    size += 4 << 20
    os.ftruncate(fd, size)
    time.sleep(0.01)
"""

# A map that is a host file bound over the container's own name, while a
# child keeps the container's namespace alive after the recording.
BOUND_MAP = r"""
import os, subprocess, time
path = f"/tmp/perf-{os.getpid()}.map"
open(path, "w").close()
subprocess.run(["mount", "--bind", SECRET, path], check=True)
child = os.fork()
if child == 0:
    os.close(1)
    time.sleep(5)
    os._exit(0)
print(f"writer={child}", flush=True)
time.sleep(0.5)
"""

# A jitdump, and a marker of it (an executable mapping that perf records)
# in a directory whose name is not UTF-8 and holds escape sequences.
ODD_MARKER = r"""
import mmap, os, struct, time
pid = os.getpid()
odd = b"/tmp/\xff\x1b]0;title\x07\x1b[2J"
os.mkdir(odd)
header = struct.pack("=IIIIIIQQ", 0x4A695444, 1, 40, 62, 0, pid, 0, 0)
for path in (b"/tmp/jit-%d.dump" % pid, odd + b"/jit-%d.dump" % pid):
    with open(path, "wb") as f:
        f.write(header + bytes(4096))
fd = os.open(odd + b"/jit-%d.dump" % pid, os.O_RDONLY)
marker = mmap.mmap(fd, 4096, mmap.MAP_PRIVATE,
                   mmap.PROT_READ | mmap.PROT_EXEC)
time.sleep(0.5)
"""

# 64 MiB of empty lines.
EMPTY_LINES_MAP = r"""
import os
with open(f"/tmp/perf-{os.getpid()}.map", "wb") as f:
    for _ in range(64):
        f.write(b"\n" * (1 << 20))
"""

# A map with one valid line, as a Python with -X perf writes it.
PLAIN_MAP = r"""
import os, time
with open(f"/tmp/perf-{os.getpid()}.map", "w") as f:
    f.write("1000 10 py::planted:/c.py\n")
time.sleep(1)
"""


@unittest.skipIf(RECORD_NS is None, missing_tool("perf_record_ns.py"))
class TestHostileContainers(PerfTestCase):
    """What a container's /tmp holds, or a local user plants at the host's
    names, must not hurt the host nor the other containers' copies."""

    namespace_error = None

    def setUp(self):
        super().setUp()
        if PERF is None:
            self.unavailable("perf is not installed")
        if UNSHARE is None:
            self.unavailable("unshare (util-linux) is not installed")
        if os.geteuid() != 0:
            self.skipTest("needs root (namespaces, the process events "
                          "connector, other processes' /tmp)")
        error = probe_once(type(self), [UNSHARE, "--mount",
                                        *in_new_tmp(TMPFS_ON_TMP), "true"],
                           "make a mount namespace with a tmpfs /tmp")
        if error:
            self.unavailable(error)

    def container(self, code, before=""):
        """The shell command of a container that runs code; before runs
        first, with the host's /tmp still in place."""
        # The private /tmp of test_failures, with what the interpreter and
        # this test need bound back in (they may live under /tmp).
        private = test_failures.TestPrivateTmp.private_tmp(self, "rw")
        return shlex.join(["sh", "-c", f'echo "pid=$$"; {before} exec "$@"',
                           "sh", *private, sys.executable, "-c", code])

    def record(self, *containers, options=(), preexec_fn=None):
        """Run the containers side by side under the tool; return (its
        exit status, its stderr, the pids that the containers printed)."""
        shell = " & ".join(containers) + "; wait"
        data = os.path.join(self.tmp, "perf.data")
        cmd = [sys.executable, RECORD_NS, "-v", *options, "--", PERF,
               "record", "-e", "dummy", "-q", "-o", data, "--",
               "sh", "-c", shell]
        # A session of its own: if the tool hangs, the whole tree goes, not
        # only the tool (a container left blocked on its own FUSE /tmp
        # would outlive the test run).
        with subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              start_new_session=True,
                              preexec_fn=preexec_fn) as proc:
            try:
                stdout, stderr = proc.communicate(timeout=300)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                stdout, stderr = proc.communicate()
                self.fail(f"the tool did not end in 300 s: "
                          f"{stderr[-3000:].decode(errors='replace')}")
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        out = stdout.decode()
        pids = [int(pid) for pid in re.findall(r"^pid=(\d+)$", out, re.M)]
        writers = [int(pid) for pid in re.findall(r"^writer=(\d+)$", out,
                                                    re.M)]
        for pid in (*pids, *writers):
            self.forget_pid(pid)
        for pid in writers:
            self.addCleanup(self.stop, pid)
        return proc.returncode, stderr.decode(errors="replace"), pids

    @staticmethod
    def stop(pid):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass

    def assertCopied(self, pid, stderr):
        self.assertIn(f"kept /tmp/perf-{pid}.map", stderr)
        with open(map_path(pid), "rb") as f:
            self.assertEqual(f.read(), b"1000 10 py::planted:/c.py\n")

    def holds_planted_map(self, pid):
        if not self.written(map_path(pid)):
            return False
        try:
            with open(map_path(pid), "rb") as f:
                return f.read(4096) == b"1000 10 py::planted:/c.py\n"
        except OSError:
            return False

    def test_sparse_maps_stay_sparse(self):
        # Four sparse 64 MiB maps: the copies hold what was written, one
        # line each, not 256 MiB of zeros.
        rc, stderr, pids = self.record(
            *[self.container(SPARSE_MAP) for _ in range(4)])
        self.assertEqual(rc, 0, stderr)
        self.assertEqual(len(pids), 4, stderr)
        for pid in pids:
            self.assertCopied(pid, stderr)
            self.assertEqual(os.stat(map_path(pid)).st_size, 26)

    def check_budget(self, containers, option, value, kept):
        """Run containers with a budget that holds at most kept of their
        copies: one line says when it is used up, the run still succeeds.
        (The processes of other tests on this machine, in namespaces of
        their own, may take some of the budget first.)"""
        # Only the budget under test may end the copies: not the time one
        # on a loaded machine or under an emulator.
        others = () if option == "--max-seconds" else ("--max-seconds",
                                                        "3600")
        rc, stderr, pids = self.record(
            *[self.container(SPARSE_MAP) for _ in range(containers)],
            options=(option, value, *others))
        self.assertEqual(rc, 0, stderr)
        self.assertEqual(stderr.count(f"{option} budget of this run used "
                                      f"up"), 1, stderr)
        # A copy is one that the tool says it kept, or a map at its name
        # that holds the planted line: pids wrap (at 32768 here), and the
        # pid of a container that has ended may already be another profiled
        # process's, whose own map at that name is no copy.
        copied = [pid for pid in pids
                  if f"kept {map_path(pid)}" in stderr
                  or self.holds_planted_map(pid)]
        self.assertLessEqual(len(copied), kept, (pids, stderr))
        for pid in copied:
            self.assertCopied(pid, stderr)

    def test_bytes_budget(self):
        # Each copy takes 26 bytes: 60 hold two of them.
        self.check_budget(4, "--max-bytes", "60", kept=2)

    def test_files_budget(self):
        self.check_budget(3, "--max-files", "1", kept=1)

    def test_time_budget(self):
        self.check_budget(2, "--max-seconds", "0", kept=0)

    def test_growing_jitdump(self):
        # A writer goes on while the host copies: the copy ends, and holds
        # the header and the one whole record, nothing of the holes.
        rc, stderr, pids = self.record(self.container(GROWING_JITDUMP))
        self.assertEqual(rc, 0, stderr)
        self.assertEqual(len(pids), 1, stderr)
        # Kept beside perf.data, in a directory of root's: perf inject
        # writes files beside it at names that the dump chooses.
        kept = re.findall(rf"kept (\S+)/jit-{pids[0]}\.dump ", stderr)
        self.assertEqual(len(kept), 1, stderr)
        self.assertEqual(os.path.dirname(kept[0]), self.tmp)
        st = os.lstat(kept[0])
        self.assertEqual((st.st_uid, stat.S_IMODE(st.st_mode)), (0, 0o700))
        self.assertTrue(stat.S_ISDIR(st.st_mode))
        self.assertFalse(self.written(jitdump_path(pids[0])))
        with open(os.path.join(kept[0], f"jit-{pids[0]}.dump"), "rb") as f:
            data = f.read()
        self.assertLess(len(data), 4096)
        dump = JitDump(data)
        self.assertEqual(dump.header.pid, pids[0])
        names = [load.name for _, load in dump.code_loads()]
        self.assertEqual(names, [b"py::planted:/c.py"])

    @needs("other_user")
    def test_fuse_tmp(self):
        # An unprivileged FUSE file system on the container's /tmp, whose
        # server never answers: the host's root may not even look at it
        # (EACCES).  That container is skipped with one line; another
        # container's map is still copied.
        if not os.path.exists("/dev/fuse"):
            self.unavailable("no /dev/fuse")
        fuse = shlex.join(as_other_user(self, [
            UNSHARE, "--user", "--map-root-user", "--mount", "sh", "-c",
            # Nothing here may look under /tmp once the file system is on
            # it: no server answers, so a lookup there would block for
            # ever (the checkout may lie under /tmp: LD_LIBRARY_PATH, the
            # working directory).
            "cd / && unset LD_LIBRARY_PATH && "
            "exec 3<>/dev/fuse && mount -i -t fuse -o fd=3,rootmode=40000,"
            "user_id=0,group_id=0 planted /tmp && echo fuse=$$ && "
            "exec /bin/sleep 2"]))
        rc, stderr, pids = self.record(fuse, self.container(PLAIN_MAP))
        self.assertEqual(rc, 0, stderr)
        self.assertRegex(stderr, r"process \d+ skipped: .*Permission denied")
        self.assertEqual(len(pids), 1, stderr)
        self.assertCopied(pids[0], stderr)

    def test_many_tmp_directories(self):
        # 300 containers, each with a /tmp of its own, against a tool that
        # may open 256 descriptors: it used to run out of them and abort.
        # Now it holds what it can, says so once, and copies those.
        container = shlex.join([
            UNSHARE, "--mount", "sh", "-c", 'echo "pid=$$"; exec "$@"', "sh",
            *in_new_tmp(TMPFS_ON_TMP), "sh", "-c",
            'echo "1000 10 py::planted:/c.py" > "/tmp/perf-$$.map" && '
            'exec sleep 2'])
        rc, stderr, pids = self.record(
            *[container] * 300,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE,
                                                  (256, 256)))
        self.assertEqual(rc, 0, stderr)
        self.assertEqual(len(pids), 300, stderr[-2000:])
        self.assertEqual(stderr.count("directories held already"), 1,
                         stderr[-2000:])
        copied = [pid for pid in pids if self.written(map_path(pid))]
        self.assertGreater(len(copied), 50, stderr[-2000:])
        self.assertLessEqual(len(copied), 256 // 2, stderr[-2000:])
        for pid in copied:
            self.assertCopied(pid, stderr)

    def test_bound_file_not_read(self):
        # A container binds a host file that its user cannot read over its
        # own map: root must not copy it to a name everyone can see.
        secret = os.path.join(self.tmp, "secret")
        with open(secret, "w") as f:
            f.write("1000 10 py::secret:/c.py\n")
        os.chmod(secret, 0o600)
        rc, stderr, pids = self.record(self.container(
            BOUND_MAP.replace("SECRET", repr(secret))))
        self.assertEqual(rc, 0, stderr)
        self.assertEqual(len(pids), 1, stderr)
        self.assertFalse(self.written(map_path(pids[0])), stderr)
        self.assertNotIn("secret", stderr)

    def test_marker_names_shown_escaped(self):
        # The path of a jitdump marker is the container's choice: not
        # UTF-8 (the tool used to die on it, every marker left as it was)
        # and with escape sequences (written raw to root's terminal).
        rc, stderr, pids = self.record(self.container(ODD_MARKER))
        self.assertEqual(rc, 0, stderr)
        self.assertEqual(len(pids), 1, stderr)
        self.assertRegex(stderr, rf"marker of process {pids[0]}: .*\\xff")
        self.assertNotIn("\x1b", stderr)
        self.assertNotIn("\x07", stderr)

    def test_slow_map_within_time_budget(self):
        # 64 MiB of empty lines: nothing to copy, slow to read.  The time
        # budget ends the read.
        rc, stderr, pids = self.record(self.container(EMPTY_LINES_MAP),
                                       options=("--max-seconds", "1"))
        self.assertEqual(rc, 0, stderr)
        self.assertEqual(stderr.count("--max-seconds budget of this run "
                                      "used up"), 1, stderr)

    def test_planted_host_names(self):
        # At the host's /tmp/perf-PID.map of three containers: a directory
        # (skipped, with one line), a link (replaced, its target untouched)
        # and another user's file (replaced).  A fourth is copied as usual.
        target = os.path.join(self.tmp, "target")
        with open(target, "w") as f:
            f.write("untouched\n")
        directory = 'mkdir "/tmp/perf-$$.map" &&'
        link = f'ln -s {shlex.quote(target)} "/tmp/perf-$$.map" &&'
        other = ('touch "/tmp/perf-$$.map" && '
                 'chown 65534:65534 "/tmp/perf-$$.map" &&')
        rc, stderr, pids = self.record(
            self.container(PLAIN_MAP, before=directory),
            self.container(PLAIN_MAP, before=link),
            self.container(PLAIN_MAP, before=other),
            self.container(PLAIN_MAP))
        by_kind = {}
        for pid in pids:
            path = map_path(pid)
            if os.path.isdir(path):
                self.addCleanup(os.rmdir, path)
                by_kind["directory"] = pid
        self.assertEqual(rc, 0, stderr)
        self.assertEqual(len(pids), 4, stderr)
        self.assertIn("directory", by_kind, stderr)
        self.assertEqual(stderr.count("is a directory"), 1, stderr)
        with open(target) as f:
            self.assertEqual(f.read(), "untouched\n")
        for pid in pids:
            if pid == by_kind["directory"]:
                continue
            st = os.lstat(map_path(pid))
            self.assertEqual((st.st_uid, oct(st.st_mode & 0o170000)),
                             (0, oct(0o100000)))
            self.assertCopied(pid, stderr)


if __name__ == "__main__":
    unittest.main()
