#!/usr/bin/env python3
"""Flame graphs of a perf recording of Python code: one self-contained HTML
file per view, and the Firefox Profiler's format next to it.

    flamegraph.py [--view python|native|both] [--out-dir DIR] [--name NAME]
                  [--no-gecko] [--template FILE] DATA

DATA is a perf.data recorded with call graphs: "perf record -g" of
"python -X perf" (frame pointers; /tmp/perf-PID.map must still exist), or
the output of "perf inject --jit" for "python -X perf_jit" under
"perf record -k 1 --call-graph dwarf" (the jitted-PID-N.so files must still
exist).  Written next to DATA (or in --out-dir), NAME being DATA's file
name without ".data":

  NAME-python.html  the Python view (--view python, the default, or both)
  NAME-native.html  the native view (--view native or both)
  NAME-gecko.json   every native frame, for the Firefox Profiler
                    (perf script report gecko; --no-gecko leaves it out)

The native view is every frame of every sample, the tree perf's own "perf
script report flamegraph" would draw, so that each Python call reads
_PyEval_EvalFrameDefault -> py::name -> _PyEval_EvalFrameDefault -> ...
The Python view is the same samples with the interpreter's own frames
folded away (see fold_python()): a stack reads py::<module> -> py::baz ->
py::bar -> py::foo, and native code keeps its frames under the Python
function that runs it (the sort of sorted(), math, _json, the kernel...).
Both trees come from one "perf script" pass read here (perf's script
cannot leave frames out, and its Python scripting crashes on names that
are not UTF-8), in the JSON form perf's script writes, and fill the same
template.  Function and file names are the profiled program's to choose:
they reach the page only as JSON strings in which "<", ">", "&", U+2028
and U+2029 are escaped (script_json()), so that no name can end the
<script> element or hide its end from the HTML parser.

The renderer is d3-flame-graph's d3-flamegraph-base.html, the template that
perf's flamegraph.py names, with d3 and d3-flame-graph inlined: npm ci
installs the version pinned in Tools/perfsupport/flamegraph/package-lock.json
(integrity-checked) into build/flamegraph/, and its SHA-256 is checked
below.  The HTML files need no network to open.

Exit status: 0 done; 1 error; 3 the HTML renderer is not available (npm
missing or npm ci failed): the gecko file is still written; 4 the flame
graphs are written but perf's gecko script failed (perf 6.12's Python
scripting crashes on names that are not UTF-8).
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
PACKAGE_DIR = os.path.join(HERE, "flamegraph")
TEMPLATE_IN_PACKAGE = os.path.join(
    "node_modules", "d3-flame-graph", "dist", "templates",
    "d3-flamegraph-base.html")
# d3-flame-graph 4.1.3's template (perf's flamegraph.py checks the same file
# by its MD5, 143e0d06ba69b8370b9848dcd6ae3f36).
TEMPLATE_SHA256 = (
    "64aba4b35cfaba17b37d57a4036876f1999f3cfc4c8d4d3a0781d08a1ad97d5a")

UNAVAILABLE = 3
GECKO_FAILED = 4


class Unavailable(Exception):
    """The HTML renderer cannot be installed here."""


def say(msg):
    print(f"[flamegraph] {msg}", flush=True)


def warn(msg):
    print(f"[flamegraph] WARNING: {msg}", file=sys.stderr, flush=True)


# ---- the template ------------------------------------------------------------

def read_bytes(path):
    """The content of PATH, None if there is no such file."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def sha256_of(path):
    return hashlib.sha256(read_bytes(path)).hexdigest()


def install_template(build):
    """Install the pinned d3-flame-graph with "npm ci" into BUILD/flamegraph
    (again whenever the committed package-lock.json changes); return the
    path of its template."""
    dest = os.path.join(build, "flamegraph")
    template = os.path.join(dest, TEMPLATE_IN_PACKAGE)
    names = ("package.json", "package-lock.json")
    current = all(read_bytes(os.path.join(PACKAGE_DIR, n))
                  == read_bytes(os.path.join(dest, n)) for n in names)
    if not (current and os.path.exists(template)):
        npm = shutil.which("npm")
        if npm is None:
            raise Unavailable("npm is not installed (Debian: apt-get install"
                              " nodejs npm, or run 'make deps' as root)")
        os.makedirs(dest, exist_ok=True)
        for n in names:
            shutil.copyfile(os.path.join(PACKAGE_DIR, n),
                            os.path.join(dest, n))
        say(f"npm ci: d3-flame-graph into {dest}")
        proc = subprocess.run(
            [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund",
             "--loglevel=error"],
            cwd=dest, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        if proc.returncode != 0 or not os.path.exists(template):
            # A half-done install must not pass for a current one next time.
            os.unlink(os.path.join(dest, "package-lock.json"))
            tail = "\n".join(proc.stdout.splitlines()[-5:])
            raise Unavailable(f"npm ci failed in {dest} (offline?):\n{tail}")
    if sha256_of(template) != TEMPLATE_SHA256:
        raise Unavailable(f"{template} is not d3-flame-graph 4.1.3's template"
                          f" (SHA-256 {sha256_of(template)})")
    return template


# Characters that must not appear raw in JSON written into a <script>
# element: "<" could start "</script>" or "<!--" (after which the HTML parser
# no longer ends the element where the script ends), ">" and "&" are escaped
# too so that the text means nothing to an HTML parser, and U+2028, U+2029
# end a line in older JavaScript.  json.dumps() only writes them inside
# strings, where \uXXXX is the same character.
SCRIPT_UNSAFE = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                 "\u2028": "\\u2028", "\u2029": "\\u2029"}
SCRIPT_UNSAFE_RE = re.compile("[<>&\u2028\u2029]")


