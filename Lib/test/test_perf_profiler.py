"""Tests for the Linux perf profiler support.

Covers -X perf / -X perf_jit, PYTHONPERFSUPPORT / PYTHON_PERF_JIT_SUPPORT,
sys.activate_stack_trampoline() and friends, the /tmp/perf-PID.map and
/tmp/jit-PID.dump files (format, fork, threads, subinterpreters, hostile
/tmp, failures to write them) and the real perf tool reading them.  The C
API (Include/cpython/perfmaps.h) has its own tests in test_perfmaps, which
shares the helpers of this module.

Every scenario runs in a child interpreter, so that the files it writes
are named after the child's pid; a child prints "pid=N" for each process
it forks, and the test removes the files of all of them.
"""

import collections
import glob
import json
import os
import platform
import re
import shlex
import shutil
import stat
import struct
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import unittest

from test import support
from test.support import (import_helper, os_helper, script_helper,
                          threading_helper)


if not sys.platform.startswith("linux"):
    raise unittest.SkipTest("perf trampolines are only supported on Linux")
if not sysconfig.get_config_var("PY_HAVE_PERF_TRAMPOLINE"):
    raise unittest.SkipTest("this build has no perf trampoline support")
if not support.has_subprocess_support:
    raise unittest.SkipTest("test module requires subprocess")


PERF_ENV_VARS = ("PYTHONPERFSUPPORT", "PYTHON_PERF_JIT_SUPPORT")
SUBPROCESS_TIMEOUT = support.SHORT_TIMEOUT
PERF_TIMEOUT = support.LONG_TIMEOUT

# Any line of a perf map: "START SIZE NAME", hexadecimal without 0x, and a
# name without control characters.
MAP_LINE = re.compile(rb"([0-9a-f]+) ([0-9a-f]+) ([^\x00-\x1f\x7f]+)")
# The name of a trampoline: "py::QUALNAME:FILENAME" (anchored, for
# assertRegex()).
PY_NAME = re.compile(rb"\Apy::.*:.*\Z")
CONTROL_CHARS = re.compile(rb"[\x00-\x1f\x7f]")
# What a child prints for itself (see run_child()) and for the processes it
# forks.
PID_LINE = re.compile(rb"^pid=(\d+)$", re.MULTILINE)


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

    def forget_pid(self, pid):
        """Remove the profiler files of process pid at the end of the test."""
        pid = int(pid)
        if pid in self.forgotten_pids:
            return
        self.forgotten_pids.add(pid)
        self.addCleanup(os_helper.unlink, map_path(pid))
        self.addCleanup(os_helper.unlink, jitdump_path(pid))
        # perf inject writes one ELF file per code load beside the dump.
        self.addCleanup(lambda: [os_helper.unlink(path) for path in
                                 glob.glob(f"/tmp/jitted-{pid}-*.so")])

    def unavailable(self, reason):
        """A tool that CI provides is missing or does not work: fail, or
        skip if PERF_TESTS_ALLOW_SKIP=1."""
        if os.environ.get("PERF_TESTS_ALLOW_SKIP") == "1":
            self.skipTest(reason)
        self.fail(f"{reason} (set PERF_TESTS_ALLOW_SKIP=1 to skip)")

    def make_script(self, source, name="script"):
        return script_helper.make_script(self.tmp, name,
                                         textwrap.dedent(source))

    def run_python(self, *args, env=None, isolated=None, timeout=None,
                   preexec_fn=None, wrapper=()):
        """Run sys.executable with args; return a Result.

        Like script_helper.assert_python_ok() but with the child's pid (to
        clean up /tmp/perf-PID.map even when the child dies early), a
        timeout and preexec_fn.  The files of the processes that the child
        reports on stdout with "pid=N" lines are removed as well.  The
        child runs with -I unless env is given or isolated is false.
        wrapper is a command that runs the interpreter with exec, keeping
        the pid: its arguments come first.
        """
        if isolated is None:
            isolated = not env
        cmd = [*wrapper, sys.executable]
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
                self.fail(f"{cmd} timed out; stdout:\n{out!r}\n"
                          f"stderr:\n{err!r}")
        for pid in PID_LINE.findall(out):
            self.forget_pid(pid)
        self.last_cmd = cmd
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

    def assertNoMap(self, pid):
        self.assertFalse(os.path.lexists(map_path(pid)),
                         f"{map_path(pid)} was written")


# ---- The map file -----------------------------------------------------------

NAMES_SCRIPT = """\
import sys

def simple():
    return 1

class A:
    def m(self):
        return 2
    @staticmethod
    def s():
        return 3
    @classmethod
    def c(cls):
        return 4
    class Inner:
        def deep(self):
            return 5

def outer():
    def inner():
        return 6
    return inner()

def comprehension():
    return [x for x in range(3)]

square = lambda x: x * x

def hot():
    return 7

simple(); A().m(); A.s(); A.c(); A.Inner().deep(); outer()
comprehension(); square(2)
for _ in range(1000):
    hot()
    A().m()
    outer()
print(sys.is_stack_trampoline_active())
"""


