"""String work: formatting, splitting, joining, searching, case changes.

Builds log-like lines with f-strings and str.format, parses them back with
split/partition/strip, counts substrings, and joins the results.  Most of the
time is in C string methods, with short Python loops around them.
SIZE is the number of lines.
"""

from _harness import main

LEVELS = ("debug", "info", "warning", "error")


def make_line(i):
    level = LEVELS[i % 4]
    return f"2026-11-{1 + i % 28:02d} {level.upper():<7} worker-{i % 13}: " \
           "request {0} took {1} ms; path=/api/v{2}/items/{0}".format(
               i, i * 7 % 1000, 1 + i % 3)


def parse_line(line):
    date, _, rest = line.partition(" ")
    level, _, rest = rest.lstrip().partition(" ")
    worker, _, message = rest.lstrip().partition(": ")
    fields = message.split("; ")
    path = fields[1].split("=", 1)[1]
    return date[-2:], level.lower(), worker.replace("worker-", "w"), path


def workload(n):
    lines = [make_line(i) for i in range(n)]
    text = "\n".join(lines)
    parsed = [parse_line(line) for line in text.splitlines()]
    errors = sum(1 for _, level, _, _ in parsed if level.startswith("err"))
    paths = ",".join(p for _, _, _, p in parsed[:200]).title()
    return errors, text.count("took 7"), len(paths), len(text.upper())


if __name__ == "__main__":
    main(workload, 160000)
