#!/bin/sh
# "make sanitize": the perf test modules and the stock suites that touch
# frames, threads and signals, on a sanitizer build (build.sh san), with
# profiling off, with PYTHONPERFSUPPORT=1 and with PYTHON_PERF_JIT_SUPPORT=1
# in the environment of every process.  Any sanitizer report fails the run,
# as does any failing test.
#
#   sanitize.sh BUILD_DIR          (e.g. build/san-address_undefined)
#
# PS_QUICK non-empty ("make sanitize QUICK=1", meant for "make test"): only
# the perf test modules but test_perf_gdb, under PYTHONPERFSUPPORT=1 and
# PYTHON_PERF_JIT_SUPPORT=1.  PS_TESTS: other modules instead ("make
# sanitize TESTS=..."); PS_REGRTEST_OPTS: more regrtest options.
# PS_TIMEOUT: regrtest's --timeout for each module (default 1800 s; the
# sanitizers make everything 2 to 3 times slower).  PS_JOBS: modules run at
# the same time (default 2).
#
# Each (mode, module) pair runs in a regrtest of its own (-j1: a crash or a
# timeout is reported as under -j2; -W: the verbose output of a failing
# module is shown), so that every report is tied to the module and the mode
# that produced it.  Sanitizer options:
#   ASAN_OPTIONS   detect_leaks=0:allocator_may_return_null=1:handle_segv=0,
#                  the options of CPython 3.11's CI job "Address sanitizer"
#                  (no leak checking, as there; the MemoryError tests ask
#                  for huge blocks; faulthandler's tests crash on purpose),
#                  plus halt_on_error=1;
#   UBSAN_OPTIONS  print_stacktrace=1:halt_on_error=1;
#   TSAN_OPTIONS   halt_on_error=1:second_deadlock_stack=1, and the
#                  suppressions below (races of stock 3.11 itself);
# each with a log_path under the output directory, so that the report of any
# process (the subprocesses of the tests too, even one whose exit status a
# test ignores) lands in a file collected here.  A process whose environment
# a test replaced writes its report to stderr instead: the logs are searched
# too.
#
# Each run sees, as /tmp, an empty directory of its own (MODE/MODULE.tmp,
# bound on /tmp in a mount namespace of its own: root and unshare(1)),
# removed after it with the perf maps, jitdumps and jitted-*.so files left
# there; the /tmp files of other processes on the machine are neither seen
# nor touched.  Without unshare, the perf files that appeared in /tmp during
# the whole run are removed after it (other processes' included).
#
# Output, in build/sanitize/NAME/ (NAME: the build directory's name):
#   MODE/MODULE.log      regrtest's output
#   reports/MODE/MODULE/ the sanitizers' log files (asan.PID, ubsan.PID...)
#   reports.txt          every distinct report once, with where it was seen
#   summary.txt          the table printed at the end
set -u
PS_TAG=sanitize
. "$(dirname "$0")/common.sh"
clean_python_env

: "${PS_QUICK:=}"
: "${PS_TIMEOUT:=1800}"
: "${PS_JOBS:=2}"
: "${PS_TESTS:=}"
: "${PS_REGRTEST_OPTS:=}"

PERF_TESTS="test_perf_profiler test_perfmaps test_perf_gdb test_perf_hardening"
STOCK_TESTS="test_threading test_signal test_frame test_sys test_generators test_sys_settrace"
# What marks a sanitizer report (and not one of their warnings).
REPORT_RE='ERROR: (Address|Leak|Thread)Sanitizer|WARNING: ThreadSanitizer|: runtime error: '

