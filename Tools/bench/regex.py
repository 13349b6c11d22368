"""Regular expressions: compiled patterns, searching, groups, sub().

The text is generated; patterns cover alternation, character classes, named
groups, lookahead, finditer and sub() with a Python callback (a call per
match).  SIZE is the number of text lines.
"""

import re

from _harness import main

EMAIL = re.compile(r"\b([a-z][a-z0-9._]*)@([a-z0-9-]+(?:\.[a-z]{2,})+)\b")
DATE = re.compile(r"(?P<y>\d{4})-(?P<m>\d{2})-(?P<d>\d{2})")
WORD = re.compile(r"\b[A-Z][a-z]+(?=\s)")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def make_text(n):
    parts = []
    for i in range(n):
        parts.append(
            "Line %d: Contact user%d.x@mail%d.example.org on 2026-%02d-%02d "
            "about Order %d costing %d.%02d EUR; Ref -%d Done\n"
            % (i, i % 97, i % 5, 1 + i % 12, 1 + i % 28, i * 13, i % 900,
               i % 100, i % 41))
    return "".join(parts)


def bump(match):
    return str(int(match.group("d")) % 10)


def workload(n):
    text = make_text(n)
    emails = EMAIL.findall(text)
    domains = {m.group(2) for m in EMAIL.finditer(text)}
    months = sum(int(m.group("m")) for m in DATE.finditer(text))
    words = len(WORD.findall(text))
    numbers = len(NUMBER.findall(text))
    rewritten = DATE.sub(bump, text)
    return len(emails), len(domains), months, words, numbers, len(rewritten)


if __name__ == "__main__":
    main(workload, 29000)
