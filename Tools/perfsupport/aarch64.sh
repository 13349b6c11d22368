#!/bin/sh
# "make aarch64-test": cross-build the patched tree for AArch64 and run the
# perf tests on it under qemu-user, so that the AArch64 trampoline
# (Python/asm_trampoline.S) and the AArch64 unwind rules
# (Python/perf_unwind.c, used by the jitdump and gdb) execute.
#
#   aarch64.sh [deps|build|test|checks|all]   (default: all)
#
# deps: install what is missing (as root; otherwise print the commands);
# build: both builds and a smoke check under qemu; test: the perf test modules
# under qemu, then the checks; checks: only the checks (a minute):
#   unwind tables  the jitdump's and the gdb JIT objects' AArch64 unwind
#                  tables decoded and compared with binutils' reading of the
#                  template's .cfi directives (check_unwind)
#   gdb backtrace  gdb-multiarch through qemu's gdbstub names the trampolines
#                  and unwinds through them to main() (check_gdb; plain build)
#   BTI guard      a branch past a trampoline's "bti c" must raise SIGILL
#                  (check_bti_guard; BTI build)
#
# Two builds of $PS_SRC, out of tree, with --host=aarch64-linux-gnu,
# --with-build-python=build/fp/python (same version, 3.11.2), CC
# aarch64-linux-gnu-gcc (behind ccache when $PS_CC uses it, or when run by
# hand and ccache exists) and CFLAGS -fno-omit-frame-pointer:
#
#   build/aarch64      run under qemu-aarch64 -cpu cortex-a72 (ARMv8.0: no
#                      BTI, no pointer authentication)
#   build/aarch64-bti  + -mbranch-protection=standard (BTI landing pads and
#                      return address signing), run under qemu-aarch64
#                      -cpu max, which implements and enforces both
#
# The tests start child interpreters through sys.executable, and this
# sandbox has no binfmt_misc (and registering an interpreter there would
# change the kernel for every user of the machine).  So each build gets a
# generated wrapper, build/<flavor>/python-qemu, that execs qemu (the pid
# stays the same, which the tests rely on) with guest argv[0] set to the
# wrapper itself (qemu -0): sys.executable then names the wrapper, every
# child runs under qemu too, and the interpreter still finds its build
# directory (pybuilddir.txt) next to it.  gcc, for the test extension of
# TestCExtensionWriters, is the cross compiler (build/<flavor>/cross-bin).
# The guest programs that tests start directly (Programs/_testembed) run
# through build/<flavor>/qemu-run, which the tests find in
# PERF_TESTS_EMULATOR (util.EMULATOR).  Both exec a copy of the emulator in
# the same directory (build/<flavor>/qemu-aarch64): a test that runs the
# interpreter as another user keeps only the interpreter's own directories
# reachable to that user (util.as_other_user()), and the emulator is part of
# the interpreter here.
#
# qemu's library prefix: -L $PS_QEMU_LD_PREFIX.  Default: / when the
# multiarch libc6:arm64 is installed (libffi-dev:arm64 pulls it in), because
# then the loader under /usr/aarch64-linux-gnu (libc6-arm64-cross) would find
# the multiarch libc.so.6 through /etc/ld.so.cache and run with a libc of
# another build; /usr/aarch64-linux-gnu otherwise.
#
# Logs: build/aarch64/build.log, build/aarch64-bti/build.log, and
# build/aarch64-test/<flavor>-*.log for the tests and checks.  The last line
# is "N passed, M failed", counting the steps of both builds (builds, test
# runs, checks); each test run's line gives its test counts.
set -u
PS_TAG="aarch64"
. "$(dirname "$0")/common.sh"
clean_python_env
clean_make_env

TRIPLET=aarch64-linux-gnu
BUILD_PYTHON=$PS_BUILD/fp/python
# The checks' host side needs only the standard library: the system's
# python3, which does not disappear while another make relinks build/fp.
HOST_PYTHON=$(command -v python3 2>/dev/null || echo "$BUILD_PYTHON")
T=$PS_BUILD/aarch64-test
TIMEOUT=${PS_AARCH64_TIMEOUT:-2400}
FLAVORS=${PS_AARCH64_FLAVORS:-"aarch64 aarch64-bti"}
PACKAGES="crossbuild-essential-arm64 libffi-dev:arm64 zlib1g-dev:arm64 gdb-multiarch"

# What the tests under qemu leave out (regrtest --ignorefile: whole class
# names, so TestRealPerf does not exclude TestRealPerfJit, or full test ids);
# everything else must pass, none may skip.
#
# 1. Every test marked @needs("perf_samples") (Lib/test/test_perf_profiler/
#    util.py; they start perf record through util.perf_record(), which
#    refuses an unmarked test): the host's perf samples qemu's own code, not
#    the guest's, and has no AArch64 unwinder for it.  The list comes from
#    util.marked_tests("perf_samples"), asked of the interpreter under test,
#    so a new test that reads samples is left out by being marked, as it
#    must be anyway: TestRealPerf, TestRealPerfJit, TestRealPerfFork,
#    TestNativeLibraryCallers, TestContainerPerfMap, TestContainerJit,
#    TestPreforkServerRecorded (13 tests).
# 2. $EXCLUDED, each for a reason of its own:
#   TestGdbBacktrace  gdb runs sys.executable (a script that execs qemu) or
#                     attaches to its pid: gdb sees qemu, not the AArch64
#                     guest (the "gdb backtrace" check below covers them
#                     through qemu's gdbstub)
#   TestPrivateTmp.test_noexec  expects mmap(PROT_READ|PROT_EXEC) of the
#                     jitdump on a noexec /tmp to fail; qemu-user never asks
#                     the host for PROT_EXEC (it translates guest code, the
#                     host only reads it), so the kernel does not refuse
#                     (checked: EPERM natively, success under qemu-aarch64).
#                     Architecture-independent code, run natively by make test.
#   TestHostileContainers.test_marker_names_shown_escaped  expects
#                     perf_record_ns.py to rewrite the marker of a jitdump at
#                     an odd path: the MMAP record that perf writes for an
#                     executable mapping.  For the same reason as test_noexec
#                     (qemu-user maps the guest's PROT_EXEC mmap without
#                     PROT_EXEC on the host) perf writes none, so there is no
#                     marker to rewrite.  Architecture-independent code
#                     (Tools/perf), run natively by make test.
#   TestRootlessContainer  perf_switch.py must setns() into the service's
#                     user namespace, and the kernel refuses that to a
#                     process with more than one thread (EINVAL); under
#                     qemu-user the tool is such a process (qemu runs an RCU
#                     thread of its own beside the guest's), so it fails with
#                     "cannot enter the user namespace ... Invalid argument".
#                     Architecture-independent code (Tools/perf), run
#                     natively by make test.
EXCLUDED="TestGdbBacktrace test.test_perf_profiler.test_failures.TestPrivateTmp.test_noexec test.test_perf_profiler.test_containers.TestHostileContainers.test_marker_names_shown_escaped TestRootlessContainer"
TESTS="test_perf_profiler test_perfmaps test_perf_gdb"

