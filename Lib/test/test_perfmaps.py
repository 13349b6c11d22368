"""Tests for the perf map C API (Include/cpython/perfmaps.h).

The PyUnstable_PerfMapState_*, PyUnstable_WritePerfMapEntry(),
PyUnstable_CopyPerfMapFile() and PyUnstable_PerfTrampoline_* functions are
reached through the test hooks of _testinternalcapi, and through a small C
extension built by the test that writes from threads which do not hold the
GIL.  Every scenario runs in a child process, so that the maps it writes are
named after that child's pid; each child prints "pid=N" for itself and for
each process it forks, and the test removes /tmp/perf-N.map and
/tmp/jit-N.dump for all of them.
"""

import collections
import json
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import time
import unittest

from test import support
from test.support import os_helper, script_helper, threading_helper


if not sys.platform.startswith("linux"):
    raise unittest.SkipTest("perf maps are only written on Linux")
if not sysconfig.get_config_var("PY_HAVE_PERF_TRAMPOLINE"):
    raise unittest.SkipTest("this build has no perf trampoline support")
if not support.has_subprocess_support:
    raise unittest.SkipTest("test module requires subprocess")


CHILD_TIMEOUT = support.SHORT_TIMEOUT
PERF_ENV_VARS = ("PYTHONPERFSUPPORT", "PYTHON_PERF_JIT_SUPPORT")

# Any line of a perf map: "START SIZE NAME", hexadecimal without 0x, and a
# name without control characters.
ANY_MAP_LINE = re.compile(rb"([0-9a-f]+) ([0-9a-f]+) ([^\x00-\x1f\x7f]+)")
# A line that the interpreter writes for a trampoline.
PY_MAP_LINE = re.compile(rb"([0-9a-f]+) ([0-9a-f]+) py::([^\x00-\x1f\x7f]+)")
# What a child prints for itself and for its forked children.
PID_LINE = re.compile(r"^pid=(\d+)$", re.MULTILINE)

# Printed first by every child.
CHILD_PREAMBLE = """\
import os as _os
print(f"pid={_os.getpid()}", flush=True)
del _os
"""


def map_path(pid):
    return f"/tmp/perf-{pid}.map"


def jitdump_path(pid):
    return f"/tmp/jit-{pid}.dump"


def py_name(qualname, filename="<string>"):
    """The map name of a code object, as bytes."""
    return f"py::{qualname}:{filename}".encode()


class JitdumpError(Exception):
    pass


def walk_jitdump(data, pid=None):
    """Check the structure of a jitdump: its header, then records whose
    sizes lead exactly to the end of the file.  Return the names of the
    CODE_LOAD records."""
    header = struct.Struct("=IIIIIIQQ")
    prefix = struct.Struct("=IIQ")
    code_load = struct.Struct("=IIQQQQ")
    if len(data) < header.size:
        raise JitdumpError(f"{len(data)} bytes: shorter than the header")
    magic, version, hsize, _mach, _pad, hpid, _ts, _flags = (
        header.unpack_from(data))
    if magic != 0x4A695444:
        raise JitdumpError(f"bad magic {magic:#x}")
    if version != 1:
        raise JitdumpError(f"bad version {version}")
    if hsize < header.size or hsize > len(data):
        raise JitdumpError(f"bad header size {hsize}")
    if pid is not None and hpid != pid:
        raise JitdumpError(f"header pid {hpid}, expected {pid}")
    names = []
    offset = hsize
    while offset < len(data):
        if len(data) - offset < prefix.size:
            raise JitdumpError(f"truncated record prefix at {offset}")
        rec_id, size, _ts = prefix.unpack_from(data, offset)
        if size < prefix.size or size % 8:
            raise JitdumpError(f"record at {offset}: bad size {size}")
        if offset + size > len(data):
            raise JitdumpError(f"record at {offset} (id {rec_id}, size "
                               f"{size}) runs past the end ({len(data)})")
        if rec_id not in (0, 2, 4):
            raise JitdumpError(f"record at {offset}: unexpected id {rec_id}")
        if rec_id == 0:
            body = data[offset + prefix.size:offset + size]
            if len(body) < code_load.size:
                raise JitdumpError(f"short CODE_LOAD at {offset}")
            rpid, _tid, vma, addr, code_size, _index = (
                code_load.unpack_from(body))
            end = body.find(b"\0", code_load.size)
            if end < 0:
                raise JitdumpError(f"CODE_LOAD at {offset}: name without NUL")
            if end + 1 + code_size > len(body):
                raise JitdumpError(f"CODE_LOAD at {offset}: code past end")
            if vma != addr:
                raise JitdumpError(f"CODE_LOAD at {offset}: vma != addr")
            if pid is not None and rpid != pid:
                raise JitdumpError(f"CODE_LOAD at {offset}: pid {rpid}")
            names.append(body[code_load.size:end])
        offset += size
    return names


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
                          timeout=CHILD_TIMEOUT)
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


