#!/bin/sh
# "make deb-test": the packages of "make deb", installed over Debian's own in
# a clean Debian 12 root, checked as a user would use them.
#
#   deb-test.sh [DEB_DIR]          (default build/deb)
#   deb-test.sh --bench [DEB_DIR]  "make deb-bench": the benchmark suite in
#                                  the root, Debian's python3.11 as "stock"
#                                  against ours (its files unpacked under
#                                  /opt/perf), report build/deb/bench.md
#
# 1. The root: mmdebstrap --variant=apt bookworm, with Debian's python3.11
#    at the version our packages are made from (3.11.2-6+deb12u8) and the
#    packages the checks use (python3-yaml, python3-numpy, python3-lxml,
#    python3.11-venv, python3-wheel-whl; gdb, gcc, mount and linux-perf from
#    bookworm-backports for the packaged perf tests, valgrind for the
#    benchmarks), from the apt sources
#    of this machine (Types: deb only).  It is made once and kept as
#    build/deb/root-base.tar (remade when the package list changes); each
#    run unpacks a fresh copy into build/deb/root.
# 2. deb/test_deb_root.py runs the checks, in a mount namespace of its own
#    in which the root has /proc, /sys and /dev, and this machine's /tmp
#    (as schroot gives a chroot: the perf map of a process in the root is
#    where the host's perf looks for it).  The checks replace Debian's
#    packages with ours as "make deb-install" does (deb-install.sh, copied
#    into the root), then install the rest of DEB_DIR's with "apt install
#    ./*.deb", and go back to Debian's at the end: see that file.
# 3. The root is removed after a successful run (kept after a failure, for
#    a look: chroot build/deb/root).
set -eu
PS_TAG=deb-test
. "$(dirname "$0")/common.sh"
clean_python_env

HERE=$(cd "$(dirname "$0")" && pwd)
mode=test
if [ "${1:-}" = --bench ]; then
    mode=bench
    shift
fi
: "${PS_DEB_VERSION:=3.11.2-6+deb12u8}"
DEBS=$(cd "${1:-$PS_BUILD/deb}" 2>/dev/null && pwd) || die "no ${1:-$PS_BUILD/deb}: run 'make deb'"
ls "$DEBS"/*.deb >/dev/null 2>&1 || die "no .deb files in $DEBS: run 'make deb'"
[ "$(id -u)" -eq 0 ] || die "the root test needs root (mmdebstrap, chroot, mounts)"
for t in mmdebstrap unshare chroot perf; do
    command -v "$t" >/dev/null 2>&1 || die "$t not found: run 'make deps' as root"
done

W=$PS_BUILD/deb
ROOT=$W/root
BASE=$W/root-base.tar
# Debian's python3.11 at the version our packages are made from (the
# security archive may have a newer one, whose source it does not serve:
# that one must stay "newer" than ours, which test_deb_root.py checks).
V=$PS_DEB_VERSION
PKGS="python3.11=$V,python3.11-minimal=$V,libpython3.11=$V,libpython3.11-minimal=$V,libpython3.11-stdlib=$V,python3.11-venv=$V"
PKGS="$PKGS,python3-yaml,python3-numpy,python3-lxml,python3-wheel-whl,gdb,gcc,mount,valgrind,linux-perf/bookworm-backports"

# This machine's apt sources, binary packages only.
SOURCES=$W/root.sources
{
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        sed 's/^Types:.*/Types: deb/' "$f"
        echo
    done
} > "$SOURCES"
grep -q '^Suites:.*bookworm-backports' "$SOURCES" \
    || die "this machine's apt sources have no bookworm-backports (linux-perf 6.12): run 'make deps' as root"

