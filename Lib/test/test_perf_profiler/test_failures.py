"""Where the files cannot be written: a hostile /tmp (symbolic link, FIFO,
directory... at the path of the map), a full disk, a /tmp mounted noexec or
read-only, a switch to a backend that cannot open its file.  One warning,
or a RuntimeError from sys, and the program runs on unprofiled."""

import glob
import os
import stat
import subprocess
import sys
import tempfile
import unittest

from test.support import import_helper, os_helper
from test.test_perf_profiler.util import (
    BEHAVIOUR_SCRIPT, MOUNT_ON_TMP, SUBPROCESS_TIMEOUT, TMPFS_ON_TMP,
    TRY_ACTIVATE, UNSHARE, PerfTestCase, entry_name, in_new_tmp, jitdump_path,
    map_path, remove_path, unshare)


# ---- Hostile /tmp -----------------------------------------------------------

HOSTILE_SCRIPT = """\
import os, sys
kind, target = sys.argv[1], sys.argv[2]
path = f"/tmp/perf-{os.getpid()}.map"
reader = None
if kind == "symlink":
    os.symlink(target, path)
elif kind == "fifo":
    os.mkfifo(path, 0o600)
elif kind == "fifo_with_reader":
    os.mkfifo(path, 0o600)
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
elif kind == "directory":
    os.mkdir(path)
elif kind == "other_owner":
    with open(path, "wb"):
        pass
    os.chown(path, 65534, 65534)
elif kind == "hard_link":
    os.link(target, path)
print(os.getpid(), flush=True)
""" + TRY_ACTIVATE + """\
def after_failure():
    return 1
after_failure()
if reader is not None:
    try:
        print("fifo data", os.read(reader, 100))
    except BlockingIOError:
        print("fifo data", b"")
print("continued")
"""


class TestHostileTmp(PerfTestCase):

    def plant(self, kind, target="-"):
        script = self.make_script(HOSTILE_SCRIPT)
        res = self.run_python(script, kind, target)
        self.addCleanup(remove_path, map_path(res.pid))
        self.assertEqual(res.rc, 0, res)
        lines = res.out.decode(errors="replace").splitlines()
        self.assertGreaterEqual(len(lines), 4, res)
        self.assertEqual(lines[0], str(res.pid))
        self.assertEqual(lines[-1], "continued")
        self.assertEqual(lines[2], "0", "active after a failed activation")
        self.assertTrue(lines[1].startswith("RuntimeError: "), lines[1])
        return res, lines

    def test_symlink(self):
        target = os.path.join(self.tmp, "target")
        res, lines = self.plant("symlink", target)
        self.assertIn("symbolic link", lines[1])
        self.assertFalse(os.path.lexists(target))
        self.assertEqual(os.readlink(map_path(res.pid)), target)

    def test_fifo(self):
        res, lines = self.plant("fifo")
        self.assertIn("not a regular file", lines[1])
        self.assertTrue(stat.S_ISFIFO(os.lstat(map_path(res.pid)).st_mode))

    def test_fifo_with_reader(self):
        res, lines = self.plant("fifo_with_reader")
        self.assertIn("not a regular file", lines[1])
        self.assertEqual(lines[3], "fifo data b''")

    def test_directory(self):
        res, lines = self.plant("directory")
        self.assertTrue(os.path.isdir(map_path(res.pid)))
        self.assertEqual(os.listdir(map_path(res.pid)), [])

    @unittest.skipUnless(hasattr(os, "geteuid") and os.geteuid() == 0,
                         "requires root to give a file away")
    def test_other_owner(self):
        res, lines = self.plant("other_owner")
        self.assertIn("owned by", lines[1])
        st = os.lstat(map_path(res.pid))
        self.assertEqual(st.st_uid, 65534)
        self.assertEqual(st.st_size, 0)

    def test_hard_link(self):
        target = os.path.join(self.tmp, "linked")
        with open(target, "wb"):
            pass
        res, lines = self.plant("hard_link", target)
        self.assertEqual(os.path.getsize(target), 0)

    def run_with_planted(self, plant, script, *args):
        """Run script with a path planted at the child's map before exec."""
        def preexec():
            path = map_path(os.getpid())
            # A perf-enabled test process has just opened the child's map
            # in its after-fork handler; it is closed on exec.
            remove_path(path)
            plant(path)
        res = self.run_python(*args, script, preexec_fn=preexec,
                              clear_leftovers=False)
        self.addCleanup(remove_path, map_path(res.pid))
        return res

    def check_startup_failure(self, plant):
        script = self.make_script(BEHAVIOUR_SCRIPT)
        plain = self.run_python(script)
        res = self.run_with_planted(plant, script, "-X", "perf")
        self.assertEqual(res.rc, plain.rc)
        self.assertEqual(res.out, plain.out)
        self.assertIn(b"perf", res.err)
        self.assertIn(map_path(res.pid).encode(), res.err)
        return res

    def test_startup_symlink(self):
        target = os.path.join(self.tmp, "target")
        res = self.check_startup_failure(
            lambda path: os.symlink(target, path))
        self.assertIn(b"symbolic link", res.err)
        self.assertFalse(os.path.lexists(target))

    def test_startup_fifo(self):
        self.check_startup_failure(lambda path: os.mkfifo(path, 0o600))


