#!/usr/bin/env python3
"""Flame graphs (Tools/perfsupport/flamegraph.py) checked on real recordings
and in a real browser.

    python3 Tools/perfsupport/test_flamegraph.py [-v]

Records, with perf, the demo (Tools/perfsupport/demo.py) under
build/fp/python -X perf and perf record -g, and under build/nofp/python
-X perf_jit, perf record --call-graph dwarf and perf inject --jit, and a
script whose time goes to C code (sorted() with a Python key, math, json);
writes both views and the Firefox Profiler file of each recording; then
checks:

- Python view: every stack that reaches py::foo reads exactly py::<module>,
  py::baz, py::bar, py::foo (-X perf and -X perf_jit); no evaluation-loop or
  call-protocol frame sits between two Python frames; the C functions show
  under the Python function that called them (math_factorial under
  py::math_work; builtin_sorted under py::sort_work, and py::key under it;
  _json's encoder under json's Python code);
- native view: the interpreter frames are there (py::bar ->
  _PyEval_EvalFrameDefault -> py::foo), and the tree is the one perf's
  "perf script report flamegraph -f json" writes;
- names: JSON in the page holds no raw "<", ">", "&", U+2028, U+2029; a
  script whose functions are named to attack the page ("</script><script>",
  "<!--<script>", names that are not UTF-8), under -X perf and -X perf_jit,
  shows every name in both views, and in headless Chromium no script of a
  name runs (no data-pwned attribute) and the graph is drawn;
- the Firefox Profiler file holds the samples and the py:: names;
- the HTML needs nothing from the network and, loaded in headless Chromium
  with the network disabled (a network namespace of its own when it can have
  one), the page's own search for py::foo highlights frames that the DOM
  places right above a py::bar frame; a screenshot goes to
  build/flamegraph-test/demo-python.png.

Everything is written to build/flamegraph-test/; the /tmp files of the
profiled processes (perf maps, jitdumps, jitted-*.so) are removed at the end,
by pid.  A missing tool (perf, npm, Chromium, build/nofp/python) skips the
tests that need it, or fails them when PERF_TESTS_REQUIRE_TOOLS=1.
"""

import glob
import html.parser
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import flamegraph as fg  # noqa: E402

BUILD = os.path.abspath(os.environ.get("PS_BUILD", os.path.join(fg.TOP,
                                                               "build")))
WORK = os.path.join(BUILD, "flamegraph-test")
FP_PYTHON = os.path.join(BUILD, "fp", "python")
NOFP_PYTHON = os.path.join(BUILD, "nofp", "python")
REQUIRE_TOOLS = os.environ.get("PERF_TESTS_REQUIRE_TOOLS") == "1"
DEMO = os.path.join(HERE, "demo.py")

# Time in C code called from Python: a sort with a Python key, big-integer
# work in math, json's C encoder and decoder.
NATIVE_SCRIPT = """\
import json, math

def key(x):
    return -x

def sort_work(data):
    for _ in range(15):
        sorted(data, key=key)

def math_work():
    for _ in range(60):
        math.factorial(4000)

def json_work(obj):
    for _ in range(40):
        json.loads(json.dumps(obj))

def main():
    sort_work(list(range(20000)))
    math_work()
    json_work([{"a": i, "b": [str(i)] * 5} for i in range(2000)])

main()
"""

# Functions whose names are a page's worst enemies: one that ends the
# <script> element and runs its own script, one that hides the end of the
# element from the HTML parser, JavaScript line terminators and entities,
# one that is not UTF-8 (its qualname's lone surrogates become the bytes
# 0xff 0xfe in the perf map and the jitdump), and one with control
# characters that would read, in perf script's output, as frames and a
# sample of their own.
PWN = ("</script><script>document.documentElement"
       ".setAttribute('data-pwned','yes')</script>")
