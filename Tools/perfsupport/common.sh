# Shared helpers for the Tools/perfsupport scripts: message/fail functions,
# the cleaned-up environment for running Python, the list of new files to lay
# into the CPython tree, and the patch-application routine with its error
# reporting.  Sourced (". common.sh") by the other scripts; not run directly.
#
# Every script expects PS_TOP (repository root).  The Makefile exports it and
# the other PS_* variables; when a script is run by hand, PS_TOP defaults to
# two directories above the script.

: "${PS_TOP:=$(cd "$(dirname "$0")/../.." && pwd)}"
: "${PS_BUILD:=$PS_TOP/build}"
: "${PS_PATCHES:=$PS_TOP/patches}"
: "${PS_SRC:=$PS_BUILD/src/cpython}"
: "${PS_PRISTINE:=$PS_BUILD/pristine/cpython}"
: "${PS_STAMPS:=$PS_BUILD/stamps}"
: "${PS_TAG:=perfsupport}"

# ccache keeps its cache under $HOME; an environment without HOME (some CI
# runners) gets one in build/.
if [ -z "${HOME:-}" ] && [ -z "${CCACHE_DIR:-}" ]; then
    export CCACHE_DIR="$PS_BUILD/ccache"
fi

say()  { printf '[%s] %s\n' "$PS_TAG" "$*"; }
warn() { printf '[%s] WARNING: %s\n' "$PS_TAG" "$*" >&2; }
die()  { printf '[%s] ERROR: %s\n' "$PS_TAG" "$*" >&2; exit 1; }

# Print a file (or stdin) indented, so that tool output stands out from ours.
indent() { sed 's/^/    | /' "$@"; }

# Drop every PYTHON* variable from the environment of this shell (and so of
# everything it starts): PYTHONUNBUFFERED and PYTHONDONTWRITEBYTECODE in
# particular break stock regression tests; PYTHONPATH/PYTHONHOME would make
# the built interpreter pick up another installation's library.
clean_python_env() {
    for _v in $(env | sed -n 's/^\(PYTHON[A-Za-z0-9_]*\)=.*/\1/p'); do
        unset "$_v"
    done
    unset _v
}

# Variables of the calling make must not leak into CPython's own make
# (e.g. "make CFLAGS=..." at the top level would override CPython's CFLAGS).
clean_make_env() {
    unset MAKEFLAGS MFLAGS MAKELEVEL MAKEOVERRIDES MAKE_TERMOUT MAKE_TERMERR
}

nproc_() { nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2; }

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# List the new files (relative paths) that are laid into the CPython tree:
# everything under Python/ Include/ Lib/ Doc/ Misc/ Modules/ Tools/ except the
# project's own tooling in Tools/perfsupport/ and Tools/bench/ and the
# README's pictures (Doc/*.png: a text patch cannot carry them).  In a git
# checkout the list comes from git (tracked files plus untracked, non-ignored
# ones, so that work in progress is laid in too); otherwise from find.
list_new_files() {
    (
        cd "$PS_TOP" || exit 1
        dirs="Python Include Lib Doc Misc Modules Tools"
        if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
            # shellcheck disable=SC2086
            git ls-files --cached --others --exclude-standard -- $dirs
        else
            for d in $dirs; do
                [ -d "$d" ] && find "$d" -type f
            done
        fi | grep -v -e '^Tools/perfsupport/' -e '^Tools/bench/' -e '^Doc/[^/]*\.png$' \
               -e '/__pycache__/' -e '\.pyc$' -e '~$' -e '\.orig$' -e '\.rej$' \
           | sort -u \
           | while IFS= read -r f; do [ -f "$f" ] && printf '%s\n' "$f"; done
    )
}

# series_names [all|hand|generated]
# The one parser of patches/series: the patch names, in order, without
# comments and blank lines.  "hand" keeps only the hand-written patches,
# "generated" only those that "make regen" writes (their name contains
# "regen"); "all", the default, keeps both.
series_names() {
    case "${1:-all}" in
        all|hand|generated) ;;
        *) die "series_names: '$1' is not all, hand or generated" ;;
    esac
    [ -f "$PS_PATCHES/series" ] || return 0
    sed -e 's/#.*//' -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//' \
        "$PS_PATCHES/series" | while IFS= read -r _s || [ -n "$_s" ]; do
        case "$_s" in
            '') continue ;;
            *regen*) _kind=generated ;;
            *) _kind=hand ;;
        esac
        case "${1:-all}" in
            all|"$_kind") printf '%s\n' "$_s" ;;
        esac
    done
}

# Does the patch file contain at least one hunk?  (Generated patches are
# written with only their header when there is nothing to change.)
has_hunks() { grep -q '^@@ ' "$1"; }

# The paths (relative to the tree root, -p1) that a patch touches.
patch_targets() {
    sed -n -e 's/^+++ \([^	]*\).*/\1/p' "$1" \
        | sed -e 's#^[^/]*/##' | grep -v '^dev/null$' | sort -u
}

