"""The FIFO queue that parked allocations wait in.

A parked task waits on a future of its own, kept in a deque in arrival
order. Whoever has something for a waiter (an element, a reason to retry the
backing allocator, the news that the pool closed) resolves the first future
that is not done yet: the hand-off happens at wake-up time, so the woken
task never races anybody for what it was given (trio's CapacityLimiter
does the same).

A waiter that leaves early (cancelled, timed out) leaves its future behind,
done; resolvers skip done futures. Nothing is removed from the middle of the
deque, so every operation is O(1) amortized: each future is pushed once and
popped at most once, and ``compact()`` bounds the dead ones still queued.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any


class Wake:
    """A message for a waiter that is not an element."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


#: The backing allocator may succeed now: run the kernel's order again.
RETRY = Wake("retry")
#: The waiter's deadline passed.
TIMEDOUT = Wake("timed out")
#: The pool was closed.
CLOSED = Wake("closed")


class WaitQueue:
    """Futures of parked waiters, first come first served."""

    __slots__ = ("_futs",)

    def __init__(self) -> None:
        self._futs: deque[asyncio.Future[Any]] = deque()

    def park(self, loop: asyncio.AbstractEventLoop, front: bool) -> asyncio.Future[Any]:
        """Queue a new future at the back, or at the front for a waiter
        that was already first in line and only stepped out to retry."""
        fut: asyncio.Future[Any] = loop.create_future()
        if front:
            self._futs.appendleft(fut)
        else:
            self._futs.append(fut)
        return fut

    def hand(self, value: object) -> bool:
        """Resolve the longest-waiting live future with ``value``.

        Returns False, having handed nothing, when no waiter is parked.
        """
        futs = self._futs
        while futs:
            fut = futs.popleft()
            if not fut.done():
                fut.set_result(value)
                return True
        return False

    def hand_all(self, value: object) -> None:
        """Resolve every live future with ``value``."""
        while self.hand(value):
            pass

    def compact(self, live: int) -> None:
        """Drop dead futures once they outnumber the ``live`` waiters.

        Called when a waiter leaves early. The rebuild costs O(len), and
        happens only after at least ``len / 2`` departures: O(1) amortized.
        """
        futs = self._futs
        if len(futs) > 2 * live + 16:
            self._futs = deque(f for f in futs if not f.done())

    def clear(self) -> None:
        """Forget every future: only to be called when no waiter is left,
        when every future still queued is dead."""
        self._futs.clear()
