#!/bin/sh
# "make test": build both interpreters, check the generated patches, run the
# perf tests and the stock suites most likely to be hurt by the patch set,
# run the perf tests on a sanitizer build, check the binary interface, the
# exported patch and the Debian packaging (check-deb); then print a summary table and the line
# "N passed, M failed" (counting steps).  Every step runs even when an
# earlier one failed (steps that need a build which failed are skipped);
# the exit status is 1 if any step failed.  Logs: build/test/<step>.log.
#
# PS_MAKE is the make that called us (the Makefile passes $(MAKE)).
set -u
PS_TAG="test"
. "$(dirname "$0")/common.sh"
clean_python_env

: "${PS_MAKE:=make}"
: "${PS_CHECK_PATCH:=yes}"
: "${PS_ABI_CHECK:=yes}"
: "${PS_SANITIZE_CHECK:=yes}"
T=$PS_BUILD/test
FP=$PS_BUILD/fp/python
NOFP=$PS_BUILD/nofp/python
rm -rf "$T"
mkdir -p "$T/work"
export LD_LIBRARY_PATH="$PS_BUILD/fp${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# The tests skip, with the reason, when perf, gdb or unshare is missing
# (CPython's convention); "make test" has installed them: such a skip fails.
export PERF_TESTS_REQUIRE_TOOLS=1

# (test_sys, test_threading and test_signal run in UNDER_PERF, twice.)
STOCK="test_embed test_cmd_line test_capi test_os test_sysconfig test_gdb test_subprocess"
# The suites that cover what the fast calls under the perf trampoline must
# keep exactly as stock 3.11 does: tracing and profiling hooks, recursion,
# exceptions and tracebacks, frames, generators, coroutines, threads, and
# the other users of co_extra (test_code: their free functions).  They
# run with the perf support on in every process (environment variables, so
# that regrtest's workers and the subprocesses of the tests get it too).
UNDER_PERF="test_code test_signal test_sys_settrace test_sys_setprofile test_generators test_coroutines test_asyncgen test_exceptions test_frame test_inspect test_traceback test_threading test_sys test_scope test_contextlib test_pdb test_bdb test_gc test_weakref"

results=$T/results
: > "$results"
nstep=0

# step NAME COMMAND...: run with a header, log to build/test/NN-name.log,
# record passed/failed and the time taken.
step() {
    name=$1; shift
    nstep=$((nstep + 1))
    log=$T/$(printf '%02d' $nstep)-$(printf '%s' "$name" | tr -c 'A-Za-z0-9_.\n-' '_').log
    printf '\n========================================================================\n'
    printf '[test] step %d: %s\n' $nstep "$name"
    printf '[test] $ %s\n' "$*"
    printf '========================================================================\n'
    t0=$(date +%s)
    { "$@" 2>&1; echo $? > "$T/rc"; } | tee "$log"
    rc=$(cat "$T/rc")
    secs=$(( $(date +%s) - t0 ))
    if [ "$rc" -eq 0 ]; then res=passed; else res=failed; fi
    printf '%s\t%s\t%s\n' "$name" "$res" "$secs" >> "$results"
    printf '[test] step %d (%s): %s in %ss (log: %s)\n' $nstep "$name" "$res" "$secs" "$log"
    return "$rc"
}

skip() {
    nstep=$((nstep + 1))
    printf '\n[test] step %d: %s: SKIPPED (%s)\n' $nstep "$1" "$2"
    printf '%s\t%s\t%s\n' "$1" "skipped ($2)" 0 >> "$results"
}

# The perf test modules present in the working tree's Lib/test.
existing_tests() {
    for t in "$@"; do
        if [ -f "$PS_SRC/Lib/test/$t.py" ] || [ -d "$PS_SRC/Lib/test/$t" ]; then
            printf '%s ' "$t"
        fi
    done
}

in_dir() { d=$1; shift; (cd "$d" && "$@"); }

# The files that processes profiled by a step leave in /tmp for perf.
perf_files() {
    ls -d /tmp/perf-*.map /tmp/jit-*.dump /tmp/jitted-*.so 2>/dev/null | sort
}

# cleaning_tmp DIR COMMAND...: run COMMAND in DIR with a /tmp of its own
# (private_tmp), removed after it with the perf files left there.  Without
# unshare: in the shared /tmp, then remove the perf files that appeared
# there meanwhile (other processes' too).
cleaning_tmp() {
    _dir=$1; shift
    rc=0
    if private_tmp_works "$T/probe.tmp"; then
        _tmp=$T/step.tmp
        mkdir -p "$_tmp" && chmod 1777 "$_tmp"
        private_tmp "$_tmp" sh -c 'cd "$0" && exec "$@"' "$_dir" "$@" || rc=$?
        rm -rf "$_tmp"
        return $rc
    fi
    perf_files > "$T/tmp-before"
    in_dir "$_dir" "$@" || rc=$?
    perf_files | comm -13 "$T/tmp-before" - | while read -r f; do
        rm -f "$f"
    done
    return $rc
}

