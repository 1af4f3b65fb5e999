"""Misuse that must get a clear error naming the pool and the rule."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from aiomempool import Mempool as MempoolType
from aiomempool import (
    PooledBufferedProtocol,
    buffer_pool,
    kmalloc_pool,
)


class Sink(PooledBufferedProtocol):
    def view_received(self, view: memoryview) -> None:
        pass


def test_a_protocol_refuses_a_pool_of_bytearrays() -> None:
    pool = kmalloc_pool(1, 64)
    with pytest.raises(TypeError, match="needs a pool of writable memoryviews"):
        Sink(pool)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_a_protocol_refuses_what_a_pool_on_callbacks_hands_out() -> None:
    made: list[bytearray] = []

    def alloc_fn(gfp: Any, data: Any) -> bytearray:
        made.append(bytearray(64))
        return made[-1]

    pool: MempoolType[Any] = MempoolType(1, alloc_fn, lambda e, d: None)
    protocol = Sink(pool)
    protocol.connection_made(asyncio.Transport())
    with pytest.raises(TypeError, match="hands out bytearray"):
        protocol.get_buffer(-1)
    assert pool.stats().outstanding == 0  # given back before refusing


@pytest.mark.asyncio
async def test_debug_mode_catches_a_free_from_another_thread() -> None:
    pool = buffer_pool(64, min_nr=1, max_nr=2, debug=True)
    buf = await pool.alloc()
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            pool.free(buf)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=worker)
    async with pool:  # the pool's loop is this one, running
        thread.start()
        await asyncio.get_running_loop().run_in_executor(None, thread.join)
        assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
        assert "free_threadsafe()" in str(errors[0]), errors[0]
        assert pool.stats().outstanding == 1  # nothing changed
        pool.free_threadsafe(buf)  # the right way, from any thread
        await asyncio.sleep(0.01)
        assert pool.stats().outstanding == 0


def test_outside_a_running_loop_free_is_still_fine_in_debug_mode() -> None:
    pool = buffer_pool(64, min_nr=1, max_nr=2, debug=True)
    buf = pool.alloc_nowait()
    pool.free(buf)  # synchronous code with no loop running: allowed
    assert pool.stats().outstanding == 0
