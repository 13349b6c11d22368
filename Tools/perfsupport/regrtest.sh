#!/bin/sh
# "make regrtest": CPython 3.11's own regression suite, "python -m test -j2",
# run four ways, and a table of the modules whose result is not stock's.
#
#   regrtest.sh PATCHED_BUILD STOCK_BUILD     (e.g. build/fp build/stock-fp)
#
# The four runs, one after the other, each with the same options:
#   stock     STOCK_BUILD/python (3.11.2 built with the same flags)
#   off       PATCHED_BUILD/python, profiling off
#   perf      the same, PYTHONPERFSUPPORT=1 in the environment
#   perf_jit  the same, PYTHON_PERF_JIT_SUPPORT=1 in the environment
# The environment variables reach every process the suite starts (regrtest's
# workers, the tests' subprocesses), except those a test starts with an
# environment of its own.  Every other PYTHON* variable is unset
# (PYTHONUNBUFFERED and PYTHONDONTWRITEBYTECODE make stock tests fail).
#
# PS_TESTS: the modules to run (default: every module, as regrtest finds
# them); a module that the stock tree lacks (the perf tests) is not given to
# the stock run and must pass in the three others.  PS_TIMEOUT: regrtest's
# --timeout (default 1200, 3.11's TESTTIMEOUT; it also ends test_socket's
# hang on a machine without network).  PS_REGRTEST_OPTS: more options for
# all four runs (e.g. -w to re-run failed modules verbosely).
#
# Each module's result is what regrtest's progress line says of it
# ("passed", "failed (2 errors)", "skipped", "crashed (Exit code -11)",
# "timed out"...), durations left out, corrected by the summary at the end
# (re-runs, modules that did not run).
#
# The /tmp/perf-*.map, /tmp/jit-*.dump and /tmp/jitted-*.so files that a run
# leaves are removed after it, and only those: each run sees, as /tmp, an
# empty directory of its own (build/regrtest/WAY.tmp, bound on /tmp in a
# mount namespace of its own: root and unshare(1)), removed after the run.
# So the files that other processes on the machine create in /tmp at the
# same time are left alone, and their leftovers (a /tmp/perf-PID.map of a
# process that had the same pid) cannot disturb the run.  Without unshare,
# the files that appeared in /tmp during the run are removed, which may
# include other processes' files.
#
# Output in build/regrtest/: WAY.log (regrtest's output), WAY.tsv (module,
# result), table.md (the table printed at the end).  Exit status 1 if any
# module's result differs.
set -u
PS_TAG=regrtest
. "$(dirname "$0")/common.sh"
clean_python_env

: "${PS_TESTS:=}"
: "${PS_TIMEOUT:=1200}"
: "${PS_REGRTEST_OPTS:=}"