FAKE = "ctl\n\t    7f0000 FAKE_FRAME (/x)\n\nROOT_FAKE 1/1\x1b"
HOSTILE_NAMES = (PWN, "<!--<script>", "a\u2028b\u2029c&amp;>",
                 "bad\udcff\udcfename", FAKE)
# How perf script shows them (bytes that are not UTF-8 read as U+FFFD,
# control characters replaced by '?' by the interpreter).
HOSTILE_SHOWN = ("py::" + PWN, "py::<!--<script>", "py::a\u2028b\u2029c&amp;>",
                 "py::bad\ufffd\ufffdname",
                 "py::ctl??    7f0000 FAKE_FRAME (/x)??ROOT_FAKE 1/1?")
HOSTILE_SCRIPT = f"""\
def spin():
    t = 0
    for i in range(1500000):
        t += i
    return t

def named(name):
    def f():
        return spin()
    f.__code__ = f.__code__.replace(co_name=name, co_qualname=name)
    return f

for name in {HOSTILE_NAMES!r}:
    named(name)()
"""

# Frames that must never sit between two Python frames in the Python view.
CALL_FRAMES = {"_PyEval_EvalFrameDefault", "_PyEval_EvalFrame",
               "_PyEval_Vector", "PyEval_EvalCode", "PyObject_Vectorcall",
               "_PyFunction_Vectorcall", "_PyObject_MakeTpCall",
               "PyObject_CallOneArg", "call_pushed_frame",
               "_PyPerfTrampoline_EvalFrame",
               "cfunction_vectorcall_FASTCALL_KEYWORDS"}


def missing(what):
    if REQUIRE_TOOLS:
        raise AssertionError(f"{what} (PERF_TESTS_REQUIRE_TOOLS=1)")
    raise unittest.SkipTest(what)


def qualname(frame):
    """py::bar:/path/demo.py -> py::bar; other names unchanged."""
    if frame.startswith("py::"):
        return "py::" + frame[4:].split(":", 1)[0]
    return frame


def tree_of(path):
    """The tree a flame graph HTML file shows (perf's JSON form)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    m = re.search(r"const stacks = \[(.*)\];\n\s*const options", text, re.S)
    return json.loads(m.group(1))


def nodes(tree, path=()):
    """(path from the root, node) for every node: names root first."""
    path = path + (tree["n"],)
    yield path, tree
    for c in tree["c"]:
        yield from nodes(c, path)


def total(node):
    return node["v"] + sum(total(c) for c in node["c"])


def below_python(path):
    """The frames of PATH from its last py:: frame before the leaf on (the
    leaf's nearest Python caller first), or None without one."""
    for i in range(len(path) - 2, -1, -1):
        if path[i].startswith("py::"):
            return path[i:]
    return None


class Recording:
    """One perf recording and its flame graphs, made once."""

    pids = set()

    def __init__(self, name, python, script, jit=False, ok=(0,)):
        self.name = name
        self.ok = (*ok, fg.UNAVAILABLE)
        os.makedirs(WORK, exist_ok=True)
        raw = os.path.join(WORK, f"{name}.raw.data" if jit else
                           f"{name}.data")
        if jit:
            rec = ["-F", "499", "-k", "1", "--call-graph", "dwarf,65528"]
            opt = "perf_jit"
        else:
            rec = ["-F", "999", "-g"]
            opt = "perf"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("PYTHON")}
        subprocess.run(["perf", "record", "-q", *rec, "-o", raw, "--",
                        python, "-X", opt, script],
                       check=True, env=env, stdout=subprocess.DEVNULL,
                       cwd=WORK)
        out = subprocess.run(["perf", "script", "-i", raw, "-F", "pid"],
                             check=True, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True).stdout
        Recording.pids.update(int(p) for p in out.split())
        self.data = raw
        if jit:
            self.data = os.path.join(WORK, f"{name}.data")
            subprocess.run(["perf", "inject", "--jit", "-i", raw, "-o",
                            self.data], check=True, cwd=WORK,
                           stdout=subprocess.DEVNULL)
        self.status = fg.main(["--view", "both", "--build", BUILD,
                               self.data])
        self.python_html = os.path.join(WORK, f"{name}-python.html")
        self.native_html = os.path.join(WORK, f"{name}-native.html")
        self.gecko = os.path.join(WORK, f"{name}-gecko.json")

    def require_html(self):
        if self.status == fg.UNAVAILABLE:
            missing("the flame graph renderer could not be installed (npm)")
        self.assert_ok()

    def assert_ok(self):
        if self.status not in self.ok:
            raise AssertionError(f"flamegraph.py exited {self.status}")

    @classmethod
    def clean_tmp(cls):
        for pid in cls.pids:
            for f in [f"/tmp/perf-{pid}.map", f"/tmp/jit-{pid}.dump",
                      *glob.glob(f"/tmp/jitted-{pid}-*.so")]:
                if os.path.lexists(f):
                    os.unlink(f)