now() { date +%s; }

# ---- dependencies --------------------------------------------------------------
installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'
}

# The emulator: Debian's qemu-user-static, unpacked (not installed) into
# build/qemu-user-static.  Debian's qemu-user is built with TCG plugin
# support, and its qemu-aarch64 aborts in qemu_plugin_vcpu_init_hook ("Bail
# out! ... assertion failed: (success)") in the child when a guest with a
# second thread forks (TestRemoteSwitch's fork tests); the static build has
# no plugins.  It cannot be installed beside qemu-user-binfmt (the two
# conflict), and it needs no installation: the binary is self-contained.
# PS_QEMU names another emulator; without the static one, the first on
# PATH is used (and the fork tests fail as above).
QEMU_STATIC=$PS_BUILD/qemu-user-static/usr/bin/qemu-aarch64-static

qemu_bin() {
    if [ -n "${PS_QEMU:-}" ]; then
        echo "$PS_QEMU"
    elif [ -x "$QEMU_STATIC" ]; then
        echo "$QEMU_STATIC"
    else
        command -v qemu-aarch64 2>/dev/null || command -v qemu-aarch64-static 2>/dev/null
    fi
}

# apt-get download + dpkg-deb -x: qemu-user-static of the host's own
# archive, the same version as qemu-user.
unpack_static_qemu() {
    [ -n "${PS_QEMU:-}" ] || [ -x "$QEMU_STATIC" ] && return 0
    command -v apt-get >/dev/null 2>&1 || return 0
    _dl=$PS_BUILD/qemu-user-static.deb.d
    rm -rf "$_dl" && mkdir -p "$_dl"
    say "fetching qemu-user-static (apt-get download) into $PS_BUILD/qemu-user-static"
    if (cd "$_dl" && apt-get download -q qemu-user-static) > "$PS_BUILD/aarch64-apt.log" 2>&1 \
       && dpkg-deb -x "$_dl"/qemu-user-static_*.deb "$PS_BUILD/qemu-user-static" \
       && [ -x "$QEMU_STATIC" ]; then
        rm -rf "$_dl"
    else
        tail -n 5 "$PS_BUILD/aarch64-apt.log" | indent >&2
        warn "no qemu-user-static: the fork tests will fail under $(qemu_bin)"
    fi
    unset _dl
}

missing_packages() {
    for p in $PACKAGES; do
        installed "$p" || printf '%s ' "$p"
    done
    qemu_bin >/dev/null || printf '%s ' qemu-user
}

deps() {
    missing=$(missing_packages)
    if [ -z "$missing" ]; then
        mkdir -p "$PS_BUILD"
        unpack_static_qemu
        say "dependencies present: $PACKAGES, $(qemu_bin)"
        return 0
    fi
    need_arch=no
    dpkg --print-foreign-architectures 2>/dev/null | grep -qx arm64 || need_arch=yes
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        say "missing: $missing"
        say "run as root, then rerun make aarch64-test:"
        [ $need_arch = yes ] && echo "  dpkg --add-architecture arm64"
        echo "  apt-get update"
        echo "  apt-get install -y $missing"
        exit 1
    fi
    if [ $need_arch = yes ]; then
        say "dpkg --add-architecture arm64"
        dpkg --add-architecture arm64 || die "dpkg --add-architecture arm64 failed"
    fi
    mkdir -p "$PS_BUILD"
    say "apt-get update; apt-get install $missing (log: $PS_BUILD/aarch64-apt.log)"
    {
        apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing
    } > "$PS_BUILD/aarch64-apt.log" 2>&1 || {
        tail -n 20 "$PS_BUILD/aarch64-apt.log" | indent >&2
        die "apt-get failed (log: $PS_BUILD/aarch64-apt.log)"
    }
    missing=$(missing_packages)
    [ -z "$missing" ] || die "still missing after apt-get: $missing"
    unpack_static_qemu
}

# ---- build -----------------------------------------------------------------------
version_of() {
    sed -n 's/^#define PY_VERSION[[:space:]]*"\(.*\)"/\1/p' "$1/Include/patchlevel.h"
}

cross_cc() {
    case "${PS_CC-unset}" in
        unset) command -v ccache >/dev/null 2>&1 && printf 'ccache ' ;;
        ccache\ *|*/ccache\ *) printf 'ccache ' ;;
    esac
    printf '%s-gcc' "$TRIPLET"
}

qemu_prefix() {
    if [ -n "${PS_QEMU_LD_PREFIX:-}" ]; then
        echo "$PS_QEMU_LD_PREFIX"
    elif installed libc6:arm64 && [ -e /lib/ld-linux-aarch64.so.1 ]; then
        echo /
    else
        echo "/usr/$TRIPLET"
    fi
}

qemu_cpu() {
    case "$1" in
        aarch64-bti) echo max ;;
        *) echo cortex-a72 ;;
    esac
}

# The name configure_and_make (common.sh) calls; build_one runs in a
# subshell, which this ends.
failed() {
    printf '\n[aarch64] BUILD FAILED (%s, step: %s)\n' "$flavor" "$1" >&2
    printf '[aarch64] full log: %s\n' "$LOG" >&2
    printf '[aarch64] last 40 lines:\n' >&2
    tail -n 40 "$LOG" | indent >&2
    exit 1
}

