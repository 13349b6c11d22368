#!/bin/sh
# Prepare the CPython trees under build/:
#
#   prepare-tree.sh pristine   unpack the source named by build/stamps/source-id
#                              into build/pristine/Python-3.11.N (never modified
#                              afterwards) and point build/pristine/cpython at it
#   prepare-tree.sh patched    re-create the working tree build/src/cpython from
#                              pristine: lay in the new files, apply
#                              patches/series in order.  The new tree is built
#                              beside the old one and then synced into it, so
#                              files whose content did not change keep their
#                              mtime and the out-of-tree builds only recompile
#                              what really changed (also when a patch is
#                              dropped and a file goes back to pristine).
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
        # Sync $stage into $PS_SRC: copy differing/new files (mtime = now),
        # delete files that are gone; leave identical files alone.  Python
        # bytecode caches written by the build are not part of the source.
        changed=0 removed=0
        out=$(LC_ALL=C diff -rq -x __pycache__ "$stage" "$PS_SRC" 2>&1) || true
        tmp=$(mktemp)
        printf '%s\n' "$out" > "$tmp"
        while IFS= read -r line; do
            [ -n "$line" ] || continue
            case "$line" in
                "Files $stage/"*" differ")
                    rel=$(printf '%s\n' "$line" | sed -n "s|^Files $stage/\(.*\) and $PS_SRC/\1 differ\$|\1|p")
                    [ -n "$rel" ] || die "cannot parse: $line"
                    cp "$stage/$rel" "$PS_SRC/$rel"
                    changed=$((changed + 1)) ;;
                "Only in $stage"*)
                    rel=$(printf '%s\n' "$line" | sed -n "s|^Only in $stage\(/.*\)\{0,1\}: \(.*\)\$|\1/\2|p" | sed 's|^/||')
                    [ -n "$rel" ] || die "cannot parse: $line"
                    mkdir -p "$(dirname "$PS_SRC/$rel")"
                    cp -R "$stage/$rel" "$PS_SRC/$rel"
                    touch "$PS_SRC/$rel"
                    changed=$((changed + 1)) ;;
                "Only in $PS_SRC"*)
                    rel=$(printf '%s\n' "$line" | sed -n "s|^Only in $PS_SRC\(/.*\)\{0,1\}: \(.*\)\$|\1/\2|p" | sed 's|^/||')
                    [ -n "$rel" ] || die "cannot parse: $line"
                    rm -rf "${PS_SRC:?}/$rel"
                    removed=$((removed + 1)) ;;
                *)
                    # Type changes (file <-> directory) and the like: start over.
                    warn "unexpected difference ($line): replacing the whole working tree"
                    rm -rf "$PS_SRC" && mv "$stage" "$PS_SRC"
                    rm -f "$tmp"
                    exit 0 ;;
            esac
        done < "$tmp"
        rm -f "$tmp"
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
