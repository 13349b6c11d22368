"""Switching the perf support of a running process from outside:
PYTHON_PERF_REMOTE=1 and Tools/perf/perf_switch.py (Python/perf_remote.c)."""

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import unittest

from test.test_perf_profiler.test_real_perf import HAS_FRAME_POINTERS
from test.test_perf_profiler.util import (
    EMULATOR, PERF, PERF_TIMEOUT, SUBPROCESS_TIMEOUT, UNSHARE, JitDump,
    PerfMap, PerfTestCase, as_other_user, in_new_tmp, map_path,
    missing_tool, needs, perf_record, perf_stacks, perf_tool, probe_once,
    unshare)


# The perf_switch tool of the source tree this interpreter was built from
# (or of Debian's examples package).
SWITCH = perf_tool("perf_switch.py")

# A service: a worker thread keeps calling functions that it makes as it
# goes (work_0, work_1...), while the main thread sits blocked in a read of
# stdin, where it takes orders: "fork" (a child runs in_child() and
# exits), "signals" (print the signals its handler saw), "quit".
SERVICE_SCRIPT = """\
import os, signal, sys, threading, time
seen = []
signal.signal(signal.SIGUSR1, lambda signum, frame: seen.append(signum))
stop = threading.Event()
def make(n):
    namespace = {}
    exec(f"def work_{n}():\\n    return {n}\\n", namespace)
    return namespace[f"work_{n}"]
def worker():
    n = 0
    while not stop.is_set():
        make(n)()
        n += 1
        time.sleep(0.002)
threading.Thread(target=worker, daemon=True).start()
print(f"pid={os.getpid()}", flush=True)
for line in sys.stdin:
    order = line.strip()
    if order == "fork":
        pid = os.fork()
        if pid == 0:
            def in_child():
                return 1
            in_child()
            os._exit(0)
        os.waitpid(pid, 0)
        print(f"child={pid}", flush=True)
    elif order == "signals":
        print(f"signals={len(seen)}", flush=True)
    elif order == "fork-sockets":
        # How many sockets a child forked now has open (its own listening
        # one only).
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            time.sleep(0.2)         # its own control thread has started
            fds = [os.readlink(f"/proc/self/fd/{fd}")
                   for fd in os.listdir("/proc/self/fd")
                   if os.path.exists(f"/proc/self/fd/{fd}")]
            os.write(w, str(sum(f.startswith("socket:") for f in fds)
                            ).encode())
            os._exit(0)
        os.close(w)
        count = os.read(r, 100).decode()
        os.waitpid(pid, 0)
        print(f"sockets={count}", flush=True)
    elif order == "preexec":
        # Whether a child running preexec_fn listens for switches.
        import subprocess
        def listening():
            ns = os.stat("/proc/self/ns/pid").st_ino
            name = f"@python-perf-{ns}-{os.getpid()}"
            with open("/proc/net/unix") as f:
                found = any(line.split()[-1] == name for line in f
                            if len(line.split()) > 7)
            os.write(1, f"preexec={int(found)}\\n".encode())
        subprocess.run(["true"], preexec_fn=listening)
    elif order == "quit":
        break
stop.set()
print("done", flush=True)
"""

WORK = re.compile(rb"py::work_(\d+):<string>")


