"""BufferArena: buffers of every size under one memory budget.

Size classes, as the kernel's kmalloc caches and jemalloc have them: a
request of ``nbytes`` is served from the smallest class that holds it, and
handed out as a writable memoryview of exactly ``nbytes`` bytes. Each class
is a ``SlabPool`` on a ``SlabCache`` of its own (its reserve, its slabs,
its books), and every cache grows within one ``Budget``: when a class needs
a slab and the budget is spent, the other classes give back their wholly
free slabs first, so memory moves to where it is needed, before anyone
waits.

Waiting is the arena's, not the classes': one first come, first served
line for every size (``_line``), so that a large request that waits is not
starved by a stream of small ones taking the memory it needs. The class
pools never park a task; the arena takes from them on behalf of its
waiters (``Mempool._gather()``) and keeps their books (``_taken()``,
``_waited()``).

Invariants:

* A buffer out with a caller is out with its class pool (in its holder
  set). What the caller holds is that slot, or, for a size below the
  class's, a slice of it: ``_lent`` maps ``id(slice)`` to ``(slice, slot,
  pool)`` and keeps the slice alive, so the id names nothing else. Debug
  mode and the leak sampler lend a fresh view of ``nbytes`` instead, which
  the class pool maps back itself. So ``free()`` finds either the entry,
  or the class by the view's length (a view of ``n`` bytes always comes
  from the class of ``n``).
* ``_gate`` is False only in the steady state: open, nobody waiting, no
  debug mode. The fast paths test it alone; only ``_regate()`` lowers it.
* While a live waiter is queued, nobody takes anything without queueing
  behind it (``_clear()`` is asked first), and every free serves the lines
  (``_serve()``), first come first served: a waiter the arena cannot serve
  yet stops those behind it. Urgent requests (``GFP.HIGH``) have a line of
  their own, ``_urgent``, served first: they queue behind urgent waiters
  only.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import weakref
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import suppress
from dataclasses import replace
from types import TracebackType
from typing import Any, overload

from . import mempool as _mempool
from ._budget import Budget
from ._checks import check_nr, check_timeout, debug_enabled, running_loop, short_repr
from ._leaks import LeakSampler
from ._lender import Lender
from ._ratelimit import RateLimitedWarning
from ._waitqueue import CLOSED, TIMEDOUT, WaitQueue
from .errors import (
    AllocTimeoutError,
    DoubleFreeError,
    ForeignElementError,
    InvalidFreeError,
    PoolClosedError,
)
from .gfp import (
    ATOMIC_NOWARN,
    GFP,
    GFP_ATOMIC,
    GFP_KERNEL,
    GFP_NOWAIT,
    KERNEL_MASK,
    NOWAIT_NOWARN,
    MaskText,
    decode_mask,
)
from .gfp import _Mask as Mask
from .mempool import WAIT, ElementContext, Kernel, _Handful, _weakly
from .pools import TRIM_AFTER, SlabPool
from .slab import SlabCache
from .stats import ArenaStats, MempoolStats, Outstanding, SizeClassStats

__all__ = [
    "ARENA_SLAB_BYTES",
    "BufferArena",
    "buffer_arena",
    "default_classes",
    "named_arenas",
]

#: A slab's size in an arena, for classes that fit several buffers in it:
#: the step in which memory moves between classes.
ARENA_SLAB_BYTES = 64 << 10

#: The lookup table's most entries; sizes past it are looked up by bisection.
_TABLE_MAX = 1 << 17

# Every live arena that was given a name, for metrics exporters.
_named: weakref.WeakSet[BufferArena] = weakref.WeakSet()


def named_arenas() -> list[BufferArena]:
    """The live arenas that were given a name, sorted by name."""
    return sorted(_named, key=lambda arena: arena.name or "")


def default_classes(
    smallest: int = 256, largest: int = 1 << 20, per_doubling: int = 4
) -> tuple[int, ...]:
    """Size classes from ``smallest`` to ``largest``, ``per_doubling``
    classes per power of two: jemalloc's spacing.

    The default, 256 B to 1 MiB in 49 classes (256, 320, 384, 448, 512,
    640, ...), wastes less than 20% of each slot (less than 25% of the
    request) on any size above 256 bytes, and under 256 bytes below.
    ``smallest`` and ``largest`` must be powers of two.
    """
    for arg, value in (("smallest", smallest), ("largest", largest)):
        check_nr(arg, value)
        if value & (value - 1):
            raise ValueError(f"{arg} must be a power of two, got {value}")
    check_nr("per_doubling", per_doubling)
    if smallest > largest:
        raise ValueError(f"smallest must be <= largest, got {smallest} > {largest}")
    sizes: list[int] = []
    base = smallest
    while base < largest:
        step = max(1, base // per_doubling)
        sizes.extend(range(base, 2 * base, step))
        base *= 2
    sizes.append(largest)
    return tuple(sorted(set(sizes)))


class _Want:
    """A waiter's request: ``count`` buffers of a class, with a mask."""

    __slots__ = ("count", "mask", "pool")

    def __init__(self, pool: SlabPool, count: int, mask: Mask) -> None:
        self.pool = pool
        self.count = count
        self.mask = mask


