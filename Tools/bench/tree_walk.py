"""Recursive method calls over a tree of objects.

A complete binary tree of Node objects is built once per call; then several
recursive methods (sum, depth, count of leaves, a search) walk it, so most of
the time is bound-method calls on instances.  SIZE is the number of walks.
"""

from _harness import main


class Node:
    __slots__ = ("value", "left", "right")

    def __init__(self, value, left=None, right=None):
        self.value = value
        self.left = left
        self.right = right

    def total(self):
        result = self.value
        if self.left is not None:
            result += self.left.total()
        if self.right is not None:
            result += self.right.total()
        return result

    def depth(self):
        left = self.left.depth() if self.left is not None else 0
        right = self.right.depth() if self.right is not None else 0
        return 1 + (left if left > right else right)

    def leaves(self):
        if self.left is None and self.right is None:
            return 1
        count = 0
        if self.left is not None:
            count += self.left.leaves()
        if self.right is not None:
            count += self.right.leaves()
        return count

    def contains(self, value):
        if self.value == value:
            return True
        if self.left is not None and self.left.contains(value):
            return True
        return self.right is not None and self.right.contains(value)


def build(depth, counter=[0]):
    counter[0] += 1
    value = counter[0] % 97
    if depth == 0:
        return Node(value)
    return Node(value, build(depth - 1), build(depth - 1))


def workload(walks):
    root = build(10)
    checksum = 0
    for i in range(walks):
        checksum += root.total() + root.depth() + root.leaves()
        checksum += root.contains(i % 120)
    return checksum


if __name__ == "__main__":
    main(workload, 720)
