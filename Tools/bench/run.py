#!/usr/bin/env python3
"""Compare a stock CPython 3.11 with the perf-support build, side by side.

    python3 Tools/bench/run.py --stock STOCK_PYTHON --patched PATCHED_PYTHON
                               [--quick] [--rounds N] [--only a,b]
                               [--out FILE.md] [--callgrind]

Six configurations run every benchmark:

    stock     the stock interpreter
    off       the patched interpreter, profiling off
    perf      patched, -X perf (trampolines, /tmp/perf-PID.map)
    generic   patched, -X perf with BENCH_GENERIC_CALLS=1 (_harness.py): the same
              hook installed the way any PEP 523 hook is, so Python-to-Python
              calls go through vectorcall (the "generic road" design)
    jit       patched, -X perf_jit (/tmp/jit-PID.dump)
    remote    patched, PYTHON_PERF_REMOTE=1 (the opt-in to switches from
              outside: a control thread waits for them), profiling off

and five ratios are reported (B/A; above 1 means B is slower or bigger):
off/stock, perf/off, generic/off, jit/off, remote/off.

Runs are interleaved: each round runs every benchmark once in each
configuration, in an order that rotates from round to round, and a ratio is
taken within a round, so that slow drifts of the machine (other jobs, CPU
frequency) hit both sides alike.  Per benchmark and ratio the table shows
the median of the per-round ratios and their min..max; the last row is the
geometric mean of the medians.

The in-process benchmarks print "time=<s>" for their timed section (see
_harness.py), so start-up is not part of their figure; the start-up
benchmarks are timed from the outside, as whole processes (the median of a
few runs per round).  Peak RSS is each child's ru_maxrss (os.wait4).  The
sizes of /tmp/perf-PID.map and /tmp/jit-PID.dump left by each child are
reported, and every such file (and any jitted-PID-*.so) is then removed.

--callgrind runs the call-heavy benchmarks once each under
valgrind --tool=callgrind, in every configuration, and reports instruction
counts with the instructions of "-c pass" in the same configuration
subtracted.

Runs under any Python 3.9 or newer (e.g. /usr/bin/python3).
"""

import argparse
import glob
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# name: (script or None for "-c pass", full size, quick size, callgrind size)
# A size of None means the script takes no argument.
BENCHMARKS = [
    ("oo_sim", "oo_sim.py", 48000, 12000, None),
    ("fib", "fib.py", 32, 29, 22),
    ("tree_walk", "tree_walk.py", 720, 180, 20),
    ("closures", "closures.py", 480000, 120000, 15000),
    ("generators", "generators.py", 1900000, 480000, 60000),
    ("coroutines", "coroutines.py", 640000, 160000, None),
    ("exceptions", "exceptions.py", 380000, 96000, 12000),
    ("nbody", "nbody.py", 48000, 12000, None),
    ("strings", "strings.py", 160000, 40000, None),
    ("dicts", "dicts.py", 640000, 160000, None),
    ("json", "json_roundtrip.py", 1440, 360, None),
    ("regex", "regex.py", 29000, 7200, None),
    ("class_creation", "class_creation.py", 14400, 3600, None),
    ("startup", None, None, None, None),
    ("startup_imports", "startup_imports.py", None, None, None),
]
STARTUP = ("startup", "startup_imports")
CALLGRIND_BENCHMARKS = ("fib", "tree_walk", "closures", "generators",
                        "exceptions")

CONFIGS = ["stock", "off", "perf", "generic", "jit", "remote"]
COMPARISONS = [
    # (column title, numerator B, denominator A)
    ("patched/stock", "off", "stock"),
    ("perf/off", "perf", "off"),
    ("generic/off", "generic", "off"),
    ("perf_jit/off", "jit", "off"),
    ("remote/off", "remote", "off"),
]
CONFIG_DOC = {
    "stock": "stock 3.11.2",
    "off": "patched, profiling off",
    "perf": "patched, -X perf",
    "generic": "patched, -X perf, BENCH_GENERIC_CALLS=1 (_harness.py)",
    "jit": "patched, -X perf_jit",
    "remote": "patched, PYTHON_PERF_REMOTE=1, profiling off",
}

TIMEOUT = 300


def log(msg):
    sys.stderr.write("[bench] %s\n" % msg)
    sys.stderr.flush()


# ---- running one child -------------------------------------------------------

