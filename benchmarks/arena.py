"""Buffers of a spread of sizes: ``buffer_arena`` against what users do instead.

Two groups, the same cases, each over its own seeded list of sizes
(``Spread.sizes()``: ``SPREAD_COUNT`` sizes between ``SPREAD_MIN`` and
``SPREAD_MAX``):

* ``LOG_UNIFORM`` (``buffers-spread``): log-uniform, as many sizes in each
  power of two, so mostly small ones: frames as they come to a server;
* ``UNIFORM`` (``buffers-uniform``): uniform in bytes, so mostly large ones
  (a mean near 512 KiB): the spread the arena issue's figure for
  ``bytearray(n)`` is of.

``IN_FLIGHT`` buffers are held at once as in the other buffer groups: each
cycle takes a buffer of the next size and gives back the one taken
``IN_FLIGHT`` cycles before.

* ``bytearray(n)``: no pool, the reference;
* an ``asyncio.Queue`` of ``bytearray(65536)``, the pool of one size that
  users write (``handrolled.queue_buffer_cycle``): it ignores ``n``, and
  would not hold the requests above 64 KiB;
* one ``buffer_pool`` per size class, built up front, each request routed by
  ``arena.good_size(n)``: what a user hand-rolls instead of the arena;
* ``buffer_arena``: ``alloc_nowait(n)`` + ``free()``, and ``await alloc(n)``
  + ``free()``.

The pools and the arena are built by each batch, outside the clock, and
warmed up with one pass over the whole list (so that the clock sees the
steady state of a server that has run for a while, every class holding the
slabs it needs); at the end of each batch every buffer is freed, the counts
are checked (every allocation served, nothing out) and everything closed.
"""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from time import perf_counter_ns
from typing import Any

import aiomempool
from aiomempool.arena import ARENA_SLAB_BYTES
from benchmarks.cases import IN_FLIGHT
from benchmarks.harness import Batch
from benchmarks.results import SPREAD_KEY, SPREAD_NAMES, UNIFORM_SPREAD_KEY

#: The spreads: how many sizes, their bounds and the seed of their draw.
SPREAD_COUNT = 4096
SPREAD_MIN = 64
SPREAD_MAX = 1 << 20
SPREAD_SEED = 11
#: The arena's budget: room for ``IN_FLIGHT`` buffers of any sizes of the
#: spread, and every class's slabs of the steady state.
ARENA_BYTES = 256 << 20
#: The buffers of the one-size Queue pool.
QUEUE_SIZE = 65536
#: A class pool's bound: every buffer in flight could be of its class.
CLASS_MAX_NR = 2 * IN_FLIGHT


@dataclass(frozen=True)
class Spread:
    """The seeded list of sizes every case of a group cycles over."""

    key: str
    title: str
    #: How the sizes are drawn: ``"log-uniform"`` (the exponent uniform from
    #: log2 ``SPREAD_MIN`` to log2 ``SPREAD_MAX``) or ``"uniform"`` (the size
    #: itself uniform from ``SPREAD_MIN`` to ``SPREAD_MAX``).
    draw: str

    def sizes(self) -> tuple[int, ...]:
        return _draw(self.draw)


@functools.cache
def _draw(draw: str) -> tuple[int, ...]:
    """``SPREAD_COUNT`` sizes from ``SPREAD_MIN`` to ``SPREAD_MAX`` bytes,
    drawn with ``random.Random(SPREAD_SEED)``."""
    rng = random.Random(SPREAD_SEED)
    if draw == "uniform":
        return tuple(rng.randint(SPREAD_MIN, SPREAD_MAX) for _ in range(SPREAD_COUNT))
    if draw != "log-uniform":
        raise ValueError(f"unknown draw {draw!r}")
    lo, hi = SPREAD_MIN.bit_length() - 1, SPREAD_MAX.bit_length() - 1
    return tuple(
        min(SPREAD_MAX, max(SPREAD_MIN, round(2 ** rng.uniform(lo, hi))))
        for _ in range(SPREAD_COUNT)
    )


