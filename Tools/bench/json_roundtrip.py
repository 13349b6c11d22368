"""JSON round trips with the json module (its C accelerator).

A nested document of dicts, lists, strings, floats and ints is serialised
with and without indentation and parsed back, with an object_hook (a Python
call per object) on one of the passes.  SIZE is the number of round trips.
"""

import json

from _harness import main


def make_document():
    return {
        "service": "inventory",
        "version": [3, 11, 2],
        "items": [
            {
                "id": i,
                "name": "item-%d" % i,
                "price": round(i * 1.25, 2),
                "tags": ["t%d" % (i % 5), "t%d" % (i % 7)],
                "stock": {"warehouse": i % 4, "count": i * 3 % 50},
                "active": i % 3 != 0,
                "note": None if i % 2 else "caf\u00e9 \u2603",
            }
            for i in range(40)
        ],
    }


def count_objects(obj, seen=[0]):
    seen[0] += 1
    return obj


def workload(n):
    doc = make_document()
    total = 0
    for i in range(n):
        text = json.dumps(doc, sort_keys=(i % 2 == 0))
        back = json.loads(text)
        total += len(text) + len(back["items"])
        if i % 4 == 0:
            pretty = json.dumps(doc, indent=2)
            again = json.loads(pretty, object_hook=count_objects)
            total += again["items"][-1]["id"]
    return total


if __name__ == "__main__":
    main(workload, 1440)
