"""The perf map (/tmp/perf-PID.map): names and format, os.fork() with and
without persistence (C API), threads, a C extension writing entries from
threads without the GIL, and activation, backend switches and fork() under
load."""

import collections
import os
import re
import shutil
import stat
import subprocess
import sysconfig
import tempfile
import textwrap
import unittest

from test import support
from test.support import import_helper, os_helper, threading_helper
from test.test_perf_profiler.util import (
    CONTROL_NAMES_SCRIPT, PERF_TIMEOUT, PY_NAME, SUBPROCESS_TIMEOUT,
    PerfTestCase, entry_name, jitdump_path, map_path)


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
        script = self.make_script(CONTROL_NAMES_SCRIPT)
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


# ---- Interpreters the standard library starts ------------------------------

# A worker started by multiprocessing with the method given as argument; it
# sends its pid back through a pipe (no semaphore: no resource tracker for
# spawn).  Every helper interpreter reports its pid as "pid=N", so that the
# test removes its files.
MULTIPROCESSING_SCRIPT = """\
import multiprocessing, os, subprocess, sys

def in_worker(conn):
    conn.send(os.getpid())
    conn.close()

if __name__ == "__main__":
    ctx = multiprocessing.get_context(sys.argv[1])
    recv, send = ctx.Pipe(duplex=False)
    worker = ctx.Process(target=in_worker, args=(send,))
    worker.start()
    print(f"pid={recv.recv()}", flush=True)
    worker.join()
    from multiprocessing import forkserver, resource_tracker
    for helper in (forkserver._forkserver._forkserver_pid,
                   resource_tracker._resource_tracker._pid):
        if helper is not None:
            print(f"pid={helper}", flush=True)
    print("exit", worker.exitcode)
    print("args", subprocess._args_from_interpreter_flags())
"""


@support.requires_fork()
class TestStartedInterpreters(PerfTestCase):
    """-X perf and -X perf_jit reach the interpreters that multiprocessing
    starts with spawn and forkserver, as -X dev does."""

    def run_workers(self, method, *xoptions):
        script = self.make_script(MULTIPROCESSING_SCRIPT)
        res = self.run_ok(*xoptions, script, method)
        out = res.out.decode()
        self.assertIn("exit 0", out)
        worker = int(re.search(r"pid=(\d+)", out).group(1))
        return out, worker, script

    def check_named(self, method):
        out, worker, script = self.run_workers(method, "-X", "perf")
        self.assertIn("'-X', 'perf'", out)
        self.assertNamedOnce(self.read_map(worker), "in_worker",
                             filename=script)

    def test_spawn(self):
        self.check_named("spawn")

    def test_forkserver(self):
        self.check_named("forkserver")

    def test_spawn_perf_jit(self):
        out, worker, script = self.run_workers("spawn", "-X", "perf_jit")
        self.assertIn("'-X', 'perf_jit'", out)
        self.assertIn(entry_name("in_worker", script),
                      self.jitdump_names(worker))
        self.assertNoMap(worker)

    def test_last_option_wins(self):
        # As in the parent, the last of -X perf and -X perf_jit wins.
        out, worker, script = self.run_workers("spawn", "-X", "perf_jit",
                                               "-X", "perf")
        self.assertNamedOnce(self.read_map(worker), "in_worker",
                             filename=script)
        self.assertNoJitdump(worker)
        out, worker, script = self.run_workers("spawn", "-X", "perf_jit=0",
                                               "-X", "perf")
        self.assertNamedOnce(self.read_map(worker), "in_worker",
                             filename=script)

    def test_not_asked(self):
        out, worker, script = self.run_workers("spawn")
        self.assertNotIn("perf", out)
        self.assertNoMap(worker)


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
                if self.written(map_path(pid)):
                    named.update(self.read_map(pid).names())
                if self.written(jitdump_path(pid)):
                    named.update(self.jitdump_names(pid))
                if pid == parent:
                    self.assertIn(entry_name("gen_0", "<stress>"), named)
                else:
                    # What the child ran is named in its own output.
                    self.assertLessEqual(child_funcs, named)


if __name__ == "__main__":
    unittest.main()
