"""The kernel's ready-made pools, and ``buffer_pool``, the everyday one.

``mempool_create_slab_pool()``, ``mempool_create_kmalloc_pool()`` and
``mempool_create_page_pool()`` build a mempool on an allocator the kernel
provides. Here ``slab_pool()``, ``kmalloc_pool()`` and ``page_pool()`` build
a ``Mempool`` on a ``SlabCache`` (slab and page pools, ``buffer_pool``) or
on ``bytearray`` (kmalloc pools), and unlike a pool on callbacks of the
caller's, they know every element they handed out. Refused with
``DoubleFreeError`` or ``ForeignElementError`` (both ``ValueError``), in
every mode, with nothing lost or handed out twice and the counters
unchanged:

* a second free of an element before it is handed out again (an
  immediate double free), wherever the first sent it: back to the
  allocator, into the reserve, or to a waiting task that has not run yet
  (``_handed()``: the element leaves ``_out`` until the task has it);
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
(``_add_element``) and comes back to it when it leaves the reserve
(``_remove_element``), so ``_out`` holds exactly the elements out with the
pool's callers, and a free must find the element there. A buffer that the
leak detector lent as an alias (``leak_sampling``) is missing there: a free
of it is a free of the buffer it stands for (``_claim``).
"""

from __future__ import annotations

import mmap
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

from ._checks import check_nr, short_repr
from ._leaks import LeakSampler
from .debug import PoolDebug, reserved_twice
from .errors import DoubleFreeError, ForeignElementError
from .gfp import ATOMIC_NOWARN, GFP, GFP_ATOMIC, GFP_KERNEL, GFP_NOWAIT, NOWAIT_NOWARN
from .mempool import WAIT, Kernel, Mempool
from .slab import SlabCache

if TYPE_CHECKING:
    from typing import Generic as _Generic
else:  # a base an extension type can take: see _generic.py
    from ._generic import Generic as _Generic

__all__ = ["TRIM_AFTER", "buffer_pool", "kmalloc_pool", "page_pool", "slab_pool"]

#: ``buffer_pool()``'s default ``trim_after``: seconds a slab stays wholly
#: free before its memory goes back to the operating system.
TRIM_AFTER = 30.0

T = TypeVar("T")


