"""The kernel's ready-made pools, and ``buffer_pool``, the everyday one.

``mempool_create_slab_pool()``, ``mempool_create_kmalloc_pool()`` and
``mempool_create_page_pool()`` build a mempool on an allocator the kernel
provides. Here they build a ``Mempool`` on a ``SlabCache`` (slab and page
pools, ``buffer_pool``) or on ``bytearray`` (kmalloc pools), and unlike a
pool on callbacks of the caller's, they know every element they handed out.
Refused with ``DoubleFreeError`` or ``ForeignElementError`` (both
``ValueError``), in every mode, with nothing lost or handed out twice and
the counters unchanged:

* a second free of an element before it is handed out again (an
  immediate double free), wherever the first sent it: back to the
  allocator, into the reserve, or to a waiting task;
* a free of anything the pool does not have out: a slice or a copy of a
  buffer, another cache's buffer, or a buffer of the same cache that
  another pool holds (two pools may share one ``SlabCache``).

Not caught outside debug mode, as in the kernel's SLUB without its debug
options: a stale free, of an element freed and since handed out again. A
buffer pool hands out the same memoryview for a slot at every allocation
(making one per allocation would cost the hot paths), so a stale free is
taken as a free of the buffer's current holder, who then shares it with
the next borrower. Debug mode catches it: it lends a fresh view per
allocation and remembers the freed ones (``DoubleFreeError``, with both
call sites).

How: each pool keeps the ids of the elements out with its callers in a set
of its own, ``_out``, its holder set, which the allocator fills and empties
(``_alloc_fn(mask, out)``, ``_free_fn(element, out)``: the pool's
``pool_data``). An element that goes into the pool's reserve leaves it
(``_push``) and comes back to it when it leaves the reserve (``_pop``), so
``_out`` holds exactly the elements out with the pool's callers, and a free
must find the element there. A buffer that the leak detector lent as an
alias (``leak_sampling``) is missing there: a free of it is a free of the
buffer it stands for (``_claim``).
"""

from __future__ import annotations

import mmap
import sys
from typing import Any, Generic, Protocol, TypeVar, cast

from ._checks import check_nr
from ._leaks import LeakSampler, aliased_slot, unwatch
from ._poison import slot_name
from .errors import DoubleFreeError, ForeignElementError
from .gfp import ATOMIC_NOWARN, GFP, GFP_ATOMIC, GFP_KERNEL, GFP_NOWAIT
from .mempool import Mempool
from .slab import SlabCache, short_repr

__all__ = ["buffer_pool", "kmalloc_pool", "page_pool", "slab_pool"]

T = TypeVar("T")


class _Allocator(Protocol[T]):
    """What a pool of this module needs of its allocator."""

    _watches: dict[int, Any]

    def _alloc_fn(self, gfp_mask: GFP, busy: set[int]) -> T | None: ...
    def _free_fn(self, element: T, busy: set[int]) -> None: ...
    def _refusal(self, element: object, busy: set[int]) -> ValueError: ...


