#!/bin/sh
# Prove that the perf support keeps the binary interface of stock 3.11.
#
#   abi-check.sh STOCK_SRC PATCHED_SRC OUTDIR
#
# STOCK_SRC is a pristine CPython 3.11 tree, PATCHED_SRC the patched working
# tree (neither may be configured in tree).  Both are built out of tree,
# --enable-shared, with the same compiler and flags (those of build/fp plus
# -g, on top of configure's default -O3 -g), into OUTDIR/stock-shared and
# OUTDIR/patched-shared (libpython and the interpreter only, no extension
# modules); a build is skipped when no source file is newer
# than the stamp of its last successful make.  (Checked: one int added to
# struct _is or struct pyruntimestate makes the abidiff check FAIL.)
#
# Checks, each PASS or FAIL, summarised at the end (exit status 1 on any
# FAIL):
#   abidiff      abidiff on the two libpython3.11.so.1.0: only added
#                functions and variables are allowed.  No header filter and
#                no --drop-private-types: PyConfig, PyInterpreterState,
#                PyThreadState and _PyRuntimeState live in internal headers
#                and a change of their layout must count.  The whole report
#                is OUTDIR/abidiff.txt.
#   extension    abi/perfprobe.c, compiled against the STOCK headers (stock
#                Include/ + the stock build's pyconfig.h), imported by the
#                PATCHED python with -X perf: it calls a Python function from
#                C and reads object, code and thread-state fields through the
#                stock layouts; /tmp/perf-PID.map must name that function.
#   embedding    abi/embed_probe.c, compiled against the stock headers and
#                linked against the STOCK libpython, run on the PATCHED
#                library (LD_LIBRARY_PATH) with PYTHONPERFSUPPORT=1:
#                /tmp/perf-PID.map must name embedded_probe.
# Both probes also run on the stock library as a control (no perf support
# there: no map file may appear).  Every map file the probes create is
# removed.
#
# Environment: PS_CC (default "ccache gcc" when ccache exists),
# PS_FP_CFLAGS (default -fno-omit-frame-pointer -mno-omit-leaf-frame-pointer),
# PS_OPT_CFLAGS (extra CFLAGS, default none).
set -eu
PS_TAG=abi
. "$(dirname "$0")/common.sh"
clean_python_env
clean_make_env

