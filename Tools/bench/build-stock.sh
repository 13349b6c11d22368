#!/bin/sh
# Build the stock (unpatched) CPython that the benchmarks compare against.
#
#   build-stock.sh PRISTINE_SRC OUTDIR
#
# An out-of-tree build of the pristine tree PRISTINE_SRC in OUTDIR with the
# flags of build/fp, so that the only difference from the patched build is
# the patch: CC=$PS_CC (default "ccache gcc" when ccache exists),
# CFLAGS="$PS_FP_CFLAGS $PS_OPT_CFLAGS" (default: frame pointers), configure
# flags $PS_CONFIGURE_FLAGS.  The configuration is kept in
# OUTDIR/perfsupport-config; when it changes, OUTDIR is wiped and configured again,
# otherwise make only rebuilds what changed.  Log: OUTDIR/build.log.
set -eu
if [ $# -ne 2 ]; then
    echo "usage: $0 PRISTINE_SRC OUTDIR" >&2
    exit 2
fi
PS_TAG=stock
. "$(dirname "$0")/../perfsupport/common.sh"
clean_python_env
clean_make_env

SRC=$(cd "$1" && pwd -P) || die "no such directory: $1"
mkdir -p "$2"
B=$(cd "$2" && pwd)
LOG=$B/build.log

if [ -z "${PS_CC:-}" ]; then
    if command -v ccache >/dev/null 2>&1; then PS_CC="ccache gcc"; else PS_CC=gcc; fi
fi
: "${PS_FP_CFLAGS:=-fno-omit-frame-pointer -mno-omit-leaf-frame-pointer}"
: "${PS_OPT_CFLAGS:=}"
: "${PS_CONFIGURE_FLAGS:=}"
cflags=$(printf '%s' "$PS_FP_CFLAGS $PS_OPT_CFLAGS" | sed 's/^ *//; s/ *$//')

[ -x "$SRC/configure" ] && [ -f "$SRC/Include/patchlevel.h" ] \
    || die "$SRC is not a CPython source tree"
if [ -f "$SRC/pyconfig.h" ] || [ -f "$SRC/Makefile" ]; then
    die "$SRC is configured in tree: an out-of-tree build needs a clean tree"
fi
if [ -f "$SRC/Python/perf_trampoline.c" ]; then
    die "$SRC has Python/perf_trampoline.c: that is not a stock tree"
fi

failed() {
    printf '[stock] BUILD FAILED (step: %s); log: %s; last 30 lines:\n' "$1" "$LOG" >&2
    tail -n 30 "$LOG" | indent >&2
    exit 1
}

t0=$(date +%s)
: > "$LOG"
configure_and_make "$SRC" "$B" "$cflags"

LD_LIBRARY_PATH=$B${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} "$B/python" -c '
import sys
assert not hasattr(sys, "activate_stack_trampoline"), "perf support found"
print(sys.version.split()[0])
' > "$B/smoke.out" 2>&1 || { indent "$B/smoke.out" >&2; failed "smoke check"; }
say "OK in $(( $(date +%s) - t0 ))s: $B/python (Python $(cat "$B/smoke.out"))"