def script_json(value):
    """VALUE as JSON text that can sit inside an HTML <script> element:
    whatever its strings hold, they stay strings."""
    text = json.dumps(value, ensure_ascii=True)
    return SCRIPT_UNSAFE_RE.sub(lambda m: SCRIPT_UNSAFE[m.group(0)], text)


def fill_template(template, stacks, options, title):
    """The template with the tree and the options in place where perf's
    flamegraph.py puts them, as JSON that no name can leave (script_json())."""
    with open(template, encoding="utf-8") as f:
        html = f.read()
    values = {
        "/** @flamegraph_json **/": script_json(stacks),
        "/** @options_json **/": script_json(options),
    }
    html = re.sub(r"/\*\* @(flamegraph|options)_json \*\*/",
                  lambda m: values[m.group(0)], html)
    return retitle(html, title)


def retitle(html, title):
    esc = (title.replace("&", "&amp;").replace("<", "&lt;")
           .replace(">", "&gt;"))
    return html.replace("<title>Flame Graph</title>",
                        f"<title>{esc}</title>", 1)


# ---- reading the samples -----------------------------------------------------

# "COMM PID/TID", then the frames one a line, "IP SYMBOL (DSO)", leaf first;
# a recording without call graphs has its one frame on the first line.
HEADER_RE = re.compile(r"^(?P<comm>.*?)\s+(?P<pid>-?\d+)/(?P<tid>-?\d+)"
                       r"(\s+(?P<frame>[0-9a-f]+\s+.*?))?\s*$")
FRAME_RE = re.compile(r"^\s+(?P<frame>[0-9a-f]+\s+.*)$")


def read_samples(data):
    """Yield (comm, pid, frames) per sample, frames root first, each frame a
    (symbol, dso) pair, from "perf script".  Inlined frames are there, as
    perf's flamegraph.py sees them, with the DSO of the function they are
    inlined into."""
    with tempfile.TemporaryFile("w+", errors="replace") as err, \
         subprocess.Popen(["perf", "script", "-i", os.path.abspath(data),
                           "-F", "comm,pid,tid,ip,sym,dso"],
                          stdout=subprocess.PIPE, stderr=err, text=True,
                          errors="replace") as proc:
        yield from parse_samples(proc.stdout)
        if proc.wait() != 0:
            err.seek(0)
            raise RuntimeError(f"perf script failed on {data}:\n"
                               f"{err.read().strip()}")


def parse_samples(lines):
    """The samples of "perf script -F comm,pid,tid,ip,sym,dso" output."""
    head, frames = None, []
    for line in lines:
        line = line.rstrip("\n")
        m = FRAME_RE.match(line) if head else None
        if m:
            frames.append(parse_frame(m.group("frame")))
            continue
        if head:
            yield head[0], head[1], root_first(frames)
            head, frames = None, []
        m = HEADER_RE.match(line)
        if m:
            head = (m.group("comm").strip(), int(m.group("pid")))
            if m.group("frame"):
                frames.append(parse_frame(m.group("frame")))
    if head:
        yield head[0], head[1], root_first(frames)


def parse_frame(text):
    """ "IP SYMBOL (DSO)" -> (SYMBOL, DSO); the symbol may hold spaces and
    parentheses (a Python file name), the DSO is in the last ones."""
    rest = text.split(None, 1)[1] if " " in text.strip() else ""
    cut = rest.rfind(" (")
    if cut >= 0 and rest.endswith(")"):
        return rest[:cut], rest[cut + 2:-1]
    return rest, ""


def root_first(frames):
    """Frames as perf script prints them (leaf first, an inlined frame
    before the frame it is inlined into), root first, with DSOs."""
    out, dso = [], ""
    for sym, d in reversed(frames):
        if d != "inlined":
            dso = d
        out.append((sym, dso))
    return out


