"""Debug mode: poisoning, write after free, AIOMEMPOOL_DEBUG, double and
foreign frees, outstanding() and the close report, use-after-free blocking
and its quarantine, zero_on_free, waiting. (The sampled leak detector of
pools outside debug mode: test_leaks.py.)"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import pickle
import re
from typing import Any

import pytest
from helpers import Backing, Elem, address, settle

import aiomempool
from aiomempool import (
    GFP,
    CorruptionError,
    DoubleFreeError,
    ForeignElementError,
    Mempool,
    MempoolError,
    Outstanding,
    SlabCache,
    buffer_pool,
    kmalloc_pool,
    page_pool,
    slab_pool,
)
from aiomempool.debug import RECHECK_S

SIZE = 4096
FREE = b"\x6b" * (SIZE - 1) + b"\xa5"  # POISON_FREE, then POISON_END
INUSE = b"\x5a" * SIZE  # POISON_INUSE
NOWARN = GFP.NOWARN  # an expected failure logs nothing


@pytest.fixture(autouse=True)
def no_debug_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests that want debug mode ask for it.
    monkeypatch.delenv("AIOMEMPOOL_DEBUG", raising=False)


def one_buffer_pool(**options: Any) -> Mempool[memoryview]:
    """A debug pool of exactly one buffer: the reserve's."""
    return buffer_pool(
        SIZE, min_nr=1, max_nr=1, headroom=0, debug=True, name="one", **options
    )


def messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


# -- poisoning ------------------------------------------------------------


def test_reserved_elements_hold_the_poison_pattern() -> None:
    made: list[bytearray] = []

    def alloc_fn(gfp_mask: GFP, pool_data: Any) -> bytearray:
        made.append(bytearray(SIZE))
        return made[-1]

    pool = Mempool(3, alloc_fn, lambda e, d: None, debug=True)
    assert len(made) == 3
    assert all(bytes(element) == FREE for element in made)
    element = pool.alloc_nowait(NOWARN)  # a new one: not poisoned
    assert element is made[-1] and bytes(element) == bytes(SIZE)
    pool.free(element)  # the reserve is full: to free_fn, untouched
    reserved = made[:3]
    taken = [pool.alloc_nowait(NOWARN) for _ in range(4)]
    assert all(t is not None and bytes(t) == bytes(SIZE) for t in taken)
    for element in taken:
        pool.free(element)
    assert all(bytes(element) == FREE for element in reserved)


def test_free_buffers_of_a_debug_cache_hold_the_poison_pattern() -> None:
    cache = SlabCache(SIZE, objects_per_slab=4, debug=True)
    raw = [cache.alloc() for _ in range(2)]  # the cache lends its slots as is
    for view in raw:
        assert view is not None and bytes(view) == INUSE
        cache.free(view)
    assert all(v is not None and bytes(v) == FREE for v in raw)


