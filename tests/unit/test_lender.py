"""Lender: the three methods an element() context calls, and _steady(),
which PooledBufferedProtocol asks before it keeps a read's buffer back."""

from __future__ import annotations

import asyncio

import pytest

import aiomempool
from aiomempool import GFP_NOWAIT, Mempool
from aiomempool._lender import Lender


def test_the_base_defines_the_interface_and_nothing_else() -> None:
    lender = Lender()
    for call in (
        lambda: lender._first_try(None, GFP_NOWAIT, None),
        lambda: lender._alloc_for(None, GFP_NOWAIT, None),
        lambda: lender.free(object()),
        lambda: lender._steady(),
    ):
        with pytest.raises(NotImplementedError):
            call()
    assert isinstance(aiomempool.buffer_pool(4096, min_nr=1), Lender)


@pytest.mark.asyncio
async def test_a_pool_is_steady_while_nobody_waits_and_not_in_debug_mode() -> None:
    pool = aiomempool.buffer_pool(4096, min_nr=1, max_nr=2)
    assert pool._steady()
    held = pool.alloc_nowait()  # the cache's: the reserve is full still
    assert held is not None and pool._steady()
    reserve = pool.alloc_nowait()  # the cache is at max_nr: the reserve's
    assert reserve is not None and not pool._steady()  # short of min_nr
    late = asyncio.ensure_future(pool.alloc())
    await asyncio.sleep(0)
    assert pool.waiters == 1 and not pool._steady()
    pool.free(held)  # to the waiter
    pool.free(await asyncio.wait_for(late, 1.0))
    pool.free(reserve)
    assert pool._steady()
    pool.close()
    assert not pool._steady()
    debug = Mempool(1, lambda mask, data: object(), lambda e, d: None, debug=True)
    assert not debug._steady()
    debug.close()


@pytest.mark.asyncio
async def test_an_arena_is_steady_while_nobody_waits_and_not_in_debug_mode() -> None:
    arena = aiomempool.buffer_arena(64 * 1024, classes=(64 * 1024,), headroom=0)
    assert arena._steady()
    held = arena.alloc_nowait(64 * 1024)
    waiter = asyncio.ensure_future(arena.alloc(64 * 1024))
    await asyncio.sleep(0)
    assert arena.waiters == 1 and not arena._steady()
    arena.free(held)
    arena.free(await asyncio.wait_for(waiter, 1.0))
    assert arena._steady()
    arena.close()
    assert not arena._steady()
    debug = aiomempool.buffer_arena(64 * 1024, classes=(64 * 1024,), debug=True)
    assert not debug._steady()
    debug.close()