# ---- Failures: one warning, and the program runs on unprofiled -------------

# A few hundred distinct functions with a deterministic output.  argv[1], if
# given, is the backend to activate through sys; the RuntimeError of a failed
# activation is reported on stderr.
WORKLOAD_SCRIPT = """\
import sys
if len(sys.argv) > 1:
    try:
        sys.activate_stack_trampoline(sys.argv[1])
    except RuntimeError as exc:
        print(f"RuntimeError: {exc}", file=sys.stderr, flush=True)

NFUNCS = 400
# Long names make long map lines and jitdump records.
TAIL = "_" + "x" * 200
source = "".join(f"def work_{i}{TAIL}(n):\\n    return n * n + {i}\\n"
                 for i in range(NFUNCS))
namespace = {}
exec(compile(source, "<workload>", "exec"), namespace)

def results(n):
    for i in range(n):
        yield namespace[f"work_{i}{TAIL}"](i)

for i, value in enumerate(results(NFUNCS)):
    print(i, value)
try:
    namespace["work_0" + TAIL](None)
except TypeError as exc:
    print("caught", type(exc).__name__)
print("active", sys.is_stack_trampoline_active())
"""
WORKLOAD_FUNCS = 400            # NFUNCS of WORKLOAD_SCRIPT
WORKLOAD_PREFIX = b"py::work_"

ENV_VAR = {"perf": "PYTHONPERFSUPPORT", "perf_jit": "PYTHON_PERF_JIT_SUPPORT"}


class FailureTestCase(PerfTestCase):
    """Runs WORKLOAD_SCRIPT where the files cannot be written."""

    def setUp(self):
        super().setUp()
        self.script = self.make_script(WORKLOAD_SCRIPT)

    def plain_run(self):
        """The output of the workload without profiling."""
        plain = self.run_ok(self.script)
        self.assertEqual(plain.err, b"")
        self.assertTrue(plain.out.endswith(b"\nactive False\n"), plain)
        return plain

    def run_workload(self, backend, how, **kwargs):
        """Run the workload with backend activated through sys, -X or the
        environment."""
        if how == "sys":
            return self.run_python(self.script, backend, **kwargs)
        if how == "-X":
            return self.run_python("-X", backend, self.script, **kwargs)
        return self.run_python(self.script, env={ENV_VAR[backend]: "1"},
                               **kwargs)

    def assertOneLine(self, res, *fragments):
        """stderr is one line holding each of fragments."""
        lines = res.err.splitlines()
        self.assertEqual(len(lines), 1, res.err.decode(errors="replace"))
        for fragment in fragments:
            self.assertIn(fragment, lines[0])