# Write build/<flavor>/python-qemu, qemu-run (beside a copy of the emulator)
# and cross-bin/gcc.
write_wrappers() {
    _b=$1 _l=$(qemu_prefix) _c=$(qemu_cpu "$flavor")
    _q=$_b/qemu-aarch64
    cp -f "$(qemu_bin)" "$_q.tmp" && chmod 755 "$_q.tmp" && mv -f "$_q.tmp" "$_q" \
        || die "cannot copy the emulator $(qemu_bin) to $_q"
    cat > "$_b/python-qemu.tmp" <<EOF
#!/bin/sh
# Written by Tools/perfsupport/aarch64.sh: run the AArch64 interpreter of
# this directory under qemu-user, keeping the pid (exec) and giving the guest
# this script as argv[0], so that sys.executable names it and the child
# interpreters that tests start run under qemu too.
exec '$_q' -L '$_l' -cpu $_c -0 "\$0" '$_b/python' "\$@"
EOF
    chmod +x "$_b/python-qemu.tmp"
    mv -f "$_b/python-qemu.tmp" "$_b/python-qemu"
    cat > "$_b/qemu-run.tmp" <<EOF
#!/bin/sh
# Written by Tools/perfsupport/aarch64.sh: run the AArch64 program argv[1]
# (with its arguments) under the same qemu-user, keeping the pid.  The tests
# run through it the guest programs that they start other than through
# sys.executable (Programs/_testembed): PERF_TESTS_EMULATOR names it.
exec '$_q' -L '$_l' -cpu $_c "\$@"
EOF
    chmod +x "$_b/qemu-run.tmp"
    mv -f "$_b/qemu-run.tmp" "$_b/qemu-run"
    mkdir -p "$_b/cross-bin"
    cat > "$_b/cross-bin/gcc" <<EOF
#!/bin/sh
# Written by Tools/perfsupport/aarch64.sh: "gcc" for the tests that compile
# an extension for this interpreter is the AArch64 cross compiler.
exec $TRIPLET-gcc "\$@"
EOF
    chmod +x "$_b/cross-bin/gcc"
    unset _b _q _l _c
}

build_one() {
    flavor=$1
    B=$PS_BUILD/$flavor
    LOG=$B/build.log
    cflags="-fno-omit-frame-pointer"
    [ "$flavor" = aarch64-bti ] && cflags="$cflags -mbranch-protection=standard"
    t0=$(now)
    mkdir -p "$B"
    : > "$LOG"
    # configure_and_make (common.sh) reconfigures from scratch whenever this
    # command line changes.  Cross-configuring needs --enable-ipv6 (the
    # getaddrinfo check cannot run) and the two /dev answers; pkg-config must
    # only see arm64 .pc files, or the host's amd64 -dev packages (liblzma,
    # uuid) mark modules buildable that then fail to link.
    PS_CC=$(cross_cc) \
    PS_CONFIGURE_FLAGS="--host=$TRIPLET --build=x86_64-linux-gnu --with-build-python=$BUILD_PYTHON --enable-ipv6 ac_cv_file__dev_ptmx=yes ac_cv_file__dev_ptc=no PKG_CONFIG_LIBDIR=/usr/lib/$TRIPLET/pkgconfig:/usr/share/pkgconfig" \
        configure_and_make "$PS_SRC" "$B" "$cflags"
    if grep -q 'Failed to build these modules' "$LOG"; then
        grep -A3 'Failed to build these modules' "$LOG" | indent >&2
        failed "extension modules"
    fi
    write_wrappers "$B"

    say "$flavor: smoke check under $(qemu_bin) -cpu $(qemu_cpu "$flavor")"
    {
        echo "== smoke check"
        "$B/python-qemu" -c '
import os, sys, sysconfig, platform, _ctypes, ctypes, zlib, _testcapi, _testinternalcapi
print(sys.version.split()[0], platform.machine(), "sys.executable =", sys.executable)
print("PY_HAVE_PERF_TRAMPOLINE =", sysconfig.get_config_var("PY_HAVE_PERF_TRAMPOLINE"))
def f():
    return 42
for backend in ("perf", "perf_jit"):
    sys.activate_stack_trampoline(backend)
    assert f() == 42 and sys.is_stack_trampoline_active()
    sys.deactivate_stack_trampoline()
with open(f"/tmp/perf-{os.getpid()}.map") as m:
    assert any(line.endswith(" py::f:<string>\n") for line in m), "f not in the map"
os.unlink(f"/tmp/perf-{os.getpid()}.map")
os.unlink(f"/tmp/jit-{os.getpid()}.dump")
print("trampolines executed and returned under both backends")
'
    } > "$B/smoke.out" 2>&1 || { cat "$B/smoke.out" >> "$LOG"; failed "smoke check"; }
    cat "$B/smoke.out" >> "$LOG"
    sed -n '2,$p' "$B/smoke.out" | indent
    if [ "$flavor" = aarch64-bti ]; then
        check_bti_objects "$B" || failed "BTI/PAC in the objects"
    fi
    say "$flavor: built in $(( $(now) - t0 ))s: $B/python (run it as $B/python-qemu)"
}

# The BTI build: the template starts with "bti c" and declares BTI, and the
# interpreter's code signs return addresses.  Whether the executable itself
# is marked BTI depends on the C library's start files (Debian 12's are not
# built with branch protection, so the linker drops the mark): said, not
# required.
check_bti_objects() {
    _o=$1/Python/asm_trampoline.o
    _first=$($TRIPLET-objdump -d "$_o" | awk '/<_Py_trampoline_func_start>:/ { getline; print $2; exit }')
    if [ "$_first" != d503245f ]; then
        say "the template does not start with bti c (d503245f) but with '$_first'"
        return 1
    fi
    $TRIPLET-readelf -n "$_o" | grep -q 'AArch64 feature: BTI' \
        || { say "$_o has no GNU property note for BTI"; return 1; }
    $TRIPLET-objdump -d "$1/Python/ceval.o" | grep -q paciasp \
        || { say "Python/ceval.o signs no return address (no paciasp)"; return 1; }
    say "template: bti c first, BTI property note; C code: paciasp/autiasp"
    if $TRIPLET-readelf -n "$1/python" | grep -q 'AArch64 feature: BTI'; then
        say "python is marked BTI: qemu guards its code pages"
    else
        say "python is not marked BTI (start files without branch protection): its own pages are not guarded"
    fi
    unset _o _first
}

# ---- tests -------------------------------------------------------------------------
# One file per action, so that "checks" run by hand does not clobber the
# results of a "test" running meanwhile.
results=$T/results-${1:-all}

record() {  # record NAME passed|failed DETAIL
    printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$results"
}