class RemoteTestCase(PerfTestCase):
    """Starts services and switches them with perf_switch.py."""

    namespace_error = None      # what the first namespace probe said

    def setUp(self):
        super().setUp()
        if SWITCH is None:
            self.skipTest(missing_tool("perf_switch.py"))
        self.script = self.make_script(SERVICE_SCRIPT)

    def start(self, opt_in=True, wrapper=(), pid_of=None, script=None):
        """Start the service; return (process, pid to switch).  pid_of
        finds the service's pid when a wrapper runs it as a child; script:
        the service's path as the wrapper's command sees it."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("PYTHON")}
        if opt_in:
            env["PYTHON_PERF_REMOTE"] = "1"
        proc = subprocess.Popen([*wrapper, sys.executable,
                                 script or self.script],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env)
        self.addCleanup(self.stop, proc)
        line = proc.stdout.readline()
        if not line.startswith(b"pid="):
            proc.kill()
            self.fail("the service did not start: "
                      f"{line + proc.stderr.read()}")
        pid = int(line[4:])
        if pid_of is None:
            self.forget_pid(pid)
        else:
            pid = pid_of(proc)  # its files are in the wrapper's /tmp
        return proc, pid

    def stop(self, proc):
        if proc.poll() is None:
            proc.kill()
        proc.communicate()

    def order(self, proc, line):
        proc.stdin.write(line.encode() + b"\n")
        proc.stdin.flush()
        return proc.stdout.readline().decode().strip()

    def switch(self, pid, request):
        res = subprocess.run([sys.executable, SWITCH, str(pid), request],
                             capture_output=True, text=True,
                             timeout=SUBPROCESS_TIMEOUT)
        return res.returncode, res.stdout.strip() + res.stderr.strip()

    def assertSwitched(self, pid, request, state):
        rc, out = self.switch(pid, request)
        self.assertEqual((rc, out), (0, f"{pid}: ok {state}"))

    def wait_for(self, predicate, what):
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.05)
        self.fail(f"timed out waiting for {what}")

    def work_lines(self, path):
        try:
            with open(path, "rb") as f:
                return WORK.findall(f.read())
        except FileNotFoundError:
            return []

class TestRemoteSwitch(RemoteTestCase):

    def test_not_opted_in(self):
        proc, pid = self.start(opt_in=False)
        rc, out = self.switch(pid, "perf")
        self.assertEqual(rc, 2)
        self.assertIn("does not take perf switches", out)
        self.assertIn("PYTHON_PERF_REMOTE=1", out)
        self.assertEqual(self.order(proc, "quit"), "done")
        self.assertNoMap(pid)

    def test_on_off_on(self):
        proc, pid = self.start()
        self.assertSwitched(pid, "status", "off")
        # The main thread is blocked in a read: the worker's calls are
        # named all the same.
        self.assertSwitched(pid, "perf", "perf")
        self.wait_for(lambda: self.work_lines(map_path(pid)), "a work_ line")
        self.assertSwitched(pid, "status", "perf")
        self.assertSwitched(pid, "off", "off")
        time.sleep(0.2)
        before = self.work_lines(map_path(pid))
        time.sleep(0.5)
        self.assertEqual(self.work_lines(map_path(pid)), before,
                         "the map grew while off")
        # On again: the same map goes on, with new functions after the old.
        self.assertSwitched(pid, "perf", "perf")
        after = self.wait_for(
            lambda: (lambda lines: lines if len(lines) > len(before)
                     else None)(self.work_lines(map_path(pid))),
            "new work_ lines")
        self.assertEqual(after[:len(before)], before)
        self.assertEqual(self.order(proc, "quit"), "done")
        _, err = proc.communicate()
        self.assertEqual(proc.returncode, 0)
        self.assertEqual(err, b"")
        self.assertWellFormed(PerfMap.read(pid))

    def test_perf_jit(self):
        proc, pid = self.start()
        self.assertSwitched(pid, "perf_jit", "perf_jit")
        dump = self.wait_for(
            lambda: (lambda d: d if d is not None and any(
                b"work_" in load.name for _, load in d.code_loads())
                else None)(self.read_jitdump_if_any(pid)),
            "a work_ record in the jitdump")
        dump.validate(pid)
        self.assertSwitched(pid, "off", "off")
        self.assertEqual(self.order(proc, "quit"), "done")

    def read_jitdump_if_any(self, pid):
        try:
            return JitDump.read(pid)
        except (OSError, ValueError):
            return None

    def test_program_signals_still_handled(self):
        proc, pid = self.start()
        self.assertSwitched(pid, "perf", "perf")
        for _ in range(3):
            os.kill(pid, signal.SIGUSR1)
            time.sleep(0.05)
        self.assertSwitched(pid, "off", "off")
        self.assertEqual(self.order(proc, "signals"), "signals=3")
        self.assertEqual(self.order(proc, "quit"), "done")

    def test_fork_after_switch(self):
        proc, pid = self.start()
        self.assertSwitched(pid, "perf", "perf")
        line = self.order(proc, "fork")
        self.assertTrue(line.startswith("child="), line)
        child = int(line[6:])
        self.forget_pid(child)
        pmap = PerfMap.read(child)
        self.assertIsNotNone(pmap, "the child wrote no map")
        self.assertTrue(any(name.startswith(b"py::in_child:")
                            for name in pmap.names()), pmap.names())
        self.assertEqual(self.order(proc, "quit"), "done")

    def test_name_taken_by_another_process(self):
        # Any program of the network namespace can bind the abstract name
        # of a process that did not (yet) take it: the tool must not talk
        # to it as if it were that process.
        proc, pid = self.start(opt_in=False)
        ns = os.stat("/proc/self/ns/pid").st_ino
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as squatter:
            squatter.bind(f"\0python-perf-{ns}-{pid}")
            squatter.listen(1)
            rc, out = self.switch(pid, "perf")
        self.assertEqual(rc, 2)
        self.assertIn(f"belongs to process {os.getpid()}: refused", out)
        self.assertEqual(self.order(proc, "quit"), "done")
        self.assertNoMap(pid)

    def test_bad_requests(self):
        proc, pid = self.start()
        rc, out = self.switch(pid, "perfx")
        self.assertEqual(rc, 2)
        self.assertIn("usage", out)
        rc, out = self.switch(999999999, "perf")
        self.assertEqual(rc, 2)
        self.assertIn("no process 999999999", out)
        self.assertEqual(self.order(proc, "quit"), "done")

    @needs("other_user")
    def test_other_user_refused(self):
        proc, pid = self.start()
        res = subprocess.run(as_other_user(self, [sys.executable, SWITCH,
                                                  str(pid), "perf"]),
                             capture_output=True, text=True,
                             timeout=SUBPROCESS_TIMEOUT)
        # The tool cannot even look at another user's process.
        self.assertEqual(res.returncode, 2, res)
        self.assertIn("run as its user or as root", res.stderr)
        # A client of its own, as that user: refused before anything is
        # read, it still gets why (and no broken pipe).
        ns = os.stat("/proc/self/ns/pid").st_ino
        client = ("import socket, sys\n"
                  "s = socket.socket(socket.AF_UNIX)\n"
                  "s.connect('\\0' + sys.argv[1])\n"
                  "try:\n"
                  "    s.sendall(b'perf\\n')\n"
                  "except BrokenPipeError:\n"
                  "    pass\n"
                  "print(s.recv(100).decode().strip())\n")
        res = subprocess.run(as_other_user(self, [sys.executable, "-c",
                                                  client,
                                                  f"python-perf-{ns}-{pid}"]),
                             capture_output=True, text=True,
                             timeout=SUBPROCESS_TIMEOUT)
        self.assertEqual(res.stdout.strip(), "error permission denied", res)
        self.assertSwitched(pid, "status", "off")
        self.assertEqual(self.order(proc, "quit"), "done")

    def test_no_descriptor_number_held(self):
        # A thread blocked in accept() holds the lowest free descriptor
        # number; the program closed stdin and expects open() to give 0.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("PYTHON")}
        env["PYTHON_PERF_REMOTE"] = "1"
        code = ("import os, time; time.sleep(0.3); "
                "fd = os.open('/dev/null', os.O_RDONLY); print(fd); "
                "os.dup2(fd, 0); print('ok')")
        res = subprocess.run(["sh", "-c", 'exec "$@" 0<&-', "sh",
                              sys.executable, "-c", code],
                             capture_output=True, text=True, env=env,
                             timeout=SUBPROCESS_TIMEOUT)
        self.assertEqual((res.returncode, res.stdout, res.stderr),
                         (0, "0\nok\n", ""))

    def test_fork_while_serving(self):
        # A client connected and silent: the thread waits for its request
        # line; a child forked meanwhile must not keep that connection.
        proc, pid = self.start()
        ns = os.stat("/proc/self/ns/pid").st_ino
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
            silent.connect(f"\0python-perf-{ns}-{pid}")
            time.sleep(0.2)
            self.assertEqual(self.order(proc, "fork-sockets"), "sockets=1")
        self.assertEqual(self.order(proc, "quit"), "done")

    def test_preexec_child_takes_no_switch(self):
        proc, pid = self.start()
        self.assertEqual(self.order(proc, "preexec"), "preexec=0")
        self.assertEqual(self.order(proc, "quit"), "done")

    def test_container_from_the_host(self):
        # The service in its own PID, mount and network namespaces, with a
        # /tmp of its own; switched by its host pid from here.
        if UNSHARE is None:
            self.unavailable("unshare (util-linux) is not installed")
        error = probe_once(type(self), [*unshare("--pid", "--fork",
                                                 "--mount", "--net"), "true"],
                           "make PID, mount and network namespaces")
        if error:
            self.unavailable(error)
        private = os.path.join(self.tmp, "container-tmp")
        os.mkdir(private)
        os.chmod(private, 0o1777)
        # The container's /tmp hides ours: the service lives in its own.
        shutil.copy(self.script, os.path.join(private, "service.py"))
        wrapper = [*unshare("--pid", "--fork", "--mount", "--net",
                            "--mount-proc"),
                   *in_new_tmp(f"mount --bind {shlex.quote(private)} /tmp")]
        proc, host_pid = self.start(wrapper=wrapper, pid_of=self.host_pid,
                                    script="/tmp/service.py")
        self.assertSwitched(host_pid, "perf", "perf")
        # The map is in the container's /tmp, under its own pid (1).
        inner = os.path.join(private, "perf-1.map")
        self.wait_for(lambda: self.work_lines(inner), "a work_ line")
        self.assertSwitched(host_pid, "off", "off")
        self.assertEqual(self.order(proc, "quit"), "done")

    def host_pid(self, proc):
        """The pid of the service, the child of unshare's child."""
        def children(pid):
            try:
                with open(f"/proc/{pid}/task/{pid}/children") as f:
                    return [int(p) for p in f.read().split()]
            except FileNotFoundError:
                return []
        forked = self.wait_for(lambda: children(proc.pid), "unshare's child")
        return forked[0]


