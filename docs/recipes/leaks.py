"""Finding leaked elements: outstanding counts, named pools, allocation sites.

An element that is never freed is a leak: ``stats().outstanding`` counts the
elements handed out and not yet freed, so a pool at rest should show 0. In
debug mode, ``outstanding()`` also says where each of them was allocated.
"""

from __future__ import annotations

import asyncio

from aiomempool import Mempool, buffer_pool, named_pools


def leak_report() -> list[str]:
    """A line for every named pool with elements out: for shutdown, or a
    test's teardown once the work is done."""
    return [
        f"{pool.name}: {pool.stats().outstanding} element(s) not freed"
        for pool in named_pools()
        if pool.stats().outstanding
    ]


async def handle(pool: Mempool[memoryview], request: bytes) -> int:
    buf = await pool.alloc()
    assert buf is not None
    if not request:
        return 0  # the bug: this path forgets to free the buffer
    buf[: len(request)] = request
    pool.free(buf)
    return len(request)


async def main() -> None:
    # debug=True: every allocation remembers where it was made (a few
    # microseconds each: for tests and debugging sessions, not production).
    pool = buffer_pool(4096, min_nr=2, max_nr=16, name="leaky", debug=True)
    for request in (b"GET /", b"", b"GET /about"):
        await handle(pool, request)

    print("\n".join(leak_report()))
    leaks = pool.outstanding()  # oldest first
    for leak in leaks:
        print(f"out for {leak.age_s:.3f} s, allocated at:\n{leak.allocated_at}")
    assert "leaky: 1 element(s) not freed" in leak_report()
    assert len(leaks) == 1 and "in handle" in leaks[0].allocated_at

    pool.free(leaks[0].element)  # the leaked buffer, as handle() got it
    assert pool.stats().outstanding == 0 and not pool.outstanding()
    pool.close()  # nothing out: closing logs no warning


if __name__ == "__main__":
    asyncio.run(main())
