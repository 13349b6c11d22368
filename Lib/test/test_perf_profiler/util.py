"""What the modules of test_perf_profiler share, and test_perfmaps and
test_perf_hardening with them: PerfTestCase, which runs child interpreters
and removes the files they write, the readers of the perf map and of the
jitdump, their paths, a script run by several modules, and the parser of
`perf script` output with the share of complete call chains that the real
perf must show.

Every scenario runs in a child interpreter, so that the files it writes
are named after the child's pid; a child prints "pid=N" for each process
it forks, and the test removes the files of all of them.
"""

import collections
import glob
import os
import re
import shlex
import shutil
import stat
import struct
import subprocess
import sys
import sysconfig
import textwrap
import unittest

from test import support
from test.support import os_helper, script_helper


PERF_ENV_VARS = ("PYTHONPERFSUPPORT", "PYTHON_PERF_JIT_SUPPORT")
SUBPROCESS_TIMEOUT = support.SHORT_TIMEOUT
PERF_TIMEOUT = support.LONG_TIMEOUT
# The command that runs the build's programs other than the interpreter
# (Programs/_testembed) when they are for another architecture: "make
# aarch64-test" names a qemu-user wrapper in PERF_TESTS_EMULATOR (the
# interpreter, sys.executable, is one such wrapper already).
EMULATOR = shlex.split(os.environ.get("PERF_TESTS_EMULATOR", ""))

# Any line of a perf map: "START SIZE NAME", hexadecimal without 0x, and a
# name without control characters.
MAP_LINE = re.compile(rb"([0-9a-f]+) ([0-9a-f]+) ([^\x00-\x1f\x7f]+)")
# The name of a trampoline: "py::QUALNAME:FILENAME" (anchored, for
# assertRegex()).
PY_NAME = re.compile(rb"\Apy::.*:.*\Z")
CONTROL_CHARS = re.compile(rb"[\x00-\x1f\x7f]")
# Code with control characters in its file names and in a qualname, which
# every writer (perf map, jitdump) replaces with '?': a?b.py and
# tab?here?.py (f and <module> in each), bad?name? (in the script).
CONTROL_NAMES_SCRIPT = """\
src = "def f():\\n    return 1\\nf()\\n"
exec(compile(src, "a\\nb.py", "exec"), {})
exec(compile(src, "tab\\there\\r.py", "exec"), {})
def g():
    return 2
g.__code__ = g.__code__.replace(co_qualname="bad\\x1bname\\x7f")
g()
"""
# What a child prints for itself (see run_child()) and for the processes it
# forks.
PID_LINE = re.compile(rb"^pid=(\d+)$", re.MULTILINE)


def perf_tool(name):
    """The path of Tools/perf/NAME (perf_switch.py, perf_record_ns.py) for
    this interpreter, or None: in the source tree it was built from, or,
    for an installed interpreter, where Debian's pythonX.Y-examples package
    puts the tree's Tools/ (/usr/share/doc/pythonX.Y/examples/: under
    sys.base_prefix, not sysconfig's "data" path, which Debian points at
    /usr/local)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [
        os.path.join(sysconfig.get_config_var("srcdir") or "", "Tools",
                     "perf", name),
        os.path.join(sys.base_prefix, "share", "doc", f"python{version}",
                     "examples", "perf", name),
    ]
    for path in candidates:
        if os.path.isfile(path):
            return path
    return None


def missing_tool(name):
    """Why a test cannot use Tools/perf/NAME."""
    return (f"no Tools/perf/{name}: not a build of a source tree (on "
            f"Debian, install python{sys.version_info.major}."
            f"{sys.version_info.minor}-examples)")


# The names of perf's side files in /tmp.
PROFILER_FILE = re.compile(r"(?:perf-\d+\.map|jit-\d+\.dump)\Z")


def profiler_files():
    """{path: (inode, mtime, size)} of every perf map and jitdump in /tmp.
    perf's files stay after their process has exited (perf report needs
    them), and pids come round again: a test's child may find one of an
    earlier process at its own name."""
    found = {}
    try:
        with os.scandir("/tmp") as entries:
            for entry in entries:
                if not PROFILER_FILE.match(entry.name):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                found[entry.path] = (st.st_ino, st.st_mtime_ns, st.st_size)
    except OSError:
        pass
    return found


# The shell that runs each child of run_python() and then becomes it (the
# same pid) first removes what an earlier process with that pid left at the
# child's file names: the child finds them free, as on a quiet machine.
CLEAR_LEFTOVERS_AND_EXEC = (
    'for f in "/tmp/perf-$$.map" "/tmp/jit-$$.dump"; do '
    'rm -f "$f" 2>/dev/null || rmdir "$f" 2>/dev/null; done; exec "$@"')


def map_path(pid):
    return f"/tmp/perf-{pid}.map"


def jitdump_path(pid):
    return f"/tmp/jit-{pid}.dump"


def entry_name(qualname, filename):
    """The name of a code object in the map and in the jitdump, as bytes."""
    return f"py::{qualname}:{filename}".encode("utf-8", "surrogateescape")


def remove_path(path):
    """Remove whatever is at path (file, symlink, FIFO or directory)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        os_helper.rmtree(path)
    else:
        os_helper.unlink(path)