# CPython's embedding test program, in the build directory.
TESTEMBED = os.path.join(os.path.dirname(sys.executable), "Programs",
                         "_testembed")


class TestEmbedderInitialisesAgain(PerfTestCase):
    """An embedder that finalises Python and initialises it again, several
    times in one process, with PYTHON_PERF_REMOTE=1: each initialisation
    listens anew, under the same name, without a warning.  (_testembed
    finds its standard library from the build directory, as test_embed
    runs it.)"""

    def test_repeated_init(self):
        if not os.path.exists(TESTEMBED):
            self.skipTest(f"no {TESTEMBED} (not a build directory)")
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("PYTHON")}
        env["PYTHON_PERF_REMOTE"] = "1"
        res = subprocess.run([*EMULATOR, TESTEMBED,
                              "test_repeated_init_and_subinterpreters"],
                             capture_output=True, text=True, env=env,
                             cwd=os.path.dirname(sys.executable),
                             timeout=SUBPROCESS_TIMEOUT)
        self.assertEqual(res.returncode, 0, res.stderr)
        self.assertEqual(res.stderr, "")
        self.assertGreater(res.stdout.count("--- Pass"), 1, res.stdout)



@needs("other_user")
class TestRootlessContainer(RemoteTestCase):
    """A rootless container: the service runs as an unprivileged host user
    (nobody) in a user namespace of its own, where it is root, with PID,
    mount and network namespaces and a /tmp of its own.  Host root
    switches it by its host pid: the tool must enter the user namespace
    first, or the service sees an unmapped user and refuses."""

    namespace_error = None      # this class's own probe

    def test_switched_by_host_root(self):
        os.chmod(self.tmp, 0o755)   # nobody must reach it
        as_nobody = as_other_user(self, [
            UNSHARE, "--user", "--map-root-user", "--pid", "--fork",
            "--mount", "--net", "--mount-proc"], paths=[self.tmp])
        error = probe_once(type(self), [*as_nobody, "true"],
                           "make a user namespace as an unprivileged user")
        if error and not self.root_makes_user_namespaces():
            # Not a missing tool: this system's policy (a chroot, where the
            # kernel refuses them, or user.max_user_namespaces=0).
            self.skipTest("the kernel makes no user namespace here, not even "
                          f"for root: {error.strip()}")
        if error:
            self.unavailable(error)
        private = os.path.join(self.tmp, "container-tmp")
        os.mkdir(private)
        os.chmod(private, 0o1777)
        shutil.copy(self.script, os.path.join(private, "service.py"))
        os.chmod(os.path.join(private, "service.py"), 0o644)
        wrapper = [*as_nobody,
                   *in_new_tmp(f"mount --bind {shlex.quote(private)} /tmp")]
        proc, host_pid = self.start(wrapper=wrapper, pid_of=self.host_pid,
                                    script="/tmp/service.py")
        with open(f"/proc/{host_pid}/status") as f:
            uids = next(line for line in f if line.startswith("Uid:"))
        self.assertEqual(uids.split()[1], "65534", "not an unprivileged user")
        self.assertSwitched(host_pid, "perf", "perf")
        inner = os.path.join(private, "perf-1.map")
        self.wait_for(lambda: self.work_lines(inner), "a work_ line")
        self.assertEqual(os.stat(inner).st_uid, 65534)
        self.assertSwitched(host_pid, "status", "perf")
        self.assertSwitched(host_pid, "off", "off")
        self.assertEqual(self.order(proc, "quit"), "done")

    def root_makes_user_namespaces(self):
        res = subprocess.run([UNSHARE, "--user", "true"], capture_output=True,
                             timeout=SUBPROCESS_TIMEOUT)
        return res.returncode == 0

    host_pid = TestRemoteSwitch.host_pid


