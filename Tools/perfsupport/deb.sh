#!/bin/sh
# Debian 12's python3.11 packages with the perf support.
#
#   deb.sh tree    make the package tree build/deb/src/python3.11-3.11.2
#   deb.sh check   "make check-deb": the same from scratch in build/deb/check,
#                  and the proof that it carries exactly this project's changes
#   deb.sh build   "make deb": dpkg-buildpackage in the package tree; the .deb
#                  files land in build/deb/; then "sizes"
#   deb.sh sizes   build/deb/sizes.md: each .deb's size next to Debian's own
#
# The package tree is Debian's own source package python3.11 (the .dsc and
# .debian.tar.xz that "make fetch" downloaded next to the orig tarball;
# dpkg-source checks them against the .dsc) with:
#   - this project's changes appended to debian/patches/series as quilt
#     patches under debian/patches/perf/: 00-new-files.patch creates the new
#     files (Python/perf_*.c, the headers, the tests, the docs), then every
#     patch of patches/series with its DEP-3 header.  Each is pushed with
#     "quilt push --fuzz=0" on top of Debian's 83 patches and refreshed there
#     (quilt refresh), so that the copies in the package carry the line
#     numbers of Debian's tree; same_changes.py checks that a refresh only
#     moved the changes, never changed them;
#   - debian/rules with frame pointers for every interpreter
#     (deb/rules-frame-pointers.diff);
#   - a debian/changelog entry 3.11.2-6+deb12u8+perf1: sorts above Debian's
#     3.11.2-6+deb12u8 (apt sees an upgrade) and below its next security
#     update 3.11.2-6+deb12u9 (which apt then sees as newer again).
# Debian's build runs autoconf itself (2.71, from configure.ac), so the
# configure that 90-regen-configure.patch carries is regenerated there.
#
# Build options (deb.sh build): PS_DEB_FULL empty: DEB_BUILD_OPTIONS
# "nocheck nobench nopgo nolto parallel=N" (no test-suite run, no benchmark,
# no profile-guided or link-time optimisation: about 25 minutes on 2 cores
# instead of hours); PS_DEB_FULL=1: "nocheck nobench parallel=N", Debian's
# own PGO and LTO.  The compilers run through ccache.
set -eu
PS_TAG=deb
. "$(dirname "$0")/common.sh"
clean_python_env
clean_make_env

: "${PS_DEB_VERSION:=3.11.2-6+deb12u8}"
: "${PS_DEB_SUFFIX:=+perf1}"
: "${PS_DEB_FULL:=}"
DEB=$PS_BUILD/deb
DSC=$PS_BUILD/download/python3.11_$PS_DEB_VERSION.dsc
HERE=$(cd "$(dirname "$0")" && pwd)
QUILT="quilt --quiltrc /dev/null"
export QUILT_PATCHES=debian/patches QUILT_PC=.pc

need() {
    for _t in "$@"; do
        command -v "$_t" >/dev/null 2>&1 \
            || die "$_t not found: run 'make deps' as root (it installs quilt, dpkg-dev, devscripts and python3.11's build dependencies)"
    done
}

# new_files_patch: a quilt patch (stdout) that creates every new file.
new_files_patch() {
    cat <<'EOF'
Description: The perf support's new files
 Python/perf_*.c and asm_trampoline.S (the trampolines, the perf map and
 jitdump writers, the gdb JIT interface), their headers, the documentation
 and the tests: the files that the other perf/ patches build and use.
Author: perf support for CPython 3.11 developers
Origin: vendor, written for this project (not taken from any CPython release)
Forwarded: not-needed
---
EOF
    list_new_files | while IFS= read -r f; do
        (cd "$PS_TOP" && LC_ALL=C diff -u --label /dev/null --label "b/$f" /dev/null "$f") || true
    done
}

