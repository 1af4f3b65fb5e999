"""Frames of every size from one memory budget: the buffer arena.

``buffer_arena(max_bytes)`` hands out a writable memoryview of exactly the
bytes asked for, from the smallest size class that holds them; the slabs of
all classes together stay within ``max_bytes``. When a class needs memory
and the budget is spent, the other classes give back their wholly free slabs
first; when nothing can be given back, requests of every size wait in one
line, first come first served.
"""

from __future__ import annotations

import asyncio

from aiomempool import GFP, GFP_ATOMIC, buffer_arena, default_classes

KIB = 1024


async def frames() -> None:
    # The default classes: 256 B to 1 MiB, four per doubling, 49 in all.
    classes = default_classes()
    assert len(classes) == 49 and classes[:6] == (256, 320, 384, 448, 512, 640)

    # Each class keeps a buffer in reserve, on a slab of its own: about
    # 8 MiB of the 16 MiB budget, made now.
    async with buffer_arena(16 << 20, name="frames") as arena:
        frame = await arena.alloc(1100)  # exactly 1100 bytes...
        assert len(frame) == 1100
        assert arena.good_size(1100) == 1280  # ...of a 1280-byte slot
        s = arena.stats()
        assert (s.bytes_in_use, s.bytes_requested) == (1280, 1100)
        arena.free(frame)

        # A receive buffer: the whole slot, since a read may fill it.
        buf = await arena.alloc(arena.good_size(3000))
        assert len(buf) == 3072
        arena.free(buf)

        # Several at once, all or none: a scatter list of 1500-byte frames.
        burst = await arena.alloc_bulk(8, 1500)
        assert [len(view) for view in burst] == [1500] * 8
        arena.free_bulk(burst)
        print(f"frames: {arena.stats().total}")


async def one_budget() -> None:
    # Two classes, 4 KiB and 64 KiB, in 256 KiB: four slabs of 64 KiB, two
    # of them holding the classes' reserves.
    arena = buffer_arena(
        256 * KIB, classes=(4 * KIB, 64 * KIB), headroom=64 * KIB, trim_after=None
    )
    small = [arena.alloc_nowait(4000) for _ in range(48)]  # three slabs' worth
    assert all(view is not None for view in small)
    assert arena.alloc_nowait(4000, GFP.NOWARN) is None  # the budget is spent
    assert arena.stats().bytes_reserved == 256 * KIB

    # The last 64 KiB buffer, its class's reserve; a second one would need
    # a whole slab, and every slab holds a small buffer: it waits.
    big = await arena.alloc(64 * KIB)
    served: list[int] = []

    async def take(nbytes: int) -> memoryview:
        view = await arena.alloc(nbytes)
        served.append(nbytes)
        return view

    waiter = asyncio.ensure_future(take(64 * KIB))
    await asyncio.sleep(0)
    assert arena.waiters == 1

    # Small buffers come back, some slots are free: but a small request
    # does not overtake the large one, it queues behind it.
    for view in small[:8]:
        arena.free(view)
    assert arena.alloc_nowait(100, GFP.NOWARN) is None
    late = asyncio.ensure_future(take(100))
    await asyncio.sleep(0)
    assert arena.waiters == 2 and not waiter.done()

    # Once a slab of the 4 KiB class is wholly free, it is given back and
    # the 64 KiB class makes its slab: memory moved between classes.
    for view in small[8:]:
        arena.free(view)
    second = await waiter
    tiny = await late
    assert served == [64 * KIB, 100]
    by_size = {c.size: c for c in arena.stats().classes}
    assert (by_size[4 * KIB].slab.slabs, by_size[64 * KIB].slab.slabs) == (2, 2)

    # And again without waiting: the other free slab of 4 KiB buffers goes.
    third = arena.alloc_nowait(64 * KIB)
    assert third is not None
    by_size = {c.size: c for c in arena.stats().classes}
    assert (by_size[4 * KIB].slab.slabs, by_size[64 * KIB].slab.slabs) == (1, 3)

    # Now every slab is busy: GFP_ATOMIC (GFP.HIGH) may grow into the
    # headroom, and nothing else may.
    assert arena.alloc_nowait(64 * KIB, GFP.NOWARN) is None
    urgent = arena.alloc_nowait(64 * KIB, GFP_ATOMIC)
    assert urgent is not None
    assert arena.stats().bytes_reserved == 256 * KIB + 64 * KIB
    arena.free_bulk([big, second, third, tiny, urgent])

    # Wholly free slabs go back at once with shrink(); the slabs of the
    # reserves stay.
    arena.shrink()
    s = arena.stats()
    assert s.bytes_reserved == 128 * KIB
    print(
        f"one budget: {s.total.allocs} allocations, {s.total.waits} waits, "
        f"high water {s.high_water_bytes // KIB} KiB (budget "
        f"{s.max_bytes // KIB} KiB, headroom {s.headroom_bytes // KIB} KiB)"
    )
    arena.close()


async def trimming() -> None:
    # trim_after (30 s by default): a slab wholly free for that long goes
    # back by itself, the memory of a burst after the burst.
    arena = buffer_arena(KIB * KIB, classes=(4 * KIB, 64 * KIB), trim_after=0.1)
    burst = await arena.alloc_bulk(64, 4000)
    peak = arena.stats().bytes_reserved
    arena.free_bulk(burst)
    for _ in range(100):  # a tick every trim_after / 2 seconds
        if arena.stats().bytes_reserved == 128 * KIB:
            break
        await asyncio.sleep(0.05)
    assert arena.stats().bytes_reserved == 128 * KIB  # the reserves' slabs
    print(f"trimmed: {peak // KIB} KiB of slabs, then 128 KiB")
    arena.close()


def reserves_must_fit() -> None:
    # Two reserves may pin two 64 KiB slabs: a 64 KiB budget cannot hold
    # them, and the constructor says so.
    try:
        buffer_arena(64 * KIB, classes=(4 * KIB, 64 * KIB))
    except MemoryError as error:
        print(f"refused: {error}")
    else:
        raise AssertionError("a budget smaller than the reserves was taken")


async def main() -> None:
    await frames()
    await one_budget()
    await trimming()
    reserves_must_fit()


if __name__ == "__main__":
    asyncio.run(main())