class _Kmalloc:
    """``bytearray(size)`` as an allocator that knows what it handed out."""

    __slots__ = ("pool", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        #: The pool it serves, weakly (set by TrackedPool), for messages.
        self.pool: Callable[[], object] | None = None

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
        pool = self.pool() if self.pool is not None else "a kmalloc pool"
        return ForeignElementError(
            f"{pool!r}: {short_repr(element)} is not an element this pool handed "
            "out and has not had back (a double free, a copy or another pool's?)"
        )

    def _alias_slot(self, element: object) -> None:
        return None  # no leak detector lends aliases of bytearrays

    def _take_alias(self, element: object) -> None:
        return None


# The bases name classes, not subscripts: an extension type's bases must be
# classes (see _native.py), so the type checker sees Mempool[Any] beneath
# TrackedPool[T], and TrackedPool[Any] beneath SlabPool; the constructors'
# return types (Mempool[memoryview], Mempool[bytearray]) are their users'.
class TrackedPool(Mempool, _Generic[T]):  # type: ignore[type-arg]
    """A Mempool on an allocator of this module: it refuses double frees
    and foreign elements. Build one with the functions of this module."""

    __slots__ = ("_allocator", "_handing", "_out", "_owns_allocator")

    def __init__(
        self,
        min_nr: int,
        allocator: SlabCache | _Kmalloc,
        *,
        owns_allocator: bool = False,
        **options: Any,
    ) -> None:
        self._allocator = allocator
        self._owns_allocator = owns_allocator
        if isinstance(allocator, _Kmalloc):
            allocator.pool = weakref.ref(self)
        # The ids of the elements out with this pool's callers: its holder
        # set in the allocator's books, passed to it as pool_data.
        self._out: set[int] = set()
        # Handed to a waiter whose task has not run yet: out of _out, so
        # that a second free before the waiter has it is refused.
        self._handing: set[int] = set()
        alloc_fn = cast(Callable[[GFP, Any], "T | None"], allocator._alloc_fn)
        free_fn = cast(Callable[[T, Any], object], allocator._free_fn)
        super().__init__(min_nr, alloc_fn, free_fn, self._out, **options)

    def _make_debug(self, *, strict: bool = True, zero: bool = False) -> PoolDebug[T]:
        # strict: it refuses what it did not hand out.
        return super()._make_debug(strict=True, zero=zero)

    def _add_element(self, element: T) -> None:
        # Into the reserve: no longer out with a caller.
        try:
            self._out.remove(id(element))
        except KeyError:
            raise self._refusal(element) from None
        super()._add_element(element)

    def _remove_element(self, to_caller: bool = True) -> T:
        element: T = super()._remove_element(to_caller)
        self._out.add(id(element))
        return element

    def _give_back(self, element: T) -> None:
        # Every free that is not the hot path's comes here first: to a
        # waiter, the reserve or the allocator, it must be out with a caller
        # of this pool.
        if id(element) not in self._out:
            element = self._claim(element)
        super()._give_back(element)
        if id(element) in self._out:
            # Neither in the reserve nor back with the allocator: handed to
            # a waiter, whose task has not run yet.
            self._handed(element)

    def _handed(self, element: T) -> None:
        self._out.discard(id(element))
        self._handing.add(id(element))

    def _received(self, element: T) -> None:
        self._handing.discard(id(element))
        self._out.add(id(element))

    def _claim(self, element: T) -> T:
        """What to take back for ``element``, which this pool does not have
        out: the slot a leak detector lent it for (``leak_sampling``), or
        the error."""
        allocator = self._allocator
        slot = allocator._alias_slot(element)
        if slot is None or id(slot) not in self._out:
            raise self._refusal(element)
        allocator._take_alias(element)
        return cast(T, slot)

    def _refusal(self, element: object) -> ValueError:
        if any(e is element for e in self._elements):
            return reserved_twice(self, element)
        if id(element) in self._handing:
            return DoubleFreeError(
                f"{self!r}: double free of {short_repr(element)}: it was "
                "handed to a task waiting in alloc(), which has not run yet"
            )
        refusal = self._allocator._refusal(element, self._out)
        if isinstance(self._allocator, SlabCache):
            # The cache speaks of itself: say which pool refused, first.
            return type(refusal)(f"{self!r}: {refusal}")
        return refusal

    def _describe(self, element: T) -> str:
        allocator = self._allocator
        if isinstance(allocator, SlabCache):
            return allocator._slot_name(element)
        return short_repr(element)

    def _prealloc_failure(self, made: int, count: int) -> str:
        allocator = self._allocator
        if isinstance(allocator, SlabCache) and allocator.max_objects is not None:
            return (
                f"{self!r}: the cache holds at most max_objects="
                f"{allocator.max_objects} buffers for the reserve and every "
                f"caller together (the headroom is GFP_ATOMIC's): {made} of "
                f"the {count} more asked for could be made"
            )
        return super()._prealloc_failure(made, count)

    def close(self) -> None:
        """Close the pool, and the cache it made for itself, if it did."""
        super().close()
        if self._owns_allocator and isinstance(self._allocator, SlabCache):
            self._allocator.close()


class SlabPool(TrackedPool):  # type: ignore[type-arg]
    """A TrackedPool on a ``SlabCache``, specialised (the pool knowing its
    cache): in the steady state its hot paths take from and give back to
    the cache's free list themselves (``alloc_nowait()`` through
    ``SlabCache._pop_free()``, ``alloc()`` and ``free()`` inlining it and
    ``_push_free()``: the fields they touch are listed where the cache
    defines them), fewer calls per cycle than through ``alloc_fn`` and
    ``free_fn``; a new slab, the limit, the headroom and a closed cache go
    the general way, through the cache's own code.

    Two options, attributes tested on the hot paths, None when off:

    * ``_zeros`` (``zero_on_free``): the zero bytes every buffer freed is
      wiped with, before anyone else can see it.
    * ``_sampler`` (``leak_sampling``): the sampled leak detector; the
      allocations count down, and about one in N lends a watched alias of
      the buffer (see _leaks.py). Debug mode, which tracks every element,
      leaves it off.

    ``_cache`` is the cache, the allocator of TrackedPool's ``_allocator``:
    the compiled build types it, and reads its fields from C."""

    __slots__ = ("_cache", "_sampler", "_zeros")

    def __init__(
        self,
        min_nr: int,
        cache: SlabCache,
        *,
        zero_on_free: bool = False,
        leak_sampling: int | None = None,
        **options: Any,
    ) -> None:
        if type(zero_on_free) is not bool:
            raise TypeError(
                f"zero_on_free must be a bool, not {type(zero_on_free).__name__}"
            )
        if leak_sampling is not None:
            check_nr("leak_sampling", leak_sampling)
        self._cache = cache
        self._zeros = bytes(cache.object_size) if zero_on_free else None
        self._sampler: LeakSampler | None = None
        super().__init__(min_nr, cache, **options)
        if leak_sampling is not None and self._debug is None:
            self._sampler = LeakSampler(self, cache, leak_sampling, self._out)

    def _bulk_limit(self) -> int:
        # A bounded cache guarantees its max_objects once the others are
        # back (the reserve's count among them); an unbounded one nothing
        # beyond the reserve.
        limit = self._cache.max_objects
        return self._min_nr if limit is None else max(self._min_nr, limit)

    def _make_debug(
        self, *, strict: bool = True, zero: bool = False
    ) -> PoolDebug[memoryview]:
        # zero: zeros, not POISON_INUSE, are lent (zero_on_free).
        return super()._make_debug(strict=strict, zero=self._zeros is not None)

    @overload
    async def alloc(
        self, gfp_mask: Kernel = ..., *, timeout: float | None = ...
    ) -> memoryview: ...
    @overload
    async def alloc(
        self, gfp_mask: GFP | int, *, timeout: float | None = ...
    ) -> memoryview | None: ...

    async def alloc(
        self, gfp_mask: GFP | int = GFP_KERNEL, *, timeout: float | None = None
    ) -> memoryview | None:
        """As ``Mempool.alloc()``."""
        # Typed by annotation: a cast would be a call, compiled.
        got: memoryview | None = self._first_try(None, gfp_mask, timeout)
        if got is WAIT:
            # Mempool's tries once more (this _first_try()), then waits.
            got = await Mempool.alloc(self, gfp_mask, timeout=timeout)
        sampler = self._sampler
        if sampler is None:
            return got
        sampler.countdown -= 1  # as in alloc_nowait(): change both together
        return got if sampler.countdown > 0 else sampler.sample(got)

    def _first_try(self, nbytes: Any, gfp_mask: Any, timeout: float | None) -> Any:
        """As ``Mempool._first_try()``: in the steady state, the cache's top
        free slot (the policy of growth, limit, headroom and closing stays
        the cache's). Not sampled for leaks (alloc() samples what it hands
        out): ``element()``'s buffers come back at the block's end."""
        if gfp_mask is GFP_KERNEL and timeout is None and not self._gate:
            cache = self._cache
            view = cache._pop_free(cache._limit, self._out)
            if view is not None:
                self._allocs += 1
                return view
        return Mempool._first_try(self, nbytes, gfp_mask, timeout)

    def alloc_nowait(self, gfp_mask: GFP | int = GFP_NOWAIT) -> memoryview | None:
        """As ``Mempool.alloc_nowait()``."""
        # The steady state, and a mask that never waits and asks for no
        # zeroing (by identity: one IntFlag test costs more than the path).
        # The cache's headroom (GFP.HIGH) is the slow path's business.
        if (
            gfp_mask is GFP_NOWAIT
            or gfp_mask is NOWAIT_NOWARN
            or gfp_mask is ATOMIC_NOWARN
            or gfp_mask is GFP_ATOMIC
        ) and not self._gate:
            cache = self._cache
            view = cache._pop_free(cache._limit, self._out)
            if view is not None:
                self._allocs += 1
                sampler = self._sampler
                if sampler is None:
                    return view
                sampler.countdown -= 1  # as below: change both together
                return view if sampler.countdown > 0 else sampler.sample(view)
        got = Mempool.alloc_nowait(self, gfp_mask)
        sampler = self._sampler
        if sampler is None:
            return got
        sampler.countdown -= 1
        return got if sampler.countdown > 0 else sampler.sample(got)

    def free(self, element: memoryview | None) -> None:
        """As ``Mempool.free()``; with ``zero_on_free``, the buffer is wiped
        first, so that the next borrower (or waiter) reads zeros. In debug
        mode poisoning wipes it, and it is zeroed when handed out."""
        cache = self._cache
        # In the steady state of both (the pool's reserve full, the cache
        # open: its _limit is 0 once closed), straight back to the cache;
        # a pool that zeroes goes the general way (the wipe costs far more).
        if (
            not self._gate
            and cache._limit
            and element is not None
            and self._zeros is None
        ):
            try:
                cache._push_free(element, self._out)
            except ValueError:
                # A buffer this pool did not lend: the pool's refusal, which
                # knows its own reserve, is raised.
                self._claim(element)
                raise
            self._frees += 1
            return
        if element is not None and self._zeros is not None and self._debug is None:
            if id(element) not in self._out:
                element = self._claim(element)  # an alias's slot, or raises
            element[:] = self._zeros
        Mempool.free(self, element)


def slab_pool(
    min_nr: int, cache: SlabCache, *, leak_sampling: int | None = None, **options: Any
) -> Mempool[memoryview]:
    """A pool of ``cache``'s buffers: ``mempool_create_slab_pool()``.

    The pool does not own the cache: closing the pool leaves it open.
    Several pools may share one cache; each refuses the others' buffers.
    ``options`` are those of ``Mempool`` (``name``, ``retry_interval``,
    ``debug``: by default on too if the cache is in debug mode), and
    ``leak_sampling`` is as for ``buffer_pool``.

    Raises:
        TypeError: ``cache`` is not a ``SlabCache``; an option is not of
            its type.
        ValueError: a count is < 1.
        MemoryError: the reserve could not be made.
    """
    if not isinstance(cache, SlabCache):
        raise TypeError(f"cache must be a SlabCache, not {type(cache).__name__}")
    if cache.debug:
        # A SlabPool's hot paths skip the cache's checks: a debug pool takes
        # none. With debug=False, only its slow paths are checked.
        options.setdefault("debug", True)
    return SlabPool(min_nr, cache, leak_sampling=leak_sampling, **options)


def kmalloc_pool(min_nr: int, size: int, **options: Any) -> Mempool[bytearray]:
    """A pool of ``bytearray(size)`` elements: ``mempool_create_kmalloc_pool()``.

    Each allocation past the reserve makes a new, zeroed bytearray; freed
    ones beyond the reserve go to the garbage collector. ``options`` are
    those of ``Mempool``.

    Raises:
        TypeError: ``size`` is not an int, an option is not of its type,
            or a buffer pool's option was given (``leak_sampling``,
            ``zero_on_free``: they need a pool of a SlabCache's buffers).
        ValueError: a count is < 1.
        MemoryError: the reserve could not be made.
    """
    check_nr("size", size)
    for option in ("leak_sampling", "zero_on_free"):
        if option in options:
            raise TypeError(
                f"{option} needs a pool of a SlabCache's buffers (buffer_pool, "
                "slab_pool, page_pool), not a kmalloc pool"
            )
    return TrackedPool(min_nr, _Kmalloc(size), **options)


def page_pool(
    min_nr: int, order: int = 0, *, leak_sampling: int | None = None, **options: Any
) -> Mempool[memoryview]:
    """A pool of page-aligned buffers: ``mempool_create_page_pool()``.

    Each buffer holds ``PAGESIZE << order`` bytes (4096 << order on most
    machines). The buffers are writable memoryviews of anonymous memory maps, aligned
    to the page, as O_DIRECT file I/O wants them. ``options`` are those of
    ``Mempool``, and ``leak_sampling`` is as for ``buffer_pool``.

    Raises:
        TypeError: ``order`` is not an int, or an option is not of its type.
        ValueError: ``order`` is not from 0 to 20; a count is < 1.
        MemoryError: the reserve could not be made.
    """
    if type(order) is not int:
        raise TypeError(f"order must be an int, not {type(order).__name__}")
    if not 0 <= order <= 20:
        raise ValueError(f"order must be from 0 to 20, got {order}")
    cache = SlabCache(
        mmap.PAGESIZE << order,
        page_aligned=True,
        name=options.get("name"),
        debug=options.get("debug"),
    )
    try:
        return SlabPool(
            min_nr, cache, owns_allocator=True, leak_sampling=leak_sampling, **options
        )
    except BaseException:
        cache.close()
        raise


def buffer_pool(
    size: int,
    *,
    min_nr: int,
    max_nr: int | None = None,
    headroom: int | None = None,
    zero_on_free: bool = False,
    page_aligned: bool = False,
    objects_per_slab: int | None = None,
    leak_sampling: int | None = None,
    trim_after: float | None = TRIM_AFTER,
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
    zero bytes per free (about 1.6 us for 64 KiB on a current x86-64).

    ``leak_sampling=N`` watches about one allocation in N, outside debug
    mode: a buffer dropped without ``free()`` is logged with where it was
    allocated, and goes back to the pool. Off (None) by default; when on,
    it costs the hot paths a countdown, and each watched allocation a few
    microseconds.

    ``trim_after`` (by default ``TRIM_AFTER``, 30 seconds; None: never)
    gives back the memory of slabs wholly free for that long, never below
    the reserve: after a burst, the pool's memory comes back (see
    ``SlabCache``).

    ``options`` are those of ``Mempool`` (``name``, ``retry_interval``,
    ``debug``; debug mode applies to the pool and its cache).

    Example:
        ```python
        pool = buffer_pool(65536, min_nr=16, max_nr=1024, name="rx")
        buf: memoryview = await pool.alloc()
        pool.free(buf)
        ```

    Raises:
        TypeError: a size or count is not an int, or an option is not of its
            type.
        ValueError: a size or count is below 1, or ``min_nr > max_nr``.
        MemoryError: the reserve could not be made.
    """
    check_nr("size", size)
    check_nr("min_nr", min_nr)
    if max_nr is not None:
        check_nr("max_nr", max_nr)
        if min_nr > max_nr:
            raise ValueError(f"min_nr must be <= max_nr, got {min_nr} > {max_nr}")
    cache = SlabCache(
        size,
        objects_per_slab=objects_per_slab,
        max_objects=max_nr,
        headroom=headroom,
        page_aligned=page_aligned,
        name=options.get("name"),
        debug=options.get("debug"),
        trim_after=trim_after,
    )
    try:
        return SlabPool(
            min_nr,
            cache,
            owns_allocator=True,
            zero_on_free=zero_on_free,
            leak_sampling=leak_sampling,
            **options,
        )
    except BaseException:
        cache.close()
        raise