# make_tree DIR: the package tree in DIR/python3.11-3.11.2, every patch
# pushed.  Prints the tree's path.  Writes DIR/quilt.log.
make_tree() {
    dir=$1
    if [ ! -f "$DSC" ]; then
        # "make fetch" keeps only what it needs (the orig tarball) when apt
        # fails on the rest: ask again, for the .dsc and .debian.tar.xz.
        say "apt-get source --download-only python3.11=$PS_DEB_VERSION (the .dsc and .debian.tar.xz)"
        (cd "$PS_BUILD/download" && apt-get source --download-only "python3.11=$PS_DEB_VERSION") \
            > "$PS_BUILD/download/apt-get-dsc.log" 2>&1 || true
        [ -f "$DSC" ] || die "no $DSC: apt-get source failed (log: $PS_BUILD/download/apt-get-dsc.log; deb-src entries needed: 'make deps' as root adds them)"
    fi
    need dpkg-source quilt
    rm -rf "$dir"
    mkdir -p "$dir"
    top=$dir/python3.11-3.11.2
    dpkg-source --skip-patches -x "$DSC" "$top" > "$dir/dpkg-source.log" 2>&1 || {
        indent "$dir/dpkg-source.log" >&2; die "dpkg-source -x $DSC failed"
    }
    ndeb=$(grep -cv '^[[:space:]]*\(#\|$\)' "$top/debian/patches/series")

    # Debian's own patches first, as dpkg-source would apply them.
    (cd "$top" && $QUILT push -a --fuzz=0) > "$dir/quilt.log" 2>&1 || {
        indent "$dir/quilt.log" | tail -n 20 >&2
        die "Debian's own $ndeb patches do not apply with quilt (fuzz 0)"
    }
    # Then ours, one by one, each refreshed on top of Debian's.
    mkdir -p "$top/debian/patches/perf"
    new_files_patch > "$top/debian/patches/perf/00-new-files.patch"
    for p in 00-new-files.patch $(series_names); do
        [ "$p" = 00-new-files.patch ] || cp "$PS_PATCHES/$p" "$top/debian/patches/perf/$p"
        echo "perf/$p" >> "$top/debian/patches/series"
        if ! (cd "$top" && $QUILT push --fuzz=0) >> "$dir/quilt.log" 2>&1; then
            indent "$dir/quilt.log" | tail -n 20 >&2
            die "patches/$p does not apply on top of Debian's patches without fuzz: move its hunks away from the lines Debian's patches change (Makefile.pre.in, configure.ac, Lib/...)"
        fi
        (cd "$top" && $QUILT refresh --no-timestamps --no-index -p ab) >> "$dir/quilt.log" 2>&1 \
            || die "quilt refresh of perf/$p failed"
        if [ "$p" != 00-new-files.patch ] \
            && ! python3 "$HERE/deb/same_changes.py" "$PS_PATCHES/$p" "$top/debian/patches/perf/$p" >&2; then
            die "perf/$p as refreshed on Debian's tree does not make the changes of patches/$p"
        fi
    done
    rm -f "$top/debian/patches/perf/"*~

    # Frame pointers, and our version.
    (cd "$top" && patch -p1 -F0 --no-backup-if-mismatch -s) < "$HERE/deb/rules-frame-pointers.diff" \
        || die "deb/rules-frame-pointers.diff does not apply to this Debian revision's debian/rules"
    changelog_entry "$top"
    printf '%s\n' "$top"
}

changelog_entry() {
    version="$PS_DEB_VERSION$PS_DEB_SUFFIX"
    {
        echo "python3.11 ($version) bookworm; urgency=medium"
        echo
        echo "  * Perf profiler support (debian/patches/perf/): -X perf and"
        echo "    PYTHONPERFSUPPORT=1 write /tmp/perf-PID.map, -X perf_jit and"
        echo "    PYTHON_PERF_JIT_SUPPORT=1 a jitdump for perf inject --jit;"
        echo "    sys.activate_stack_trampoline(), sys.deactivate_stack_trampoline(),"
        echo "    sys.is_stack_trampoline_active(); the PyUnstable_Perf* C API."
        echo "    The binary interface of 3.11 is unchanged."
        echo "  * Build every interpreter with frame pointers"
        echo "    (-fno-omit-frame-pointer -mno-omit-leaf-frame-pointer)."
        echo
        echo " -- perf support for CPython 3.11 developers <root@localhost>  $(LC_ALL=C date -R -d @"${SOURCE_DATE_EPOCH:-$(date +%s)}")"
        echo
        cat "$1/debian/changelog"
    } > "$1/debian/changelog.new"
    mv "$1/debian/changelog.new" "$1/debian/changelog"
}

