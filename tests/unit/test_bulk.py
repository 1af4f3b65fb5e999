"""alloc_bulk() and free_bulk(): all or nothing, holding nothing while
waiting, first come first served with single requests."""

from __future__ import annotations

import asyncio
import ctypes
from typing import Any

import pytest
from helpers import Backing, address, settle

from aiomempool import (
    GFP_NOWAIT,
    AllocTimeoutError,
    CorruptionError,
    DoubleFreeError,
    Mempool,
    PoolClosedError,
    buffer_pool,
)


def drained_backing(min_nr: int) -> tuple[Backing, Mempool[Any]]:
    """A pool of ``min_nr`` elements in all: the allocator is down."""
    backing = Backing()
    pool = backing.pool(min_nr)
    backing.up = False
    return backing, pool


async def needs_three_one_at_a_time(pool: Mempool[Any], got: list[Any]) -> None:
    for _ in range(3):
        got.append(await pool.alloc())
        await asyncio.sleep(0)  # some work between the allocations
    pool.free_bulk(got)


async def needs_three_at_once(pool: Mempool[Any], done: list[int]) -> None:
    got = await pool.alloc_bulk(3)
    assert len(got) == 3
    await asyncio.sleep(0)
    pool.free_bulk(got)
    done.append(1)


@pytest.mark.asyncio
async def test_a_loop_of_alloc_deadlocks_where_alloc_bulk_does_not() -> None:
    # Two tasks each need three of the four elements there are.
    _, pool = drained_backing(4)
    a: list[Any] = []
    b: list[Any] = []
    tasks = [
        asyncio.ensure_future(needs_three_one_at_a_time(pool, a)),
        asyncio.ensure_future(needs_three_one_at_a_time(pool, b)),
    ]
    done, pending = await asyncio.wait(tasks, timeout=0.2)
    assert not done and len(a) == len(b) == 2  # each holds two, waits for one
    assert pool.waiters == 2 and pool.curr_nr == 0  # deadlocked
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    pool.free_bulk(a + b)
    assert pool.curr_nr == 4

    finished: list[int] = []
    await asyncio.wait_for(
        asyncio.gather(
            needs_three_at_once(pool, finished), needs_three_at_once(pool, finished)
        ),
        5,
    )
    assert finished == [1, 1]
    assert pool.curr_nr == 4 and pool.stats().outstanding == 0


@pytest.mark.asyncio
async def test_a_bulk_that_cannot_be_had_at_once_takes_nothing() -> None:
    _, pool = drained_backing(4)
    held = pool.alloc_nowait()
    before = pool.stats()
    assert await pool.alloc_bulk(4, GFP_NOWAIT) is None
    after = pool.stats()
    assert after.curr_nr == before.curr_nr == 3
    assert after.outstanding == before.outstanding == 1
    got = await pool.alloc_bulk(3, GFP_NOWAIT)
    assert got is not None and len(set(map(id, got))) == 3 and held not in got
    assert pool.curr_nr == 0
    pool.free_bulk([*got, held])
    assert pool.curr_nr == 4


@pytest.mark.asyncio
async def test_a_bulk_takes_from_the_allocator_first_then_the_reserve() -> None:
    backing = Backing(supply=6)
    pool = backing.pool(4)  # the reserve took 4; 2 more can be made
    got = await pool.alloc_bulk(4)
    assert sum(e in backing.made[-2:] for e in got) == 2
    assert pool.curr_nr == 2
    assert pool.stats().allocs == 4 and pool.stats().reserve_hits == 2
    pool.free_bulk(got)


def test_a_count_the_pool_cannot_guarantee_is_refused_at_once() -> None:
    _, pool = drained_backing(4)

    async def ask(count: Any) -> Any:
        return await pool.alloc_bulk(count)

    for count, error, rule in [
        (5, ValueError, "from 1 to 4"),
        (0, ValueError, "from 1 to 4"),
        ("3", TypeError, "count must be an int"),
    ]:
        with pytest.raises(error, match=rule):
            asyncio.run(ask(count))
    assert pool.stats().waits == 0 and pool.curr_nr == 4


@pytest.mark.asyncio
async def test_a_bounded_buffer_pool_guarantees_up_to_max_nr() -> None:
    pool = buffer_pool(64, min_nr=2, max_nr=8, headroom=0)
    with pytest.raises(ValueError, match="from 1 to 8"):
        await pool.alloc_bulk(9)
    done: list[int] = []

    async def six() -> None:
        got = await pool.alloc_bulk(6)
        assert len(got) == 6 and len(set(map(id, got))) == 6
        await asyncio.sleep(0.01)
        pool.free_bulk(got)
        done.append(1)

    await asyncio.wait_for(asyncio.gather(six(), six(), six()), 5)
    assert done == [1, 1, 1] and pool.stats().outstanding == 0
    assert pool.stats().waits >= 2


