"""WaitQueue: a first come, first served line of parked tasks.

trio's ``ParkingLot`` for asyncio: a mechanism that knows nothing of what
its waiters wait for. A parked task waits on a future of its own, kept in a
deque in arrival order beside what it asked with (for a pool, its mask, or
a bulk request). Whoever has something
for a waiter (an element, the news that the pool closed, an error) resolves
the first future that is not done yet: the hand-off happens at wake-up
time, so the woken task never races anybody for what it was given (trio's
CapacityLimiter does the same).

Why not ``asyncio.Condition``: its ``notify()`` must be called with its lock
held, and taking an ``asyncio.Lock`` is a coroutine, so a synchronous
``free()`` could not notify; on 3.10 to 3.12 its ``wait()`` drops a
notification when the woken task is cancelled before it runs; and its
``wait()`` removes its future from the middle of a deque, O(n). The line's
user never awaits inside a critical section, so the loop's thread is the
lock, and the condition is this line of futures, resolved directly.

A waiter that leaves early (cancelled, timed out) leaves its future behind,
done; resolvers skip done futures. Nothing is removed from the middle of the
deque, so every operation is O(1) amortized: each entry is pushed once and
popped at most once, and ``_compact()`` bounds the dead ones still queued.

Invariants:

* ``nparked`` counts the tasks that parked and have not left: the live
  (not done) futures in ``_entries``, plus those cancelled by
  ``task.cancel()`` whose task has not run yet to leave. So it bounds the
  live futures from above, and is exact once every woken task has run.
  ``on_empty()`` is called each time it drops to 0.
* Every queued future belongs to ``_loop``. A waiter whose loop is closed
  is dead: its task never runs again, and a future of a closed loop can be
  neither resolved nor cancelled (both schedule callbacks on the loop). So
  every operation that would resolve, count or queue behind the line first
  asks ``_dead()``, which forgets such a line whole.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["CLOSED", "TIMEDOUT", "Fresh", "WaitQueue", "Wake"]

#: Dead entries tolerated beyond twice the live ones before a compaction.
COMPACT_SLACK = 16


class Wake:
    """A message for a waiter that is not an element."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


#: The waiter's deadline passed.
TIMEDOUT = Wake("timed out")
#: The line was closed.
CLOSED = Wake("closed")


class Fresh:
    """An element made for a waiter by its allocator (not a freed one)."""

    __slots__ = ("element",)

    def __init__(self, element: object) -> None:
        # Any: the pool's element type, read without a cast (a call,
        # compiled) on the path of every wait.
        self.element: Any = element


