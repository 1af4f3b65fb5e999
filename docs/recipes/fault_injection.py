"""Testing code against an allocator that fails: aiomempool.testing.

Runs as it is: ``python docs/recipes/fault_injection.py``. A worker fills
buffers in a loop; ``fail_alloc()`` makes the pool's backing allocator fail
every call, so the worker runs on the reserve, then waits, first in line,
for the buffers the others give back, and never loses one. Where a test
suite uses pytest, ``-p aiomempool.testing`` fails every test whose pools
keep buffers out at its end (see the page).
"""

from __future__ import annotations

import asyncio

from aiomempool import Mempool, buffer_pool
from aiomempool.testing import fail_alloc, watch_pools


async def worker(pool: Mempool[memoryview], done: list[int], n: int) -> None:
    for _ in range(n):
        async with pool.element(timeout=5) as buf:
            buf[:4] = b"data"
            await asyncio.sleep(0)  # the buffer is held across an await
        done.append(1)


async def main() -> None:
    with watch_pools() as watch:
        pool = buffer_pool(4096, min_nr=4, max_nr=64, name="fault-injection")
        done: list[int] = []
        with fail_alloc(pool, every=1) as faults:  # the allocator is down
            await asyncio.gather(*(worker(pool, done, 50) for _ in range(16)))
        stats = pool.stats()
        print(f"{len(done)} cycles done by 16 workers on a reserve of 4")
        print(f"allocator calls failed: {faults.failures} of {faults.calls}")
        print(f"stats: {stats}")
        assert len(done) == 16 * 50 and stats.outstanding == 0
        assert stats.waits > 0 and stats.reserve_hits == stats.allocs
        pool.close()
    assert not watch.leaks(), str(watch.leaks())
    print("no pool built here has a buffer out")


if __name__ == "__main__":
    asyncio.run(main())
