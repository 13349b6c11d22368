#!/usr/bin/env python3
"""Which perf mode for a program that spends its time in native libraries?

    python3 Tools/bench/native_modes.py --fp build/fp/python \\
        --nofp build/nofp/python [--rounds N] [--out FILE.md]

A Python program that calls Debian's own zlib, bzip2, xz and OpenSSL
libraries (built, like nearly every library of a distribution, without
frame pointers) runs, round after round, in four ways:

    plain      the frame-pointer build, no perf support, not recorded
    perf -g    -X perf on the frame-pointer build, perf record -g -F 999
    plain      the build without frame pointers, not recorded
    perf_jit   -X perf_jit on that build, perf record --call-graph dwarf
               -k 1 -F 499, then perf inject --jit

and the report gives, for each recorded mode: the wall time of the program
against its plain run on the same build (median of the per-round ratios),
the size of perf.data per second of recording, the time perf needs
afterwards (inject and script) per second recorded, and what it recovers:
of the samples taken inside the native libraries, the share whose call
chain still reaches the Python function that called the library.
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

PROGRAM = """\
import bz2, hashlib, lzma, os, time, zlib

TEXT = b"the quick brown fox jumps over the lazy dog " * 40000
DATA = os.urandom(1 << 16) * 16

def for_a_while(work, seconds=0.5):
    end = time.process_time() + seconds
    while time.process_time() < end:
        work()

def compress_zlib():
    for_a_while(lambda: zlib.compress(TEXT, 9))

def compress_bz2():
    for_a_while(lambda: bz2.compress(TEXT[:300000], 9))

def compress_lzma():
    for_a_while(lambda: lzma.compress(TEXT[:200000], preset=1))

def hash_sha256():
    for_a_while(lambda: hashlib.sha256(DATA).digest())

for work in (compress_zlib, compress_bz2, compress_lzma, hash_sha256):
    work()
"""

# The Python callers of the libraries, and the libraries.
CALLERS = ("compress_zlib", "compress_bz2", "compress_lzma", "hash_sha256")
LIBRARIES = ("libz.so", "libbz2.so", "liblzma.so", "libcrypto.so")

PERF = shutil.which("perf") or "/usr/bin/perf"


def log(msg):
    print(f"[native] {msg}", file=sys.stderr, flush=True)


def clean_env():
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}


def remove_files(pid):
    for path in (f"/tmp/perf-{pid}.map", f"/tmp/jit-{pid}.dump"):
        if os.path.exists(path):
            os.unlink(path)
    for name in os.listdir("/tmp"):
        if name.startswith(f"jitted-{pid}-") and name.endswith(".so"):
            os.unlink(os.path.join("/tmp", name))


def timed(cmd, **kwargs):
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, env=clean_env(),
                          **kwargs)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"[native] {' '.join(cmd)} failed:\n"
                 f"{proc.stderr.decode(errors='replace')[-2000:]}")
    return seconds, proc


def native_recovery(script_text):
    """(samples in the libraries, those whose chain holds the caller)."""
    inside = named = 0
    for block in re.split(r"\n[ \t]*\n", script_text):
        lines = [line for line in block.splitlines() if line.strip()][1:]
        if not lines or not any(lib in lines[0] for lib in LIBRARIES):
            continue
        inside += 1
        if any(f"py::{caller}:" in line for line in lines
               for caller in CALLERS):
            named += 1
    return inside, named


def run_recorded(python, option, record_args, inject, workdir, script):
    data = os.path.join(workdir, "perf.data")
    # "pid": the program prints its pid, whose files are removed after.
    wall, proc = timed([PERF, "record", "-q", *record_args, "-o", data,
                        "--", python, option, script, "pid"])
    size = os.path.getsize(data)
    after = time.perf_counter()
    if inject:
        injected = data + ".jit"
        timed([PERF, "inject", "--jit", "-i", data, "-o", injected])
        data = injected
    _, script_proc = timed([PERF, "script", "-i", data, "-F",
                            "comm,pid,ip,sym,dso"])
    post = time.perf_counter() - after
    text = script_proc.stdout.decode(errors="replace")
    remove_files(int(proc.stdout.split()[0]))
    for name in os.listdir(workdir):
        if name.startswith("perf.data"):
            os.unlink(os.path.join(workdir, name))
    return wall, size, post, native_recovery(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fp", required=True,
                        help="the build with frame pointers")
    parser.add_argument("--nofp", required=True,
                        help="the build without frame pointers")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", help="also write the report here")
    opts = parser.parse_args()

    rows = {"perf": [], "perf_jit": []}
    with tempfile.TemporaryDirectory(prefix="native-modes-") as workdir:
        script = os.path.join(workdir, "native.py")
        with open(script, "w") as f:
            f.write(PROGRAM.replace("for work in", "import sys\n"
                                    "if sys.argv[1:] == ['pid']:\n"
                                    "    print(os.getpid(), flush=True)\n"
                                    "for work in"))
        for n in range(opts.rounds):
            log(f"round {n + 1} of {opts.rounds}")
            plain_fp, _ = timed([opts.fp, script])
            wall, size, post, (inside, named) = run_recorded(
                opts.fp, "-Xperf", ["-g", "-F", "999"], False, workdir,
                script)
            rows["perf"].append((wall / plain_fp, size / wall, post / wall,
                                 inside, named))
            plain_nofp, _ = timed([opts.nofp, script])
            wall, size, post, (inside, named) = run_recorded(
                opts.nofp, "-Xperf_jit", ["-k", "1", "-F", "499",
                                          "--call-graph", "dwarf,65528"],
                True, workdir, script)
            rows["perf_jit"].append((wall / plain_nofp, size / wall,
                                     post / wall, inside, named))

    lines = [
        f"Native libraries without frame pointers, {time.strftime('%Y-%m-%d')}, "
        f"{opts.rounds} rounds (medians):",
        "",
        "| mode | wall time vs not recorded | perf.data per second | "
        "perf afterwards per second recorded | library samples that keep "
        "their Python caller |",
        "|---|---:|---:|---:|---:|",
    ]
    titles = {"perf": "-X perf, perf record -g (frame-pointer build)",
              "perf_jit": "-X perf_jit, --call-graph dwarf + perf inject "
                          "--jit (no frame pointers)"}
    for mode, samples in rows.items():
        ratio = statistics.median(s[0] for s in samples)
        rate = statistics.median(s[1] for s in samples)
        post = statistics.median(s[2] for s in samples)
        inside = sum(s[3] for s in samples)
        named = sum(s[4] for s in samples)
        share = 100.0 * named / inside if inside else 0.0
        lines.append(f"| {titles[mode]} | {ratio:.2f} | "
                     f"{rate / 1024:.0f} KiB | {post:.2f} s | "
                     f"{share:.0f}% ({named} of {inside}) |")
    report = "\n".join(lines) + "\n"
    print(report)
    if opts.out:
        with open(opts.out, "w") as f:
            f.write(report)


if __name__ == "__main__":
    main()
