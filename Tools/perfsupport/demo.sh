#!/bin/sh
# Show perf support at work: profile a small script with nested Python calls
# (baz -> bar -> foo) under "perf record -g" with build/fp/python -X perf and
# print the part of "perf report" that shows the py:: frames; then write the
# flame graph (Tools/perfsupport/flamegraph.py: build/demo/flamegraph-VIEW.html
# and the Firefox Profiler's build/demo/flamegraph-gecko.json) and print
# their paths.
#
#   demo.sh [--optional]
#
# PS_SCRIPT=path profiles another script (default: build/demo.py, written
# here); PS_VIEW=python|native|both picks the flame graph (default python).
# Without npm (or offline) the HTML is skipped with one warning; nothing
# about the flame graph makes the demo fail.  Before recording, a probe checks that perf can record at all; if it
# cannot, the reason and the fix are printed and the script exits 1, or 0 with
# --optional (used by "make all").  The perf map file(s) the run created in
# /tmp are kept until perf report has read them, then deleted.
set -eu
PS_TAG="demo"
. "$(dirname "$0")/common.sh"
clean_python_env

optional=no
[ "${1:-}" = --optional ] && optional=yes

PY=$PS_BUILD/fp/python
OUT=$PS_BUILD/demo
mkdir -p "$OUT"
[ -x "$PY" ] || die "no $PY: run 'make build' first"
export LD_LIBRARY_PATH="$PS_BUILD/fp${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

cannot_record() {
    printf '[demo] perf cannot record here: %s\n' "$1" >&2
    shift
    for line in "$@"; do printf '[demo]   %s\n' "$line" >&2; done
    if [ $optional = yes ]; then
        say "skipping the demo (run 'make demo' once perf can record)"
        exit 0
    fi
    exit 1
}

# ---- can perf record? --------------------------------------------------------
command -v perf >/dev/null 2>&1 \
    || cannot_record "the perf tool is not installed" \
        "fix: run 'make deps' as root (installs linux-perf from bookworm-backports)"
paranoid=$(cat /proc/sys/kernel/perf_event_paranoid 2>/dev/null || echo missing)
if [ "$paranoid" = missing ]; then
    cannot_record "the kernel has no perf events (/proc/sys/kernel/perf_event_paranoid is missing)" \
        "fix: use a kernel built with CONFIG_PERF_EVENTS"
fi
if ! perf record -q -F 99 -g -o "$OUT/probe.data" -- true > "$OUT/probe.log" 2>&1; then
    rm -f "$OUT/probe.data"
    tail -n 5 "$OUT/probe.log" | indent >&2
    if [ "$(id -u)" != 0 ] && [ "$paranoid" -gt 1 ]; then
        cannot_record "kernel.perf_event_paranoid is $paranoid and you are not root" \
            "fix: sudo sysctl kernel.perf_event_paranoid=1   (or run 'make demo' as root)"
    elif [ "$(id -u)" != 0 ]; then
        cannot_record "perf_event_open was refused (paranoid=$paranoid)" \
            "fix: sudo sysctl kernel.perf_event_paranoid=1, or run 'make demo' as root"
    else
        cannot_record "perf_event_open is refused even to root: this is probably a container without CAP_PERFMON (or CAP_SYS_ADMIN), or its seccomp profile blocks perf_event_open" \
            "fix: start the container with --cap-add=PERFMON (kernel >= 5.8; --cap-add=SYS_ADMIN before that)" \
            "     and --security-opt seccomp=unconfined, or run the demo on the host"
    fi
fi
rm -f "$OUT/probe.data"

# ---- the script ------------------------------------------------------------------
if [ -n "${PS_SCRIPT:-}" ]; then
    script=$PS_SCRIPT
    [ -f "$script" ] || die "SCRIPT=$script: no such file"
else
    script=$PS_BUILD/demo.py
    cp "$PS_TOP/Tools/perfsupport/demo.py" "$script"
fi

if "$PY" -c 'import sys; sys.activate_stack_trampoline' 2>/dev/null; then
    have_perf=yes
else
    have_perf=no
    warn "$PY has no sys.activate_stack_trampoline: perf support is not compiled in (patches not applied yet?); expect no py:: frames"
fi

# ---- record -----------------------------------------------------------------------
maps_before=$(ls /tmp/perf-*.map 2>/dev/null || true)
say "perf record -F 9999 -g -o build/demo/perf.data -- build/fp/python -X perf $script"
rc=0
perf record -F 9999 -g -o "$OUT/perf.data" -- "$PY" -X perf "$script" > "$OUT/record.log" 2>&1 || rc=$?
grep -E '^\[ perf record: Captured' "$OUT/record.log" | indent || true
if [ $rc -ne 0 ]; then
    indent "$OUT/record.log" | tail -n 20 >&2
    die "perf record failed (exit $rc); log: $OUT/record.log"
