"""The FIFO queue that parked allocations wait in.

A parked task waits on a future of its own, kept in a deque in arrival
order beside the mask it asked with. Whoever has something for a waiter (an
element, the news that the pool closed, an error of the allocator) resolves
the first future that is not done yet: the hand-off happens at wake-up time,
so the woken task never races anybody for what it was given (trio's
CapacityLimiter does the same).

A waiter that leaves early (cancelled, timed out) leaves its future behind,
done; resolvers skip done futures. Nothing is removed from the middle of the
deque, so every operation is O(1) amortized: each entry is pushed once and
popped at most once, and ``compact()`` bounds the dead ones still queued.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from .gfp import GFP


class Wake:
    """A message for a waiter that is not an element."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


#: The waiter's deadline passed.
TIMEDOUT = Wake("timed out")
#: The pool was closed.
CLOSED = Wake("closed")


class Fresh:
    """An element the allocator made for a waiter (not from the reserve)."""

    __slots__ = ("element",)

    def __init__(self, element: object) -> None:
        self.element = element


class WaitQueue:
    """Futures of parked waiters, first come first served."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: deque[tuple[asyncio.Future[Any], GFP]] = deque()

    def __len__(self) -> int:
        """Entries queued, dead ones included."""
        return len(self._entries)

    def park(self, loop: asyncio.AbstractEventLoop, mask: GFP) -> asyncio.Future[Any]:
        """Queue a new future at the back of the line."""
        fut: asyncio.Future[Any] = loop.create_future()
        self._entries.append((fut, mask))
        return fut

    def first(self) -> tuple[asyncio.Future[Any], GFP] | None:
        """The longest-waiting live entry, left in place; None if none."""
        entries = self._entries
        while entries:
            entry = entries[0]
            if not entry[0].done():
                return entry
            entries.popleft()
        return None

    def hand(self, value: object) -> bool:
        """Resolve the longest-waiting live future with ``value``.

        Returns False, having handed nothing, when no live future is queued.
        """
        entries = self._entries
        while entries:
            fut = entries.popleft()[0]
            if not fut.done():
                fut.set_result(value)
                return True
        return False

    def fail(self, exc: BaseException) -> bool:
        """Raise ``exc`` in the longest-waiting live waiter; False if none."""
        entry = self.first()
        if entry is None:
            return False
        self._entries.popleft()
        entry[0].set_exception(exc)
        return True

    def compact(self, live: int) -> None:
        """Drop dead futures once they outnumber the ``live`` waiters.

        Called when a waiter leaves early. The rebuild costs O(len), and
        happens only after at least ``len / 2`` departures: O(1) amortized.
        """
        entries = self._entries
        if len(entries) > 2 * live + 16:
            self._entries = deque(e for e in entries if not e[0].done())

    def clear(self) -> None:
        """Forget every entry: only when no live waiter is left, so that
        every entry still queued is dead."""
        self._entries.clear()