class WaitQueue:
    """A FIFO line of tasks, each parked on a future of its own.

    Picture a deli counter's tickets: ``park()`` takes a ticket (a future),
    ``hand()`` serves the lowest ticket still held, and a customer who walks
    away (``leave()``) hands back whatever was already put in their hand, for
    the next one.

    ``on_empty`` is called whenever the last live waiter is served or leaves.
    Nothing here awaits; every method runs to completion on the loop's
    thread.
    """

    __slots__ = ("_entries", "loop", "nparked", "on_empty")

    #: Tasks parked and not served or gone yet, as counted (read it, never
    #: write it): cheap, for the pool's gate; those of a closed loop are
    #: counted until an operation of the line forgets them. ``len()`` is
    #: exact.
    nparked: int
    #: The loop of the tasks parked (or last parked), read-only.
    loop: asyncio.AbstractEventLoop | None

    def __init__(self, on_empty: Callable[[], None]) -> None:
        self._entries: deque[tuple[asyncio.Future[Any], object]] = deque()
        self.nparked = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.on_empty = on_empty

    def __len__(self) -> int:
        """Tasks parked and not served or gone (none of a closed loop)."""
        if self.nparked:
            self._dead()
        return self.nparked

    def __repr__(self) -> str:
        return f"<WaitQueue waiters={self.nparked}>"

    def accepts(self, loop: asyncio.AbstractEventLoop) -> bool:
        """True if a task of ``loop`` may wait here: nobody waits, or the
        tasks that do are of ``loop`` too (or of a closed loop: dead)."""
        return not self.nparked or self.loop is loop or self._dead()

    def park(self, ask: object) -> asyncio.Future[Any]:
        """Queue the calling task at the back of the line; await the future:
        it resolves to what the task is handed.

        The future is of the loop the tasks parked already wait on (a task
        of another loop gets asyncio's RuntimeError at its await, and leaves
        by ``leave()``), or of the running loop if nobody waits (or only the
        tasks of a closed loop: forgotten now).
        """
        loop = self.loop
        if not self.nparked or loop is None or self._dead():
            loop = self.loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._entries.append((fut, ask))
        self.nparked += 1
        return fut

    def has_live(self) -> bool:
        """True if a live future is queued; drops dead ones from the head."""
        entries = self._entries
        if not entries:
            return False
        if self._dead():
            return False
        while entries:
            if not entries[0][0].done():
                return True
            entries.popleft()
        return False

    def asks(self) -> list[object]:
        """What every live waiter asked with, in line order (for stats)."""
        if self.nparked:
            self._dead()
        return [ask for fut, ask in self._entries if not fut.done()]

    def first(self) -> tuple[asyncio.Future[Any], object] | None:
        """The first live waiter's future and what it asked with, or None."""
        return self._entries[0] if self.has_live() else None

    def hand(self, value: object) -> bool:
        """Resolve the first live future with ``value``; False if none."""
        entries = self._entries
        if not entries:
            return False
        if self._dead():
            return False
        while entries:
            fut = entries.popleft()[0]
            if not fut.done():
                fut.set_result(value)
                self._served()
                return True
        return False

    def fail_first(self, exc: BaseException) -> bool:
        """Raise ``exc`` in the first live waiter; False if none."""
        if not self.has_live():
            return False
        self._entries.popleft()[0].set_exception(exc)
        self._served()
        return True

    def expire(self, fut: asyncio.Future[Any]) -> None:
        """A waiter's deadline: resolve its future with TIMEDOUT, unless it
        was resolved already (then it keeps what it was handed)."""
        if not fut.done() and not fut.get_loop().is_closed():
            fut.set_result(TIMEDOUT)
            self._served()

    def leave(self, fut: asyncio.Future[Any]) -> object | None:
        """The task of ``fut`` leaves by an exception (cancellation, mostly,
        or its coroutine closed by the garbage collector once its loop is
        closed). Returns what it was handed and must be passed on: an
        element (unwrapped from ``Fresh``), or None.

        Passing on what a leaver was handed is what makes a cancellation
        arriving after the wake-up lose nothing (where asyncio.Condition on
        3.10-3.12 drops the notification).
        """
        loop = fut.get_loop()
        dead = loop.is_closed()
        if dead:
            if loop is self.loop:
                self._dead()  # forgotten now, if not before
        elif not fut.done():
            fut.cancel()  # thrown in by something else: make it dead
        if not fut.done() or fut.cancelled():
            if not dead:  # a dead line is no longer counted
                self._served()
                self._compact()
            return None
        if fut.exception() is not None:
            return None
        got = fut.result()
        if type(got) is Fresh:
            element: object = got.element
            return element
        return None if isinstance(got, Wake) else got

    def close(self) -> None:
        """Tell every waiter the line closed (``CLOSED``)."""
        while self.hand(CLOSED):
            pass

    def _served(self) -> None:
        """One live future less: resolved, or its task left."""
        self.nparked -= 1
        if not self.nparked:
            self._entries.clear()  # every entry still queued is dead
            self.on_empty()

    def _dead(self) -> bool:
        """True if the waiters are of a loop that is closed now: then the
        whole line is forgotten. Their futures stay pending; a task closed
        later by the garbage collector leaves by ``leave()``."""
        loop = self.loop
        if loop is None or not self.nparked or not loop.is_closed():
            return False
        self._entries = deque()
        self.nparked = 0
        self.on_empty()
        return True

    def _compact(self) -> None:
        """Drop dead entries once they outnumber the live ones.

        The rebuild costs O(len), and happens only after at least
        ``len / 2`` departures: O(1) amortized.
        """
        entries = self._entries
        if len(entries) > 2 * self.nparked + COMPACT_SLACK:
            self._entries = deque(e for e in entries if not e[0].done())