# in_private_tmp COMMAND...: run COMMAND with a /tmp of its own, an empty
# tmpfs (new_tmp), when unshare can make one (root); else as is.
# The tests read /tmp/perf-PID.map and /tmp/jit-PID.dump after their child
# exits, and on a shared machine other runs (make test's cleaning_tmp, the
# sanitize and regrtest scripts) remove every such file that appears while
# they run: without a /tmp of their own, the tests fail now and then with
# "/tmp/perf-PID.map was not written".
in_private_tmp() {
    if [ "$(id -u)" = 0 ] && command -v unshare >/dev/null 2>&1 \
       && unshare --mount --propagation private true 2>/dev/null; then
        new_tmp '' "$@"
    else
        "$@"
    fi
}

# Run the perf test modules on one build under qemu; count from unittest's
# own "Ran N tests" / "OK" / "FAILED (...)" lines, one per module.
test_one() {
    flavor=$1
    B=$PS_BUILD/$flavor
    if [ ! -x "$B/python-qemu" ] || [ ! -f "$B/smoke.out" ]; then
        record "perf tests ($flavor)" failed "no build"
        return 1
    fi
    tlog=$T/$flavor-tests.log
    ignore=$T/$flavor-ignore.txt
    # shellcheck disable=SC2086
    if ! (cd "$B" && ./python-qemu - $TESTS) > "$ignore" 2> "$T/$flavor-list.err" <<'EOF'
import sys
from test.test_perf_profiler import util
ids = util.marked_tests("perf_samples", [f"test.{name}" for name in sys.argv[1:]])
assert ids, "no test is marked @needs('perf_samples')"
print(*ids, sep="\n")
EOF
    then
        indent "$T/$flavor-list.err"
        record "perf tests ($flavor)" failed "cannot list the tests marked perf_samples"
        return 1
    fi
    nsamples=$(grep -c . "$ignore")
    for c in $EXCLUDED; do echo "$c"; done >> "$ignore"
    excl="--ignorefile=$ignore"

    # The test ids with and without the exclusions: what is excluded.
    # shellcheck disable=SC2086
    (cd "$B" && ./python-qemu -m test --list-cases $TESTS) \
        > "$T/$flavor-all-cases.txt" 2> "$T/$flavor-list.err"
    # shellcheck disable=SC2086
    (cd "$B" && ./python-qemu -m test --list-cases $excl $TESTS) \
        > "$T/$flavor-run-cases.txt" 2>> "$T/$flavor-list.err"
    nall=$(grep -c '^test\.' "$T/$flavor-all-cases.txt")
    nrun=$(grep -c '^test\.' "$T/$flavor-run-cases.txt")
    nexcl=$((nall - nrun))
    sort "$T/$flavor-run-cases.txt" > "$T/$flavor-run-sorted.txt"
    grep '^test\.' "$T/$flavor-all-cases.txt" | sort \
        | comm -23 - "$T/$flavor-run-sorted.txt" > "$T/$flavor-excluded.txt"
    rm -f "$T/$flavor-run-sorted.txt"

    say "$flavor: $TESTS under $(qemu_bin) -cpu $(qemu_cpu "$flavor"), excluding the $nsamples tests marked perf_samples and $EXCLUDED ($nexcl tests in all; log: $tlog)"
    t0=$(now)
    # shellcheck disable=SC2086
    (cd "$B" && in_private_tmp env PATH="$B/cross-bin:$PATH" \
        PERF_TESTS_EMULATOR="$B/qemu-run" ./python-qemu \
        -m test -v --timeout "$TIMEOUT" $excl $TESTS) > "$tlog" 2>&1
    rc=$?
    secs=$(( $(now) - t0 ))
    # Tests, not subtests: a test whose subtests fail counts once; an error
    # in setUpClass counts as one failed test.
    counts=$(awk '
        /^Ran [0-9]+ tests? in / { ran += $2 }
        /^(OK|FAILED)( \(|$)/ {
            s = $0; sub(/^[A-Z]+ *\(?/, "", s); sub(/\).*$/, "", s)
            n = split(s, kv, ", ")
            for (i = 1; i <= n; i++) {
                split(kv[i], p, "=")
                if (p[1] == "skipped") skipped += p[2]
            }
        }
        /^(FAIL|ERROR|UNEXPECTED SUCCESS): / {
            id = $0; sub(/^[^(]*\(/, "", id); sub(/\).*$/, "", id)
            if (!(id in seen)) { seen[id] = 1; bad++ }
        }
        END { printf "%d %d %d", ran, bad, skipped }' "$tlog")
    set -- $counts
    ran=$1 bad=$2 skipped=$3
    passed=$((ran - bad - skipped))
    [ $passed -ge 0 ] || passed=0
    detail="$passed passed, $bad failed, $skipped skipped, $nexcl excluded ($ran run) in ${secs}s"
    grep -E '^(FAIL|ERROR|UNEXPECTED SUCCESS):' "$tlog" | sort -u | indent
    grep -E '^[0-9]+ tests? (failed|skipped|OK)|^test_[a-z_]+ (failed|skipped|run no tests)|^Result: ' "$tlog" | indent
    if [ $rc -eq 0 ] && [ "$bad" -eq 0 ] && [ "$skipped" -eq 0 ] && [ "$ran" -gt 0 ]; then
        record "perf tests ($flavor)" passed "$detail"
    else
        [ "$skipped" -eq 0 ] || grep -E '\.\.\. skipped' "$tlog" | indent
        record "perf tests ($flavor)" failed "$detail, exit status $rc"
    fi
    say "$flavor: $detail"
}

# ---- the unwind tables and the gdb objects, decoded ---------------------------------
# TestJitDump checks the jitdump's structure and, for AArch64, elf_mach 183,
# but not what its unwind tables say.  Here a child run with -X perf_jit
# dumps the gdb JIT objects it registered (through __jit_debug_descriptor,
# with ctypes); then, on the host, every CODE_LOAD's code must be the
# template, and every .eh_frame/.eh_frame_hdr of the jitdump and every FDE
# of the gdb objects must decode to exactly the rows that binutils
# (readelf --debug-dump=frames-interp) reads from the .cfi directives of the
# template's own object, Python/asm_trampoline.o.
DUMP_GDB_OBJECTS='
import ctypes, os, sys
def foo(): return 1
def bar(): return foo()
def baz(): return bar()
class K:
    def method(self): return baz()
for _ in range(3):
    K().method()
class Entry(ctypes.Structure): pass
Entry._fields_ = [("next", ctypes.POINTER(Entry)), ("prev", ctypes.POINTER(Entry)),
                  ("symfile_addr", ctypes.c_void_p), ("symfile_size", ctypes.c_uint64)]
class Descriptor(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("action_flag", ctypes.c_uint32),
                ("relevant_entry", ctypes.POINTER(Entry)),
                ("first_entry", ctypes.POINTER(Entry))]
d = Descriptor.in_dll(ctypes.pythonapi, "__jit_debug_descriptor")
assert d.version == 1, d.version
ctypes.string_at(ctypes.addressof(d), 1)    # named before the walk
n, e = 0, d.first_entry
while e:
    n += 1
    with open(os.path.join(sys.argv[1], f"gdb-{n}.o"), "wb") as f:
        f.write(ctypes.string_at(e.contents.symfile_addr, e.contents.symfile_size))
    e = e.contents.next
print(os.getpid())
'

check_unwind() {
    flavor=$1
    B=$PS_BUILD/$flavor
    _d=$T/$flavor-gdb-objects
    _log=$T/$flavor-unwind.log
    rm -rf "$_d" && mkdir -p "$_d"
    cat > "$T/unwind-check.py" <<'PYEOF'
# Written by Tools/perfsupport/aarch64.sh (check_unwind): argv = build
# directory, target triplet, pid of the child, directory of its gdb objects.
import os, struct, subprocess, sys

bdir, triplet, pid, objdir = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
EM_AARCH64 = 183
problems = []

def problem(msg):
    problems.append(msg)

# -- the reference: binutils' reading of the template's own .cfi directives
obj = os.path.join(bdir, "Python", "asm_trampoline.o")

def readelf_rows(path):
    """{pc_begin: (pc_end, [(loc - pc_begin, cfa, x29, ra), ...])} of every
    FDE, as readelf --debug-dump=frames-interp prints them."""
    text = subprocess.run([f"{triplet}-readelf", "--debug-dump=frames-interp", path],
                          capture_output=True, text=True, check=True).stdout
    fdes, cur, cols = {}, None, None
    for line in text.splitlines():
        words = line.split()
        if " FDE " in line and "pc=" in line:
            lo, hi = (int(x, 16) for x in line.split("pc=")[1].split(".."))
            cur = fdes.setdefault(lo, (hi, []))[1]
            cols = None
        elif cur is not None and words[:1] == ["LOC"]:
            cols = words[1:]
        elif cur is not None and cols and len(words) == len(cols) + 1:
            row = dict(zip(cols, words[1:]))
            cur.append((int(words[0], 16), row.get("CFA"), row.get("x29", "u"), row.get("ra", "u")))
        elif not words:
            cur = None
    return {lo: (hi, [(loc - lo, *r) for loc, *r in rows]) for lo, (hi, rows) in fdes.items()}

ref = readelf_rows(obj)
if len(ref) != 1:
    sys.exit(f"{obj}: expected one FDE, readelf shows {len(ref)}")
(tsize, ref_rows), = ((hi - lo, rows) for lo, (hi, rows) in ref.items())
text_bin = os.path.join(objdir, "template.bin")
subprocess.run([f"{triplet}-objcopy", "-O", "binary", "--only-section=.text", obj, text_bin], check=True)
template = open(text_bin, "rb").read()[:tsize]

# -- a DWARF CFA decoder, for the registers the template touches
def uleb(b, i):
    r = s = 0
    while True:
        c = b[i]; i += 1; r |= (c & 0x7f) << s; s += 7
        if not c & 0x80: return r, i

def sleb(b, i):
    r = s = 0
    while True:
        c = b[i]; i += 1; r |= (c & 0x7f) << s; s += 7
        if not c & 0x80:
            if c & 0x40: r -= 1 << s
            return r, i

def run_cfa(prog, caf, daf, state, rows, loc=0, init=None):
    """Append (loc, cfa, x29, ra) rows; state = [reg, off, {reg: rule}]."""
    i = 0
    def emit():
        reg, off, saved = state
        cfa = f"{'sp' if reg == 31 else 'x%d' % reg}{off:+d}"
        rows.append((loc, cfa, saved.get(29, "u"), saved.get(30, "u")))
    emit()
    while i < len(prog):
        op = prog[i]; i += 1
        hi, lo = op & 0xc0, op & 0x3f
        if op == 0x00:
            continue
        if hi == 0x40 or op in (0x02, 0x03):        # advance_loc, 1, 2
            if hi == 0x40: loc += lo * caf
            elif op == 0x02: loc += prog[i] * caf; i += 1
            else: loc += struct.unpack_from("<H", prog, i)[0] * caf; i += 2
            emit(); continue
        if hi == 0x80:                              # offset
            off, i = uleb(prog, i); state[2][lo] = f"c{off * daf:+d}"
        elif hi == 0xc0:                            # restore
            state[2].pop(lo, None)
            if init and lo in init[2]: state[2][lo] = init[2][lo]
        elif op == 0x0c: state[0], i = uleb(prog, i); state[1], i = uleb(prog, i)
        elif op == 0x0d: state[0], i = uleb(prog, i)
        elif op == 0x0e: state[1], i = uleb(prog, i)
        else: raise ValueError(f"unexpected DW_CFA opcode {op:#x}")
        rows.pop()                                  # the row at loc changes
        emit()
    return rows

def dedupe(rows):
    """readelf prints one row per location, the state after its rules."""
    out = {}
    for loc, *r in rows: out[loc] = tuple(r)
    res, last = [], None
    for loc in sorted(out):
        if out[loc] != last: res.append((loc, *out[loc])); last = out[loc]
    return res

def parse_cie_fde(eh, fde_off, pc_of):
    """Decode the FDE at fde_off and its CIE: (pc_begin, pc_range, rows)."""
    flen, cie_ptr = struct.unpack_from("<II", eh, fde_off)
    cie_off = fde_off + 4 - cie_ptr
    clen, cid, ver = struct.unpack_from("<IIB", eh, cie_off)
    if cid != 0 or ver != 1: raise ValueError(f"CIE id {cid} version {ver}")
    i = cie_off + 9
    aug = eh[i:eh.index(b"\0", i)]; i += len(aug) + 1
    caf, i = uleb(eh, i); daf, i = sleb(eh, i); ra, i = uleb(eh, i)
    if (caf, daf, ra) != (4, -8, 30):
        raise ValueError(f"CIE alignment/return register {caf}, {daf}, {ra}: not AArch64's 4, -8, x30")
    if aug != b"zR": raise ValueError(f"CIE augmentation {aug!r}")
    _, i = uleb(eh, i); enc = eh[i]; i += 1
    state = [31, 0, {}]
    init = run_cfa(eh[i:cie_off + 4 + clen], caf, daf, state, [])
    init_state = [state[0], state[1], dict(state[2])]
    j = fde_off + 8
    pc_begin, pc_range, j = pc_of(eh, j, enc)
    alen, j = uleb(eh, j); j += alen
    rows = run_cfa(eh[j:fde_off + 4 + flen], caf, daf, state, init[:-1], init=init_state)
    return pc_begin, pc_range, dedupe(rows)

# -- the jitdump
path = f"/tmp/jit-{pid}.dump"
data = open(path, "rb").read()
magic, version, hsize, mach = struct.unpack_from("<IIII", data, 0)
if magic != 0x4A695444 or mach != EM_AARCH64:
    problem(f"{path}: magic {magic:#x}, elf_mach {mach} (want EM_AARCH64 = 183)")
off, pending, loads = hsize, None, {}
while off < len(data):
    rid, total, _ = struct.unpack_from("<IIQ", data, off)
    body = data[off + 16:off + total]
    if rid == 4:
        usize, hdr_size, mapped = struct.unpack_from("<QQQ", body, 0)
        pending = body[24:24 + usize], hdr_size
    elif rid == 0:
        _, _, vma, addr, csize, idx = struct.unpack_from("<IIQQQQ", body, 0)
        end = body.index(b"\0", 40)
        name, code = body[40:end], body[end + 1:end + 1 + csize]
        loads[addr] = name
        if code[:tsize] != template:
            problem(f"{name!r}: code {code[:tsize].hex()} is not the template {template.hex()}")
        if pending is None:
            problem(f"{name!r}: no CODE_UNWINDING_INFO before it"); continue
        unw, hdr_size = pending; pending = None
        eh, hdr = unw[:len(unw) - hdr_size], unw[len(unw) - hdr_size:]
        # perf lays the generated ELF out as [code | .eh_frame | .eh_frame_hdr],
        # .eh_frame 8-aligned after the code: offsets below are from the code.
        base = (csize + 7) & ~7
        def pcrel(b, j, enc):
            if enc != 0x1b: raise ValueError(f"FDE pointer encoding {enc:#x}, not pcrel|sdata4")
            begin, rng = struct.unpack_from("<iI", b, j)
            return base + j + begin, rng, j + 8
        try:
            fde = struct.unpack_from("<I", eh, 0)[0] + 4
            pc_begin, pc_range, rows = parse_cie_fde(eh, fde, pcrel)
            ver, e1, e2, e3, ehp, count, loc, fde_addr = struct.unpack_from("<BBBBiIii", hdr, 0)
            hbase = base + len(eh)
            checks = {
                "FDE pc_begin -> code start": pc_begin == 0,
                "FDE pc_range == template size": pc_range == tsize,
                "rows == readelf's rows of asm_trampoline.o": rows == ref_rows,
                ".eh_frame_hdr version/encodings": (ver, e1, e2, e3) == (1, 0x1b, 0x03, 0x3b),
                ".eh_frame_hdr eh_frame_ptr -> .eh_frame": hbase + 4 + ehp == base,
                ".eh_frame_hdr one FDE": count == 1,
                ".eh_frame_hdr table: code start": hbase + loc == 0,
                ".eh_frame_hdr table: the FDE": hbase + fde_addr == base + fde,
            }
        except (ValueError, struct.error, IndexError) as exc:
            problem(f"{name!r}: cannot decode its unwind info: {exc}"); continue
        for what, ok in checks.items():
            if not ok:
                problem(f"{name!r}: {what} fails (rows {rows}, reference {ref_rows})")
    off += total
if not loads:
    problem(f"{path}: no CODE_LOAD")

# -- the gdb JIT objects
def absptr(b, j, enc):
    if enc != 0x00: raise ValueError(f"FDE pointer encoding {enc:#x}, not absptr")
    begin, rng = struct.unpack_from("<QQ", b, j)
    return begin, rng, j + 16

# Two kinds of object (Python/perf_gdb_jit.c): a chunk's, with .symtab
# naming its trampolines and an FDE for each; and an arena's, made with the
# arena, with no .symtab and an empty .text, whose .eh_frame has an FDE per
# slot.  Every FDE of both must be the template's rules, as readelf reads
# them too; every named trampoline must also lie at a slot of an arena.
nobj = nsym = narena = nslot = 0
arena_slots = set()
named = []                                  # (object, name, address)
for fn in sorted(os.listdir(objdir)):
    if not fn.startswith("gdb-"): continue
    nobj += 1
    p = os.path.join(objdir, fn); elf = open(p, "rb").read()
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        problem(f"{fn}: not an ELF64 little-endian object"); continue
    e_type, e_machine = struct.unpack_from("<HH", elf, 16)
    if e_machine != EM_AARCH64 or e_type != 3:
        problem(f"{fn}: e_type {e_type}, e_machine {e_machine} (want ET_DYN, EM_AARCH64)")
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3a)
    secs = [struct.unpack_from("<IIQQQQIIQQ", elf, shoff + k * shentsize) for k in range(shnum)]
    shstr = secs[shstrndx]
    def secname(s): o = shstr[4] + s[0]; return elf[o:elf.index(b"\0", o)].decode()
    byname = {secname(s): s for s in secs}
    if ".eh_frame" not in byname:
        problem(f"{fn}: no .eh_frame (sections {sorted(byname)})"); continue
    ehs = byname[".eh_frame"]
    arena = ".symtab" not in byname
    syms = {}
    if arena:
        if ".strtab" in byname:
            problem(f"{fn}: .strtab without .symtab")
        text = byname.get(".text")
        if text is None or text[5] != 0:
            problem(f"{fn}: an arena's object whose .text is not empty")
    else:
        if ".strtab" not in byname:
            problem(f"{fn}: .symtab without .strtab"); continue
        symtab, strtab = byname[".symtab"], byname[".strtab"]
        for k in range(1, symtab[5] // 24):
            st_name, info, other, shndx, value, size = struct.unpack_from("<IBBHQQ", elf, symtab[4] + 24 * k)
            o = strtab[4] + st_name
            syms[value] = (elf[o:elf.index(b"\0", o)], size)
    eh = elf[ehs[4]:ehs[4] + ehs[5]]
    # every FDE, walking the section
    j, fdes = 0, {}
    while j < len(eh):
        ln, = struct.unpack_from("<I", eh, j)
        if ln == 0: break
        cid, = struct.unpack_from("<I", eh, j + 4)
        if cid != 0:
            try:
                pc_begin, pc_range, rows = parse_cie_fde(eh, j, absptr)
                fdes[pc_begin] = (pc_range, rows)
            except (ValueError, struct.error, IndexError) as exc:
                problem(f"{fn}: FDE at {j}: {exc}")
        j += 4 + ln
    binutils = readelf_rows(p)
    if arena:
        narena += 1
        nslot += len(fdes)
        if not fdes:
            problem(f"{fn}: an arena's object without FDEs")
        starts = sorted(fdes)
        steps = {b - a for a, b in zip(starts, starts[1:])}
        if len(steps) > 1 or steps and min(steps) < tsize:
            problem(f"{fn}: the slots' FDEs are not evenly spaced by at least the template's size: {sorted(steps)[:5]}")
        for addr, (pc_range, rows) in fdes.items():
            if pc_range != tsize or rows != ref_rows:
                problem(f"{fn}: the FDE of slot {addr:#x}: range {pc_range}, rows {rows} (reference {tsize}, {ref_rows})")
            if binutils.get(addr) != (addr + tsize, ref_rows):
                problem(f"{fn}: readelf reads the FDE of slot {addr:#x} as {binutils.get(addr)}")
        arena_slots.update(fdes)
        continue
    for addr, (name, size) in syms.items():
        nsym += 1
        named.append((fn, name, addr))
        if not name.startswith(b"py::"): problem(f"{fn}: symbol {name!r}")
        if loads.get(addr) not in (None, name):
            problem(f"{fn}: {name!r} at {addr:#x} is {loads[addr]!r} in the jitdump")
        if addr not in fdes:
            problem(f"{fn}: no FDE for {name!r} at {addr:#x}"); continue
        pc_range, rows = fdes[addr]
        if pc_range != tsize or rows != ref_rows:
            problem(f"{fn}: FDE of {name!r}: range {pc_range}, rows {rows} (reference {tsize}, {ref_rows})")
        if binutils.get(addr) != (addr + tsize, ref_rows):
            problem(f"{fn}: readelf reads the FDE of {name!r} as {binutils.get(addr)}")
for fn, name, addr in named:
    if addr not in arena_slots:
        problem(f"{fn}: {name!r} at {addr:#x} is at no slot of an arena's object")
if nobj == 0 or nsym == 0 or narena == 0:
    problem(f"no gdb JIT object, symbol or arena ({nobj} objects, {nsym} symbols, {narena} arenas)")

print(f"template {tsize} bytes, rows of asm_trampoline.o: " + "; ".join(f"+{loc}: CFA={cfa} x29={x29} x30={ra}" for loc, cfa, x29, ra in ref_rows))
print(f"jitdump: {len(loads)} code loads (code, .eh_frame, .eh_frame_hdr); gdb JIT: {nobj} objects, "
      f"{nsym} symbols, {narena} arena(s) of {nslot} slots (FDEs, also read by readelf)")
for p in problems[:20]: print("PROBLEM:", p)
print(f"{len(problems)} problem(s)" if problems else "all of them are the template and describe it as its .cfi directives do")
sys.exit(1 if problems else 0)
PYEOF
    # The child and the check share a /tmp of their own (see in_private_tmp).
    (cd "$T" && in_private_tmp sh -c '
        pid=$("$1" -X perf_jit -c "$2" "$3") || { echo "the child failed"; exit 1; }
        "$4" "$5" "$6" "$7" "$pid" "$3"
        rc=$?
        rm -f "/tmp/jit-$pid.dump"
        exit $rc' sh "$B/python-qemu" "$DUMP_GDB_OBJECTS" "$_d" \
        "$HOST_PYTHON" "$T/unwind-check.py" "$B" "$TRIPLET") > "$_log" 2>&1
    _rc=$?
    indent "$_log"
    if [ $_rc -eq 0 ]; then
        record "unwind tables ($flavor)" passed "jitdump and gdb objects decoded (log: $_log)"
    else
        record "unwind tables ($flavor)" failed "see $_log"
    fi
    unset _d _log _rc
}

# ---- BTI: are the trampolines' landing pads enforced? --------------------------------
# qemu -cpu max, like Linux, checks BTI landing pads only on pages mapped
# with PROT_BTI; elsewhere any indirect branch may land anywhere.  The child
# calls the trampoline of f() through ctypes (a blr) at its start, the
# "bti c", and 4 bytes further, at the stp: the first call must return
# what the evaluator passed as 4th argument returns; the second must die of
# SIGILL, unless the trampoline arena lacks PROT_BTI.
BTI_PROBE='
import ctypes, os, sys
def f(): return 1
sys.activate_stack_trampoline("perf")
f()
sys.deactivate_stack_trampoline()
path = f"/tmp/perf-{os.getpid()}.map"
with open(path) as m:
    addr = [int(line.split()[0], 16) for line in m
            if line.endswith(" py::f:<string>\n")][0]
os.unlink(path)
EVAL = ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)
TRAMPOLINE = ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p,
                              ctypes.c_int, EVAL)
evaluator = EVAL(lambda tstate, frame, throwflag: 4242)
print(TRAMPOLINE(addr + int(sys.argv[1]))(None, None, 0, evaluator), flush=True)
'

check_bti_guard() {
    B=$PS_BUILD/aarch64-bti
    # qemu writes a core file of a guest killed by a signal: not here.
    _at0=$(cd "$T" && ulimit -c 0 && in_private_tmp "$B/python-qemu" -c "$BTI_PROBE" 0 2>&1); _rc0=$?
    _at4=$(cd "$T" && ulimit -c 0 && in_private_tmp "$B/python-qemu" -c "$BTI_PROBE" 4 2>&1); _rc4=$?
    say "aarch64-bti: call at the landing pad: exit $_rc0, '$(echo $_at0)'; 4 bytes past it: exit $_rc4, '$(echo $_at4)'"
    if [ $_rc0 -ne 0 ] || [ "$_at0" != 4242 ]; then
        record "BTI guard (aarch64-bti)" failed "a call at the trampoline's bti c failed"
    elif [ $_rc4 -eq $((128 + 4)) ]; then
        record "BTI guard (aarch64-bti)" passed "trampolines are guarded: a branch past bti c raises SIGILL"
    elif [ $_rc4 -eq 0 ]; then
        record "BTI guard (aarch64-bti)" failed "trampolines not guarded: a branch past bti c runs (arena mapped without PROT_BTI)"
    else
        record "BTI guard (aarch64-bti)" failed "a branch past bti c: exit status $_rc4"
    fi
    unset _at0 _at4 _rc0 _rc4
}

# ---- gdb through qemu's gdbstub -------------------------------------------------------
# TestGdbBacktrace cannot run (it starts gdb on sys.executable), but
# gdb-multiarch can debug the guest through qemu's gdbstub: the script below
# stops itself with SIGTRAP under foo -> bar -> baz, and the backtrace must
# name the four trampolines (GDB's JIT interface, Python/perf_gdb_jit.c) and
# unwind through them, with their AArch64 FDEs, down to Py_BytesMain and
# _start.  Plain build only: qemu 7.2's gdbstub does not tell gdb about
# pointer authentication, so gdb cannot strip the signatures from the
# return addresses of the BTI/PAC build and stops in the first C frame that
# signed its own (on real hardware Linux gives gdb the masks).
GDB_SCRIPT='import os, signal
print(f"pid={os.getpid()}", flush=True)
def baz():
    os.kill(os.getpid(), signal.SIGTRAP)
def bar():
    baz()
def foo():
    bar()
foo()
'

check_gdb() {
    flavor=$1
    B=$PS_BUILD/$flavor
    if ! command -v gdb-multiarch >/dev/null 2>&1; then
        record "gdb backtrace ($flavor)" failed "gdb-multiarch is not installed"
        return 1
    fi
    _sock=$T/gdbstub.sock _script=$T/gdb-script.py _log=$T/$flavor-gdb.log
    printf '%s' "$GDB_SCRIPT" > "$_script"
    rm -f "$_sock"
    (cd "$T" && ulimit -c 0 && exec timeout 600 "$(qemu_bin)" -L "$(qemu_prefix)" \
        -cpu "$(qemu_cpu "$flavor")" -g "$_sock" -0 "$B/python-qemu" \
        "$B/python" -X perf "$_script") > "$T/$flavor-gdb-guest.out" 2>&1 &
    _qemu=$!
    _n=0
    while [ ! -S "$_sock" ] && [ $_n -lt 50 ]; do sleep 0.2; _n=$((_n + 1)); done
    timeout 600 gdb-multiarch -nx -batch -iex 'set debuginfod enabled off' \
        -iex 'set auto-load python-scripts off' -iex 'set auto-load gdb-scripts off' \
        -ex "file $B/python" -ex 'set sysroot /' -ex "target remote $_sock" \
        -ex continue -ex bt -ex kill > "$_log" 2>&1 < /dev/null
    kill "$_qemu" 2>/dev/null
    wait "$_qemu" 2>/dev/null
    rm -f "$_sock"
    _pid=$(sed -n 's/^pid=//p' "$T/$flavor-gdb-guest.out")
    [ -n "$_pid" ] && rm -f "/tmp/perf-$_pid.map"
    # "#7  0x... in py::baz:/path (...)" -> "py::baz:/path"
    _frames=$(sed -n -E 's/^#[0-9]+ +(0x[0-9a-f]+ in )?([^ ]+) .*/\2/p' "$_log")
    { printf '%s\n' "$_frames" | tr '\n' ' '; echo; } | fold -s -w 100 | indent
    _want=$(printf 'py::%s:%s\n' baz "$_script" bar "$_script" foo "$_script" '<module>' "$_script")
    if [ "$(printf '%s\n' "$_frames" | grep '^py::')" = "$_want" ] \
       && printf '%s\n' "$_frames" | grep -qx Py_BytesMain \
       && ! printf '%s\n' "$_frames" | sed '/^Py_BytesMain$/q' | grep -qx '??'; then
        record "gdb backtrace ($flavor)" passed "py::baz, bar, foo, <module> named; unwound to main (log: $_log)"
    else
        record "gdb backtrace ($flavor)" failed "see $_log"
    fi
    unset _sock _script _log _qemu _n _pid _frames _want
}

# ---- main ------------------------------------------------------------------------
action=${1:-all}
case "$action" in deps|build|test|checks|all) ;; *) echo "usage: $0 [deps|build|test|checks|all]" >&2; exit 2 ;; esac

