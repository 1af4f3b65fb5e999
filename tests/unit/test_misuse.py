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


def free_in_a_thread(
    pool: MempoolType[Any], element: Any
) -> tuple[threading.Thread, list[BaseException]]:
    """Start a thread that frees ``element``; what it raised is collected."""
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            pool.free(element)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    return thread, errors


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
    async with pool:  # the pool's loop is this one, running
        thread, errors = free_in_a_thread(pool, buf)
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


@pytest.mark.asyncio
async def test_one_element_context_entered_by_two_tasks_is_refused() -> None:
    pool = buffer_pool(64, min_nr=1, max_nr=1, headroom=0)
    held = await pool.alloc()
    ctx = pool.element()

    async def use() -> None:
        async with ctx:
            await asyncio.sleep(0)

    first = asyncio.ensure_future(use())
    await asyncio.sleep(0)  # waiting in alloc(): the pool is dry
    with pytest.raises(RuntimeError, match="entered already"):
        await use()
    pool.free(held)
    await asyncio.wait_for(first, 5)
    assert pool.stats().outstanding == 0
    async with ctx:  # once exited, it may be entered again
        pass


@pytest.mark.asyncio
async def test_a_protocol_waiting_on_a_dry_pool_of_bytearrays_refuses_it() -> None:
    made: list[bytearray] = []

    def alloc_fn(gfp: Any, data: Any) -> bytearray | None:
        return None  # dry: the protocol waits in alloc(), then gets...

    errors: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
    pool: MempoolType[Any] = MempoolType(
        1, lambda g, d: bytearray(16), lambda e, d: None
    )
    pool._alloc_fn = alloc_fn  # type: ignore[attr-defined]
    reserved = pool.alloc_nowait()  # the reserve's bytearray
    protocol = Sink(pool)

    class Transport(asyncio.Transport):
        aborted = False

        def pause_reading(self) -> None:
            pass

        def resume_reading(self) -> None:
            pass

        def is_closing(self) -> bool:
            return self.aborted

        def abort(self) -> None:
            self.aborted = True

    transport = Transport()
    protocol.connection_made(transport)
    buf = protocol.get_buffer(-1)  # the fallback: the pool is dry
    buf[:3] = b"abc"
    protocol.buffer_updated(3)  # queues for a buffer
    await asyncio.sleep(0)
    pool.free(reserved)  # ...a bytearray
    await asyncio.sleep(0.01)
    assert transport.aborted
    assert errors and isinstance(errors[0]["exception"], TypeError)
    assert "needs a pool of writable memoryviews" in str(errors[0]["exception"])
    protocol.connection_lost(None)
    assert pool.stats().outstanding == 0
    assert made == []


def test_a_refused_free_names_the_pool_that_refused_it() -> None:
    for pool in (kmalloc_pool(1, 16, name="km"), buffer_pool(16, min_nr=1, name="bp")):
        with pytest.raises(ValueError) as info:
            pool.free(bytearray(16))
        assert str(info.value).startswith(f"<Mempool '{pool.name}'"), info.value


def test_debug_mode_catches_a_free_from_another_thread_without_a_loop() -> None:
    pool = buffer_pool(64, min_nr=1, max_nr=2, debug=True)  # no loop at all
    buf = pool.alloc_nowait()
    thread, errors = free_in_a_thread(pool, buf)
    thread.join(5)
    assert len(errors) == 1 and "free_threadsafe()" in str(errors[0])
    assert pool.stats().outstanding == 1
    pool.free(buf)  # in its own thread: fine
    assert pool.stats().outstanding == 0
