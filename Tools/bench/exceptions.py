"""Exceptions raised through several Python frames and caught higher up.

Each item goes through a chain of calls; some raise (a custom exception
class, a KeyError from a dict lookup, a re-raise with `raise ... from`), and
the handlers sit two to four frames above the raise, so the unwinding of
frames (and of their trampolines under -X perf) is exercised.
SIZE is the number of items.
"""

from _harness import main


class ValidationError(Exception):
    def __init__(self, field, value):
        super().__init__(field)
        self.field = field
        self.value = value


TABLE = {k: k * k for k in range(0, 64, 3)}


def lookup(key):
    return TABLE[key]


def validate(i):
    if i % 5 == 0:
        raise ValidationError("i", i)
    return i


def convert(i):
    try:
        return lookup(i % 64)
    except KeyError as exc:
        raise ValueError(i) from exc


def process(i):
    return convert(validate(i))


def handle(i):
    try:
        return process(i)
    except ValidationError as exc:
        return -exc.value
    except ValueError:
        return 1
    finally:
        pass


def workload(n):
    total = 0
    for i in range(n):
        total += handle(i)
    return total


if __name__ == "__main__":
    main(workload, 380000)
