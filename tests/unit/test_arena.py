"""BufferArena: exact sizes from size classes under one budget, memory
that moves between classes, one first come, first served line for every
size, and everything the buffer pools have."""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import random
from typing import Any

import pytest
import uvloop
from helpers import TIMEOUT, address

from aiomempool import (
    GFP_ATOMIC,
    GFP_KERNEL,
    GFP_NOWAIT,
    AllocTimeoutError,
    BufferArena,
    DoubleFreeError,
    ForeignElementError,
    PoolClosedError,
    PoolExhaustedError,
    buffer_arena,
    default_classes,
)
from aiomempool.arena import ARENA_SLAB_BYTES, named_arenas

KIB = 1024
MIB = 1024 * 1024


def small_arena(**options: object) -> BufferArena:
    """Three classes, 1 KiB (64 a slab), 4 KiB (16 a slab) and 64 KiB (one
    a slab), a budget of sixteen 64 KiB slabs, no headroom."""
    options.setdefault("classes", (KIB, 4 * KIB, 64 * KIB))
    options.setdefault("headroom", 0)
    return buffer_arena(16 * 64 * KIB, **options)  # type: ignore[arg-type]


def take_all(arena: BufferArena, nbytes: int) -> list[memoryview]:
    """alloc_nowait(nbytes) until it says None: everything it can have."""
    got = []
    while (view := arena.alloc_nowait(nbytes)) is not None:
        got.append(view)
    return got


# -- sizes --------------------------------------------------------------------


def test_the_default_classes_run_from_256_bytes_to_1_mib_four_per_doubling() -> None:
    classes = default_classes()
    assert classes[0] == 256 and classes[-1] == MIB and len(classes) == 49
    assert classes[:6] == (256, 320, 384, 448, 512, 640)
    for smaller, larger in itertools.pairwise(classes):
        assert (larger - smaller) / larger <= 0.2


def test_waste_is_under_a_fifth_of_the_slot_over_a_spread_of_sizes() -> None:
    arena = buffer_arena(64 * MIB, trim_after=None)
    rng = random.Random(5)
    sizes = [int(2 ** rng.uniform(8, 20)) for _ in range(20_000)]
    waste = [(arena.good_size(n) - n) / arena.good_size(n) for n in sizes]
    assert max(waste) < 0.2
    assert sum(waste) / len(waste) < 0.12  # about 10% on average
    assert arena.good_size(200) == 256 and arena.good_size(256) == 256
    assert arena.good_size(257) == 320 and arena.good_size(MIB) == MIB
    arena.close()


@pytest.mark.asyncio
async def test_a_buffer_has_exactly_the_bytes_asked_for_from_the_smallest_class() -> (
    None
):
    arena = buffer_arena(64 * MIB, name="exact")
    for nbytes in (1, 255, 256, 3000, 4096, 65_537, MIB):
        view = await arena.alloc(nbytes)
        assert len(view) == nbytes and not view.readonly
        view[:] = b"x" * nbytes
        other = arena.alloc_nowait(nbytes)
        assert other is not None and len(other) == nbytes
        assert abs(address(view) - address(other)) >= arena.good_size(nbytes)
        arena.free(view)
        arena.free(other)
    assert arena.stats().total.outstanding == 0
    arena.close()


def test_bad_sizes_are_refused_naming_the_argument_and_the_limit() -> None:
    arena = small_arena()
    with pytest.raises(ValueError, match="nbytes must be >= 1, got 0"):
        arena.alloc_nowait(0)
    with pytest.raises(ValueError, match="nbytes must be >= 1, got -5"):
        arena.alloc_nowait(-5)
    with pytest.raises(ValueError, match="at most 65536, the largest class"):
        arena.alloc_nowait(64 * KIB + 1)
    # Past a C integer (the compiled build's lookup): the same refusal.
    with pytest.raises(ValueError, match="at most 65536, the largest class"):
        arena.alloc_nowait(1 << 70)
    with pytest.raises(ValueError, match="nbytes must be >= 1"):
        arena.alloc_nowait(-(1 << 70))
    with pytest.raises(TypeError, match="nbytes must be an int, not float"):
        arena.alloc_nowait(10.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="nbytes must be an int, not str"):
        arena.good_size("10")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="DIRECT_RECLAIM"):
        arena.alloc_nowait(10, GFP_KERNEL)
    with pytest.raises(ValueError, match="at most 65536"):
        arena.element(MIB)
    assert arena.stats().total.allocs == 0
    arena.close()


