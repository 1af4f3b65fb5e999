"""The kernel's helper pools and buffer_pool: what they hand out, their
bounds, zero_on_free, and the double frees and foreign elements they refuse."""

from __future__ import annotations

import asyncio
import mmap
from collections.abc import Callable
from typing import Any

import pytest
from helpers import address

from aiomempool import (
    GFP,
    GFP_ATOMIC,
    GFP_NOWAIT,
    DoubleFreeError,
    ForeignElementError,
    InvalidFreeError,
    Mempool,
    SlabCache,
    buffer_pool,
    kmalloc_pool,
    page_pool,
    slab_pool,
)

# -- what they hand out -----------------------------------------------------


def test_buffer_pool_hands_out_writable_views_of_exactly_size_bytes() -> None:
    pool = buffer_pool(4096, min_nr=2)
    buf = pool.alloc_nowait()
    assert isinstance(buf, memoryview) and buf.nbytes == 4096 and not buf.readonly
    buf[:5] = b"hello"
    assert bytes(buf[:5]) == b"hello"
    pool.free(buf)


def test_buffer_pool_reuses_the_most_recently_freed_buffer() -> None:
    pool = buffer_pool(1024, min_nr=1)
    a, b = pool.alloc_nowait(), pool.alloc_nowait()
    pool.free(a)
    pool.free(b)
    assert pool.alloc_nowait() is b
    assert pool.alloc_nowait() is a


def test_buffer_pool_reserves_min_nr_from_one_block() -> None:
    pool = buffer_pool(4096, min_nr=4, objects_per_slab=8)
    cache = pool._allocator  # type: ignore[attr-defined]
    assert pool.curr_nr == 4
    assert cache.stats().slabs == 1
    assert cache.stats().bytes_reserved == 8 * 4096


def test_slab_pool_takes_elements_from_the_cache_and_leaves_it_open() -> None:
    cache = SlabCache(512, objects_per_slab=4)
    pool = slab_pool(2, cache, name="slab")
    buf = pool.alloc_nowait()
    assert buf is not None and cache.owns(buf)
    pool.free(buf)
    pool.close()
    assert cache.stats().objects_in_use == 0
    assert cache.alloc() is not None  # the cache is still open


def test_slab_pool_wants_a_slab_cache() -> None:
    with pytest.raises(TypeError, match="cache must be a SlabCache"):
        slab_pool(1, object())  # type: ignore[arg-type]


def test_kmalloc_pool_hands_out_zeroed_bytearrays() -> None:
    pool = kmalloc_pool(2, 100)
    buf = pool.alloc_nowait()
    assert isinstance(buf, bytearray) and buf == bytearray(100)
    pool.free(buf)
    with pytest.raises(ValueError, match="size must be >= 1"):
        kmalloc_pool(1, 0)


