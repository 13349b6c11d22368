"""Dict work: building, updating, merging, iterating and inverting dicts.

Word-frequency style counting with str and int keys, dict comprehensions,
get/setdefault/pop, and items() iteration.  SIZE is the number of keys
inserted per pass.
"""

from _harness import main


def workload(n):
    words = ["w%d" % (i * 7919 % (n // 3 + 1)) for i in range(n)]
    counts = {}
    for w in words:
        counts[w] = counts.get(w, 0) + 1
    groups = {}
    for w, c in counts.items():
        groups.setdefault(c, []).append(w)
    squares = {i: i * i for i in range(n // 2)}
    merged = dict(squares)
    merged.update((i, -i) for i in range(0, n // 2, 3))
    removed = 0
    for i in range(0, n // 2, 5):
        removed += merged.pop(i, 0)
    inverted = {v: k for k, v in counts.items()}
    nested = {}
    for i in range(n // 4):
        nested.setdefault(i % 17, {})[i] = i & 15
    inner = sum(len(d) for d in nested.values())
    return (len(counts), len(groups), removed, len(inverted), inner,
            sum(merged.values()))


if __name__ == "__main__":
    main(workload, 640000)