# ---- the Python view -----------------------------------------------------------

# Frames of the interpreter (the python binary or libpython) that only carry
# a call from one Python function to the next: the evaluation loop, the
# call protocols, the dispatch to Python-level special methods and
# generators, the perf trampoline's own hook.  Symbol suffixes such as
# ".constprop.0" or ".isra.0" are ignored.
INTERPRETER_CALL_FRAMES = re.compile(r"""
      _?PyEval_(EvalFrame\w*|Vector|EvalCode\w*)
    | _?PyObject_(Call\w*|Vectorcall\w*|FastCall\w*|MakeTpCall)
    | _?PyFunction_Vectorcall | _?PyVectorcall_Call | _?PyCFunction_Call\w*
    | cfunction_(call|vectorcall)\w* | method_vectorcall\w*
    | methoddescr_call | wrapper(descr)?_call | type_call
    | slot_\w+ | vectorcall_(method|unbound) | call_unbound\w*
    | object_vacall | callmethod | do_call_core | call_function\w*
    | call_pushed_frame
    | _?gen_(send_ex2?|iternext|send|throw) | coro_wrapper_\w+
    | \w*PerfTrampoline\w* | eval_frame_slow_path | eval_frame_generic_calls
    | run_through_trampoline | py_trampoline_evaluator
""", re.VERBOSE)
SUFFIX_RE = re.compile(r"(\.(constprop|isra|part|cold|lto_priv)(\.\d+)?)+$")
INTERPRETER_DSO_RE = re.compile(
    r"^(lib)?python\d*(\.\d+)*[a-z]*(\.so(\.[\d.]+)?)?$")


def is_python_frame(sym):
    return sym.startswith("py::")


def is_interpreter_dso(dso, known=frozenset()):
    return dso in known or bool(
        INTERPRETER_DSO_RE.match(os.path.basename(dso)))


def is_call_frame(sym, dso, known=frozenset()):
    return (is_interpreter_dso(dso, known)
            and bool(INTERPRETER_CALL_FRAMES.fullmatch(SUFFIX_RE.sub("", sym))))


def fold_python(frames, known=frozenset()):
    """The Python view of one stack (root first): from the outermost Python
    frame on, without the interpreter's call frames.  A stack without any
    py:: frame (start-up, threads that run no Python code) stays whole."""
    for first, (sym, _) in enumerate(frames):
        if is_python_frame(sym):
            break
    else:
        return list(frames)
    return [(sym, dso) for sym, dso in frames[first:]
            if is_python_frame(sym) or not is_call_frame(sym, dso, known)]


# ---- the tree -------------------------------------------------------------------

def libtype(dso):
    """As perf's flamegraph.py: "kernel" for kernel code, "" otherwise."""
    return ("kernel" if dso == "[kernel.kallsyms]" or dso.endswith("/vmlinux")
            else "")


def new_node(name, lib):
    return {"n": name, "l": lib, "v": 0, "c": [], "_index": {}}


def add_stack(root, comm, pid, frames):
    if pid == 0:
        node = child(root, comm, "kernel")
    else:
        node = child(root, f"{comm} ({pid})", "")
    for sym, dso in frames:
        node = child(node, sym, libtype(dso))
    node["v"] += 1


def child(node, name, lib):
    found = node["_index"].get(name)
    if found is None:
        found = node["_index"][name] = new_node(name, lib)
        node["c"].append(found)
    return found


def strip_index(node):
    del node["_index"]
    for c in node["c"]:
        strip_index(c)
    return node


def build_trees(data, views):
    """The trees of VIEWS ("python", "native") of DATA, in the JSON form
    perf's flamegraph.py writes, from one "perf script" pass; and the number
    of samples and of those with a py:: frame in the Python view.  The
    native tree is the one "perf script report flamegraph -f json" writes
    (test_flamegraph.py compares them), without its Python scripting, which
    perf 6.12 runs into a crash on names that are not UTF-8."""
    samples = list(read_samples(data))
    # The interpreter is wherever its evaluation loop runs (a binary that
    # links Python statically, an embedding program...), whatever its name.
    known = frozenset(dso for _, _, frames in samples for sym, dso in frames
                      if SUFFIX_RE.sub("", sym) == "_PyEval_EvalFrameDefault")
    trees = {view: new_node("all", "root") for view in views}
    with_py = 0
    for comm, pid, frames in samples:
        if "native" in trees:
            add_stack(trees["native"], comm, pid, frames)
        if "python" in trees:
            folded = fold_python(frames, known)
            with_py += any(is_python_frame(s) for s, _ in folded)
            add_stack(trees["python"], comm, pid, folded)
    return ({view: strip_index(tree) for view, tree in trees.items()},
            len(samples), with_py)


