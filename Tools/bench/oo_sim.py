"""Object-oriented simulation: many small method calls and attribute reads.

A warehouse of shelves and robots; each tick every robot asks its position,
moves, picks or drops a crate through short accessor methods and properties.
SIZE is the number of ticks.
"""

from _harness import main


class Crate:
    __slots__ = ("weight",)

    def __init__(self, weight):
        self.weight = weight

    def get_weight(self):
        return self.weight


class Shelf:
    def __init__(self, index):
        self.index = index
        self.crates = [Crate(1 + (index * 7 + k) % 5) for k in range(3)]

    def has_crate(self):
        return len(self.crates) > 0

    def take(self):
        return self.crates.pop()

    def put(self, crate):
        self.crates.append(crate)

    def load(self):
        total = 0
        for crate in self.crates:
            total += crate.get_weight()
        return total


class Robot:
    def __init__(self, ident, position, n_shelves):
        self.ident = ident
        self._position = position
        self.n_shelves = n_shelves
        self.carrying = None
        self.moves = 0

    @property
    def position(self):
        return self._position

    def is_loaded(self):
        return self.carrying is not None

    def step(self):
        self._position = (self._position + self.direction()) % self.n_shelves
        self.moves += 1

    def direction(self):
        return 1 if self.ident % 2 else self.n_shelves - 1

    def work(self, shelves):
        shelf = shelves[self.position]
        if self.is_loaded():
            if shelf.load() < 12:
                shelf.put(self.carrying)
                self.carrying = None
        elif shelf.has_crate():
            self.carrying = shelf.take()
        self.step()


class Warehouse:
    def __init__(self, n_shelves, n_robots):
        self.shelves = [Shelf(i) for i in range(n_shelves)]
        self.robots = [Robot(r, (r * 5) % n_shelves, n_shelves)
                       for r in range(n_robots)]

    def tick(self):
        for robot in self.robots:
            robot.work(self.shelves)

    def total_load(self):
        return sum(shelf.load() for shelf in self.shelves)


def workload(ticks):
    house = Warehouse(37, 20)
    for _ in range(ticks):
        house.tick()
    return house.total_load() * 1000 + sum(r.moves for r in house.robots) % 1000


if __name__ == "__main__":
    main(workload, 48000)