def test_a_debug_cache_catches_a_write_after_free_and_keeps_the_slot() -> None:
    cache = SlabCache(SIZE, objects_per_slab=2, name="c", debug=True)
    view = cache.alloc()
    assert view is not None
    cache.free(view)
    view[SIZE // 2] = 0  # the cache lends its own views: nothing stops this
    with pytest.raises(CorruptionError, match=r"'c'.*slab 0, slot 0: .*offset 2048"):
        cache.alloc()
    assert cache.stats().objects_in_use == 0
    assert cache.alloc() is view and bytes(view) == INUSE


def test_a_pool_on_a_debug_cache_is_in_debug_mode() -> None:
    cache = SlabCache(SIZE, debug=True)
    assert "debug" in repr(slab_pool(1, cache))
    assert "debug" not in repr(slab_pool(1, cache, debug=False))
    assert "debug" not in repr(slab_pool(1, SlabCache(SIZE)))


def test_buffers_are_handed_out_filled_with_poison_inuse_not_zeros() -> None:
    pool = buffer_pool(SIZE, min_nr=1, max_nr=2, headroom=0, debug=True)
    from_cache = pool.alloc_nowait()
    from_reserve = pool.alloc_nowait()
    assert from_cache is not None and from_reserve is not None
    assert bytes(from_cache) == bytes(from_reserve) == INUSE
    assert pool.stats().reserve_hits == 1


def test_a_write_after_free_to_the_cache_is_caught_on_the_next_allocation() -> None:
    pool = buffer_pool(SIZE, min_nr=1, max_nr=2, headroom=0, debug=True, name="rx")
    buf = pool.alloc_nowait()  # slab 0, slot 1: slot 0 is in the reserve
    assert buf is not None
    where = address(buf)
    pool.free(buf)  # the reserve is full: back to the cache, poisoned
    ctypes.memset(where + 17, 0x42, 1)  # a C extension writing after free
    with pytest.raises(CorruptionError) as info:
        pool.alloc_nowait()
    message = str(info.value)
    assert "'rx'" in message and "slab 0, slot 1" in message
    assert "offset 17 of 4096" in message and "6b 42 6b" in message
    assert isinstance(info.value, MempoolError)
    again = pool.alloc_nowait()  # poisoned afresh, and not lost
    assert again is not None and bytes(again) == INUSE


@pytest.mark.asyncio
async def test_a_write_after_free_to_the_reserve_is_caught_on_the_next_allocation() -> (
    None
):
    pool = buffer_pool(SIZE, min_nr=1, max_nr=2, headroom=0, debug=True, name="rx")
    held = pool.alloc_nowait()
    buf = pool.alloc_nowait()  # the reserve's buffer: slab 0, slot 0
    assert held is not None and buf is not None
    where = address(buf)
    pool.free(buf)
    assert pool.curr_nr == 1
    ctypes.memset(where + SIZE - 1, 0, 1)  # POISON_END overwritten
    with pytest.raises(CorruptionError) as info:
        await pool.alloc(timeout=0)
    message = str(info.value)
    assert message.startswith("<Mempool 'rx' debug")
    assert "slab 0, slot 0" in message and f"offset {SIZE - 1} of" in message
    assert pool.curr_nr == 1 and pool.stats().outstanding == 1  # nothing lost
    assert await pool.alloc(timeout=0) is not None


def test_a_bytearray_element_is_named_by_type_size_and_address_not_bytes() -> None:
    elements: list[bytearray] = []

    def alloc_fn(gfp_mask: GFP, pool_data: Any) -> bytearray | None:
        if elements:
            return None
        elements.append(bytearray(64))
        return elements[0]

    pool = Mempool(1, alloc_fn, lambda e, d: None, debug=True, name="ba")
    buf = pool.alloc_nowait()
    assert buf is elements[0]  # bytearrays are lent as they are
    pool.free(buf)
    buf[3] = 0
    with pytest.raises(CorruptionError) as info:
        pool.alloc_nowait()
    # Named by type, size and address, never by its bytes; the damage is
    # shown in hex.
    assert re.search(
        r"'ba'.*<bytearray of 64 bytes at 0x[0-9a-f]+>: poison mismatch at "
        r"offset 3 .* bytes 0\.\.10 are 6b 6b 6b 00 6b",
        str(info.value),
    ), str(info.value)


def test_elements_that_are_not_bytes_are_left_alone() -> None:
    backing = Backing()
    pool = backing.pool(2, debug=True)
    backing.up = False
    element = pool.alloc_nowait()
    assert isinstance(element, Elem) and element in backing.made
    pool.free(element)
    assert pool.alloc_nowait() is element


def test_corruption_found_while_closing_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pool = buffer_pool(SIZE, min_nr=2, max_nr=2, headroom=0, debug=True, name="rx")
    held = pool.alloc_nowait(), pool.alloc_nowait()  # the reserve's
    where = address(held[1])
    for buf in held:
        pool.free(buf)
    ctypes.memset(where, 0, 1)
    with caplog.at_level(logging.WARNING, logger="aiomempool"):
        pool.close()
    assert len(messages(caplog, "poison mismatch at offset 0")) == 1
    assert pool.closed


# -- AIOMEMPOOL_DEBUG -----------------------------------------------------


@pytest.mark.parametrize("value", ["1", "true", "yes", "YES"])
def test_the_environment_variable_turns_debug_mode_on(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("AIOMEMPOOL_DEBUG", value)
    pool = buffer_pool(SIZE, min_nr=1)
    assert "debug" in repr(pool)
    buf = pool.alloc_nowait()
    assert buf is not None and bytes(buf) == INUSE
    assert [o.element for o in pool.outstanding()] == [buf]
    assert "debug" in repr(Backing().pool(1))
    assert "debug" not in repr(buffer_pool(SIZE, min_nr=1, debug=False))
    cached = SlabCache(SIZE).alloc()
    assert cached is not None and bytes(cached) == INUSE


def test_the_environment_is_read_when_the_pool_is_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AIOMEMPOOL_DEBUG", "0")
    pool = buffer_pool(SIZE, min_nr=1)
    monkeypatch.setenv("AIOMEMPOOL_DEBUG", "1")
    assert "debug" not in repr(pool)
    with pytest.raises(RuntimeError, match="AIOMEMPOOL_DEBUG=1"):
        pool.outstanding()
    with pytest.raises(TypeError, match="debug must be a bool or None"):
        buffer_pool(SIZE, min_nr=1, debug=1)


# -- double and foreign frees -------------------------------------------------


def allocate_here(pool: Mempool[Any]) -> Any:
    return pool.alloc_nowait()


def free_here(pool: Mempool[Any], element: Any) -> None:
    pool.free(element)


@pytest.mark.parametrize("kind", ["buffer", "page", "kmalloc", "plain"])
def test_a_double_free_names_where_it_was_first_freed_and_allocated(
    kind: str,
) -> None:
    if kind == "buffer":
        pool: Mempool[Any] = buffer_pool(SIZE, min_nr=1, debug=True)
    elif kind == "page":
        pool = page_pool(1, debug=True)
    elif kind == "kmalloc":
        pool = kmalloc_pool(1, SIZE, debug=True)
    else:
        pool = Backing().pool(1, debug=True)
    element = allocate_here(pool)  # not from the reserve: freed beyond it
    free_here(pool, element)
    frees = pool.stats().frees
    with pytest.raises(DoubleFreeError) as info:
        pool.free(element)
    message = str(info.value)
    first, allocated = message.split("first freed at:")[1].split("allocated at:")
    assert "in free_here" in first and "pool.free(element)" in first
    assert "in allocate_here" in allocated and "in free_here" not in allocated
    assert pool.stats().frees == frees  # a refused free counts nothing


def test_a_double_free_of_a_reserved_element_is_caught() -> None:
    pool = buffer_pool(SIZE, min_nr=1, max_nr=1, headroom=0, debug=True)
    buf = pool.alloc_nowait()
    pool.free(buf)
    with pytest.raises(DoubleFreeError, match="first freed at"):
        pool.free(buf)
    assert pool.curr_nr == 1 and pool.stats().outstanding == 0


def test_double_frees_are_refused_outside_debug_mode_too() -> None:
    pool = buffer_pool(SIZE, min_nr=1)
    buf = pool.alloc_nowait()
    pool.free(buf)
    with pytest.raises(DoubleFreeError, match="double free of"):
        pool.free(buf)


@pytest.mark.parametrize("debug", [True, False])
def test_foreign_elements_are_refused(debug: bool) -> None:
    pool = buffer_pool(SIZE, min_nr=1, debug=debug)
    buf = pool.alloc_nowait()
    assert buf is not None
    for foreign in (memoryview(bytearray(SIZE)), buf[:10]):
        with pytest.raises(ForeignElementError, match="not a buffer handed out"):
            pool.free(foreign)
    pool.free(buf)
    assert pool.stats().outstanding == 0


# -- leak tracking --------------------------------------------------------


@pytest.mark.asyncio
async def test_outstanding_lists_each_element_out_with_its_allocation_site() -> None:
    pool = buffer_pool(SIZE, min_nr=2, debug=True)
    first = allocate_here(pool)
    await asyncio.sleep(0.01)
    second = await pool.alloc()
    listed = pool.outstanding()
    assert [o.element for o in listed] == [first, second]
    assert isinstance(listed[0], Outstanding)
    assert "in allocate_here" in listed[0].allocated_at
    assert "await pool.alloc()" in listed[1].allocated_at
    assert "aiomempool" not in listed[1].allocated_at.split("test_debug.py")[-1]
    assert listed[0].age_s > listed[1].age_s >= 0
    pool.free(first)
    assert [o.element for o in pool.outstanding()] == [second]


def test_outstanding_needs_debug_mode() -> None:
    with pytest.raises(RuntimeError, match="debug=True"):
        Backing().pool(1).outstanding()


@pytest.mark.asyncio
async def test_closing_with_elements_out_logs_one_report(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pool = buffer_pool(SIZE, min_nr=1, debug=True, name="rx")
    held = [allocate_here(pool) for _ in range(2)]
    held.append(await pool.alloc())
    with caplog.at_level(logging.WARNING, logger="aiomempool"):
        pool.close()
        pool.close()
    (report,) = [r.getMessage() for r in caplog.records]
    assert "'rx'" in report and "closed with 3 element(s) not freed" in report
    assert "2 x" in report and "in allocate_here" in report
    assert "await pool.alloc()" in report
    for buf in held:  # still taken back after close
        pool.free(buf)
    assert pool.stats().outstanding == 0


def test_closing_with_nothing_out_logs_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pool = buffer_pool(SIZE, min_nr=1, debug=True)
    pool.free(pool.alloc_nowait())
    with caplog.at_level(logging.WARNING, logger="aiomempool"):
        pool.close()
    assert caplog.records == []


# -- use-after-free blocking ------------------------------------------------


def test_a_freed_buffer_can_no_longer_be_touched() -> None:
    pool = one_buffer_pool()
    buf = pool.alloc_nowait()
    assert buf is not None
    buf[:5] = b"hello"
    pool.free(buf)
    with pytest.raises(ValueError, match="released"):
        buf[0] = 1
    with pytest.raises(ValueError, match="released"):
        bytes(buf)
    again = pool.alloc_nowait()  # the same memory, a fresh view
    assert again is not None and again is not buf
    assert address(again) != 0 and bytes(again) == INUSE


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["export", "slice", "memoryview"])
async def test_a_buffer_freed_while_exported_is_reported_and_quarantined(
    caplog: pytest.LogCaptureFixture, how: str
) -> None:
    pool = one_buffer_pool()
    buf = allocate_here(pool)
    held: Any
    if how == "export":  # a numpy array, uvloop in buffer_updated()
        held = pickle.PickleBuffer(buf)
    elif how == "slice":
        held = buf[:100]
    else:
        held = memoryview(buf)
    with caplog.at_level(logging.WARNING, logger="aiomempool"):
        pool.free(buf)
        assert pool.stats().outstanding == 0 and pool.outstanding() == []
        assert pool.alloc_nowait(NOWARN) is None  # not handed out again
        await asyncio.sleep(0)  # reported once the callback has returned
    (report,) = messages(caplog, "still exported")
    assert "'one'" in report and "in allocate_here" in report
    assert "freed at" in report
    assert pool.alloc_nowait(NOWARN) is None
    if how == "export":
        held.release()
    del held
    again = pool.alloc_nowait(NOWARN)  # recovered
    assert again is not None and bytes(again) == INUSE
    assert len(messages(caplog, "still exported")) == 1


@pytest.mark.asyncio
async def test_the_quarantine_is_retried_by_the_loop_for_waiters() -> None:
    pool = one_buffer_pool()
    buf = pool.alloc_nowait()
    assert buf is not None
    held = buf[:1]
    pool.free(buf)
    waiter = asyncio.create_task(pool.alloc())
    await settle()
    assert pool.waiters == 1
    del held
    got = await asyncio.wait_for(waiter, timeout=20 * RECHECK_S)
    assert got is not None and bytes(got) == INUSE


@pytest.mark.asyncio
async def test_an_export_released_before_the_callback_returns_is_not_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # uvloop exports the buffer of get_buffer() until buffer_updated(),
    # which frees it, returns.
    pool = one_buffer_pool()
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def buffer_updated() -> None:
        buf = pool.alloc_nowait()
        assert buf is not None
        export = pickle.PickleBuffer(buf)
        pool.free(buf)
        export.release()
        done.set_result(None)

    with caplog.at_level(logging.WARNING, logger="aiomempool"):
        loop.call_soon(buffer_updated)
        await done
        await settle()
    assert caplog.records == []
    assert pool.alloc_nowait() is not None


def test_without_a_running_loop_an_exported_buffer_is_reported_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pool = one_buffer_pool()
    buf = pool.alloc_nowait()
    held = buf[:1]  # type: ignore[index]
    with caplog.at_level(logging.WARNING, logger="aiomempool"):
        pool.free(buf)
    assert len(messages(caplog, "still exported")) == 1
    del held
    assert pool.alloc_nowait() is not None


# -- zero_on_free, waiting ----------------------------------------------------


@pytest.mark.parametrize("options", [{"debug": True}, {"leak_sampling": 1}])
def test_zero_on_free_still_hands_out_zeros(options: dict[str, Any]) -> None:
    pool = buffer_pool(
        SIZE, min_nr=1, max_nr=2, headroom=0, zero_on_free=True, **options
    )
    for _ in range(3):
        bufs = [pool.alloc_nowait(), pool.alloc_nowait()]  # the cache's, the reserve's
        for buf in bufs:
            assert buf is not None and bytes(buf) == bytes(SIZE)
            buf[:] = b"\xee" * SIZE
        for buf in bufs:
            pool.free(buf)


@pytest.mark.asyncio
async def test_a_debug_pool_serves_its_waiters_first_come_first_served() -> None:
    pool = one_buffer_pool()
    held = await pool.alloc()
    tasks = [asyncio.create_task(pool.alloc()) for _ in range(3)]
    await settle()
    assert pool.waiters == 3
    tasks[1].cancel()
    for task in (tasks[0], tasks[2]):
        pool.free(held)
        held = await task
        assert held is not None and bytes(held) == INUSE
    assert tasks[1].cancelled()
    with pytest.raises(aiomempool.AllocTimeoutError):
        await pool.alloc(timeout=0.01)
    pool.free(held)
    assert pool.outstanding() == [] and pool.curr_nr == 1