t_start=$(now)
deps
[ "$action" = deps ] && exit 0

[ -x "$BUILD_PYTHON" ] || die "no build Python at $BUILD_PYTHON: run 'make build-fp'"
[ -f "$PS_SRC/configure" ] || die "no working tree at $PS_SRC: run 'make source'"
have=$("$BUILD_PYTHON" -c 'import platform; print(platform.python_version())')
want=$(version_of "$PS_SRC")
[ "$have" = "$want" ] || die "$BUILD_PYTHON is $have, the tree is $want: the build Python must be the same version"

mkdir -p "$T"
: > "$results"
if [ "$action" = build ] || [ "$action" = all ]; then
    for flavor in $FLAVORS; do
        t0=$(now)
        if (build_one "$flavor"); then
            record "build ($flavor)" passed "$(( $(now) - t0 ))s"
        else
            record "build ($flavor)" failed "$(( $(now) - t0 ))s"
        fi
    done
fi
if [ "$action" != build ]; then
    for flavor in $FLAVORS; do
        # Again, in case PS_QEMU_LD_PREFIX or qemu changed since the build.
        [ -x "$PS_BUILD/$flavor/python" ] && write_wrappers "$PS_BUILD/$flavor"
        [ "$action" = checks ] || test_one "$flavor"
        [ -x "$PS_BUILD/$flavor/python-qemu" ] || continue
        check_unwind "$flavor"
        if [ "$flavor" = aarch64-bti ]; then check_bti_guard; else check_gdb "$flavor"; fi
    done
fi

passed=$(awk -F'\t' '$2 == "passed"' "$results" | wc -l)
failed=$(awk -F'\t' '$2 == "failed"' "$results" | wc -l)
printf '\n[aarch64] summary (%ss; logs in %s)\n' "$(( $(now) - t_start ))" "$T"
awk -F'\t' '{ printf "  %-26s %-7s %s\n", $1, $2, $3 }' "$results"
printf '%d passed, %d failed\n' "$passed" "$failed"
[ "$failed" -eq 0 ]