if [ $# -ne 3 ]; then
    echo "usage: $0 STOCK_SRC PATCHED_SRC OUTDIR" >&2
    exit 2
fi
HERE=$(cd "$(dirname "$0")" && pwd)
STOCK_SRC=$(cd "$1" && pwd) || die "no such directory: $1"
PATCHED_SRC=$(cd "$2" && pwd) || die "no such directory: $2"
mkdir -p "$3"
OUT=$(cd "$3" && pwd)

if [ -z "${PS_CC:-}" ]; then
    if command -v ccache >/dev/null 2>&1; then PS_CC="ccache gcc"; else PS_CC=gcc; fi
fi
: "${PS_FP_CFLAGS:=-fno-omit-frame-pointer -mno-omit-leaf-frame-pointer}"
: "${PS_OPT_CFLAGS:=}"
CFLAGS_ALL=$(printf '%s' "$PS_FP_CFLAGS $PS_OPT_CFLAGS -g" | sed 's/^ *//; s/  */ /g')
LIB=libpython3.11.so.1.0
STOCK_B=$OUT/stock-shared
PATCHED_B=$OUT/patched-shared
PROBE=$OUT/probe

command -v abidiff >/dev/null 2>&1 \
    || die "abidiff not found (Debian package abigail-tools)"

now() { date +%s; }
T0=$(now)
SUMMARY=$OUT/summary.txt
: > "$SUMMARY"
record() {   # record CHECK PASS|FAIL DETAIL
    printf '%-22s %-4s %s\n' "$1" "$2" "$3" >> "$SUMMARY"
    if [ "$2" = PASS ]; then say "$1: PASS $3"; else say "$1: FAIL $3"; fi
}

# ---- builds ------------------------------------------------------------------
# build_shared NAME SRC DIR
build_shared() {
    _name=$1 _src=$2 _dir=$3
    _log=$_dir/build.log
    [ -x "$_src/configure" ] || die "$_name: $_src is not a CPython source tree"
    [ -f "$_src/Include/patchlevel.h" ] || die "$_name: no Include/patchlevel.h in $_src"
    if [ -f "$_src/pyconfig.h" ] || [ -f "$_src/Makefile" ]; then
        die "$_name: $_src is configured in tree (pyconfig.h/Makefile there): out-of-tree builds need a clean tree ('make distclean' in it)"
    fi
    mkdir -p "$_dir"
    _want=$(printf 'srcdir=%s\nCC=%s\nCFLAGS=%s\nflags=--enable-shared\n' \
        "$_src" "$PS_CC" "$CFLAGS_ALL")
    _have=$(cat "$_dir/abi-config" 2>/dev/null || true)
    if [ ! -f "$_dir/Makefile" ] || [ "$_want" != "$_have" ]; then
        [ -f "$_dir/Makefile" ] && say "$_name: configuration changed, configuring again"
        find "$_dir" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
        say "$_name: configure --enable-shared CC='$PS_CC' CFLAGS='$CFLAGS_ALL' (log: $_log)"
        (cd "$_dir" && "$_src/configure" --enable-shared CC="$PS_CC" CFLAGS="$CFLAGS_ALL") \
            > "$_log" 2>&1 || build_failed "$_name" configure "$_log"
        printf '%s\n' "$_want" > "$_dir/abi-config"
        rm -f "$_dir/abi-build.stamp"
    fi
    if [ -f "$_dir/$LIB" ] && [ -f "$_dir/abi-build.stamp" ] \
       && [ -z "$(newer_sources "$_src" "$_dir/abi-build.stamp")" ]; then
        say "$_name: up to date (no source newer than $_dir/abi-build.stamp), make skipped"
        return 0
    fi
    _jobs=$(nproc_)
    say "$_name: make -j$_jobs python pybuilddir.txt (log: $_log)"
    _t=$(now)
    # The stamp gets the time make started: a source edited during the
    # build is newer than it, so the next run builds again.
    touch "$_dir/abi-build.start"
    # Only what the checks use: libpython, the interpreter and its build
    # directory (sysconfig); the extension modules are not built.
    (cd "$_dir" && make -j"$_jobs" python pybuilddir.txt) >> "$_log" 2>&1 \
        || build_failed "$_name" "make" "$_log"
    [ -f "$_dir/$LIB" ] || build_failed "$_name" "make (no $LIB)" "$_log"
    mv -f "$_dir/abi-build.start" "$_dir/abi-build.stamp"
    say "$_name: built in $(( $(now) - _t ))s"
}

# Source files that can change libpython or the interpreter, newer than $2.
newer_sources() {
    (cd "$1" && find Include Objects Python Modules Parser Programs \
        configure Makefile.pre.in pyconfig.h.in \
        -newer "$2" \( -name '*.[chS]' -o -name '*.in' -o -name '*.h.in' \
        -o -name configure -o -name '*.py' \) -print 2>/dev/null | head -n 1)
}

build_failed() {
    printf '[abi] BUILD FAILED (%s, step: %s); log: %s; last 30 lines:\n' "$1" "$2" "$3" >&2
    tail -n 30 "$3" | indent >&2
    exit 1
}

build_shared stock "$STOCK_SRC" "$STOCK_B"
build_shared patched "$PATCHED_SRC" "$PATCHED_B"

# ---- abidiff ---------------------------------------------------------------------
REPORT=$OUT/abidiff.txt
say "abidiff stock-shared/$LIB patched-shared/$LIB (report: $REPORT)"
rc=0
abidiff "$STOCK_B/$LIB" "$PATCHED_B/$LIB" > "$REPORT" 2>&1 || rc=$?

# Sum the number before WORD over the "changes summary" lines, e.g.
#   Functions changes summary: 0 Removed, 0 Changed (2 filtered), 3 Added functions
#   Function symbols changes summary: 0 Removed, 1 Added function symbol not ...
sum_of() {
    grep 'changes summary:' "$REPORT" | sed -n "s/.*[:,] \([0-9][0-9]*\) $1.*/\1/p" \
        | awk '{ s += $1 } END { print s + 0 }'
}
removed=$(sum_of Removed)
changed=$(sum_of Changed)
added=$(sum_of Added)
filtered=$(grep 'changes summary:' "$REPORT" | sed -n 's/.*Changed (\([0-9][0-9]*\) filtered.*/\1/p' \
    | awk '{ s += $1 } END { print s + 0 }')

if [ $((rc & 3)) -ne 0 ]; then
    record abidiff FAIL "abidiff itself failed (exit $rc)"
    indent "$REPORT" | head -n 40
elif [ $((rc & 8)) -ne 0 ] || [ "$removed" -ne 0 ] || [ "$changed" -ne 0 ]; then
    record abidiff FAIL "exit $rc: $removed removed, $changed changed, $added added"
    indent "$REPORT"
elif [ $((rc & 4)) -ne 0 ] && [ "$added" -eq 0 ]; then
    # An ABI change that is neither a removal, a change nor an addition.
    record abidiff FAIL "exit $rc (ABI change) but no added symbol: unrecognised report"
    indent "$REPORT"
else
    _f=""
    if [ "$filtered" -gt 0 ]; then
        # Changes libabigail deems harmless (e.g. an added enumerator) do
        # not fail the check, but they are shown.
        _f=" ($filtered harmless: see $OUT/abidiff-harmless.txt)"
        abidiff --harmless "$STOCK_B/$LIB" "$PATCHED_B/$LIB" \
            > "$OUT/abidiff-harmless.txt" 2>&1 || true
        say "changes abidiff filtered as harmless:"
        indent "$OUT/abidiff-harmless.txt"
    fi
    record abidiff PASS "exit $rc: 0 removed, 0 changed$_f, $added added"
    if [ "$added" -gt 0 ]; then
        say "added symbols:"
        grep -E '^[[:space:]]*\[A\]' "$REPORT" | sed 's/^[[:space:]]*//' | indent
    fi
fi

# ---- probes compiled against the stock headers ---------------------------------
mkdir -p "$PROBE"
STOCK_CPPFLAGS="-I$STOCK_SRC/Include -I$STOCK_B"
PROBE_CFLAGS="-O2 -g -Wall -Werror=implicit-function-declaration"
ext_suffix=$(LD_LIBRARY_PATH=$STOCK_B "$STOCK_B/python" -c \
    'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))') \
    || die "the stock build's python does not run"
say "compiling abi/perfprobe.c and abi/embed_probe.c against the stock headers"
# shellcheck disable=SC2086
gcc $PROBE_CFLAGS -fPIC -shared $STOCK_CPPFLAGS "$HERE/abi/perfprobe.c" \
    -o "$PROBE/perfprobe$ext_suffix" 2>&1 | indent
[ -f "$PROBE/perfprobe$ext_suffix" ] || die "perfprobe did not compile"
# shellcheck disable=SC2086
gcc $PROBE_CFLAGS $STOCK_CPPFLAGS "$HERE/abi/embed_probe.c" \
    -L"$STOCK_B" -lpython3.11 -o "$PROBE/embed_probe" 2>&1 | indent
[ -x "$PROBE/embed_probe" ] || die "embed_probe did not compile"
readelf -d "$PROBE/embed_probe" | grep -q "NEEDED.*\[$LIB\]" \
    || die "embed_probe is not linked against $LIB"
cp "$HERE/abi/probe_run.py" "$PROBE/probe_run.py"

# Remove the map/jitdump of a process (by pid) and say whether the map named
# a function: map_names PID NAME -> exit status 0 if "py::NAME:" was there.
map_names() {
    _m=/tmp/perf-$1.map
    _found=1
    if [ -f "$_m" ] && grep -q " py::$2:" "$_m"; then _found=0; fi
    rm -f "$_m" "/tmp/jit-$1.dump"
    return $_found
}
pid_of() { sed -n 's/.*pid=\([0-9][0-9]*\).*/\1/p' | head -n 1; }

# (1) the extension, under the patched interpreter with -X perf
say "extension: patched python -X perf probe_run.py (perfprobe built on stock headers)"
out=$(cd "$PROBE" && LD_LIBRARY_PATH=$PATCHED_B PYTHONPATH=$PROBE \
      "$PATCHED_B/python" -X perf probe_run.py 2>&1) && st=0 || st=$?
printf '%s\n' "$out" | indent
pid=$(printf '%s\n' "$out" | pid_of)
problems=""
[ "$st" -eq 0 ] || problems="$problems exit=$st;"
for want in "calls=5 sum=20 type=int" "code_info ok" "tstate ok" "trampoline True"; do
    printf '%s\n' "$out" | grep -qx "$want" || problems="$problems missing '$want';"
done
if [ -z "$pid" ]; then
    problems="$problems no pid printed;"
elif ! map_names "$pid" probe_callback; then
    problems="$problems /tmp/perf-$pid.map does not name probe_callback;"
fi
if [ -z "$problems" ]; then
    record extension PASS "(map of pid $pid named py::probe_callback; removed)"
else
    record extension FAIL "$problems"
fi

# Control: the same extension under the stock interpreter.
out=$(cd "$PROBE" && LD_LIBRARY_PATH=$STOCK_B PYTHONPATH=$PROBE \
      "$STOCK_B/python" probe_run.py 2>&1) && st=0 || st=$?
pid=$(printf '%s\n' "$out" | pid_of)
if [ "$st" -eq 0 ] && printf '%s\n' "$out" | grep -qx "tstate ok" \
   && printf '%s\n' "$out" | grep -qx "code_info ok" \
   && printf '%s\n' "$out" | grep -qx "trampoline absent"; then
    record extension-control PASS "(stock python, no perf support)"
else
    printf '%s\n' "$out" | indent
    record extension-control FAIL "perfprobe misbehaves under the stock python"
fi
if [ -n "$pid" ]; then rm -f "/tmp/perf-$pid.map"; fi

# (2) the embedding program: stock headers and stock libpython at link time,
# the patched library at run time.  An uninstalled out-of-tree build finds
# its library through PYTHONPATH: the source Lib/ and the build's
# lib.<platform> directory (extension modules; _sysconfigdata).
# The shell that becomes embed_probe (same pid) first removes a map that an
# earlier process with that pid left in /tmp (perf's files stay after their
# process, and pids come round): "writes no map" must be embed_probe's doing.
run_embed() {   # run_embed BUILDDIR SRC [VAR=value...]
    _b=$1 _s=$2
    shift 2
    _platlib=$_b/$(cat "$_b/pybuilddir.txt")
    (cd "$PROBE" && env LD_LIBRARY_PATH="$_b" PYTHONHOME="$_s:$_b" \
        PYTHONPATH="$_s/Lib:$_platlib" "$@" \
        sh -c 'rm -f "/tmp/perf-$$.map"; exec ./embed_probe' 2>&1)
}
say "embedding: embed_probe (linked to stock $LIB) on the patched library, PYTHONPERFSUPPORT=1"
out=$(run_embed "$PATCHED_B" "$PATCHED_SRC" PYTHONPERFSUPPORT=1) && st=0 || st=$?
printf '%s\n' "$out" | indent
pid=$(printf '%s\n' "$out" | pid_of)
problems=""
[ "$st" -eq 0 ] || problems="$problems exit=$st;"
printf '%s\n' "$out" | grep -q '^embedded_probe=285 pid=[0-9]* trampoline=True$' \
    || problems="$problems unexpected output;"
if [ -z "$pid" ]; then
    problems="$problems no pid printed;"
elif ! map_names "$pid" embedded_probe; then
    problems="$problems /tmp/perf-$pid.map does not name embedded_probe;"
fi
if [ -z "$problems" ]; then
    record embedding PASS "(map of pid $pid named py::embedded_probe; removed)"
else
    record embedding FAIL "$problems"
fi

# Control: the same program on the stock library.
out=$(run_embed "$STOCK_B" "$STOCK_SRC" PYTHONPERFSUPPORT=1) && st=0 || st=$?
pid=$(printf '%s\n' "$out" | pid_of)
if [ "$st" -eq 0 ] && printf '%s\n' "$out" | grep -q '^embedded_probe=285 pid=[0-9]* trampoline=absent$' \
   && [ -n "$pid" ] && [ ! -e "/tmp/perf-$pid.map" ]; then
    record embedding-control PASS "(stock library: runs, writes no map)"
else
    printf '%s\n' "$out" | indent
    record embedding-control FAIL "embed_probe misbehaves on the stock library"
fi
if [ -n "$pid" ]; then rm -f "/tmp/perf-$pid.map"; fi

# ---- summary ------------------------------------------------------------------------
say "summary ($(( $(now) - T0 ))s; builds in $STOCK_B and $PATCHED_B):"
indent "$SUMMARY"
if grep -q ' FAIL ' "$SUMMARY"; then
    say "ABI CHECK FAILED"
    exit 1
fi
say "ABI CHECK PASSED: the patched libpython is a drop-in replacement for stock 3.11"