_recordings = {}


def recording(name):
    """The recording NAME (demo_fp, native_fp, demo_jit, hostile_fp,
    hostile_jit), made on first use."""
    if name not in _recordings:
        if shutil.which("perf") is None:
            missing("perf is not installed")
        native_calls = os.path.join(WORK, "native_calls.py")
        hostile = os.path.join(WORK, "hostile_names.py")
        python, script, jit = {
            "demo_fp": (FP_PYTHON, DEMO, False),
            "native_fp": (FP_PYTHON, native_calls, False),
            "demo_jit": (NOFP_PYTHON, DEMO, True),
            "hostile_fp": (FP_PYTHON, hostile, False),
            "hostile_jit": (NOFP_PYTHON, hostile, True),
        }[name]
        if not os.access(python, os.X_OK):
            missing(f"no {python} (make build"
                    f"{' FRAME_POINTERS=no' if jit else ''})")
        text = {native_calls: NATIVE_SCRIPT, hostile: HOSTILE_SCRIPT}
        if script in text:
            os.makedirs(WORK, exist_ok=True)
            with open(script, "w", encoding="utf-8") as f:
                f.write(text[script])
        # perf's gecko script (perf 6.12) crashes on the name that is not
        # UTF-8: the flame graphs must be written all the same.
        ok = (0, fg.GECKO_FAILED) if script == hostile else (0,)
        try:
            _recordings[name] = Recording(name, python, script, jit, ok)
        except subprocess.CalledProcessError as e:
            _recordings[name] = e
    rec = _recordings[name]
    if isinstance(rec, Exception):
        raise AssertionError(f"recording {name} failed: {rec}")
    return rec


def setUpModule():
    # Outputs of an earlier run must not pass for this run's.
    shutil.rmtree(WORK, ignore_errors=True)


def tearDownModule():
    Recording.clean_tmp()