def test_bad_construction_is_refused_with_what_was_expected() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        buffer_arena(MIB, classes=(4096, 1024))
    with pytest.raises(ValueError, match="largest class"):
        buffer_arena(1000, classes=(4096,))
    with pytest.raises(ValueError, match="not both"):
        buffer_arena(MIB, min_nr=2, reserve_bytes=4096)
    with pytest.raises(ValueError, match=r"not classes: \[1000\]"):
        buffer_arena(MIB, classes=(1024,), min_nr={1000: 2})
    with pytest.raises(TypeError, match="classes must be an iterable"):
        buffer_arena(MIB, classes=4096)  # type: ignore[arg-type]
    with pytest.raises(MemoryError, match="reserves"):
        buffer_arena(2 * MIB)  # 49 default classes' reserves need ~8.5 MiB
    with pytest.raises(ValueError, match="headroom must be >= 0"):
        buffer_arena(MIB, classes=(4096,), headroom=-1)


def test_the_reserve_is_made_up_front_per_class_or_from_reserve_bytes() -> None:
    arena = small_arena(min_nr={4 * KIB: 5})
    assert [c.pool.curr_nr for c in arena.stats().classes] == [1, 5, 1]
    arena.close()
    arena = small_arena(reserve_bytes=3 * 64 * KIB)
    # a 64 KiB share each: 64 of 1 KiB, 16 of 4 KiB, one of 64 KiB
    assert [c.pool.curr_nr for c in arena.stats().classes] == [64, 16, 1]
    arena.close()


# -- one budget ---------------------------------------------------------------


def test_the_slabs_of_every_class_together_stay_within_max_bytes() -> None:
    arena = small_arena()
    held = take_all(arena, 3000)
    held += take_all(arena, 700)
    held += take_all(arena, 60_000)
    stats = arena.stats()
    assert stats.bytes_reserved <= arena.max_bytes
    assert stats.high_water_bytes <= arena.max_bytes
    assert stats.bytes_in_use == sum(arena.good_size(len(v)) for v in held)
    assert stats.bytes_requested == sum(len(v) for v in held)
    arena.free_bulk(held)
    assert arena.stats().total.outstanding == 0
    arena.close()


def test_gfp_atomic_may_grow_into_the_headroom_and_no_further() -> None:
    arena = small_arena(headroom=2 * 64 * KIB)
    held = take_all(arena, 64 * KIB)
    assert arena.stats().bytes_reserved == arena.max_bytes
    urgent = [arena.alloc_nowait(64 * KIB, GFP_ATOMIC) for _ in range(3)]
    assert urgent[2] is None and all(v is not None for v in urgent[:2])
    assert arena.stats().bytes_reserved == arena.max_bytes + arena.headroom
    arena.free_bulk([*held, *urgent])
    arena.close()


def test_free_slabs_of_other_classes_are_given_back_before_anyone_waits() -> None:
    arena = small_arena(trim_after=None)
    small = take_all(arena, 1000)  # the whole budget in 1 KiB buffers
    assert arena.alloc_nowait(64 * KIB) is not None  # the 64 KiB reserve
    assert arena.alloc_nowait(64 * KIB) is None
    arena.free_bulk(small)  # their slabs are wholly free now, but kept
    assert arena.stats().bytes_reserved == arena.max_bytes
    big = take_all(arena, 64 * KIB)
    # Every 1 KiB slab but the one holding that class's reserve went: 13
    # slabs' worth (the 4 KiB class keeps the slab of its reserve too).
    assert len(big) == 13
    assert arena.stats().classes[0].slab.slabs == 1
    arena.free_bulk(big)
    arena.close()