def python_tree(data):
    """The Python view of DATA, the number of samples and of those with a
    py:: frame."""
    trees, total, with_py = build_trees(data, ("python",))
    return trees["python"], total, with_py


# ---- the outputs ------------------------------------------------------------------

def perf_header(data):
    proc = subprocess.run(
        ["perf", "report", "--header-only", "-i", os.path.abspath(data)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        errors="replace")
    return proc.stdout if proc.returncode == 0 else ""


def perf_report_script(data, script, args, out):
    """Run perf's "perf script report SCRIPT ARGS" on DATA, which writes OUT,
    in a scratch directory where perf.data names DATA (perf's scripts read
    "perf report --header-only" of ./perf.data), with no terminal to ask
    questions on."""
    with tempfile.TemporaryDirectory(prefix="flamegraph.") as tmp:
        os.symlink(os.path.abspath(data), os.path.join(tmp, "perf.data"))
        proc = subprocess.run(
            ["perf", "script", "-i", "perf.data", "report", script, *args],
            cwd=tmp, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, errors="replace")
    if proc.returncode != 0 or not os.path.exists(out):
        raise RuntimeError(f"perf script report {script} failed:\n"
                           f"{proc.stdout.strip()}")


def has_report_script(script):
    """Whether "perf script -l" lists SCRIPT."""
    listed = subprocess.run(["perf", "script", "-l"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True).stdout
    return any(line.split()[:1] == [script] for line in listed.splitlines())


def write_html(tree, template, out, title, context):
    options = {"colorscheme": "blue-green", "context": context}
    with open(out, "w", encoding="utf-8") as f:
        f.write(fill_template(template, tree, options, title))


def write_gecko(data, out):
    # --save-only: write the file, start no server and no browser.
    perf_report_script(data, "gecko", ["--save-only", out], out)


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 2)[2])
    ap.add_argument("data", metavar="DATA", help="perf.data to read")
    ap.add_argument("--view", choices=("python", "native", "both"),
                    default="python", help="which flame graph(s) to write"
                    " (default: python)")
    ap.add_argument("--out-dir", help="directory of the outputs"
                    " (default: DATA's directory)")
    ap.add_argument("--name", help="file name prefix of the outputs"
                    " (default: DATA's name without .data)")
    ap.add_argument("--no-gecko", action="store_true",
                    help="do not write NAME-gecko.json")
    ap.add_argument("--template", help="d3-flame-graph HTML template to use"
                    " instead of the one npm ci installs into build/")
    ap.add_argument("--build", default=os.environ.get(
        "PS_BUILD", os.path.join(TOP, "build")),
        help="build directory that holds flamegraph/ (default: build/)")
    args = ap.parse_args(argv)
    args.build = os.path.abspath(args.build)

    data = args.data
    if not os.path.isfile(data):
        ap.error(f"{data}: no such file")
    if shutil.which("perf") is None:
        ap.error("the perf tool is not installed")
    out_dir = os.path.abspath(args.out_dir or os.path.dirname(data) or ".")
    os.makedirs(out_dir, exist_ok=True)
    name = args.name or re.sub(r"\.data$", "", os.path.basename(data))
    status = 0

    template = args.template and os.path.abspath(args.template)
    if template is None:
        try:
            template = install_template(args.build)
        except Unavailable as e:
            warn(f"no flame graph HTML: {e}")
            status = UNAVAILABLE
    views = ("python", "native") if args.view == "both" else (args.view,)
    if template:
        trees, total, with_py = build_trees(data, views)
        context = perf_header(data)
        for view in views:
            out = os.path.join(out_dir, f"{name}-{view}.html")
            write_html(trees[view], template, out, f"{name}: {view} view",
                       context)
            say(f"{view} view: {out}")
        if "python" in views and with_py == 0:
            warn(f"no py:: frame in the {total} samples of {data}:"
                 " record with python -X perf (keep /tmp/perf-PID.map until"
                 " this command ran) or -X perf_jit followed by perf inject"
                 " --jit")
    if not args.no_gecko and not has_report_script("gecko"):
        warn("this perf has no gecko script (perf 6.7 or newer): no Firefox"
             " Profiler file")
    elif not args.no_gecko:
        out = os.path.join(out_dir, f"{name}-gecko.json")
        try:
            write_gecko(data, out)
            say(f"Firefox Profiler: {out}")
        except RuntimeError as e:
            # perf's Python scripting (perf 6.12) crashes on symbol names
            # that are not UTF-8: the flame graphs are written all the same.
            warn(f"no Firefox Profiler file: {e}")
            status = status or GECKO_FAILED
    return status


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (RuntimeError, OSError) as e:
        print(f"[flamegraph] ERROR: {e}", file=sys.stderr)
        sys.exit(1)
