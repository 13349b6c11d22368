"""Common driver of the Tools/bench programs.

Every benchmark is a script of its own:

    python3 BENCH.py [SIZE]

It calls its workload once at a tenth of SIZE (warm-up: imports, the
specialising interpreter's inline caches, and, under -X perf, the creation of
the trampolines), then once at SIZE under time.perf_counter(), and prints one
line

    time=<seconds of the timed call> checksum=<value the workload returned>

The runner (run.py) reads the time, so interpreter start-up and the warm-up
are never part of the figure, and compares the checksums of every
configuration: a profiling mode must not change what the program computes.
"""

import os
import sys
import time


def take_generic_road():
    """run.py's "generic" configuration (BENCH_GENERIC_CALLS=1, with -X
    perf): the perf hook installed under another name, which the
    interpreter treats like any other PEP 523 hook, so that calls take the
    generic road.  The switch is a test hook, not an interpreter option."""
    if os.environ.get("BENCH_GENERIC_CALLS") == "1":
        import _testinternalcapi
        _testinternalcapi.set_perf_trampoline_generic_calls(True)


def main(workload, default_size, warmup_divisor=10):
    take_generic_road()
    if len(sys.argv) > 2:
        sys.exit("usage: %s [SIZE]" % sys.argv[0])
    size = int(sys.argv[1]) if len(sys.argv) == 2 else default_size
    if size < 1:
        sys.exit("SIZE must be positive")
    workload(max(1, size // warmup_divisor))
    start = time.perf_counter()
    result = workload(size)
    elapsed = time.perf_counter() - start
    print("time=%.6f checksum=%s" % (elapsed, result))