def test_shrink_gives_back_every_wholly_free_slab_but_the_reserves() -> None:
    arena = small_arena(trim_after=None)
    arena.free_bulk(take_all(arena, 4 * KIB))
    before = arena.stats().bytes_reserved
    given = arena.shrink()
    assert given > 0 and arena.stats().bytes_reserved == before - given
    assert [c.slab.slabs for c in arena.stats().classes] == [1, 1, 1]
    arena.close()


@pytest.mark.asyncio
async def test_idle_slabs_go_back_after_trim_after_down_to_the_reserves() -> None:
    arena = small_arena(trim_after=0.05)
    arena.free_bulk(take_all(arena, 4 * KIB))
    assert arena.stats().bytes_reserved == arena.max_bytes
    reserves = ARENA_SLAB_BYTES * 3
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while arena.stats().bytes_reserved > reserves and loop.time() < deadline:
        await asyncio.sleep(0.02)
    assert arena.stats().bytes_reserved == reserves
    assert arena.alloc_nowait(4 * KIB) is not None  # and it grows again
    arena.close()


# -- waiting: one line for every size -----------------------------------------


@pytest.mark.asyncio
async def test_a_large_waiter_is_not_starved_by_a_stream_of_small_requests() -> None:
    # The budget is spent on 4 KiB buffers; a 1 MiB request waits. A stream
    # of 4 KiB requests arrives while the 4 KiB buffers come back: they
    # queue behind it, so the freed slabs go to it, not to them.
    classes = (4 * KIB, MIB)
    arena = buffer_arena(MIB + 64 * KIB + MIB, classes=classes, headroom=0)
    small = take_all(arena, 4 * KIB)
    assert len(small) == 16 * 17
    held = arena.alloc_nowait(MIB)  # the 1 MiB reserve
    assert held is not None
    served: list[str] = []

    async def want(label: str, nbytes: int) -> memoryview:
        view = await arena.alloc(nbytes)
        served.append(label)
        return view

    big = asyncio.ensure_future(want("big", MIB))
    await asyncio.sleep(0)
    assert arena.waiters == 1
    stream: list[asyncio.Future[memoryview]] = []
    for i, view in enumerate(small):
        if i % 8 == 0:
            stream.append(asyncio.ensure_future(want(f"small{len(stream)}", 4 * KIB)))
        await asyncio.sleep(0)
        arena.free(view)
        await asyncio.sleep(0)
        if not big.done():
            assert served == []  # nobody overtook the large request
    got = await asyncio.wait_for(big, TIMEOUT)
    assert len(got) == MIB
    arena.free_bulk([got, held])  # room for the whole stream now
    views = await asyncio.wait_for(asyncio.gather(*stream), TIMEOUT)
    assert served == ["big"] + [f"small{i}" for i in range(len(stream))]
    arena.free_bulk(views)
    assert arena.stats().total.outstanding == 0 and arena.waiters == 0
    arena.close()


async def three_one_at_a_time(arena: BufferArena, got: list[memoryview]) -> None:
    for _ in range(3):
        got.append(await arena.alloc(60_000))
        await asyncio.sleep(0)
    arena.free_bulk(got)


async def three_at_once(arena: BufferArena, done: list[int]) -> None:
    got = await arena.alloc_bulk(3, 60_000)
    assert [len(v) for v in got] == [60_000] * 3
    await asyncio.sleep(0)
    arena.free_bulk(got)
    done.append(1)


