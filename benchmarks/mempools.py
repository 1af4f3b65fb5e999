"""aiomempool's cases: the same cycles as the baselines, through a Mempool.

The uncontended pool has a cheap backing allocator (it pops a free list), so
that a cycle measures the pool and not the allocator. The contended pool's
allocator is empty after filling the reserve: 16 elements are all there is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from time import perf_counter_ns
from typing import Any

import aiomempool
from aiomempool import GFP, Mempool
from benchmarks.cases import ELEMENTS, IN_FLIGHT
from benchmarks.handrolled import stock
from benchmarks.harness import Batch, Handoff, race


def _alloc_from(gfp_mask: GFP, free_list: list[bytearray]) -> bytearray | None:
    """A cheap backing allocator: pops a free list, None once it is empty."""
    return free_list.pop() if free_list else None


def _return_to(element: bytearray, free_list: list[bytearray]) -> None:
    free_list.append(element)


def cheap_pool() -> Mempool[bytearray]:
    """A reserve of 4 in front of a free list of 64: the steady state."""
    return Mempool(4, _alloc_from, _return_to, stock(64))


# -- the loops: each takes what makes its pool (benchmarks/floors.py drives
# them with its instruments too) ----------------------------------------------


def await_loop(make: Callable[[], Any]) -> Batch:
    """``await pool.alloc()`` + ``pool.free()``, on a pool ``make()`` makes."""

    async def batch(n: int) -> float:
        pool = make()
        start = perf_counter_ns()
        for _ in range(n):
            x = await pool.alloc()
            pool.free(x)
        return (perf_counter_ns() - start) / n

    return batch


def nowait_loop(make: Callable[[], Any]) -> Batch:
    """``pool.alloc_nowait()`` + ``pool.free()``."""

    async def batch(n: int) -> float:
        pool = make()
        start = perf_counter_ns()
        for _ in range(n):
            x = pool.alloc_nowait()
            pool.free(x)
        return (perf_counter_ns() - start) / n

    return batch


def element_loop(make: Callable[[], Any]) -> Batch:
    """``async with pool.element():``, the block empty."""

    async def batch(n: int) -> float:
        pool = make()
        start = perf_counter_ns()
        for _ in range(n):
            async with pool.element():
                pass
        return (perf_counter_ns() - start) / n

    return batch


def ring_loop(make: Callable[[], Any], *, awaited: bool) -> Batch:
    """``IN_FLIGHT`` buffers out of a pool ``make()`` makes; each cycle takes
    one (``alloc_nowait()``, or ``await alloc()``) and gives back the one
    taken ``IN_FLIGHT`` cycles before. At the end every buffer goes back and
    the pool is closed (if it can be)."""

    async def batch(n: int) -> float:
        pool = make()
        ring = [pool.alloc_nowait() for _ in range(IN_FLIGHT)]
        try:
            start = perf_counter_ns()
            if awaited:
                for i in range(n):
                    x = await pool.alloc()
                    k = i % IN_FLIGHT
                    pool.free(ring[k])
                    ring[k] = x
            else:
                for i in range(n):
                    x = pool.alloc_nowait()
                    k = i % IN_FLIGHT
                    pool.free(ring[k])
                    ring[k] = x
            return (perf_counter_ns() - start) / n
        finally:
            for x in ring:
                pool.free(x)
            close = getattr(pool, "close", None)
            if close is not None:
                close()

    return batch


# -- the cases -----------------------------------------------------------------


def reserve_pool() -> Mempool[bytearray]:
    """A pool whose allocator fails every time (its free list holds just
    the reserve's 4): each element is the reserve's, and goes back to it.
    The case the kernel's mempool is for."""
    return Mempool(4, _alloc_from, _return_to, stock(4))


alloc_cycle = await_loop(cheap_pool)
reserve_cycle = await_loop(reserve_pool)
nowait_cycle = nowait_loop(cheap_pool)
element_cycle = element_loop(cheap_pool)


def buffer_pool_of(size: int) -> Callable[[], Any]:
    """What makes ``aiomempool.buffer_pool(size)`` as the buffer cases use it:
    room for ``IN_FLIGHT`` out and as many again."""
    return lambda: aiomempool.buffer_pool(size, min_nr=ELEMENTS, max_nr=4 * IN_FLIGHT)


def buffer_nowait_cycle(size: int) -> Batch:
    """``alloc_nowait()`` + ``free()`` through ``buffer_pool(size)``, with
    ``IN_FLIGHT`` buffers out."""
    return ring_loop(buffer_pool_of(size), awaited=False)


def buffer_alloc_cycle(size: int) -> Batch:
    """``await alloc()`` + ``free()`` through ``buffer_pool(size)``, as above."""
    return ring_loop(buffer_pool_of(size), awaited=True)


def _discard(element: bytearray, data: object) -> None:
    """Never called by the contended pool: its reserve is never full."""


async def mempool_handoff(tasks: int, cycles: int) -> Handoff:
    pool = Mempool(ELEMENTS, _alloc_from, _discard, stock(ELEMENTS))
    waits: list[int] = []

    async def worker() -> None:
        for _ in range(cycles):
            start = perf_counter_ns()
            x = await pool.alloc()
            waits.append(perf_counter_ns() - start)
            await asyncio.sleep(0)
            pool.free(x)

    result = await race([worker() for _ in range(tasks)], waits)
    s = pool.stats()
    total = tasks * cycles
    if (s.allocs, s.frees, s.curr_nr, s.waiters) != (total, total, ELEMENTS, 0):
        raise RuntimeError(f"pool counters off after {total} cycles: {s}")
    return result
