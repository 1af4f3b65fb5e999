"""Snapshots of a pool's counters."""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Any

__all__ = ["WAIT_BUCKETS", "MempoolStats", "SlabStats", "named_pools"]

#: Upper bounds, in seconds, of the buckets of the wait-time histogram in
#: ``MempoolStats.wait_counts``; the last one catches every longer wait.
WAIT_BUCKETS: tuple[float, ...] = (
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, math.inf,
)  # fmt: skip

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

    #: The pool's name, or None.
    name: str | None
    #: Elements the reserve guarantees.
    min_nr: int
    #: Elements in the reserve now.
    curr_nr: int
    #: Tasks waiting in ``alloc()`` now.
    waiters: int
    #: Elements handed out by ``alloc()`` and ``alloc_nowait()``.
    allocs: int
    #: Elements given back by ``free()`` (``None`` not counted).
    frees: int
    #: Elements handed out and not yet freed: ``allocs - frees``.
    outstanding: int
    #: Elements handed out from the reserve, hand-offs to waiters included.
    reserve_hits: int
    #: Calls of ``alloc_fn`` that gave nothing (``None`` or ``MemoryError``).
    alloc_fn_failures: int
    #: Allocations that had to wait, each counted once.
    waits: int
    #: Allocations that gave up when their ``timeout`` elapsed.
    timeouts: int
    #: The longest wait, in seconds, that ended with an element.
    max_wait_s: float
    #: Waits that ended with an element, counted per bucket of
    #: ``WAIT_BUCKETS`` (a wait of w seconds falls in the first bucket whose
    #: bound is >= w); not cumulative.
    wait_counts: tuple[int, ...]
    #: The total of those waits, in seconds.
    wait_sum_s: float


@dataclass(frozen=True)
class SlabStats:
    """What a ``SlabCache`` holds and has done, at one moment.

    ``cache.stats()`` makes one. Counters (``allocs``, ``frees``,
    ``alloc_failures``) and ``high_water`` only grow; the rest is the state
    when the snapshot was taken.
    """

    #: The cache's name, or None.
    name: str | None
    #: Bytes in each object.
    object_size: int
    #: Slabs held now.
    slabs: int
    #: Objects out now: every object in a slab minus those on the free list.
    objects_in_use: int
    #: Objects on the free list now.
    objects_free: int
    #: Bytes held in slabs: ``(objects_in_use + objects_free) * object_size``.
    bytes_reserved: int
    #: The most objects ever out at once.
    high_water: int
    #: Objects handed out by ``alloc()``.
    allocs: int
    #: Objects given back by ``free()``.
    frees: int
    #: Calls of ``alloc()`` that returned None.
    alloc_failures: int