class TestDiskFull(FailureTestCase):
    """A file size limit (RLIMIT_FSIZE) stands for a full disk: a write that
    crosses it is cut short, the next one fails with EFBIG (Python ignores
    SIGXFSZ)."""

    # By backend: a limit above what start-up writes (about 10 KiB of map,
    # 50 KiB of jitdump) and below what the workload adds, and one that
    # start-up reaches (after the 40 bytes of the jitdump header).
    LIMITS = {"perf": 64 * 1024, "perf_jit": 128 * 1024}
    STARTUP_LIMITS = {"perf": 100, "perf_jit": 1000}

    def setUp(self):
        super().setUp()
        self.resource = import_helper.import_module("resource")

    def run_limited(self, backend, how, limit):
        resource = self.resource

        def preexec():
            _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))

        res = self.run_workload(backend, how, preexec_fn=preexec)
        self.assertEqual(res.rc, 0, res)
        return res

    def check_disk_full(self, backend, path_of, read_names):
        plain = self.plain_run()
        cases = [(how, self.LIMITS[backend]) for how in ("sys", "-X", "env")]
        cases.append(("-X", self.STARTUP_LIMITS[backend]))
        for how, limit in cases:
            with self.subTest(how=how, limit=limit):
                res = self.run_limited(backend, how, limit)
                self.assertEqual(res.out, plain.out)
                path = path_of(res.pid)
                self.assertOneLine(res, b"perf profiler support stopped",
                                   path.encode(), b"File too large")
                self.assertLessEqual(os.path.getsize(path), limit)
                names = read_names(res.pid)
                work = [n for n in names if n.startswith(WORKLOAD_PREFIX)]
                if limit == self.LIMITS[backend]:
                    # It stopped in the middle of the workload.
                    self.assertGreater(len(work), 0)
                    self.assertLess(len(work), WORKLOAD_FUNCS)
                else:
                    self.assertEqual(work, [])

    def test_map(self):
        # read_map() checks that every line is whole: the last byte is a
        # newline.
        self.check_disk_full(
            "perf", map_path, lambda pid: self.read_map(pid).names())

    def test_jitdump(self):
        # jitdump_names() checks that the records walk exactly to the end.
        self.check_disk_full("perf_jit", jitdump_path, self.jitdump_names)


class TestPrivateTmp(FailureTestCase):
    """/tmp where the files cannot be made, in a private mount namespace
    (util.unshare()): a new tmpfs mounted noexec (the jitdump
    cannot be mapped executable) or read-only (nothing can be created).
    The directories of the interpreter, its library and the test are bound
    back into it, so the child runs as it would elsewhere; the files it
    writes in /tmp go away with the namespace."""

    namespace_error = None          # what the first probe said, if it failed

    def setUp(self):
        super().setUp()
        if UNSHARE is None:
            self.unavailable("unshare (util-linux) is not installed")
        cls = type(self)
        if cls.namespace_error is None:
            proc = subprocess.run(
                [*self.private_tmp("noexec"), "true"], capture_output=True,
                stdin=subprocess.DEVNULL, timeout=SUBPROCESS_TIMEOUT)
            cls.namespace_error = "" if proc.returncode == 0 else (
                f"cannot mount a private /tmp (exit code "
                f"{proc.returncode}): {proc.stderr.decode(errors='replace')}")
        if cls.namespace_error:
            self.unavailable(cls.namespace_error)

    def private_tmp(self, options):
        """A command that runs its arguments with exec in a private mount
        namespace with a new /tmp mounted with options."""
        return [*unshare("--mount", "--propagation", "private"),
                *in_new_tmp(TMPFS_ON_TMP, paths=[self.tmp],
                            options=options)]

    def run_private(self, options, backend, how):
        res = self.run_workload(backend, how,
                                wrapper=self.private_tmp(options))
        self.assertEqual(res.rc, 0, res)
        return res

    # The start of what is said when an activation is refused, by how it
    # was asked for.
    REFUSALS = {
        "-X": "Python: warning: perf profiler support ({backend}) is off",
        "sys": "RuntimeError: cannot activate the {backend} backend",
    }

    def check_refused(self, plain, options, backend, how, reason):
        """The workload runs as without profiling and stderr holds one line
        that says why the files cannot be written."""
        res = self.run_private(options, backend, how)
        self.assertEqual(res.out, plain.out)
        path = (map_path if backend == "perf" else jitdump_path)(res.pid)
        self.assertOneLine(res, path.encode(), reason)
        refusal = self.REFUSALS[how].format(backend=backend).encode()
        self.assertTrue(res.err.startswith(refusal), res.err)

    def test_noexec(self):
        plain = self.plain_run()
        for how in ("-X", "sys"):
            with self.subTest(how=how):
                self.check_refused(plain, "noexec", "perf_jit", how,
                                   b"noexec")

    def test_noexec_map_works(self):
        # The map needs no executable mapping.
        plain = self.plain_run()
        res = self.run_private("noexec", "perf", "-X")
        self.assertEqual(res.err, b"")
        self.assertEqual(res.out.replace(b"active True", b"active False"),
                         plain.out)

    def test_read_only(self):
        plain = self.plain_run()
        for backend in ("perf", "perf_jit"):
            for how in ("-X", "sys"):
                with self.subTest(backend=backend, how=how):
                    self.check_refused(plain, "ro", backend, how,
                                       b"Read-only file system")

    def test_what_lies_under_tmp_stays(self):
        # A checkout cloned under /tmp: its interpreter and library would
        # vanish with the old /tmp, and every test that replaces /tmp would
        # fail with "exec: .../python: not found".  The kept directory
        # stands for it; the hidden one for the rest of the old /tmp.
        kept = tempfile.mkdtemp(dir="/tmp", prefix="perf-tests-kept-")
        self.addCleanup(os_helper.rmtree, kept)
        hidden = tempfile.mkdtemp(dir="/tmp", prefix="perf-tests-hidden-")
        self.addCleanup(os_helper.rmtree, hidden)
        script = os.path.join(kept, "script.py")
        with open(script, "w") as f:
            f.write("import os, sys\n"
                    "print(os.path.exists(sys.argv[1]), os.listdir('/tmp'))\n")
        wrapper = [*unshare("--mount", "--propagation", "private"),
                   *in_new_tmp(TMPFS_ON_TMP, paths=[kept], options="noexec")]
        proc = subprocess.run([*wrapper, sys.executable, script, hidden],
                              capture_output=True, stdin=subprocess.DEVNULL,
                              timeout=SUBPROCESS_TIMEOUT)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        exists, names = proc.stdout.decode().split(" ", 1)
        self.assertEqual(exists, "False", "the old /tmp is still there")
        self.assertIn(repr(os.path.basename(kept)), names)
        self.assertEqual(proc.stderr, b"")