# sizes: the size of each of our .deb files next to Debian's own of the
# same version (apt-get download into build/deb/debian/), as a Markdown
# table in build/deb/sizes.md.
sizes() {
    D=$DEB/debian
    mkdir -p "$D"
    out=$DEB/sizes.md
    {
        echo "| package | Debian $PS_DEB_VERSION | $PS_DEB_VERSION$PS_DEB_SUFFIX | ratio |"
        echo "|---|---:|---:|---:|"
    } > "$out"
    for f in "$DEB"/*.deb; do
        pkg=$(dpkg-deb -f "$f" Package)
        arch=$(dpkg-deb -f "$f" Architecture)
        theirs=$D/${pkg}_$(printf '%s' "$PS_DEB_VERSION" | sed 's/:/%3a/')_$arch.deb
        if [ ! -f "$theirs" ]; then
            (cd "$D" && apt-get download -q "$pkg=$PS_DEB_VERSION") > "$D/download.log" 2>&1 || true
        fi
        ours_kib=$(( $(stat -c %s "$f") / 1024 ))
        if [ -f "$theirs" ]; then
            theirs_kib=$(( $(stat -c %s "$theirs") / 1024 ))
            ratio=$(awk -v a="$ours_kib" -v b="$theirs_kib" 'BEGIN { printf "%.2f", a / b }')
            echo "| $pkg | $theirs_kib KiB | $ours_kib KiB | $ratio |"
        else
            echo "| $pkg | (not downloaded) | $ours_kib KiB | |"
        fi
    done >> "$out"
    say "sizes of the packages, ours next to Debian's ($out):"
    indent "$out"
}

cmd=${1:-}
case "$cmd" in
tree)
    top=$(make_tree "$DEB/src")
    say "package tree: $top ($(series_names | wc -l) patches of ours + the new files, on Debian's)"
    ;;
check)
    t0=$(date +%s)
    C=$DEB/check
    top=$(make_tree "$C")
    ndeb=$(grep -cv '^\(perf/\|[[:space:]]*#\|[[:space:]]*$\)' "$top/debian/patches/series")
    nours=$(grep -c '^perf/' "$top/debian/patches/series")
    # From scratch, the way dpkg-source applies a 3.0 (quilt) package: pop
    # everything, push everything with fuzz 0; no hunk may need an offset
    # or fuzz any more (the refresh gave our patches Debian's line numbers).
    (cd "$top" && $QUILT pop -a) > "$C/pop.log" 2>&1 || { indent "$C/pop.log" | tail >&2; die "quilt pop -a failed"; }
    (cd "$top" && $QUILT push -a --fuzz=0) > "$C/push.log" 2>&1 || {
        indent "$C/push.log" | tail -n 20 >&2; die "quilt push -a --fuzz=0 failed"
    }
    if grep -n 'fuzz\|offset\|FAILED' "$C/push.log" | grep -v '^[0-9]*:Applying' > "$C/inexact.log"; then
        indent "$C/inexact.log" | head -n 20 >&2
        die "quilt push -a: some hunks did not apply exactly"
    fi
    # The tree carries exactly this project's new files ...
    bad=0
    list_new_files > "$C/new-files.list"
    while IFS= read -r f; do
        if ! cmp -s "$PS_TOP/$f" "$top/$f"; then
            warn "$f in the package tree differs from the repository's"
            bad=1
        fi
    done < "$C/new-files.list"
    created=$(sed -n 's|^+++ b/\([^	]*\).*|\1|p' "$top/debian/patches/perf/00-new-files.patch" | sort)
    [ "$created" = "$(sort "$C/new-files.list")" ] || { warn "00-new-files.patch does not create exactly the new files"; bad=1; }
    [ $bad -eq 0 ] || die "the package tree does not carry this project's files"
    # ... and our changes to Debian's files, as checked patch by patch in
    # make_tree.  Debian's quilt series must still be the last thing in it.
    [ "$(sed -n '$p' "$top/debian/patches/series")" = "perf/$(series_names | tail -n 1)" ] \
        || die "our patches are not the end of debian/patches/series"
    grep -q -- '-fno-omit-frame-pointer' "$top/debian/rules" || die "debian/rules has no frame pointers"
    v=$(dpkg-parsechangelog -l "$top/debian/changelog" -S Version)
    dpkg --compare-versions "$v" gt "$PS_DEB_VERSION" || die "version $v does not sort above $PS_DEB_VERSION"
    say "OK: Debian's $ndeb patches + our $nours apply with quilt push -a, no fuzz, no offset;"
    say "    $(wc -l < "$C/new-files.list") new files identical to the repository's; every perf/ patch makes"
    say "    exactly the changes of patches/; debian/rules keeps frame pointers; version $v ($(( $(date +%s) - t0 ))s)"
    rm -rf "$C"
    ;;
build)
    need dpkg-buildpackage dpkg-parsechangelog
    t0=$(date +%s)
    top=$(make_tree "$DEB/src")
    jobs=$(nproc_)
    if [ -n "$PS_DEB_FULL" ]; then
        opts="nocheck nobench parallel=$jobs"
    else
        opts="nocheck nobench nopgo nolto parallel=$jobs"
    fi
    if [ -d /usr/lib/ccache ]; then
        PATH=/usr/lib/ccache:$PATH
        export CCACHE_BASEDIR="$DEB/src"
    fi
    LOG=$DEB/build.log
    say "dpkg-buildpackage -b -us -uc, DEB_BUILD_OPTIONS='$opts' (log: $LOG)"
    (cd "$top" && DEB_BUILD_OPTIONS="$opts" dpkg-buildpackage -b -us -uc) > "$LOG" 2>&1 || {
        tail -n 40 "$LOG" | indent >&2
        die "dpkg-buildpackage failed after $(( $(date +%s) - t0 ))s; log: $LOG"
    }
    rm -f "$DEB"/*.deb
    for f in "$DEB/src"/*.deb; do mv "$f" "$DEB/"; done
    mv "$DEB/src"/*.buildinfo "$DEB/src"/*.changes "$DEB/" 2>/dev/null || true
    secs=$(( $(date +%s) - t0 ))
    echo "$secs" > "$DEB/build.seconds"
    say "built in ${secs}s with DEB_BUILD_OPTIONS='$opts'"
    sizes
    ;;
sizes)
    sizes
    ;;
*)
    echo "usage: $0 tree|check|build|sizes" >&2
    exit 2
    ;;
esac