class TestMapFile(PerfTestCase):

    def test_names_format_mode_and_owner(self):
        script = self.make_script(NAMES_SCRIPT)
        res = self.run_ok("-X", "perf", script)
        self.assertEqual(res.out.strip(), b"True")
        self.assertEqual(res.err, b"")

        st = os.lstat(map_path(res.pid))
        self.assertTrue(stat.S_ISREG(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)
        self.assertEqual(st.st_uid, os.geteuid())

        pmap = self.read_map(res.pid)
        qualnames = ["<module>", "simple", "A", "A.m", "A.s", "A.c",
                     "A.Inner", "A.Inner.deep", "outer",
                     "outer.<locals>.inner", "comprehension",
                     "comprehension.<locals>.<listcomp>", "<lambda>", "hot"]
        self.assertNamedOnce(pmap, *qualnames, filename=script)
        # Each code object has a trampoline of its own.
        starts = [pmap.find(entry_name(q, script))[0].start
                  for q in qualnames]
        self.assertEqual(len(set(starts)), len(starts))
        # The import system ran as well and was named.
        self.assertTrue(any(name.startswith(b"py::")
                            and b"importlib" in name
                            for name in pmap.names()))

    def test_no_duplicates(self):
        # Every code object of the script ran 1000 times or more: one line
        # each, and only one line per address in the whole map.
        script = self.make_script(NAMES_SCRIPT)
        res = self.run_ok("-X", "perf", script)
        pmap = self.read_map(res.pid)
        mine = [n for n in pmap.names() if n.endswith(b":" + script.encode())]
        dups = [n for n, c in collections.Counter(mine).items() if c > 1]
        # Two lambdas of one file could share a name, but not in this one.
        self.assertEqual(dups, [])
        starts = [e.start for e in pmap.entries]
        self.assertEqual(len(starts), len(set(starts)), "duplicate addresses")

    def test_control_characters_in_names(self):
        script = self.make_script("""\
            src = "def f():\\n    return 1\\nf()\\n"
            exec(compile(src, "a\\nb.py", "exec"), {})
            exec(compile(src, "tab\\there\\r.py", "exec"), {})
            def g():
                return 2
            g.__code__ = g.__code__.replace(co_qualname="bad\\x1bname\\x7f")
            g()
            """)
        res = self.run_ok("-X", "perf", script)
        pmap = self.read_map(res.pid)
        self.assertNamedOnce(pmap, "f", "<module>", filename="a?b.py")
        self.assertNamedOnce(pmap, "f", "<module>", filename="tab?here?.py")
        self.assertNamedOnce(pmap, "bad?name?", filename=script)

    def test_unencodable_names(self):
        script = self.make_script("""\
            src = "def f():\\n    return 1\\nf()\\n"
            exec(compile(src, "lone\\ud800.py", "exec"), {})
            exec(compile(src, "esc\\udcff.py", "exec"), {})
            def h():
                return 2
            h.__code__ = h.__code__.replace(co_qualname="q\\udc80x")
            h()
            print("done")
            """)
        res = self.run_ok("-X", "perf", script)
        self.assertEqual(res.out, b"done\n")
        pmap = self.read_map(res.pid)
        for prefix in (b"py::f:lone", b"py::f:esc", b"py::<module>:lone",
                       b"py::<module>:esc"):
            found = [n for n in pmap.names() if n.startswith(prefix)]
            self.assertEqual(len(found), 1, (prefix, found))
        found = [n for n in pmap.names()
                 if n.startswith(b"py::q") and n.endswith(script.encode())]
        self.assertEqual(len(found), 1, found)


# ---- Activation -------------------------------------------------------------

PROBE_SCRIPT = """\
import sys
{before}
def probe_func():
    return 1
probe_func()
print(int(sys.is_stack_trampoline_active()))
"""


class TestActivation(PerfTestCase):

    def probe(self, *args, before="", env=None, isolated=None):
        script = self.make_script(PROBE_SCRIPT.format(before=before))
        res = self.run_ok(*args, script, env=env, isolated=isolated)
        lines = res.out.splitlines()
        self.assertEqual(len(lines), 1, res)
        return res, bool(int(lines[0])), script

    def assertOn(self, *args, **kwargs):
        res, active, script = self.probe(*args, **kwargs)
        self.assertTrue(active, res)
        self.assertEqual(res.err, b"")
        pmap = self.read_map(res.pid)
        self.assertNamedOnce(pmap, "probe_func", filename=script)
        if "activate_stack_trampoline" not in kwargs.get("before", ""):
            # On from the start: the module's code was entered with it.
            self.assertNamedOnce(pmap, "<module>", filename=script)
        return res

    def assertOff(self, *args, **kwargs):
        """Off from the start: no map at all, nothing said."""
        res, active, script = self.probe(*args, **kwargs)
        self.assertFalse(active, res)
        self.assertNoMap(res.pid)
        self.assertFalse(os.path.exists(jitdump_path(res.pid)))
        return res

    def assertDeactivated(self, *args, **kwargs):
        """On at start-up, then off before probe_func ran."""
        res, active, script = self.probe(*args, **kwargs)
        self.assertFalse(active, res)
        self.assertEqual(res.err, b"")
        pmap = self.read_map(res.pid)
        self.assertNotNamed(pmap, "probe_func", filename=script)
        self.assertNamedOnce(pmap, "<module>", filename=script)
        return res

    def test_default_off(self):
        self.assertOff()
        self.assertOff(env={"PYTHONPATH": ""})

    def test_x_option(self):
        self.assertOn("-X", "perf")
        self.assertOn("-X", "perf=1")
        self.assertOn("-X", "perf=2")

    def test_x_option_empty_value(self):
        # "-X perf=" means on, like "-X perf" (as for -X frozen_modules=),
        # and wins over an environment variable that says off.
        res = self.assertOn("-X", "perf=")
        self.assertEqual(res.err, b"")
        self.assertOn("-X", "perf=", env={"PYTHONPERFSUPPORT": "0"})
        self.assertOff("-X", "perf=", "-X", "perf=0")
        self.assertJitOn("-X", "perf_jit=")
        self.assertJitOn("-X", "perf=0", "-X", "perf_jit=")

    def test_env_var(self):
        self.assertOn(env={"PYTHONPERFSUPPORT": "1"})

    def test_env_var_nonzero_integer(self):
        self.assertOn(env={"PYTHONPERFSUPPORT": "2"})

    def test_sys_activate(self):
        self.assertOn(before='sys.activate_stack_trampoline("perf")')

    def test_env_var_off_values(self):
        for value in ("0", ""):
            with self.subTest(value=value):
                res = self.assertOff(env={"PYTHONPERFSUPPORT": value})
                self.assertEqual(res.err, b"")

    def test_env_var_invalid(self):
        res = self.assertOff(env={"PYTHONPERFSUPPORT": "yes"})
        self.assertIn(b"PYTHONPERFSUPPORT", res.err)
        self.assertIn(b"invalid value", res.err)

    def test_x_option_invalid(self):
        res = self.assertOff("-X", "perf=maybe")
        self.assertIn(b"-X perf=maybe", res.err)
        self.assertIn(b"invalid value", res.err)

    def test_x_option_off(self):
        res = self.assertOff("-X", "perf=0")
        self.assertEqual(res.err, b"")

    def test_x_option_overrides_env(self):
        res = self.assertOff("-X", "perf=0", env={"PYTHONPERFSUPPORT": "1"})
        self.assertEqual(res.err, b"")
        self.assertOn("-X", "perf", env={"PYTHONPERFSUPPORT": "0"})

    def test_sys_overrides_x_option(self):
        self.assertDeactivated(
            "-X", "perf", before="sys.deactivate_stack_trampoline()")

    def test_sys_overrides_env(self):
        self.assertDeactivated(
            before="sys.deactivate_stack_trampoline()",
            env={"PYTHONPERFSUPPORT": "1"})

    def test_sys_activate_overrides_x_option_off(self):
        self.assertOn("-X", "perf=0",
                      before='sys.activate_stack_trampoline("perf")')

    def test_ignore_environment(self):
        env = {"PYTHONPERFSUPPORT": "1", "PYTHON_PERF_JIT_SUPPORT": "1"}
        self.assertOff("-E", env=env, isolated=False)
        self.assertOff("-I", env=env, isolated=False)

    def assertJitOn(self, *args, **kwargs):
        res, active, script = self.probe(*args, **kwargs)
        self.assertTrue(active, res)
        self.assertEqual(res.err, b"")
        names = self.jitdump_names(res.pid)
        self.assertEqual(names.count(entry_name("probe_func", script)), 1)
        pmap = PerfMap.read(res.pid)
        if pmap is not None:
            self.assertNotNamed(pmap, "probe_func", filename=script)

    def test_last_x_option_wins(self):
        self.assertOn("-X", "perf_jit", "-X", "perf")
        self.assertOn("-X", "perf_jit=1", "-X", "perf=1")
        self.assertOff("-X", "perf", "-X", "perf=0")
        self.assertOff("-X", "perf", "-X", "perf_jit=0")

    def test_last_x_option_wins_jit(self):
        self.assertJitOn("-X", "perf", "-X", "perf_jit")

    def test_jit_env_var(self):
        self.assertJitOn(env={"PYTHON_PERF_JIT_SUPPORT": "1"})

    def test_jit_env_var_wins_over_perf_env_var(self):
        self.assertJitOn(env={"PYTHONPERFSUPPORT": "1",
                              "PYTHON_PERF_JIT_SUPPORT": "1"})


# ---- The sys functions ------------------------------------------------------

class TestSysFunctions(PerfTestCase):

    def test_invalid_backend(self):
        script = self.make_script("""\
            import sys
            try:
                sys.activate_stack_trampoline("nope")
            except ValueError as exc:
                print(f"ValueError: {exc}")
            print(int(sys.is_stack_trampoline_active()))
            """)
        res = self.run_ok(script)
        self.assertEqual(res.out.splitlines(),
                         [b"ValueError: invalid backend: nope", b"0"])
        self.assertNoMap(res.pid)

    def test_invalid_backend_type(self):
        script = self.make_script("""\
            import sys
            for args in [(1,), (None,), (b"perf",), ()]:
                try:
                    sys.activate_stack_trampoline(*args)
                except TypeError:
                    print("TypeError")
            print(int(sys.is_stack_trampoline_active()))
            """)
        res = self.run_ok(script)
        self.assertEqual(res.out.splitlines(), [b"TypeError"] * 4 + [b"0"])
        self.assertNoMap(res.pid)

    def test_activate_twice(self):
        script = self.make_script("""\
            import sys
            def f():
                return 1
            sys.activate_stack_trampoline("perf")
            f()
            sys.activate_stack_trampoline("perf")
            f()
            print(int(sys.is_stack_trampoline_active()))
            """)
        for args in [(), ("-X", "perf")]:
            with self.subTest(args=args):
                res = self.run_ok(*args, script)
                self.assertEqual(res.out, b"1\n")
                self.assertEqual(res.err, b"")
                pmap = self.read_map(res.pid)
                self.assertNamedOnce(pmap, "f", filename=script)
                if args:
                    self.assertNamedOnce(pmap, "<module>", filename=script)

    def test_deactivate_when_inactive(self):
        script = self.make_script("""\
            import sys
            sys.deactivate_stack_trampoline()
            sys.deactivate_stack_trampoline()
            print(int(sys.is_stack_trampoline_active()))
            sys.activate_stack_trampoline("perf")
            sys.deactivate_stack_trampoline()
            sys.deactivate_stack_trampoline()
            print(int(sys.is_stack_trampoline_active()))
            """)
        res = self.run_ok(script)
        self.assertEqual(res.out, b"0\n0\n")
        self.assertEqual(res.err, b"")

    def test_deactivate_before_anything_writes_nothing(self):
        script = self.make_script("""\
            import sys
            sys.deactivate_stack_trampoline()
            print(int(sys.is_stack_trampoline_active()))
            """)
        res = self.run_ok(script)
        self.assertEqual(res.out, b"0\n")
        self.assertNoMap(res.pid)

    def test_other_eval_frame_function(self):
        import_helper.import_module("_testinternalcapi")
        script = self.make_script("""\
            import sys, _testinternalcapi
            _testinternalcapi.set_eval_frame_record([])
            try:
                sys.activate_stack_trampoline("perf")
            except RuntimeError as exc:
                print(f"RuntimeError: {exc}")
            else:
                print("activated")
            print(int(sys.is_stack_trampoline_active()))
            _testinternalcapi.set_eval_frame_default()
            sys.activate_stack_trampoline("perf")
            def after():
                return 1
            after()
            print(int(sys.is_stack_trampoline_active()))
            """)
        res = self.run_ok(script)
        lines = res.out.splitlines()
        self.assertEqual(len(lines), 3, res)
        self.assertTrue(lines[0].startswith(b"RuntimeError: "), lines[0])
        self.assertIn(b"another frame evaluation function", lines[0])
        self.assertEqual(lines[1:], [b"0", b"1"])
        pmap = self.read_map(res.pid)
        self.assertNamedOnce(pmap, "after", filename=script)

    def test_deactivate_and_reactivate(self):
        script = self.make_script("""\
            import sys
            def before():
                return 1
            def while_off():
                return 2
            def both():
                return 3
            def after():
                return 4
            sys.activate_stack_trampoline("perf")
            before()
            sys.deactivate_stack_trampoline()
            for _ in range(100):
                while_off(); both()
            sys.activate_stack_trampoline("perf")
            before(); both(); after()
            sys.deactivate_stack_trampoline()
            sys.activate_stack_trampoline("perf")
            for _ in range(100):
                before(); both(); after()
            print(int(sys.is_stack_trampoline_active()))
            """)
        res = self.run_ok(script)
        self.assertEqual(res.out, b"1\n")
        pmap = self.read_map(res.pid)
        self.assertNamedOnce(pmap, "before", "both", "after", filename=script)
        self.assertNotNamed(pmap, "while_off", filename=script)

    def test_many_cycles(self):
        # Repeated activation must not exhaust anything (co_extra indexes,
        # memory) nor repeat lines.
        script = self.make_script("""\
            import sys
            def f():
                return 1
            for _ in range(5000):
                sys.activate_stack_trampoline("perf")
                f()
                sys.deactivate_stack_trampoline()
            print(int(sys.is_stack_trampoline_active()))
            """)
        res = self.run_ok(script)
        self.assertEqual(res.out, b"0\n")
        pmap = self.read_map(res.pid)
        self.assertNamedOnce(pmap, "f", filename=script)


# ---- fork() -----------------------------------------------------------------

FORK_SCRIPT = """\
import os, sys
{activation}
def common():
    return 1
def before_fork():
    return 2
def child_only():
    return 3
def parent_only():
    return 4
common(); before_fork()
sys.stdout.flush()
pid = os.fork()
if pid == 0:
    code = 1
    try:
        for _ in range(10):
            common(); child_only()
        code = 0
    finally:
        os._exit(code)
print(pid, flush=True)
_, status = os.waitpid(pid, 0)
parent_only()
print(os.waitstatus_to_exitcode(status))
"""


@support.requires_fork()
class TestFork(PerfTestCase):

    def run_fork_script(self, activation, *args):
        script = self.make_script(FORK_SCRIPT.format(activation=activation))
        res = self.run_python(*args, script)
        lines = res.out.splitlines()
        if lines:
            self.forget_pid(lines[0])
        self.assertEqual(res.rc, 0, res)
        self.assertEqual(len(lines), 2, res)
        self.assertEqual(lines[1], b"0", "the child failed")
        return res, int(lines[0]), script

    def check_active_fork(self, res, child, script):
        parent_map = self.read_map(res.pid)
        child_map = self.read_map(child)
        self.assertNamedOnce(parent_map, "common", "before_fork",
                             "parent_only", filename=script)
        self.assertNotNamed(parent_map, "child_only", filename=script)
        self.assertNamedOnce(child_map, "common", "child_only",
                             filename=script)
        self.assertNotNamed(child_map, "parent_only", filename=script)
        # The child uses the trampolines it inherited.
        name = entry_name("common", script)
        self.assertEqual(parent_map.find(name)[0].start,
                         child_map.find(name)[0].start)
        st = os.lstat(map_path(child))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)

    def test_fork_x_option(self):
        self.check_active_fork(*self.run_fork_script("", "-X", "perf"))

    def test_fork_sys_activate(self):
        self.check_active_fork(
            *self.run_fork_script('sys.activate_stack_trampoline("perf")'))

    def test_fork_inactive(self):
        res, child, script = self.run_fork_script("")
        self.assertNoMap(res.pid)
        self.assertNoMap(child)

    def test_fork_after_deactivation(self):
        res, child, script = self.run_fork_script(
            'sys.deactivate_stack_trampoline()', "-X", "perf")
        pmap = self.read_map(res.pid)
        self.assertNotNamed(pmap, "common", "parent_only", filename=script)
        self.assertNoMap(child)


