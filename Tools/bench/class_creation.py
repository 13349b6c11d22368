"""Class creation: class statements, type(), inheritance, __init_subclass__.

Each iteration creates a few classes (with methods, properties, slots, a
metaclass-free __init_subclass__ registry and a dataclass-like generated
__init__ via type()), instantiates them and calls a method.  The code objects
are the same each time (the class bodies), so the trampolines are reused;
the cost is type creation, MRO and method-cache work.
SIZE is the number of iterations.
"""

from _harness import main


class Base:
    registry = []

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        Base.registry.append(cls.__name__)

    def describe(self):
        return len(type(self).__mro__)


def make_classes(i):
    class Point(Base):
        __slots__ = ("x", "y")

        def __init__(self, x, y):
            self.x = x
            self.y = y

        @property
        def norm1(self):
            return abs(self.x) + abs(self.y)

    class Point3(Point):
        __slots__ = ("z",)

        def __init__(self, x, y, z):
            super().__init__(x, y)
            self.z = z

    def init(self, a, b):
        self.a = a
        self.b = b

    Pair = type("Pair%d" % (i % 10), (Base,), {"__init__": init,
                                               "total": lambda s: s.a + s.b})
    return Point, Point3, Pair


def workload(n):
    checksum = 0
    for i in range(n):
        Point, Point3, Pair = make_classes(i)
        p = Point3(i, -i, 1)
        checksum += p.norm1 + p.describe() + Pair(i, 2).total()
    checksum += len(Base.registry)
    Base.registry.clear()
    return checksum


if __name__ == "__main__":
    main(workload, 14400)