[ $# -eq 2 ] || { echo "usage: $0 PATCHED_BUILD STOCK_BUILD" >&2; exit 2; }
PATCHED=$(cd "$1" 2>/dev/null && pwd) || die "no build directory $1"
STOCK=$(cd "$2" 2>/dev/null && pwd) || die "no build directory $2: run 'make build-stock'"
for b in "$PATCHED" "$STOCK"; do
    [ -x "$b/python" ] || die "no interpreter in $b"
done
OUT=$PS_BUILD/regrtest
rm -rf "$OUT"
mkdir -p "$OUT"

# The source tree of a build: its Makefile's srcdir.
srcdir_of() { sed -n 's/^srcdir=[[:space:]]*//p' "$1/Makefile" | head -n 1; }

# present SRCDIR MODULE...: the modules that SRCDIR/Lib/test has.
present() {
    _s=$1; shift
    for _t in "$@"; do
        if [ -f "$_s/Lib/test/$_t.py" ] || [ -d "$_s/Lib/test/$_t" ]; then
            printf ' %s' "$_t"
        fi
    done
}

# perf_files [DIR]: the files that profiled processes leave in DIR (/tmp).
perf_files() {
    _d=${1:-/tmp}
    ls -d "$_d"/perf-*.map "$_d"/jit-*.dump "$_d"/jitted-*.so 2>/dev/null | sort
}

if private_tmp_works "$OUT/probe.tmp"; then
    tmp_mode=private
else
    tmp_mode=shared
    warn "no private /tmp (it needs root and unshare): the perf files that appear in /tmp during a run are removed after it, other processes' included"
fi

# run WAY BUILD [VAR=VALUE]: one whole regrtest run; WAY.log, WAY.seconds.
run() {
    way=$1 b=$2
    shift 2
    tests=
    if [ -n "$PS_TESTS" ]; then
        # shellcheck disable=SC2086
        tests=$(present "$(srcdir_of "$b")" $PS_TESTS)
        if [ -z "$tests" ]; then
            say "$way: none of the modules exists in this tree"
            : > "$OUT/$way.log"
            echo 0 > "$OUT/$way.seconds"
            return
        fi
    fi
    say "$way: $b/python -m test -j2 --timeout $PS_TIMEOUT $PS_REGRTEST_OPTS${tests:- (every module)} ${*:-}"
    tmp=$OUT/$way.tmp
    if [ $tmp_mode = private ]; then
        mkdir -p "$tmp" && chmod 1777 "$tmp"
        wrap="private_tmp $tmp"
    else
        perf_files > "$OUT/tmp-before"
        wrap=
    fi
    start=$(date +%s)
    # shellcheck disable=SC2086
    (cd "$b" && $wrap env "$@" LD_LIBRARY_PATH="$b${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
        ./python -m test -j2 --timeout "$PS_TIMEOUT" $PS_REGRTEST_OPTS $tests) \
        > "$OUT/$way.log" 2>&1
    rc=$?
    secs=$(( $(date +%s) - start ))
    echo "$secs" > "$OUT/$way.seconds"
    if [ $tmp_mode = private ]; then
        n=$(perf_files "$tmp" | wc -l)
        rm -rf "$tmp"
    else
        n=0
        for f in $(perf_files | comm -13 "$OUT/tmp-before" -); do
            rm -f "$f" && n=$((n + 1))
        done
        rm -f "$OUT/tmp-before"
    fi
    say "$way: $(sed -n 's/^== Tests result: \(.*\) ==$/\1/p' "$OUT/$way.log" | tail -n 1) (exit $rc) in ${secs}s; removed $n perf file(s) it left in /tmp"
}

begin=$(date +%s)
run stock "$STOCK"
run off "$PATCHED"
run perf "$PATCHED" PYTHONPERFSUPPORT=1
run perf_jit "$PATCHED" PYTHON_PERF_JIT_SUPPORT=1
total=$(( $(date +%s) - begin ))

# shellcheck disable=SC2086
python3 - "$OUT" "$STOCK" "$PATCHED" "$total" "$(srcdir_of "$STOCK")" \
    "$PS_TESTS" "$PS_TIMEOUT $PS_REGRTEST_OPTS" <<'EOF'
import os, re, sys

out, stock_build, patched_build, total, stock_src, tests, opts = sys.argv[1:]
WAYS = ("stock", "off", "perf", "perf_jit")
PROGRESS = re.compile(
    r"^(?:\d+:\d\d:\d\d )?(?:load avg: [\d.]+ )?\[\s*\d+/(\d+)(?:/\d+)?\] "
    r"(test_\w+|test\.\S+)(?: (.*))?$")
DURATION = re.compile(r" \((?:[\d.]+ (?:hour|min|sec|ms) ?)+\)$")


def parse(path):
    """{module: result} for one run's log."""
    results, sections = {}, {}
    with open(path, errors="replace") as f:
        lines = f.read().splitlines()
    summary = None
    for i, line in enumerate(lines):
        if line.startswith("== Tests result:"):
            summary = i
    count = None
    for line in lines[:summary]:
        m = PROGRESS.match(line)
        if not m or m.group(2) in results:
            continue
        # The output of a failed test_regrtest may hold progress lines of
        # other runs: only those with this run's number of tests count.
        if count is None:
            count = m.group(1)
        elif m.group(1) != count:
            continue
        text = (m.group(3) or "").split(" -- running:")[0]
        text = DURATION.sub("", text).strip()
        results[m.group(2)] = text or "?"
    if summary is not None:
        heading = None
        for line in lines[summary + 1:]:
            if re.match(r"^\d+ re-run tests?:$", line):
                heading = "re-run"
            elif re.match(r"^\d+ tests? omitted:$", line):
                heading = "omitted"
            elif re.match(r"^\d+ tests? failed:$", line):
                heading = "failed"
            elif line.startswith("    ") and heading:
                for name in line.split():
                    sections.setdefault(heading, set()).add(name)
            elif line.strip():
                heading = None
    for name in sections.get("omitted", ()):
        results[name] = "not run"
    for name in sections.get("re-run", ()):
        if name not in sections.get("failed", ()):
            results[name] = f"{results.get(name, '?')}, passed on re-run"
    return results


runs = {}
for way in WAYS:
    runs[way] = parse(os.path.join(out, f"{way}.log"))
    with open(os.path.join(out, f"{way}.tsv"), "w") as f:
        for name in sorted(runs[way]):
            f.write(f"{name}\t{runs[way][name]}\n")

if tests.split():
    modules = sorted(set(tests.split()))
else:
    modules = sorted(set().union(*(runs[w] for w in WAYS)))
stock_lib = os.path.join(stock_src, "Lib", "test")
in_stock = {m for m in modules
            if os.path.isfile(os.path.join(stock_lib, m + ".py"))
            or os.path.isdir(os.path.join(stock_lib, m))}


def result(way, m):
    if way == "stock" and m not in in_stock:
        return "(not in stock)"
    return runs[way].get(m, "not run")


# The one accepted difference (README, "Reliability"): a child that lists
# its own descriptors sees its own perf map's or dump's.  Accepted only when
# it is the module's single failure, in these ways, as regrtest reports it.
ACCEPTED = {("test_subprocess", "test_pass_fds_redirected"): ("perf", "perf_jit")}


def only_accepted(way, m, expected):
    for (module, test), ways in ACCEPTED.items():
        if module != m or way not in ways or expected != "passed":
            continue
        if runs[way].get(m) != "failed (1 failure)":
            continue
        with open(os.path.join(out, f"{way}.log"), errors="replace") as f:
            log = f.read()
        block = log.split(f"test {m} failed -- ", 1)[1:]
        if block and f", in {test}\n" in block[0].split("\n\n", 1)[0]:
            return f"{test} only"
    return None


differ, same_failures, accepted = [], [], []
for m in modules:
    row = [result(w, m) for w in WAYS]
    expected = row[0] if m in in_stock else "passed"
    for i, way in enumerate(WAYS[1:], 1):
        if row[i] != expected:
            why = only_accepted(way, m, expected)
            if why:
                accepted.append(f"{m} under {way} ({why})")
                row[i] = expected
    if any(r != expected for r in row[1:]):
        differ.append((m, row))
    elif row[0] not in ("passed", "(not in stock)") \
            and not row[0].startswith("skipped"):
        same_failures.append(f"{m} ({row[0]})")

secs = {}
for way in WAYS:
    try:
        with open(os.path.join(out, f"{way}.seconds")) as f:
            secs[way] = int(f.read())
    except (OSError, ValueError):
        secs[way] = 0

md = []
md.append("# CPython 3.11 regression suite: results that differ from stock")
md.append("")
md.append(f"- stock: `{stock_build}/python`; off, perf, perf_jit: "
          f"`{patched_build}/python` with nothing, `PYTHONPERFSUPPORT=1`, "
          f"`PYTHON_PERF_JIT_SUPPORT=1`")
md.append(f"- `python -m test -j2 --timeout {opts.strip()}` "
          + (f"on {len(modules)} module(s): {' '.join(modules)}"
             if tests.split() else f"on every module ({len(modules)})"))
md.append("- wall time: " + ", ".join(f"{w} {secs[w]} s" for w in WAYS)
          + f"; total {total} s")
md.append("- a module missing from the stock tree must pass in the three "
          "other runs")
md.append("")
if differ:
    md.append(f"{len(differ)} module(s) differ:")
    md.append("")
    md.append("| module | stock | off | perf | perf_jit |")
    md.append("|---|---|---|---|---|")
    for m, row in differ:
        md.append(f"| {m} | " + " | ".join(row) + " |")
else:
    md.append(f"No module differs from stock ({len(modules)} compared).")
if accepted:
    md.append("")
    md.append("Accepted (a child lists its own descriptors and sees its perf "
              "file): " + ", ".join(accepted) + ".")
if same_failures:
    md.append("")
    md.append("Same result as stock, but not a pass: "
              + ", ".join(same_failures) + ".")
text = "\n".join(md) + "\n"
with open(os.path.join(out, "table.md"), "w") as f:
    f.write(text)
print()
print(text, end="")
sys.exit(1 if differ else 0)
EOF
rc=$?
say "table: $OUT/table.md; logs: $OUT/{stock,off,perf,perf_jit}.log"
exit $rc
