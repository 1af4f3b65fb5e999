"""A pool of fixed-size buffers with a memory budget: min_nr and max_nr.

The backing allocator makes at most ``max_nr`` buffers; the pool keeps
``min_nr`` of them in reserve. At ``max_nr`` buffers out, ``alloc()`` waits in
line and ``alloc_nowait()`` returns None: memory stays at ``max_nr * size``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiomempool import GFP, Mempool


class BoundedBuffers:
    """alloc_fn and free_fn of ``size``-byte buffers, at most ``max_nr`` alive.

    A buffer counts from the moment alloc_fn makes it until free_fn takes it
    back, whether it sits in the reserve or is handed out.
    """

    def __init__(self, size: int, max_nr: int) -> None:
        self.size = size
        self.max_nr = max_nr
        self.alive = 0

    def alloc(self, gfp_mask: GFP, pool_data: Any) -> memoryview | None:
        if self.alive >= self.max_nr:
            return None  # the pool falls back on its reserve, then waits
        self.alive += 1
        # A memoryview, not the bytearray: asyncio's TLS transport reads into
        # a copy of a bytearray returned by get_buffer(), losing the data.
        return memoryview(bytearray(self.size))

    def free(self, buf: memoryview, pool_data: Any) -> None:
        self.alive -= 1


def bounded_pool(
    size: int, *, min_nr: int, max_nr: int, name: str | None = None
) -> Mempool[memoryview]:
    """A Mempool of ``size``-byte buffers: ``min_nr`` reserved, ``max_nr`` at most."""
    if not 1 <= min_nr <= max_nr:
        raise ValueError(f"need 1 <= min_nr <= max_nr, got {min_nr} and {max_nr}")
    allocator = BoundedBuffers(size, max_nr)
    return Mempool(min_nr, allocator.alloc, allocator.free, name=name)


async def main() -> None:
    pool = bounded_pool(4096, min_nr=2, max_nr=4, name="sizing")
    held = [await pool.alloc() for _ in range(4)]  # the whole budget
    assert pool.curr_nr == 0  # two from the allocator, then the reserve's two
    assert pool.alloc_nowait(GFP.NOWARN) is None  # nothing without waiting

    waiter = asyncio.ensure_future(pool.alloc(timeout=1.0))
    await asyncio.sleep(0)
    assert pool.waiters == 1
    pool.free(held.pop())  # straight to the waiter: nobody can take it first
    held.append(await waiter)

    for buf in held:
        pool.free(buf)  # the first two refill the reserve, the rest go back
    s = pool.stats()
    print(
        f"{s.allocs} allocations, {s.waits} wait, {s.outstanding} outstanding, "
        f"reserve {s.curr_nr}/{s.min_nr}"
    )
    assert (s.allocs, s.waits, s.outstanding, s.curr_nr) == (5, 1, 0, 2)


if __name__ == "__main__":
    asyncio.run(main())