class Interpreter:
    """How to start one configuration: argv prefix and environment."""

    def __init__(self, name, executable, options, extra_env):
        self.name = name
        self.executable = executable
        self.options = list(options)
        self.env = child_environment(executable, extra_env)

    def argv(self, rest):
        return [self.executable] + self.options + list(rest)


def child_environment(executable, extra):
    # Nothing of the caller's Python setup may leak in: PYTHONPATH or
    # PYTHONHOME would make a build directory interpreter use another
    # library, and the profiling switches must come from the configuration.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PYTHON") and not k.startswith("_PYTHON")}
    env["PYTHONHASHSEED"] = "0"
    # A --enable-shared build directory: its libpython sits beside python.
    bindir = os.path.dirname(os.path.abspath(executable))
    if glob.glob(os.path.join(bindir, "libpython3*.so*")):
        old = env.get("LD_LIBRARY_PATH")
        env["LD_LIBRARY_PATH"] = bindir + (":" + old if old else "")
    env.update(extra)
    return env


def child_files(pid):
    return ([("map", "/tmp/perf-%d.map" % pid),
             ("dump", "/tmp/jit-%d.dump" % pid)]
            + [("jitted", p) for p in glob.glob("/tmp/jitted-%d-*.so" % pid)])


def remove_child_files(pid):
    """Remove what a child left in /tmp; return {"map": bytes, "dump": bytes}."""
    sizes = {"map": 0, "dump": 0}
    for kind, path in child_files(pid):
        try:
            size = os.path.getsize(path)
        except OSError:
            continue
        if kind in sizes:
            sizes[kind] += size
        try:
            os.unlink(path)
        except OSError as exc:
            log("cannot remove %s: %s" % (path, exc))
    return sizes


class RunResult:
    def __init__(self, wall, rss_kib, output, sizes):
        self.wall = wall
        self.rss_kib = rss_kib
        self.output = output
        self.sizes = sizes
        self.timed = None
        self.checksum = None
        for line in output.splitlines():
            if line.startswith("time="):
                head, _, rest = line.partition(" ")
                self.timed = float(head[len("time="):])
                if rest.startswith("checksum="):
                    self.checksum = rest[len("checksum="):]