# apply_patch TREE PATCHFILE
# Dry-run first; apply only if every hunk fits.  On failure name the patch,
# show patch's own output and the text of each rejected hunk, then fail.
apply_patch() {
    _tree=$1 _p=$2 _name=$(basename "$2")
    [ -f "$_p" ] || die "patch '$_name' is listed in patches/series but patches/$_name does not exist"
    if ! has_hunks "$_p"; then
        say "$_name: no hunks (empty generated patch), nothing to apply"
        return 0
    fi
    if ! _out=$(cd "$_tree" && patch -p1 --forward --batch --dry-run < "$_p" 2>&1); then
        printf '[%s] ERROR: patch %s does not apply to %s\n' "$PS_TAG" "$_name" "$_tree" >&2
        printf '%s\n' "$_out" | indent >&2
        _failed=$(printf '%s\n' "$_out" | grep -E 'FAILED|Reversed|can.t find file|malformed|Only garbage' || true)
        [ -n "$_failed" ] && { printf '[%s] failing hunks of %s:\n' "$PS_TAG" "$_name" >&2; printf '%s\n' "$_failed" | indent >&2; }
        show_rejects "$_tree" "$_p" >&2
        exit 1
    fi
    if ! _out=$(cd "$_tree" && patch -p1 --forward --batch --no-backup-if-mismatch < "$_p" 2>&1); then
        printf '[%s] ERROR: patch %s failed while applying (after a clean dry run)\n' "$PS_TAG" "$_name" >&2
        printf '%s\n' "$_out" | indent >&2
        exit 1
    fi
    _n=$(grep -c '^@@ ' "$_p")
    say "applied $_name ($_n hunk(s))"
    # Offsets are normal (the shipped configure has 20 --runstatedir lines
    # that autoconf2.69 on Debian does not generate); fuzz means a context
    # line did not match: show it.
    printf '%s\n' "$_out" | grep -E 'fuzz' | indent || true
    unset _tree _p _name _out _failed _n
}

# Re-run a failed patch on scratch copies of the files it touches, so that
# patch writes its .rej file, and print the rejected hunks.
show_rejects() {
    _st=$(mktemp -d "${TMPDIR:-/tmp}/ps-rej.XXXXXX")
    patch_targets "$2" | while IFS= read -r _f; do
        if [ -f "$1/$_f" ]; then
            mkdir -p "$_st/$(dirname "$_f")" && cp "$1/$_f" "$_st/$_f"
        fi
    done
    (cd "$_st" && patch -p1 --forward --batch --no-backup-if-mismatch \
        -r "$_st/ALL.rej" < "$2" >/dev/null 2>&1) || true
    if [ -s "$_st/ALL.rej" ]; then
        printf '[%s] rejected hunk(s) of %s:\n' "$PS_TAG" "$(basename "$2")"
        indent "$_st/ALL.rej"
    fi
    rm -rf "$_st"
    unset _st _f
}

# apply_series TREE [nonregen]
# Apply patches/series in order; with "nonregen", only the hand-written
# patches (series_names hand).
apply_series() {
    _n=0 _which=all
    if [ "${2:-}" = nonregen ]; then _which=hand; fi
    for _s in $(series_names $_which); do
        apply_patch "$1" "$PS_PATCHES/$_s"
        _n=$((_n + 1))
    done
    [ "$_n" -gt 0 ] || say "patches/series lists no patches (nothing to apply)"
    unset _n _s _which
}

# lay_in TREE [quiet]: copy new files into TREE, only those whose content
# differs (unchanged files keep their mtime, so make does not rebuild them).
lay_in() {
    list_new_files | while IFS= read -r _f; do
        if ! cmp -s "$PS_TOP/$_f" "$1/$_f"; then
            mkdir -p "$1/$(dirname "$_f")"
            cp "$PS_TOP/$_f" "$1/$_f"
            [ "${2:-}" = quiet ] || say "laid in $_f"
        fi
    done
}

# Write FILE with the content of stdin only when it differs (keeps the mtime
# otherwise: used for stamps that make compares by time).
write_if_changed() {
    _tmp="$1.tmp.$$"
    cat > "$_tmp"
    if cmp -s "$_tmp" "$1"; then rm -f "$_tmp"; else mv -f "$_tmp" "$1"; fi
    unset _tmp
}

