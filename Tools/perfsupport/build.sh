#!/bin/sh
# Build the patched working tree out of tree, then smoke-test the interpreter.
#
#   build.sh fp|nofp|san
#
# build/fp:   CFLAGS = $PS_FP_CFLAGS $PS_OPT_CFLAGS (frame pointers kept)
# build/nofp: CFLAGS = $PS_OPT_CFLAGS
# build/san-NAMES: as build/fp, plus the sanitizers listed (comma-separated)
#             in $PS_SANITIZE (default address,undefined), NAMES being that
#             list with "_" for ",": see "Sanitizers" below.
# CC is $PS_CC ("ccache gcc" when ccache exists); $PS_CONFIGURE_FLAGS goes to
# configure as is.  The configure command line is kept in
# build/<flavor>/perfsupport-config; when it changes the build directory is
# wiped and configured again (objects compiled with other flags must not be
# reused; ccache keeps that cheap).  The whole output goes to
# build/<flavor>/build.log; on failure the last 40 lines are shown.
set -eu
flavor=${1:-}
case "$flavor" in fp|nofp|san) ;; *) echo "usage: $0 fp|nofp|san" >&2; exit 2 ;; esac
PS_TAG="build"
. "$(dirname "$0")/common.sh"
clean_python_env
clean_make_env

: "${PS_CC:=gcc}"
: "${PS_FP_CFLAGS:=-fno-omit-frame-pointer}"
: "${PS_OPT_CFLAGS:=}"
: "${PS_CONFIGURE_FLAGS:=}"

[ -f "$PS_SRC/configure" ] || die "no working tree at $PS_SRC: run 'make source'"

# Sanitizers: 3.11's configure options --with-address-sanitizer (which also
# turns pymalloc off) and --with-undefined-behavior-sanitizer, so that
# test.support.check_sanitizer() sees them and the tests that cannot work
# under a sanitizer skip themselves.  3.11 has no --with-thread-sanitizer
# (3.13 added it, as nothing more than -fsanitize=thread in CFLAGS and
# LDFLAGS): when configure lacks it, those two flags are given directly.
# Leaks are not checked (detect_leaks=0), as in 3.11's CI job "Address
# sanitizer", whose ASAN_OPTIONS cover its build too.
san_cflags=
if [ "$flavor" = san ]; then
    : "${PS_SANITIZE:=address,undefined}"
    san_names=$(printf '%s' "$PS_SANITIZE" | tr -d ' ' | tr ',' ' ')
    [ -n "$san_names" ] || die "SANITIZE is empty"
    for s in $san_names; do
        case "$s" in
            address)   PS_CONFIGURE_FLAGS="$PS_CONFIGURE_FLAGS --with-address-sanitizer" ;;
            undefined) PS_CONFIGURE_FLAGS="$PS_CONFIGURE_FLAGS --with-undefined-behavior-sanitizer" ;;
            thread)
                case " $san_names " in *" address "*)
                    die "SANITIZE: thread and address cannot be combined" ;;
                esac
                if grep -q 'with_thread_sanitizer' "$PS_SRC/configure"; then
                    PS_CONFIGURE_FLAGS="$PS_CONFIGURE_FLAGS --with-thread-sanitizer"
                else
                    san_cflags="-fsanitize=thread"
                    export LDFLAGS="-fsanitize=thread${LDFLAGS:+ $LDFLAGS}"
                fi
                # Stock 3.11 has races that TSAN reports (PyMem_SetAllocator
                # against a thread's exit, when setup.py runs): its exit
                # status 66 would stop the build.
                export TSAN_OPTIONS="report_bugs=0:exitcode=0${TSAN_OPTIONS:+:$TSAN_OPTIONS}"
                ;;
            *) die "SANITIZE: unknown sanitizer '$s' (address, undefined, thread)" ;;
        esac
    done
    PS_CONFIGURE_FLAGS=${PS_CONFIGURE_FLAGS# }
    flavor=san-$(printf '%s' "$san_names" | tr ' ' '_')
    export ASAN_OPTIONS="detect_leaks=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
fi
B=$PS_BUILD/$flavor
LOG=$B/build.log

if [ "$flavor" = nofp ]; then
    cflags="$PS_OPT_CFLAGS"
else
    cflags="$PS_FP_CFLAGS $PS_OPT_CFLAGS"
fi
cflags=$(printf '%s' "$cflags" | sed 's/^ *//; s/ *$//')
cflags="$cflags${san_cflags:+ $san_cflags}"

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
san = {f for f in (sysconfig.get_config_var("CFLAGS") or "").split()
       if f.startswith("-fsanitize=")}
if san:
    print("sanitizers:", " ".join(sorted(san)))
'
} > "$B/smoke.out" 2>&1 || { cat "$B/smoke.out" >> "$LOG"; failed "smoke check"; }
cat "$B/smoke.out" >> "$LOG"
sed -n '2,$p' "$B/smoke.out" | indent
say "$flavor: OK in $(( $(now) - t0 ))s: $B/python"
