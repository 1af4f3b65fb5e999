"""Idle trimming: the memory of a burst comes back once its slabs have been
wholly free for trim_after seconds, never below the reserve."""

from __future__ import annotations

import asyncio
import gc

import pytest

from aiomempool import SlabCache, buffer_pool, slab_pool
from aiomempool.pools import TRIM_AFTER


def burst(cache: SlabCache, n: int) -> list[memoryview]:
    views = [cache.alloc() for _ in range(n)]
    assert None not in views
    return views  # type: ignore[return-value]


def test_a_slab_goes_once_seen_wholly_free_for_trim_after_seconds() -> None:
    cache = SlabCache(64, objects_per_slab=4, trim_after=10)
    views = burst(cache, 12)  # three slabs
    for view in views[4:]:
        cache.free(view)  # slabs 1 and 2 wholly free, slab 0 in use
    assert cache._trim(now=100.0) == 0  # seen free: the clock starts
    assert cache._trim(now=105.0) == 0  # not long enough
    assert cache._trim(now=110.0) == 2
    assert cache.stats().slabs == 1
    assert cache.stats().objects_in_use == 4
    for view in views[:4]:
        cache.free(view)
    assert cache._trim(now=111.0) == 0  # free since 111 only
    assert cache._trim(now=121.0) == 1
    assert cache.stats().bytes_reserved == 0


def test_a_slab_used_between_ticks_starts_its_clock_again() -> None:
    cache = SlabCache(64, objects_per_slab=4, trim_after=10)
    views = burst(cache, 8)
    for view in views:
        cache.free(view)
    cache._trim(now=0.0)
    again = burst(cache, 5)  # both slabs in use at the next tick
    cache._trim(now=5.0)
    for view in again:
        cache.free(view)
    assert cache._trim(now=10.0) == 0  # seen wholly free since 10 only
    assert cache._trim(now=20.0) == 2


def test_after_a_tick_allocations_take_the_fullest_slab_first() -> None:
    cache = SlabCache(64, objects_per_slab=4, trim_after=10)
    views = burst(cache, 12)
    # Slab 0 keeps three out, slab 1 one, slab 2 none; freed in an order
    # that puts slab 2's slots on top of the stack.
    for view in [views[1], views[5], views[6], views[7], *views[8:]]:
        cache.free(view)
    cache._trim(now=0.0)
    taken = burst(cache, 4)
    where = [cache._slot_of(v)[0].number for v in taken]  # type: ignore[index]
    assert where == [0, 1, 1, 1]  # the fullest first; slab 2 stays free


def test_the_reserve_is_never_trimmed() -> None:
    cache = SlabCache(64, objects_per_slab=2, trim_after=1)
    pool = slab_pool(4, cache)  # two slabs lent to the reserve
    assert cache.stats().slabs == 2
    cache._trim(now=0.0)
    assert cache._trim(now=50.0) == 0
    assert pool.curr_nr == 4 and cache.stats().slabs == 2
    pool.close()


def test_trim_after_is_checked() -> None:
    for bad, error in [("1", TypeError), (True, TypeError), (0, ValueError)]:
        with pytest.raises(error, match="trim_after"):
            SlabCache(64, trim_after=bad)  # type: ignore[arg-type]
    assert SlabCache(64).trim_after is None
    assert buffer_pool(64, min_nr=1)._allocator.trim_after == TRIM_AFTER  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_a_buffer_pools_burst_memory_comes_back_on_its_timer() -> None:
    pool = buffer_pool(4096, min_nr=2, max_nr=256, objects_per_slab=8, trim_after=0.05)
    cache = pool._allocator  # type: ignore[attr-defined]
    held = [await pool.alloc() for _ in range(64)]
    assert cache.stats().slabs == 9  # 64 out and the reserve's 2
    for buf in held:
        pool.free(buf)
    for _ in range(100):  # bounded: 2 s at most
        if cache.stats().slabs == 1:
            break
        await asyncio.sleep(0.02)
    assert cache.stats().slabs == 1  # the reserve's slab only
    assert pool.curr_nr == 2 and pool.stats().outstanding == 0
    buf = await pool.alloc()  # and it grows again when asked
    pool.free(buf)
    pool.close()


@pytest.mark.asyncio
async def test_closing_the_cache_stops_its_timer_and_a_dropped_cache_is_freed() -> None:
    pool = buffer_pool(4096, min_nr=1, objects_per_slab=2, trim_after=0.01)
    cache = pool._allocator  # type: ignore[attr-defined]
    held = [pool.alloc_nowait() for _ in range(6)]
    assert cache._trim_timer is not None
    pool.free_bulk(held)
    pool.close()
    assert cache._trim_timer is None
    other = buffer_pool(4096, min_nr=1, objects_per_slab=2, trim_after=0.01)
    other.free_bulk([other.alloc_nowait() for _ in range(6)])
    del other
    gc.collect()
    await asyncio.sleep(0.05)  # the timer holds the cache weakly: no error
