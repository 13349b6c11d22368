#!/bin/sh
# Developer tool: rewrite the hand-written patches of patches/series from a
# CPython working tree that is a git repository whose HEAD is the pristine
# source (git init; git add -A; git commit).  Each patch keeps its DEP-3
# header; its diff is replaced by `git diff` of the files it already touches.
# Usage: Tools/perfsupport/refresh-patches.sh /path/to/cpython-tree
set -eu
PS_TAG="refresh"
. "$(dirname "$0")/common.sh"

[ $# -eq 1 ] || { echo "usage: $0 /path/to/cpython-tree" >&2; exit 2; }
tree=$1
for patch in $(series_names hand); do
    file="$PS_PATCHES/$patch"
    files=$(sed -n 's|^+++ b/\([^	 ]*\).*|\1|p' "$file" | sort -u)
    header=$(sed '/^diff --git /,$d; /^--- a\//,$d' "$file")
    # shellcheck disable=SC2086
    diff=$(cd "$tree" && git diff --no-color -- $files)
    if [ -z "$diff" ]; then
        warn "$patch: $tree has none of its changes; left as it is"
        continue
    fi
    printf '%s\n%s\n' "$header" "$diff" > "$file.new"
    mv "$file.new" "$file"
    say "refreshed $patch: $(printf '%s\n' "$files" | tr '\n' ' ' | sed 's/ $//')"
done
