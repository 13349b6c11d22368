"""Closures and decorators: calls through nested functions and wrappers.

Decorated functions (a counting decorator, a memo-less "validate" decorator,
functools.wraps), closures that capture and update cells (nonlocal), and
function factories called in a loop.  SIZE is the number of outer iterations.
"""

import functools

from _harness import main


def counted(func):
    calls = 0

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        nonlocal calls
        calls += 1
        return func(*args, **kwargs)

    wrapper.calls = lambda: calls
    return wrapper


def checked(limit):
    def decorate(func):
        def wrapper(x, y):
            if x > limit or y > limit:
                raise ValueError("too large")
            return func(x, y)
        return wrapper
    return decorate


@counted
@checked(10**9)
def combine(x, y):
    return (x * 31 + y) & 0xFFFF


def make_accumulator(start):
    total = start

    def add(value):
        nonlocal total
        total += value
        return total

    return add


def make_adders(n):
    return [lambda v, k=k: v + k for k in range(n)]


def compose(*funcs):
    def composed(value):
        for f in funcs:
            value = f(value)
        return value
    return composed


def workload(iterations):
    acc = make_accumulator(0)
    adders = make_adders(8)
    pipeline = compose(*adders)
    value = 0
    for i in range(iterations):
        value = combine(value, i)
        acc(pipeline(i) & 7)
        value ^= acc(1) & 0xFF
    return (value, acc(0), combine.calls())


if __name__ == "__main__":
    main(workload, 480000)
