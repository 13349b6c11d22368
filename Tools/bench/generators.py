"""A pipeline of generators: every item goes through several resumes.

source -> filter -> map -> window -> consumer, each stage a generator
function; plus a recursive generator (yield from) that flattens a tree.
SIZE is the number of items fed in.
"""

from _harness import main


def source(n):
    for i in range(n):
        yield i


def only_odd_or_seventh(items):
    for item in items:
        if item & 1 or item % 7 == 0:
            yield item


def scaled(items, factor):
    for item in items:
        yield item * factor % 1009


def pairs(items):
    previous = None
    for item in items:
        if previous is not None:
            yield previous, item
        previous = item


def flatten(tree):
    if isinstance(tree, list):
        for sub in tree:
            yield from flatten(sub)
    else:
        yield tree


def nested(depth, width):
    if depth == 0:
        return depth + width
    return [nested(depth - 1, width) for _ in range(width)]


def workload(n):
    total = 0
    for a, b in pairs(scaled(only_odd_or_seventh(source(n)), 13)):
        total += a ^ b
    tree = nested(4, 4)
    for _ in range(n // 2000):
        total += sum(flatten(tree))
    return total


if __name__ == "__main__":
    main(workload, 1900000)