class FoldTest(unittest.TestCase):
    """fold_python() on stacks written by hand (no perf needed)."""

    PY = "/work/build/fp/python"

    def test_interpreter_frames_between_python_frames_go(self):
        py, m = self.PY, "/tmp/perf-1.map"
        stack = [("__libc_start_call_main", "/lib/libc.so.6"),
                 ("Py_BytesMain", py), ("PyEval_EvalCode", py),
                 ("py::<module>:/a.py", m),
                 ("_PyEval_EvalFrameDefault", py),
                 ("PyObject_Vectorcall", py),
                 ("cfunction_vectorcall_FASTCALL_KEYWORDS", py),
                 ("builtin_sorted", py), ("list_sort_impl", py),
                 ("PyObject_CallOneArg", py), ("_PyEval_Vector", py),
                 ("_PyPerfTrampoline_EvalFrame", py),
                 ("eval_frame_slow_path.constprop.0", py),
                 ("py::key:/a.py", m), ("_PyEval_EvalFrameDefault", py),
                 ("long_neg", py), ("_PyObject_Malloc", py)]
        self.assertEqual([s for s, _ in fg.fold_python(stack)],
                         ["py::<module>:/a.py", "builtin_sorted",
                          "list_sort_impl", "py::key:/a.py", "long_neg",
                          "_PyObject_Malloc"])

    def test_frames_of_other_libraries_stay(self):
        # An extension's function is kept even if its name looks like the
        # interpreter's call machinery.
        ext = "/x/_ext.cpython-311-x86_64-linux-gnu.so"
        stack = [("py::f:/a.py", "/tmp/perf-1.map"),
                 ("_PyEval_EvalFrameDefault", "/usr/lib/libpython3.11.so.1.0"),
                 ("slot_compute", ext), ("sqrt", "/lib/libm.so.6")]
        self.assertEqual([s for s, _ in fg.fold_python(stack)],
                         ["py::f:/a.py", "slot_compute", "sqrt"])

    def test_stack_without_python_frame_stays_whole(self):
        stack = [("_start", self.PY), ("Py_BytesMain", self.PY),
                 ("_PyEval_EvalFrameDefault", self.PY)]
        self.assertEqual(fg.fold_python(stack), stack)

    def test_perf_script_text(self):
        text = [
            "python    4307/4307    \n",
            "\t    5566a05e9e23 _PyObject_Malloc (/b/python)\n",
            "\t    7f30a3148616 py::key:/a b (1).py (/tmp/perf-4307.map)\n",
            "\t    55bd2177b4f3 call_pushed_frame (inlined)\n",
            "\t    55bd2177b4f3 _PyEval_EvalFrameDefault (/b/python)\n",
            "\n",
            "Thread 2    4307/4310     7f00 [unknown] ([unknown])\n",
        ]
        self.assertEqual(list(fg.parse_samples(text)), [
            ("python", 4307, [("_PyEval_EvalFrameDefault", "/b/python"),
                              ("call_pushed_frame", "/b/python"),
                              ("py::key:/a b (1).py", "/tmp/perf-4307.map"),
                              ("_PyObject_Malloc", "/b/python")]),
            ("Thread 2", 4307, [("[unknown]", "[unknown]")])])

    def test_inlined_frames_take_their_function_s_dso(self):
        frames = [("pymalloc_free", "inlined"), ("_PyObject_Free", "/p"),
                  ("call_pushed_frame", "inlined"),
                  ("_PyEval_EvalFrameDefault", "/p")]
        self.assertEqual(fg.root_first(frames),
                         [("_PyEval_EvalFrameDefault", "/p"),
                          ("call_pushed_frame", "/p"),
                          ("_PyObject_Free", "/p"), ("pymalloc_free", "/p")])


class EmbedTest(unittest.TestCase):
    """Names reach the page as JSON strings they cannot leave (no perf
    needed)."""

    NAMES = ["</script><script>alert(1)</script>", "<!--<script>",
             "</SCRIPT >", "-->", "]]>", "&lt;", "a\u2028b\u2029c",
             "\ufffd\u00e9\U0001f600", "\"quoted\" \\ back"]
    UNSAFE = ("<", ">", "&", "\u2028", "\u2029")

    def test_script_json(self):
        tree = {"n": "all", "l": "root", "v": 0,
                "c": [{"n": n, "l": "", "v": 1, "c": []} for n in self.NAMES]}
        text = fg.script_json(tree)
        for c in self.UNSAFE:
            self.assertNotIn(c, text)
        self.assertEqual(json.loads(text), tree)

    def test_fill_template(self):
        template = os.path.join(WORK, "embed-template.html")
        os.makedirs(WORK, exist_ok=True)
        with open(template, "w", encoding="utf-8") as f:
            f.write("<title>Flame Graph</title><script>\n"
                    "const stacks = [/** @flamegraph_json **/];\n"
                    "const options = [/** @options_json **/];\n"
                    "</script>\n")
        try:
            tree = {"n": "all", "l": "root", "v": 0,
                    "c": [{"n": n, "l": "", "v": 1, "c": []}
                          for n in self.NAMES]}
            options = {"colorscheme": "blue-green",
                       "context": "# cmdline : " + " ".join(self.NAMES)}
            page = fg.fill_template(template, tree, options,
                                    "<!--<script> & </title>")
        finally:
            os.unlink(template)
        body = page.split("<script>\n", 1)[1].rsplit("\n</script>", 1)[0]
        for c in self.UNSAFE:
            self.assertNotIn(c, body)
        m = re.fullmatch(r"const stacks = \[(.*)\];\n"
                         r"const options = \[(.*)\];", body)
        self.assertEqual(json.loads(m.group(1)), tree)
        self.assertEqual(json.loads(m.group(2)), options)
        self.assertIn("<title>&lt;!--&lt;script&gt; &amp; &lt;/title&gt;"
                      "</title>", page)


