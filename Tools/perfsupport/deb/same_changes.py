"""Do two unified diffs make the same changes?

    same_changes.py ORIGINAL REBASED

ORIGINAL is one of this project's patches (made against pristine 3.11.2),
REBASED the same patch as quilt refreshed it on top of Debian's patches.
Context lines and line numbers may differ (that is the rebase); the lines
removed and added, file by file and in order, must not.  Prints what differs
and exits 1, or exits 0 silently.
"""

import sys


def changes(path):
    """Map each file named by the diff to its list of (sign, line)."""
    result = {}
    current = None
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        lines = f.read().split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("--- ") and i + 1 < len(lines) \
                and lines[i + 1].startswith("+++ "):
            name = lines[i + 1][4:].split("\t")[0]
            if name.startswith("b/"):
                name = name[2:]
            current = result.setdefault(name, [])
            i += 2
            continue
        if current is not None and line[:1] in ("+", "-"):
            current.append((line[0], line[1:]))
        i += 1
    return result


def main(original, rebased):
    old = changes(original)
    new = changes(rebased)
    ok = True
    for name in sorted(set(old) | set(new)):
        if name not in new:
            print(f"{name}: changed by {original}, not by {rebased}")
            ok = False
        elif name not in old:
            print(f"{name}: changed by {rebased}, not by {original}")
            ok = False
        elif old[name] != new[name]:
            print(f"{name}: the rebased patch changes other lines "
                  f"({len(old[name])} changed lines before, "
                  f"{len(new[name])} after)")
            ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