# A pre-forking server: it waits (for the switch from outside), then forks
# 8 workers, each of which serves with a function of its own name that
# calls the same handler.
PREFORK_SCRIPT = """\
import os, sys, time

def handle():
    x = 0
    # 0.25 s of CPU time, however busy the machine is.
    end = time.process_time() + 0.25
    while time.process_time() < end:
        for i in range(1000):
            x += i
    return x

print(f"pid={os.getpid()}", flush=True)
sys.stdin.readline()
workers = []
for n in range(8):
    namespace = {"handle": handle}
    exec(f"def serve_{n}():\\n    return handle()\\n", namespace)
    pid = os.fork()
    if pid == 0:
        namespace[f"serve_{n}"]()
        os._exit(0)
    workers.append(pid)
for pid in workers:
    os.waitpid(pid, 0)
print(" ".join(f"pid={pid}" for pid in workers), flush=True)
"""


@unittest.skipUnless(HAS_FRAME_POINTERS,
                     "perf record -g needs an interpreter built with frame "
                     "pointers")
@needs("perf_samples")
class TestPreforkServerRecorded(RemoteTestCase):
    """perf record -g (system-wide as root) of a pre-forking server switched
    on from outside before it forks: every worker's samples name its Python
    functions."""

    def test_every_worker_named(self):
        if PERF is None:
            self.unavailable("perf is not installed")
        self.script = self.make_script(PREFORK_SCRIPT, "prefork")
        proc, pid = self.start()
        self.assertSwitched(pid, "perf", "perf")
        data = os.path.join(self.tmp, "perf.data")
        # System-wide, as an operator records a host; a plain user may not
        # (perf_event_paranoid above 0) and records the server instead,
        # whose events its workers inherit when they fork.
        target = ["-a"] if os.geteuid() == 0 else ["-p", str(pid)]
        recorder = subprocess.Popen(
            perf_record(self, [*target, "-g", "-F", "999", "-o", data, "--",
                               "sleep", str(PERF_TIMEOUT)]),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        try:
            time.sleep(1.0)             # perf opens its events on every CPU
            if recorder.poll() is not None:
                self.unavailable(f"perf record {target[0]} failed: "
                                 f"{recorder.stderr.read()[-2000:]!r}")
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
            line = proc.stdout.readline().decode()
            workers = [int(w) for w in re.findall(r"pid=(\d+)", line)]
            for worker in workers:
                self.forget_pid(worker)
        finally:
            recorder.send_signal(signal.SIGINT)
            _, err = recorder.communicate(timeout=PERF_TIMEOUT)
        self.assertEqual(len(workers), 8, line)
        # Fields named: system-wide, the default adds a CPU column that
        # perf_stacks() does not expect.
        script = subprocess.run([PERF, "script", "-i", data, "-F",
                                 "comm,pid,tid,time,ip,sym,dso"],
                                capture_output=True, timeout=PERF_TIMEOUT)
        self.assertEqual(script.returncode, 0, script.stderr[-2000:])
        text = script.stdout.decode(errors="replace")
        for n, worker in enumerate(workers):
            # Of the worker's samples in handle() (the rest: fork() and the
            # process's end), most show the worker's own serve_N above it;
            # with the parent's names, none would.
            handling = [s for s in perf_stacks(text, worker)
                        if any(f.startswith("py::handle:") for f in s)]
            self.assertGreater(len(handling), 10,
                               f"worker {n} ({worker}): too few samples "
                               f"in py::handle")
            named = [s for s in handling
                     if any(f.startswith(f"py::serve_{n}:") for f in s)]
            self.assertGreater(len(named), len(handling) * 0.5,
                               f"worker {n} ({worker}): {len(named)} of "
                               f"{len(handling)} samples in py::handle have "
                               f"py::serve_{n} above it")


if __name__ == "__main__":
    unittest.main()