# ---- Threads ----------------------------------------------------------------

THREADS_SCRIPT = """\
import sys, threading
sys.setswitchinterval(1e-6)
NTHREADS = 8
NFUNCS = 5
funcs = {}
for t in range(NTHREADS):
    for f in range(NFUNCS):
        exec(f"def t{t}_f{f}(x):\\n    return x + 1\\n", funcs)

def shared(x):
    return x * 2

def worker(t, barrier):
    mine = [funcs[f"t{t}_f{f}"] for f in range(NFUNCS)]
    barrier.wait()
    for i in range(500):
        for func in mine:
            func(i)
        shared(i)

barrier = threading.Barrier(NTHREADS)
threads = [threading.Thread(target=worker, args=(t, barrier))
           for t in range(NTHREADS)]
for th in threads:
    th.start()
for th in threads:
    th.join()
print(int(sys.is_stack_trampoline_active()))
"""

TOGGLE_SCRIPT = """\
import sys, threading
sys.setswitchinterval(1e-6)
stop = threading.Event()

def toggler():
    for _ in range(2000):
        sys.activate_stack_trampoline("perf")
        sys.deactivate_stack_trampoline()
    sys.activate_stack_trampoline("perf")
    stop.set()

def leaf(x):
    return x + 1

def caller(x):
    return leaf(x) * 2

def gen(n):
    for i in range(n):
        yield caller(i)

def worker():
    while not stop.is_set():
        sum(gen(50))

workers = [threading.Thread(target=worker) for _ in range(4)]
for th in workers:
    th.start()
toggle = threading.Thread(target=toggler)
toggle.start()
toggle.join()
for th in workers:
    th.join()
print("done", int(sys.is_stack_trampoline_active()))
"""


