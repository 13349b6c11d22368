#!/bin/sh
# Fetch and verify the CPython 3.11 source that the patch set applies to.
#
# Default (PS_SOURCE empty): Debian's python3.11 orig tarball, downloaded with
# "apt-get source --download-only" into build/download/ and accepted only if
# its sha256 is the expected one (apt's exit status is ignored: it may fail on
# the .dsc or .debian.tar.xz while the orig tarball arrived fine).  A cached
# tarball is re-verified on every run; a bad one is deleted.
#
# PS_SOURCE=/path/Python-3.11.x.tar.xz|.tgz|.tar.gz or a directory: use that
# tree instead (no checksum, but it must be a 3.11 tree).
#
# Finally writes build/stamps/source-id, rewritten only when the identity of
# the source changes, so that make re-unpacks the pristine tree only then.
set -eu
PS_TAG="fetch"
. "$(dirname "$0")/common.sh"

: "${PS_SOURCE:=}"
: "${PS_DEB_VERSION:=3.11.2-6+deb12u8}"
: "${PS_ORIG_NAME:=python3.11_3.11.2.orig.tar.gz}"
: "${PS_ORIG_SHA256:=2411c74bda5bbcfcddaf4531f66d1adc73f247f529aee981b029513aefdbf849}"
DOWNLOAD=$PS_BUILD/download
mkdir -p "$PS_STAMPS"

# Look at Include/patchlevel.h text on stdin: is it CPython 3.11?
is_311() {
    awk '$1 == "#define" && $2 == "PY_MAJOR_VERSION" { maj = $3 }
         $1 == "#define" && $2 == "PY_MINOR_VERSION" { min = $3 }
         END { exit !(maj == 3 && min == 11) }'
}

not_311() {
    die "$1 does not look like a CPython 3.11 source tree (Include/patchlevel.h must define PY_MAJOR_VERSION 3 and PY_MINOR_VERSION 11); this patch set is for 3.11 only"
}

if [ -z "$PS_SOURCE" ]; then
    mkdir -p "$DOWNLOAD"
    tarball=$DOWNLOAD/$PS_ORIG_NAME
    if [ -f "$tarball" ]; then
        sum=$(sha256_of "$tarball")
        if [ "$sum" != "$PS_ORIG_SHA256" ]; then
            rm -f "$tarball"
            die "cached $tarball has sha256 $sum, expected $PS_ORIG_SHA256: deleted it; run 'make fetch' again to download a fresh copy"
        fi
        say "using cached $PS_ORIG_NAME (sha256 verified)"
    else
        command -v apt-get >/dev/null 2>&1 \
            || die "apt-get not found: download $PS_ORIG_NAME (sha256 $PS_ORIG_SHA256) into $DOWNLOAD by hand, or give SOURCE=/path/to/Python-3.11.x.tar.xz"
        say "apt-get source --download-only python3.11=$PS_DEB_VERSION (into build/download/)"
        rc=0
        (cd "$DOWNLOAD" && apt-get source --download-only "python3.11=$PS_DEB_VERSION") \
            > "$DOWNLOAD/apt-get.log" 2>&1 || rc=$?
        if [ ! -f "$tarball" ]; then
            indent "$DOWNLOAD/apt-get.log" | tail -n 20 >&2
            if grep -qi 'deb-src\|source URIs' "$DOWNLOAD/apt-get.log"; then
                warn "apt has no deb-src entries: run 'make deps' as root (it enables them), then retry"
            fi
            die "apt-get source (exit $rc) did not produce $PS_ORIG_NAME; log: $DOWNLOAD/apt-get.log"
        fi
        [ "$rc" -eq 0 ] || say "apt-get exited with $rc, but the orig tarball arrived; judging it by its checksum"
        sum=$(sha256_of "$tarball")
        if [ "$sum" != "$PS_ORIG_SHA256" ]; then
            rm -f "$tarball"
            die "downloaded $PS_ORIG_NAME has sha256 $sum, expected $PS_ORIG_SHA256: deleted it"
        fi
        say "downloaded $PS_ORIG_NAME, sha256 verified"
    fi
    id="tarball $tarball sha256 $PS_ORIG_SHA256"
else
    case "$PS_SOURCE" in /*) src=$PS_SOURCE ;; *) src=$PS_TOP/$PS_SOURCE ;; esac
    if [ -d "$src" ]; then
        src=$(cd "$src" && pwd)
        [ -f "$src/Include/patchlevel.h" ] && is_311 < "$src/Include/patchlevel.h" || not_311 "SOURCE=$src"
        [ -f "$src/configure.ac" ] && [ -f "$src/configure" ] || die "SOURCE=$src has no configure.ac/configure"
        for f in pyconfig.h Makefile config.status; do
            [ ! -e "$src/$f" ] || die "SOURCE=$src was configured in place ($f exists): run 'make distclean' there or give a clean tree (out-of-tree builds refuse a configured source dir)"
        done
        # Re-copy the tree when anything in it changed since the last copy.
        newest=$(find "$src" -name .git -prune -o -name __pycache__ -prune -o -type f -printf '%T@\n' \
                 | sort -n | tail -n 1)
        id="dir $src newest $newest"
        say "using source directory $src"
    elif [ -f "$src" ]; then
        case "$src" in
            *.tar.xz|*.txz|*.tar.gz|*.tgz|*.tar.bz2|*.tar) ;;
            *) die "SOURCE=$src: expected a .tar.xz, .tgz, .tar.gz or .tar.bz2 tarball, or a directory" ;;
        esac
        tar -xOf "$src" --wildcards --no-anchored 'Include/patchlevel.h' 2>/dev/null | is_311 \
            || not_311 "SOURCE=$src"
        id="tarball $src size $(wc -c < "$src") mtime $(stat -c %Y "$src")"
        say "using source tarball $src (no checksum check for SOURCE=)"
    else
        die "SOURCE=$PS_SOURCE: no such file or directory"
    fi
fi

printf '%s\n' "$id" | write_if_changed "$PS_STAMPS/source-id"