class PerfMapTestCase(unittest.TestCase):
    """Run children and remove the maps and dumps of every process they
    report."""

    def setUp(self):
        self._tracked = set()

    def track(self, pid):
        pid = int(pid)
        if pid in self._tracked:
            return
        self._tracked.add(pid)
        self.addCleanup(os_helper.unlink, jitdump_path(pid))
        self.addCleanup(os_helper.unlink, map_path(pid))

    def run_child(self, code, *args, xoptions=(), timeout=CHILD_TIMEOUT):
        """Run code in a new interpreter with the options xoptions and the
        arguments args; return its stdout as text and its pids (its own
        first)."""
        code = CHILD_PREAMBLE + textwrap.dedent(code)
        env = dict(os.environ)
        for name in PERF_ENV_VARS:
            env.pop(name, None)
        proc = script_helper.spawn_python(
            *xoptions, "-c", code, *args,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self.track(proc.pid)
        with proc:
            try:
                out, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
                self.track_output(out)
                self.fail(f"child timed out after {timeout} s\n"
                          f"stdout:\n{out.decode(errors='replace')}\n"
                          f"stderr:\n{err.decode(errors='replace')}")
        pids = self.track_output(out)
        out = out.decode(errors="backslashreplace")
        err = err.decode(errors="backslashreplace")
        if proc.returncode != 0:
            self.fail(f"child exited with {proc.returncode}\n"
                      f"stdout:\n{out}\nstderr:\n{err}")
        self.assertEqual(pids[:1], [proc.pid])
        return out, pids

    def track_output(self, out):
        if isinstance(out, bytes):
            out = out.decode(errors="replace")
        pids = [int(pid) for pid in PID_LINE.findall(out)]
        for pid in pids:
            self.track(pid)
        return pids

    def read_map(self, pid):
        with open(map_path(pid), "rb") as f:
            return f.read()

    def map_lines(self, pid, pattern=ANY_MAP_LINE):
        """The lines of the map of pid, checked to be whole and
        well-formed."""
        data = self.read_map(pid)
        if not data:
            return []
        self.assertTrue(data.endswith(b"\n"),
                        f"{map_path(pid)} ends with {data[-80:]!r}")
        lines = data[:-1].split(b"\n")
        bad = [line for line in lines if not pattern.fullmatch(line)]
        self.assertEqual(bad[:10], [], f"{len(bad)} malformed lines in "
                                       f"{map_path(pid)}")
        return lines

    def entries_named(self, lines, name):
        return [line for line in lines if line.split(b" ", 2)[2] == name]

    def the_entry(self, lines, name):
        """The one line for name."""
        found = self.entries_named(lines, name)
        self.assertEqual(len(found), 1, f"{name!r}: {found}")
        return found[0]


@support.requires_subprocess()
class CAPITests(PerfMapTestCase):
    """The C API through the hooks of _testinternalcapi."""

    def test_write_entry(self):
        _, (pid,) = self.run_child("""
            import _testinternalcapi as t
            assert t.perf_map_state_init() == 0
            assert t.write_perf_map_entry(0x1234, 0x56, "my_jit_func") == 0
            t.perf_map_state_fini()
        """)
        self.assertEqual(self.read_map(pid), b"1234 56 my_jit_func\n")
        st = os.stat(map_path(pid))
        self.assertTrue(stat.S_ISREG(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)
        self.assertEqual(st.st_uid, os.geteuid())

    def test_several_entries_in_order(self):
        _, (pid,) = self.run_child("""
            import _testinternalcapi as t
            assert t.perf_map_state_init() == 0
            for i in range(100):
                res = t.write_perf_map_entry(0x10000 + i * 0x100, i + 1,
                                             f"entry_{i}")
                assert res == 0, res
            t.perf_map_state_fini()
        """)
        expected = b"".join(
            b"%x %x entry_%d\n" % (0x10000 + i * 0x100, i + 1, i)
            for i in range(100))
        self.assertEqual(self.read_map(pid), expected)

    def test_extreme_values(self):
        _, (pid,) = self.run_child("""
            import _testinternalcapi as t
            assert t.write_perf_map_entry(0, 0, "zero") == 0
            assert t.write_perf_map_entry(2**64 - 1, 2**32 - 1, "max") == 0
            assert t.write_perf_map_entry(0xABCDEF, 0xFF, "upper") == 0
            assert t.write_perf_map_entry(0x10, 1, "long_" + "n" * 5000) == 0
            assert t.write_perf_map_entry(0x20, 2, "caf\\xe9 \\u20ac") == 0
            assert t.write_perf_map_entry(0x30, 3, "with spaces  in it") == 0
        """)
        self.assertEqual(self.read_map(pid),
                         b"0 0 zero\n"
                         b"ffffffffffffffff ffffffff max\n"
                         b"abcdef ff upper\n"
                         b"10 1 long_" + b"n" * 5000 + b"\n"
                         b"20 2 caf\xc3\xa9 \xe2\x82\xac\n"
                         b"30 3 with spaces  in it\n")

    def test_write_without_init(self):
        _, (pid,) = self.run_child("""
            import _testinternalcapi as t
            assert t.write_perf_map_entry(0xbeef, 0x8, "lazy") == 0
        """)
        self.assertEqual(self.read_map(pid), b"beef 8 lazy\n")

    def test_init_twice(self):
        _, (pid,) = self.run_child("""
            import os, _testinternalcapi as t
            assert t.perf_map_state_init() == 0
            assert t.perf_map_state_init() == 0
            assert os.path.getsize(f"/tmp/perf-{os.getpid()}.map") == 0
            assert t.write_perf_map_entry(0x1, 0x2, "one") == 0
            assert t.perf_map_state_init() == 0
            assert t.write_perf_map_entry(0x3, 0x4, "two") == 0
            t.perf_map_state_fini()
        """)
        self.assertEqual(self.read_map(pid), b"1 2 one\n3 4 two\n")

    def test_fini_then_write_appends(self):
        _, (pid,) = self.run_child("""
            import _testinternalcapi as t
            assert t.perf_map_state_init() == 0
            assert t.write_perf_map_entry(0xa, 0x1, "before_fini") == 0
            t.perf_map_state_fini()
            t.perf_map_state_fini()       # twice: harmless
            assert t.write_perf_map_entry(0xb, 0x2, "after_fini") == 0
            t.perf_map_state_fini()
            assert t.perf_map_state_init() == 0
            assert t.write_perf_map_entry(0xc, 0x3, "after_init") == 0
        """)
        self.assertEqual(self.read_map(pid),
                         b"a 1 before_fini\nb 2 after_fini\nc 3 after_init\n")

    def test_existing_map_is_appended_to(self):
        # A map that exists before the process writes is kept, never
        # truncated.
        _, (pid,) = self.run_child("""
            import os, _testinternalcapi as t
            path = f"/tmp/perf-{os.getpid()}.map"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, b"100 10 already_there\\n")
            os.close(fd)
            assert t.perf_map_state_init() == 0
            assert t.write_perf_map_entry(0x200, 0x20, "new") == 0
        """)
        self.assertEqual(self.read_map(pid),
                         b"100 10 already_there\n200 20 new\n")

    def test_control_characters_in_names(self):
        _, (pid,) = self.run_child(r"""
            import _testinternalcapi as t
            names = ["two\nlines", "tab\there", "cr\r", "del\x7f",
                     "\x01\x1f", "esc\x1b[31m"]
            for i, name in enumerate(names):
                assert t.write_perf_map_entry(i, 1, name) == 0
        """)
        self.assertEqual(self.read_map(pid),
                         b"0 1 two?lines\n"
                         b"1 1 tab?here\n"
                         b"2 1 cr?\n"
                         b"3 1 del?\n"
                         b"4 1 ??\n"
                         b"5 1 esc?[31m\n")

    def test_copy_perf_map_file(self):
        with tempfile.TemporaryDirectory() as tmp:
            source = os.path.join(tmp, "other.map")
            content = (b"aaa0 10 first\n"
                       b"bbb0 20 second with spaces\n"
                       b"ccc0 30 last_without_newline")
            with open(source, "wb") as f:
                f.write(content)
            _, (pid,) = self.run_child("""
                import sys, _testinternalcapi as t
                assert t.write_perf_map_entry(0x1, 0x1, "own") == 0
                assert t.copy_perf_map_file(sys.argv[1]) == 0
            """, source)
            # Lines are copied as they are; a last line without a newline
            # gets one, so that the next entry starts a line of its own.
            self.assertEqual(self.read_map(pid),
                             b"1 1 own\n" + content + b"\n")
            with open(source, "rb") as f:
                self.assertEqual(f.read(), content)

    def test_copy_large_perf_map_file(self):
        # More than the 64 KiB copy buffer, with a line longer than it.
        lines = [b"%x %x copied_%d" % (0x1000 + i, i % 200 + 1, i)
                 for i in range(6000)]
        lines.insert(3000, b"fff 1 huge_" + b"h" * 150_000)
        content = b"\n".join(lines) + b"\n"
        with tempfile.TemporaryDirectory() as tmp:
            source = os.path.join(tmp, "big.map")
            with open(source, "wb") as f:
                f.write(content)
            _, (pid,) = self.run_child("""
                import sys, _testinternalcapi as t
                assert t.perf_map_state_init() == 0
                assert t.copy_perf_map_file(sys.argv[1]) == 0
                assert t.write_perf_map_entry(0x2, 0x2, "after_copy") == 0
            """, source)
        self.assertEqual(self.read_map(pid), content + b"2 2 after_copy\n")

    def test_copy_missing_file(self):
        with tempfile.TemporaryDirectory() as tmp:
            missing = os.path.join(tmp, "missing.map")
            _, (pid,) = self.run_child("""
                import sys, _testinternalcapi as t
                assert t.copy_perf_map_file(sys.argv[1]) == -1
                assert t.write_perf_map_entry(0x5, 0x6, "still_works") == 0
                assert t.copy_perf_map_file(sys.argv[1]) == -1
                # a directory cannot be read
                assert t.copy_perf_map_file(sys.argv[2]) == -1
            """, missing, tmp)
        self.assertEqual(self.read_map(pid), b"5 6 still_works\n")

    def test_copy_own_map(self):
        # Copying the process's own map into itself must stop: either it
        # is refused, or what the map held when the copy began is appended
        # once.  A file size limit keeps a copy that never reaches the end
        # of its source (because it reads what it appends) from filling
        # /tmp.
        out, (pid,) = self.run_child("""
            import os, resource, signal, _testinternalcapi as t
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            path = f"/tmp/perf-{os.getpid()}.map"
            assert t.write_perf_map_entry(0x1, 0x1, "self_copy") == 0
            _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
            print(f"copy={t.copy_perf_map_file(path)}", flush=True)
        """)
        result = int(re.search(r"^copy=(-?\d+)$", out, re.M)[1])
        data = self.read_map(pid)
        line = b"1 1 self_copy\n"
        self.assertLessEqual(len(data), 2 * len(line),
                             f"copy returned {result} and the map grew to "
                             f"{len(data)} bytes (the file size limit)")
        # The copy is refused: the map cannot be its own parent.
        self.assertEqual(result, -1)
        self.assertEqual(data, line)

    def test_compile_trampoline_inactive_is_noop(self):
        _, (pid,) = self.run_child("""
            import os, sys, _testinternalcapi as t
            def not_compiled():
                pass
            assert not sys.is_stack_trampoline_active()
            assert t.compile_perf_trampoline(not_compiled.__code__) is None
            try:
                t.compile_perf_trampoline(not_compiled)
            except TypeError:
                pass
            else:
                raise AssertionError("TypeError not raised")
            assert not os.path.exists(f"/tmp/perf-{os.getpid()}.map")
        """)
        self.assertFalse(os.path.exists(map_path(pid)))

    def test_compile_trampoline_active(self):
        _, (pid,) = self.run_child("""
            import sys, _testinternalcapi as t
            def compiled_first():
                pass
            sys.activate_stack_trampoline("perf")
            t.compile_perf_trampoline(compiled_first.__code__)
            t.write_perf_map_entry(0x77, 0x7, "marker_after_compile")
            compiled_first()
            t.compile_perf_trampoline(compiled_first.__code__)
            sys.deactivate_stack_trampoline()
        """)
        lines = self.map_lines(pid)
        line = self.the_entry(lines, py_name("compiled_first"))
        # Described when compiled, before it ran; not again afterwards.
        self.assertLess(lines.index(line),
                        lines.index(b"77 7 marker_after_compile"))

    def test_interpreter_and_c_api_share_the_map(self):
        _, (pid,) = self.run_child("""
            import _testinternalcapi as t
            def first():
                pass
            def second():
                pass
            def third():
                pass
            first()
            assert t.write_perf_map_entry(0xaaa000, 0x10, "c_entry_1") == 0
            second()
            assert t.write_perf_map_entry(0xbbb000, 0x20, "c_entry_2") == 0
            # Closing the map under the interpreter's feet: it reopens it.
            t.perf_map_state_fini()
            third()
            assert t.write_perf_map_entry(0xccc000, 0x30, "c_entry_3") == 0
        """, xoptions=("-X", "perf"))
        lines = self.map_lines(pid)
        order = [
            self.the_entry(lines, py_name("first")),
            b"aaa000 10 c_entry_1",
            self.the_entry(lines, py_name("second")),
            b"bbb000 20 c_entry_2",
            self.the_entry(lines, py_name("third")),
            b"ccc000 30 c_entry_3",
        ]
        positions = [lines.index(line) for line in order]
        self.assertEqual(positions, sorted(positions))
        for line in lines:
            if line not in order[1::2]:
                self.assertRegex(line, PY_MAP_LINE)

    @support.requires_fork()
    def test_write_after_fork(self):
        # A forked child writes its own map, never its parent's.
        _, pids = self.run_child("""
            import os, _testinternalcapi as t
            assert t.write_perf_map_entry(0x1, 0x1, "parent_before") == 0
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    print(f"pid={os.getpid()}", flush=True)
                    assert t.write_perf_map_entry(0x2, 0x2, "child") == 0
                    code = 0
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0, status
            assert t.write_perf_map_entry(0x3, 0x3, "parent_after") == 0
        """)
        parent, child = pids
        self.assertEqual(self.read_map(parent),
                         b"1 1 parent_before\n3 3 parent_after\n")
        self.assertEqual(self.read_map(child), b"2 2 child\n")


@support.requires_subprocess()
@threading_helper.requires_working_threading()
class ThreadedWritersTests(PerfMapTestCase):
    """Threads of a C extension write entries without the GIL."""

    NTHREADS = 8
    COUNT = 2000

    @classmethod
    def setUpClass(cls):
        tmp = tempfile.mkdtemp()
        cls.addClassCleanup(os_helper.rmtree, tmp)
        cls.extension = build_writers_extension(tmp)

    def check_writer_lines(self, lines, tag):
        expected = expected_writer_lines(tag, self.NTHREADS, self.COUNT)
        prefix = f" {tag}_t".encode()
        written = [line for line in lines if prefix in line]
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
        lines = self.map_lines(pid)
        self.assertEqual(len(lines), self.NTHREADS * self.COUNT)
        self.check_writer_lines(lines, "cw")

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
        lines = self.map_lines(pid)
        self.check_writer_lines(lines, "cwpy")
        names = collections.Counter(line.split(b" ", 2)[2] for line in lines)
        for k, count in enumerate(made):
            for i in range(count):
                name = py_name(f"pyfn_{k}_{i}", "<gen>")
                self.assertEqual(names[name], 1, name)
        py_lines = [line for line in lines if b" cwpy_t" not in line]
        for line in py_lines:
            self.assertRegex(line, PY_MAP_LINE)
        if support.verbose:
            c_positions = [i for i, line in enumerate(lines)
                           if b" cwpy_t" in line]
            first, last = c_positions[0], c_positions[-1]
            between = sum(1 for line in lines[first:last]
                          if b" cwpy_t" not in line)
            print(f"\n    {sum(made)} Python functions made, "
                  f"{between} interpreter lines among the C threads' lines",
                  flush=True)


@support.requires_subprocess()
@support.requires_fork()
class ForkTests(PerfMapTestCase):
    """The trampolines and the map across os.fork()."""

    FORK_SCRIPT = """
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

    def test_persist_after_fork(self):
        _, (parent, child) = self.run_child(self.FORK_SCRIPT, "persist")
        parent_lines = self.map_lines(parent)
        child_lines = self.map_lines(child)
        # The child starts with a copy of the parent's map: what was
        # described before fork() is there, at the same place, and it is
        # not described a second time.
        for name in ("run_by_both", "compiled_only", "compiled_too"):
            with self.subTest(name=name):
                self.assertEqual(
                    self.the_entry(parent_lines, py_name(name)),
                    self.the_entry(child_lines, py_name(name)))
        self.the_entry(child_lines, py_name("child_only"))
        self.assertEqual(
            self.entries_named(child_lines, py_name("parent_only")), [])
        self.assertEqual(
            self.entries_named(parent_lines, py_name("child_only")), [])
        self.the_entry(parent_lines, py_name("parent_only"))

    def test_no_persist_after_fork(self):
        _, (parent, child) = self.run_child(self.FORK_SCRIPT, "no")
        parent_lines = self.map_lines(parent)
        child_lines = self.map_lines(child)
        # The child's map holds what the child ran, and only that.
        for name in ("compiled_only", "compiled_too", "parent_only"):
            with self.subTest(name=name):
                self.the_entry(parent_lines, py_name(name))
                self.assertEqual(
                    self.entries_named(child_lines, py_name(name)), [])
        self.the_entry(child_lines, py_name("child_only"))
        self.assertEqual(
            self.entries_named(parent_lines, py_name("child_only")), [])
        # Code that ran on both sides keeps its trampoline after fork().
        self.assertEqual(
            self.the_entry(parent_lines, py_name("run_by_both")),
            self.the_entry(child_lines, py_name("run_by_both")))


# The stress child: 4 threads call generated functions while the main thread
# activates and deactivates the trampoline, switches backends and forks.
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
            try:
                sys.activate_stack_trampoline(backend)
            except RuntimeError as exc:
                if backend != "perf_jit" or "not implemented" not in str(exc):
                    raise
                backends = ["perf"]
                sys.activate_stack_trampoline("perf")
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
    print(f"cycles={cycles} forks={forks} calls={sum(calls)} "
          f"backends={'+'.join(backends)}", flush=True)
"""


@support.requires_subprocess()
@support.requires_fork()
@threading_helper.requires_working_threading()
class StressTests(PerfMapTestCase):

    def test_activate_switch_and_fork_under_load(self):
        start = time.monotonic()
        out, pids = self.run_child(STRESS_SCRIPT)
        elapsed = time.monotonic() - start
        summary = re.search(r"^cycles=.*$", out, re.M)
        self.assertIsNotNone(summary, out)
        summary = summary[0]
        if support.verbose:
            print(f"\n    {summary} ({elapsed:.1f} s)", flush=True)
        counts = dict(item.split("=") for item in summary.split())
        self.assertEqual(counts["cycles"], "10000")
        self.assertEqual(counts["forks"], "50")
        self.assertGreater(int(counts["calls"]), 0)
        parent, children = pids[0], pids[1:]
        self.assertEqual(len(children), 50)

        child_funcs = {py_name(f"gen_{i}", "<stress>") for i in range(50)}
        for pid in pids:
            with self.subTest(pid=pid):
                named = set()
                if os.path.exists(map_path(pid)):
                    lines = self.map_lines(pid, PY_MAP_LINE)
                    named.update(line.split(b" ", 2)[2] for line in lines)
                if os.path.exists(jitdump_path(pid)):
                    with open(jitdump_path(pid), "rb") as f:
                        data = f.read()
                    try:
                        named.update(walk_jitdump(data, pid))
                    except JitdumpError as exc:
                        self.fail(f"{jitdump_path(pid)}: {exc}")
                if pid == parent:
                    self.assertIn(py_name("gen_0", "<stress>"), named)
                else:
                    # What the child ran is named in its own output.
                    self.assertLessEqual(child_funcs, named)


@support.requires_subprocess()
class SubinterpreterTests(PerfMapTestCase):
    """The trampoline hook belongs to one interpreter."""

    # Run in the subinterpreter; formatted with the arguments of
    # run_subinterp().
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

    SCRIPT = """
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

    def run_subinterp(self, main_active, sub_backend, sub_deactivates=True):
        with tempfile.TemporaryDirectory() as tmp:
            result_file = os.path.join(tmp, "result.json")
            sub_code = self.SUBINTERP_CODE.format(
                backend=sub_backend, deactivate=sub_deactivates,
                result_file=result_file)
            out, (pid,) = self.run_child(
                self.SCRIPT, sub_code, result_file,
                "yes" if main_active else "no")
        result = json.loads(re.search(r"^result=(.*)$", out, re.M)[1])
        return pid, result

    def test_main_active(self):
        pid, result = self.run_subinterp(True, "perf")
        self.assertEqual(result, {
            "main_before": True, "main_after": True,
            "active_at_start": False, "active": True, "active_at_end": False,
        })
        lines = self.map_lines(pid)
        self.the_entry(lines, py_name("sub_func"))
        self.the_entry(lines, py_name("main_func"))
        self.the_entry(lines, py_name("after_reactivation"))
        self.assertFalse(os.path.exists(jitdump_path(pid)))

    def test_main_inactive(self):
        pid, result = self.run_subinterp(False, "perf")
        self.assertEqual(result, {
            "main_before": False, "main_after": False,
            "active_at_start": False, "active": True, "active_at_end": False,
        })
        lines = self.map_lines(pid)
        self.the_entry(lines, py_name("sub_func"))
        # main_func() ran with the main interpreter inactive.
        self.assertEqual(self.entries_named(lines, py_name("main_func")), [])
        self.the_entry(lines, py_name("after_reactivation"))

    def test_other_backend_refused_while_main_active(self):
        pid, result = self.run_subinterp(True, "perf_jit")
        error = result.pop("error", None)
        self.assertEqual(result, {
            "main_before": True, "main_after": True,
            "active_at_start": False, "active": False,
            "active_at_end": False,
        })
        self.assertIsNotNone(error)
        self.assertIn("perf_jit", error)
        self.assertIn("another interpreter", error)
        lines = self.map_lines(pid)
        self.assertEqual(self.entries_named(lines, py_name("sub_func")), [])
        self.the_entry(lines, py_name("main_func"))
        self.assertFalse(os.path.exists(jitdump_path(pid)))

    def test_other_backend_allowed_while_main_inactive(self):
        # The subinterpreter ends with perf_jit active; the main
        # interpreter switches back to perf afterwards.
        pid, result = self.run_subinterp(False, "perf_jit",
                                         sub_deactivates=False)
        self.assertEqual(result, {
            "main_before": False, "main_after": False,
            "active_at_start": False, "active": True, "active_at_end": True,
        })
        with open(jitdump_path(pid), "rb") as f:
            names = walk_jitdump(f.read(), pid)
        self.assertIn(py_name("sub_func"), names)
        lines = self.map_lines(pid)
        self.the_entry(lines, py_name("after_reactivation"))


if __name__ == "__main__":
    unittest.main()
