#!/bin/sh
# Export the whole patch set as one patch and check that it works on its own.
#
#   export-patch.sh           write build/perf-support-3.11.patch: a -p1
#                             unified diff from the pristine tree to the
#                             working tree (new files, hand-written and
#                             generated patches), then apply it to a fresh
#                             unpack of the source in build/check-patch/ and
#                             compare the result with the working tree
#   export-patch.sh --build   also, in that fresh tree, a plain in-tree
#                             "./configure && make -j$(nproc)" (with ccache)
#                             and check that "./python -X perf" names functions
#                             and sysconfig has PY_HAVE_PERF_TRAMPOLINE = 1
set -eu
PS_TAG="patch"
. "$(dirname "$0")/common.sh"
clean_python_env
clean_make_env

build=no
[ "${1:-}" = --build ] && build=yes
: "${PS_CC:=gcc}"

OUTP=$PS_BUILD/perf-support-3.11.patch
X=$PS_BUILD/export
[ -d "$PS_SRC" ] && [ -d "$PS_PRISTINE/" ] || die "no trees: run 'make source'"

rm -rf "$X"
mkdir -p "$X"
ln -s "$PS_PRISTINE/" "$X/a"
ln -s "$PS_SRC/" "$X/b"
rc=0
(cd "$X" && LC_ALL=C diff -ruN -x __pycache__ -x '*.pyc' -x '*.orig' -x '*.rej' \
    -x autom4te.cache -x perfsupport -x bench a b) > "$X/body.diff" || rc=$?
[ $rc -le 1 ] || die "diff failed"
if grep -q '^Binary files' "$X/body.diff"; then
    grep '^Binary files' "$X/body.diff" | indent >&2
    die "binary differences cannot go into a text patch"
fi
# Drop timestamps (they only reflect when the trees were made) except the
# epoch ones, by which patch recognises created and removed files.
sed -e '/^\(---\|+++\) /{/	1970-01-01 /!s/	.*//}' -e '/^diff -ruN /d' "$X/body.diff" > "$X/body.clean"

files=$(sed -n 's|^+++ b/\([^	]*\).*|\1|p' "$X/body.clean")
nfiles=$(printf '%s\n' "$files" | grep -c . || true)
nnew=$(grep -c '^--- a/[^	]*	1970-01-01' "$X/body.clean" || true)
ver=$(readlink "$PS_PRISTINE")
{
    echo "perf-support-3.11.patch: perf profiler support for CPython 3.11 (-X perf,"
    echo "-X perf_jit and the sys stack-trampoline functions of newer releases)."
    echo
    echo "Made by Tools/perfsupport/export-patch.sh from $ver + the new files +"
    echo "patches/series ($(series_names | tr '\n' ' ' | sed 's/ $//'))."
    echo "It already contains the regenerated configure and Argument Clinic output."
    echo "Apply at the top of the source tree:  patch -p1 < perf-support-3.11.patch"
    echo "then build as usual:  ./configure && make"
    echo
    echo "$nfiles files ($nnew new):"
    printf '%s\n' "$files" | sed 's/^/  /'
    echo
    cat "$X/body.clean"
} > "$OUTP"
say "wrote $OUTP ($nfiles files, $nnew new, $(wc -l < "$OUTP") lines)"
if [ "$nfiles" -eq 0 ]; then
    warn "the working tree does not differ from pristine: the patch is empty"
fi
if printf '%s\n' "$files" | grep -qx configure.ac && ! printf '%s\n' "$files" | grep -qx configure; then
    warn "configure.ac is patched but configure is not: run 'make regen' (90-regen-configure.patch)"
fi

# ---- verify on a fresh tree ------------------------------------------------------------
C=$PS_BUILD/check-patch
top=$(unpack_source "$C")
if [ "$nfiles" -gt 0 ]; then
    if ! out=$(cd "$top" && patch -p1 --dry-run --batch < "$OUTP" 2>&1); then
        printf '%s\n' "$out" | indent >&2
        die "the combined patch does not apply to a fresh $(basename "$top") (dry run)"
    fi
    (cd "$top" && patch -p1 --batch --no-backup-if-mismatch < "$OUTP") > "$C/patch.log" 2>&1 || {
        indent "$C/patch.log" >&2; die "applying the combined patch failed"
    }
fi
if ! LC_ALL=C diff -rq -x __pycache__ -x '*.pyc' "$top" "$PS_SRC" > "$C/compare.log" 2>&1; then
    indent "$C/compare.log" | head -n 20 >&2
    die "the fresh tree + combined patch differs from build/src/cpython"
fi
say "OK: the patch applies to a fresh $(basename "$top") (dry run, then for real) and gives the working tree exactly"

[ $build = yes ] || exit 0

# ---- plain in-tree build -----------------------------------------------------------------
LOG=$C/build.log
jobs=$(nproc_)
say "check-patch: ./configure CC='$PS_CC' && make -j$jobs in $top (log: $LOG)"
t0=$(date +%s)
export CCACHE_BASEDIR="$top"
step=configure
(cd "$top" && ./configure CC="$PS_CC") > "$LOG" 2>&1 \
    && step="make -j$jobs" && (cd "$top" && make -j"$jobs") >> "$LOG" 2>&1 || {
    printf '[patch] BUILD FAILED (check-patch, step: %s)\n[patch] full log: %s\n[patch] last 40 lines:\n' "$step" "$LOG" >&2
    tail -n 40 "$LOG" | indent >&2
    exit 1
}
say "built in $(( $(date +%s) - t0 ))s"
export LD_LIBRARY_PATH="$top${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# The shell that becomes the interpreter (same pid) first removes a map
# that an earlier process with that pid left; the map it writes is checked
# and removed, so that a check leaves nothing in /tmp.
pid=$(cd "$top" && sh -c 'rm -f "/tmp/perf-$$.map"; exec ./python -X perf -c "import os; print(os.getpid())"') \
    || die "./python -X perf -c failed"
map=/tmp/perf-$pid.map
named=$(grep -c ' py::' "$map" 2>/dev/null || true)
rm -f "$map"
[ "${named:-0}" -gt 0 ] || die "./python -X perf wrote no map naming a Python function ($map)"
say "./python -X perf: OK ($named functions named in $map, removed)"
line=$(cd "$top" && ./python -m sysconfig | grep 'PY_HAVE_PERF_TRAMPOLINE' || true)
[ -n "$line" ] || die "python -m sysconfig shows no PY_HAVE_PERF_TRAMPOLINE"
say "python -m sysconfig: $(printf '%s\n' "$line" | head -n 1 | sed 's/^[[:space:]]*//')"
printf '%s\n' "$line" | grep -q '"1"\|= 1$' \
    || die "PY_HAVE_PERF_TRAMPOLINE is not 1 on $(uname -m)"
say "OK: check-patch passed"
