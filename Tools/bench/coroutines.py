"""A pipeline of coroutines (async/await) driven without an event loop.

Stages are `async def` functions awaiting each other several levels deep;
the innermost awaits a tiny awaitable that suspends the whole chain every
few items, and a hand-written driver resumes it with send(None), so the
figure is coroutine creation, await and resume rather than asyncio's
scheduler.  SIZE is the number of items.
"""

from _harness import main


class Suspend:
    """Awaitable that suspends the awaiting chain once."""

    __slots__ = ()

    def __await__(self):
        yield None


async def fetch(i):
    if i % 4 == 0:
        await Suspend()
    return i * 3 + 1


async def parse(i):
    raw = await fetch(i)
    return raw % 101


async def enrich(i):
    value = await parse(i)
    if value & 1:
        value += await parse(i + 1)
    return value


async def pipeline(n):
    total = 0
    for i in range(n):
        total += await enrich(i)
    return total


def run(coro):
    resumes = 0
    try:
        while True:
            coro.send(None)
            resumes += 1
    except StopIteration as stop:
        return stop.value, resumes


def workload(n):
    return run(pipeline(n))


if __name__ == "__main__":
    main(workload, 640000)
