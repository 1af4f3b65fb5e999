"""Snapshots of a pool's counters."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MempoolStats"]


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