class PythonViewTest(unittest.TestCase):

    def check_demo(self, name):
        rec = recording(name)
        rec.require_html()
        tree = tree_of(rec.python_html)
        samples = 0
        for path, node in nodes(tree):
            if not qualname(path[-1]) == "py::foo":
                continue
            # path: all, "python (PID)", then the stack.
            self.assertEqual([qualname(f) for f in path[2:]],
                             ["py::<module>", "py::baz", "py::bar",
                              "py::foo"], path)
            samples += total(node)
        self.assertGreaterEqual(samples, 10, "too few samples in py::foo")

    def test_demo_perf_map(self):
        self.check_demo("demo_fp")

    def test_demo_jitdump(self):
        self.check_demo("demo_jit")

    def test_no_call_frame_between_python_frames(self):
        for name in ("demo_fp", "native_fp", "demo_jit"):
            with self.subTest(name):
                rec = recording(name)
                rec.require_html()
                for path, _ in nodes(tree_of(rec.python_html)):
                    if not path[-1].startswith("py::"):
                        continue
                    between = below_python(path)
                    if between is None:
                        continue
                    bad = CALL_FRAMES & {fg.SUFFIX_RE.sub("", f)
                                         for f in between[1:-1]}
                    self.assertFalse(bad, path)

    def test_c_functions_under_their_python_caller(self):
        rec = recording("native_fp")
        rec.require_html()
        found = set()
        for path, node in nodes(tree_of(rec.python_html)):
            leaf = fg.SUFFIX_RE.sub("", path[-1])
            chain = below_python(path)
            if chain is None:
                continue
            caller = qualname(chain[0])
            if leaf == "math_factorial" and caller == "py::math_work":
                found.add("math")
            if leaf == "builtin_sorted" and caller == "py::sort_work":
                found.add("sorted")
            if (qualname(leaf) == "py::key" and caller == "py::sort_work"
                    and "builtin_sorted" in chain):
                found.add("key under sorted")
            if (re.match(r"(encoder|scanner|scan_once|py_encode)", leaf)
                    and caller.startswith("py::JSON")):
                found.add("json")
        self.assertEqual(found, {"math", "sorted", "key under sorted",
                                 "json"})


class NativeViewTest(unittest.TestCase):

    def test_interpreter_frames_are_kept(self):
        rec = recording("demo_fp")
        rec.require_html()
        chains = {tuple(qualname(f) for f in path[-3:])
                  for path, _ in nodes(tree_of(rec.native_html))}
        self.assertIn(("py::bar", "_PyEval_EvalFrameDefault", "py::foo"),
                      chains)


    def test_tree_is_perfs_own(self):
        # The native tree is the one perf's "perf script report flamegraph
        # -f json" writes from the same recording.
        for name in ("demo_fp", "native_fp", "demo_jit"):
            with self.subTest(name):
                rec = recording(name)
                rec.require_html()
                out = os.path.join(WORK, f"{name}-perf-stacks.json")
                fg.perf_report_script(rec.data, "flamegraph",
                                      ["-f", "json", "-o", out], out)
                with open(out, encoding="utf-8") as f:
                    perfs = json.load(f)
                os.unlink(out)
                self.assertEqual(tree_of(rec.native_html), perfs)