fi
new_maps=
for m in $(ls /tmp/perf-*.map 2>/dev/null || true); do
    case " $(echo $maps_before) " in *" $m "*) ;; *) new_maps="$new_maps $m" ;; esac
done

# ---- report ------------------------------------------------------------------------
# Self time only (--no-children) with caller-based call graphs: each hot
# function's entry shows the chain from main down to it, so the Python frames
# appear nested as py::<module> -> py::baz -> py::bar -> py::foo.
say "perf report -i build/demo/perf.data --stdio -n --no-children -g graph,0.5,caller,function,percent --percent-limit 2"
perf report -i "$OUT/perf.data" --stdio -n --no-children \
    -g graph,0.5,caller,function,percent --percent-limit 2 \
    > "$OUT/report.txt" 2> "$OUT/report.err" || {
    indent "$OUT/report.err" | tail -n 20 >&2
    die "perf report failed; see $OUT/report.err"
}
# The flame graph, while the perf map is still there for perf to read.
fg_python=python3
command -v python3 >/dev/null 2>&1 || fg_python=$PY
fg_rc=0
rm -f "$OUT/flamegraph-python.html" "$OUT/flamegraph-native.html" "$OUT/flamegraph-gecko.json"
say "flame graph: Tools/perfsupport/flamegraph.py --view ${PS_VIEW:-python} (log: build/demo/flamegraph.log)"
"$fg_python" "$PS_TOP/Tools/perfsupport/flamegraph.py" --view "${PS_VIEW:-python}" \
    --name flamegraph "$OUT/perf.data" > "$OUT/flamegraph.log" 2>&1 || fg_rc=$?
for m in $new_maps; do
    rm -f "$m"
    say "deleted the demo's perf map $m"
done
[ -n "$new_maps" ] || [ $have_perf = no ] || warn "the run left no /tmp/perf-PID.map file"

# Print the first report entry whose call graph has py:: frames (entries are
# separated by blank lines), at most 60 lines; the full report stays in
# build/demo/report.txt.
if grep -q 'py::' "$OUT/report.txt"; then
    echo
    awk '
        /^#/ { next }
        /^[[:space:]]*$/ { if (block ~ /py::/) { print block; found = 1; exit } block = ""; next }
        { block = block $0 "\n" }
        END { if (!found && block ~ /py::/) print block }
    ' "$OUT/report.txt" | head -n 60
    echo
    say "full report: $OUT/report.txt"
    if grep -q 'py::baz' "$OUT/report.txt" && grep -q 'py::bar' "$OUT/report.txt" \
       && grep -q 'py::foo' "$OUT/report.txt"; then
        say "OK: py::baz, py::bar and py::foo are in the profile"
    else
        warn "some of py::baz/py::bar/py::foo are missing from the profile"
        [ -n "${PS_SCRIPT:-}" ] || exit 1
    fi
else
    sed -n '/^[^#]/p' "$OUT/report.txt" | head -n 25
    say "full report: $OUT/report.txt"
    if [ $have_perf = yes ]; then
        die "no py:: frames in the profile although the interpreter has perf support"
    fi
    say "no py:: frames (expected without perf support in the interpreter)"
fi

# ---- flame graph -------------------------------------------------------------------
case $fg_rc in
    0) ;;
    3|4) grep 'WARNING' "$OUT/flamegraph.log" | head -n 1 | sed 's/^\[flamegraph\] WARNING: //' \
           | while IFS= read -r line; do warn "$line"; done ;;
    *) warn "no flame graph (exit $fg_rc); log: $OUT/flamegraph.log"
       tail -n 5 "$OUT/flamegraph.log" | indent >&2 ;;
esac
sed -n -E 's/^\[flamegraph\] (python|native) view: (.*)/\1 \2/p' "$OUT/flamegraph.log" \
    | while read -r view path; do
        say "flame graph, $view view: $path (self-contained: any browser, no network)"
    done
sed -n 's/^\[flamegraph\] Firefox Profiler: //p' "$OUT/flamegraph.log" \
    | while IFS= read -r path; do
        say "Firefox Profiler format: $path (in the Firefox Profiler: Load a profile from file)"
    done

# ---- which mode -------------------------------------------------------------------
say "which mode: -X perf with perf record -g needs frame pointers in every native frame on the stack;"
say "    samples inside libraries built without them (most of a distribution's: zlib, OpenSSL, BLAS)"
say "    lose their Python callers. -X perf_jit with perf record --call-graph dwarf -k 1 and"
say "    perf inject --jit keeps them, with recordings hundreds of times larger"
say "    (Doc/howto/perf_profiling.rst, \"Which mode for which program\"; Tools/bench/native_modes.py)"