class BufferArena(Lender):
    """Buffers of every size, from size classes that share one budget.

    Build one with ``buffer_arena()``. ``await arena.alloc(nbytes)`` hands
    out a writable memoryview of exactly ``nbytes`` bytes, from the
    smallest class that holds it (``good_size(nbytes)`` says which);
    ``free(view)`` takes it back. The slabs of all classes together never
    hold more than ``max_bytes`` (plus the headroom, for ``GFP_ATOMIC``),
    so under load ``alloc()`` waits instead of growing, first come first
    served whatever the size.

    Picture a fabric shop with one roll budget: bolts are cut in standard
    widths (the classes); a customer asking for 3 metres gets 3 metres
    from the narrowest bolt that has them, and when the budget is spent
    the shop returns untouched bolts of other widths before it asks
    anyone to wait.
    """

    __slots__ = (
        "__weakref__", "_budget", "_classes", "_closed", "_countdown",
        "_debug", "_gate", "_guarantee", "_lent", "_line", "_loop", "_name",
        "_pool_at", "_pools", "_retry_interval", "_retry_timer", "_round",
        "_samplers", "_shift", "_size_at", "_urgent", "_warn",
    )  # fmt: skip

    def __init__(
        self,
        max_bytes: int,
        classes: tuple[int, ...],
        reserve: tuple[int, ...],
        *,
        headroom: int,
        zero_on_free: bool,
        leak_sampling: int | None,
        trim_after: float | None,
        name: str | None,
        retry_interval: float,
        debug: bool,
    ) -> None:
        self._classes = classes
        self._name = name
        self._closed = False
        self._debug = debug
        self._retry_interval = retry_interval
        self._retry_timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = running_loop()
        self._warn = RateLimitedWarning()
        self._lent: dict[int, tuple[memoryview, memoryview, SlabPool]] = {}
        self._line = WaitQueue(_weakly(self._line_emptied))
        # The waiters with GFP.HIGH (urgent: a frame half received, whose
        # end frees what it holds), served before those of _line.
        self._urgent = WaitQueue(_weakly(self._line_emptied))
        self._gate = True
        self._budget = Budget(max_bytes, headroom)
        self._pools: list[SlabPool] = []
        self._samplers: list[LeakSampler] | None = None
        self._countdown = 0
        # How many buffers of each class one request may be sure of, once
        # every buffer is back: the budget, less what the other classes'
        # reserves may pin (each reserved buffer a slab, at worst).
        pinned = [
            n * _slab_bytes(size) for size, n in zip(classes, reserve, strict=True)
        ]
        self._guarantee: list[int] = []
        try:
            for size, min_nr in zip(classes, reserve, strict=True):
                cache = SlabCache(
                    size,
                    objects_per_slab=_per_slab(size),
                    name=name,
                    debug=debug,
                    trim_after=trim_after,
                )
                cache._share(self._budget)
                label = f"{name or 'arena'}/{size}"
                try:
                    pool = SlabPool(
                        min_nr,
                        cache,
                        owns_allocator=True,
                        zero_on_free=zero_on_free,
                        name=label,
                        retry_interval=retry_interval,
                        debug=debug,
                    )
                except MemoryError:
                    cache.close()
                    raise MemoryError(
                        f"buffer_arena(max_bytes={max_bytes}): the reserves of the "
                        f"classes up to {size} bytes do not fit the budget; raise "
                        "max_bytes, or give fewer classes or a smaller reserve"
                    ) from None
                except BaseException:
                    cache.close()
                    raise
                # A class's pool is the arena's, not a named pool of its own
                # (metrics read the arena).
                _unname(pool)
                if pool._debug is not None:
                    # Out of quarantine, a buffer serves the arena's line.
                    pool._debug._give_back = _giver(self, pool)
                self._pools.append(pool)
            others = sum(pinned)
            for size, pin, pool in zip(classes, pinned, self._pools, strict=True):
                self._guarantee.append(
                    max(pool.min_nr, (max_bytes - (others - pin)) // size)
                )
        except BaseException:
            for pool in self._pools:
                pool.close()
            raise
        if leak_sampling is not None and not debug:
            self._samplers = [
                LeakSampler(self, pool._cache, leak_sampling, pool._out)
                for pool in self._pools
            ]
            self._countdown = self._samplers[0].countdown
        self._build_table()
        if name is not None:
            _named.add(self)
        self._regate()

    def _build_table(self) -> None:
        """The lookup from a size to its class, in steps of the largest
        power of two that divides every class size: ``_pool_at[k]`` and
        ``_size_at[k]`` serve sizes from ``(k - 1) * step + 1`` to
        ``k * step`` (the last step, sizes above the largest class,
        raises IndexError); exact, since every class ends on a step."""
        classes = self._classes
        shift = min((size & -size).bit_length() - 1 for size in classes)
        steps = min(classes[-1] >> shift, _TABLE_MAX)
        self._shift = shift
        self._round = (1 << shift) - 1
        pool_at: list[SlabPool] = []
        size_at: list[int] = []
        index = 0
        for k in range(steps + 1):
            top = k << shift
            while classes[index] < top:
                index += 1
            pool_at.append(self._pools[index])
            size_at.append(classes[index])
        self._pool_at = pool_at
        self._size_at = size_at

    # -- introspection -----------------------------------------------------

    @property
    def classes(self) -> tuple[int, ...]:
        """The class sizes, smallest first."""
        return self._classes

    @property
    def max_bytes(self) -> int:
        """The budget: the most bytes the slabs of all classes hold for
        ordinary masks."""
        return self._budget.limit

    @property
    def headroom(self) -> int:
        """Bytes beyond ``max_bytes`` that ``GFP.HIGH`` may grow into."""
        return self._budget.cap - self._budget.limit

    @property
    def name(self) -> str | None:
        """The name given at construction, for logs and metrics."""
        return self._name

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
        return self._closed

    @property
    def waiters(self) -> int:
        """Tasks waiting in ``alloc()`` or ``alloc_bulk()`` now."""
        return len(self._line) + len(self._urgent)

    def good_size(self, nbytes: int) -> int:
        """The size of the class that serves ``nbytes``: the slot's whole
        length, for callers that can use all of it (a receive buffer:
        ``await arena.alloc(arena.good_size(n))``).

        Raises:
            TypeError: ``nbytes`` is not an int.
            ValueError: ``nbytes`` is below 1 or above the largest class.
        """
        try:  # the lookup alone; a bad nbytes is explained by _step()
            k = (nbytes + self._round) >> self._shift
            if k > 0:
                return self._size_at[k]
        except (TypeError, IndexError):
            pass
        return self._size_at[self._step(nbytes)]

    def bulk_limit(self, nbytes: int) -> int:
        """The most buffers of ``nbytes`` one ``alloc_bulk()`` may ask for:
        what the budget holds of that class once every buffer is back,
        less what the other classes' reserves may pin."""
        return self._guarantee[self._classes.index(self.good_size(nbytes))]

    def _step(self, nbytes: object) -> int:
        """The lookup table's index for ``nbytes``, checked."""
        if type(nbytes) is not int:
            raise TypeError(f"nbytes must be an int, not {type(nbytes).__name__}")
        if nbytes < 1:
            raise ValueError(f"nbytes must be >= 1, got {nbytes}")
        largest = self._classes[-1]
        if nbytes > largest:
            raise ValueError(
                f"{self!r}: nbytes must be at most {largest}, the largest "
                f"class, got {nbytes} (a frame that large travels in pieces, "
                "or give buffer_arena() larger classes)"
            )
        k = (nbytes + self._round) >> self._shift
        if k >= len(self._pool_at):
            # Past the table: the class by bisection, its step at the top.
            size = self._classes[bisect_left(self._classes, nbytes)]
            k = (size + self._round) >> self._shift
            self._extend_table(k)
        return k

    def _extend_table(self, k: int) -> None:
        """Grow the table to step ``k`` (sizes past _TABLE_MAX steps,
        looked up once by bisection, stay fast afterwards)."""
        classes = self._classes
        pool_at, size_at = self._pool_at, self._size_at
        for step in range(len(pool_at), k + 1):
            index = bisect_left(classes, step << self._shift)
            pool_at.append(self._pools[index])
            size_at.append(classes[index])

    def stats(self) -> ArenaStats:
        """A frozen snapshot of the budget, every class and their total."""
        waiting: dict[int, int] = {}
        for want in [*self._urgent.asks(), *self._line.asks()]:
            if isinstance(want, _Want):
                key = id(want.pool)
                waiting[key] = waiting.get(key, 0) + 1
        short: dict[int, int] = {}  # bytes not asked for, of slices out
        for part, slot, pool in self._lent.values():
            short[id(pool)] = short.get(id(pool), 0) + len(slot) - len(part)
        for size, pool in zip(self._classes, self._pools, strict=True):
            # Debug mode's fresh views and the sampler's aliases are of the
            # bytes asked for.
            lent = pool._debug.lent_sizes() if pool._debug is not None else []
            lent += pool._cache._alias_sizes()
            if lent:
                short[id(pool)] = short.get(id(pool), 0) + sum(size - n for n in lent)
        classes = []
        in_use = requested = 0
        for size, pool in zip(self._classes, self._pools, strict=True):
            pool_stats = replace(pool.stats(), waiters=waiting.get(id(pool), 0))
            classes.append(SizeClassStats(size, pool_stats, pool._cache.stats()))
            in_use += pool_stats.outstanding * size
            requested += pool_stats.outstanding * size - short.get(id(pool), 0)
        budget = self._budget
        return ArenaStats(
            name=self._name,
            max_bytes=budget.limit,
            headroom_bytes=budget.cap - budget.limit,
            bytes_reserved=budget.used,
            high_water_bytes=budget.high_water,
            bytes_in_use=in_use,
            bytes_requested=requested,
            waiters=len(self._line) + len(self._urgent),
            total=_added_up(self._name, [c.pool for c in classes]),
            classes=tuple(classes),
        )

    def outstanding(self) -> list[Outstanding[memoryview]]:
        """Every buffer out with a caller now, with where it was allocated
        (debug mode), oldest first within each class, smallest class first.

        Raises:
            RuntimeError: the arena is not in debug mode.
        """
        if not self._debug:
            raise RuntimeError(
                f"{self!r}: outstanding() needs debug mode: build the arena with "
                "debug=True, or with AIOMEMPOOL_DEBUG=1 in the environment"
            )
        return [entry for pool in self._pools for entry in pool.outstanding()]

    def __repr__(self) -> str:
        name = f" {self._name!r}" if self._name is not None else ""
        state = " closed" if self._closed else ""
        state += " debug" if self._debug else ""
        budget = self._budget
        return (
            f"<BufferArena{name}{state} classes={self._classes[0]}.."
            f"{self._classes[-1]} bytes={budget.used}/{budget.limit} "
            f"waiters={self._line.nparked + self._urgent.nparked}>"
        )

    # -- allocation --------------------------------------------------------

    @overload
    async def alloc(
        self, nbytes: int, gfp_mask: Kernel = ..., *, timeout: float | None = ...
    ) -> memoryview: ...
    @overload
    async def alloc(
        self, nbytes: int, gfp_mask: GFP | int, *, timeout: float | None = ...
    ) -> memoryview | None: ...

    async def alloc(
        self,
        nbytes: int,
        gfp_mask: GFP | int = GFP_KERNEL,
        *,
        timeout: float | None = None,
    ) -> memoryview | None:
        """A writable memoryview of exactly ``nbytes`` bytes, waiting for
        one if ``gfp_mask`` allows.

        The kernel's order, in the class of ``nbytes``: a free buffer or a
        new slab within the budget (the other classes giving back their
        wholly free slabs first), then the class's reserve. If that fails,
        a mask without ``DIRECT_RECLAIM`` returns ``None``; with it, the
        task waits, first come first served with every other size, until
        the buffer can be had. While tasks wait, a new caller queues behind
        them whatever its size: nobody overtakes a waiter, but for urgent
        callers: a mask with ``GFP.HIGH`` (the kernel's ``__GFP_HIGH``) may
        grow into the headroom, and queues ahead of every ordinary waiter,
        behind the urgent ones only (``PooledBufferedProtocol`` asks so for
        the rest of a frame it has begun: its end frees what it holds).

        Awaits only when it has to wait. Cancelling it never loses a
        buffer or a wake-up. The bytes are not zeroed (unless
        ``zero_on_free``).

        Raises:
            ValueError: ``nbytes`` is below 1 or above the largest class; a
                bad ``gfp_mask`` or ``timeout``.
            TypeError: ``nbytes`` is not an int; ``gfp_mask`` or
                ``timeout`` is not of its type.
            PoolClosedError: the arena is closed, or closed while waiting.
            AllocTimeoutError: ``timeout`` seconds passed without a buffer.
        """
        # Typed by annotation: a cast would be a call, compiled.
        view: memoryview | None = self._first_try(nbytes, gfp_mask, timeout)
        if view is not WAIT:
            return view
        return await self._alloc_slow(nbytes, gfp_mask, timeout)

    def _first_try(
        self, nbytes: int, gfp_mask: GFP | int, timeout: float | None
    ) -> Any:
        """alloc()'s first step, for ``element()``: in the steady state, a
        buffer without waiting; else ``WAIT``: ``_alloc_slow()`` goes on
        (and checks the arguments)."""
        if gfp_mask is GFP_KERNEL and timeout is None and not self._gate:
            view = self.alloc_nowait(nbytes, NOWAIT_NOWARN)
            if view is not None:
                return view
        return WAIT

    def _alloc_for(
        self, nbytes: Any, gfp_mask: Any, timeout: float | None
    ) -> Awaitable[memoryview | None]:
        """Lender's: alloc()."""
        if timeout is None:  # no keyword to pass: the common case
            return self.alloc(nbytes, gfp_mask)
        return self.alloc(nbytes, gfp_mask, timeout=timeout)

    def alloc_nowait(
        self, nbytes: int, gfp_mask: GFP | int = GFP_NOWAIT
    ) -> memoryview | None:
        """A writable memoryview of exactly ``nbytes`` bytes, or ``None``,
        without waiting.

        Synchronous, for callbacks (``get_buffer()``). ``GFP_ATOMIC`` may
        grow into the headroom. Returns ``None`` while tasks wait in
        ``alloc()``: it does not overtake them.

        Raises:
            ValueError: ``nbytes`` is below 1 or above the largest class;
                ``gfp_mask`` holds ``GFP.DIRECT_RECLAIM`` (await
                ``alloc()`` to wait), ``GFP.ZERO`` or unknown bits.
            TypeError: ``nbytes`` is not an int, or ``gfp_mask`` not a mask.
            PoolClosedError: the arena is closed.
        """
        # The hot path: the class's own fast path, then a slice of exactly
        # nbytes unless the size is the class's. A bad nbytes fails the
        # comparison or the table (a TypeError, an IndexError) and is
        # explained by _step().
        if (
            gfp_mask is GFP_NOWAIT
            or gfp_mask is NOWAIT_NOWARN
            or gfp_mask is ATOMIC_NOWARN
            or gfp_mask is GFP_ATOMIC
        ) and not self._gate:
            try:
                n = nbytes  # a C integer compiled: a bad nbytes raises here
                k = (n + self._round) >> self._shift
                pool = self._pool_at[k] if k > 0 else None  # k <= 0: nbytes < 1
            except (TypeError, IndexError, OverflowError):
                pool = None
            if pool is None:
                k = self._step(nbytes)  # raises, or a size past the table
                pool = self._pool_at[k]
            # The class pool's fast path (SlabPool.alloc_nowait()'s) on its
            # cache: the top free slot, if the pool is in its steady state.
            cache = pool._cache
            got = None
            if not pool._gate:
                got = cache._pop_free(cache._limit, pool._out)
            if got is not None:
                pool._allocs += 1
            else:
                got = pool.alloc_nowait(gfp_mask)
                if got is None:
                    return None
            view = got
            if self._samplers is not None:
                self._countdown -= 1
                if self._countdown <= 0:
                    return self._watch(pool, view, nbytes)
            if n == len(view):  # the class's size (a C comparison compiled)
                return view
            part = view[:nbytes]
            self._lent[id(part)] = (part, view, pool)
            return part
        k = self._step(nbytes)
        mask = decode_mask(gfp_mask)
        if mask.may_wait:
            raise ValueError(
                "gfp_mask must not hold GFP.DIRECT_RECLAIM, got "
                f"{MaskText(mask.full)}: alloc_nowait() never waits (await "
                "alloc() to wait)"
            )
        if self._closed:
            raise PoolClosedError(f"{self!r}: alloc_nowait() on a closed arena")
        pool = self._pool_at[k]
        if self._clear(mask):
            slots = self._take(pool, 1, mask)
            if slots is not None:
                return self._lend(pool, slots[0], nbytes)
        self._failed(mask)
        return None

    async def _alloc_slow(
        self, nbytes: int, gfp_mask: GFP | int, timeout: float | None
    ) -> memoryview | None:
        """alloc() when the hot path could not serve it."""
        k = self._step(nbytes)
        mask = KERNEL_MASK if gfp_mask is GFP_KERNEL else decode_mask(gfp_mask)
        if self._closed:
            raise PoolClosedError(f"{self!r}: alloc() on a closed arena")
        if timeout is not None:
            check_timeout(timeout)
        pool = self._pool_at[k]
        if self._clear(mask):
            got = self._take(pool, 1, mask)
            if got is not None:
                return self._lend(pool, got[0], nbytes)
        if not mask.may_wait:
            self._failed(mask)
            return None
        if timeout is not None and timeout <= 0:
            raise self._timed_out(pool, mask, timeout)
        slots = await self._wait(pool, 1, mask, timeout)
        return self._lend(pool, slots[0], nbytes)

    def _clear(self, mask: Mask) -> bool:
        """True if a request of ``mask`` may take now: nobody it must queue
        behind waits (urgent ones queue behind urgent waiters only)."""
        if self._urgent.has_live():
            return False
        return mask.high or not self._line.has_live()

    def _take(self, pool: SlabPool, count: int, mask: Mask) -> list[memoryview] | None:
        """``count`` buffers of ``pool``'s class, all or none, counted:
        its cache first (growing within the budget), then its reserve."""
        got = pool._gather(count, mask)
        if mask.high and self._line.nparked:
            # Urgent, it took past ordinary waiters: what it left (the rest
            # of a slab it grew, or slots it gave back, failing) is theirs.
            self._serve()
        if got is None:
            return None
        slots, from_reserve = got
        pool._taken(count, from_reserve)
        return slots

    def _lend(self, pool: SlabPool, slot: memoryview, nbytes: int) -> memoryview:
        """What the caller gets for ``slot``: a fresh view in debug mode,
        a watched alias when sampled, else the slot or a slice of it."""
        debug = pool._debug
        if debug is not None:
            lent: memoryview = debug.lend(slot, nbytes)
            return lent
        if self._samplers is not None:
            self._countdown -= 1
            if self._countdown <= 0:
                return self._watch(pool, slot, nbytes)
        if nbytes == len(slot):
            return slot
        part = slot[:nbytes]
        self._lent[id(part)] = (part, slot, pool)
        return part

    def _watch(self, pool: SlabPool, slot: memoryview, nbytes: int) -> memoryview:
        """The sampled allocation (the countdown reached 0): ``slot``, out
        with its class, lent as a watched alias of its first ``nbytes``."""
        samplers = self._samplers
        assert samplers is not None
        for other in samplers:  # what any class's sampler saw dropped
            other.drain()
        sampler = samplers[self._pools.index(pool)]
        view = sampler.sample(slot, nbytes)
        self._countdown = sampler.countdown
        assert view is not None
        return view

    def _failed(self, mask: Mask) -> None:
        if not mask.nowarn:
            self._warn.warn(
                "%r: allocation failed (gfp_mask=%s)", self, MaskText(mask.full)
            )

    def _timed_out(
        self, pool: SlabPool, mask: Mask, timeout: float | None
    ) -> AllocTimeoutError:
        pool._timeouts += 1
        self._failed(mask)
        return AllocTimeoutError(f"{self!r}: no buffer within {timeout} s")

    # -- bulk allocation ---------------------------------------------------

    @overload
    async def alloc_bulk(
        self,
        count: int,
        nbytes: int,
        gfp_mask: Kernel = ...,
        *,
        timeout: float | None = ...,
    ) -> list[memoryview]: ...
    @overload
    async def alloc_bulk(
        self,
        count: int,
        nbytes: int,
        gfp_mask: GFP | int,
        *,
        timeout: float | None = ...,
    ) -> list[memoryview] | None: ...

    async def alloc_bulk(
        self,
        count: int,
        nbytes: int,
        gfp_mask: GFP | int = GFP_KERNEL,
        *,
        timeout: float | None = None,
    ) -> list[memoryview] | None:
        """``count`` buffers of exactly ``nbytes`` bytes at once, or none:
        ``Mempool.alloc_bulk()`` in the class of ``nbytes``.

        A waiting bulk request holds nothing while it waits, and waits in
        the one line with single requests, first come first served.

        Raises:
            ValueError: ``count`` is below 1 or above ``bulk_limit(nbytes)``
                (what the budget can guarantee at once); a bad ``nbytes``,
                ``gfp_mask`` or ``timeout``.
            TypeError: ``count`` or ``nbytes`` is not an int.
            PoolClosedError: the arena is closed, or closed while waiting.
            AllocTimeoutError: ``timeout`` seconds passed first.
        """
        k = self._step(nbytes)
        pool = self._pool_at[k]
        if type(count) is not int:
            raise TypeError(f"count must be an int, not {type(count).__name__}")
        limit = self._guarantee[self._pools.index(pool)]
        if not 1 <= count <= limit:
            raise ValueError(
                f"{self!r}: count must be from 1 to {limit} for buffers of "
                f"{nbytes} bytes, got {count}: the budget guarantees at most "
                f"{limit} of its class ({self._size_at[k]} bytes) at once"
            )
        mask = KERNEL_MASK if gfp_mask is GFP_KERNEL else decode_mask(gfp_mask)
        if self._closed:
            raise PoolClosedError(f"{self!r}: alloc_bulk() on a closed arena")
        if timeout is not None:
            check_timeout(timeout)
        if self._clear(mask):
            got = self._take(pool, count, mask)
            if got is not None:
                return [self._lend(pool, slot, nbytes) for slot in got]
        if not mask.may_wait:
            self._failed(mask)
            return None
        if timeout is not None and timeout <= 0:
            raise self._timed_out(pool, mask, timeout)
        slots = await self._wait(pool, count, mask, timeout)
        return [self._lend(pool, slot, nbytes) for slot in slots]

    def free_bulk(self, views: Iterable[memoryview | None]) -> None:
        """``free()`` every view of ``views``, even if one is refused; then
        the first error is raised. Synchronous."""
        error: BaseException | None = None
        for view in views:
            try:
                self.free(view)
            except Exception as exc:
                error = error or exc
        if error is not None:
            raise error

    # -- waiting -------------------------------------------------------------

    async def _wait(
        self, pool: SlabPool, count: int, mask: Mask, timeout: float | None
    ) -> list[memoryview]:
        """Wait in line for ``count`` buffers of ``pool``'s class: the
        caller found none with no await since. Returns the slots, counted."""
        line = self._urgent if mask.high else self._line
        fut = line.park(_Want(pool, count, mask))
        if self._line.nparked + self._urgent.nparked == 1:
            loop = self._loop = fut.get_loop()
            self._retry_timer = loop.call_later(
                self._retry_interval, self._retry_expired
            )
        self._gate = True
        pool._waits += 1
        handle = None
        if timeout is not None:
            handle = fut.get_loop().call_later(timeout, self._expire, line, fut)
        start = time.perf_counter()
        try:
            got = await fut
        except BaseException as exc:
            passed_on = line.leave(fut)
            if type(passed_on) is _Handful:
                # Handed before the cancellation arrived: back, for the
                # next in line.
                for slot in passed_on.elements:
                    pool._received(slot)
                    pool._give_back(slot)
            self._serve()
            if type(exc) is RuntimeError and fut.get_loop() is not running_loop():
                pool._waits -= 1
                raise RuntimeError(
                    f"{self!r}: tasks of another event loop wait on this arena; "
                    "an arena serves the tasks of one loop at a time"
                ) from exc
            raise
        finally:
            if handle is not None:
                handle.cancel()
        if got is TIMEDOUT:
            raise self._timed_out(pool, mask, timeout)
        if got is CLOSED:
            raise PoolClosedError(f"{self!r}: closed while waiting")
        handful: _Handful = got
        for slot in handful.elements:
            pool._received(slot)
        pool._taken(count, handful.from_reserve)
        pool._waited(time.perf_counter() - start)
        return handful.elements

    def _serve(self) -> None:
        """Serve the lines, first come first served, the urgent one first,
        for as long as the first waiter can have all it asked for: the one
        that cannot stops those behind it (a large request is not overtaken
        by small ones; an urgent one that waits stops the ordinary ones)."""
        for line in (self._urgent, self._line):
            while True:
                first = line.first()
                if first is None:
                    break
                want = first[1]
                assert isinstance(want, _Want)
                try:
                    got = want.pool._gather(want.count, want.mask)
                except Exception as exc:  # debug mode's CorruptionError: theirs
                    line.fail_first(exc)
                    continue
                if got is None:
                    return
                line.hand(_Handful(*got))
                for slot in got[0]:
                    # Out of the holder set until the waiter has them: a
                    # second free meanwhile is refused (TrackedPool's
                    # hand-off books).
                    want.pool._handed(slot)

    def _expire(self, line: WaitQueue, fut: asyncio.Future[Any]) -> None:
        """A waiter's deadline: it leaves its line, and those behind it may
        be served now."""
        if not fut.done():
            line.expire(fut)
            self._serve()

    def _retry_expired(self) -> None:
        # As Mempool's: memory may have come back although no buffer did
        # (the process freed some, a slab was trimmed).
        self._retry_timer = None
        for pool in self._pools:
            pool._cache._look_again()
        self._serve()
        loop = self._loop
        waiting = len(self._line) + len(self._urgent)
        if waiting and loop is not None and self._retry_timer is None:
            self._retry_timer = loop.call_later(
                self._retry_interval, self._retry_expired
            )

    def _line_emptied(self) -> None:
        self._regate()
        if self._line.nparked or self._urgent.nparked:
            return  # the other line still waits
        timer, self._retry_timer = self._retry_timer, None
        if timer is not None:
            with suppress(RuntimeError):  # uvloop's, once its loop is closed
                timer.cancel()

    def _steady(self) -> bool:
        """Lender's: the gate is down (see _regate())."""
        return not self._gate

    def _regate(self) -> None:
        """Lower ``_gate`` in the steady state: open, nobody waiting, no
        debug mode. Anyone may raise it; only this lowers it."""
        self._gate = (
            self._closed
            or self._line.nparked > 0
            or self._urgent.nparked > 0
            or self._debug
        )

    # -- freeing -----------------------------------------------------------

    def free(self, view: memoryview | None) -> None:
        """Give a buffer back; ``None`` is ignored.

        Synchronous: callable from any callback on the arena's loop. The
        buffer goes back to its class (its reserve first, then its slabs),
        and the first waiter is served if it can be now. After
        ``close()``, buffers still out may be freed: their slabs go. A
        refused free changes nothing.

        Raises:
            DoubleFreeError: ``view`` was freed already (it views the
                memory of a buffer not out).
            ForeignElementError: ``view`` is not a buffer this arena
                handed out (a slice or a copy of one, another pool's).
        """
        entry = self._lent.pop(id(view), None)
        if entry is not None:
            pool = entry[2]
            if pool._gate or pool._zeros is not None:
                pool.free(entry[1])
            else:
                # The class pool's fast path (SlabPool.free()'s): the slot
                # is out with its pool, as it was lent.
                pool._cache._push_free(entry[1], pool._out)
                pool._frees += 1
        elif view is not None:
            self._free_slot(view)
        if self._gate and (self._line.nparked or self._urgent.nparked):
            self._serve()

    def _free_slot(self, view: memoryview) -> None:
        """free() of what is not a slice of the arena's: a whole slot, a
        fresh view or an alias (their class pool maps them back), or the
        error."""
        try:
            pool = self._pool_at[(len(view) + self._round) >> self._shift]
        except ValueError:  # a released view: debug mode lent and took it
            pool = self._releaser(view)
        except (TypeError, IndexError):
            raise ForeignElementError(
                f"{self!r}: {short_repr(view)} is not a buffer this arena handed out"
            ) from None
        try:
            pool.free(view)
        except InvalidFreeError as error:
            raise self._refusal(view, error) from None

    def _releaser(self, view: memoryview) -> SlabPool:
        """The class whose debug mode freed (and released) ``view``: its
        pool names the double free, with both call sites."""
        for pool in self._pools:
            if pool._debug is not None and pool._debug.freed(view):
                return pool
        raise ForeignElementError(
            f"{self!r}: {short_repr(view)} is released: not a buffer this arena has out"
        )

    def _refusal(self, view: object, error: InvalidFreeError) -> InvalidFreeError:
        """The class pool's refusal, said of the arena: a view of the
        memory of one of its slabs that is not out is freed already (or a
        slice of a buffer: either way not the arena's to take), even if the
        first free let that slab go to another class."""
        if isinstance(error, ForeignElementError) and isinstance(view, memoryview):
            try:
                obj = view.obj
            except ValueError:
                obj = None
            for pool in self._pools:
                if pool._cache._viewed_by(obj):
                    return DoubleFreeError(
                        f"{self!r}: {short_repr(view)} views a buffer of the "
                        "arena that is not out: a double free (or a slice of "
                        "a buffer, which only the whole view it came as frees)"
                    )
        return type(error)(f"{self!r}: {error}")

    def free_threadsafe(
        self, view: memoryview | None, *, loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        """Give a buffer back from another thread, through the loop (the
        arena's: the one it was built in, entered or last waited in).

        Raises:
            RuntimeError: no loop is known, or it is closed.
        """
        target = loop if loop is not None else self._loop
        if target is None or target.is_closed():
            raise RuntimeError(
                f"{self!r}: free_threadsafe() needs the arena's event loop; "
                "build it in a running loop, enter it with `async with`, or "
                "pass loop="
            )
        target.call_soon_threadsafe(self.free, view)

    # -- memory back -------------------------------------------------------

    def shrink(self) -> int:
        """Give back every wholly free slab of every class now (the idle
        timer does it after ``trim_after`` seconds); return the bytes.
        Slabs holding a class's reserve stay. Never awaits."""
        before = self._budget.used
        for pool in self._pools:
            pool._cache.shrink()
        return before - self._budget.used

    def close(self) -> None:
        """Free every reserve and refuse further allocations; idempotent.

        Waiting tasks raise ``PoolClosedError``, as does every later
        allocation. Buffers still out may be freed later: each slab goes
        once its last buffer is back. Synchronous.
        """
        if self._closed:
            return
        self._closed = True
        self._gate = True
        self._urgent.close()
        self._line.close()
        for pool in self._pools:
            pool.close()

    async def __aenter__(self) -> BufferArena:
        self._loop = asyncio.get_running_loop()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def element(
        self,
        nbytes: int,
        gfp_mask: GFP | int = GFP_KERNEL,
        *,
        timeout: float | None = None,
    ) -> ElementContext[memoryview]:
        """A buffer of exactly ``nbytes`` bytes for the span of an ``async
        with`` block, freed on exit however the block ends.

        Example:
            ```python
            async with arena.element(len(reply)) as buf:
                buf[:] = reply
            ```

        Raises:
            TypeError, ValueError: a bad ``nbytes``, ``gfp_mask`` or
                ``timeout``, as in ``alloc()``; raised here, not on entry.
            PoolExhaustedError, PoolClosedError, AllocTimeoutError: on
                entry, as ``Mempool.element()`` raises them.
        """
        self._step(nbytes)
        if gfp_mask is not GFP_KERNEL:
            decode_mask(gfp_mask)
        if timeout is not None:
            check_timeout(timeout)
        return ElementContext(self, nbytes, gfp_mask, timeout)


def _per_slab(size: int) -> int:
    """Buffers in a whole slab of a class of ``size``-byte buffers."""
    return max(1, ARENA_SLAB_BYTES // size)


def _slab_bytes(size: int) -> int:
    """The bytes of a whole slab of a class of ``size``-byte buffers."""
    return _per_slab(size) * size


def _giver(
    arena: BufferArena, pool: SlabPool
) -> Callable[[], Callable[[memoryview], None] | None]:
    """For a class's debug mode: what gives back a buffer out of quarantine
    (PoolDebug calls it to get that function, None once the arena or the
    pool is gone): the pool takes it, then the arena serves its line."""
    arena_ref = weakref.ref(arena)
    pool_ref = weakref.ref(pool)

    def give_back(element: memoryview) -> None:
        owner, into = arena_ref(), pool_ref()
        if into is not None:
            into._give_back(element)
        if owner is not None and (owner._line.nparked or owner._urgent.nparked):
            owner._serve()

    def get() -> Callable[[memoryview], None] | None:
        return give_back if pool_ref() is not None else None

    return get


def _unname(pool: SlabPool) -> None:
    """Take a class's pool out of the named pools: the arena stands for it."""
    _mempool._named.discard(pool)


def _added_up(name: str | None, parts: list[MempoolStats]) -> MempoolStats:
    """The classes' stats as one pool's."""
    return MempoolStats(
        name=name,
        min_nr=sum(s.min_nr for s in parts),
        curr_nr=sum(s.curr_nr for s in parts),
        waiters=sum(s.waiters for s in parts),
        allocs=sum(s.allocs for s in parts),
        frees=sum(s.frees for s in parts),
        outstanding=sum(s.outstanding for s in parts),
        reserve_hits=sum(s.reserve_hits for s in parts),
        alloc_fn_failures=sum(s.alloc_fn_failures for s in parts),
        waits=sum(s.waits for s in parts),
        timeouts=sum(s.timeouts for s in parts),
        max_wait_s=max(s.max_wait_s for s in parts),
        wait_counts=tuple(
            sum(c) for c in zip(*(s.wait_counts for s in parts), strict=True)
        ),
        wait_sum_s=sum(s.wait_sum_s for s in parts),
    )


def buffer_arena(
    max_bytes: int,
    *,
    classes: Iterable[int] | None = None,
    min_nr: int | Mapping[int, int] | None = None,
    reserve_bytes: int | None = None,
    headroom: int | None = None,
    zero_on_free: bool = False,
    leak_sampling: int | None = None,
    trim_after: float | None = TRIM_AFTER,
    name: str | None = None,
    retry_interval: float = 5.0,
    debug: bool | None = None,
) -> BufferArena:
    """Buffers of every size up to the largest class, under one budget:
    the everyday allocator of servers whose frames vary.

    ``max_bytes`` bounds the slabs of all classes together; ``headroom``
    (by default ``max_bytes // 16``) more may be grown into by ``GFP.HIGH``
    masks (``GFP_ATOMIC``) only. The slots of slabs already made serve
    every mask.

    ``classes``: the class sizes, by default ``default_classes()``: 256 B
    to 1 MiB, four per doubling (waste under 20% of the slot above 256
    bytes). A class holds up to ``ARENA_SLAB_BYTES // size`` buffers per
    slab (one, for 64 KiB and above): the step in which memory moves
    between classes.

    The reserve, made now: ``min_nr`` buffers in each class (an int, by
    default 1, or a mapping of class size to count, at least 1 each; the
    classes it leaves out keep 1), or ``reserve_bytes``
    split evenly across the classes (each class as many whole buffers as
    its share holds, at least one). Every class keeps one at least: the
    kernel's guarantee that a request of any size makes progress when the
    budget is spent elsewhere.

    ``zero_on_free``, ``leak_sampling``, ``debug`` and ``name`` are as for
    ``buffer_pool``; ``trim_after`` (by default 30 s; None: never) gives
    back the slabs of every class wholly free for that long, never below
    the reserves.

    Example:
        ```python
        arena = buffer_arena(64 << 20, name="rx")
        frame = await arena.alloc(len_of_frame)  # exactly that many bytes
        arena.free(frame)
        ```

    Raises:
        TypeError: an argument is not of its type.
        ValueError: ``max_bytes`` below the largest class; classes not
            increasing, or below 1; both ``min_nr`` and ``reserve_bytes``;
            a reserve count below 1, or for a size that is not a class.
        MemoryError: the reserves do not fit ``max_bytes`` (or memory).
    """
    check_nr("max_bytes", max_bytes)
    sizes = default_classes() if classes is None else _checked_classes(classes)
    if max_bytes < sizes[-1]:
        raise ValueError(
            f"max_bytes must hold one buffer of the largest class ({sizes[-1]} "
            f"bytes), got {max_bytes}"
        )
    if headroom is None:
        headroom = max_bytes // 16
    elif type(headroom) is not int:
        raise TypeError(
            f"headroom must be an int or None, not {type(headroom).__name__}"
        )
    elif headroom < 0:
        raise ValueError(f"headroom must be >= 0 bytes, got {headroom}")
    reserve = _reserve(sizes, min_nr, reserve_bytes)
    if type(zero_on_free) is not bool:
        raise TypeError(
            f"zero_on_free must be a bool, not {type(zero_on_free).__name__}"
        )
    if leak_sampling is not None:
        check_nr("leak_sampling", leak_sampling)
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a str or None, not {type(name).__name__}")
    if type(retry_interval) is bool or not isinstance(retry_interval, (int, float)):
        raise TypeError(
            "retry_interval must be a number of seconds, not "
            f"{type(retry_interval).__name__}"
        )
    if not retry_interval > 0:
        raise ValueError(f"retry_interval must be > 0 seconds, got {retry_interval}")
    # Made now, the reserves fill whole slabs; later they may spread over
    # more (see BufferArena's guarantee), never beyond the budget.
    needed = sum(
        -(-n // _per_slab(size)) * _slab_bytes(size)
        for size, n in zip(sizes, reserve, strict=True)
    )
    if needed > max_bytes:
        raise MemoryError(
            f"buffer_arena(max_bytes={max_bytes}): the reserves ({sum(reserve)} "
            f"buffers in {len(sizes)} classes) may pin up to {needed} bytes of "
            "slabs; raise max_bytes, or give fewer classes or a smaller reserve"
        )
    return BufferArena(
        max_bytes,
        sizes,
        reserve,
        headroom=headroom,
        zero_on_free=zero_on_free,
        leak_sampling=leak_sampling,
        trim_after=trim_after,
        name=name,
        retry_interval=float(retry_interval),
        debug=debug_enabled(debug),
    )


def _checked_classes(classes: Iterable[int]) -> tuple[int, ...]:
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Iterable):
        raise TypeError(
            f"classes must be an iterable of ints, not {type(classes).__name__}"
        )
    sizes = tuple(classes)
    if not sizes:
        raise ValueError("classes must hold at least one size")
    for size in sizes:
        check_nr("each class size", size)
    if any(a >= b for a, b in itertools.pairwise(sizes)):
        raise ValueError(f"classes must be strictly increasing, got {sizes}")
    return sizes


def _reserve(
    sizes: tuple[int, ...],
    min_nr: int | Mapping[int, int] | None,
    reserve_bytes: int | None,
) -> tuple[int, ...]:
    """The reserve of each class, from ``min_nr`` or ``reserve_bytes``."""
    if reserve_bytes is not None:
        if min_nr is not None:
            raise ValueError("give min_nr or reserve_bytes, not both")
        check_nr("reserve_bytes", reserve_bytes)
        share = reserve_bytes // len(sizes)
        return tuple(max(1, share // size) for size in sizes)
    if isinstance(min_nr, Mapping):
        unknown = sorted(set(min_nr) - set(sizes))
        if unknown:
            raise ValueError(
                f"min_nr names sizes that are not classes: {unknown} (the "
                f"classes: {sizes[0]} to {sizes[-1]}; see good_size())"
            )
        for size, count in min_nr.items():
            check_nr(f"min_nr[{size}]", count)
        return tuple(min_nr.get(size, 1) for size in sizes)
    if min_nr is None:
        return tuple(1 for _ in sizes)
    check_nr("min_nr", min_nr)
    return tuple(min_nr for _ in sizes)