@pytest.mark.asyncio
async def test_a_loop_of_alloc_deadlocks_where_alloc_bulk_does_not() -> None:
    # Four 64 KiB buffers in all; two tasks each need three.
    arena = buffer_arena(4 * 64 * KIB, classes=(64 * KIB,), headroom=0)
    assert arena.bulk_limit(60_000) == 4
    a: list[memoryview] = []
    b: list[memoryview] = []
    tasks = [
        asyncio.ensure_future(three_one_at_a_time(arena, a)),
        asyncio.ensure_future(three_one_at_a_time(arena, b)),
    ]
    done, pending = await asyncio.wait(tasks, timeout=0.2)
    assert not done and len(a) == len(b) == 2 and arena.waiters == 2
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    arena.free_bulk([*a, *b])
    finished: list[int] = []
    await asyncio.wait_for(
        asyncio.gather(three_at_once(arena, finished), three_at_once(arena, finished)),
        TIMEOUT,
    )
    assert finished == [1, 1] and arena.stats().total.outstanding == 0
    arena.close()


@pytest.mark.asyncio
async def test_a_bulk_count_the_budget_cannot_guarantee_is_refused_at_once() -> None:
    arena = small_arena()
    limit = arena.bulk_limit(64 * KIB)
    with pytest.raises(ValueError, match=f"from 1 to {limit}"):
        await arena.alloc_bulk(limit + 1, 64 * KIB)
    with pytest.raises(ValueError, match="from 1 to"):
        await arena.alloc_bulk(0, 100)
    with pytest.raises(TypeError, match="count must be an int"):
        await arena.alloc_bulk(2.0, 100)  # type: ignore[arg-type]
    views = await arena.alloc_bulk(limit, 64 * KIB)
    assert len(views) == limit
    assert await arena.alloc_bulk(1, 64 * KIB, GFP_NOWAIT) is None  # all out
    arena.free_bulk(views)
    arena.close()


@pytest.mark.asyncio
async def test_a_waiter_cancelled_after_the_hand_off_passes_its_buffer_on() -> None:
    arena = small_arena()
    held = take_all(arena, 64 * KIB)
    first = asyncio.ensure_future(arena.alloc(64 * KIB))
    second = asyncio.ensure_future(arena.alloc(50_000))
    await asyncio.sleep(0)
    arena.free(held.pop())  # handed to the first, whose task has not run
    first.cancel()
    view = await asyncio.wait_for(second, TIMEOUT)
    assert len(view) == 50_000 and first.cancelled()
    arena.free_bulk([view, *held])
    stats = arena.stats()
    assert stats.total.outstanding == 0 and stats.waiters == 0
    assert stats.total.allocs == stats.total.frees
    arena.close()


@pytest.mark.asyncio
async def test_a_waiter_that_times_out_lets_those_behind_it_go() -> None:
    arena = small_arena()
    held = take_all(arena, 64 * KIB)
    held += take_all(arena, 4 * KIB)
    big = asyncio.ensure_future(arena.alloc(64 * KIB, timeout=0.05))
    small = asyncio.ensure_future(arena.alloc(4 * KIB))
    await asyncio.sleep(0)
    arena.free(held.pop())  # a 4 KiB buffer: not enough for the first
    await asyncio.sleep(0)
    assert not small.done()  # behind the first, who cannot be served
    with pytest.raises(AllocTimeoutError, match=r"no buffer within 0\.05 s"):
        await big
    view = await asyncio.wait_for(small, TIMEOUT)
    assert arena.stats().classes[2].pool.timeouts == 1
    arena.free_bulk([view, *held])
    arena.close()


@pytest.mark.asyncio
async def test_closing_the_arena_ends_every_waiter_and_later_frees_still_work() -> None:
    arena = small_arena()
    held = take_all(arena, 64 * KIB)
    waiter = asyncio.ensure_future(arena.alloc(64 * KIB))
    bulk = asyncio.ensure_future(arena.alloc_bulk(2, 100))
    await asyncio.sleep(0)
    arena.close()
    for task in (waiter, bulk):
        with pytest.raises(PoolClosedError, match="closed while waiting"):
            await task
    with pytest.raises(PoolClosedError):
        await arena.alloc(100)
    with pytest.raises(PoolClosedError):
        arena.alloc_nowait(100)
    arena.free_bulk(held)  # after close: their slabs go
    assert arena.stats().bytes_reserved == 0