class HostileNamesTest(unittest.TestCase):
    """Names that a program chooses are drawn as they are, in both views,
    under -X perf and -X perf_jit, including names that are not UTF-8."""

    def test_names_in_both_views(self):
        for name in ("hostile_fp", "hostile_jit"):
            rec = recording(name)
            rec.require_html()
            for page in (rec.python_html, rec.native_html):
                with self.subTest(name=name, page=os.path.basename(page)):
                    shown = {f.rsplit(":", 1)[0] for path, _ in
                             nodes(tree_of(page)) for f in path
                             if f.startswith("py::")}
                    for n in HOSTILE_SHOWN:
                        self.assertIn(n, shown)
                    invented = [path for path, _ in nodes(tree_of(page))
                                if re.match(r"(FAKE_FRAME|ROOT_FAKE)",
                                            path[-1])]
                    self.assertEqual(invented, [])


class GeckoTest(unittest.TestCase):

    def test_gecko_profile(self):
        rec = recording("demo_fp")
        rec.assert_ok()
        with open(rec.gecko) as f:
            profile = json.load(f)
        threads = profile["threads"]
        self.assertTrue(threads)
        self.assertGreater(sum(len(t["samples"]["data"]) for t in threads),
                           10)
        names = [s for t in threads for s in t["stringTable"]]
        self.assertTrue(any(s.startswith("py::foo:") for s in names))


class FrameBoxes(html.parser.HTMLParser):
    """The <g class="frame"> elements of a dumped page: name, position,
    width, and the fill of their rectangle; and the elements that carry a
    data-pwned attribute."""

    def __init__(self):
        super().__init__()
        self.frames = []
        self.pwned = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "data-pwned" in a:
            self.pwned.append(tag)
        if tag == "g" and "frame" in (a.get("class") or "").split():
            x, y = re.match(r"translate\(([-\d.e]+),\s*([-\d.e]+)\)",
                            a["transform"]).groups()
            self.frames.append({"name": a.get("name", ""), "x": float(x),
                                "y": float(y), "w": float(a["width"]),
                                "h": float(a.get("height", 0)),
                                "fill": None})
        elif tag == "rect" and self.frames and self.frames[-1]["fill"] is None:
            self.frames[-1]["fill"] = a.get("fill")


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def offline_prefix():
    """unshare -n (a network namespace with nothing in it) where we may."""
    if shutil.which("unshare") and subprocess.run(
            ["unshare", "-n", "true"], stderr=subprocess.DEVNULL).returncode == 0:
        return ["unshare", "-n"]
    if shutil.which("unshare") and subprocess.run(
            ["unshare", "-rn", "true"], stderr=subprocess.DEVNULL).returncode == 0:
        return ["unshare", "-rn"]
    return []


def run_chromium(args, page):
    """Headless Chromium on PAGE with a fresh profile, network off: no
    namespace network, no name resolution, a dead proxy."""
    os.makedirs(WORK, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-profile.",
                                     dir=WORK) as profile:
        cmd = [*offline_prefix(), chromium(), "--headless", "--no-sandbox",
               "--disable-gpu", "--disable-quic", "--no-first-run",
               "--hide-scrollbars", "--disable-background-networking",
               "--disable-component-update", "--disable-sync",
               "--disable-extensions",
               "--host-resolver-rules=MAP * ~NOTFOUND",
               "--proxy-server=127.0.0.1:9", f"--user-data-dir={profile}",
               "--virtual-time-budget=5000", *args,
               "file://" + os.path.abspath(page)]
        return subprocess.run(cmd, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              errors="replace", timeout=120)


