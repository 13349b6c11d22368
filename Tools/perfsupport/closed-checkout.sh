#!/bin/sh
# "make test" step "other users (closed checkout)": run every perf test that
# runs a program as another user (marked @needs("other_user") in
# Lib/test/test_perf_profiler/util.py) from a checkout that lies under a
# directory other users cannot enter, as when root clones into its mode 0700
# home.
#
#   closed-checkout.sh [fp|nofp]     (default: fp)
#
# The checkout cannot move (the build names its sources by absolute path),
# so the closed directory is made around it: in a mount namespace of its own
# (as root, with unshare(1)), a tmpfs of mode 0700 hides the checkout's
# parent directory, and the checkout (and the build directory, if it lies
# elsewhere under that parent) is bound back at the same path.  Nothing
# changes outside that namespace.  The tests must then arrange themselves
# what the other user needs (util.as_other_user()); the step fails if any
# of them fails or skips, or if no test is marked.
set -u
PS_TAG="closed-checkout"
. "$(dirname "$0")/common.sh"
clean_python_env

flavor=${1:-fp}
[ "$(id -u)" -eq 0 ] || die "needs root (a mount namespace, and tests that \
run programs as another user)"
command -v unshare >/dev/null 2>&1 || die "needs unshare (util-linux)"
top=$(cd "$PS_TOP" && pwd -P)
build=$(cd "$PS_BUILD" && pwd -P)
parent=$(dirname "$top")
[ "$parent" != / ] || die "the checkout is a directory of /: no parent to close"
python=$build/$flavor/python
[ -x "$python" ] || die "no $python: run make build-$flavor first"
T=$build/test
mkdir -p "$T"
matches=$T/other-user-tests.txt

# Inside the namespace: $1 the closed parent, $2... the paths to bind back
# there (util.REOPEN_UNDER_TMPFS, the tests' own way, in $reopen).
inside='
closed=$1; shift
sh -c "$reopen" sh "$closed" 700 "$@" || exit 1
mode=$(stat -c %a "$closed")
[ "$mode" = 700 ] || { echo "$closed is mode $mode, not 700" >&2; exit 1; }
printf "[closed-checkout] %s is mode %s in this namespace; the checkout %s\n" \
    "$closed" "$mode" "$top"
cd "$build/$flavor" || exit 1
./python - "$matches" <<EOF || exit 1
import sys
from test.test_perf_profiler import util
ids = util.marked_tests("other_user", ["test.test_perf_profiler",
    "test.test_perfmaps", "test.test_perf_gdb", "test.test_perf_hardening"])
with open(sys.argv[1], "w") as f:
    f.writelines(i + "\n" for i in ids)
with open(sys.argv[1] + ".modules", "w") as f:
    f.write(" ".join(sorted({i.split(".")[1] for i in ids})))
print(f"[closed-checkout] {len(ids)} tests use another user:", *ids,
      sep="\n    ")
EOF
# A test that ran a program as another user by other means would escape the
# step: only util.as_other_user() may.
./python - <<EOF || exit 1
import glob, os, re, sys, test
idiom = re.compile(r"\\buser\\s*=|setpriv|SETPRIV|--reuid|setre?s?uid\\(")
here = os.path.dirname(test.__file__)
paths = (glob.glob(os.path.join(here, "test_perf*.py"))
         + glob.glob(os.path.join(here, "test_perf*", "*.py")))
found = [f"{path}:{n}: {line.strip()}"
         for path in sorted(paths) if os.path.basename(path) != "util.py"
         for n, line in enumerate(open(path, encoding="utf-8"), 1)
         if idiom.search(line)]
if found:
    print("runs a program as another user without util.as_other_user():",
          *found, sep="\n    ", file=sys.stderr)
    sys.exit(1)
EOF
count=$(wc -l < "$matches")
[ "$count" -gt 0 ] || { echo "no test is marked @needs(\"other_user\")" >&2; exit 1; }
PERF_TESTS_REQUIRE_TOOLS=1 ./python -m test -v --matchfile="$matches" \
    $(cat "$matches.modules") > "$T/other-user-tests.log" 2>&1
rc=$?
cat "$T/other-user-tests.log"
[ $rc -eq 0 ] || exit 1
ran=$(sed -n "s/^Ran \([0-9]*\) tests\{0,1\} in.*/\1/p" "$T/other-user-tests.log" |
      awk "{ s += \$1 } END { print s + 0 }")
[ "$ran" -eq "$count" ] || {
    echo "ran $ran tests, not the $count marked" >&2; exit 1; }
if grep -q "skipped" "$T/other-user-tests.log"; then
    echo "a test skipped: every marked test must run" >&2; exit 1
fi
echo "[closed-checkout] $ran of $count passed, none skipped"
'

# What to bind back: the checkout, and the build directory if it lies
# elsewhere under the parent.
set -- "$top"
case "$build/" in
    "$top"/*) ;;
    "$parent"/*) set -- "$top" "$build" ;;
esac
reopen=$(cd "$build/$flavor" && ./python -c \
    'from test.test_perf_profiler import util; print(util.REOPEN_UNDER_TMPFS)') ||
    die "cannot read util.REOPEN_UNDER_TMPFS from $python"
say "closing $parent around $top (private mount namespace)"
reopen=$reopen top=$top build=$build flavor=$flavor matches=$matches \
    unshare --mount --propagation private sh -c "$inside" sh "$parent" "$@"