class TestThreads(PerfTestCase):

    def test_threads_named_once(self):
        script = self.make_script(THREADS_SCRIPT)
        res = self.run_ok("-X", "perf", script)
        self.assertEqual(res.out, b"1\n")
        self.assertEqual(res.err, b"")
        pmap = self.read_map(res.pid)
        names = [f"t{t}_f{f}" for t in range(8) for f in range(5)]
        # exec() compiles the functions with the file name "<string>".
        self.assertNamedOnce(pmap, *names, filename="<string>")
        self.assertNamedOnce(pmap, "shared", "worker", filename=script)

    def test_toggle_while_threads_run(self):
        script = self.make_script(TOGGLE_SCRIPT)
        res = self.run_ok(script, timeout=PERF_TIMEOUT)
        self.assertEqual(res.out, b"done 1\n")
        self.assertEqual(res.err, b"")
        pmap = self.read_map(res.pid)
        for qualname in ("leaf", "caller", "gen", "worker", "toggler"):
            self.assertLessEqual(
                pmap.count(entry_name(qualname, script)), 1, qualname)


# ---- Generators, coroutines and program behaviour ---------------------------

ASYNC_SCRIPT = """\
import asyncio

def gen():
    for i in range(3):
        yield i

async def leaf():
    await asyncio.sleep(0)
    return 1

async def middle():
    return await leaf() + 1

async def agen():
    for i in range(3):
        yield i
        await asyncio.sleep(0)

async def top():
    total = await middle()
    async for value in agen():
        total += value
    return total

print(list(gen()), asyncio.run(top()), sum(x for x in range(5)))
"""

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


FAST_CALLS_SCRIPT = """\
import dis, sys

def exact(a, b):
    return a + b

def with_defaults(a, b=1):
    return a + b

def run():
    total = 0
    for i in range(300):
        total += exact(i, 1)
        total += with_defaults(i)
    return total

def specialised_calls():
    ops = {i.opname for i in dis.get_instructions(run, adaptive=True)}
    return sorted(op for op in ops if op.startswith("CALL_PY"))

run()                                   # the call sites specialise
if "generic" in sys.argv:
    import _testinternalcapi
    _testinternalcapi.set_perf_trampoline_generic_calls(True)
sys.activate_stack_trampoline("perf")
print(run(), specialised_calls())
"""


class TestFastCalls(PerfTestCase):
    """Under the perf trampoline's hook, and no other, Python-to-Python calls
    stay specialised and still enter the callee's trampoline."""

    def test_specialised_calls_use_trampolines(self):
        script = self.make_script(FAST_CALLS_SCRIPT)
        res = self.run_ok(script)
        self.assertEqual(
            res.out.decode(),
            "90300 ['CALL_PY_EXACT_ARGS', 'CALL_PY_WITH_DEFAULTS']\n")
        # The specialised calls went through the hook: the callees, first
        # run after the activation, have their trampolines.
        pmap = self.read_map(res.pid)
        self.assertNamedOnce(pmap, "exact", "with_defaults", "run",
                             filename=script)

    def test_other_hooks_deoptimise(self):
        # The same hook under another name takes the generic road, as any
        # PEP 523 hook does in stock 3.11: the call sites deoptimise.
        script = self.make_script(FAST_CALLS_SCRIPT)
        res = self.run_ok(script, "generic")
        self.assertEqual(res.out.decode(), "90300 []\n")
        pmap = self.read_map(res.pid)
        self.assertNamedOnce(pmap, "exact", "with_defaults", "run",
                             filename=script)


