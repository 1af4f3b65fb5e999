"""Waiting in a pool: the FIFO line of parked allocations, and its rules.

A parked task waits on a future of its own, kept in a deque in arrival
order beside the mask it asked with. Whoever has something for a waiter (an
element, the news that the pool closed, an error of the allocator) resolves
the first future that is not done yet: the hand-off happens at wake-up time,
so the woken task never races anybody for what it was given (trio's
CapacityLimiter does the same).

Why not ``asyncio.Condition``: its ``notify()`` must be called with its lock
held, and taking an ``asyncio.Lock`` is a coroutine, so a synchronous
``free()`` could not notify; on 3.10 to 3.12 its ``wait()`` drops a
notification when the woken task is cancelled before it runs; and its
``wait()`` removes its future from the middle of a deque, O(n). The pool's
critical sections never await, so the loop's thread is its lock, and the
condition is this line of futures, resolved directly.

A waiter that leaves early (cancelled, timed out) leaves its future behind,
done; resolvers skip done futures. Nothing is removed from the middle of the
deque, so every operation is O(1) amortized: each entry is pushed once and
popped at most once, and ``_compact()`` bounds the dead ones still queued.

Invariants:

* ``_nparked`` counts the tasks that parked and have not left: the live
  (not done) futures in ``_entries``, plus those cancelled by
  ``task.cancel()`` whose task has not run yet to leave. So it bounds the
  live futures from above, and is exact once every woken task has run;
  ``_in_line()`` tells whether a live one is queued.
* ``_gate == (_closed or _nparked > 0 or the reserve below min_nr or debug
  mode)``: the one test that sends the pool's hot paths to the slow ones,
  where closing, waiting, refilling and debugging are handled (see
  ``Mempool._regate()``).
* No new caller takes anything while a live future is queued: nobody
  barges.
* Every queued future belongs to ``_loop``. A waiter whose loop is closed
  is dead: its task never runs again, and a future of a closed loop can be
  neither resolved nor cancelled (both schedule callbacks on the loop). So
  every path that would resolve, count or queue behind the line first asks
  ``_line_is_dead()``, which forgets such a line whole; the element that
  would have gone to a dead waiter goes on to the reserve or ``free_fn``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from contextlib import suppress
from typing import TYPE_CHECKING, Any

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


class Waiting:
    """The waiting half of a Mempool: its line of parked tasks."""

    __slots__ = (
        "_closed",
        "_entries",
        "_gate",
        "_loop",
        "_nparked",
        "_retry_interval",
        "_retry_timer",
    )  # fmt: skip

    if TYPE_CHECKING:  # provided by Mempool

        def _call_alloc_fn(self, gfp_mask: GFP) -> Any: ...
        def _put(self, element: Any) -> None: ...
        def _regate(self) -> None: ...

    def __init__(self, retry_interval: float) -> None:
        self._entries: deque[tuple[asyncio.Future[Any], GFP]] = deque()
        self._nparked = 0
        self._gate = False
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._retry_interval = retry_interval
        self._retry_timer: asyncio.TimerHandle | None = None

    def _park(self, gfp_mask: GFP) -> asyncio.Future[Any]:
        """Queue the calling task at the back of the line.

        The caller has found the reserve empty, with no await since.
        """
        if self._nparked and not self._line_is_dead():
            # Tasks wait already, on self._loop: a task of another loop that
            # awaits this future gets asyncio's RuntimeError ("attached to a
            # different loop") at its await, and leaves by _left_early().
            loop = self._loop
            assert loop is not None
        else:
            loop = self._loop = asyncio.get_running_loop()
            self._retry_timer = loop.call_later(
                self._retry_interval, self._retry_expired
            )
        fut: asyncio.Future[Any] = loop.create_future()
        self._entries.append((fut, gfp_mask))
        self._nparked += 1
        self._gate = True
        return fut

    def _line_is_dead(self) -> bool:
        """True if tasks were parked on a loop that is closed now: then the
        whole line is forgotten (see the invariants above)."""
        loop = self._loop
        if not self._nparked or loop is None or not loop.is_closed():
            return False
        self._forget_line()
        return True

    def _forget_line(self) -> None:
        """Drop every waiter of a closed loop: their tasks never run again.
        Their futures stay pending; a task closed later by the garbage
        collector leaves by _left_early(), which touches none of this."""
        self._entries = deque()
        self._nparked = 0
        self._stop_retry_timer()
        self._regate()

    def _stop_retry_timer(self) -> None:
        timer, self._retry_timer = self._retry_timer, None
        if timer is not None:
            with suppress(RuntimeError):  # uvloop's, once its loop is closed
                timer.cancel()

    def _in_line(self) -> bool:
        """True if a live future is queued; drops dead ones from the head."""
        entries = self._entries
        if entries and self._line_is_dead():
            return False
        while entries:
            if not entries[0][0].done():
                return True
            entries.popleft()
        return False

    def _hand(self, value: object) -> bool:
        """Resolve the first live future with ``value``; False if none."""
        entries = self._entries
        if entries and self._line_is_dead():
            return False
        while entries:
            fut = entries.popleft()[0]
            if not fut.done():
                fut.set_result(value)
                self._unparked()
                return True
        return False

    def _unparked(self) -> None:
        """One live future less: resolved, or its task left."""
        self._nparked -= 1
        if not self._nparked:
            self._regate()
            self._entries.clear()  # every entry still queued is dead
            self._stop_retry_timer()

    def _close_line(self) -> None:
        """Tell every parked task the pool closed; stop the retry timer."""
        while self._hand(CLOSED):
            pass
        self._stop_retry_timer()

    def _expire(self, fut: asyncio.Future[Any]) -> None:
        """A waiter's timeout: resolve its future, if nobody has yet."""
        if not fut.done():
            fut.set_result(TIMEDOUT)
            self._unparked()

    def _left_early(self, fut: asyncio.Future[Any]) -> None:
        """A waiter leaves by an exception (cancellation, mostly).

        Whatever it was handed is passed on, so that a cancellation arriving
        after the wake-up (where asyncio.Condition on 3.10-3.12 drops the
        notification) loses nothing. A task of a closed loop, closed by the
        garbage collector, leaves here too: its line is dead, forgotten
        already or now, and only what it was handed before the loop closed
        goes back.
        """
        loop = fut.get_loop()
        dead = loop.is_closed()
        if dead:
            if loop is self._loop:
                self._line_is_dead()  # forgotten now, if not before
        elif not fut.done():
            fut.cancel()  # thrown in by something else: make it dead
        if not fut.done() or fut.cancelled():
            if not dead:  # a dead line is no longer counted
                self._unparked()
                self._compact()
            return
        if fut.exception() is not None:
            return
        got = fut.result()
        if type(got) is Fresh:
            self._put(got.element)
        elif not isinstance(got, Wake):
            self._put(got)

    def _compact(self) -> None:
        """Drop dead entries once they outnumber the live ones.

        The rebuild costs O(len), and happens only after at least
        ``len / 2`` departures: O(1) amortized.
        """
        entries = self._entries
        if len(entries) > 2 * self._nparked + 16:
            self._entries = deque(e for e in entries if not e[0].done())

    def _retry(self) -> None:
        """The backing allocator may succeed now: ask it for the parked
        tasks, first come first served, each with its own mask, until it
        fails.

        In the kernel every sleeper retries for itself when it wakes; here
        the pool retries on behalf of the first in line and hands it the
        result, so nobody can overtake it between its wake-up and its try.
        An error of alloc_fn is raised in that waiter, whose call it was.
        """
        if self._line_is_dead():
            return
        entries = self._entries
        while entries:
            fut, gfp_mask = entries[0]
            if fut.done():
                entries.popleft()
                continue
            try:
                element = self._call_alloc_fn(gfp_mask)
            except Exception as exc:
                if not fut.done():  # alloc_fn may have re-entered the pool
                    entries.popleft()
                    fut.set_exception(exc)
                    self._unparked()
                return
            if element is None:
                return
            # alloc_fn may have re-entered the pool: hand to whoever is
            # first now, or put the element back if nobody is left.
            if not self._hand(Fresh(element)):
                self._put(element)

    def _retry_expired(self) -> None:
        # The kernel's 5-second timeout: the allocator may have recovered
        # although nothing came back to this pool.
        self._retry_timer = None
        self._retry()
        if self._nparked and self._loop is not None and self._retry_timer is None:
            self._retry_timer = self._loop.call_later(
                self._retry_interval, self._retry_expired
            )