class PerfMap:
    """The parsed content of a perf map file."""

    # line is the whole line, without its newline.
    Entry = collections.namedtuple("Entry", "start size name line")

    def __init__(self, data):
        self.data = data
        lines = data.split(b"\n")
        # A newline-terminated file leaves an empty last item.
        self.unterminated = lines.pop()
        self.lines = lines
        self.entries = []
        self.malformed = []
        for line in lines:
            match = MAP_LINE.fullmatch(line)
            if match is None:
                self.malformed.append(line)
                continue
            start, size = int(match[1], 16), int(match[2], 16)
            self.entries.append(self.Entry(start, size, match[3], line))

    @classmethod
    def read(cls, pid):
        """The map of the process pid, or None if there is none."""
        try:
            with open(map_path(pid), "rb") as f:
                return cls(f.read())
        except FileNotFoundError:
            return None

    def find(self, name):
        return [e for e in self.entries if e.name == name]

    def count(self, name):
        return len(self.find(name))

    def names(self):
        return [e.name for e in self.entries]


class JitDump:
    """A reader of the jitdump format of perf (tools/perf/Documentation/
    jitdump-specification.txt): a header, then records."""

    MAGIC = 0x4A695444
    HEADER = struct.Struct("=IIIIIIQQ")
    PREFIX = struct.Struct("=IIQ")
    CODE_LOAD_FIXED = struct.Struct("=IIQQQQ")
    DEBUG_INFO_FIXED = struct.Struct("=QQ")
    DEBUG_ENTRY_FIXED = struct.Struct("=QiI")
    UNWINDING_FIXED = struct.Struct("=QQQ")

    CODE_LOAD = 0
    CODE_MOVE = 1
    CODE_DEBUG_INFO = 2
    CODE_CLOSE = 3
    CODE_UNWINDING_INFO = 4

    Header = collections.namedtuple(
        "Header", "magic version total_size elf_mach pad1 pid timestamp flags")
    Record = collections.namedtuple(
        "Record", "id total_size timestamp offset body")
    CodeLoad = collections.namedtuple(
        "CodeLoad", "pid tid vma code_addr code_size code_index name code")
    DebugInfo = collections.namedtuple("DebugInfo", "code_addr entries")
    DebugEntry = collections.namedtuple(
        "DebugEntry", "addr lineno discrim name")
    UnwindingInfo = collections.namedtuple(
        "UnwindingInfo", "unwinding_size eh_frame_hdr_size mapped_size data")

    def __init__(self, data):
        """Parse data; raise ValueError if it is not a valid jitdump."""
        if len(data) < self.HEADER.size:
            raise ValueError(f"file of {len(data)} bytes is shorter than "
                             f"the header")
        self.header = self.Header(*self.HEADER.unpack_from(data, 0))
        if self.header.magic != self.MAGIC:
            raise ValueError(f"bad magic {self.header.magic:#x}")
        if self.header.total_size < self.HEADER.size:
            raise ValueError(f"header total_size {self.header.total_size}")
        self.records = []
        offset = self.header.total_size
        while offset < len(data):
            if len(data) - offset < self.PREFIX.size:
                raise ValueError(f"truncated record prefix at {offset}")
            rec_id, total, timestamp = self.PREFIX.unpack_from(data, offset)
            if total < self.PREFIX.size:
                raise ValueError(f"record at {offset} has total_size {total}")
            if offset + total > len(data):
                raise ValueError(f"record at {offset} (id {rec_id}, size "
                                 f"{total}) runs past the end of the file "
                                 f"({len(data)} bytes)")
            body = data[offset + self.PREFIX.size:offset + total]
            self.records.append(
                self.Record(rec_id, total, timestamp, offset, body))
            offset += total
        if offset != len(data):
            raise ValueError("records do not end at the end of the file")

    @classmethod
    def read(cls, pid):
        try:
            with open(jitdump_path(pid), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        return cls(data)

    @staticmethod
    def _cstring(body, offset):
        end = body.find(b"\0", offset)
        if end < 0:
            raise ValueError("string without a terminating NUL")
        return body[offset:end], end + 1

    def parse_code_load(self, record):
        fixed = self.CODE_LOAD_FIXED
        if len(record.body) < fixed.size:
            raise ValueError(f"short CODE_LOAD at {record.offset}")
        pid, tid, vma, addr, size, index = fixed.unpack_from(record.body, 0)
        name, pos = self._cstring(record.body, fixed.size)
        code = record.body[pos:pos + size]
        if len(code) != size:
            raise ValueError(f"CODE_LOAD at {record.offset} holds "
                             f"{len(code)} code bytes, not {size}")
        return self.CodeLoad(pid, tid, vma, addr, size, index, name, code)

    def parse_debug_info(self, record):
        fixed = self.DEBUG_INFO_FIXED
        if len(record.body) < fixed.size:
            raise ValueError(f"short CODE_DEBUG_INFO at {record.offset}")
        code_addr, count = fixed.unpack_from(record.body, 0)
        pos = fixed.size
        entries = []
        for _ in range(count):
            if len(record.body) - pos < self.DEBUG_ENTRY_FIXED.size:
                raise ValueError(f"truncated debug entry in record at "
                                 f"{record.offset}")
            addr, lineno, discrim = self.DEBUG_ENTRY_FIXED.unpack_from(
                record.body, pos)
            name, pos = self._cstring(record.body,
                                      pos + self.DEBUG_ENTRY_FIXED.size)
            entries.append(self.DebugEntry(addr, lineno, discrim, name))
        return self.DebugInfo(code_addr, entries)

    def parse_unwinding_info(self, record):
        fixed = self.UNWINDING_FIXED
        if len(record.body) < fixed.size:
            raise ValueError(f"short CODE_UNWINDING_INFO at {record.offset}")
        size, hdr_size, mapped = fixed.unpack_from(record.body, 0)
        data = record.body[fixed.size:fixed.size + size]
        if len(data) != size:
            raise ValueError(f"CODE_UNWINDING_INFO at {record.offset} holds "
                             f"{len(data)} bytes, not {size}")
        return self.UnwindingInfo(size, hdr_size, mapped, data)

    def code_loads(self):
        """(index in self.records, CodeLoad) of each CODE_LOAD record."""
        return [(i, self.parse_code_load(r))
                for i, r in enumerate(self.records)
                if r.id == self.CODE_LOAD]

    def validate(self, pid=None):
        """Check what the interpreter writes beyond the walk of __init__:
        version 1, records padded to 8 bytes, only the three kinds of
        record it writes, each of them readable, CODE_LOAD records with vma
        == code_addr, and pid in the header and records if pid is given.
        Return the names of the CODE_LOAD records; raise ValueError."""
        if self.header.version != 1:
            raise ValueError(f"version {self.header.version}")
        if pid is not None and self.header.pid != pid:
            raise ValueError(f"header pid {self.header.pid}, not {pid}")
        parsers = {
            self.CODE_LOAD: self.parse_code_load,
            self.CODE_DEBUG_INFO: self.parse_debug_info,
            self.CODE_UNWINDING_INFO: self.parse_unwinding_info,
        }
        names = []
        for record in self.records:
            if record.total_size % 8:
                raise ValueError(f"record at {record.offset} has size "
                                 f"{record.total_size}, not padded to 8")
            if record.id not in parsers:
                raise ValueError(f"record at {record.offset} has the "
                                 f"unexpected id {record.id}")
            parsed = parsers[record.id](record)
            if record.id != self.CODE_LOAD:
                continue
            if parsed.vma != parsed.code_addr:
                raise ValueError(f"CODE_LOAD at {record.offset}: vma "
                                 f"{parsed.vma:#x} != {parsed.code_addr:#x}")
            if pid is not None and parsed.pid != pid:
                raise ValueError(f"CODE_LOAD at {record.offset}: pid "
                                 f"{parsed.pid}, not {pid}")
            names.append(parsed.name)
        return names


Result = collections.namedtuple("Result", "rc out err pid")

# Printed first by the code that run_child() runs.
CHILD_PREAMBLE = """\
import os as _os
print(f"pid={_os.getpid()}", flush=True)
del _os
"""


# Child-script lines: try to activate "perf", print "activated" or the
# RuntimeError, then 1 or 0 for sys.is_stack_trampoline_active().
TRY_ACTIVATE = """\
try:
    sys.activate_stack_trampoline("perf")
except RuntimeError as exc:
    print(f"RuntimeError: {exc}")
else:
    print("activated")
print(int(sys.is_stack_trampoline_active()))
"""


def tool_unavailable(testcase, reason):
    """A tool that a test needs (perf, gdb, unshare...) is missing or does
    not work here: skip, with the reason, as CPython's tests do.  Under
    PERF_TESTS_REQUIRE_TOOLS=1 (this project's "make test" and CI, which
    install the tools) fail instead, so that a test cannot pass by not
    running."""
    if os.environ.get("PERF_TESTS_REQUIRE_TOOLS") == "1":
        testcase.fail(f"{reason} (PERF_TESTS_REQUIRE_TOOLS=1)")
    testcase.skipTest(reason)


class PerfTestCase(unittest.TestCase):
    """Runs child interpreters and removes every /tmp file they make."""

    def setUp(self):
        # A perf-enabled parent environment must not leak into the children:
        # each test sets exactly the variables it is about.
        env = self.enterContext(os_helper.EnvironmentVarGuard())
        for name in PERF_ENV_VARS:
            env.unset(name)
        self.tmp = self.enterContext(os_helper.temp_dir())
        self.forgotten_pids = set()
        self.leftovers = profiler_files()

    def written(self, path):
        """Whether a process of this test made path: it exists, and it is
        not a leftover of an earlier process with the same pid that nobody
        has touched since the test began."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return False
        return (self.leftovers.get(path)
                != (st.st_ino, st.st_mtime_ns, st.st_size))

    def unlink_if_written(self, path):
        if self.written(path):
            os_helper.unlink(path)

    def forget_pid(self, pid):
        """Remove the profiler files of process pid at the end of the test
        (not another process's leftover at the same name)."""
        pid = int(pid)
        if pid in self.forgotten_pids:
            return
        self.forgotten_pids.add(pid)
        self.addCleanup(self.unlink_if_written, map_path(pid))
        self.addCleanup(self.unlink_if_written, jitdump_path(pid))
        # perf inject writes one ELF file per code load beside the dump.
        self.addCleanup(lambda: [os_helper.unlink(path) for path in
                                 glob.glob(f"/tmp/jitted-{pid}-*.so")])

    def unavailable(self, reason):
        tool_unavailable(self, reason)

    def make_script(self, source, name="script"):
        return script_helper.make_script(self.tmp, name,
                                         textwrap.dedent(source))

    def run_python(self, *args, env=None, isolated=None, timeout=None,
                   preexec_fn=None, wrapper=(), clear_leftovers=True):
        """Run sys.executable with args; return a Result.

        Like script_helper.assert_python_ok() but with the child's pid (to
        clean up /tmp/perf-PID.map even when the child dies early), a
        timeout and preexec_fn.  The files of the processes that the child
        reports on stdout with "pid=N" lines are removed as well.  The
        child runs with -I unless env is given or isolated is false.
        wrapper is a command that runs the interpreter with exec, keeping
        the pid: its arguments come first.  A leftover of an earlier
        process at the child's file names is removed before it starts
        (CLEAR_LEFTOVERS_AND_EXEC), unless clear_leftovers is false (a
        preexec_fn that plants something there).
        """
        if isolated is None:
            isolated = not env
        shell = (["/bin/sh", "-c", CLEAR_LEFTOVERS_AND_EXEC, "sh"]
                 if clear_leftovers else [])
        cmd = [*shell, *wrapper, sys.executable]
        if isolated:
            cmd.append("-I")
        cmd.extend(args)
        child_env = dict(os.environ)
        child_env.update(env or {})
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE,
                                env=child_env, preexec_fn=preexec_fn)
        self.forget_pid(proc.pid)
        with proc:
            try:
                out, err = proc.communicate(
                    timeout=timeout or SUBPROCESS_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
                for pid in PID_LINE.findall(out):
                    self.forget_pid(pid)
                self.fail(f"{cmd[len(shell):]} timed out; stdout:\n"
                          f"{out!r}\n"
                          f"stderr:\n{err!r}")
        for pid in PID_LINE.findall(out):
            self.forget_pid(pid)
        self.last_cmd = cmd[len(shell):]
        return Result(proc.returncode, out, err, proc.pid)

    def run_ok(self, *args, **kwargs):
        res = self.run_python(*args, **kwargs)
        if res.rc != 0:
            self.fail(f"{self.last_cmd} exited with {res.rc}\n"
                      f"stdout:\n{res.out.decode(errors='replace')}\n"
                      f"stderr:\n{res.err.decode(errors='replace')}")
        return res

    def run_child(self, code, *args, xoptions=(), timeout=None):
        """Run code (dedented) with -c, the options xoptions and the
        arguments args, after CHILD_PREAMBLE; it must succeed.  Return its
        stdout as text and the pids it reported, its own first.  Code given
        with -c has the file name "<string>"."""
        res = self.run_ok(*xoptions, "-c",
                          CHILD_PREAMBLE + textwrap.dedent(code), *args,
                          timeout=timeout)
        pids = [int(pid) for pid in PID_LINE.findall(res.out)]
        self.assertEqual(pids[:1], [res.pid])
        return res.out.decode(errors="backslashreplace"), pids

    def read_map(self, pid, python_only=True):
        """The map of pid, well-formed, with only lines for trampolines
        unless python_only is false."""
        pmap = PerfMap.read(pid)
        self.assertIsNotNone(pmap, f"{map_path(pid)} was not written")
        self.assertWellFormed(pmap, python_only)
        return pmap

    def read_jitdump(self, pid):
        """The jitdump of pid, checked by JitDump.validate()."""
        try:
            dump = JitDump.read(pid)
            self.assertIsNotNone(dump, f"{jitdump_path(pid)} was not written")
            dump.validate(pid)
        except ValueError as exc:
            self.fail(f"invalid {jitdump_path(pid)}: {exc}")
        return dump

    def jitdump_names(self, pid):
        return [load.name for _, load in self.read_jitdump(pid).code_loads()]

    def assertWellFormed(self, pmap, python_only=True):
        self.assertEqual(pmap.unterminated, b"",
                         "the last line of the map has no newline")
        self.assertEqual(pmap.malformed[:10], [],
                         f"{len(pmap.malformed)} malformed map lines")
        if not python_only:
            return
        for entry in pmap.entries:
            self.assertRegex(entry.name, PY_NAME)
            self.assertGreater(entry.size, 0, entry)
            self.assertGreater(entry.start, 0, entry)

    def the_entry(self, pmap, qualname, filename):
        """The one entry of pmap for the code object."""
        name = entry_name(qualname, filename)
        found = pmap.find(name)
        self.assertEqual(len(found), 1,
                         f"{name!r} in map:\n"
                         f"{pmap.data.decode(errors='replace')}")
        return found[0]

    def assertNamedOnce(self, pmap, *qualnames, filename):
        for qualname in qualnames:
            self.the_entry(pmap, qualname, filename)

    def assertNotNamed(self, pmap, *qualnames, filename):
        for qualname in qualnames:
            name = entry_name(qualname, filename)
            self.assertEqual(pmap.count(name), 0, name)

    def assertNotWritten(self, *paths):
        for path in paths:
            self.assertFalse(self.written(path), f"{path} was written")

    def assertNoMap(self, pid):
        self.assertNotWritten(map_path(pid))

    def assertNoJitdump(self, pid):
        self.assertNotWritten(jitdump_path(pid))


# ---- Scripts run by several modules -----------------------------------------

# Its output and exit code must not change under profiling (see
# test_behaviour and test_failures).
BEHAVIOUR_SCRIPT = """\
import asyncio, contextlib, functools, json, sys, traceback

def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)

def echo():
    received = []
    try:
        while True:
            try:
                value = yield len(received)
            except KeyError as exc:
                received.append(f"thrown {exc!r}")
            else:
                received.append(value)
    finally:
        print("echo closed", received)

class Base:
    registry = []
    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        Base.registry.append(cls.__name__)
    def describe(self):
        return f"{type(self).__name__}({self.value()})"

class One(Base):
    def value(self):
        return 1

class Two(One):
    def value(self):
        return super().value() + 1

@contextlib.contextmanager
def managed(tag):
    print("enter", tag)
    try:
        yield tag.upper()
    finally:
        print("exit", tag)

def fails(depth):
    if depth == 0:
        raise ValueError("deep failure")
    return fails(depth - 1)

async def produce(n):
    await asyncio.sleep(0)
    return [fib(i) for i in range(n)]

async def main():
    return await asyncio.gather(produce(5), produce(8))

print(fib(18))
gen = echo()
next(gen)
print(gen.send("a"), gen.throw(KeyError("k")), gen.send("b"))
gen.close()
print(Base.registry, [cls().describe() for cls in (One, Two)])
with managed("ctx") as value:
    print("inside", value)
try:
    fails(5)
except ValueError:
    traceback.print_exc(file=sys.stdout)
print(json.dumps(asyncio.run(main()), sort_keys=True))
print(sorted(["b", "A", "c"], key=lambda s: s.lower()))
print(functools.reduce(lambda a, b: a * b, range(1, 10)))
sys.exit(3)
"""


# ---- The real perf ----------------------------------------------------------

PERF = shutil.which("perf") or ("/usr/bin/perf"
                                if os.path.exists("/usr/bin/perf") else None)


def perf_stacks(text, pid):
    """The sampled stacks of process pid in `perf script` output: lists of
    symbol names, leaf first."""
    header = re.compile(r"^\s*\S.*?\s(\d+)(?:/\d+)?\s+\d+\.\d+:")
    frame = re.compile(r"^\s+[0-9a-f]+\s+(.*?)(?:\+0x[0-9a-f]+)?"
                       r"(?:\s+\([^()]*\))?\s*$")
    stacks = []
    for block in re.split(r"\n[ \t]*\n", text):
        lines = [line for line in block.splitlines() if line.strip()]
        if not lines:
            continue
        match = header.match(lines[0])
        if match is None or int(match[1]) != pid:
            continue
        symbols = []
        for line in lines[1:]:
            m = frame.match(line)
            if m:
                symbols.append(m[1])
        stacks.append(symbols)
    return stacks


# Unwinding may lose an odd sample, not most of them: of the samples in a
# function, more than this share must show the whole chain of its callers.
MIN_COMPLETE_SHARE = 0.5


def count_chains(stacks, filename, qualnames):
    """Count the stacks (see perf_stacks()) that hold the function
    qualnames[0] of filename, and among them those that also hold each of
    qualnames[1:] above it, in that order.  Return (with_first, complete)."""
    names = [f"py::{q}:{filename}" for q in qualnames]
    with_first = [s for s in stacks if names[0] in s]
    complete = 0
    for stack in with_first:
        positions = [stack.index(n) if n in stack else -1 for n in names]
        if -1 not in positions and positions == sorted(positions):
            complete += 1
    return len(with_first), complete


# ---- A private /tmp ---------------------------------------------------------

# unshare(1), for a private mount namespace (test_failures.TestPrivateTmp
# and test_perf_hardening).
UNSHARE = shutil.which("unshare")


def unshare(*options):
    """The command that runs what follows it in new namespaces, as asked
    by options (unshare(1)'s).  Root makes them as they are; any other
    user also makes a user namespace of their own, where they are root
    (--map-root-user): the only way the kernel lets a plain user make the
    others, so that `make test` run by a plain user runs these tests too.
    Every test that makes namespaces goes through here (and calls
    tool_unavailable() first when UNSHARE is None)."""
    user = () if os.geteuid() == 0 else ("--user", "--map-root-user")
    return [UNSHARE, *user, *options]


# The usual new /tmp: an empty tmpfs.
TMPFS_ON_TMP = "mount -t tmpfs tmpfs /tmp"

# A shell command that mounts something at /tmp, in the tests' sources: each
# must be given to new_tmp() or in_new_tmp() (test_failures.TestNewTmpRule).
MOUNT_ON_TMP = re.compile(r"mount (?:-t \w+ \S+|--bind \S+) /tmp\b")


def new_tmp(mount, paths=(), options=None):
    """Shell lines that put a new /tmp in place, for a private mount
    namespace (the shell runs as root there): mount is the command that
    mounts it ("mount -t tmpfs tmpfs /tmp", "mount --bind DIR /tmp"),
    options (noexec, ro...) are applied to it last.  Whatever the child
    interpreter reads (interpreter_paths(), sys.path) and the given paths,
    where they lie under /tmp, are bound back at their names: a checkout
    cloned under /tmp would vanish with the old /tmp otherwise, and with
    it the interpreter ("exec: .../python: not found").  Every test that
    puts something over /tmp builds its command here, so that none can
    forget it."""
    kept = set()
    for path in (*interpreter_paths(), *sys.path, *paths):
        real = os.path.realpath(path) if path else ""
        if real.startswith("/tmp/"):
            kept.add(real.split("/")[2])
    lines = ["set -e", "cd /tmp", mount]
    for name in sorted(kept):
        new = shlex.quote(os.path.join("/tmp", name))
        if os.path.isdir(os.path.join("/tmp", name)):
            lines.append(f"mkdir -p {new}")
        elif os.path.exists(os.path.join("/tmp", name)):
            lines.append(f": > {new}")
        else:
            continue
        # The old /tmp is still the working directory: reach it through
        # /proc, which mount must not resolve into a path (it would find
        # the name in the new /tmp).  Recursively: the name may hold mounts
        # of its own (as_other_user()'s, from a closed /tmp), which a user
        # namespace may not leave behind ("wrong fs type": EINVAL).
        old = shlex.quote(os.path.join("/proc/self/cwd", name))
        lines.append(f"mount --no-canonicalize --rbind {old} {new}")
    if options:
        # Last: a read-only /tmp takes no mount points.  The options change
        # this mount only (bind), which is all the tests need and all that
        # a plain user's namespace may do: remounting the tmpfs itself
        # there fails ("mount point not mounted or bad option").
        lines.append(f"mount -o remount,bind,{options} /tmp")
    lines.append("cd /")
    return lines


def in_new_tmp(mount, paths=(), options=None):
    """The words "sh -c SCRIPT sh" that run what follows them with exec
    under the /tmp of new_tmp() (in a mount namespace made before)."""
    return ["sh", "-c", "\n".join([*new_tmp(mount, paths, options),
                                   'exec "$@"']), "sh"]


def probe_once(cls, cmd, what):
    """Run cmd the first time a test of cls asks; return "" if it worked,
    or why it did not (remembered in cls.namespace_error)."""
    if cls.namespace_error is None:
        proc = subprocess.run(cmd, capture_output=True,
                              stdin=subprocess.DEVNULL,
                              timeout=SUBPROCESS_TIMEOUT)
        cls.namespace_error = "" if proc.returncode == 0 else (
            f"cannot {what} (exit code {proc.returncode}): "
            f"{proc.stderr.decode(errors='replace')}")
    return cls.namespace_error


# ---- Another user -----------------------------------------------------------

# The unprivileged user that tests run programs as (nobody on Debian).
OTHER_UID = OTHER_GID = 65534
SETPRIV = shutil.which("setpriv")
# What a test needs besides what every test needs, marked with needs():
#   other_user  runs a program as OTHER_UID (through as_other_user(); the
#               make test step "other users (closed checkout)" runs every
#               test so marked from a checkout under a mode 0700 directory)
#   perf_samples  reads the samples that perf records of a program's run
#               (through perf_record()); under an emulator in user mode
#               perf samples the emulator, not the guest, so "make
#               aarch64-test" leaves out every test so marked
NEEDS = frozenset({"other_user", "perf_samples"})


def needs(*what):
    """Mark a test method or class with what it needs (see NEEDS)."""
    unknown = set(what) - NEEDS
    if unknown:
        raise ValueError(f"unknown needs: {sorted(unknown)}")

    def mark(test):
        test.perf_test_needs = (frozenset(getattr(test, "perf_test_needs", ()))
                                | frozenset(what))
        return test
    return mark


def test_needs(test):
    """What the TestCase instance test needs, from its method and class."""
    method = getattr(type(test), test._testMethodName, None)
    return (frozenset(getattr(method, "perf_test_needs", ()))
            | frozenset(getattr(type(test), "perf_test_needs", ())))


def marked_tests(what, names):
    """The ids of the tests of the modules or packages named (test.xxx)
    that are marked with needs(what)."""
    def walk(suite):
        for item in suite:
            if isinstance(item, unittest.TestSuite):
                yield from walk(item)
            else:
                yield item
    loader = unittest.TestLoader()
    found = []
    for name in names:
        for test in walk(loader.loadTestsFromName(name)):
            if what in test_needs(test):
                found.append(test.id())
    return found


def perf_record(test, args):
    """The command "perf record ARGS...", for a test marked with
    @needs("perf_samples")."""
    if "perf_samples" not in test_needs(test):
        raise AssertionError(f"{test.id()} reads perf's samples: mark it "
                             "with @needs('perf_samples')")
    return [PERF, "record", *args]


def traversable(path, uid, gid):
    """Whether user uid (group gid, no other group) may enter directory
    path, by its mode bits (no ACLs: this project never sets any)."""
    st = os.stat(path)
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def closed_ancestor(path, uid, gid):
    """The outermost directory above path that user uid cannot enter, or
    None."""
    parts = os.path.realpath(path).split(os.sep)[1:-1]
    current = os.sep
    for part in parts:
        current = os.path.join(current, part)
        if not traversable(current, uid, gid):
            return current
    return None


def interpreter_paths():
    """What a child interpreter of this test run reads: its build (or
    install) directory, the source tree of a build, and its prefixes."""
    paths = {os.path.dirname(os.path.realpath(sys.executable)),
             sys.prefix, sys.exec_prefix, sys.base_prefix}
    srcdir = sysconfig.get_config_var("srcdir")
    if srcdir and sysconfig.is_python_build():
        paths.add(srcdir)
    return {os.path.realpath(path) for path in paths if os.path.isdir(path)}


# Run in a mount namespace of its own, as root: $1 is a closed directory,
# $2 the mode to give it, $3... the paths under it to keep (six at most:
# descriptors 3 to 8).  Each path is opened first, then a tmpfs of that mode
# hides the closed directory, and each path is bound back at its name from
# its descriptor (mount must not canonicalize /proc/self/fd/N: it would find
# the path's name, now on the tmpfs).  Used by as_other_user() and by
# "make test"'s closed-checkout step.
REOPEN_UNDER_TMPFS = r"""
closed=$1 mode=$2; shift 2
[ $# -le 6 ] || { echo "more than 6 paths to keep" >&2; exit 125; }
fd=3
for path in "$@"; do
    eval "exec $fd<\"\$path\"" || exit 125
    fd=$((fd + 1))
done
mount -t tmpfs -o "mode=$mode" perf-tests "$closed" || exit 125
fd=3
for path in "$@"; do
    mkdir -p "$path" &&
        mount --no-canonicalize --bind "/proc/self/fd/$fd" "$path" || exit 125
    eval "exec $fd<&-"
    fd=$((fd + 1))
done
"""


def as_other_user(test, argv, paths=(), uid=OTHER_UID, gid=OTHER_GID):
    """The command that runs argv as user uid (group gid, no supplementary
    groups), with the interpreter's own files and the given paths (a test's
    temporary directory...) reachable to that user at their usual names.

    A checkout may lie under a directory that other users cannot enter
    (root's home, mode 0700), and the build names its sources by absolute
    path, so they cannot be moved: the command first enters a mount
    namespace of its own where every such directory is hidden by a tmpfs
    of the same mode plus search permission, on which the paths are bound
    back.  The host's mounts and modes do not change.  Needs root (and
    util-linux's unshare and setpriv); the test must be marked with
    @needs("other_user")."""
    if "other_user" not in test_needs(test):
        raise AssertionError(f"{test.id()} runs a program as another user: "
                             "mark it with @needs('other_user')")
    if os.geteuid() != 0:
        test.skipTest("needs root to run a program as another user")
    if UNSHARE is None or SETPRIV is None:
        tool_unavailable(test, "unshare and setpriv (util-linux) are needed "
                               "to run a program as another user")
    wanted = {os.path.realpath(path) for path in paths} | interpreter_paths()
    by_closed = collections.defaultdict(set)
    for path in wanted:
        if not traversable(path, uid, gid):
            raise AssertionError(f"{path} itself is closed to user {uid}: "
                                 "its own mode must let other users in")
        closed = closed_ancestor(path, uid, gid)
        if closed is not None:
            by_closed[closed].add(path)
    become = [SETPRIV, f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
    if not by_closed:
        return [*become, *argv]
    setup = []
    for closed, under in sorted(by_closed.items()):
        # The outermost paths only: one under another is bound with it.
        outer = [p for p in sorted(under)
                 if not any(p.startswith(q + os.sep) for q in under)]
        mode = stat.S_IMODE(os.stat(closed).st_mode) | 0o111
        setup.append(shlex.join(["sh", "-c", REOPEN_UNDER_TMPFS, "sh",
                                 closed, f"{mode:o}", *outer])
                     + " || exit 125")
    return [UNSHARE, "--mount", "--propagation", "private", "sh", "-c",
            "\n".join([*setup, 'exec "$@"']), "sh", *become, *argv]
