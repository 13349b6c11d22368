# The example of Doc/howto/perf_profiling.rst, profiled by "make demo" and,
# with a larger count as its argument, by test_perf.py.
import sys

def foo(n):
    result = 0
    for _ in range(n):
        result += 1
    return result

def bar(n):
    foo(n)

def baz(n):
    bar(n)

if __name__ == "__main__":
    baz(int(sys.argv[1]) if len(sys.argv) > 1 else 1000000)
