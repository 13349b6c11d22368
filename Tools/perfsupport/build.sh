#!/bin/sh
# Build the patched working tree out of tree, then smoke-test the interpreter.
#
#   build.sh fp|nofp
#
# build/fp:   CFLAGS = $PS_FP_CFLAGS $PS_OPT_CFLAGS (frame pointers kept)
# build/nofp: CFLAGS = $PS_OPT_CFLAGS
# CC is $PS_CC ("ccache gcc" when ccache exists); $PS_CONFIGURE_FLAGS goes to
# configure as is.  The configure command line is kept in
# build/<flavor>/perfsupport-config; when it changes the build directory is
# wiped and configured again (objects compiled with other flags must not be
# reused; ccache keeps that cheap).  The whole output goes to
# build/<flavor>/build.log; on failure the last 40 lines are shown.
set -eu
flavor=${1:-}
case "$flavor" in fp|nofp) ;; *) echo "usage: $0 fp|nofp" >&2; exit 2 ;; esac
PS_TAG="build"
. "$(dirname "$0")/common.sh"
clean_python_env
clean_make_env

: "${PS_CC:=gcc}"
: "${PS_FP_CFLAGS:=-fno-omit-frame-pointer}"
: "${PS_OPT_CFLAGS:=}"
: "${PS_CONFIGURE_FLAGS:=}"

B=$PS_BUILD/$flavor
LOG=$B/build.log
[ -f "$PS_SRC/configure" ] || die "no working tree at $PS_SRC: run 'make source'"

if [ "$flavor" = fp ]; then
    cflags="$PS_FP_CFLAGS $PS_OPT_CFLAGS"
else
    cflags="$PS_OPT_CFLAGS"
fi
cflags=$(printf '%s' "$cflags" | sed 's/^ *//; s/ *$//')

failed() {
    step=$1
    printf '\n[build] BUILD FAILED (%s, step: %s)\n' "$flavor" "$step" >&2
    printf '[build] full log: %s\n' "$LOG" >&2
    printf '[build] last 40 lines:\n' >&2
    tail -n 40 "$LOG" | indent >&2
    exit 1
}

now() { date +%s; }
t0=$(now)
mkdir -p "$B"

: > "$LOG"
configure_and_make "$PS_SRC" "$B" "$cflags"
if grep -q 'Failed to build these modules' "$LOG"; then
    grep -A3 'Failed to build these modules' "$LOG" | indent >&2
    failed "extension modules"
fi

# Smoke check.  LD_LIBRARY_PATH covers --enable-shared builds.
say "$flavor: smoke check"
{
    echo "== smoke check"
    LD_LIBRARY_PATH=$B${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} "$B/python" -c '
import sys, sysconfig, _ssl, _ctypes, zlib
print(sys.version)
if hasattr(sys, "activate_stack_trampoline"):
    print("PY_HAVE_PERF_TRAMPOLINE =", sysconfig.get_config_var("PY_HAVE_PERF_TRAMPOLINE"))
else:
    print("sys.activate_stack_trampoline: not present (perf support not compiled in)")
fp = "-fno-omit-frame-pointer" in (sysconfig.get_config_var("PY_CORE_CFLAGS") or "")
print("frame pointers:", "yes" if fp else "no")
'
} > "$B/smoke.out" 2>&1 || { cat "$B/smoke.out" >> "$LOG"; failed "smoke check"; }
cat "$B/smoke.out" >> "$LOG"
sed -n '2,$p' "$B/smoke.out" | indent
say "$flavor: OK in $(( $(now) - t0 ))s: $B/python"
