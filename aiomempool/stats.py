"""Snapshots: of a pool's counters, a cache's, and an element out."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = [
    "WAIT_BUCKETS",
    "ArenaStats",
    "MempoolStats",
    "Outstanding",
    "SizeClassStats",
    "SlabStats",
]

T = TypeVar("T")

WAIT_BUCKETS: tuple[float, ...] = (
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, math.inf,
)  # fmt: skip
"""Upper bounds, in seconds, of the buckets of the wait-time histogram.

They are the buckets of ``MempoolStats.wait_counts`` and of the Prometheus
histogram; the last one, infinity, catches every longer wait.
"""


@dataclass(frozen=True)
class MempoolStats:
    """What a pool has done, at one moment; ``pool.stats()`` makes one.

    Counters only grow; gauges (``curr_nr``, ``waiters``, ``outstanding``)
    are the state when the snapshot was taken.
    """

    name: str | None
    """The pool's name, or None."""
    min_nr: int
    """Elements the reserve guarantees."""
    curr_nr: int
    """Elements in the reserve now."""
    waiters: int
    """Tasks waiting in ``alloc()`` now."""
    allocs: int
    """Elements handed out by ``alloc()`` and ``alloc_nowait()``."""
    frees: int
    """Elements given back by ``free()`` (``None`` not counted)."""
    outstanding: int
    """Elements handed out and not yet freed: ``allocs - frees``."""
    reserve_hits: int
    """Elements handed out from the reserve, hand-offs to waiters included."""
    alloc_fn_failures: int
    """Calls of ``alloc_fn`` that gave nothing (``None`` or ``MemoryError``)."""
    waits: int
    """Allocations that had to wait, each counted once."""
    timeouts: int
    """Allocations that gave up when their ``timeout`` elapsed."""
    max_wait_s: float
    """The longest wait, in seconds, that ended with an element."""
    wait_counts: tuple[int, ...]
    """Waits that ended with an element, counted per bucket of ``WAIT_BUCKETS``.

    A wait of w seconds falls in the first bucket whose bound is >= w; the
    counts are not cumulative.
    """
    wait_sum_s: float
    """The total of those waits, in seconds."""

    def __str__(self) -> str:
        """The snapshot on one line, for a log: ``print(f"stats:
        {pool.stats()}")``. The histogram is left out; ``max_wait_ms`` is
        the longest wait."""
        name = f"pool={self.name} " if self.name is not None else ""
        return (
            f"{name}allocs={self.allocs} frees={self.frees} "
            f"outstanding={self.outstanding} curr_nr={self.curr_nr} "
            f"min_nr={self.min_nr} waiters={self.waiters} "
            f"reserve_hits={self.reserve_hits} "
            f"alloc_fn_failures={self.alloc_fn_failures} waits={self.waits} "
            f"timeouts={self.timeouts} max_wait_ms={self.max_wait_s * 1e3:.1f}"
        )


@dataclass(frozen=True)
class SlabStats:
    """What a ``SlabCache`` holds and has done, at one moment.

    ``cache.stats()`` makes one. Counters (``allocs``, ``frees``,
    ``alloc_failures``) and ``high_water`` only grow; the rest is the state
    when the snapshot was taken.
    """

    name: str | None
    """The cache's name, or None."""
    object_size: int
    """Bytes in each object."""
    slabs: int
    """Slabs held now."""
    objects_in_use: int
    """Objects out now: every object in a slab minus those on the free list."""
    objects_free: int
    """Objects on the free list now."""
    bytes_reserved: int
    """Bytes held in slabs: ``(objects_in_use + objects_free) * object_size``."""
    high_water: int
    """The most objects ever out at once."""
    allocs: int
    """Objects handed out by ``alloc()``."""
    frees: int
    """Objects given back by ``free()``."""
    alloc_failures: int
    """Calls of ``alloc()`` that returned None."""


@dataclass(frozen=True)
class SizeClassStats:
    """One size class of a ``BufferArena``, at one moment."""

    size: int
    """Bytes in each buffer of the class (what ``good_size()`` says)."""
    pool: MempoolStats
    """Its allocations, reserve and waits (``waiters``: the arena's tasks
    waiting for a buffer of this class)."""
    slab: SlabStats
    """Its slabs: objects in use and free, bytes held."""


@dataclass(frozen=True)
class ArenaStats:
    """What a ``BufferArena`` holds and has done, at one moment.

    ``arena.stats()`` makes one: the budget's gauges, the classes added up
    (``total``) and each class (``classes``, smallest first).
    """

    name: str | None
    """The arena's name, or None."""
    max_bytes: int
    """The budget: bytes of slabs of all classes together."""
    headroom_bytes: int
    """Bytes beyond ``max_bytes`` that ``GFP.HIGH`` (``GFP_ATOMIC``) may
    grow slabs into."""
    bytes_reserved: int
    """Bytes held in slabs now, all classes."""
    high_water_bytes: int
    """The most bytes ever held in slabs at once."""
    bytes_in_use: int
    """Bytes of the buffers out with callers now, whole slots counted."""
    bytes_requested: int
    """Bytes callers asked for, of the buffers out now: ``bytes_in_use``
    minus this is the waste of rounding up to a class."""
    waiters: int
    """Tasks waiting in ``alloc()`` or ``alloc_bulk()`` now."""
    total: MempoolStats
    """Every class added up (``min_nr`` and ``curr_nr`` summed, the longest
    wait their maximum, ``name`` the arena's)."""
    classes: tuple[SizeClassStats, ...]
    """Each class, smallest first."""


@dataclass(frozen=True)
class Outstanding(Generic[T]):
    """An element out with a caller: what ``Mempool.outstanding()`` lists."""

    element: T
    """The element, as the caller holds it."""
    allocated_at: str
    """Where it was allocated: the innermost calls outside aiomempool.

    Formatted as a traceback prints them.
    """
    age_s: float
    """Seconds since it was allocated."""