def run_child(argv, env, cwd):
    """Run argv to completion; wall time, peak RSS and output of that child."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    timer = threading.Timer(TIMEOUT, proc.kill)
    timer.start()
    try:
        output = proc.stdout.read()
        proc.stdout.close()
        # wait4 rather than proc.wait(): it also gives this child's rusage.
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    sizes = remove_child_files(proc.pid)
    text = output.decode("utf-8", "replace")
    if proc.returncode != 0:
        raise RuntimeError("%s exited with %d:\n%s"
                           % (" ".join(argv), proc.returncode, text))
    return RunResult(wall, usage.ru_maxrss, text, sizes)


# ---- the benchmark matrix -----------------------------------------------------

class Sample:
    """One benchmark in one configuration in one round."""

    def __init__(self, seconds, rss_kib, sizes, checksum):
        self.seconds = seconds
        self.rss_kib = rss_kib
        self.sizes = sizes
        self.checksum = checksum


def measure(bench, interp, size, startup_repeat, workdir):
    name, script = bench[0], bench[1]
    if name in STARTUP:
        args = ["-c", "pass"] if script is None else [script]
        runs = [run_child(interp.argv(args), interp.env, workdir)
                for _ in range(startup_repeat)]
        sizes = {k: sum(r.sizes[k] for r in runs) / len(runs)
                 for k in ("map", "dump")}
        return Sample(statistics.median(r.wall for r in runs),
                      max(r.rss_kib for r in runs), sizes, None)
    args = [script] + ([str(size)] if size is not None else [])
    result = run_child(interp.argv(args), interp.env, workdir)
    if result.timed is None:
        raise RuntimeError("%s printed no time= line:\n%s"
                           % (" ".join(interp.argv(args)), result.output))
    return Sample(result.timed, result.rss_kib, result.sizes, result.checksum)


def warm_up(interps, workdir):
    """Runs that are not measured: they fill the file cache and write the
    .pyc files of each interpreter's library (a fresh build directory has
    few of them) and of _harness.py (shared: same magic number), so that no
    configuration pays for compiling them in a measured run."""
    for interp in interps.values():
        for args in (["-c", "pass"], ["startup_imports.py"],
                     ["-c", "import _harness"]):
            run_child(interp.argv(args), interp.env, workdir)


def run_matrix(benches, interps, rounds, quick, startup_repeat, workdir):
    configs = [c for c in CONFIGS if c in interps]
    samples = {(b[0], c): [] for b in benches for c in configs}
    for rnd in range(rounds):
        t0 = time.perf_counter()
        for index, bench in enumerate(benches):
            size = bench[3] if quick else bench[2]
            shift = (rnd + index) % len(configs)
            for c in configs[shift:] + configs[:shift]:
                samples[(bench[0], c)].append(
                    measure(bench, interps[c], size, startup_repeat, workdir))
        log("round %d/%d done in %.1fs" % (rnd + 1, rounds,
                                           time.perf_counter() - t0))
    return samples


# ---- statistics and the report ---------------------------------------------------

def geomean(values):
    values = [v for v in values if v is not None and v > 0]
    if not values:
        return None
    return math.exp(sum(math.log(v) for v in values) / len(values))


def ratio_stats(num, den):
    ratios = [b / a for b, a in zip(num, den) if a > 0]
    if not ratios:
        return None
    return statistics.median(ratios), min(ratios), max(ratios)


def fmt_stats(st):
    if st is None:
        return "n/a"
    return "%.3f (%.3f..%.3f)" % st


def fmt_ratio(value):
    return "n/a" if value is None else "%.3f" % value


def fmt_kib(nbytes):
    if not nbytes:
        return "0"
    return "%.1f" % (nbytes / 1024.0)


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i == 0 else "---:"
                            for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def report_matrix(benches, samples, configs):
    comparisons = [cmp for cmp in COMPARISONS
                   if cmp[1] in configs and cmp[2] in configs]
    lines = []
    problems = []

    # Checksums must agree between configurations.
    for bench in benches:
        seen = {}
        for c in configs:
            for s in samples[(bench[0], c)]:
                if s.checksum is not None:
                    seen.setdefault(s.checksum, set()).add(c)
        if len(seen) > 1:
            problems.append("%s: checksums differ between configurations: %s"
                            % (bench[0], "; ".join(
                                "%s -> %s" % (",".join(sorted(v)), k)
                                for k, v in seen.items())))

    ref = "stock" if "stock" in configs else "off"
    header = ["benchmark", "%s ms" % ref] + [c[0] for c in comparisons]
    rows = []
    medians = {c[0]: [] for c in comparisons}
    for bench in benches:
        name = bench[0]
        base = statistics.median(s.seconds for s in samples[(name, ref)])
        row = [name + (" (wall)" if name in STARTUP else ""),
               "%.1f" % (base * 1000)]
        for title, b, a in comparisons:
            st = ratio_stats([s.seconds for s in samples[(name, b)]],
                             [s.seconds for s in samples[(name, a)]])
            medians[title].append(st[0] if st else None)
            row.append(fmt_stats(st))
        rows.append(row)
    rows.append(["**geometric mean**", ""]
                + ["**%s**" % fmt_ratio(geomean(medians[c[0]]))
                   for c in comparisons])
    lines.append("### Time: median ratio B/A (min..max over rounds)")
    lines.append("")
    lines += markdown_table(header, rows)
    lines.append("")

    header = ["benchmark", "%s MiB" % ref] + [c[0] for c in comparisons]
    rows = []
    medians = {c[0]: [] for c in comparisons}
    for bench in benches:
        name = bench[0]
        base = statistics.median(s.rss_kib for s in samples[(name, ref)])
        row = [name, "%.1f" % (base / 1024.0)]
        for title, b, a in comparisons:
            st = ratio_stats([s.rss_kib for s in samples[(name, b)]],
                             [s.rss_kib for s in samples[(name, a)]])
            medians[title].append(st[0] if st else None)
            row.append(fmt_ratio(st[0] if st else None))
        rows.append(row)
    rows.append(["**geometric mean**", ""]
                + ["**%s**" % fmt_ratio(geomean(medians[c[0]]))
                   for c in comparisons])
    lines.append("### Peak RSS (ru_maxrss): median ratio B/A")
    lines.append("")
    lines += markdown_table(header, rows)
    lines.append("")

    columns = [("perf map, perf", "perf", "map"),
               ("perf map, generic", "generic", "map"),
               ("jitdump, perf_jit", "jit", "dump")]
    columns = [col for col in columns if col[1] in configs]
    if columns:
        header = ["benchmark"] + ["%s (KiB/run)" % col[0] for col in columns]
        rows = []
        for bench in benches:
            row = [bench[0]]
            for _, c, kind in columns:
                row.append(fmt_kib(statistics.median(
                    s.sizes[kind] for s in samples[(bench[0], c)])))
            rows.append(row)
        lines.append("### Files written per run (/tmp/perf-PID.map, "
                     "/tmp/jit-PID.dump; removed after each run)")
        lines.append("")
        lines += markdown_table(header, rows)
        lines.append("")
    return lines, problems


# ---- callgrind ------------------------------------------------------------------------

def callgrind_instructions(interp, args, workdir):
    fd, out = tempfile.mkstemp(prefix="callgrind.", dir=workdir)
    os.close(fd)
    try:
        argv = (["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out]
                + interp.argv(args))
        run_child(argv, interp.env, workdir)
        with open(out) as f:
            for line in f:
                if line.startswith(("summary:", "totals:")):
                    return int(line.split()[1])
        raise RuntimeError("no summary line in %s" % out)
    finally:
        os.unlink(out)


def run_callgrind(benches, interps, workdir):
    configs = [c for c in CONFIGS if c in interps]
    lines = []
    counts = {}
    for c in configs:
        log("callgrind: -c pass, %s" % c)
        base = callgrind_instructions(interps[c], ["-c", "pass"], workdir)
        counts[("startup", c)] = base
        for bench in benches:
            if bench[0] not in CALLGRIND_BENCHMARKS:
                continue
            log("callgrind: %s, %s" % (bench[0], c))
            total = callgrind_instructions(
                interps[c], [bench[1], str(bench[4])], workdir)
            counts[(bench[0], c)] = total - base
    ref = "stock" if "stock" in configs else "off"
    comparisons = [cmp for cmp in COMPARISONS
                   if cmp[1] in configs and cmp[2] in configs]
    header = (["benchmark (size)", "%s Minstr" % ref]
              + [c[0] for c in comparisons])
    rows = []
    medians = {c[0]: [] for c in comparisons}
    rowbenches = [("startup", None, None, None, "-c pass")] + [
        b for b in benches if b[0] in CALLGRIND_BENCHMARKS]
    for bench in rowbenches:
        name = bench[0]
        row = ["%s (%s)" % (name, bench[4]),
               "%.2f" % (counts[(name, ref)] / 1e6)]
        for title, b, a in comparisons:
            r = counts[(name, b)] / counts[(name, a)]
            if name != "startup":
                medians[title].append(r)
            row.append("%.3f" % r)
        rows.append(row)
    rows.append(["**geometric mean** (without startup)", ""]
                + ["**%s**" % fmt_ratio(geomean(medians[c[0]]))
                   for c in comparisons])
    lines.append("### Callgrind: instructions, start-up (-c pass) "
                 "subtracted; ratio B/A")
    lines.append("")
    lines += markdown_table(header, rows)
    lines.append("")
    return lines


# ---- main ----------------------------------------------------------------------------------

def check_interpreters(interps):
    for name, interp in interps.items():
        if name not in ("stock", "off"):
            continue
        proc = subprocess.run(
            interp.argv(["-c", "import sys; print(sys.version.split()[0], "
                         "hasattr(sys, 'activate_stack_trampoline'))"]),
            env=interp.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        text = proc.stdout.decode("utf-8", "replace").strip()
        if proc.returncode != 0:
            sys.exit("[bench] ERROR: %s does not run:\n%s"
                     % (interp.executable, text))
        version, trampoline = text.split()
        if not version.startswith("3.11."):
            log("WARNING: %s is Python %s, not 3.11"
                % (interp.executable, version))
        if name == "off" and trampoline != "True":
            sys.exit("[bench] ERROR: %s has no perf support "
                     "(sys.activate_stack_trampoline missing)"
                     % interp.executable)
        if name == "stock" and trampoline == "True":
            log("WARNING: the stock interpreter %s has perf support"
                % interp.executable)
    return True


def describe(interps):
    lines = []
    for c in CONFIGS:
        if c in interps:
            i = interps[c]
            extra = " ".join("%s=%s" % kv for kv in sorted(i.env.items())
                             if kv[0].startswith("_PYTHON"))
            cmd = " ".join(([extra] if extra else []) + i.argv([]))
            lines.append("- `%s`: %s: `%s`" % (c, CONFIG_DOC[c], cmd))
    return lines


def main():
    parser = argparse.ArgumentParser(
        description="Benchmark stock CPython 3.11 against the perf-support "
                    "build and its profiling modes.")
    parser.add_argument("--stock", help="stock python3.11 (optional: "
                        "without it the patched/stock column is left out)")
    parser.add_argument("--patched", required=True,
                        help="python3.11 with the perf support")
    parser.add_argument("--quick", action="store_true",
                        help="smaller sizes and fewer rounds (< 3 minutes)")
    parser.add_argument("--rounds", type=int,
                        help="rounds (default 20, --quick 15)")
    parser.add_argument("--only", help="comma-separated benchmark names")
    parser.add_argument("--out", help="also write the markdown report here")
    parser.add_argument("--callgrind", action="store_true",
                        help="also count instructions under callgrind "
                             "(call-heavy benchmarks)")
    parser.add_argument("--callgrind-only", action="store_true",
                        help=argparse.SUPPRESS)
    opts = parser.parse_args()

    benches = BENCHMARKS
    if opts.only:
        wanted = opts.only.split(",")
        unknown = set(wanted) - {b[0] for b in BENCHMARKS}
        if unknown:
            parser.error("unknown benchmark(s): %s (known: %s)" % (
                ", ".join(sorted(unknown)),
                ", ".join(b[0] for b in BENCHMARKS)))
        benches = [b for b in BENCHMARKS if b[0] in wanted]
    rounds = opts.rounds or (15 if opts.quick else 20)
    startup_repeat = 3 if opts.quick else 5
    if (opts.callgrind or opts.callgrind_only) and not shutil.which("valgrind"):
        parser.error("--callgrind needs valgrind in PATH")

    interps = {}
    if opts.stock:
        interps["stock"] = Interpreter("stock", opts.stock, [], {})
    interps["off"] = Interpreter("off", opts.patched, [], {})
    interps["perf"] = Interpreter("perf", opts.patched, ["-X", "perf"], {})
    interps["generic"] = Interpreter("generic", opts.patched, ["-X", "perf"],
                                     {"BENCH_GENERIC_CALLS": "1"})
    interps["jit"] = Interpreter("jit", opts.patched, ["-X", "perf_jit"], {})
    interps["remote"] = Interpreter("remote", opts.patched, [],
                                    {"PYTHON_PERF_REMOTE": "1"})
    for i in interps.values():
        if not os.access(i.executable, os.X_OK):
            parser.error("not an executable: %s" % i.executable)
        i.executable = os.path.abspath(i.executable)
    check_interpreters(interps)

    # The benchmarks run from a copy, so that their __pycache__ (shared by
    # both interpreters: same magic number) stays out of the source tree.
    workdir = tempfile.mkdtemp(prefix="perfbench.")
    started = time.time()
    try:
        for f in os.listdir(HERE):
            if f.endswith(".py") and f != "run.py":
                shutil.copy(os.path.join(HERE, f), workdir)
        lines = ["## Benchmarks: stock 3.11.2 vs perf support (%s)"
                 % ("quick" if opts.quick else "full"), ""]
        lines += describe(interps)
        lines.append("")
        problems = []
        warm_up(interps, workdir)
        if not opts.callgrind_only:
            log("%d benchmarks x %d configurations x %d rounds"
                % (len(benches), len(interps), rounds))
            samples = run_matrix(benches, interps, rounds, opts.quick,
                                 startup_repeat, workdir)
            table, problems = report_matrix(benches, samples, list(interps))
            lines += table
        if opts.callgrind or opts.callgrind_only:
            lines += run_callgrind(benches, interps, workdir)
        elapsed = time.time() - started
        lines.append("%s, %s, %s, %d CPUs, Python %s runner; "
                     "%.0f s wall." % (
                         "callgrind only" if opts.callgrind_only else
                         "%d rounds (start-up: median of %d runs per round)"
                         % (rounds, startup_repeat),
                         time.strftime("%Y-%m-%d %H:%M"),
                         platform.machine(), os.cpu_count() or 0,
                         platform.python_version(), elapsed))
        for p in problems:
            lines.append("")
            lines.append("**PROBLEM**: " + p)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if opts.out:
        with open(opts.out, "w") as f:
            f.write(text)
        log("report written to %s" % opts.out)
    return 1 if problems else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RuntimeError as exc:
        sys.exit("[bench] ERROR: %s" % exc)
