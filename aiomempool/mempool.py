"""Mempool: the kernel's mm/mempool.c for asyncio.

A pool keeps a reserve of ``min_nr`` preallocated elements so that an
allocation can always make progress when the backing allocator fails.

Locking: the kernel guards the reserve with a spinlock; here the event
loop's single thread is the lock. A critical section is code with no
``await`` in it, and every method below that touches the reserve or the
wait line runs to completion without awaiting.

Invariants:

* ``len(self._elements) <= self._min_nr`` (``resize()`` shrinking frees the
  surplus at once). ``_add_element()`` and ``_remove_element()`` are the
  only code that changes the reserve after construction (the kernel's
  ``add_element()`` and ``remove_element()``); pools that must know what
  sits in their reserve extend those two.
* A task waits only while the reserve is empty: it parks right after
  finding the reserve empty, with no await in between, and
  ``_give_back()`` hands an element to the first waiter before it would
  add to the reserve. So a free below ``min_nr`` always goes to the longest
  waiter, and a free into a full reserve (to ``free_fn``) never happens
  while a task waits.
* No new caller takes anything while a live waiter is queued: nobody
  barges (``_line.has_live()`` is asked first).
* ``_gate`` is False only in the steady state: open, nobody parked, the
  reserve full, no debug mode. The hot paths of ``alloc()``,
  ``alloc_nowait()`` and ``free()`` test it alone. Anyone may raise it;
  only ``_regate()`` lowers it. A raised gate is always safe: the slow
  paths are correct in every state.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Generator, Iterable
from contextlib import suppress
from types import TracebackType
from typing import (
    TYPE_CHECKING,
    Any,
    Literal,
    TypeVar,
    cast,
    overload,
)

from ._checks import check_nr, check_timeout, debug_enabled, running_loop, short_repr
from ._lender import Lender
from ._native import Native
from ._ratelimit import RateLimitedWarning
from ._waitqueue import CLOSED, TIMEDOUT, Fresh, WaitQueue, Wake
from .debug import PoolDebug
from .errors import (
    AllocTimeoutError,
    InvalidFreeError,
    PoolClosedError,
    PoolExhaustedError,
)
from .gfp import (
    GFP,
    GFP_KERNEL,
    GFP_NOWAIT,
    KERNEL_MASK,
    NOWAIT_MASK,
    MaskText,
    decode_mask,
)
from .gfp import _Mask as Mask
from .stats import WAIT_BUCKETS, MempoolStats, Outstanding

if TYPE_CHECKING:
    from typing import Generic as _Generic
else:  # a base an extension type can take: see _generic.py
    from ._generic import Generic as _Generic

__all__ = ["ElementContext", "Mempool", "named_pools"]

T = TypeVar("T")
P = TypeVar("P", bound="Mempool[Any]")

#: The mask that waits, as the overloads of alloc() see it.
Kernel = Literal[GFP.DIRECT_RECLAIM]
#: What a lender's ``_first_try()`` returns when the caller must wait (in
#: its alloc()): never an element, which is the caller's object.
#: Typed Any, so that comparing it with an element needs no cast (a call,
#: compiled).
WAIT: Any = Wake("wait")

# Every live pool that was given a name, for metrics exporters.
_named: weakref.WeakSet[Mempool[Any]] = weakref.WeakSet()
# Called with every pool built, while aiomempool.testing watches (else None).
_created: Callable[[Mempool[Any]], None] | None = None


def named_pools() -> list[Mempool[Any]]:
    """The live pools that were given a name, sorted by name."""
    return sorted(_named, key=lambda pool: pool.name or "")


class _Bulk:
    """A bulk request in the line: how many elements, with which mask."""

    __slots__ = ("count", "mask")

    def __init__(self, count: int, mask: Mask) -> None:
        self.count = count
        self.mask = mask


class _Handful:
    """The elements handed to a bulk request at once, and how many of them
    came from the reserve."""

    __slots__ = ("elements", "from_reserve")

    def __init__(self, elements: list[Any], from_reserve: int) -> None:
        self.elements = elements
        self.from_reserve = from_reserve


def _weakly(method: Callable[[], None]) -> Callable[[], None]:
    """``method``, called through a weak reference to its object."""
    ref = weakref.WeakMethod(method)

    def call() -> None:
        bound = ref()
        if bound is not None:
            bound()

    return call


class Mempool(Lender, _Generic[T]):
    """A reserve of ``min_nr`` elements in front of a backing allocator.

    ``alloc_fn(gfp_mask, pool_data)`` makes an element, or returns ``None``
    (or raises ``MemoryError``) when it cannot; ``free_fn(element,
    pool_data)`` disposes of one. The constructor calls
    ``alloc_fn(GFP_KERNEL, pool_data)`` ``min_nr`` times; if one fails it
    frees those already made and raises ``MemoryError``. It needs no running
    event loop.

    Picture a cloakroom with ``min_nr`` spare coats on hooks: a guest first
    asks the tailor (``alloc_fn``) for a new coat; if the tailor has none, a
    spare is handed over; when the hooks are bare the guest queues, and every
    coat brought back goes to the first guest in the queue.

    Beyond the kernel's guarantees: waiting is first come, first served with
    no barging; a cancelled or timed-out waiter never loses an element or a
    wake-up; ``alloc()`` takes a ``timeout``; ``stats()`` counts everything.

    ``debug=True`` turns on debug mode (``debug=None``, the default: on if
    the environment variable ``AIOMEMPOOL_DEBUG`` is "1", "true" or "yes"
    when the pool is built): the reserve's bytes are poisoned and checked,
    double frees name where the first one was, ``outstanding()`` lists where
    each element out was allocated, ``close()`` logs the leaks, and a
    memoryview is lent as a fresh view that ``free()`` releases. Every call
    then takes the slow paths; see ``aiomempool.debug``.

    Example:
        ```python
        pool = Mempool(16, lambda gfp, size: bytearray(size),
                       lambda buf, size: None, 4096)
        async with pool.element() as buf:
            buf[:5] = b"hello"
        ```

    Raises:
        TypeError: ``min_nr`` is not an int; ``alloc_fn`` or ``free_fn`` is
            not callable; ``name`` is not a str; ``debug`` is not a bool;
            ``retry_interval`` is not a number.
        ValueError: ``min_nr < 1``; ``retry_interval`` is not positive.
        MemoryError: ``alloc_fn`` could not make ``min_nr`` elements.
    """

    __slots__ = (
        "__weakref__",
        "_alloc_fn",
        "_alloc_fn_failures",
        "_allocs",
        "_bulk_waiters",
        "_closed",
        "_debug",
        "_elements",
        "_faults",
        "_free_fn",
        "_frees",
        "_gate",
        "_line",
        "_loop",
        "_max_wait_s",
        "_min_nr",
        "_name",
        "_pool_data",
        "_reserve_hits",
        "_retry_interval",
        "_retry_timer",
        "_timeouts",
        "_wait_counts",
        "_wait_sum_s",
        "_waits",
        "_warn",
    )  # fmt: skip

    def __init__(
        self,
        min_nr: int,
        alloc_fn: Callable[[GFP, Any], T | None],
        free_fn: Callable[[T, Any], object],
        pool_data: Any = None,
        *,
        name: str | None = None,
        retry_interval: float = 5.0,
        debug: bool | None = None,
    ) -> None:
        check_nr("min_nr", min_nr)
        for arg, fn in (("alloc_fn", alloc_fn), ("free_fn", free_fn)):
            if not callable(fn):
                raise TypeError(f"{arg} must be callable, not {type(fn).__name__}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, not {type(name).__name__}")
        if type(retry_interval) is bool or not isinstance(retry_interval, (int, float)):
            raise TypeError(
                "retry_interval must be a number of seconds, not "
                f"{type(retry_interval).__name__}"
            )
        if not retry_interval > 0:  # also refuses NaN
            raise ValueError(
                f"retry_interval must be > 0 seconds, got {retry_interval}"
            )
        debug = debug_enabled(debug)
        self._min_nr = min_nr
        self._alloc_fn = alloc_fn
        self._free_fn = free_fn
        self._pool_data = pool_data
        self._name = name
        # The line calls the pool back through a weak reference: a pool
        # must die by reference count, as its users expect of a named one.
        self._line = WaitQueue(_weakly(self._line_emptied))
        # Bulk requests queued and not served, timed out or gone: a hint
        # (reset when the line empties) that _give_back() must ask the line
        # who is first rather than hand on what comes back.
        self._bulk_waiters = 0
        self._retry_interval = float(retry_interval)
        self._retry_timer: asyncio.TimerHandle | None = None
        self._gate = True  # lowered by _regate() once the reserve is made
        self._closed = False
        # The pool's loop, for free_threadsafe() and the leak sampler: the
        # one it was built in, entered with ``async with``, or last waited
        # in (the only three writers).
        self._loop: asyncio.AbstractEventLoop | None = running_loop()
        self._warn = RateLimitedWarning()
        self._allocs = self._frees = self._reserve_hits = 0
        self._alloc_fn_failures = self._waits = self._timeouts = 0
        self._max_wait_s = 0.0
        self._wait_counts = [0] * len(WAIT_BUCKETS)
        self._wait_sum_s = 0.0
        # alloc_fn as given, while aiomempool.testing.fail_alloc() makes it
        # fail (then _alloc_fn is its failing wrapper, and the gate stays
        # up so that every allocation goes through it).
        self._faults: Callable[[GFP, Any], T | None] | None = None
        self._elements: list[T] = []
        # Before the reserve is made: debug mode poisons what enters it.
        self._debug: PoolDebug[T] | None = self._make_debug() if debug else None
        for element in self._prealloc(min_nr):
            self._add_element(element)
        if name is not None:
            _named.add(self)  # for metrics exporters
        if _created is not None:
            _created(self)  # aiomempool.testing's leak check

    def _make_debug(self, *, strict: bool = False, zero: bool = False) -> PoolDebug[T]:
        """The debug service, given what it needs of this pool; pools of
        known allocators pass ``strict`` and ``zero`` (see PoolDebug)."""
        return PoolDebug(
            self._elements,
            describe=self._describe,
            give_back=weakref.WeakMethod(self._give_back),
            owner=weakref.ref(self),
            strict=strict,
            zero=zero,
        )

    # -- introspection -----------------------------------------------------

    @property
    def min_nr(self) -> int:
        """Elements the reserve guarantees."""
        return self._min_nr

    @property
    def curr_nr(self) -> int:
        """Elements in the reserve now."""
        return len(self._elements)

    @property
    def waiters(self) -> int:
        """Tasks waiting in ``alloc()`` now, not yet handed anything.

        Tasks of a closed loop are not counted: they never run again.
        """
        return len(self._line)

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
        return self._closed

    @property
    def name(self) -> str | None:
        """The name given at construction, for logs and metrics."""
        return self._name

    def stats(self) -> MempoolStats:
        """A frozen snapshot of the pool's counters and gauges."""
        return MempoolStats(
            name=self._name,
            min_nr=self._min_nr,
            curr_nr=len(self._elements),
            waiters=len(self._line),
            allocs=self._allocs,
            frees=self._frees,
            outstanding=self._allocs - self._frees,
            reserve_hits=self._reserve_hits,
            alloc_fn_failures=self._alloc_fn_failures,
            waits=self._waits,
            timeouts=self._timeouts,
            max_wait_s=self._max_wait_s,
            wait_counts=tuple(self._wait_counts),
            wait_sum_s=self._wait_sum_s,
        )

    def outstanding(self) -> list[Outstanding[T]]:
        """Every element out with a caller now, oldest first (debug mode).

        Each entry tells where the element was allocated and how long ago.

        Raises:
            RuntimeError: the pool is not in debug mode, where allocation
                sites are recorded.
        """
        if self._debug is None:
            raise RuntimeError(
                f"{self!r}: outstanding() needs debug mode: build the pool with "
                "debug=True, or with AIOMEMPOOL_DEBUG=1 in the environment"
            )
        return self._debug.outstanding()

    def __repr__(self) -> str:
        name = f" {self._name!r}" if self._name is not None else ""
        state = " closed" if self._closed else ""
        state += " debug" if self._debug is not None else ""
        return (
            f"<Mempool{name}{state} min_nr={self._min_nr} "
            f"curr_nr={len(self._elements)} waiters={len(self._line)}>"
        )

    # -- allocation --------------------------------------------------------

    @overload
    async def alloc(
        self, gfp_mask: Kernel = ..., *, timeout: float | None = ...
    ) -> T: ...
    @overload
    async def alloc(
        self, gfp_mask: GFP | int, *, timeout: float | None = ...
    ) -> T | None: ...

    async def alloc(
        self, gfp_mask: GFP | int = GFP_KERNEL, *, timeout: float | None = None
    ) -> T | None:
        """Allocate an element, waiting for one if ``gfp_mask`` allows.

        The kernel's order: ``alloc_fn`` with ``GFP.DIRECT_RECLAIM`` taken
        out of the mask; then an element of the reserve; then, if the first
        try was so restricted, ``alloc_fn`` with the full mask. If that
        fails too, a mask without ``DIRECT_RECLAIM`` returns ``None``; with
        it, the task waits, first come first served, until an element is
        freed, or until the allocator, retried for the first in line when
        it may succeed again, makes one. While tasks wait, a new caller
        queues behind them (or gets ``None`` if it may not wait): nobody
        overtakes a waiter.

        Awaits only when it has to wait. Cancelling it never loses an
        element: one handed to a cancelled task goes to the next waiter or
        back to the reserve. With the default mask (or ``GFP_KERNEL``) it
        never returns ``None``, and is typed so.

        Raises:
            PoolClosedError: the pool is closed, or was closed while waiting.
            AllocTimeoutError: a ``TimeoutError``; ``timeout`` seconds passed
                without an element.
            TypeError: ``gfp_mask`` is not a ``GFP`` or an int; ``timeout``
                is not a number.
            ValueError: ``gfp_mask`` holds ``GFP.ZERO`` or unknown bits, or
                ``timeout`` is negative.
            RuntimeError: tasks of another event loop are waiting.
        """
        # Typed by annotation: a cast would be a call, compiled.
        element: T | None = self._first_try(None, gfp_mask, timeout)
        if element is not WAIT:
            return element
        # Wait in line until handed an element: _first_try() checked the
        # arguments and found the reserve empty, with no await since.
        # Inlined rather than a coroutine of its own: a contended pool goes
        # through here per call.
        mask = KERNEL_MASK if gfp_mask is GFP_KERNEL else decode_mask(gfp_mask)
        line = self._line
        fut = self._park(mask.full)
        handle = None
        if timeout is not None:
            handle = fut.get_loop().call_later(timeout, line.expire, fut)
        # uvloop's loop.time() ticks in milliseconds: fine for deadlines,
        # too coarse to measure waits.
        start = time.perf_counter()
        try:
            got = await fut
        except BaseException as exc:
            passed_on = line.leave(fut)
            if passed_on is not None:
                self._received(cast(T, passed_on))
                self._give_back(cast(T, passed_on))
            if type(exc) is RuntimeError and fut.get_loop() is not running_loop():
                # asyncio refused a future of another loop at the await.
                self._waits -= 1
                raise RuntimeError(
                    f"{self!r}: tasks of another event loop wait on this pool; "
                    "a pool serves the tasks of one loop at a time (use one "
                    "pool per loop, or free_threadsafe() from other threads)"
                ) from exc
            raise
        finally:
            if handle is not None:
                handle.cancel()
        # got is Any: no cast (a call, compiled) on the path of every wait.
        if type(got) is Fresh:
            element = got.element
        elif got is TIMEDOUT:
            raise self._timed_out(mask, timeout)
        elif got is CLOSED:
            raise PoolClosedError(f"{self!r}: closed while waiting")
        else:
            element = got
            self._reserve_hits += 1
        self._received(element)
        self._allocs += 1
        self._waited(time.perf_counter() - start)
        return element if self._debug is None else self._debug.lend(element)

    def _first_try(self, nbytes: Any, gfp_mask: Any, timeout: float | None) -> Any:
        """alloc() up to its wait (Lender's; ``nbytes`` is None, a pool's
        elements being of one size): the element; None, if the mask may not
        wait; or ``WAIT``: the pool was tried, and the caller must wait in
        line (alloc() goes on to; ``element()`` calls alloc(), which tries
        once more). Synchronous, so that ``element()`` enters without a
        second coroutine (a C call in the compiled build)."""
        # The hot path, _take() inlined: the default mask, the steady state
        # (see _regate()). Change together with alloc_nowait()'s and
        # _call_alloc_fn(): the same call of alloc_fn, three times.
        if gfp_mask is GFP_KERNEL and timeout is None and not self._gate:
            try:
                element = self._alloc_fn(GFP_NOWAIT, self._pool_data)
            except MemoryError:
                element = None
            if element is not None:
                self._allocs += 1
                return element
            self._alloc_fn_failures += 1
            element = self._take_reserve(KERNEL_MASK)
            return WAIT if element is None else element
        mask = KERNEL_MASK if gfp_mask is GFP_KERNEL else decode_mask(gfp_mask)
        if self._closed:
            raise PoolClosedError(f"{self!r}: alloc() on a closed pool")
        if timeout is not None:
            check_timeout(timeout)
        if not self._line.has_live():
            element = self._take(mask)
            if element is not None:
                return element if self._debug is None else self._debug.lend(element)
        if not mask.may_wait:
            self._failed(mask)
            return None
        if timeout is not None and timeout <= 0:
            raise self._timed_out(mask, timeout)
        return WAIT

    def _alloc_for(
        self, nbytes: Any, gfp_mask: Any, timeout: float | None
    ) -> Awaitable[T | None]:
        """Lender's: alloc() (``nbytes`` is None)."""
        if timeout is None:  # no keyword to pass: the common case
            return self.alloc(gfp_mask)
        return self.alloc(gfp_mask, timeout=timeout)

    def alloc_nowait(self, gfp_mask: GFP | int = GFP_NOWAIT) -> T | None:
        """Allocate an element without waiting; ``None`` if there is none.

        Synchronous, for callbacks that cannot await (``get_buffer()`` of an
        ``asyncio.BufferedProtocol``, ``call_soon`` callbacks). Use
        ``GFP_ATOMIC`` to let the backing allocator use its emergency
        headroom. Returns ``None`` while tasks wait in ``alloc()``: it does
        not overtake them.

        Raises:
            PoolClosedError: the pool is closed.
            TypeError: ``gfp_mask`` is not a ``GFP`` or an int.
            ValueError: ``gfp_mask`` holds ``GFP.DIRECT_RECLAIM`` (await
                ``alloc()`` to wait), ``GFP.ZERO`` or unknown bits.
        """
        # The hot path, _take() inlined (see alloc()).
        if gfp_mask is GFP_NOWAIT and not self._gate:
            try:
                element = self._alloc_fn(gfp_mask, self._pool_data)
            except MemoryError:
                element = None
            if element is None:
                self._alloc_fn_failures += 1
                element = self._take_reserve(NOWAIT_MASK)
                if element is None:
                    self._failed(NOWAIT_MASK)
                return element
            self._allocs += 1
            return element
        mask = decode_mask(gfp_mask)
        if mask.may_wait:
            raise ValueError(
                "gfp_mask must not hold GFP.DIRECT_RECLAIM, got "
                f"{MaskText(mask.full)}: alloc_nowait() never waits (await "
                "alloc() to wait)"
            )
        if self._closed:
            raise PoolClosedError(f"{self!r}: alloc_nowait() on a closed pool")
        if not self._line.has_live():
            element = self._take(mask)
            if element is not None:
                return element if self._debug is None else self._debug.lend(element)
        self._failed(mask)
        return None

    def _take(self, mask: Mask) -> T | None:
        """The kernel's order, without waiting; counts what it hands out.

        The caller has checked that the pool is open and nobody waits.
        """
        if self._debug is not None:
            self._debug.retry()  # quarantined elements nobody can reach now
        element = self._call_alloc_fn(mask.first)
        if element is None:
            return self._take_reserve(mask)
        self._allocs += 1
        return element

    def _take_reserve(self, mask: Mask) -> T | None:
        """What _take() does once the cheap first try has failed."""
        if self._elements:
            taken = self._remove_element()  # debug mode may raise CorruptionError
            self._allocs += 1
            self._reserve_hits += 1
            return taken
        if not mask.may_wait:
            return None
        # The reserve is empty and the first try was restricted: now the
        # allocator may do what it takes.
        element = self._call_alloc_fn(mask.full)
        if element is not None:
            self._allocs += 1
        return element

    def _call_alloc_fn(self, gfp_mask: GFP) -> T | None:
        """alloc_fn, a MemoryError read as None; counts failures."""
        try:
            element = self._alloc_fn(gfp_mask, self._pool_data)
        except MemoryError:
            element = None
        if element is None:
            self._alloc_fn_failures += 1
        return element

    def _describe(self, element: T) -> str:
        """``element`` in an error message: a short repr, never its bytes."""
        return short_repr(element)

    def _failed(self, mask: Mask) -> None:
        if not mask.nowarn:
            self._warn.warn(
                "%r: allocation failed (gfp_mask=%s)", self, MaskText(mask.full)
            )

    def _timed_out(self, mask: Mask, timeout: float | None) -> AllocTimeoutError:
        self._timeouts += 1
        self._failed(mask)
        return AllocTimeoutError(f"{self!r}: no element within {timeout} s")

    # -- waiting -------------------------------------------------------------

    def _park(self, ask: object) -> asyncio.Future[Any]:
        """Queue the calling task at the back of the line with ``ask`` (its
        mask, or a bulk request), and count the wait; the first waiter
        starts the retry timer."""
        line = self._line
        fut = line.park(ask)
        if line.nparked == 1:
            loop = self._loop = fut.get_loop()
            self._retry_timer = loop.call_later(
                self._retry_interval, self._retry_expired
            )
        self._gate = True
        self._waits += 1
        return fut

    def _line_emptied(self) -> None:
        """The last waiter was served or left (or its loop closed)."""
        self._bulk_waiters = 0
        self._regate()
        timer, self._retry_timer = self._retry_timer, None
        if timer is not None:
            with suppress(RuntimeError):  # uvloop's, once its loop is closed
                timer.cancel()

    def _retry(self) -> None:
        """The backing allocator may succeed now: ask it for the waiters,
        first come first served, each with its own mask, until it fails.

        In the kernel every sleeper retries for itself when it wakes; here
        the pool retries on behalf of the first in line and hands it the
        result, so nobody can overtake it between its wake-up and its try.
        An error of alloc_fn is raised in that waiter, whose call it was.
        """
        line = self._line
        while True:
            first = line.first()
            if first is None:
                return
            fut, ask = first
            if type(ask) is _Bulk:
                # All or nothing, now that the allocator may give more.
                if not self._serve_bulk(fut, ask):
                    return
                continue
            gfp_mask = cast(GFP, ask)
            try:
                element = self._call_alloc_fn(gfp_mask)
            except Exception as exc:
                if not fut.done():  # alloc_fn may have re-entered the pool
                    line.fail_first(exc)
                return
            if element is None:
                return
            # alloc_fn may have re-entered the pool: hand to whoever is
            # first now, or give the element back if nobody is left.
            if line.hand(Fresh(element)):
                self._handed(element)
            else:
                self._give_back(element)

    def _retry_expired(self) -> None:
        # The kernel's 5-second timeout: the allocator may have recovered
        # although nothing came back to this pool.
        self._retry_timer = None
        self._retry()
        loop = self._loop
        if len(self._line) and loop is not None and self._retry_timer is None:
            self._retry_timer = loop.call_later(
                self._retry_interval, self._retry_expired
            )

    # -- bulk allocation: the kernel's mempool_alloc_bulk() ------------------

    def _bulk_limit(self) -> int:
        """The most elements one bulk request may ask for: what the pool can
        guarantee at once. For a Mempool, its reserve (the kernel's rule)."""
        return self._min_nr

    def _check_bulk(self, count: object) -> int:
        if type(count) is not int:
            raise TypeError(f"count must be an int, not {type(count).__name__}")
        limit = self._bulk_limit()
        if not 1 <= count <= limit:
            raise ValueError(
                f"{self!r}: count must be from 1 to {limit}, got {count}: a "
                f"pool guarantees at most {limit} elements at once (its "
                "reserve, min_nr, or a bounded buffer pool's max_nr)"
            )
        return count

    @overload
    async def alloc_bulk(
        self, count: int, gfp_mask: Kernel = ..., *, timeout: float | None = ...
    ) -> list[T]: ...
    @overload
    async def alloc_bulk(
        self, count: int, gfp_mask: GFP | int, *, timeout: float | None = ...
    ) -> list[T] | None: ...

    async def alloc_bulk(
        self,
        count: int,
        gfp_mask: GFP | int = GFP_KERNEL,
        *,
        timeout: float | None = None,
    ) -> list[T] | None:
        """Allocate ``count`` elements at once, or none: the kernel's
        ``mempool_alloc_bulk()``.

        A loop of ``alloc()`` can deadlock when several tasks each need
        several elements: each holds part of what it needs while it waits
        for the rest. A bulk request holds nothing while it waits: it takes
        all ``count`` elements in one step (``alloc_fn`` first, then the
        reserve), or waits in line, first come first served with single
        requests (none overtakes it, and it overtakes none), until they can
        all be had. With a mask that may not wait, it returns ``None``
        instead of waiting.

        Cancelling it loses nothing: elements handed to a cancelled request
        go back, and those behind it are served. Give the elements back with
        ``free_bulk()`` (or ``free()`` each).

        Raises:
            ValueError: ``count`` is above what the pool can guarantee at
                once (``min_nr``; for a bounded buffer pool, ``max_nr``) or
                below 1; a bad ``gfp_mask`` or ``timeout``.
            TypeError: ``count`` is not an int.
            PoolClosedError: the pool is closed, or closed while waiting.
            AllocTimeoutError: ``timeout`` seconds passed first.
        """
        count = self._check_bulk(count)
        mask = KERNEL_MASK if gfp_mask is GFP_KERNEL else decode_mask(gfp_mask)
        if self._closed:
            raise PoolClosedError(f"{self!r}: alloc_bulk() on a closed pool")
        if timeout is not None:
            check_timeout(timeout)
        line = self._line
        if not line.has_live():
            got = self._gather(count, mask)
            if got is not None:
                elements, from_reserve = got
                self._taken(count, from_reserve)
                return self._lend_all(elements)
        if not mask.may_wait:
            self._failed(mask)
            return None
        if timeout is not None and timeout <= 0:
            raise self._timed_out(mask, timeout)
        fut = self._park(_Bulk(count, mask))
        self._bulk_waiters += 1
        handle = None
        if timeout is not None:
            handle = fut.get_loop().call_later(timeout, self._expire_bulk, fut)
        start = time.perf_counter()
        try:
            got_now = await fut
        except BaseException:
            if not fut.done():
                self._bulk_waiters -= 1  # leaves unserved
            passed_on = line.leave(fut)
            if type(passed_on) is _Handful:
                for element in passed_on.elements:
                    self._received(element)
                    self._give_back(element)
            self._serve_line()  # those behind it, if it was first
            raise
        finally:
            if handle is not None:
                handle.cancel()
        if got_now is TIMEDOUT:
            raise self._timed_out(mask, timeout)
        if got_now is CLOSED:
            raise PoolClosedError(f"{self!r}: closed while waiting")
        handful = cast(_Handful, got_now)
        for element in handful.elements:
            self._received(element)
        self._taken(count, handful.from_reserve)
        self._waited(time.perf_counter() - start)
        return self._lend_all(cast("list[T]", handful.elements))

    def free_bulk(self, elements: Iterable[T | None]) -> None:
        """Give back every element of ``elements``: the kernel's
        ``mempool_free_bulk()``. Each is freed as by ``free()``, even if one
        is refused or ``free_fn`` raises; then the first error is raised.
        Synchronous."""
        error: BaseException | None = None
        for element in elements:
            try:
                self.free(element)
            except Exception as exc:
                error = error or exc
        if error is not None:
            raise error

    # -- the books, kept by the pool's own paths and by a composer that
    # takes elements for waiters of its own (BufferArena: its size classes
    # are pools that never wait themselves; it calls _gather(), _taken(),
    # _waited(), _timed_out(), _received() and _give_back() of them) -----

    def _taken(self, count: int, from_reserve: int) -> None:
        """Count ``count`` elements handed out, ``from_reserve`` of them
        from the reserve."""
        self._allocs += count
        self._reserve_hits += from_reserve

    def _waited(self, seconds: float) -> None:
        """Count a wait that ended with elements, after ``seconds``."""
        self._wait_counts[bisect_left(WAIT_BUCKETS, seconds)] += 1
        self._wait_sum_s += seconds
        if seconds > self._max_wait_s:
            self._max_wait_s = seconds

    def _lend_all(self, elements: list[T]) -> list[T]:
        if self._debug is None:
            return elements
        return [self._debug.lend(element) for element in elements]

    def _gather(self, count: int, mask: Mask) -> tuple[list[T], int] | None:
        """``count`` elements, from alloc_fn then the reserve, and how many
        came from the reserve; or None, and nothing taken (what alloc_fn
        gave goes back to free_fn)."""
        got: list[T] = []
        try:
            while len(got) < count:  # the kernel's order: the allocator first
                element = self._call_alloc_fn(mask.first)
                if element is None:
                    break
                got.append(element)
        except BaseException:
            self._free_all(got, suppress=True)
            raise
        need = count - len(got)
        if need > len(self._elements):
            self._free_all(got)
            return None
        try:
            for _ in range(need):
                got.append(self._remove_element())  # debug mode may raise
        except BaseException:
            # Nothing taken: all goes back, serving nobody (this may run
            # while the line is being served).
            for element in reversed(got):
                if len(self._elements) < self._min_nr:
                    self._add_element(element)
                else:
                    self._free_fn(element, self._pool_data)
            raise
        return got, need

    def _serve_bulk(self, fut: asyncio.Future[Any], ask: _Bulk) -> bool:
        """Serve the bulk request of ``fut``, first in line, if its elements
        can all be had now."""
        got = self._gather(ask.count, ask.mask)
        if got is None:
            return False
        elements, from_reserve = got
        first = self._line.first()
        if first is None or first[0] is not fut:  # alloc_fn re-entered
            for element in elements:
                self._give_back(element)
            return False
        self._line.hand(_Handful(elements, from_reserve))
        self._bulk_waiters -= 1
        for element in elements:
            self._handed(element)
        return True

    def _serve_line(self) -> None:
        """Serve the waiters from the reserve, first come first served, for
        as long as the first can be served: a bulk request stops those
        behind it until all its elements can be had."""
        line = self._line
        while True:
            first = line.first()
            if first is None:
                return
            fut, ask = first
            if type(ask) is _Bulk:
                if not self._serve_bulk(fut, ask):
                    return
            elif self._elements:
                element = self._remove_element()
                line.hand(element)
                self._handed(element)
            else:
                return

    def _expire_bulk(self, fut: asyncio.Future[Any]) -> None:
        """A bulk request's deadline: it leaves the line, and those behind
        it may be served now."""
        if not fut.done():
            self._bulk_waiters -= 1
            self._line.expire(fut)
            self._serve_line()

    # -- freeing -----------------------------------------------------------

    def free(self, element: T | None) -> None:
        """Give an element back; ``None`` is ignored.

        Synchronous: callable from any callback on the pool's loop. Below
        ``min_nr`` the element refills the reserve, going straight to the
        longest waiter if any; otherwise ``free_fn`` disposes of it and the
        allocator is retried for the first waiter. After ``close()`` every
        element goes to ``free_fn``.

        Raises:
            InvalidFreeError: a double free or a foreign element, as the pools
                of ``aiomempool.pools`` detect them. It is not a free: it
                changes nothing, counters included.
            Exception: whatever ``free_fn`` raises, after the pool's own
                accounting.
        """
        if element is None:
            return
        # The hot path, for a pool in its steady state: see _regate().
        if not self._gate:
            try:
                self._free_fn(element, self._pool_data)
            except InvalidFreeError:
                raise
            except BaseException:
                self._frees += 1
                raise
            self._frees += 1
            return
        if self._debug is not None:
            loop = self._loop
            if loop is not None and loop.is_running() and running_loop() is not loop:
                raise RuntimeError(
                    f"{self!r}: free() called outside the pool's event loop "
                    "(from another thread?): call free_threadsafe() there, "
                    "which frees on the loop's thread"
                )
            reclaimed = self._debug.reclaim(element)
            if reclaimed is None:
                self._frees += 1
                return  # in quarantine: see debug.py
            element = reclaimed
        try:
            self._give_back(element)
        except InvalidFreeError:
            raise
        except BaseException:
            self._frees += 1
            raise
        self._frees += 1

    def _give_back(self, element: T) -> None:
        """The element goes to the first waiter, the reserve or free_fn."""
        if len(self._elements) < self._min_nr and not self._closed:
            # Tasks park only while the reserve is empty (or a bulk request
            # is first in line), so a refill goes to the longest waiter; the
            # reserve gets it if nobody waits.
            if self._bulk_waiters:
                # A bulk request takes its elements all at once: into the
                # reserve, then whoever is first is served from there.
                self._add_element(element)
                self._serve_line()
            elif not self._line.hand(element):
                self._add_element(element)
            return
        # By the invariant nobody waits here; were a task parked (an
        # alloc_fn that frees into its own pool can make it so), it would
        # be the allocator, just given memory back, that could serve it.
        try:
            self._free_fn(element, self._pool_data)
        finally:
            if self._line.nparked:
                self._retry()

    def _handed(self, element: T) -> None:
        """Hook: the allocator's ``element`` was handed to a waiter, whose
        task has not run yet (pools that know what they have out extend
        it; a freed element handed on is theirs to see in _give_back())."""

    def _received(self, element: T) -> None:
        """Hook: the waiter's task has ``element`` now (back from the line:
        it is out with a caller, or passed on by a leaver)."""

    def _steady(self) -> bool:
        """Lender's: the gate is down (see _regate())."""
        return not self._gate

    def _regate(self) -> None:
        """Lower ``_gate`` if the pool is in its steady state: open, nobody
        waits, the reserve full, no debug mode (whose hooks are on the slow
        paths), no injected faults. Called wherever one of these may have
        become true. Anyone may raise the gate; only this lowers it."""
        self._gate = (
            self._closed
            or self._line.nparked > 0
            or len(self._elements) < self._min_nr
            or self._debug is not None
            or self._faults is not None
        )

    def _inject_faults(self, fails: Callable[[GFP], bool] | None) -> None:
        """For ``aiomempool.testing.fail_alloc()``: from now on ``alloc_fn``
        is not called, and gives nothing, whenever ``fails(gfp_mask)`` says
        so; ``None`` restores it. The gate stays up meanwhile, so that the
        specialised fast paths (which skip alloc_fn) are not taken.

        Raises:
            RuntimeError: faults are injected already.
        """
        if fails is not None and self._faults is not None:
            raise RuntimeError(f"{self!r}: fail_alloc() is active on it already")
        if self._faults is not None:
            self._alloc_fn = self._faults
            self._faults = None
        if fails is not None:
            real = self._faults = self._alloc_fn

            def alloc_fn(gfp_mask: GFP, pool_data: Any) -> T | None:
                return None if fails(gfp_mask) else real(gfp_mask, pool_data)

            self._alloc_fn = alloc_fn
            self._gate = True
        else:
            self._regate()

    def free_threadsafe(
        self, element: T | None, *, loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        """Give an element back from another thread, through the loop.

        For workers of ``run_in_executor`` and the like: the element is
        freed by ``free()`` on the loop's thread. ``loop`` defaults to the
        pool's loop: the one it was built in, entered with ``async with``,
        or last waited in.

        Raises:
            RuntimeError: no loop is known, or it is closed.
        """
        target = loop if loop is not None else self._loop
        if target is None or target.is_closed():
            raise RuntimeError(
                f"{self!r}: free_threadsafe() needs the pool's event loop; "
                "build the pool in a running loop, enter it with `async with`, "
                "or pass loop="
            )
        target.call_soon_threadsafe(self.free, element)

    # -- the reserve: the kernel's add_element() and remove_element() --------

    def _add_element(self, element: T) -> None:
        """Put ``element`` on top of the reserve (poisoned in debug mode).
        The reserve has room: len(_elements) < min_nr, or construction."""
        if self._debug is not None:
            self._debug.poison(element)
        self._elements.append(element)
        self._regate()

    def _remove_element(self, to_caller: bool = True) -> T:
        """Take the top element of the reserve, which is not empty.

        In debug mode its poison is checked first: a CorruptionError leaves
        it on top, poisoned afresh (logged instead when the element leaves
        for ``free_fn``, ``to_caller`` False).
        """
        if self._debug is not None:
            self._debug.check(self._elements[-1], to_caller=to_caller)
        self._gate = True  # the reserve is below min_nr now
        return self._elements.pop()

    def _prealloc(self, count: int) -> list[T]:
        """Make ``count`` elements with ``alloc_fn(GFP_KERNEL)``, or none."""
        made: list[T] = []
        try:
            for _ in range(count):
                element = self._call_alloc_fn(GFP_KERNEL)
                if element is None:
                    raise MemoryError(self._prealloc_failure(len(made), count))
                made.append(element)
        except BaseException:
            self._free_all(made, suppress=True)
            raise
        return made

    def _prealloc_failure(self, made: int, count: int) -> str:
        """Why preallocating ``count`` elements stopped after ``made``."""
        return f"{self!r}: alloc_fn made {made} of the {count} elements asked for"

    def _free_all(self, elements: list[T], suppress: bool = False) -> None:
        """free_fn on every element, even if some raise; then the first."""
        error: BaseException | None = None
        for element in elements:
            try:
                self._free_fn(element, self._pool_data)
            except BaseException as exc:
                error = error or exc
        if error is not None and not suppress:
            raise error

    def resize(self, new_min_nr: int) -> None:
        """Change ``min_nr``, the kernel's ``mempool_resize()``.

        Growing allocates what the reserve lacks to hold ``new_min_nr``
        elements with ``alloc_fn(GFP_KERNEL)``, all at once, handing them to
        waiters first; shrinking (or keeping the size) allocates nothing and
        frees the surplus of the reserve above ``new_min_nr`` with
        ``free_fn``, from the top. Synchronous; never awaits.

        Raises:
            TypeError: ``new_min_nr`` is not an int.
            ValueError: ``new_min_nr`` is below 1.
            MemoryError: ``alloc_fn`` failed; nothing changed.
            PoolClosedError: the pool is closed.
        """
        check_nr("new_min_nr", new_min_nr)
        if self._closed:
            raise PoolClosedError(f"{self!r}: resize() on a closed pool")
        if new_min_nr <= self._min_nr:
            # Shrinking never allocates, and never fails: elements out now
            # refill the reserve up to the new min_nr when they come back.
            self._min_nr = new_min_nr
            excess = max(0, len(self._elements) - new_min_nr)
            surplus = [self._remove_element(to_caller=False) for _ in range(excess)]
            self._regate()
            self._free_all(surplus)
            return
        made = self._prealloc(new_min_nr - len(self._elements))
        self._min_nr = new_min_nr
        self._gate = True
        for element in made:
            self._give_back(element)

    def close(self) -> None:
        """Free the reserve and refuse further allocations; idempotent.

        The ``mempool_destroy()`` analogue: every reserved element goes to
        ``free_fn``; tasks waiting in ``alloc()`` raise ``PoolClosedError``,
        as does every later ``alloc()`` or ``alloc_nowait()``. Elements
        still out may be freed later: they go to ``free_fn``. Synchronous.

        Raises:
            Exception: the first exception of ``free_fn``, once every element
                was freed.
        """
        if self._closed:
            return
        self._closed = True
        self._gate = True
        if self._debug is not None:
            self._debug.report_leaks()
        self._line.close()
        elements = [
            self._remove_element(to_caller=False) for _ in range(len(self._elements))
        ]
        self._free_all(elements)

    async def __aenter__(self: P) -> P:
        self._loop = asyncio.get_running_loop()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- element() ---------------------------------------------------------

    def element(
        self, gfp_mask: GFP | int = GFP_KERNEL, *, timeout: float | None = None
    ) -> ElementContext[T]:
        """An element for the span of an ``async with`` block.

        ``async with pool.element() as buf:`` allocates on entry and frees
        on exit, whether the block ends normally, by an exception or by
        cancellation. ``buf`` is never None: with a mask that may not wait,
        entry raises ``PoolExhaustedError`` when there is nothing to hand
        out. Entry allocates as ``alloc()`` does (a subclass's override of
        ``alloc()`` is called), and exit frees with ``free()``.

        Example:
            ```python
            async with pool.element(timeout=1.0) as buf:
                buf[:5] = b"hello"
            ```

        Raises:
            TypeError: ``gfp_mask`` or ``timeout`` is not of its type, as in
                ``alloc()``; raised here, not on entry.
            ValueError: ``gfp_mask`` or ``timeout`` is out of range, as in
                ``alloc()``; raised here, not on entry.
            PoolExhaustedError: on entry, a mask that may not wait found
                nothing (a ``MemoryError``).
            PoolClosedError: on entry, as ``alloc()`` raises it.
            AllocTimeoutError: on entry, ``timeout`` seconds passed without
                an element.
        """
        if gfp_mask is not GFP_KERNEL:
            decode_mask(gfp_mask)  # refuse a bad mask now, not on entry
        if timeout is not None:
            check_timeout(timeout)
        return ElementContext(self, None, gfp_mask, timeout)


#: Per class of pool (or arena), whether its _first_try() is alloc()'s
#: first step: whether the class that defines its alloc() defines its
#: _first_try() too. A subclass that overrides alloc() alone has element()
#: await its alloc(), always.
_FIRST_TRY_IS_ALLOC: dict[type, bool] = {}


def _first_try_is_alloc(cls: type) -> bool:
    known = _FIRST_TRY_IS_ALLOC.get(cls)
    if known is None:
        known = False
        for klass in cls.__mro__:
            names = vars(klass)
            if "alloc" in names or "_first_try" in names:
                known = "alloc" in names and "_first_try" in names
                break
        _FIRST_TRY_IS_ALLOC[cls] = known
    return known


class _Done:
    """An awaitable that is done: awaiting it returns None at once."""

    __slots__ = ()

    def __await__(self) -> Generator[None, None, None]:
        return _EXHAUSTED  # type: ignore[return-value]


# An iterator with nothing left: it ends every await of _Done at once (an
# exhausted iterator stays so; one serves every await).
_EXHAUSTED = iter(())
_EXITED = _Done()


class ElementContext(Native, _Generic[T]):
    """What ``Mempool.element()`` returns: an async context manager.

    It allocates on entry and frees on exit; it may be entered once.

    Args:
        lender (Mempool | BufferArena): What allocates and frees.
        nbytes (int | None): The arena's size; None for a pool.
        gfp_mask (GFP | int): The mask of ``alloc()``.
        timeout (float | None): ``alloc()``'s timeout.
    """

    __slots__ = (
        "_element", "_entered", "_first", "_lender", "_mask", "_nbytes", "_timeout",
    )  # fmt: skip

    def __init__(
        self,
        lender: Lender,
        nbytes: int | None,
        gfp_mask: GFP | int,
        timeout: float | None,
    ) -> None:
        self._lender = lender
        self._nbytes = nbytes
        self._mask = gfp_mask
        self._timeout = timeout
        # Whether entry may take alloc()'s first step itself: not if the
        # lender's class overrides alloc() alone (its override allocates).
        self._first = _first_try_is_alloc(type(lender))
        self._element: T | None = None
        # From the start of an entry (before its await) to the exit: two
        # tasks entering one context at once would share one element.
        self._entered = False

    async def __aenter__(self) -> T:
        if self._entered:
            raise RuntimeError(
                f"{self._lender!r}: this element() context is entered already "
                "(one element() per async with)"
            )
        self._entered = True
        lender = self._lender
        try:
            # alloc() in its two steps: the second, a coroutine, only if
            # the first says the caller must wait.
            element: T | None = WAIT
            if self._first:
                element = lender._first_try(self._nbytes, self._mask, self._timeout)
            if element is WAIT:
                element = await lender._alloc_for(
                    self._nbytes, self._mask, self._timeout
                )
        except BaseException:
            self._entered = False
            raise
        if element is None:
            self._entered = False
            raise PoolExhaustedError(
                f"{lender!r}: nothing to hand out without waiting "
                f"(gfp_mask={MaskText(int(self._mask))})"
            )
        self._element = element
        return element

    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Awaitable[None]:
        # Synchronous, as free() is: what it returns is done already (no
        # coroutine to make per exit).
        element, self._element = self._element, None
        self._entered = False
        self._lender.free(element)
        return _EXITED
