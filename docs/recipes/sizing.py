"""A pool of fixed-size buffers with a memory budget: min_nr and max_nr.

``buffer_pool(size, min_nr=..., max_nr=...)`` keeps ``min_nr`` buffers in
reserve and makes at most ``max_nr`` for ordinary callers, plus a small
headroom that only ``GFP_ATOMIC`` callers may use. At ``max_nr`` buffers out,
``alloc()`` waits in line and ``alloc_nowait()`` returns None: memory stays
within ``(max_nr + headroom) * size``.
"""

from __future__ import annotations

import asyncio

from aiomempool import GFP, GFP_ATOMIC, buffer_pool


async def main() -> None:
    # max_nr=4: the headroom is max(1, 4 // 16) = 1 buffer, for GFP_ATOMIC.
    pool = buffer_pool(4096, min_nr=2, max_nr=4, name="sizing")
    held = [await pool.alloc() for _ in range(4)]  # the whole budget
    assert all(isinstance(buf, memoryview) for buf in held)
    assert pool.curr_nr == 0  # two from the allocator, then the reserve's two
    assert pool.alloc_nowait(GFP.NOWARN) is None  # nothing without waiting

    waiter = asyncio.ensure_future(pool.alloc(timeout=1.0))
    await asyncio.sleep(0)
    assert pool.waiters == 1
    pool.free(held.pop())  # straight to the waiter: nobody can take it first
    held.append(await waiter)

    urgent = pool.alloc_nowait(GFP_ATOMIC)  # the headroom: one buffer more
    assert urgent is not None
    assert pool.alloc_nowait(GFP_ATOMIC | GFP.NOWARN) is None  # and no further
    held.append(urgent)

    for buf in held:
        pool.free(buf)  # the first two refill the reserve, the rest go back
    s = pool.stats()
    print(
        f"{s.allocs} allocations, {s.waits} wait, {s.outstanding} outstanding, "
        f"reserve {s.curr_nr}/{s.min_nr}"
    )
    assert (s.allocs, s.waits, s.outstanding, s.curr_nr) == (6, 1, 0, 2)
    pool.close()


if __name__ == "__main__":
    asyncio.run(main())
