#!/bin/sh
# Install the frame-pointer build (build/fp) with CPython's own "make install".
# The prefix is the one given to configure (CONFIGURE_FLAGS=--prefix=...;
# configure's default is /usr/local); PS_DESTDIR (make DESTDIR=...) stages
# the installation under another root.  Log: build/fp/install.log.
set -eu
PS_TAG="install"
. "$(dirname "$0")/common.sh"
clean_python_env
clean_make_env

B=$PS_BUILD/fp
[ -f "$B/Makefile" ] || die "no build in $B: run 'make build'"
prefix=$(sed -n 's/^prefix=[[:space:]]*//p' "$B/Makefile" | head -n 1)
: "${PS_DESTDIR:=}"
say "make install into ${PS_DESTDIR}$prefix (log: $B/install.log)"
if ! (cd "$B" && make install DESTDIR="$PS_DESTDIR") > "$B/install.log" 2>&1; then
    tail -n 40 "$B/install.log" | indent >&2
    die "make install failed; full log: $B/install.log"
fi
py=${PS_DESTDIR}$prefix/bin/python3.11
[ -x "$py" ] || die "make install succeeded but $py is missing"
say "installed $py"