class TestNewTmpRule(unittest.TestCase):
    """Every test command that mounts something at /tmp is built by
    util.new_tmp() or util.in_new_tmp(), which keep what lies under the old
    one: a line that mounts at /tmp (util.MOUNT_ON_TMP) without them fails
    here, so that a later test cannot forget it."""

    def test_every_new_tmp_through_the_helper(self):
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        paths = (glob.glob(os.path.join(here, "test_perf*.py"))
                 + glob.glob(os.path.join(here, "test_perf_profiler", "*.py")))
        self.assertGreater(len(paths), 5, here)
        found = [f"{path}:{n}: {line.strip()}"
                 for path in sorted(paths)
                 if os.path.basename(path) != "util.py"
                 for n, line in enumerate(open(path, encoding="utf-8"), 1)
                 if MOUNT_ON_TMP.search(line) and "new_tmp(" not in line]
        self.assertEqual(found, [], "mounts at /tmp without util.new_tmp()")


# A switch to another backend that cannot open its output: the old backend
# goes on.  argv: the old backend, the new one, and a path to plant a
# directory at, with {pid} for the pid.
SWITCH_SCRIPT = """\
import os, sys
old, new, planted = sys.argv[1:]
def before():
    return 1
def after():
    return 2
sys.activate_stack_trampoline(old)
before()
os.mkdir(planted.format(pid=os.getpid()))
try:
    sys.activate_stack_trampoline(new)
except RuntimeError as exc:
    print(f"RuntimeError: {exc}")
else:
    print("switched")
print(int(sys.is_stack_trampoline_active()))
before()
after()
"""


class TestFailedSwitch(PerfTestCase):

    def switch(self, old, new, path_of):
        script = self.make_script(SWITCH_SCRIPT)
        res = self.run_ok(script, old, new, path_of("{pid}"))
        planted = path_of(res.pid)
        self.addCleanup(remove_path, planted)
        lines = res.out.splitlines()
        self.assertEqual(len(lines), 2, res)
        self.assertTrue(lines[0].startswith(
            f"RuntimeError: cannot activate the {new} backend".encode()),
            lines[0])
        self.assertIn(planted.encode(), lines[0])
        self.assertEqual(lines[1], b"1", "profiling stopped")
        self.assertEqual(res.err, b"")
        self.assertEqual(os.listdir(planted), [])
        return res, script

    def test_map_stays(self):
        res, script = self.switch("perf", "perf_jit", jitdump_path)
        # after() ran after the failed switch; before() was not described
        # a second time.
        self.assertNamedOnce(self.read_map(res.pid), "before", "after",
                             filename=script)

    def test_jitdump_stays(self):
        res, script = self.switch("perf_jit", "perf", map_path)
        names = self.jitdump_names(res.pid)
        for qualname in ("before", "after"):
            self.assertEqual(names.count(entry_name(qualname, script)), 1,
                             qualname)


if __name__ == "__main__":
    unittest.main()
