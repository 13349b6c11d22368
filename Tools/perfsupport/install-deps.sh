#!/bin/sh
# Install what building and profiling the patched CPython 3.11 needs.
#
# As root on Debian 12 this adds a deb-src entry and the bookworm-backports
# suite when they are missing, then installs the build dependencies of
# python3.11, linux-perf 6.12 from bookworm-backports (perf inject --jit
# needs perf 6.8 or newer), gdb, ccache, autoconf2.69, abigail-tools,
# quilt (make check-deb) and mmdebstrap (make deb-test), and, when their commands are missing, nodejs and npm (the flame graph
# template, installed with npm ci) and chromium (the browser check of
# Tools/perfsupport/test_flamegraph.py).  Anywhere else it prints the exact
# commands to run and fails.
set -eu

PYVER="${PYVER:-3.11.2-6+deb12u8}"
SOURCES=/etc/apt/sources.list.d/debian.sources
BACKPORTS=/etc/apt/sources.list.d/perfsupport-backports.sources
PACKAGES="ccache gdb autoconf2.69 abigail-tools dpkg-dev quilt mmdebstrap xz-utils patch rsync valgrind python3"
# COMMAND:PACKAGE pairs installed only when COMMAND is missing: a node.js
# from elsewhere (which often brings its own npm and conflicts with Debian's)
# is kept.
TOOLS="node:nodejs npm:npm chromium:chromium"

say() { printf '[deps] %s\n' "$*"; }

is_debian12() {
    [ -r /etc/os-release ] && . /etc/os-release && [ "${ID:-}" = debian ] \
        && [ "${VERSION_ID:-}" = 12 ]
}

need_perf() {
    command -v perf >/dev/null 2>&1 || return 0
    v=$(perf --version 2>/dev/null | sed -n 's/^perf version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
    set -- $v
    [ "${1:-0}" -lt 6 ] || { [ "${1:-0}" -eq 6 ] && [ "${2:-0}" -lt 8 ]; }
}

missing_pkgs() {
    for p in $PACKAGES; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' \
            || printf '%s ' "$p"
    done
}

missing_tools() {
    for t in $TOOLS; do
        command -v "${t%%:*}" >/dev/null 2>&1 || printf '%s ' "${t#*:}"
    done
}

if ! is_debian12 || [ "$(id -u)" != 0 ]; then
    if ! is_debian12; then
        say "this is not Debian 12: install by hand the equivalents of"
    else
        say "not root: run these commands as root, then rerun make:"
    fi
    cat <<MSG
  sed -i 's/^Types: deb\$/Types: deb deb-src/' $SOURCES
  printf 'Types: deb\nURIs: <your Debian mirror>\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' > $BACKPORTS
  apt-get update
  apt-get build-dep -y python3.11=$PYVER
  apt-get install -y $PACKAGES $(missing_tools)
  apt-get install -y -t bookworm-backports linux-perf
MSG
    # Without root we can still go on if everything is already there.
    if [ -z "$(missing_pkgs 2>/dev/null)" ] && ! need_perf; then
        tools=$(missing_tools)
        [ -z "$tools" ] || say "missing: $tools(make test needs them for its flame-graph step; make demo goes on without)"
        say "everything needed is already installed; going on"
        exit 0
    fi
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
updated=no
update() {
    if [ $updated = no ]; then
        say "apt-get update"
        apt-get update -qq
        updated=yes
    fi
}

if [ -f "$SOURCES" ] && grep -q '^Types: deb$' "$SOURCES"; then
    say "adding deb-src to $SOURCES"
    sed -i 's/^Types: deb$/Types: deb deb-src/' "$SOURCES"
    updated=no
fi
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    uri=$(sed -n 's/^URIs: *\([^ ]*\/debian\)\/*$/\1/p' "$SOURCES" | head -n 1)
    say "adding bookworm-backports ($BACKPORTS)"
    cat > "$BACKPORTS" <<SRC
Types: deb
URIs: ${uri}
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    updated=no
fi

stamp=/var/lib/perfsupport-build-dep.$PYVER
if [ ! -e "$stamp" ]; then
    update
    say "apt-get build-dep python3.11=$PYVER"
    apt-get build-dep -y -qq "python3.11=$PYVER" >/dev/null
    touch "$stamp"
fi
missing=$(missing_pkgs)
if [ -n "$missing" ]; then
    update
    say "apt-get install $missing"
    apt-get install -y -qq $missing >/dev/null
fi
tools=$(missing_tools)
if [ -n "$tools" ]; then
    update
    say "apt-get install $tools(flame graph HTML and its browser check in make test)"
    # shellcheck disable=SC2086
    apt-get install -y -qq $tools >/dev/null \
        || say "WARNING: could not install $tools; make demo goes on without them, make test's flame-graph step will fail"
fi
if need_perf; then
    update
    say "apt-get install -t bookworm-backports linux-perf"
    apt-get install -y -qq -t bookworm-backports linux-perf >/dev/null
fi
say "perf: $(perf --version)"