class TestBehaviour(PerfTestCase):

    def test_generators_and_coroutines_named(self):
        script = self.make_script(ASYNC_SCRIPT)
        res = self.run_ok("-X", "perf", script)
        self.assertEqual(res.out, b"[0, 1, 2] 5 10\n")
        pmap = self.read_map(res.pid)
        self.assertNamedOnce(pmap, "gen", "leaf", "middle", "agen", "top",
                             "<genexpr>", "<module>", filename=script)

    def test_output_unchanged(self):
        script = self.make_script(BEHAVIOUR_SCRIPT)
        plain = self.run_python(script)
        self.assertEqual(plain.rc, 3, plain)
        self.assertIn(b"deep failure", plain.out)
        runs = {
            "-X perf": self.run_python("-X", "perf", script),
            "PYTHONPERFSUPPORT": self.run_python(
                script, env={"PYTHONPERFSUPPORT": "1"}),
            "sys": self.run_python(
                "-c", "import sys, runpy; "
                "sys.activate_stack_trampoline('perf'); "
                f"runpy.run_path({script!r}, run_name='__main__')"),
        }
        for how, res in runs.items():
            with self.subTest(how=how):
                self.assertEqual(res.rc, plain.rc)
                self.assertEqual(res.out, plain.out)
                self.assertEqual(res.err, plain.err)
                pmap = self.read_map(res.pid)
                self.assertNamedOnce(pmap, "fib", "echo", "fails", "produce",
                                     "Two.value", "managed", filename=script)


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
try:
    sys.activate_stack_trampoline("perf")
except RuntimeError as exc:
    print(f"RuntimeError: {exc}")
else:
    print("activated")
print(int(sys.is_stack_trampoline_active()))
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
        res = self.run_python(*args, script, preexec_fn=preexec)
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


# perf record -g follows frame pointers: it can only walk an interpreter that
# keeps them.
HAS_FRAME_POINTERS = "-fno-omit-frame-pointer" in (
    sysconfig.get_config_var("PY_CORE_CFLAGS") or "")


