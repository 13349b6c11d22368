#!/bin/sh
# Prepare the CPython trees under build/:
#
#   prepare-tree.sh pristine   unpack the source named by build/stamps/source-id
#                              into build/pristine/Python-3.11.N (never modified
#                              afterwards) and point build/pristine/cpython at it
#   prepare-tree.sh patched    re-create the working tree build/src/cpython from
#                              pristine: lay in the new files, apply
#                              patches/series in order.  The new tree is built
#                              beside the old one and then synced into it
#                              (rsync --checksum, without -t), so files whose
#                              content did not change keep their mtime and
#                              the out-of-tree builds only recompile what
#                              really changed (also when a patch is dropped
#                              and a file goes back to pristine).
#   prepare-tree.sh lay-in     re-copy only the new files whose content changed
#
# The Makefile calls these with stamps so that each step runs only when its
# inputs changed.
set -eu
PS_TAG="source"
. "$(dirname "$0")/common.sh"

mode=${1:-}

case "$mode" in
pristine)
    top=$(unpack_source "$PS_BUILD/pristine/.unpack")
    ver=$(sed -n 's/^#define[[:space:]]*PY_VERSION[[:space:]]*"\([^"]*\)".*/\1/p' "$top/Include/patchlevel.h")
    case "$ver" in 3.11.*) ;; *) die "the source is Python '$ver', not 3.11.x" ;; esac
    name=Python-$(printf '%s' "$ver" | tr -c 'A-Za-z0-9.+\n-' '_')
    # Remove previous pristine trees (another SOURCE), keep the download.
    find "$PS_BUILD/pristine" -mindepth 1 -maxdepth 1 ! -name .unpack -exec rm -rf {} +
    mv "$top" "$PS_BUILD/pristine/$name"
    rm -rf "$PS_BUILD/pristine/.unpack"
    ln -sfn "$name" "$PS_PRISTINE"
    say "pristine tree: build/pristine/$name ($ver)"
    ;;

patched)
    [ -d "$PS_PRISTINE/" ] || die "no pristine tree: run 'make fetch source'"
    [ ! -d "$PS_SRC" ] || command -v rsync >/dev/null 2>&1 \
        || die "rsync is not installed (it syncs the working tree): run 'make deps'"
    srcparent=$(dirname "$PS_SRC")
    mkdir -p "$srcparent"
    stage=$srcparent/.staging
    rm -rf "$stage"
    say "re-creating the working tree from pristine ($(readlink "$PS_PRISTINE"))"
    cp -a "$PS_PRISTINE/." "$stage"
    lay_in "$stage" quiet
    say "laid in $(list_new_files | wc -l) new file(s)"
    apply_series "$stage"
    # A patch must not edit a laid-in file: the lay-in step would undo it.
    list_new_files | while IFS= read -r f; do
        cmp -s "$PS_TOP/$f" "$stage/$f" \
            || die "a patch in patches/series modifies the new file $f; edit $f in the repository instead"
    done
    find "$stage" \( -name '*.orig' -o -name '*.rej' \) -type f -delete
    if [ ! -d "$PS_SRC" ]; then
        mv "$stage" "$PS_SRC"
        say "working tree: build/src/$(basename "$PS_SRC") (new)"
    else
        # Sync $stage into $PS_SRC by content (rsync --checksum): write the
        # files that differ or are new, delete those that are gone, leave
        # identical files alone.  No -t: a written file gets the current time
        # as its mtime (the staged file's older one would hide the change
        # from make) and an identical file keeps its own.  Python bytecode
        # caches written by the build are not part of the source: excluded on
        # both sides, neither copied nor deleted.
        log=$srcparent/.sync.log
        rsync --recursive --links --perms --checksum --delete \
            --exclude=__pycache__ --out-format='%i %n' \
            "$stage/" "$PS_SRC/" > "$log" \
            || die "rsync of the re-created tree into build/src/$(basename "$PS_SRC") failed"
        changed=$(grep -c '^[>c][fL]' "$log" || true)
        removed=$(grep -c '^\*deleting .*[^/]$' "$log" || true)
        rm -f "$log"
        rm -rf "$stage"
        say "working tree build/src/$(basename "$PS_SRC") updated: $changed file(s) written, $removed removed, the rest untouched"
    fi
    ;;

lay-in)
    [ -d "$PS_SRC" ] || die "no working tree: run 'make source'"
    lay_in "$PS_SRC"
    ;;

*)
    echo "usage: $0 pristine|patched|lay-in" >&2
    exit 2 ;;
esac
