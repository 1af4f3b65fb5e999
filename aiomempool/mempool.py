"""Mempool: the kernel's mm/mempool.c for asyncio.

A pool keeps a reserve of ``min_nr`` preallocated elements so that an
allocation can always make progress when the backing allocator fails.

Locking: the kernel guards the reserve with a spinlock; here the event
loop's single thread is the lock. A critical section is code with no
``await`` in it, and every method below that touches the reserve or the
wait queue runs to completion without awaiting.

Invariants, kept by ``_put()`` (the only way into the reserve after
construction) and ``Waiting._park()`` (the only way to wait):

* ``len(self._elements) <= self._min_nr``.
* A task is parked only while the reserve is empty: it parks right after
  finding the reserve empty, with no await in between, and ``_put()``
  hands an element to a parked task before it would add to the reserve.
  So a free below ``min_nr`` always goes to the longest waiter, and a free
  into a full reserve (to ``free_fn``) never happens while a task waits.

The waiting side, its fairness and its cancellation rules are in
``_waiting.py``; filling, resizing and closing the reserve in
``_reserve.py``.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from ._checks import check_nr, check_timeout, running_loop
from ._ratelimit import RateLimitedWarning
from ._reserve import Reserve
from ._waiting import CLOSED, TIMEDOUT, Fresh, Waiting
from .debug import Outstanding, PoolDebug, debug_enabled
from .element import ElementContext
from .errors import AllocTimeoutError, InvalidFreeError, PoolClosedError
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
from .stats import WAIT_BUCKETS, MempoolStats, register

if TYPE_CHECKING:
    from .slab import SlabCache

__all__ = ["Mempool"]

T = TypeVar("T")


class Mempool(Reserve[T]):
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

    Example::

        pool = Mempool(16, lambda gfp, size: bytearray(size),
                       lambda buf, size: None, 4096)
        async with pool.element() as buf:
            buf[:5] = b"hello"

    Raises:
        TypeError: ``min_nr`` is not an int; ``alloc_fn`` or ``free_fn`` is
            not callable; ``name`` is not a str; ``debug`` is not a bool.
        ValueError: ``min_nr < 1``; ``retry_interval`` is not positive.
        MemoryError: ``alloc_fn`` could not make ``min_nr`` elements.
    """

    __slots__ = (
        "__weakref__",
        "_alloc_fn",
        "_alloc_fn_failures",
        "_allocs",
        "_debug",
        "_free_fn",
        "_frees",
        "_max_wait_s",
        "_name",
        "_pool_data",
        "_reserve_hits",
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
        check_timeout(retry_interval)
        if not retry_interval > 0:
            raise ValueError(
                f"retry_interval must be > 0 seconds, got {retry_interval}"
            )
        debug = debug_enabled(debug)
        self._min_nr = min_nr
        self._alloc_fn = alloc_fn
        self._free_fn = free_fn
        self._pool_data = pool_data
        self._name = name
        Waiting.__init__(self, float(retry_interval))
        self._loop = running_loop()
        self._warn = RateLimitedWarning()
        self._allocs = self._frees = self._reserve_hits = 0
        self._alloc_fn_failures = self._waits = self._timeouts = 0
        self._max_wait_s = 0.0
        self._wait_counts = [0] * len(WAIT_BUCKETS)
        self._wait_sum_s = 0.0
        self._elements: list[T] = []
        # Before the reserve is made: debug mode poisons what enters it.
        self._debug: PoolDebug[T] | None = PoolDebug(self) if debug else None
        for element in self._prealloc(min_nr):
            self._push(element)
        if name is not None:
            register(self)  # for metrics exporters

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
        """Tasks waiting in ``alloc()`` now, not yet handed anything (none
        of a closed loop: its tasks never run again)."""
        if self._nparked:
            self._line_is_dead()
        return self._nparked

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
        if self._nparked:
            self._line_is_dead()
        return MempoolStats(
            name=self._name,
            min_nr=self._min_nr,
            curr_nr=len(self._elements),
            waiters=self._nparked,
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
        """Every element out with a caller now, with where it was allocated
        and how long ago, oldest first (debug mode).

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
            f"curr_nr={len(self._elements)} waiters={self._nparked}>"
        )

    # -- allocation --------------------------------------------------------

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
        it may succeed again, makes one.
        While tasks wait, a new caller queues behind them (or gets ``None``
        if it may not wait): nobody overtakes a waiter.

        Awaits only when it has to wait. Cancelling it never loses an
        element: one handed to a cancelled task goes to the next waiter or
        back to the reserve.

        Raises:
            PoolClosedError: the pool is closed, or was closed while waiting.
            AllocTimeoutError: a ``TimeoutError``; ``timeout`` seconds passed
                without an element.
            ValueError: ``gfp_mask`` holds ``GFP.ZERO`` or unknown bits, or
                ``timeout`` is negative.
            RuntimeError: tasks of another event loop are waiting.
        """
        # The hot path, _take() inlined: the default mask, the steady state
        # (open, nobody parked, the reserve full: see _regate()).
        if gfp_mask is GFP_KERNEL and timeout is None and not self._gate:
            try:
                element = self._alloc_fn(GFP_NOWAIT, self._pool_data)
            except MemoryError:
                element = None
            if element is None:
                self._alloc_fn_failures += 1
                element = self._take_reserve(KERNEL_MASK)
                if element is not None:
                    return element
                mask = KERNEL_MASK
            else:
                self._allocs += 1
                return element
        else:
            mask = KERNEL_MASK if gfp_mask is GFP_KERNEL else decode_mask(gfp_mask)
            if self._closed:
                raise PoolClosedError(f"{self!r}: alloc() on a closed pool")
            if timeout is not None:
                check_timeout(timeout)
            if not (self._nparked and self._in_line()):
                element = self._take(mask)
                if element is not None:
                    return element if self._debug is None else self._debug.lend(element)
            if not mask.may_wait:
                self._failed(mask)
                return None
            if timeout is not None and timeout <= 0:
                raise self._timed_out(mask, timeout)
        # Wait in line until handed an element. Inlined rather than a
        # coroutine of its own: a contended pool goes through here per call.
        fut = self._park(mask.full)
        self._waits += 1
        handle = None
        if timeout is not None:
            handle = fut.get_loop().call_later(timeout, self._expire, fut)
        # uvloop's loop.time() ticks in milliseconds: fine for deadlines,
        # too coarse to measure waits.
        start = time.perf_counter()
        try:
            got = await fut
        except BaseException:
            self._left_early(fut)
            raise
        finally:
            if handle is not None:
                handle.cancel()
        if type(got) is Fresh:
            element = cast(T, got.element)
        elif got is TIMEDOUT:
            raise self._timed_out(mask, timeout)
        elif got is CLOSED:
            raise PoolClosedError(f"{self!r}: closed while waiting")
        else:
            element = got
            self._reserve_hits += 1
        self._allocs += 1
        waited = time.perf_counter() - start
        self._wait_counts[bisect_left(WAIT_BUCKETS, waited)] += 1
        self._wait_sum_s += waited
        if waited > self._max_wait_s:
            self._max_wait_s = waited
        return element if self._debug is None else self._debug.lend(element)

    def alloc_nowait(self, gfp_mask: GFP | int = GFP_NOWAIT) -> T | None:
        """Allocate an element without waiting; ``None`` if there is none.

        Synchronous, for callbacks that cannot await (``get_buffer()`` of an
        ``asyncio.BufferedProtocol``, ``call_soon`` callbacks). Use
        ``GFP_ATOMIC`` to let the backing allocator use its emergency
        headroom. Returns ``None`` while tasks wait in ``alloc()``: it does
        not overtake them.

        Raises:
            PoolClosedError: the pool is closed.
            ValueError: ``gfp_mask`` holds ``GFP.DIRECT_RECLAIM`` (await
                ``alloc()`` to wait), ``GFP.ZERO`` or unknown bits.
        """
        # The hot path, _take() inlined: the default mask, the steady state
        # (open, nobody parked, the reserve full: see _regate()).
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
                "gfp_mask must not hold GFP.DIRECT_RECLAIM: alloc_nowait() "
                "never waits (await alloc() to wait)"
            )
        if self._closed:
            raise PoolClosedError(f"{self!r}: alloc_nowait() on a closed pool")
        if not (self._nparked and self._in_line()):
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
            taken = self._pop()  # debug mode may raise CorruptionError
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
        return format(repr(element), ".60")

    def _failed(self, mask: Mask) -> None:
        if not mask.nowarn:
            self._warn.warn(
                "%r: allocation failed (gfp_mask=%s)", self, MaskText(mask.full)
            )

    def _timed_out(self, mask: Mask, timeout: float | None) -> AllocTimeoutError:
        self._timeouts += 1
        self._failed(mask)
        return AllocTimeoutError(f"{self!r}: no element within {timeout} s")

    # -- freeing -----------------------------------------------------------

    def free(self, element: T | None) -> None:
        """Give an element back; ``None`` is ignored.

        Synchronous: callable from any callback on the pool's loop. Below
        ``min_nr`` the element refills the reserve, going straight to the
        longest waiter if any; otherwise ``free_fn`` disposes of it and the
        allocator is retried for the first waiter. After
        ``close()`` every element goes to ``free_fn``.

        ``asyncio.Condition.notify()`` must be called with the condition's
        lock held, and taking an ``asyncio.Lock`` is a coroutine: a
        synchronous ``free()`` could not notify. The pool's critical sections
        never await, so it needs no lock beyond the loop's thread, and its
        condition is the wait queue of futures it resolves directly.

        Raises whatever ``free_fn`` raises, after the pool's own accounting;
        but an ``InvalidFreeError`` (a double free, a foreign element, as the
        pools of ``aiomempool.pools`` detect) is not a free: it changes
        nothing, counters included.
        """
        if element is not None:
            self._frees += 1
            try:
                # The hot path, for a pool in its steady state: see _regate().
                if self._gate:
                    if self._debug is not None:
                        element = self._debug.reclaim(element)
                        if element is None:
                            return  # in quarantine: see debug.py
                    self._put(element)
                else:
                    self._free_fn(element, self._pool_data)
            except InvalidFreeError:
                self._frees -= 1
                raise

    def _regate(self) -> None:
        """Recompute ``_gate``: False only in the steady state, where the
        hot paths run: open, nobody parked, the reserve full, no debug
        mode. Called wherever one of these may have changed."""
        self._gate = (
            self._closed
            or self._nparked > 0
            or len(self._elements) < self._min_nr
            or self._debug is not None  # debug mode's hooks are on slow paths
        )

    def _put(self, element: T) -> None:
        """The element goes to the first waiter, the reserve or free_fn."""
        if len(self._elements) < self._min_nr and not self._closed:
            # Tasks park only while the reserve is empty, so a refill goes
            # to the longest waiter; the reserve gets it if nobody is parked.
            if not self._hand(element):
                self._push(element)
            return
        # By the invariant nobody is parked here; were a task parked (an
        # alloc_fn that frees into its own pool can make it so), it would
        # be the allocator, just given memory back, that could serve it.
        try:
            self._free_fn(element, self._pool_data)
        finally:
            if self._nparked:
                self._retry()

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

    # -- the kernel's ready-made pools (implemented in pools.py) ------------

    @staticmethod
    def slab_pool(min_nr: int, cache: SlabCache, **options: Any) -> Mempool[memoryview]:
        """A pool of a ``SlabCache``'s buffers: ``mempool_create_slab_pool()``.

        See ``aiomempool.pools.slab_pool``.
        """
        from .pools import slab_pool

        return slab_pool(min_nr, cache, **options)

    @staticmethod
    def kmalloc_pool(min_nr: int, size: int, **options: Any) -> Mempool[bytearray]:
        """A pool of ``bytearray(size)``: ``mempool_create_kmalloc_pool()``.

        See ``aiomempool.pools.kmalloc_pool``.
        """
        from .pools import kmalloc_pool

        return kmalloc_pool(min_nr, size, **options)

    @staticmethod
    def page_pool(min_nr: int, order: int = 0, **options: Any) -> Mempool[memoryview]:
        """A pool of page-aligned buffers: ``mempool_create_page_pool()``.

        See ``aiomempool.pools.page_pool``.
        """
        from .pools import page_pool

        return page_pool(min_nr, order, **options)

    def element(
        self, gfp_mask: GFP | int = GFP_KERNEL, *, timeout: float | None = None
    ) -> ElementContext[T]:
        """An element for the span of an ``async with`` block.

        ``async with pool.element() as buf:`` allocates on entry and frees
        on exit, whether the block ends normally, by an exception or by
        cancellation.

        Raises on entry what ``alloc()`` raises, and ``PoolExhaustedError``
        (a ``MemoryError``) when a non-waiting mask finds nothing.
        """
        if gfp_mask is not GFP_KERNEL:
            decode_mask(gfp_mask)  # refuse a bad mask now, not on entry
        if timeout is not None:
            check_timeout(timeout)
        return ElementContext(self, gfp_mask, timeout)