class RealPerfTestCase(PerfTestCase):
    """Profile PERF_SCRIPT under the real perf."""

    # How perf record collects call chains.
    call_graph = ("-F", "999", "-g")

    def setUp(self):
        super().setUp()
        if PERF is None:
            self.unavailable("perf is not installed")

    def perf_run(self, *args):
        return subprocess.run([PERF, *args], stdin=subprocess.DEVNULL,
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


class TestRealPerfJit(RealPerfChecks, RealPerfTestCase):
    """perf record --call-graph dwarf + perf inject --jit with the jitdump:
    what builds without frame pointers rely on (perf 6.8 or newer)."""

    backend = "perf_jit"
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


# ---- perf_jit: the jitdump --------------------------------------------------

JIT_SCRIPT = """\
import sys
{activation}
def foo():
    return sum(range(10))

def bar():
    return foo()

def baz():
    return bar()

class K:
    def method(self):
        return baz()

for _ in range(100):
    K().method()
print(int(sys.is_stack_trampoline_active()))
"""

ELF_MACHINES = {"x86_64": 62, "aarch64": 183}


class TestJitDump(PerfTestCase):

    def check_jitdump(self, *args, activation="",
                      qualnames=("foo", "bar", "baz", "K.method", "<module>")):
        script = self.make_script(JIT_SCRIPT.format(activation=activation))
        res = self.run_ok(*args, script)
        self.assertEqual(res.err, b"")
        self.assertEqual(res.out, b"1\n")
        path = jitdump_path(res.pid)
        self.assertTrue(os.path.exists(path), f"{path} was not written")
        st = os.lstat(path)
        self.assertTrue(stat.S_ISREG(st.st_mode))
        self.assertEqual(st.st_uid, os.geteuid())
        dump = self.read_jitdump(res.pid)

        header = dump.header
        self.assertEqual(header.version, 1)
        self.assertEqual(header.total_size, 40)
        self.assertEqual(header.pid, res.pid)
        machine = platform.machine()
        if machine in ELF_MACHINES:
            self.assertEqual(header.elf_mach, ELF_MACHINES[machine])

        try:
            loads = dump.code_loads()
        except ValueError as exc:
            self.fail(f"invalid CODE_LOAD: {exc}")
        self.assertTrue(loads)
        indexes = [load.code_index for _, load in loads]
        self.assertEqual(len(indexes), len(set(indexes)),
                         "code_index not unique")
        for i, load in loads:
            self.assertEqual(load.pid, res.pid)
            self.assertGreater(load.code_size, 0)
            self.assertTrue(load.name.startswith(b"py::"), load.name)
            self.assertIsNone(CONTROL_CHARS.search(load.name), load.name)
            self.assertGreaterEqual(i, 2)
            previous = dump.records[i - 2:i]
            self.assertEqual(
                sorted(r.id for r in previous),
                [JitDump.CODE_DEBUG_INFO, JitDump.CODE_UNWINDING_INFO],
                f"records before CODE_LOAD of {load.name!r}")
            for record in previous:
                try:
                    if record.id == JitDump.CODE_DEBUG_INFO:
                        info = dump.parse_debug_info(record)
                        self.assertEqual(info.code_addr, load.code_addr)
                    else:
                        unwind = dump.parse_unwinding_info(record)
                        self.assertGreater(unwind.unwinding_size, 0)
                        self.assertLessEqual(unwind.eh_frame_hdr_size,
                                             unwind.unwinding_size)
                except ValueError as exc:
                    self.fail(f"invalid record: {exc}")

        names = collections.Counter(load.name for _, load in loads)
        for qualname in qualnames:
            name = entry_name(qualname, script)
            self.assertEqual(names[name], 1, name)
        return dump

    def test_x_option(self):
        self.check_jitdump("-X", "perf_jit")

    def test_sys_activate(self):
        self.check_jitdump(
            activation='sys.activate_stack_trampoline("perf_jit")',
            qualnames=("foo", "bar", "baz", "K.method"))

    def test_switch_backend(self):
        # From the map to the jitdump in one process: functions that run
        # after the switch are in the jitdump (<module> was entered before).
        self.check_jitdump(
            "-X", "perf",
            activation='sys.activate_stack_trampoline("perf_jit")',
            qualnames=("foo", "bar", "baz", "K.method"))


# ---- fork() with persistence (C API) ---------------------------------------

# PyUnstable_PerfTrampoline_CompileCode() and
# PyUnstable_PerfTrampoline_SetPersistAfterFork() through the test hooks of
# _testinternalcapi; argv[1] is "persist" or not.
PERSIST_SCRIPT = """
    import os, sys, _testinternalcapi as t
    persist = sys.argv[1] == "persist"
    def run_by_both():
        return 1
    def compiled_only():
        return 2
    def compiled_too():
        return 3
    def parent_only():
        return 4
    def child_only():
        return 5
    sys.activate_stack_trampoline("perf")
    run_by_both()
    for f in (compiled_only, compiled_too):
        t.compile_perf_trampoline(f.__code__)
    assert t.set_perf_trampoline_persist_after_fork(persist) == 0
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            print(f"pid={os.getpid()}", flush=True)
            run_by_both()
            child_only()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, status
    parent_only()
    sys.deactivate_stack_trampoline()
"""


@support.requires_fork()
class TestPersistAfterFork(PerfTestCase):
    """The trampolines and the map across os.fork(), with and without
    persistence."""

    def setUp(self):
        super().setUp()
        import_helper.import_module("_testinternalcapi")

    def run_persist_script(self, persist):
        _, (parent, child) = self.run_child(PERSIST_SCRIPT, persist)
        return self.read_map(parent), self.read_map(child)

    def test_persist_after_fork(self):
        parent_map, child_map = self.run_persist_script("persist")
        # The child starts with a copy of the parent's map: what was
        # described before fork() is there, at the same place, and it is
        # not described a second time.
        for name in ("run_by_both", "compiled_only", "compiled_too"):
            with self.subTest(name=name):
                self.assertEqual(
                    self.the_entry(parent_map, name, "<string>"),
                    self.the_entry(child_map, name, "<string>"))
        child_only = self.the_entry(child_map, "child_only", "<string>")
        copied = child_map.lines[:child_map.lines.index(child_only.line)]
        self.assertEqual(parent_map.lines[:len(copied)], copied)
        self.assertNotNamed(child_map, "parent_only", filename="<string>")
        self.assertNotNamed(parent_map, "child_only", filename="<string>")
        self.assertNamedOnce(parent_map, "parent_only", filename="<string>")

    def test_no_persist_after_fork(self):
        parent_map, child_map = self.run_persist_script("no")
        # The child's map holds what the child ran, and only that.
        self.assertNamedOnce(parent_map, "compiled_only", "compiled_too",
                             "parent_only", filename="<string>")
        self.assertNotNamed(child_map, "compiled_only", "compiled_too",
                            "parent_only", filename="<string>")
        self.assertNamedOnce(child_map, "child_only", filename="<string>")
        self.assertNotNamed(parent_map, "child_only", filename="<string>")
        # Code that ran on both sides keeps its trampoline after fork().
        self.assertEqual(
            self.the_entry(parent_map, "run_by_both", "<string>"),
            self.the_entry(child_map, "run_by_both", "<string>"))


# ---- Subinterpreters --------------------------------------------------------

# Run in the subinterpreter; formatted with the arguments of run_subinterp().
SUBINTERP_CODE = """\
import json, sys
result = {{"active_at_start": sys.is_stack_trampoline_active()}}
def sub_func():
    return 42
try:
    sys.activate_stack_trampoline({backend!r})
except RuntimeError as exc:
    result["error"] = str(exc)
result["active"] = sys.is_stack_trampoline_active()
sub_func()
if {deactivate!r}:
    sys.deactivate_stack_trampoline()
result["active_at_end"] = sys.is_stack_trampoline_active()
with open({result_file!r}, "w") as f:
    json.dump(result, f)
"""

SUBINTERP_SCRIPT = """
    import json, sys, _testcapi
    sub_code, result_file, main_active = sys.argv[1:]
    def main_func():
        pass
    if main_active == "yes":
        sys.activate_stack_trampoline("perf")
    else:
        # make the main interpreter known to the trampoline, inactive
        sys.activate_stack_trampoline("perf")
        sys.deactivate_stack_trampoline()
    before = sys.is_stack_trampoline_active()
    assert _testcapi.run_in_subinterp(sub_code) == 0
    after = sys.is_stack_trampoline_active()
    main_func()
    # The main interpreter can still (re)activate "perf".
    sys.activate_stack_trampoline("perf")
    def after_reactivation():
        pass
    after_reactivation()
    sys.deactivate_stack_trampoline()
    with open(result_file) as f:
        result = json.load(f)
    result.update(main_before=before, main_after=after)
    print("result=" + json.dumps(result), flush=True)
"""


class TestSubinterpreters(PerfTestCase):
    """The trampoline hook belongs to one interpreter."""

    def setUp(self):
        super().setUp()
        import_helper.import_module("_testcapi")

    def run_subinterp(self, main_active, sub_backend, sub_deactivates=True,
                      refused=False):
        """Run SUBINTERP_CODE in a subinterpreter, with the main interpreter
        active or not; check what both saw of the hook, and return the pid
        and the error of the subinterpreter's activation."""
        result_file = os.path.join(self.tmp, "result.json")
        sub_code = SUBINTERP_CODE.format(
            backend=sub_backend, deactivate=sub_deactivates,
            result_file=result_file)
        out, (pid,) = self.run_child(SUBINTERP_SCRIPT, sub_code, result_file,
                                     "yes" if main_active else "no")
        result = json.loads(re.search(r"^result=(.*)$", out, re.M)[1])
        error = result.pop("error", None)
        self.assertEqual(result, {
            # The main interpreter's hook is its own.
            "main_before": main_active, "main_after": main_active,
            # So is the subinterpreter's.
            "active_at_start": False, "active": not refused,
            "active_at_end": not refused and not sub_deactivates,
        })
        self.assertEqual(error is not None, refused, error)
        return pid, error

    def test_main_active(self):
        pid, _ = self.run_subinterp(True, "perf")
        pmap = self.read_map(pid)
        self.assertNamedOnce(pmap, "sub_func", "main_func",
                             "after_reactivation", filename="<string>")
        self.assertFalse(os.path.exists(jitdump_path(pid)))

    def test_main_inactive(self):
        pid, _ = self.run_subinterp(False, "perf")
        pmap = self.read_map(pid)
        self.assertNamedOnce(pmap, "sub_func", "after_reactivation",
                             filename="<string>")
        # main_func() ran with the main interpreter inactive.
        self.assertNotNamed(pmap, "main_func", filename="<string>")

    def test_other_backend_refused_while_main_active(self):
        pid, error = self.run_subinterp(True, "perf_jit", refused=True)
        self.assertIn("perf_jit", error)
        self.assertIn("another interpreter", error)
        pmap = self.read_map(pid)
        self.assertNotNamed(pmap, "sub_func", filename="<string>")
        self.assertNamedOnce(pmap, "main_func", filename="<string>")
        self.assertFalse(os.path.exists(jitdump_path(pid)))

    def test_other_backend_allowed_while_main_inactive(self):
        # The subinterpreter ends with perf_jit active; the main
        # interpreter switches back to perf afterwards.
        pid, _ = self.run_subinterp(False, "perf_jit", sub_deactivates=False)
        self.assertIn(entry_name("sub_func", "<string>"),
                      self.jitdump_names(pid))
        pmap = self.read_map(pid)
        self.assertNamedOnce(pmap, "after_reactivation", filename="<string>")


# ---- A C extension writing the map from threads -----------------------------

# A C extension whose threads write map entries without the GIL.  Entry i of
# thread t of a run tagged TAG is
#     ADDR(t, i) SIZE(i) TAG_t<t>_e<i>_xxx...
# with a tail of 'x' of varied length (sometimes longer than the formatting
# buffer of perf_map.c); Python computes the same lines to check the map.
WRITERS_MODULE = "_test_perfmap_writers"
WRITERS_SOURCE = r"""
#define PY_SSIZE_T_CLEAN
#include "Python.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define MAX_THREADS 64
#define MAX_TAG 64

typedef struct {
    const char *tag;
    int index;
    int count;
    int failures;
    int saw_gil;
} writer;

static int go;

static void *
writer_main(void *arg)
{
    writer *w = arg;
    char name[MAX_TAG + 64 + 1024];
    while (!__atomic_load_n(&go, __ATOMIC_ACQUIRE)) {
        /* start all together */
    }
    if (PyGILState_Check()) {
        w->saw_gil = 1;
    }
    for (int i = 0; i < w->count; i++) {
        int n = snprintf(name, 128, "%s_t%d_e%d_", w->tag, w->index, i);
        int fill = (i % 500 == 499) ? 700 : (i * 7) % 61;
        memset(name + n, 'x', (size_t)fill);
        name[n + fill] = '\0';
        uintptr_t addr = ((uintptr_t)0x7e00 << 32)
                         + ((uintptr_t)w->index << 24)
                         + (uintptr_t)i * 0x40;
        unsigned int size = 0x10 + (unsigned int)(i % 0x30);
        if (PyUnstable_WritePerfMapEntry((const void *)addr, size,
                                         name) != 0) {
            w->failures++;
        }
    }
    return NULL;
}

static PyObject *
run_writers(PyObject *self, PyObject *args)
{
    const char *tag;
    int nthreads, count;
    if (!PyArg_ParseTuple(args, "sii", &tag, &nthreads, &count)) {
        return NULL;
    }
    if (nthreads < 1 || nthreads > MAX_THREADS || count < 0
        || strlen(tag) > MAX_TAG)
    {
        PyErr_SetString(PyExc_ValueError, "bad arguments");
        return NULL;
    }
    pthread_t threads[MAX_THREADS];
    writer writers[MAX_THREADS];
    int started = 0, err = 0;

    Py_BEGIN_ALLOW_THREADS
    __atomic_store_n(&go, 0, __ATOMIC_RELEASE);
    for (int t = 0; t < nthreads; t++) {
        writers[t] = (writer){.tag = tag, .index = t, .count = count};
        err = pthread_create(&threads[t], NULL, writer_main, &writers[t]);
        if (err != 0) {
            break;
        }
        started++;
    }
    __atomic_store_n(&go, 1, __ATOMIC_RELEASE);
    for (int t = 0; t < started; t++) {
        pthread_join(threads[t], NULL);
    }
    Py_END_ALLOW_THREADS

    if (err != 0) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    int failures = 0, saw_gil = 0;
    for (int t = 0; t < started; t++) {
        failures += writers[t].failures;
        saw_gil |= writers[t].saw_gil;
    }
    return Py_BuildValue("ii", failures, saw_gil);
}

static PyMethodDef methods[] = {
    {"run_writers", run_writers, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_test_perfmap_writers", NULL, -1, methods,
};

PyMODINIT_FUNC
PyInit__test_perfmap_writers(void)
{
    return PyModule_Create(&module);
}
"""


def expected_writer_lines(tag, nthreads, count):
    """The map lines that run_writers(tag, nthreads, count) writes."""
    lines = []
    for t in range(nthreads):
        for i in range(count):
            fill = 700 if i % 500 == 499 else (i * 7) % 61
            name = f"{tag}_t{t}_e{i}_" + "x" * fill
            addr = (0x7e00 << 32) + (t << 24) + i * 0x40
            size = 0x10 + i % 0x30
            lines.append(f"{addr:x} {size:x} {name}".encode())
    return lines


def python_include_dirs():
    """The directories holding Python.h and pyconfig.h."""
    dirs = []
    if sysconfig.is_python_build():
        srcdir = (sysconfig.get_config_var("abs_srcdir")
                  or sysconfig.get_config_var("srcdir"))
        builddir = (sysconfig.get_config_var("abs_builddir")
                    or os.path.dirname(sysconfig.get_config_h_filename()))
        dirs += [os.path.join(srcdir, "Include"), builddir]
    else:
        paths = sysconfig.get_paths()
        dirs += [paths["include"], paths["platinclude"]]
    pyconfig_dir = os.path.dirname(sysconfig.get_config_h_filename())
    if pyconfig_dir not in dirs:
        dirs.append(pyconfig_dir)
    return dirs


def build_writers_extension(directory):
    """Compile WRITERS_SOURCE in directory; return the path of the module,
    or raise unittest.SkipTest if there is no working compiler."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise unittest.SkipTest("gcc is needed to build the test extension")
    source = os.path.join(directory, WRITERS_MODULE + ".c")
    with open(source, "w") as f:
        f.write(WRITERS_SOURCE)
    output = os.path.join(
        directory, WRITERS_MODULE + sysconfig.get_config_var("EXT_SUFFIX"))
    cmd = [gcc, "-shared", "-fPIC", "-pthread", "-O2", "-Wall",
           "-fno-strict-aliasing"]
    for include in python_include_dirs():
        cmd += ["-I", include]
    cmd += [source, "-o", output]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True,
                          timeout=SUBPROCESS_TIMEOUT)
    if proc.returncode != 0:
        raise AssertionError(f"cannot build the test extension:\n"
                             f"{' '.join(cmd)}\n{proc.stdout}")
    return output


# Loads the extension built by build_writers_extension(), whose path is the
# first command line argument of the child.
LOAD_WRITERS = f"""
import importlib.util, sys
_spec = importlib.util.spec_from_file_location({WRITERS_MODULE!r},
                                               sys.argv[1])
writers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(writers)
"""



@threading_helper.requires_working_threading()
class TestCExtensionWriters(PerfTestCase):
    """Threads of a C extension, built against the headers of this Python,
    write entries without the GIL."""

    NTHREADS = 8
    COUNT = 2000

    @classmethod
    def setUpClass(cls):
        tmp = tempfile.mkdtemp()
        cls.addClassCleanup(os_helper.rmtree, tmp)
        cls.extension = build_writers_extension(tmp)

    def check_writer_lines(self, pmap, tag):
        expected = expected_writer_lines(tag, self.NTHREADS, self.COUNT)
        prefix = f" {tag}_t".encode()
        written = [line for line in pmap.lines if prefix in line]
        self.assertEqual(len(written), len(expected))
        counts = collections.Counter(written)
        duplicated = [line for line, n in counts.items() if n > 1]
        self.assertEqual(duplicated[:5], [])
        missing = set(expected) - set(written)
        unexpected = set(written) - set(expected)
        self.assertEqual(sorted(missing)[:5], [])
        self.assertEqual(sorted(unexpected)[:5], [])
        # Each thread's own entries stay in the order it wrote them.
        for t in range(self.NTHREADS):
            mine = f" {tag}_t{t}_e".encode()
            indexes = [int(line.split(mine)[1].split(b"_")[0])
                       for line in written if mine in line]
            self.assertEqual(indexes, list(range(self.COUNT)))

    def test_threads_without_gil(self):
        _, (pid,) = self.run_child(LOAD_WRITERS + textwrap.dedent("""
            failures, saw_gil = writers.run_writers("cw", %d, %d)
            assert failures == 0, failures
            assert not saw_gil
        """) % (self.NTHREADS, self.COUNT), self.extension)
        pmap = self.read_map(pid, python_only=False)
        self.assertEqual(len(pmap.lines), self.NTHREADS * self.COUNT)
        self.check_writer_lines(pmap, "cw")

    def test_threads_with_interpreter_writing(self):
        # While the C threads write, Python threads keep making and calling
        # new functions, so the interpreter writes the map too (-X perf).
        out, (pid,) = self.run_child(LOAD_WRITERS + textwrap.dedent("""
            import threading
            NPY = 4
            stop = threading.Event()
            made = [0] * NPY
            started = threading.Barrier(NPY + 1)
            def make_and_call(k):
                started.wait()
                i = 0
                while not stop.is_set() or i < 100:
                    ns = {}
                    src = f"def pyfn_{k}_{i}(x):\\n    return x + {i}\\n"
                    exec(compile(src, "<gen>", "exec"), ns)
                    ns[f"pyfn_{k}_{i}"](i)
                    i += 1
                made[k] = i
            threads = [threading.Thread(target=make_and_call, args=(k,))
                       for k in range(NPY)]
            for thread in threads:
                thread.start()
            started.wait()
            failures, saw_gil = writers.run_writers("cwpy", %d, %d)
            stop.set()
            for thread in threads:
                thread.join()
            assert failures == 0, failures
            print("made=" + ",".join(map(str, made)), flush=True)
        """) % (self.NTHREADS, self.COUNT), self.extension,
            xoptions=("-X", "perf"))
        made = [int(n) for n in
                re.search(r"^made=([\d,]+)$", out, re.M)[1].split(",")]
        pmap = self.read_map(pid, python_only=False)
        self.check_writer_lines(pmap, "cwpy")
        names = collections.Counter(pmap.names())
        for k, count in enumerate(made):
            for i in range(count):
                name = entry_name(f"pyfn_{k}_{i}", "<gen>")
                self.assertEqual(names[name], 1, name)
        for entry in pmap.entries:
            if not entry.name.startswith(b"cwpy_t"):
                self.assertRegex(entry.name, PY_NAME)
        if support.verbose:
            c_positions = [i for i, line in enumerate(pmap.lines)
                           if b" cwpy_t" in line]
            first, last = c_positions[0], c_positions[-1]
            between = sum(1 for line in pmap.lines[first:last]
                          if b" cwpy_t" not in line)
            print(f"\n    {sum(made)} Python functions made, "
                  f"{between} interpreter lines among the C threads' lines",
                  flush=True)


# ---- Stress: activation, backend switches and fork() under load -------------

# 4 threads call generated functions while the main thread activates and
# deactivates the trampoline, switches backends and forks (about half a
# second here; the subprocess timeout bounds it).
STRESS_SCRIPT = """
    import os, sys, threading, time
    CYCLES = 10_000
    SWITCH_EVERY = 100
    FORKS = 50
    NFUNCS = 200
    src = "".join(f"def gen_{i}(x):\\n    return x + {i}\\n"
                  for i in range(NFUNCS))
    ns = {}
    exec(compile(src, "<stress>", "exec"), ns)
    funcs = [ns[f"gen_{i}"] for i in range(NFUNCS)]
    stop = threading.Event()
    calls = [0] * 4
    def busy(k):
        n = 0
        while not stop.is_set():
            for f in funcs:
                f(n)
            n += len(funcs)
        calls[k] = n
    sys.setswitchinterval(1e-4)
    threads = [threading.Thread(target=busy, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    backends = ["perf", "perf_jit"]
    fork_every = CYCLES // FORKS
    cycles = forks = 0
    try:
        for cycle in range(CYCLES):
            backend = backends[(cycle // SWITCH_EVERY) % len(backends)]
            sys.activate_stack_trampoline(backend)
            assert sys.is_stack_trampoline_active()
            funcs[cycle % NFUNCS](cycle)
            if cycle % 50 == 0:
                time.sleep(0)       # let the busy threads run with the hook
            # Fork in the middle of a period of either backend in turn.
            fork_at = (SWITCH_EVERY // 2
                       + SWITCH_EVERY * (cycle // fork_every % 2))
            if cycle % fork_every == fork_at:
                pid = os.fork()
                if pid == 0:
                    code = 1
                    try:
                        print(f"pid={os.getpid()}", flush=True)
                        for f in funcs[:50]:
                            f(1)
                        code = 0
                    finally:
                        os._exit(code)
                _, status = os.waitpid(pid, 0)
                assert os.waitstatus_to_exitcode(status) == 0, status
                forks += 1
            sys.deactivate_stack_trampoline()
            assert not sys.is_stack_trampoline_active()
            cycles += 1
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    print(f"cycles={cycles} forks={forks} calls={sum(calls)}", flush=True)
"""


@support.requires_fork()
@threading_helper.requires_working_threading()
class TestStress(PerfTestCase):

    def test_activate_switch_and_fork_under_load(self):
        out, pids = self.run_child(STRESS_SCRIPT)
        summary = re.search(r"^cycles=.*$", out, re.M)
        self.assertIsNotNone(summary, out)
        summary = summary[0]
        if support.verbose:
            print(f"\n    {summary}", flush=True)
        counts = {key: int(value) for key, value in
                  (item.split("=") for item in summary.split())}
        self.assertEqual(counts["cycles"], 10_000, summary)
        self.assertEqual(counts["forks"], 50, summary)
        self.assertGreater(counts["calls"], 0)
        parent, children = pids[0], pids[1:]
        self.assertEqual(len(children), counts["forks"])

        child_funcs = {entry_name(f"gen_{i}", "<stress>") for i in range(50)}
        for pid in pids:
            with self.subTest(pid=pid):
                named = set()
                if os.path.exists(map_path(pid)):
                    named.update(self.read_map(pid).names())
                if os.path.exists(jitdump_path(pid)):
                    named.update(self.jitdump_names(pid))
                if pid == parent:
                    self.assertIn(entry_name("gen_0", "<stress>"), named)
                else:
                    # What the child ran is named in its own output.
                    self.assertLessEqual(child_funcs, named)


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


UNSHARE = shutil.which("unshare")


class TestPrivateTmp(FailureTestCase):
    """/tmp where the files cannot be made, in a private mount namespace
    (unshare(1), run as root): a new tmpfs mounted noexec (the jitdump
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
        kept = set()
        for path in (sys.executable, *sys.path, self.tmp):
            real = os.path.realpath(path) if path else ""
            if real.startswith("/tmp/"):
                kept.add(real.split("/")[2])
        setup = ["set -e", "cd /tmp", "mount -t tmpfs none /tmp"]
        for name in sorted(kept):
            new = shlex.quote(os.path.join("/tmp", name))
            if os.path.isdir(os.path.join("/tmp", name)):
                setup.append(f"mkdir {new}")
            elif os.path.exists(os.path.join("/tmp", name)):
                setup.append(f": > {new}")
            else:
                continue
            # The old /tmp is still the working directory: reach it
            # through /proc, which mount must not resolve into a path.
            old = shlex.quote(os.path.join("/proc/self/cwd", name))
            setup.append(f"mount --no-canonicalize --bind {old} {new}")
        # The options come last: a read-only /tmp takes no mount points.
        setup += [f"mount -o remount,{options} /tmp", "cd /", 'exec "$@"']
        return [UNSHARE, "--mount", "--propagation", "private",
                "sh", "-c", "\n".join(setup), "sh"]

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