@pytest.mark.parametrize("new_loop", [asyncio.new_event_loop, uvloop.new_event_loop])
def test_a_waiter_of_a_closed_loop_does_not_hold_the_line(new_loop: object) -> None:
    arena = small_arena()
    held = take_all(arena, 64 * KIB)
    loop = new_loop()  # type: ignore[operator]
    task = loop.create_task(arena.alloc(64 * KIB))
    loop.run_until_complete(asyncio.sleep(0.01))
    assert arena.waiters == 1
    loop.close()
    assert arena.waiters == 0
    arena.free(held.pop())  # into the reserve: nobody is waiting now
    other = asyncio.new_event_loop()
    try:
        view = other.run_until_complete(asyncio.wait_for(arena.alloc(100), TIMEOUT))
    finally:
        other.close()
    arena.free(view)
    del task
    gc.collect()
    arena.free_bulk(held)
    assert arena.stats().total.outstanding == 0
    arena.close()


@pytest.mark.asyncio
async def test_nobody_overtakes_a_waiter_not_even_alloc_nowait() -> None:
    arena = small_arena()
    held = take_all(arena, 64 * KIB)
    waiter = asyncio.ensure_future(arena.alloc(64 * KIB))
    await asyncio.sleep(0)
    assert arena.alloc_nowait(100) is None  # 1 KiB buffers are free, but
    arena.free(held.pop())
    view = await asyncio.wait_for(waiter, TIMEOUT)
    small = arena.alloc_nowait(100)  # nobody waits now
    assert small is not None
    arena.free_bulk([view, small, *held])
    arena.close()


# -- what the buffer pools have -----------------------------------------------


def test_double_frees_and_foreign_views_are_refused_and_change_nothing() -> None:
    arena = small_arena(name="strict")
    part = arena.alloc_nowait(3000)
    whole = arena.alloc_nowait(4 * KIB)
    assert part is not None and whole is not None
    arena.free(part)
    arena.free(whole)
    before = arena.stats()
    with pytest.raises(DoubleFreeError, match="'strict'"):
        arena.free(part)
    with pytest.raises(DoubleFreeError, match="double free"):
        arena.free(whole)
    with pytest.raises(ForeignElementError):
        arena.free(memoryview(bytearray(3000)))
    with pytest.raises(ForeignElementError):
        arena.free(bytearray(10))  # type: ignore[arg-type]
    with pytest.raises(ForeignElementError):
        arena.free(memoryview(bytearray(MIB)))
    view = arena.alloc_nowait(3000)
    assert view is not None
    with pytest.raises(DoubleFreeError):
        arena.free(view[:100])  # a slice of a buffer: only the view frees
    after = arena.stats()
    assert after.total.frees == before.total.frees
    assert after.total.outstanding == 1
    arena.free(view)
    arena.close()


def test_zero_on_free_wipes_every_buffer_before_it_is_handed_out_again() -> None:
    arena = small_arena(zero_on_free=True)
    view = arena.alloc_nowait(3000)
    assert view is not None
    slot_start = address(view)
    view[:] = b"\xff" * 3000
    arena.free(view)
    again = arena.alloc_nowait(4 * KIB)
    assert again is not None and address(again) == slot_start
    assert bytes(again) == bytes(4 * KIB)
    arena.free(again)
    arena.close()


def test_debug_mode_blocks_use_after_free_and_names_double_frees() -> None:
    arena = small_arena(debug=True)
    view = arena.alloc_nowait(3000)
    assert view is not None and len(view) == 3000
    assert len(arena.outstanding()) == 1
    arena.free(view)
    with pytest.raises(ValueError, match="released"):
        view[0] = 1
    with pytest.raises(DoubleFreeError, match="first freed at"):
        arena.free(view)
    assert arena.outstanding() == []
    arena.close()
    with pytest.raises(RuntimeError, match="debug mode"):
        small_arena().outstanding()