class _Kmalloc:
    """``bytearray(size)`` as an allocator that knows what it handed out."""

    __slots__ = ("_watches", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._watches: dict[int, Any] = {}  # no leak detector: stays empty

    def _alloc_fn(self, gfp_mask: GFP, busy: set[int]) -> bytearray:
        buf = bytearray(self.size)  # a MemoryError means "nothing" to the pool
        busy.add(id(buf))
        return buf

    def _free_fn(self, buf: bytearray, busy: set[int]) -> None:
        try:
            busy.remove(id(buf))
        except KeyError:
            raise self._refusal(buf, busy) from None

    def _refusal(self, element: object, busy: set[int]) -> ValueError:
        # A freed bytearray is forgotten: a second free of one looks foreign.
        return ForeignElementError(
            f"{short_repr(element)} is not an element this kmalloc pool handed "
            "out and has not had back (a double free, a copy or another pool's?)"
        )


class TrackedPool(Mempool[T], Generic[T]):
    """A Mempool on an allocator of this module: it refuses double frees
    and foreign elements. Build one with the functions of this module."""

    # _sampler belongs to _SampledPool, declared on this common base so that
    # _SampledZeroingPool may combine it with _ZeroingPool's slot.
    __slots__ = ("_allocator", "_out", "_owns_allocator", "_sampler")

    def __init__(
        self,
        min_nr: int,
        allocator: _Allocator[T],
        *,
        owns_allocator: bool = False,
        **options: Any,
    ) -> None:
        self._allocator = allocator
        self._owns_allocator = owns_allocator
        # The ids of the elements out with this pool's callers: its holder
        # set in the allocator's books, passed to it as pool_data.
        self._out: set[int] = set()
        super().__init__(
            min_nr, allocator._alloc_fn, allocator._free_fn, self._out, **options
        )
        if self._debug is not None:
            self._debug.strict = True  # it refuses what it did not hand out

    def _push(self, element: T) -> None:
        # Into the reserve: no longer out with a caller.
        try:
            self._out.remove(id(element))
        except KeyError:
            raise self._refusal(element) from None
        super()._push(element)

    def _pop(self) -> T:
        element = super()._pop()
        self._out.add(id(element))
        return element

    def _put(self, element: T) -> None:
        # Every free that is not the hot path's comes here first: to a
        # waiter, the reserve or the allocator, it must be out with a caller
        # of this pool.
        if id(element) not in self._out:
            element = self._claim(element)
        super()._put(element)

    def _claim(self, element: T) -> T:
        """What to take back for ``element``, which this pool does not have
        out: the slot a leak detector lent it for (``leak_sampling``), or
        the error."""
        watches = self._allocator._watches
        slot = aliased_slot(watches, element)
        if slot is None or id(slot) not in self._out:
            raise self._refusal(element)
        unwatch(watches, element)
        return cast(T, slot)

    def _refusal(self, element: object) -> ValueError:
        if any(e is element for e in self._elements):
            return DoubleFreeError(
                f"{self!r}: double free of {short_repr(element)}: it is already "
                "in the pool's reserve"
            )
        return self._allocator._refusal(element, self._out)

    def _describe(self, element: T) -> str:
        allocator = self._allocator
        if isinstance(allocator, SlabCache) and allocator.owns(element):
            return slot_name(allocator, element)
        return short_repr(element)

    def close(self) -> None:
        """Close the pool, and the cache it made for itself, if it did."""
        super().close()
        if self._owns_allocator and isinstance(self._allocator, SlabCache):
            self._allocator.close()


class SlabPool(TrackedPool[memoryview]):
    """A TrackedPool on a ``SlabCache``, specialised (the pool knowing its
    cache): in the steady state its hot paths take from and give back to
    the cache's free list themselves (``alloc_nowait()`` through
    ``SlabCache._pop_free()``, ``alloc()`` and ``free()`` inlining it and
    ``_push_free()``), fewer calls per cycle than through ``alloc_fn`` and
    ``free_fn``; a new slab, the limit, the headroom and a closed cache go
    the general way, through the cache's own code.

    ``_slab_free`` is the cache's free list itself (the cache never
    replaces it): one attribute lookup less per use on the hot paths."""

    __slots__ = ("_slab_free",)
    _allocator: SlabCache

    def __init__(self, min_nr: int, cache: SlabCache, **options: Any) -> None:
        self._slab_free = cache._free
        super().__init__(min_nr, cache, **options)

    async def alloc(
        self, gfp_mask: GFP | int = GFP_KERNEL, *, timeout: float | None = None
    ) -> memoryview | None:
        """As ``Mempool.alloc()``."""
        if gfp_mask is GFP_KERNEL and timeout is None and not self._gate:
            # SlabCache._pop_free(cache._limit, out), inlined: the awaited cycle
            # is the one that must beat an asyncio.Queue of buffers, and a
            # call costs a tenth of it. Only the mechanics are copied; the
            # policy (growth, limit, headroom, closing) stays in the cache.
            cache = self._allocator
            free = self._slab_free
            out = cache._nr_objects - len(free)
            if free and out < cache._limit:
                view = free.pop()
                self._out.add(id(view))
                if out >= cache._high_water:
                    cache._high_water = out + 1
                self._allocs += 1
                return view
        return await Mempool.alloc(self, gfp_mask, timeout=timeout)

    def alloc_nowait(self, gfp_mask: GFP | int = GFP_NOWAIT) -> memoryview | None:
        """As ``Mempool.alloc_nowait()``."""
        # The steady state, and a mask that never waits and asks for no
        # zeroing (by identity: one IntFlag test costs more than the path).
        # The cache's headroom (GFP.HIGH) is the slow path's business.
        if (
            gfp_mask is GFP_NOWAIT
            or gfp_mask is ATOMIC_NOWARN
            or gfp_mask is GFP_ATOMIC
        ) and not self._gate:
            cache = self._allocator
            view = cache._pop_free(cache._limit, self._out)
            if view is not None:
                self._allocs += 1
                return view
        return Mempool.alloc_nowait(self, gfp_mask)

    def free(self, element: memoryview | None) -> None:
        """As ``Mempool.free()``."""
        cache = self._allocator
        # In the steady state of both (the pool's reserve full, the cache
        # open: its _limit is 0 once closed), straight back to the cache.
        if not self._gate and cache._limit and element is not None:
            # SlabCache._push_free(), inlined as _pop_free() is in alloc().
            try:
                self._out.remove(id(element))
            except KeyError:
                # A sampled alias's slot, or the pool's refusal (which knows
                # its own reserve) is raised.
                cache._push_free(self._claim(element), self._out)
            else:
                self._slab_free.append(element)
                cache._frees += 1
            self._frees += 1
        else:
            Mempool.free(self, element)


class _ZeroingPool(SlabPool):
    """A SlabPool that wipes every buffer freed (``zero_on_free``)."""

    __slots__ = ("_zeros",)

    def __init__(self, min_nr: int, cache: SlabCache, **options: Any) -> None:
        self._zeros = bytes(cache.object_size)
        super().__init__(min_nr, cache, **options)
        if self._debug is not None:
            self._debug.zero = True  # zeros, not POISON_INUSE, handed out

    def free(self, element: memoryview | None) -> None:
        """Wipe the element, then free it: the next borrower reads zeros.
        In debug mode poisoning wipes it, and it is zeroed when handed out."""
        if element is not None and self._debug is None:
            if id(element) not in self._out:
                element = self._claim(element)
            element[:] = self._zeros
        super().free(element)


class _SampledPool(SlabPool):
    """A SlabPool with the sampled leak detector (``leak_sampling``): its
    allocations count down, and about one in N lends a watched alias of the
    buffer (see _leaks.py). Debug mode, which tracks every element, turns
    the sampling off."""

    __slots__ = ()
    _sampler: LeakSampler

    def __init__(
        self, min_nr: int, cache: SlabCache, *, leak_sampling: int, **options: Any
    ) -> None:
        check_nr("leak_sampling", leak_sampling)
        super().__init__(min_nr, cache, **options)
        every = leak_sampling if self._debug is None else sys.maxsize
        self._sampler = LeakSampler(self, cache, every, self._out)

    async def alloc(
        self, gfp_mask: GFP | int = GFP_KERNEL, *, timeout: float | None = None
    ) -> memoryview | None:
        """As ``Mempool.alloc()``."""
        # SlabPool.alloc()'s hot path, inlined: awaiting it would cost a
        # coroutine more per call.
        view = None
        if gfp_mask is GFP_KERNEL and timeout is None and not self._gate:
            cache = self._allocator
            view = cache._pop_free(cache._limit, self._out)
            if view is not None:
                self._allocs += 1
        if view is None:
            view = await Mempool.alloc(self, gfp_mask, timeout=timeout)
        sampler = self._sampler
        sampler.countdown -= 1
        return view if sampler.countdown > 0 else sampler.sample(view)

    def alloc_nowait(self, gfp_mask: GFP | int = GFP_NOWAIT) -> memoryview | None:
        """As ``Mempool.alloc_nowait()``."""
        view = None  # SlabPool.alloc_nowait()'s hot path, inlined as above
        if (
            gfp_mask is GFP_NOWAIT
            or gfp_mask is ATOMIC_NOWARN
            or gfp_mask is GFP_ATOMIC
        ) and not self._gate:
            cache = self._allocator
            view = cache._pop_free(cache._limit, self._out)
            if view is not None:
                self._allocs += 1
        if view is None:
            view = Mempool.alloc_nowait(self, gfp_mask)
        sampler = self._sampler
        sampler.countdown -= 1
        return view if sampler.countdown > 0 else sampler.sample(view)


class _SampledZeroingPool(_ZeroingPool, _SampledPool):
    """``zero_on_free`` and ``leak_sampling``."""

    __slots__ = ()


def _pool_class(zero_on_free: bool, options: dict[str, Any]) -> type[SlabPool]:
    if options.get("leak_sampling") is None:
        return _ZeroingPool if zero_on_free else SlabPool
    return _SampledZeroingPool if zero_on_free else _SampledPool


def slab_pool(min_nr: int, cache: SlabCache, **options: Any) -> Mempool[memoryview]:
    """A pool of ``cache``'s buffers: ``mempool_create_slab_pool()``.

    The pool does not own the cache: closing the pool leaves it open.
    ``options`` are those of ``Mempool`` (``name``, ``retry_interval``,
    ``debug``: by default on too if the cache is in debug mode) and
    ``leak_sampling``, as for ``buffer_pool``.
    """
    if not isinstance(cache, SlabCache):
        raise TypeError(f"cache must be a SlabCache, not {type(cache).__name__}")
    if cache._debug:
        # A SlabPool's hot paths skip the cache's checks: a debug pool takes
        # none. With debug=False, only its slow paths are checked.
        options.setdefault("debug", True)
    return _pool_class(False, options)(min_nr, cache, **options)


def kmalloc_pool(min_nr: int, size: int, **options: Any) -> Mempool[bytearray]:
    """A pool of ``bytearray(size)`` elements: ``mempool_create_kmalloc_pool()``.

    Each allocation past the reserve makes a new, zeroed bytearray; freed
    ones beyond the reserve go to the garbage collector.
    """
    check_nr("size", size)
    return TrackedPool(min_nr, _Kmalloc(size), **options)


def page_pool(min_nr: int, order: int = 0, **options: Any) -> Mempool[memoryview]:
    """A pool of page-aligned buffers of ``PAGESIZE << order`` bytes
    (4096 << order on most machines): ``mempool_create_page_pool()``.

    The buffers are writable memoryviews of anonymous memory maps, aligned
    to the page, as O_DIRECT file I/O wants them. ``options`` are those of
    ``Mempool`` and ``leak_sampling``, as for ``buffer_pool``.
    """
    if type(order) is not int or not 0 <= order <= 20:
        raise ValueError(f"order must be an int from 0 to 20, got {order!r}")
    cache = SlabCache(
        mmap.PAGESIZE << order,
        page_aligned=True,
        name=options.get("name"),
        debug=options.get("debug"),
    )
    pool_class = _pool_class(False, options)
    return pool_class(min_nr, cache, owns_allocator=True, **options)


def buffer_pool(
    size: int,
    *,
    min_nr: int,
    max_nr: int | None = None,
    headroom: int | None = None,
    zero_on_free: bool = False,
    page_aligned: bool = False,
    objects_per_slab: int | None = None,
    **options: Any,
) -> Mempool[memoryview]:
    """A pool of ``size``-byte buffers for servers: the everyday entry point.

    The buffers are writable memoryviews carved out of big blocks by a
    ``SlabCache`` of the pool's own. ``min_nr`` of them are reserved up
    front. With ``max_nr``, the pool never holds more than
    ``max_nr + headroom`` buffers (``headroom``, by default
    ``max(1, max_nr // 16)``, only for ``GFP_ATOMIC`` callers), so its
    memory is bounded by ``(max_nr + headroom) * size``: under load,
    ``await pool.alloc()`` waits instead of growing.

    ``zero_on_free=True`` wipes every buffer when it is freed (the kernel's
    init_on_free), so that the next borrower can never read the previous
    one's bytes, another connection's data. It costs a copy of ``size``
    zero bytes per free (about 1.6 us for 64 KiB on a current x86-64; see
    ``python -m benchmarks.debug_overhead``).

    ``leak_sampling=N`` watches about one allocation in N, outside debug
    mode: a buffer dropped without ``free()`` is logged with where it was
    allocated, and goes back to the pool (see ``aiomempool._leaks``). Off
    (None) by default; when on, it costs the hot paths a countdown, and
    each watched allocation a few microseconds.

    ``options`` are those of ``Mempool`` (``name``, ``retry_interval``,
    ``debug``; debug mode applies to the pool and its cache).

    Raises:
        TypeError, ValueError: a size or count that is not an int >= 1, or
            ``min_nr > max_nr``.
        MemoryError: the reserve could not be made.
    """
    check_nr("size", size)
    check_nr("min_nr", min_nr)
    if max_nr is not None:
        check_nr("max_nr", max_nr)
        if min_nr > max_nr:
            raise ValueError(f"min_nr must be <= max_nr, got {min_nr} > {max_nr}")
    if type(zero_on_free) is not bool:
        raise TypeError(
            f"zero_on_free must be a bool, not {type(zero_on_free).__name__}"
        )
    cache = SlabCache(
        size,
        objects_per_slab=objects_per_slab,
        max_objects=max_nr,
        headroom=headroom,
        page_aligned=page_aligned,
        name=options.get("name"),
        debug=options.get("debug"),
    )
    try:
        pool_class = _pool_class(zero_on_free, options)
        return pool_class(min_nr, cache, owns_allocator=True, **options)
    except BaseException:
        cache.close()
        raise