@pytest.mark.asyncio
async def test_a_waiting_bulk_holds_nothing_and_nobody_overtakes_it() -> None:
    _, pool = drained_backing(3)
    held = [pool.alloc_nowait() for _ in range(3)]
    bulk = asyncio.ensure_future(pool.alloc_bulk(2))
    await settle()
    single = asyncio.ensure_future(pool.alloc())
    await settle()
    assert pool.waiters == 2
    pool.free(held[0])
    await settle()
    # In the reserve, not with the bulk request, and not for the single
    # one behind it, nor for a newcomer.
    assert pool.curr_nr == 1 and not bulk.done() and not single.done()
    assert pool.alloc_nowait() is None
    pool.free(held[1])
    got = await asyncio.wait_for(bulk, 5)
    assert set(map(id, got)) == {id(held[0]), id(held[1])}
    assert not single.done()
    pool.free(held[2])
    assert await asyncio.wait_for(single, 5) is held[2]
    pool.free_bulk([*got, held[2]])
    assert pool.curr_nr == 3 and pool.stats().outstanding == 0


@pytest.mark.asyncio
async def test_a_single_request_first_in_line_is_served_before_a_bulk() -> None:
    _, pool = drained_backing(2)
    held = [pool.alloc_nowait(), pool.alloc_nowait()]
    single = asyncio.ensure_future(pool.alloc())
    await settle()
    bulk = asyncio.ensure_future(pool.alloc_bulk(2))
    await settle()
    pool.free(held[0])
    assert await asyncio.wait_for(single, 5) is held[0]
    pool.free(held[1])
    pool.free(held[0])
    got = await asyncio.wait_for(bulk, 5)
    assert len(got) == 2
    pool.free_bulk(got)


@pytest.mark.asyncio
async def test_cancelling_a_waiting_bulk_lets_those_behind_it_go() -> None:
    _, pool = drained_backing(3)
    held = [pool.alloc_nowait() for _ in range(3)]
    bulk = asyncio.ensure_future(pool.alloc_bulk(3))
    await settle()
    single = asyncio.ensure_future(pool.alloc())
    await settle()
    pool.free(held[0])  # into the reserve: the bulk is first
    await settle()
    assert not single.done()
    bulk.cancel()
    with pytest.raises(asyncio.CancelledError):
        await bulk
    assert await asyncio.wait_for(single, 5) is held[0]
    pool.free_bulk([held[0], held[1], held[2]])
    assert pool.curr_nr == 3 and pool.waiters == 0


@pytest.mark.asyncio
async def test_a_bulk_cancelled_after_the_hand_off_gives_everything_back() -> None:
    _, pool = drained_backing(2)
    held = [pool.alloc_nowait(), pool.alloc_nowait()]
    bulk = asyncio.ensure_future(pool.alloc_bulk(2))
    await settle()
    pool.free(held[0])
    pool.free(held[1])  # the bulk is handed both, its task has not run
    bulk.cancel()
    with pytest.raises(asyncio.CancelledError):
        await bulk
    assert pool.curr_nr == 2 and pool.stats().outstanding == 0


@pytest.mark.asyncio
async def test_a_bulk_that_times_out_lets_those_behind_it_go() -> None:
    _, pool = drained_backing(2)
    held = [pool.alloc_nowait(), pool.alloc_nowait()]
    bulk = asyncio.ensure_future(pool.alloc_bulk(2, timeout=0.05))
    await settle()
    single = asyncio.ensure_future(pool.alloc())
    await settle()
    pool.free(held[0])
    with pytest.raises(AllocTimeoutError):
        await bulk
    assert await asyncio.wait_for(single, 5) is held[0]
    pool.free_bulk(held)
    assert pool.stats().timeouts == 1 and pool.curr_nr == 2


@pytest.mark.asyncio
async def test_closing_the_pool_ends_a_waiting_bulk() -> None:
    _, pool = drained_backing(2)
    held = [pool.alloc_nowait(), pool.alloc_nowait()]
    bulk = asyncio.ensure_future(pool.alloc_bulk(2))
    await settle()
    pool.close()
    with pytest.raises(PoolClosedError):
        await bulk
    pool.free_bulk(held)


def test_free_bulk_frees_every_element_then_raises_the_first_refusal() -> None:
    pool = buffer_pool(64, min_nr=1, max_nr=4)
    a, b, c = (pool.alloc_nowait() for _ in range(3))
    pool.free(b)
    with pytest.raises(DoubleFreeError):
        pool.free_bulk([a, b, c])
    assert pool.stats().outstanding == 0


@pytest.mark.asyncio
async def test_debug_mode_lends_fresh_views_in_bulk() -> None:
    pool = buffer_pool(64, min_nr=2, max_nr=4, debug=True)
    got = await pool.alloc_bulk(3)
    assert len(pool.outstanding()) == 3
    pool.free_bulk(got)
    with pytest.raises(ValueError):
        got[0][0]  # released by free()
    assert pool.stats().outstanding == 0


@pytest.mark.asyncio
async def test_a_corrupted_reserve_in_debug_mode_leaves_a_bulk_taking_nothing() -> None:
    pool = buffer_pool(64, min_nr=3, max_nr=3, headroom=0, debug=True)
    held = [await pool.alloc() for _ in range(3)]  # the reserve's three
    bottom = address(held[0])  # freed first: the bottom of the reserve
    for buf in held:
        pool.free(buf)  # back into the reserve, poisoned
    assert pool.curr_nr == 3
    ctypes.memset(bottom, 0, 1)  # written after it was freed
    with pytest.raises(CorruptionError):
        await pool.alloc_bulk(3, GFP_NOWAIT)
    assert pool.curr_nr == 3 and pool.stats().outstanding == 0
