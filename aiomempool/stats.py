"""Snapshots of a pool's counters."""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Any

__all__ = ["WAIT_BUCKETS", "MempoolStats", "SlabStats", "named_pools"]

WAIT_BUCKETS: tuple[float, ...] = (
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, math.inf,
)  # fmt: skip
"""Upper bounds, in seconds, of the buckets of the wait-time histogram in
``MempoolStats.wait_counts``; the last one catches every longer wait."""

# Every live pool that was given a name, for metrics exporters.
_named: weakref.WeakSet[Any] = weakref.WeakSet()


def register(pool: Any) -> None:
    """Remember a named pool (weakly) for ``named_pools()``."""
    _named.add(pool)


def named_pools() -> list[Any]:
    """The live pools that were given a name, sorted by name."""
    return sorted(_named, key=lambda pool: pool.name)


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
    """Waits that ended with an element, counted per bucket of
    ``WAIT_BUCKETS`` (a wait of w seconds falls in the first bucket whose
    bound is >= w); not cumulative."""
    wait_sum_s: float
    """The total of those waits, in seconds."""


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