#: Frames as they come to a server: as many sizes in each power of two, so
#: mostly small ones.
LOG_UNIFORM = Spread(
    SPREAD_KEY,
    f"Buffers of a spread of sizes (64 B to 1 MiB, seeded), {IN_FLIGHT} in flight",
    SPREAD_NAMES[SPREAD_KEY],
)
#: The spread the arena issue's figure for ``bytearray(n)`` is of: every
#: size as likely, so mostly large ones, mapped and zeroed per call.
UNIFORM = Spread(
    UNIFORM_SPREAD_KEY,
    f"Buffers of a uniform spread of sizes (64 B to 1 MiB, seeded), "
    f"{IN_FLIGHT} in flight",
    SPREAD_NAMES[UNIFORM_SPREAD_KEY],
)
SPREADS = (LOG_UNIFORM, UNIFORM)


def spread() -> tuple[int, ...]:
    """The log-uniform spread's sizes (``benchmarks/trim.py`` cycles over them)."""
    return LOG_UNIFORM.sizes()


def new_arena(**options: Any) -> aiomempool.BufferArena:
    """The arena of the cases: the default classes, ``ARENA_BYTES``."""
    return aiomempool.buffer_arena(ARENA_BYTES, **options)


def waste(spread: Spread) -> dict[str, Any]:
    """What rounding up to a class costs over a spread: per allocation,
    ``(good_size(n) - n) / good_size(n)`` (mean and worst) and ``(good_size(n)
    - n) / n`` (mean); and of all the bytes handed out, the share unasked."""
    arena = new_arena(trim_after=None)
    try:
        sizes = spread.sizes()
        slots = [arena.good_size(n) for n in sizes]
    finally:
        arena.close()
    of_slot = [(g - n) / g for n, g in zip(sizes, slots, strict=True)]
    of_request = [(g - n) / n for n, g in zip(sizes, slots, strict=True)]
    return {
        "spread": spread.draw,
        "sizes": len(sizes),
        "min_bytes": SPREAD_MIN,
        "max_bytes": SPREAD_MAX,
        "seed": SPREAD_SEED,
        "mean_request_bytes": sum(sizes) / len(sizes),
        "classes": len(arena.classes),
        "mean_of_slot": sum(of_slot) / len(of_slot),
        "worst_of_slot": max(of_slot),
        "mean_of_request": sum(of_request) / len(of_request),
        "of_bytes": 1 - sum(sizes) / sum(slots),
    }


def _check(what: str, allocs: int, frees: int, outstanding: int, want: int) -> None:
    if (allocs, frees, outstanding) != (want, want, 0):
        raise RuntimeError(
            f"{what}: {allocs} allocations, {frees} frees, {outstanding} out; "
            f"wanted {want}, {want}, 0"
        )


# -- the cases ---------------------------------------------------------------


def bytearray_cycle(spread: Spread) -> Batch:
    """``bytearray(n)`` over the spread with ``IN_FLIGHT`` alive: no pool."""

    async def batch(n: int) -> float:
        sizes = itertools.cycle(spread.sizes())
        ring = [bytearray(next(sizes)) for _ in range(IN_FLIGHT)]
        start = perf_counter_ns()
        for i, size in zip(range(n), sizes, strict=False):
            ring[i % IN_FLIGHT] = bytearray(size)
        return (perf_counter_ns() - start) / n

    return batch