key=$( (echo "$PKGS"; cat "$SOURCES") | sha256sum | cut -d' ' -f1)
if [ ! -f "$BASE" ] || [ "$(cat "$BASE.key" 2>/dev/null)" != "$key" ]; then
    say "mmdebstrap bookworm (once; kept as $BASE): $PKGS"
    t0=$(date +%s)
    rm -f "$BASE" "$BASE.key"
    mmdebstrap --variant=apt --include="$PKGS" bookworm "$BASE" "$SOURCES" \
        > "$W/mmdebstrap.log" 2>&1 || {
        tail -n 30 "$W/mmdebstrap.log" | indent >&2
        die "mmdebstrap failed (log: $W/mmdebstrap.log)"
    }
    echo "$key" > "$BASE.key"
    say "root made in $(( $(date +%s) - t0 ))s ($(du -m "$BASE" | cut -f1) MB)"
fi

t0=$(date +%s)
rm -rf "$ROOT"
mkdir -p "$ROOT"
tar -C "$ROOT" -xf "$BASE"
mkdir -p "$ROOT/var/cache/perf-debs"
cp "$DEBS"/*.deb "$ROOT/var/cache/perf-debs/"
cp "$HERE/deb-install.sh" "$ROOT/var/cache/perf-debs/"

# in_root COMMAND...: run COMMAND (a host command) in a mount namespace
# where the root has /proc, /sys, /dev and this machine's /tmp.
in_root() {
    unshare --mount --propagation private sh -c '
        set -e
        root=$1; shift
        # The root a mount point of its own, as in a container: unshare
        # --mount inside it (the packaged tests) can then make it private.
        mount --bind "$root" "$root"
        mount -t proc proc "$root/proc"
        mount --rbind /sys "$root/sys"
        mount --rbind /dev "$root/dev"
        mount --bind /tmp "$root/tmp"
        if [ -n "${BENCH_DIR:-}" ]; then
            mkdir -p "$root/opt/bench"
            mount --bind "$BENCH_DIR" "$root/opt/bench"
        fi
        exec "$@"
    ' deb-test "$ROOT" "$@"
}

if [ $mode = bench ]; then
    # Ours next to Debian's: the interpreter and its library, unpacked.
    for p in python3.11-minimal libpython3.11-minimal libpython3.11-stdlib python3.11; do
        f=$(ls "$DEBS/${p}_"*.deb 2>/dev/null | head -n 1)
        [ -n "$f" ] || die "no $p .deb in $DEBS"
        dpkg-deb -x "$f" "$ROOT/opt/perf"
    done
    out=$(mktemp -d /tmp/deb-bench.XXXXXX)
    rc=0
    export BENCH_DIR="$PS_TOP/Tools/bench"
    in_root chroot "$ROOT" env -i PATH=/usr/bin:/bin HOME=/root \
        python3 /opt/bench/run.py --stock /usr/bin/python3.11 \
        --patched /opt/perf/usr/bin/python3.11 ${PS_DEB_BENCH_OPTS:---quick --callgrind} \
        --out "$out/report.md" || rc=$?
    [ $rc -eq 0 ] || { rm -rf "$out"; die "the benchmark failed in the root (kept: $ROOT)"; }
    {
        echo "Debian's python3.11 $V (stock) against ours, $(basename "$(ls "$DEBS"/python3.11_*.deb | head -n 1)" .deb)"
        echo "(unpacked under /opt/perf), in a Debian 12 root, $(date -u +%Y-%m-%d)."
        echo
        cat "$out/report.md"
    } > "$W/bench.md"
    rm -rf "$out" "$ROOT"
    say "report: $W/bench.md"
    exit 0
fi

rc=0
in_root python3 "$HERE/deb/test_deb_root.py" "$ROOT" "$HERE/demo.py" "$V" || rc=$?
secs=$(( $(date +%s) - t0 ))
if [ $rc -ne 0 ]; then
    die "the root test failed after ${secs}s (the root is kept: chroot $ROOT)"
fi
rm -rf "$ROOT"
echo "$secs" > "$W/deb-test.seconds"
say "OK: every check passed in the Debian 12 root in ${secs}s"
