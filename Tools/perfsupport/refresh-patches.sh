#!/bin/sh
# Developer tool: rewrite the hand-written patches of patches/series from a
# CPython working tree that is a git repository whose HEAD is the pristine
# source (git init; git add -A; git commit).  Each patch keeps its DEP-3
# header; its diff is replaced by `git diff` of the files it already touches.
# Usage: Tools/perfsupport/refresh-patches.sh /path/to/cpython-tree
set -eu
tree=$1
here=$(cd "$(dirname "$0")/../.." && pwd)
for patch in $(grep -v '^#' "$here/patches/series" | grep -v regen); do
    file="$here/patches/$patch"
    files=$(sed -n 's|^+++ b/\([^	 ]*\).*|\1|p' "$file" | sort -u)
    header=$(sed '/^diff --git /,$d; /^--- a\//,$d' "$file")
    diff=$(cd "$tree" && git diff --no-color -- $files)
    if [ -z "$diff" ]; then
        echo "$patch: $tree has none of its changes; left as it is" >&2
        continue
    fi
    printf '%s\n%s\n' "$header" "$diff" > "$file.new"
    mv "$file.new" "$file"
    echo "refreshed $patch: $(echo $files)"
done
