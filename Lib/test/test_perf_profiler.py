"""Tests for the Linux perf profiler support.

Covers -X perf / -X perf_jit, PYTHONPERFSUPPORT / PYTHON_PERF_JIT_SUPPORT,
sys.activate_stack_trampoline() and friends, the /tmp/perf-PID.map and
/tmp/jit-PID.dump files (format, fork, threads, hostile /tmp) and the real
perf tool reading them.
"""

import collections
import os
import platform
import re
import shutil
import stat
import struct
import subprocess
import sys
import sysconfig
import textwrap
import unittest

from test import support
from test.support import import_helper, os_helper, script_helper


if not sys.platform.startswith("linux"):
    raise unittest.SkipTest("perf trampolines are only supported on Linux")
if not sysconfig.get_config_var("PY_HAVE_PERF_TRAMPOLINE"):
    raise unittest.SkipTest("this build has no perf trampoline support")


PERF_ENV_VARS = ("PYTHONPERFSUPPORT", "PYTHON_PERF_JIT_SUPPORT")
SUBPROCESS_TIMEOUT = support.SHORT_TIMEOUT
PERF_TIMEOUT = support.LONG_TIMEOUT

# One line of /tmp/perf-PID.map written by the interpreter.
MAP_LINE = re.compile(rb"^([0-9a-f]+) ([0-9a-f]+) py::(.*):(.*)$")
CONTROL_CHARS = re.compile(rb"[\x00-\x1f\x7f]")


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

    Entry = collections.namedtuple("Entry", "start size name")

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
            if match is None or CONTROL_CHARS.search(line):
                self.malformed.append(line)
                continue
            start, size = int(match[1], 16), int(match[2], 16)
            name = line.split(b" ", 2)[2]
            self.entries.append(self.Entry(start, size, name))

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


Result = collections.namedtuple("Result", "rc out err pid")


class PerfTestCase(unittest.TestCase):
    """Runs child interpreters and removes every /tmp file they make."""

    def setUp(self):
        # A perf-enabled parent environment must not leak into the children:
        # each test sets exactly the variables it is about.
        env = self.enterContext(os_helper.EnvironmentVarGuard())
        for name in PERF_ENV_VARS:
            env.unset(name)
        self.tmp = self.enterContext(os_helper.temp_dir())

    def forget_pid(self, pid):
        """Remove the profiler files of process pid at the end of the test."""
        pid = int(pid)
        self.addCleanup(os_helper.unlink, map_path(pid))
        self.addCleanup(os_helper.unlink, jitdump_path(pid))

    def make_script(self, source, name="script"):
        return script_helper.make_script(self.tmp, name,
                                         textwrap.dedent(source))

    def run_python(self, *args, env=None, isolated=None, timeout=None,
                   preexec_fn=None):
        """Run sys.executable with args; return a Result.

        Like script_helper.assert_python_ok() but with the child's pid (to
        clean up /tmp/perf-PID.map even when the child dies early), a
        timeout and preexec_fn.  The child runs with -I unless env is given
        or isolated is false.
        """
        if isolated is None:
            isolated = not env
        cmd = [sys.executable]
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
                self.fail(f"{cmd} timed out; stdout:\n{out!r}\n"
                          f"stderr:\n{err!r}")
        self.last_cmd = cmd
        return Result(proc.returncode, out, err, proc.pid)

    def run_ok(self, *args, **kwargs):
        res = self.run_python(*args, **kwargs)
        if res.rc != 0:
            self.fail(f"{self.last_cmd} exited with {res.rc}\n"
                      f"stdout:\n{res.out.decode(errors='replace')}\n"
                      f"stderr:\n{res.err.decode(errors='replace')}")
        return res

    def read_map(self, pid):
        pmap = PerfMap.read(pid)
        self.assertIsNotNone(pmap, f"{map_path(pid)} was not written")
        self.assertWellFormed(pmap)
        return pmap

    def assertWellFormed(self, pmap):
        self.assertEqual(pmap.unterminated, b"",
                         "the last line of the map has no newline")
        self.assertEqual(pmap.malformed, [], "malformed map lines")
        for entry in pmap.entries:
            self.assertGreater(entry.size, 0, entry)
            self.assertGreater(entry.start, 0, entry)

    def assertNamedOnce(self, pmap, *qualnames, filename):
        for qualname in qualnames:
            name = entry_name(qualname, filename)
            self.assertEqual(pmap.count(name), 1,
                             f"{name!r} in map:\n"
                             f"{pmap.data.decode(errors='replace')}")

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
        try:
            dump = JitDump.read(res.pid)
            self.assertIsNotNone(dump,
                                 f"{jitdump_path(res.pid)} was not written")
            names = [load.name for _, load in dump.code_loads()]
        except ValueError as exc:
            self.fail(f"invalid jitdump: {exc}")
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


class TestRealPerf(PerfTestCase):

    def setUp(self):
        super().setUp()
        if PERF is None:
            self.perf_unavailable("perf is not installed")

    def perf_unavailable(self, reason):
        if os.environ.get("PERF_TESTS_ALLOW_SKIP") == "1":
            self.skipTest(reason)
        self.fail(f"{reason} (set PERF_TESTS_ALLOW_SKIP=1 to skip)")

    def perf_run(self, *args):
        return subprocess.run([PERF, *args], stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=PERF_TIMEOUT)

    def record(self, *python_args, activation=""):
        script = self.make_script(PERF_SCRIPT.format(activation=activation))
        data = os.path.join(self.tmp, "perf.data")
        proc = self.perf_run("record", "-F", "999", "-g", "-N", "-o", data,
                             "--", sys.executable, "-I", *python_args,
                             script)
        out = proc.stdout.decode(errors="replace").split()
        if out and out[0].isdigit():
            pid = int(out[0])
            self.forget_pid(pid)
        if proc.returncode != 0 or not out:
            self.perf_unavailable(
                f"perf record failed ({proc.returncode}):\n"
                f"{proc.stderr.decode(errors='replace')}")
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
        names = [f"py::{q}:{script}" for q in ("foo", *callers)]
        with_foo = [s for s in stacks if names[0] in s]
        self.assertGreater(len(with_foo), 20,
                           f"py::foo in few of {len(stacks)} samples:\n"
                           f"{text[:3000]}")
        complete = 0
        for stack in with_foo:
            positions = [stack.index(n) if n in stack else -1 for n in names]
            if -1 not in positions and positions == sorted(positions):
                complete += 1
        # Frame-pointer unwinding may lose an odd sample, not most of them.
        self.assertGreater(complete, len(with_foo) // 2,
                           f"{complete} of {len(with_foo)} stacks show "
                           f"<module> > baz > bar > foo")

    def test_x_option(self):
        text, pid, script = self.record("-X", "perf")
        self.check_python_stacks(text, pid, script)

    def test_sys_activate(self):
        # The module's code was entered before the activation: it has no
        # trampoline, but everything it calls afterwards has.
        text, pid, script = self.record(
            activation='sys.activate_stack_trampoline("perf")')
        self.check_python_stacks(text, pid, script, callers=("bar", "baz"))

    def test_without_trampoline(self):
        text, pid, script = self.record()
        self.assertGreater(len(perf_stacks(text, pid)), 50)
        self.assertNotIn("py::", text)
        self.assertNoMap(pid)


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
        try:
            dump = JitDump.read(res.pid)
        except ValueError as exc:
            self.fail(f"invalid jitdump: {exc}")

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


if __name__ == "__main__":
    unittest.main()