# perf_tests_step NAME fp|nofp BUILD_OK [REGRTEST OPTION...]: the perf test
# modules present in the working tree's Lib/test, on one build.
perf_tests_step() {
    _name=$1 _flavor=$2 _ok=$3
    shift 3
    _tests=$(existing_tests test_perf_profiler test_perfmaps test_perf_gdb \
        test_perf_hardening)
    if [ "$_ok" = no ]; then
        skip "$_name" "$_flavor build failed"
    elif [ -z "$_tests" ]; then
        skip "$_name" "no perf test module in Lib/test"
    else
        # shellcheck disable=SC2086
        step "$_name" in_dir "$PS_BUILD/$_flavor" \
            env LD_LIBRARY_PATH="$PS_BUILD/$_flavor" ./python -m test -j2 -v \
            "$@" $_tests
    fi
}

fp_ok=no nofp_ok=no
step "build fp" $PS_MAKE --no-print-directory build-fp && fp_ok=yes
step "build nofp" $PS_MAKE --no-print-directory build-nofp && nofp_ok=yes
step "check-regen" $PS_MAKE --no-print-directory check-regen

perf_tests_step "perf tests (fp)" fp $fp_ok

# The tests that run programs as another user, from a checkout under a
# mode 0700 directory (root's home, where a newcomer clones).
if [ $fp_ok = no ]; then
    skip "other users (closed checkout)" "fp build failed"
elif [ "$(id -u)" -ne 0 ]; then
    skip "other users (closed checkout)" "needs root"
else
    step "other users (closed checkout)" \
        sh "$PS_TOP/Tools/perfsupport/closed-checkout.sh" fp
fi

if [ ! -f "$PS_TOP/test_perf.py" ]; then
    skip "test_perf.py" "no test_perf.py in the repository"
elif [ $fp_ok = no ] || [ $nofp_ok = no ]; then
    skip "test_perf.py" "a build failed"
else
    step "test_perf.py" in_dir "$T/work" env PERF_TEST_NOFP_PYTHON="$NOFP" \
        "$FP" "$PS_TOP/test_perf.py"
fi

# TestRealPerf needs frame pointers (perf record -g): on this build the
# jitdump classes (TestRealPerfJit, TestJitDump) are what matters.
perf_tests_step "perf tests (nofp)" nofp $nofp_ok -i TestRealPerf

if [ $fp_ok = no ]; then
    skip "stock suites (fp)" "fp build failed"
else
    # shellcheck disable=SC2086
    step "stock suites (fp)" in_dir "$PS_BUILD/fp" ./python -m test -j2 --timeout 900 $STOCK
fi

if [ $fp_ok = no ]; then
    skip "suites under -X perf" "fp build failed"
else
    # shellcheck disable=SC2086
    step "suites under -X perf" cleaning_tmp "$PS_BUILD/fp" \
        env PYTHONPERFSUPPORT=1 ./python -m test -j2 --timeout 900 $UNDER_PERF
fi
if [ $nofp_ok = no ]; then
    skip "suites under -X perf_jit" "nofp build failed"
else
    # shellcheck disable=SC2086
    step "suites under -X perf_jit" cleaning_tmp "$PS_BUILD/nofp" \
        env PYTHON_PERF_JIT_SUPPORT=1 ./python -m test -j2 --timeout 900 \
        $UNDER_PERF
fi

# Flame graphs: real recordings of both builds, folded, drawn and checked in
# headless Chromium.
if [ $fp_ok = no ] || [ $nofp_ok = no ]; then
    skip "flame graphs" "a build failed"
else
    step "flame graphs" python3 "$PS_TOP/Tools/perfsupport/test_flamegraph.py" -v
fi

# ASAN + UBSAN: the perf test modules (but gdb's) under both backends.
if [ "$PS_SANITIZE_CHECK" = no ]; then
    skip "sanitizers (quick)" "SANITIZE_CHECK=no"
else
    step "sanitizers (quick)" $PS_MAKE --no-print-directory sanitize QUICK=1 \
        SANITIZE=address,undefined
fi

if [ "$PS_ABI_CHECK" = no ]; then
    skip "abi-check" "ABI_CHECK=no"
else
    step "abi-check" $PS_MAKE --no-print-directory abi-check
fi

if [ "$PS_CHECK_PATCH" = no ]; then
    skip "check-patch" "CHECK_PATCH=no"
else
    step "check-patch" $PS_MAKE --no-print-directory check-patch
fi

step "check-deb" $PS_MAKE --no-print-directory check-deb

# ---- summary ------------------------------------------------------------------
passed=$(awk -F'\t' '$2 == "passed"' "$results" | wc -l)
failed=$(awk -F'\t' '$2 == "failed"' "$results" | wc -l)
skipped=$(awk -F'\t' '$2 ~ /^skipped/' "$results" | wc -l)
printf '\n[test] summary (logs in %s)\n' "$T"
printf '  %-29s %-40s %8s\n' step result seconds
printf '  %-29s %-40s %8s\n' ----------------------------- ---------------------------------------- --------
awk -F'\t' '{ printf "  %-29s %-40s %8s\n", $1, $2, $3 }' "$results"
total=$(awk -F'\t' '{ s += $3 } END { print s + 0 }' "$results")
printf '  %-29s %-40s %8s\n' total "" "$total"
[ "$skipped" -eq 0 ] || printf '[test] %d step(s) skipped\n' "$skipped"
printf '%d passed, %d failed\n' "$passed" "$failed"
[ "$failed" -eq 0 ]
