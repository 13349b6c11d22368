"""Naive recursive Fibonacci: nothing but Python-to-Python calls.

Each call does a comparison, two subtractions and an addition, so the cost of
the call itself (frame push, evaluation hook, trampoline) dominates.
SIZE is n; the work grows as phi**n.
"""

from _harness import main


def fib(n):
    if n < 2:
        return n
    return fib(n - 1) + fib(n - 2)


def workload(n):
    # The warm-up call gets n // 10: keep it meaningful but cheap.
    return fib(max(n, 12))


if __name__ == "__main__":
    main(workload, 32, warmup_divisor=2)