def class_pools_cycle(spread: Spread) -> Batch:
    """A ``buffer_pool`` per class of the arena, ``alloc_nowait()`` +
    ``free()`` through the one ``arena.good_size(n)`` names: the hand-rolled
    arena. Each pool has the arena's slab geometry and a reserve of one."""

    async def batch(n: int) -> float:
        sizer = new_arena(trim_after=None)
        pools = {
            size: aiomempool.buffer_pool(
                size,
                min_nr=1,
                max_nr=CLASS_MAX_NR,
                objects_per_slab=max(1, ARENA_SLAB_BYTES // size),
            )
            for size in sizer.classes
        }
        good_size = sizer.good_size
        # Each buffer beside the pool it goes back to, as a user keeps them.
        ring: list[tuple[Any, memoryview | None]] = []
        try:
            sizes = itertools.cycle(spread.sizes())
            for _ in range(IN_FLIGHT):
                pool = pools[good_size(next(sizes))]
                ring.append((pool, pool.alloc_nowait()))
            for i, size in zip(range(SPREAD_COUNT), sizes, strict=False):  # the warm-up
                pool = pools[good_size(size)]
                x = pool.alloc_nowait()
                k = i % IN_FLIGHT
                old, view = ring[k]
                old.free(view)
                ring[k] = (pool, x)
            start = perf_counter_ns()
            for i, size in zip(range(n), sizes, strict=False):
                pool = pools[good_size(size)]
                x = pool.alloc_nowait()
                k = i % IN_FLIGHT
                old, view = ring[k]
                old.free(view)
                ring[k] = (pool, x)
            elapsed = perf_counter_ns() - start
            for old, view in ring:
                old.free(view)
            ring.clear()
            totals = [p.stats() for p in pools.values()]
            _check(
                "buffer_pool per class",
                sum(s.allocs for s in totals),
                sum(s.frees for s in totals),
                sum(s.outstanding for s in totals),
                IN_FLIGHT + SPREAD_COUNT + n,
            )
            return elapsed / n
        finally:
            for old, view in ring:
                old.free(view)
            for pool in pools.values():
                pool.close()
            sizer.close()

    return batch


def _arena_batch(
    spread: Spread,
    timed: Callable[[Any, list[Any], Iterator[int], int], Any],
    make: Callable[[], Any] | None,
) -> Batch:
    """A batch through a new arena (``new_arena()``, or what ``make()``
    makes: benchmarks/floors.py's instrument, which keeps no counts):
    ``IN_FLIGHT`` out, one warm-up pass over the spread, then ``await
    timed(arena, ring, sizes, n)``, which returns nanoseconds; then every
    buffer back, the counts checked (the arena's), the arena closed."""

    async def batch(n: int) -> float:
        arena = new_arena() if make is None else make()
        ring: list[Any] = []
        try:
            sizes = itertools.cycle(spread.sizes())
            ring += [arena.alloc_nowait(next(sizes)) for _ in range(IN_FLIGHT)]
            await timed(arena, ring, sizes, SPREAD_COUNT)  # the warm-up
            elapsed: float = await timed(arena, ring, sizes, n)
            for view in ring:
                arena.free(view)
            ring.clear()
            if make is None:
                total = arena.stats().total
                _check(
                    "buffer_arena",
                    total.allocs,
                    total.frees,
                    total.outstanding,
                    IN_FLIGHT + SPREAD_COUNT + n,
                )
            return elapsed / n
        finally:
            for view in ring:
                arena.free(view)
            if make is None:
                arena.close()

    return batch


def arena_nowait_cycle(spread: Spread, make: Callable[[], Any] | None = None) -> Batch:
    """``arena.alloc_nowait(n)`` + ``arena.free()`` over the spread."""

    async def timed(arena: Any, ring: list[Any], sizes: Iterator[int], n: int) -> int:
        start = perf_counter_ns()
        for i, size in zip(range(n), sizes, strict=False):
            x = arena.alloc_nowait(size)
            k = i % IN_FLIGHT
            arena.free(ring[k])
            ring[k] = x
        return perf_counter_ns() - start

    return _arena_batch(spread, timed, make)


def arena_alloc_cycle(spread: Spread, make: Callable[[], Any] | None = None) -> Batch:
    """``await arena.alloc(n)`` + ``arena.free()`` over the spread."""

    async def timed(arena: Any, ring: list[Any], sizes: Iterator[int], n: int) -> int:
        start = perf_counter_ns()
        for i, size in zip(range(n), sizes, strict=False):
            x = await arena.alloc(size)
            k = i % IN_FLIGHT
            arena.free(ring[k])
            ring[k] = x
        return perf_counter_ns() - start

    return _arena_batch(spread, timed, make)