def test_a_sampled_buffer_dropped_without_free_is_reported_and_comes_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    arena = small_arena(leak_sampling=1, name="leaky")
    view = arena.alloc_nowait(3000)  # every allocation is watched
    assert view is not None and len(view) == 3000
    del view
    gc.collect()
    with caplog.at_level(logging.WARNING, logger="aiomempool"):
        arena.alloc_nowait(100)  # the next sample drains the dropped ones
    assert "dropped without free()" in caplog.text
    assert arena.stats().classes[1].pool.outstanding == 0
    kept = arena.alloc_nowait(3000)
    assert kept is not None
    arena.free(kept)  # a watched buffer frees as any other
    arena.close()


def test_stats_add_the_classes_up_and_count_each_class() -> None:
    arena = small_arena(name="books")
    a = arena.alloc_nowait(100)
    b = arena.alloc_nowait(2000)
    c = arena.alloc_nowait(2000)
    stats = arena.stats()
    assert stats.name == "books" and stats.max_bytes == 16 * 64 * KIB
    assert [cls.size for cls in stats.classes] == [KIB, 4 * KIB, 64 * KIB]
    assert [cls.pool.allocs for cls in stats.classes] == [1, 2, 0]
    assert stats.total.allocs == 3 and stats.total.min_nr == 3
    assert stats.bytes_in_use == KIB + 8 * KIB
    assert stats.bytes_requested == 4100
    assert "BufferArena 'books'" in repr(arena)
    arena.free_bulk([a, b, c])
    assert arena in named_arenas()
    arena.close()


@pytest.mark.asyncio
async def test_element_lends_exactly_nbytes_for_the_span_of_a_block() -> None:
    arena = small_arena()
    async with arena.element(1500) as buf:
        assert len(buf) == 1500
        assert arena.stats().total.outstanding == 1
    assert arena.stats().total.outstanding == 0
    held = take_all(arena, 100)
    held += take_all(arena, 64 * KIB)
    with pytest.raises(PoolExhaustedError):
        async with arena.element(100, GFP_NOWAIT):
            pass
    arena.free_bulk(held)
    async with arena:
        pass
    assert arena.closed


@pytest.mark.asyncio
async def test_element_allocates_with_a_subclass_override_of_alloc() -> None:
    # As a Mempool's: entry takes alloc()'s first step itself only where
    # the class that defines alloc() defines that step too.
    class Counting(BufferArena):
        calls = 0

        async def alloc(self, *args: Any, **kwargs: Any) -> Any:
            type(self).calls += 1
            return await super().alloc(*args, **kwargs)

    arena = Counting(
        16 * 64 * KIB,
        (KIB, 4 * KIB, 64 * KIB),
        (1, 1, 1),
        headroom=0,
        zero_on_free=False,
        leak_sampling=None,
        trim_after=None,
        name=None,
        retry_interval=0.01,
        debug=False,
    )
    async with arena.element(1500) as buf:
        assert len(buf) == 1500 and arena.stats().total.outstanding == 1
    async with arena.element(100, timeout=1.0) as buf:
        assert len(buf) == 100
    assert Counting.calls == 2 and arena.stats().total.outstanding == 0
    arena.close()


@pytest.mark.asyncio
async def test_free_threadsafe_frees_on_the_loop_and_serves_a_waiter() -> None:
    arena = small_arena()
    held = take_all(arena, 64 * KIB)
    waiter = asyncio.ensure_future(arena.alloc(64 * KIB))
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, arena.free_threadsafe, held.pop())
    view = await asyncio.wait_for(waiter, TIMEOUT)
    arena.free_bulk([view, *held])
    assert arena.stats().total.outstanding == 0
    arena.close()