# unpack_source DEST: unpack/copy the source named by the source-id stamp
# into DEST; print the path of its top-level directory.
unpack_source() {
    read -r kind path _rest < "$PS_STAMPS/source-id" || die "no $PS_STAMPS/source-id: run 'make fetch'"
    dest=$1
    rm -rf "$dest" && mkdir -p "$dest"
    case "$kind" in
        tarball)
            say "unpacking $(basename "$path")" >&2
            tar --no-same-owner -xf "$path" -C "$dest"
            ;;
        dir)
            say "copying $path" >&2
            mkdir -p "$dest/tree"
            (cd "$path" && tar --exclude=.git --exclude=__pycache__ -cf - .) | tar --no-same-owner -xf - -C "$dest/tree"
            ;;
        *) die "bad $PS_STAMPS/source-id" ;;
    esac
    set -- "$dest"/*
    [ $# -eq 1 ] && [ -d "$1" ] || die "$path does not unpack to exactly one top-level directory"
    [ -f "$1/Include/patchlevel.h" ] || die "$path: no Include/patchlevel.h at the top of the tree"
    echo "$1"
}

# configure_and_make SRC BUILDDIR CFLAGS: configure SRC out of tree in
# BUILDDIR with CC=$PS_CC, CFLAGS and $PS_CONFIGURE_FLAGS, from scratch when
# that configuration differs from the one stored in BUILDDIR (objects
# compiled with other flags must not be reused; ccache keeps it cheap), then
# make.  Output goes to $LOG; on error the caller's "failed STEP" runs.
configure_and_make() {
    _src=$1 _b=$2 _cflags=$3
    # The environment variables that configure also reads are part of it.
    _want=$(printf 'srcdir=%s\nCC=%s\nCFLAGS=%s\nCONFIGURE_FLAGS=%s\nenv CPPFLAGS=%s LDFLAGS=%s LIBS=%s\n' \
        "$_src" "$PS_CC" "$_cflags" "$PS_CONFIGURE_FLAGS" \
        "${CPPFLAGS:-}" "${LDFLAGS:-}" "${LIBS:-}")
    _have=$(cat "$_b/perfsupport-config" 2>/dev/null || true)
    if [ ! -f "$_b/Makefile" ] || [ ! -f "$_b/config.status" ] \
       || [ "$_want" != "$_have" ]; then
        if [ -f "$_b/Makefile" ]; then
            say "configuration of $_b changed: wiping it and configuring again"
            printf '%s\n' "$_have" | sed 's/^/    was: /'
            printf '%s\n' "$_want" | sed 's/^/    now: /'
        fi
        find "$_b" -mindepth 1 -maxdepth 1 ! -name build.log -exec rm -rf {} +
        say "configure CC='$PS_CC' CFLAGS='$_cflags' $PS_CONFIGURE_FLAGS"
        # CONFIGURE_FLAGS may hold quoted words (--with-foo='a b').
        eval "set -- $PS_CONFIGURE_FLAGS"
        (cd "$_b" && "$_src/configure" CC="$PS_CC" CFLAGS="$_cflags" "$@") \
            >> "$LOG" 2>&1 || failed configure
        printf '%s\n' "$_want" > "$_b/perfsupport-config"
    fi
    _jobs=$(nproc_)
    say "make -j$_jobs in $_b (log: $LOG)"
    (cd "$_b" && make -j"$_jobs") >> "$LOG" 2>&1 || failed "make -j$_jobs"
}

# tmp_names PATH...: the names right under /tmp through which the PATHs
# lie in /tmp (perf311 for /tmp/perf311/build), each once, one per line.
tmp_names() {
    for _p in "$@"; do
        for _q in "$_p" "$(cd "$_p" 2>/dev/null && pwd -P)"; do
            case $_q/ in
                /tmp/?*) _n=${_q#/tmp/}; printf '%s\n' "${_n%%/*}" ;;
            esac
        done
    done | sort -u
}

# new_tmp DIR|'' COMMAND...: COMMAND, in the same working directory, in a
# mount namespace of its own (root and unshare(1) needed) whose /tmp is DIR
# bound there, or an empty tmpfs when DIR is ''.  So the perf files that
# COMMAND's processes leave are all in the new /tmp, and the files of other
# processes in /tmp are neither seen nor touched.  A checkout, build or
# source tree that lies under /tmp is bound back at the same path (its
# files name each other by absolute path), recursively: it may hold mounts
# of its own.  The old /tmp is reached as the working directory of the
# shell that mounts, through /proc, which mount must not resolve into a
# path (the name would be found in the new /tmp).
new_tmp() {
    _d=$1; shift
    [ -z "$_d" ] || _d=$(cd "$_d" && pwd) || return
    unshare --mount --propagation private sh -c '
        set -e
        dir=$0 names=$1
        shift
        here=$(pwd)
        cd /tmp
        if [ -n "$dir" ]; then
            mount --bind "$dir" /tmp
        else
            mount -t tmpfs -o mode=1777 tmpfs /tmp
        fi
        set -f
        IFS="
"
        for name in $names; do
            mkdir -p "/tmp/$name"
            mount --no-canonicalize --rbind "/proc/self/cwd/$name" "/tmp/$name"
        done
        cd "$here" 2>/dev/null || cd /
        exec "$@"' "$_d" "$(tmp_names "$PS_TOP" "$PS_BUILD" "$PS_SRC")" "$@"
}

# private_tmp DIR COMMAND...: COMMAND with DIR as its /tmp (new_tmp).
private_tmp() {
    new_tmp "$@"
}

# private_tmp_works SCRATCH_DIR: whether private_tmp can be used here: not
# without root or unshare(1).
private_tmp_works() {
    mkdir -p "$1" && private_tmp "$1" true 2>/dev/null
    _rc=$?
    # With the names that new_tmp made in it, empty directories.
    rmdir "$1"/* "$1" 2>/dev/null
    return $_rc
}