# run_one MODE MODULE: one module under one mode; writes MODE/MODULE.log and
# MODE/MODULE.result (regrtest's exit status, the module's result as
# regrtest's progress line gives it, the number of reports, seconds;
# tab-separated).
run_one() {
    mode=$1 mod=$2
    rdir=$OUT/reports/$mode/$mod
    log=$OUT/$mode/$mod.log
    mkdir -p "$rdir" "$OUT/$mode"
    case "$mode" in
        off) set -- ;;
        perf) set -- PYTHONPERFSUPPORT=1 ;;
        perf_jit) set -- PYTHON_PERF_JIT_SUPPORT=1 ;;
        *) die "unknown mode $mode" ;;
    esac
    wrap=
    if [ "$PS_SAN_TMP" = private ]; then
        tmp=$OUT/$mode/$mod.tmp
        mkdir -p "$tmp" && chmod 1777 "$tmp"
        wrap="private_tmp $tmp"
    fi
    t0=$(date +%s)
    # shellcheck disable=SC2086
    (cd "$B" && $wrap env "$@" \
        ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:handle_segv=0:halt_on_error=1:log_path=$rdir/asan" \
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$rdir/ubsan" \
        TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$OUT/tsan.supp:log_path=$rdir/tsan" \
        LD_LIBRARY_PATH="$B${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
        ./python -m test -j1 -W --timeout "$PS_TIMEOUT" $PS_REGRTEST_OPTS "$mod") \
        > "$log" 2>&1
    rc=$?
    secs=$(( $(date +%s) - t0 ))
    [ -z "$wrap" ] || rm -rf "$tmp"
    nrep=$(( $(grep -lE "$REPORT_RE" "$rdir"/* 2>/dev/null | wc -l) \
             + $(grep -cE "$REPORT_RE" "$log") ))
    # "[1/1/1] test_x failed (2 errors) (45.1 sec)": keep "failed (2 errors)".
    res=$(sed -n "s/^.*\] $mod \(.*\)\$/\1/p" "$log" | tail -n 1 \
        | sed -e 's/ -- running:.*//' \
              -e 's/ (\([0-9.]* \(hour\|min\|sec\|ms\) *\)*)$//')
    printf '%s\t%s\t%s\t%s\n' "$rc" "${res:-no result}" "$nrep" "$secs" \
        > "$OUT/$mode/$mod.result"
    say "$mode $mod: ${res:-no result} (exit $rc), $nrep sanitizer report(s), ${secs}s"
}


if [ "${1:-}" = --one ]; then
    # Called back through xargs (below) with B and OUT in the environment.
    B=$PS_SAN_BUILD OUT=$PS_SAN_OUT
    run_one "$2" "$3"
    exit 0
fi

[ $# -eq 1 ] || { echo "usage: $0 BUILD_DIR" >&2; exit 2; }
B=$(cd "$1" 2>/dev/null && pwd) || die "no build directory $1: run 'make build SANITIZE=...'"
[ -x "$B/python" ] || die "no interpreter in $B: run 'make build SANITIZE=...'"
OUT=$PS_BUILD/sanitize/$(basename "$B")
sans=$("$B/python" -c '
import sysconfig
print(" ".join(sorted({f for f in (sysconfig.get_config_var("CFLAGS") or "").split()
                       if f.startswith("-fsanitize=")})))' 2>&1) \
    || die "$B/python does not start: $sans"
[ -n "$sans" ] || die "$B/python is built without sanitizers"

tests=
for t in $PERF_TESTS; do
    if [ -f "$PS_SRC/Lib/test/$t.py" ] || [ -d "$PS_SRC/Lib/test/$t" ]; then
        tests="$tests $t"
    fi
done
if [ -n "$PS_QUICK" ]; then
    modes="perf perf_jit"
    # gdb under AddressSanitizer is slow (2 minutes a mode): "make
    # sanitize" runs test_perf_gdb, the quick run leaves it out.
    tests=$(printf '%s\n' $tests | grep -vx test_perf_gdb | tr '\n' ' ')
else
    modes="off perf perf_jit"
    tests="$tests $STOCK_TESTS"
fi
[ -z "$PS_TESTS" ] || tests=" $PS_TESTS"
[ -n "$tests" ] || die "no perf test module in $PS_SRC/Lib/test"

rm -rf "$OUT"
mkdir -p "$OUT"
# Races in stock 3.11.2 that any threaded program hits, whatever the perf
# support does: only these are suppressed.
cat > "$OUT/tsan.supp" <<'EOF'
# Py_FinalizeEx -> _PyRuntimeState_Fini -> _PyMem_SetDefaultAllocator writes
# _PyMem_Raw while a finished thread's free_threadstate() -> PyMem_RawFree()
# read it without synchronisation (Objects/obmalloc.c, Python/pystate.c).
race:_PyMem_SetDefaultAllocator
EOF
say "$B/python ($sans)"
say "modes: $modes; modules:$tests"
say "$PS_JOBS at a time, --timeout $PS_TIMEOUT; output in $OUT"

# The files that profiled processes leave in /tmp for perf.
perf_files() {
    ls -d /tmp/perf-*.map /tmp/jit-*.dump /tmp/jitted-*.so 2>/dev/null | sort
}
if private_tmp_works "$OUT/probe.tmp"; then
    tmp_mode=private
else
    tmp_mode=shared
    warn "no private /tmp (it needs root and unshare): the perf files that appear in /tmp during the run are removed after it, other processes' included"
    perf_files > "$OUT/tmp-before"
fi

t0=$(date +%s)
for mode in $modes; do
    for t in $tests; do
        printf '%s %s\n' "$mode" "$t"
    done
done | PS_SAN_BUILD=$B PS_SAN_OUT=$OUT PS_SAN_TMP=$tmp_mode \
    xargs -n 2 -P "$PS_JOBS" sh "$0" --one
secs=$(( $(date +%s) - t0 ))

if [ $tmp_mode = shared ]; then
    perf_files | comm -13 "$OUT/tmp-before" - | while IFS= read -r f; do
        rm -f "$f"
    done
    rm -f "$OUT/tmp-before"
fi

# ---- summary ------------------------------------------------------------------
failed=0
{
    printf '%-9s %-20s %-30s %7s %7s\n' mode module result reports seconds
    printf '%-9s %-20s %-30s %7s %7s\n' --------- -------------------- \
        ------------------------------ ------- -------
    for mode in $modes; do
        for t in $tests; do
            if ! IFS='	' read -r rc res nrep s < "$OUT/$mode/$t.result"; then
                rc=1 res="did not run" nrep=0 s=0
            fi
            case "$res" in passed|skipped*) ;; *) failed=1 ;; esac
            [ "$rc" -eq 0 ] && [ "$nrep" -eq 0 ] || failed=1
            printf '%-9s %-20s %-30s %7s %7s\n' "$mode" "$t" "$res" "$nrep" "$s"
        done
    done
} > "$OUT/summary.txt" 2>/dev/null

# Every report once: grouped by the error line and the top of the stack
# (addresses, pids and thread numbers left out), with where it was seen.
python3 - "$OUT" "$REPORT_RE" > "$OUT/reports.txt" <<'EOF'
import os, re, sys
out, marker = sys.argv[1], re.compile(sys.argv[2])
frame = re.compile(r"^\s*#(\d+) 0x[0-9a-f]+ in (.*)$")
noise = re.compile(r"0x[0-9a-f]+|==\d+==|\bT\d+\b|\bpid=\d+|\(pid \d+\)")

def split_reports(lines):
    """The reports in LINES: from each marker line, on to ASAN's ABORTING
    line, or to the first line after a stack that is neither a frame nor
    part of the report."""
    i = 0
    while i < len(lines):
        if not marker.search(lines[i]):
            i += 1
            continue
        start = i
        # ASAN and TSAN open a report with a line of "=".
        if start > 0 and set(lines[start - 1].strip()) == {"="}:
            start -= 1
        j, seen_frames = i + 1, False
        while j < len(lines) and j - i < 400:
            line = lines[j]
            if re.match(r"==\d+==ABORTING", line):
                j += 1
                break
            if frame.match(line):
                seen_frames = True
            elif seen_frames and not line.strip():
                # A blank line after a stack: another section (ASAN's
                # "allocated by" ...) may follow; stop only at a line that
                # is not part of any report.
                k = j + 1
                if k < len(lines) and (frame.match(lines[k]) or re.match(
                        r"(\S.* (is located|allocated|freed|previously)|"
                        r"SUMMARY:|Shadow|  |Thread T|Previous|Location|Mutex)",
                        lines[k])):
                    j += 1
                    continue
                break
            elif seen_frames and line.startswith("SUMMARY:"):
                j += 1
                break
            j += 1
        yield lines[start:j]
        i = j

def signature(rep):
    first = next(l for l in rep if marker.search(l))
    frames = []
    for l in rep:
        m = frame.match(l)
        if m:
            frames.append(noise.sub("", m.group(2)).strip())
            if len(frames) == 6:
                break
    return (noise.sub("", first).strip(), tuple(frames))

groups = {}
for root, dirs, files in os.walk(out):
    dirs.sort()
    for name in sorted(files):
        path = os.path.join(root, name)
        rel = os.path.relpath(path, out)
        parts = rel.split(os.sep)
        if parts[0] == "reports" and len(parts) == 4:
            where = f"{parts[1]} {parts[2]} ({parts[3]})"
        elif name.endswith(".log") and len(parts) == 2:
            where = f"{parts[0]} {name[:-4]} (stderr, in the log)"
        else:
            continue
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()
        for rep in split_reports(lines):
            g = groups.setdefault(signature(rep), {"text": rep, "where": []})
            g["where"].append(where)

print(f"{len(groups)} distinct sanitizer report(s)")
for n, g in enumerate(groups.values(), 1):
    print()
    print(f"---- report {n}: seen {len(g['where'])} time(s): "
          + "; ".join(sorted(set(g["where"]))))
    print("\n".join(g["text"]))
EOF

printf '\n[sanitize] %s, %s (%s s); logs in %s\n' "$B" "$sans" "$secs" "$OUT"
sed 's/^/  /' "$OUT/summary.txt"
nrep=$(sed -n '1s/ distinct.*//p' "$OUT/reports.txt")
if [ "${nrep:-0}" != 0 ]; then
    failed=1
    printf '\n'
    cat "$OUT/reports.txt"
fi
if [ $failed -eq 0 ]; then
    say "OK: every module passed, no sanitizer report"
else
    say "FAILED: a module failed or a sanitizer reported (see above)"
fi
exit $failed