@pytest.mark.parametrize("order", [0, 1, 2])
def test_page_pool_hands_out_page_aligned_buffers(order: int) -> None:
    pool = page_pool(2, order)
    bufs = [pool.alloc_nowait() for _ in range(3)]
    for buf in bufs:
        assert buf is not None
        assert buf.nbytes == mmap.PAGESIZE << order
        assert address(buf) % mmap.PAGESIZE == 0
        pool.free(buf)
    with pytest.raises(ValueError, match="order"):
        page_pool(1, -1)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"min_nr": 0}, ValueError, "min_nr must be >= 1"),
        ({"min_nr": 4, "max_nr": 2}, ValueError, "min_nr must be <= max_nr"),
        ({"min_nr": 1, "max_nr": 0}, ValueError, "max_nr must be >= 1"),
        ({"min_nr": 1, "zero_on_free": 1}, TypeError, "zero_on_free must be a bool"),
    ],
)
def test_buffer_pool_checks_its_arguments(
    kwargs: dict[str, object], error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        buffer_pool(4096, **kwargs)  # type: ignore[arg-type]


# -- bounded memory -----------------------------------------------------------


@pytest.mark.asyncio
async def test_buffer_pool_waits_at_max_nr_instead_of_growing() -> None:
    pool = buffer_pool(1024, min_nr=2, max_nr=4, headroom=1)
    cache = pool._allocator  # type: ignore[attr-defined]
    held = [await pool.alloc() for _ in range(4)]
    assert all(b is not None for b in held)
    assert pool.alloc_nowait() is None
    waiter = asyncio.create_task(pool.alloc())
    await asyncio.sleep(0.01)
    assert not waiter.done() and pool.waiters == 1
    assert cache.stats().objects_in_use <= 4 + 1
    pool.free(held.pop())
    held.append(await asyncio.wait_for(waiter, 1))
    assert cache.stats().bytes_reserved <= (4 + 1) * 1024
    for buf in held:
        pool.free(buf)


def test_gfp_atomic_may_use_the_headroom_and_no_more() -> None:
    pool = buffer_pool(256, min_nr=1, max_nr=3, headroom=2)
    held = [pool.alloc_nowait() for _ in range(3)]
    assert pool.alloc_nowait() is None
    urgent = [pool.alloc_nowait(GFP_ATOMIC) for _ in range(2)]
    assert all(b is not None for b in urgent)
    assert pool.alloc_nowait(GFP_ATOMIC) is None
    for buf in held + urgent:
        pool.free(buf)


def test_closing_a_buffer_pool_gives_its_memory_back() -> None:
    pool = buffer_pool(4096, min_nr=3)
    cache = pool._allocator  # type: ignore[attr-defined]
    buf = pool.alloc_nowait()
    pool.close()
    pool.free(buf)  # after close: back to the cache, which lets the slab go
    assert cache.stats().slabs == 0


# -- zero_on_free ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_zero_on_free_wipes_what_the_next_borrower_gets() -> None:
    pool = buffer_pool(64, min_nr=1, zero_on_free=True)
    # Through the cache (the reserve is full) ...
    buf = pool.alloc_nowait()
    assert buf is not None
    buf[:] = b"s" * 64
    pool.free(buf)
    assert bytes(pool.alloc_nowait() or b"") == bytes(64)
    # ... through the reserve ...
    pool2 = buffer_pool(64, min_nr=1, max_nr=1, zero_on_free=True)
    secret = pool2.alloc_nowait()
    assert secret is not None and pool2.curr_nr == 0
    secret[:] = b"k" * 64
    pool2.free(secret)
    assert pool2.curr_nr == 1
    assert bytes(pool2.alloc_nowait() or b"") == bytes(64)


@pytest.mark.asyncio
async def test_zero_on_free_wipes_a_buffer_handed_to_a_waiter() -> None:
    pool = buffer_pool(64, min_nr=1, max_nr=1, zero_on_free=True)
    buf = await pool.alloc()
    waiter = asyncio.create_task(pool.alloc())
    await asyncio.sleep(0)
    buf[:] = b"x" * 64
    pool.free(buf)
    got = await waiter
    assert got is buf and bytes(got) == bytes(64)


def test_without_zero_on_free_the_bytes_stay() -> None:
    pool = buffer_pool(64, min_nr=1)
    buf = pool.alloc_nowait()
    assert buf is not None
    buf[:4] = b"left"
    pool.free(buf)
    again = pool.alloc_nowait()
    assert again is buf and bytes(buf[:4]) == b"left"


# -- double frees and foreign elements -----------------------------------------


def test_a_double_free_back_to_the_cache_is_refused() -> None:
    pool = buffer_pool(128, min_nr=1)
    buf = pool.alloc_nowait()
    pool.free(buf)
    with pytest.raises(DoubleFreeError, match="double free"):
        pool.free(buf)
    assert pool.stats().outstanding == 0


def test_a_double_free_into_the_reserve_is_refused() -> None:
    pool = buffer_pool(128, min_nr=1, max_nr=1)
    buf = pool.alloc_nowait()  # the allocator is at max_nr: this was the reserve's
    assert pool.curr_nr == 0
    pool.free(buf)
    assert pool.curr_nr == 1
    with pytest.raises(DoubleFreeError, match="reserve"):
        pool.free(buf)
    assert pool.curr_nr == 1
    assert pool.alloc_nowait() is buf
    assert pool.alloc_nowait() is None  # not handed out twice


@pytest.mark.asyncio
async def test_a_foreign_free_while_tasks_wait_changes_nothing() -> None:
    # (A second free of an element already handed to a waiter cannot be
    # told from the waiter's own free outside debug mode: same object.)
    pool = buffer_pool(128, min_nr=1, max_nr=1)
    buf = await pool.alloc()
    waiter = asyncio.create_task(pool.alloc())
    await asyncio.sleep(0)
    with pytest.raises(ForeignElementError):
        pool.free(buf[:10])
    assert pool.waiters == 1 and not waiter.done()
    pool.free(buf)
    assert await waiter is buf


@pytest.mark.parametrize("make", ["slice", "copy", "other pool", "bytes"])
def test_foreign_elements_are_refused(make: str) -> None:
    pool = buffer_pool(128, min_nr=1)
    other = buffer_pool(128, min_nr=1)
    buf = pool.alloc_nowait()
    assert buf is not None
    makers: dict[str, Callable[[], Any]] = {
        "slice": lambda: buf[:64],
        "copy": lambda: memoryview(bytearray(buf)),
        "other pool": other.alloc_nowait,
        "bytes": lambda: b"x" * 128,
    }
    foreign = makers[make]()
    with pytest.raises(ForeignElementError):
        pool.free(foreign)
    pool.free(buf)
    assert pool.stats().outstanding == 0


def test_kmalloc_pool_refuses_double_frees_and_strangers() -> None:
    pool = kmalloc_pool(1, 16)
    buf = pool.alloc_nowait()
    pool.free(buf)
    with pytest.raises(ForeignElementError):
        pool.free(buf)
    with pytest.raises(ForeignElementError):
        pool.free(bytearray(16))


@pytest.mark.asyncio
async def test_the_slab_pools_hot_paths_keep_the_caches_books() -> None:
    # SlabPool inlines the cache's common cases: the cache must not notice.
    pool = buffer_pool(256, min_nr=2, max_nr=8)
    cache = pool._allocator  # type: ignore[attr-defined]
    held = [await pool.alloc() for _ in range(3)] + [pool.alloc_nowait()]
    stats = cache.stats()
    assert (stats.objects_in_use, stats.high_water) == (2 + 4, 2 + 4)
    for buf in held:
        pool.free(buf)
    stats = cache.stats()
    assert (stats.objects_in_use, stats.frees, stats.allocs) == (2, 4, 6)
    assert pool.stats().outstanding == 0
    with pytest.raises(DoubleFreeError):
        pool.free(held[0])


@pytest.mark.asyncio
@pytest.mark.parametrize("leak_sampling", [None, 128], ids=["plain", "sampled"])
async def test_slab_fast_paths_still_refuse_masks_that_only_equal_a_fast_one(
    leak_sampling: int | None,
) -> None:
    # The fast path of alloc_nowait() recognises its masks by identity:
    # False and 0.0 equal GFP_NOWAIT, but are not masks.
    sampling: dict[str, Any] = (
        {} if leak_sampling is None else {"leak_sampling": leak_sampling}
    )
    pool = buffer_pool(64, min_nr=1, max_nr=4, **sampling)
    for mask in (False, 0.0, 2.0):
        with pytest.raises(TypeError, match="gfp_mask must be a GFP flag or an int"):
            pool.alloc_nowait(mask)  # type: ignore[arg-type]
    for mask in (GFP_NOWAIT, GFP_ATOMIC, GFP_ATOMIC | GFP.NOWARN, 0, 2, 6):
        buf = pool.alloc_nowait(mask)
        assert buf is not None
        pool.free(buf)
    assert pool.stats().outstanding == 0
    pool.close()


# -- pools sharing one cache, and stale frees --------------------------------


def shared_cache_pools(
    **options: Any,
) -> tuple[SlabCache, Mempool[memoryview], Mempool[memoryview]]:
    cache = SlabCache(64, objects_per_slab=8)
    return cache, slab_pool(2, cache, **options), slab_pool(2, cache, **options)


@pytest.mark.parametrize(
    "options",
    [{}, {"leak_sampling": 1}, {"debug": True}],
    ids=["plain", "leak_sampling", "debug"],
)
@pytest.mark.parametrize("state", ["steady", "reserve-low"])
def test_a_buffer_freed_into_the_wrong_pool_of_a_shared_cache_is_refused(
    options: dict[str, object], state: str
) -> None:
    cache, a, b = shared_cache_pools(**options)
    debug = "debug" in options
    if state == "reserve-low":
        # Both pools off their hot paths: the reserve takes what comes back.
        a.alloc_nowait(GFP_ATOMIC)
        a.alloc_nowait(GFP_ATOMIC)
        b.alloc_nowait(GFP_ATOMIC)
    buf = a.alloc_nowait()
    assert buf is not None
    before = (a.stats(), b.stats(), cache.stats())
    # Debug mode lends a fresh view, which the cache cannot trace to a slot.
    with pytest.raises(ForeignElementError, match=None if debug else "free it there"):
        b.free(buf)
    with pytest.raises(ForeignElementError, match=None if debug else r"a mempool.s"):
        cache.free(buf)  # the cache's own callers do not hold it either
    assert (a.stats(), b.stats(), cache.stats()) == before
    a.free(buf)  # its own pool takes it
    assert a.stats().outstanding == before[0].outstanding - 1
    assert b.stats().outstanding == before[1].outstanding


def test_a_buffer_of_the_caches_own_callers_is_refused_by_its_pools() -> None:
    cache, a, _ = shared_cache_pools()
    buf = cache.alloc()
    assert buf is not None
    with pytest.raises(
        ForeignElementError, match=r"out with a caller of the cache.s own alloc"
    ):
        a.free(buf)
    assert a.stats().outstanding == 0
    cache.free(buf)


@pytest.mark.asyncio
async def test_the_wrong_pool_refuses_a_buffer_while_its_own_tasks_wait() -> None:
    cache = SlabCache(64, objects_per_slab=4, max_objects=4, headroom=0)
    a = slab_pool(1, cache)
    b = slab_pool(1, cache)
    held = [a.alloc_nowait(), a.alloc_nowait(), b.alloc_nowait()]  # all 4 out
    assert None not in held and cache.alloc() is None
    waiter = asyncio.ensure_future(b.alloc())
    await asyncio.sleep(0)
    assert b.waiters == 1
    with pytest.raises(ForeignElementError):
        b.free(held[0])  # a's: neither handed to b's waiter nor kept
    assert b.waiters == 1
    a.free(held[0])
    b.free(held[2])
    assert await asyncio.wait_for(waiter, 5) is held[2]


def test_debug_mode_catches_a_stale_free_after_the_buffer_was_handed_out_again() -> (
    None
):
    pool = buffer_pool(64, min_nr=1, max_nr=4, debug=True)
    first = pool.alloc_nowait()
    assert first is not None
    pool.free(first)
    again = pool.alloc_nowait()  # the same slot, lent as a new view
    assert again is not None and again is not first
    with pytest.raises(DoubleFreeError, match="first freed at"):
        pool.free(first)  # stale: its slot is the current holder's
    assert pool.stats().outstanding == 1
    pool.free(again)
    assert pool.stats().outstanding == 0


@pytest.mark.parametrize("kind", ["buffer", "kmalloc"])
@pytest.mark.asyncio
async def test_a_second_free_of_what_was_handed_to_a_waiter_is_refused(
    kind: str,
) -> None:
    """The first free hands the element to a parked task; a second free
    before that task runs must not put it in the reserve as well (it would
    then go out twice)."""
    pool: Mempool[Any] = (
        buffer_pool(64, min_nr=1, max_nr=1, headroom=0)
        if kind == "buffer"
        else kmalloc_pool(1, 64)
    )
    if kind == "kmalloc":
        pool._alloc_fn = lambda gfp, data: None
    held = await pool.alloc()
    waiter = asyncio.ensure_future(pool.alloc())
    await asyncio.sleep(0)
    assert pool.waiters == 1
    pool.free(held)  # to the waiter, which has not run yet
    with pytest.raises(DoubleFreeError, match="handed to a task waiting"):
        pool.free(held)
    assert await waiter is held
    assert pool.curr_nr == 0 and pool.stats().outstanding == 1
    assert pool.alloc_nowait() is None  # not handed out twice
    pool.free(held)  # the waiter's own free
    assert pool.curr_nr == 1 and pool.stats().outstanding == 0


@pytest.mark.asyncio
async def test_an_element_handed_to_a_waiter_that_is_cancelled_goes_on() -> None:
    pool = buffer_pool(64, min_nr=1, max_nr=1, headroom=0)
    held = await pool.alloc()
    waiter = asyncio.ensure_future(pool.alloc())
    await asyncio.sleep(0)
    pool.free(held)
    waiter.cancel()  # after the hand-off: it passes the buffer back
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert pool.curr_nr == 1 and pool.stats().outstanding == 0
    again = pool.alloc_nowait()
    assert again is held
    pool.free(again)  # an ordinary free: it is out with us again
    with pytest.raises(DoubleFreeError):
        pool.free(again)


# -- what the errors say --------------------------------------------------------


@pytest.mark.parametrize("order", ["1", 1.0, True, None])
def test_page_pool_wants_an_int_order(order: Any) -> None:
    with pytest.raises(TypeError, match="order must be an int"):
        page_pool(1, order)


@pytest.mark.parametrize("option", ["leak_sampling", "zero_on_free"])
def test_a_kmalloc_pool_refuses_the_options_of_a_pool_of_a_caches_buffers(
    option: str,
) -> None:
    value = 4 if option == "leak_sampling" else True
    with pytest.raises(
        TypeError, match=f"{option} needs a pool of a SlabCache's buffers"
    ):
        kmalloc_pool(1, 16, **{option: value})


BIG = 65536

REFUSING = {
    "buffer_pool": lambda: buffer_pool(BIG, min_nr=1),
    "buffer_pool zero_on_free": lambda: buffer_pool(BIG, min_nr=1, zero_on_free=True),
    "buffer_pool leak_sampling": lambda: buffer_pool(BIG, min_nr=1, leak_sampling=1),
    "buffer_pool debug": lambda: buffer_pool(BIG, min_nr=1, debug=True),
    "slab_pool": lambda: slab_pool(1, SlabCache(BIG)),
    "page_pool": lambda: page_pool(1, 4),
    "kmalloc_pool": lambda: kmalloc_pool(1, BIG),
    "kmalloc_pool debug": lambda: kmalloc_pool(1, BIG, debug=True),
}


@pytest.mark.parametrize("make", REFUSING.values(), ids=REFUSING.keys())
def test_a_refused_free_of_a_big_bytearray_has_a_short_message(
    make: Callable[[], Mempool[Any]],
) -> None:
    # Never the element's bytes: the repr of a 64 KiB bytearray is a
    # quarter of a million characters.
    pool = make()
    stranger = bytearray(b"\xab" * BIG)
    with pytest.raises(InvalidFreeError) as info:
        pool.free(stranger)
    assert len(str(info.value)) < 300, str(info.value)[:400]
    assert "\\xab" not in str(info.value)
    pool.close()


def test_a_double_free_of_a_big_bytearray_has_a_short_message() -> None:
    pool = kmalloc_pool(1, BIG)
    buf = pool.alloc_nowait()
    pool.free(buf)
    with pytest.raises(InvalidFreeError) as info:
        pool.free(buf)
    assert len(str(info.value)) < 300, str(info.value)[:400]
    with pytest.raises(InvalidFreeError) as info:
        SlabCache(BIG).free(bytearray(BIG))  # type: ignore[arg-type]
    assert len(str(info.value)) < 300, str(info.value)[:400]


def test_resize_beyond_a_bounded_cache_names_max_objects() -> None:
    pool = buffer_pool(64, min_nr=1, max_nr=3, headroom=1)
    with pytest.raises(MemoryError, match="max_objects=3") as info:
        pool.resize(5)
    assert "2 of the 4 more" in str(info.value), str(info.value)
    assert (pool.min_nr, pool.curr_nr) == (1, 1)  # nothing changed
    pool.resize(3)  # within the bound
    assert pool.curr_nr == 3