@pytest.mark.asyncio
async def test_a_waiter_is_served_at_the_free_emptying_another_class_slab() -> None:
    arena = buffer_arena(
        10 * 64 * KIB, classes=(256, 64 * KIB), headroom=0, trim_after=None
    )
    small = take_all(arena, 256)  # 256 a slab; the first slab holds the reserve
    held = arena.alloc_nowait(64 * KIB)  # the 64 KiB reserve
    waiter = asyncio.ensure_future(arena.alloc(64 * KIB))
    await asyncio.sleep(0)
    arena.free(small[0])  # back into the 256 B class's reserve
    for view in small[255:510]:  # all of the second slab but one
        arena.free(view)
    await asyncio.sleep(0)
    assert not waiter.done()
    arena.free(small[510])  # the second slab is wholly free now
    await asyncio.sleep(0)
    assert waiter.done()  # at this free, not at the retry tick
    arena.free_bulk([waiter.result(), held, *small[1:255], *small[511:]])
    assert arena.stats().total.outstanding == 0
    arena.close()


@pytest.mark.asyncio
async def test_in_debug_mode_a_buffer_out_of_quarantine_serves_a_waiter() -> None:
    arena = small_arena(debug=True, retry_interval=60.0)
    held = take_all(arena, 64 * KIB)
    waiter = asyncio.ensure_future(arena.alloc(64 * KIB))
    await asyncio.sleep(0)
    view = held.pop()
    part = view[:10]  # still exported when freed: quarantined
    arena.free(view)
    await asyncio.sleep(0.05)
    assert not waiter.done()
    del part, view
    gc.collect()
    got = await asyncio.wait_for(waiter, 2.0)  # at the recheck, not in 60 s
    arena.free_bulk([got, *held])
    assert arena.stats().total.outstanding == 0
    arena.close()


@pytest.mark.asyncio
async def test_a_second_free_of_a_buffer_handed_to_a_waiter_is_refused() -> None:
    arena = buffer_arena(2 * 64 * KIB, classes=(64 * KIB,), headroom=0)
    a = arena.alloc_nowait(64 * KIB)
    b = arena.alloc_nowait(64 * KIB)  # the reserve's
    assert a is not None and b is not None
    waiter = asyncio.ensure_future(arena.alloc(64 * KIB))
    await asyncio.sleep(0)
    arena.free(a)  # handed to the waiter, whose task has not run yet
    with pytest.raises(DoubleFreeError, match="handed to a task waiting"):
        arena.free(a)
    got = await asyncio.wait_for(waiter, TIMEOUT)
    assert arena.alloc_nowait(64 * KIB) is None  # not handed out twice
    arena.free_bulk([got, b])
    assert arena.stats().total.outstanding == 0
    arena.close()


def test_bytes_requested_counts_what_debug_and_sampled_loans_asked_for() -> None:
    for options in ({"debug": True}, {"leak_sampling": 1}):
        arena = small_arena(**options)
        view = arena.alloc_nowait(100)
        assert view is not None and len(view) == 100
        stats = arena.stats()
        assert stats.bytes_in_use == KIB and stats.bytes_requested == 100
        arena.free(view)
        arena.close()


@pytest.mark.asyncio
async def test_urgent_requests_queue_ahead_of_ordinary_waiters() -> None:
    arena = small_arena()
    held = take_all(arena, 64 * KIB)
    served: list[str] = []

    async def want(label: str, mask: object) -> memoryview:
        view = await arena.alloc(64 * KIB, mask)  # type: ignore[arg-type]
        served.append(label)
        return view

    ordinary = asyncio.ensure_future(want("ordinary", GFP_KERNEL))
    await asyncio.sleep(0)
    urgent = asyncio.ensure_future(want("urgent", GFP_KERNEL | GFP_ATOMIC))
    await asyncio.sleep(0)
    assert arena.waiters == 2
    arena.free(held.pop())
    arena.free(held.pop())
    got = await asyncio.wait_for(asyncio.gather(urgent, ordinary), TIMEOUT)
    assert served == ["urgent", "ordinary"]
    arena.free_bulk([*got, *held])
    arena.close()
