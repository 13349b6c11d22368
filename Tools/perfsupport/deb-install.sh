#!/bin/sh
# "make deb-install": the packages of "make deb" in place of Debian's own on
# this machine, and nothing more.
#
#   deb-install.sh [--dry-run] [DEB_DIR]      (default build/deb)
#
# For each .deb of DEB_DIR whose package is installed here, ours replaces
# it: an upgrade in place, the same set of packages as before.  What "apt
# install ./build/deb/*.deb" would do instead is install all 16, among them
# python3.11-nopie, which diverts /usr/bin/python3.11 to an interpreter
# built without PIE, and the debug interpreter and the documentation.
# Others are added by name: apt install ./build/deb/python3.11-examples_*.deb
# (Tools/perf/perf_switch.py and perf_record_ns.py, under
# /usr/share/doc/python3.11/examples/perf/).
#
# A Debian version newer than ours already installed (a security update) is
# not replaced by older code unless PS_DEB_ALLOW_DOWNGRADE=1.  --dry-run
# prints the .deb files it would install.  Not root: prints the exact
# command to run.
#
# Self-contained (no common.sh): deb-test also runs it inside the Debian
# root, where the repository is not.
set -eu

say() { printf '[deb-install] %s\n' "$*"; }
die() { printf '[deb-install] ERROR: %s\n' "$*" >&2; exit 1; }

dry=
if [ "${1:-}" = --dry-run ]; then
    dry=1
    shift
fi
default=$(cd "$(dirname "$0")/../.." && pwd)/build/deb
dir=${1:-$default}
dir=$(cd "$dir" 2>/dev/null && pwd) || die "no directory $dir: run 'make deb'"
for t in dpkg-deb dpkg-query apt-get; do
    command -v "$t" >/dev/null 2>&1 || die "$t not found: this is for Debian"
done

set --
newer=
for deb in "$dir"/*.deb; do
    [ -f "$deb" ] || die "no .deb files in $dir: run 'make deb'"
    name=$(dpkg-deb -f "$deb" Package)
    ours=$(dpkg-deb -f "$deb" Version)
    arch=$(dpkg-deb -f "$deb" Architecture)
    # The package of this architecture (not a foreign-architecture copy).
    [ "$arch" = all ] || name=$name:$arch
    status=$(dpkg-query -W -f '${db:Status-Abbrev} ${Version}' "$name" 2>/dev/null || true)
    case $status in
        ii*) ;;
        *) continue ;;
    esac
    installed=${status##* }
    if dpkg --compare-versions "$installed" gt "$ours"; then
        newer="$newer $name=$installed"
    fi
    set -- "$@" "$deb"
done
[ $# -gt 0 ] || die "none of the packages in $dir is installed here: nothing to replace (to add one anyway: apt install $dir/python3.11_*.deb ...)"
if [ -n "$newer" ] && [ "${PS_DEB_ALLOW_DOWNGRADE:-}" != 1 ]; then
    die "Debian's newer packages are installed ($newer ): ours are built from an older version; install them anyway with PS_DEB_ALLOW_DOWNGRADE=1, or build ours from that version when Debian serves its source (make deb DEB_VERSION=...)"
fi
if [ -n "$dry" ]; then
    printf '%s\n' "$@"
    exit 0
fi
downgrade=${newer:+--allow-downgrades}
if [ "$(id -u)" -ne 0 ]; then
    die "installing packages needs root: run  sudo apt-get install $downgrade${downgrade:+ }$*"
fi
say "replacing $# installed packages with ours from $dir"
exec apt-get install -y $downgrade "$@"