def screenshot(page, png, width=1200):
    """PNG of PAGE, as tall as its flame graph (read from the page's DOM)."""
    png = os.path.abspath(png)
    dom = run_chromium([f"--window-size={width},800", "--dump-dom"],
                       page).stdout
    m = re.search(r'<svg[^>]*class="[^"]*d3-flame-graph[^>]*>', dom)
    h = m and re.search(r'\sheight="(\d+)', m.group(0))
    height = (int(h.group(1)) if h else 800) + 60
    proc = run_chromium([f"--window-size={width},{height}",
                         f"--screenshot={png}"], page)
    if not os.path.exists(png):
        raise AssertionError(f"no screenshot: {proc.stderr[-2000:]}")


class BrowserTest(unittest.TestCase):

    def test_html_needs_no_network(self):
        rec = recording("demo_fp")
        rec.require_html()
        for page in (rec.python_html, rec.native_html):
            with open(page, encoding="utf-8") as f:
                text = f.read()
            refs = re.findall(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""",
                              text, re.I)
            self.assertEqual(refs, [], page)

    def test_search_in_headless_chromium(self):
        rec = recording("demo_fp")
        rec.require_html()
        if chromium() is None:
            missing("Chromium is not installed (apt-get install chromium)")
        # The page as is, plus what a user does: type py::foo in the search
        # box and press Enter (the page's own search handler runs).
        probe = os.path.join(WORK, "search-probe.html")
        with open(rec.python_html, encoding="utf-8") as f:
            text = f.read()
        typing = ("<script>document.getElementById('search-input').value ="
                  " 'py::foo';document.getElementById('search-form')"
                  ".requestSubmit();</script></body>")
        with open(probe, "w", encoding="utf-8") as f:
            f.write(text.replace("</body>", typing, 1))
        proc = run_chromium(["--dump-dom"], probe)
        boxes = FrameBoxes()
        boxes.feed(proc.stdout)
        frames = boxes.frames
        self.assertTrue(frames, "no flame graph frame in the page:"
                        f" {proc.stderr[-2000:]}")
        hits = [f for f in frames if f["name"].startswith("py::foo:")
                and (f["fill"] or "").upper() == "#E600E6"]
        self.assertTrue(hits, "the search did not highlight py::foo")
        bars = [f for f in frames if f["name"].startswith("py::bar:")]
        for foo in hits:
            # Flame graphs grow upwards: the caller is one row below.
            self.assertTrue(any(
                abs(bar["y"] - (foo["y"] + foo["h"])) < 0.5
                and bar["x"] - 0.5 <= foo["x"]
                and foo["x"] + foo["w"] <= bar["x"] + bar["w"] + 0.5
                for bar in bars), f"py::foo at {foo} is not inside py::bar")
        png = os.path.join(WORK, "demo-python.png")
        if os.path.exists(png):
            os.unlink(png)
        screenshot(rec.python_html, png)
        with open(png, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
        print(f"\n[flamegraph] screenshot: {png}", file=sys.stderr)


    def test_hostile_names_in_headless_chromium(self):
        # Each page of a program that names its functions to attack it: no
        # script of a name runs, and the graph is drawn with every name.
        if chromium() is None:
            missing("Chromium is not installed (apt-get install chromium)")
        for name in ("hostile_fp", "hostile_jit"):
            rec = recording(name)
            rec.require_html()
            for page in (rec.python_html, rec.native_html):
                with self.subTest(name=name, page=os.path.basename(page)):
                    proc = run_chromium(["--dump-dom"], page)
                    boxes = FrameBoxes()
                    boxes.feed(proc.stdout)
                    self.assertEqual(boxes.pwned, [], "a name's script ran")
                    self.assertFalse("Loading Flame Graph" in proc.stdout,
                                     "the page still says Loading...")
                    drawn = {f["name"].rsplit(":", 1)[0]
                             for f in boxes.frames}
                    self.assertIn("all", drawn, "no flame graph:"
                                  f" {proc.stderr[-2000:]}")
                    for n in HOSTILE_SHOWN:
                        self.assertIn(n, drawn)


if __name__ == "__main__":
    unittest.main()
