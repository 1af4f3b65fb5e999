"""SlabCache: the kernel's kmem_cache, a cache of fixed-size buffers.

A cache grows by whole slabs. A slab is one contiguous block (a
``bytearray``, or an anonymous ``mmap`` for page alignment) cut into
``objects_per_slab`` slots of ``object_size`` bytes. One ``memoryview`` per
slot is made with the slab and handed out at every allocation of the slot:
the hot path makes no buffer, and the memory never fragments.

Bookkeeping, on the event loop's thread (nothing here is thread-safe):

* ``_free``: the free list, a stack of slot views (top at the end): reuse
  is most-recently-freed first, the buffer still warm in the CPU cache.
* ``_busy``: ``id()`` of every view that ``alloc()`` handed out and that
  is not freed yet. A pool of this package keeps the ids of the views it
  has out in a set of its own, its holder set, which it passes to
  ``_alloc_fn(mask, busy)`` and ``_free_fn(view, busy)`` (as a Mempool's
  ``pool_data``: ``mempool_alloc_slab()``); ``alloc()`` and ``free()`` pass
  ``_busy``. A free must find the view in the set it names, so two pools
  sharing a cache cannot free each other's buffers. The cache keeps its
  slot views alive, so their ids name them and nothing else.
* ``_slots``: ``id(view) -> (slab, index)`` for every slot view, to name
  the slot in error messages (``_slot_name()``) and to find a slab's views
  in ``shrink()``.
* ``_given_back``: the maps of the slabs given back while a view of theirs
  was still alive, held weakly, so that a free of such a stale view is told
  a double free, not a foreign buffer (``_viewed_by()``).
* ``_aliases``: ``id(alias) -> alias record`` for the buffers a leak
  detector lent as an alias of their slot (``_leaks.LeakSampler``
  registers them with ``_add_alias()``): a free of an alias frees its slot
  (``_take_alias()``).

Invariants: a slot view is in exactly one of the free list and the holder
sets, or lent to a mempool's reserve (in none), or, once the cache is closed,
free in a slab that still has objects out (counted in ``_stranded``: the
free list is emptied by ``close()``, since nothing is allocated again).
Objects "out" are counted as ``_nr_objects - len(_free)`` rather than
``len(_busy)``: whatever is not on the free list is out, whoever holds it
(a caller, or a mempool's reserve it was lent to), and counts against
``max_objects``. ``_nr_objects <= _cap`` (``max_objects + headroom``):
``_grow()`` never makes a slab that would pass it.
"""

from __future__ import annotations

import asyncio
import mmap
import sys
import time
import weakref
from contextlib import suppress
from typing import Protocol

from ._budget import Budget
from ._checks import check_nr, debug_enabled, running_loop, short_repr
from ._poison import check_poison, poison
from .errors import (
    CorruptionError,
    DoubleFreeError,
    ForeignElementError,
    PoolClosedError,
)
from .gfp import GFP, GFP_KERNEL, GFP_NOWAIT, decode_mask
from .stats import SlabStats

__all__ = ["SlabCache"]

SLAB_BYTES = 1 << 20
"""A slab's size when objects_per_slab is not given: about this many bytes."""


class _Alias(Protocol):
    """What the cache needs of a leak detector's alias record."""

    @property
    def slot(self) -> memoryview: ...
    @property
    def nbytes(self) -> int: ...
    def is_alias(self, view: object) -> bool: ...
    def take_back(self) -> memoryview: ...


class _Slab:
    """One block and the views of its slots; ``number`` names it in messages."""

    __slots__ = ("base", "block", "idle_since", "number", "views")

    def __init__(self, number: int, block: bytearray | mmap.mmap, size: int) -> None:
        self.number = number
        self.block = block
        self.idle_since: float | None = None  # seen wholly free since (trim)
        self.base = memoryview(block)
        # Slices of one memoryview: writable, contiguous, adjacent.
        self.views = [
            self.base[offset : offset + size] for offset in range(0, len(block), size)
        ]

    def release(self) -> None:
        """Release every view and the block, as far as others let us: a
        view exported further (a numpy array, a slice kept) blocks that, and
        then the memory goes with the last of those instead."""
        for view in self.views:
            with suppress(BufferError):
                view.release()
        self.base.release()
        if isinstance(self.block, mmap.mmap):
            with suppress(BufferError):
                self.block.close()


class SlabCache:
    """A cache of ``object_size``-byte buffers carved out of big blocks.

    Picture egg cartons: a slab is a carton of ``objects_per_slab`` cups,
    bought whole; an egg (a buffer) leaves its cup and comes back to it,
    and a carton goes (``shrink()``) only once all its eggs are back.
    ``alloc()`` hands out a writable ``memoryview`` of exactly
    ``object_size`` bytes, ``free()`` takes it back; neither awaits, so both
    may be called from any callback on the loop's thread.

    ``objects_per_slab`` defaults to about 1 MiB worth, at least 1.
    ``max_objects`` bounds the objects out at once: ``alloc()`` then
    returns None, except for a mask with ``GFP.HIGH`` (``GFP_ATOMIC``),
    which may take up to ``headroom`` objects more: the emergency headroom,
    by default ``max(1, max_objects // 16)``. The cache never holds more
    than ``max_objects + headroom`` objects, so its memory is bounded by
    ``(max_objects + headroom) * object_size``; ``objects_per_slab`` is cut
    down to that total, and the last slab may be smaller than the others.

    With ``page_aligned=True`` every slab is an anonymous ``mmap``, so each
    buffer starts on a page boundary (for ``O_DIRECT`` I/O); then
    ``object_size`` must be a multiple of ``mmap.PAGESIZE``.

    ``trim_after`` (seconds, or None for never, the default) gives back a
    slab once it has been wholly free for that long, on a timer of the loop
    the cache grew in: the memory of a burst comes back after it. A slab
    with a buffer out, or lent to a mempool's reserve, never goes; the
    timer ticks every ``trim_after / 2`` seconds while the cache holds more
    than one slab, and costs the hot paths nothing.

    ``debug=True`` (by default, if ``AIOMEMPOOL_DEBUG`` is "1", "true" or
    "yes"; see ``aiomempool.debug``) poisons every free buffer, checks the
    poison when it is handed out (``CorruptionError`` on a mismatch) and
    fills it with 0x5a: a caller must not assume zeros.

    Example:
        ```python
        cache = SlabCache(65536, max_objects=64, name="rx")
        buf = cache.alloc()  # None once 64 buffers are out
        n = sock.recv_into(buf)
        cache.free(buf)
        ```

    Raises:
        TypeError: an argument is not of its type.
        ValueError: a count is < 1 (``headroom`` < 0, or > 0 without
            ``max_objects``); ``page_aligned`` and ``object_size`` is not a
            multiple of the page size.
    """

    __slots__ = (
        "__weakref__",
        "_aliases",
        "_alloc_failures",
        "_budget",
        "_busy",
        "_cap",
        "_closed",
        "_debug",
        "_free",
        "_frees",
        "_given_back",
        "_headroom",
        "_high_water",
        "_limit",
        "_mapped",
        "_max_objects",
        "_name",
        "_next_number",
        "_nr_objects",
        "_object_size",
        "_objects_per_slab",
        "_out_by_slab",
        "_page_aligned",
        "_slabs",
        "_slots",
        "_stranded",
        "_trim_after",
        "_trim_floor",
        "_trim_timer",
        "_unreclaimable",
    )  # fmt: skip

    def __init__(
        self,
        object_size: int,
        *,
        objects_per_slab: int | None = None,
        max_objects: int | None = None,
        headroom: int | None = None,
        page_aligned: bool = False,
        name: str | None = None,
        debug: bool | None = None,
        trim_after: float | None = None,
    ) -> None:
        check_nr("object_size", object_size)
        if trim_after is not None:
            if type(trim_after) is bool or not isinstance(trim_after, (int, float)):
                raise TypeError(
                    "trim_after must be a number of seconds or None, not "
                    f"{type(trim_after).__name__}"
                )
            if not trim_after > 0:  # also refuses NaN
                raise ValueError(f"trim_after must be > 0 seconds, got {trim_after}")
        if objects_per_slab is not None:
            check_nr("objects_per_slab", objects_per_slab)
        if max_objects is not None:
            check_nr("max_objects", max_objects)
        if headroom is not None:
            if type(headroom) is not int:
                raise TypeError(
                    f"headroom must be an int or None, not {type(headroom).__name__}"
                )
            if headroom < 0:
                raise ValueError(f"headroom must be >= 0, got {headroom}")
            if headroom and max_objects is None:
                raise ValueError("headroom needs max_objects: a limit to go beyond")
        if type(page_aligned) is not bool:
            raise TypeError(
                f"page_aligned must be a bool, not {type(page_aligned).__name__}"
            )
        if page_aligned and object_size % mmap.PAGESIZE:
            raise ValueError(
                f"object_size must be a multiple of mmap.PAGESIZE "
                f"({mmap.PAGESIZE}) when page_aligned=True, got {object_size}"
            )
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, not {type(name).__name__}")
        if headroom is None:
            headroom = 0 if max_objects is None else max(1, max_objects // 16)
        if objects_per_slab is None:
            objects_per_slab = max(1, SLAB_BYTES // object_size)
        # _limit: the most objects out for an ordinary mask; _cap: for
        # GFP.HIGH, and the most objects the slabs ever hold in total.
        if max_objects is None:
            self._limit = self._cap = sys.maxsize
        else:
            self._limit = max_objects
            self._cap = max_objects + headroom
            objects_per_slab = min(objects_per_slab, self._cap)
        self._object_size = object_size
        self._objects_per_slab = objects_per_slab
        self._max_objects = max_objects
        self._headroom = headroom
        self._page_aligned = page_aligned
        self._name = name
        self._debug = debug_enabled(debug)
        self._aliases: dict[int, _Alias] = {}
        self._closed = False
        # The fast paths of SlabPool (pools.py) and BufferArena (arena.py)
        # call _pop_free() and _push_free() (C calls, compiled), and read
        # _limit.
        self._free: list[memoryview] = []
        self._busy: set[int] = set()
        self._slots: dict[int, tuple[_Slab, int]] = {}
        self._slabs: dict[int, _Slab] = {}  # by number, in order of making
        # The maps of the slabs given back while a view of theirs was still
        # alive (a buffer freed, its slab reclaimed, the stale view kept):
        # held weakly, so that a later free of such a view is told a double
        # free (_viewed_by()). A bytearray cannot be weakly referenced: the
        # slabs of a cache without maps are not remembered.
        self._given_back: weakref.WeakSet[mmap.mmap] = weakref.WeakSet()
        # After close(): the objects each slab has out, and the free slots
        # of those slabs (see free()).
        self._out_by_slab: dict[_Slab, int] = {}
        self._stranded = 0
        # Idle trimming (see _trim()): the timer runs on the loop the cache
        # last grew in, while it holds more than _trim_floor slabs.
        self._trim_after = None if trim_after is None else float(trim_after)
        self._trim_timer: asyncio.TimerHandle | None = None
        # The slabs the trim timer stops at (it ticks while the cache holds
        # more): a cache of its own keeps its last slab warm; a cache that
        # shares a Budget lets every idle slab go, its memory wanted
        # elsewhere.
        self._trim_floor = 1
        # Slabs as anonymous maps rather than bytearrays (page_aligned, or
        # a cache sharing a budget: see _share()).
        self._mapped = page_aligned
        # A Budget shared with other caches (BufferArena's size classes), or
        # None: see _grow() and _reclaim(). Set by _share() only.
        self._budget: Budget | None = None
        # _reclaim() looks again once _frees reaches this: after a look
        # that found no wholly free slab, none appears before the nearest
        # slab has its missing slots back (see there).
        self._unreclaimable = 0
        self._next_number = 0
        self._nr_objects = 0  # in every slab: == len(self._slots)
        # Only free() changes _frees and only alloc() the objects out, each by
        # one: so allocs == _frees + objects out, and alloc() counts nothing.
        self._frees = self._alloc_failures = self._high_water = 0

    # -- introspection -----------------------------------------------------

    @property
    def object_size(self) -> int:
        """Bytes in each buffer."""
        return self._object_size

    @property
    def objects_per_slab(self) -> int:
        """Objects in a whole slab (cut down to ``max_objects + headroom``)."""
        return self._objects_per_slab

    @property
    def max_objects(self) -> int | None:
        """The most objects out at once for an ordinary mask, or None."""
        return self._max_objects

    @property
    def headroom(self) -> int:
        """Objects beyond ``max_objects`` that a ``GFP.HIGH`` mask may take."""
        return self._headroom

    @property
    def page_aligned(self) -> bool:
        """True if the slabs are anonymous mmaps and buffers page-aligned."""
        return self._page_aligned

    @property
    def name(self) -> str | None:
        """The name given at construction, for logs and metrics."""
        return self._name

    @property
    def debug(self) -> bool:
        """True if the cache is in debug mode (its free slots poisoned)."""
        return self._debug

    def owns(self, view: object) -> bool:
        """True if ``view`` is a buffer of this cache, out or free.

        A slice or a copy of one is not.
        """
        return self._slot_of(view) is not None

    def _slot_of(self, view: object) -> tuple[_Slab, int] | None:
        """The slab and index of the slot ``view`` is the view of, or None."""
        where = self._slots.get(id(view))
        if where is not None and where[0].views[where[1]] is view:
            return where
        return None

    def _slot_name(self, view: object) -> str:
        """'slab N, slot M' for a buffer of this cache, else a short repr."""
        where = self._slot_of(view)
        if where is None:
            return short_repr(view)
        return f"slab {where[0].number}, slot {where[1]}"

    def stats(self) -> SlabStats:
        """A frozen snapshot of the cache's counters and gauges."""
        nfree = len(self._free) + self._stranded
        return SlabStats(
            name=self._name,
            object_size=self._object_size,
            slabs=len(self._slabs),
            objects_in_use=self._nr_objects - nfree,
            objects_free=nfree,
            bytes_reserved=self._nr_objects * self._object_size,
            high_water=self._high_water,
            allocs=self._frees + self._nr_objects - nfree,
            frees=self._frees,
            alloc_failures=self._alloc_failures,
        )

    def __repr__(self) -> str:
        name = f" {self._name!r}" if self._name is not None else ""
        state = " closed" if self._closed else ""
        nfree = len(self._free) + self._stranded
        return (
            f"<SlabCache{name}{state} object_size={self._object_size} "
            f"in_use={self._nr_objects - nfree} free={nfree} "
            f"slabs={len(self._slabs)}>"
        )

    # -- allocation --------------------------------------------------------

    def alloc(
        self, gfp_mask: GFP | int = GFP_KERNEL, pool_data: object = None
    ) -> memoryview | None:
        """Hand out a buffer: a writable memoryview of ``object_size`` bytes.

        The most recently freed buffer, or one of a new slab. None when
        ``max_objects`` are out, unless ``gfp_mask`` holds ``GFP.HIGH``
        (``GFP_ATOMIC``): that may go ``headroom`` objects further.
        ``GFP.DIRECT_RECLAIM`` changes nothing: the cache never waits, and
        this never awaits. The buffer is not zeroed. ``pool_data`` is
        ignored: it lets ``alloc`` serve as a Mempool's ``alloc_fn``, as
        the kernel's ``mempool_alloc_slab()`` does.

        Raises:
            PoolClosedError: the cache is closed.
            TypeError: ``gfp_mask`` is not a ``GFP`` or an int.
            ValueError: ``gfp_mask`` holds ``GFP.ZERO`` or unknown bits.
        """
        if gfp_mask is not GFP_NOWAIT and gfp_mask is not GFP_KERNEL:
            decode_mask(gfp_mask)  # raises on a bad mask
        return self._alloc_fn(gfp_mask, self._busy)

    def _alloc_fn(self, gfp_mask: GFP | int, busy: set[int]) -> memoryview | None:
        """alloc() for callers whose mask is known good, the buffer's id
        kept in ``busy``, the holder set (see the module's docstring)."""
        view = self._pop_free(self._limit, busy)
        if view is None:
            view = self._alloc_slow(gfp_mask, busy)
        if self._debug and view is not None:
            self._check(view, busy)
        return view

    def _check(self, view: memoryview, busy: set[int]) -> None:
        """Debug mode: check the poison of a buffer just handed out. On a
        mismatch it goes back on the free list, poisoned afresh."""
        try:
            check_poison(view, lambda: f"{self!r}: {self._slot_name(view)}")
        except CorruptionError:
            busy.remove(id(view))
            self._free.append(view)
            raise

    def _pop_free(self, limit: int, busy: set[int]) -> memoryview | None:
        """Hand out the top free slot, into ``busy``, if fewer than ``limit``
        objects are out; None if not, or if no slot is free. The common
        case of every allocation, called by SlabPool's hot paths too
        (_limit is 0 once the cache is closed: then it always says None)."""
        free = self._free
        out = self._nr_objects - len(free)
        if not free or out >= limit:
            return None
        view = free.pop()
        busy.add(id(view))
        if out >= self._high_water:
            self._high_water = out + 1
        return view

    def _alloc_slow(self, gfp_mask: GFP | int, busy: set[int]) -> memoryview | None:
        """_alloc_fn() when _pop_free() said None: closed, over the limit,
        or nothing free."""
        if self._closed:
            raise PoolClosedError(f"{self!r}: alloc() on a closed cache")
        out = self._nr_objects - len(self._free)
        limit = self._limit
        if out >= limit:
            # Over max_objects only GFP.HIGH may pass, and only below _cap:
            # the one place that looks into the mask (IntFlag arithmetic is
            # slow).
            if out >= self._cap or not decode_mask(gfp_mask).high:
                self._alloc_failures += 1
                return None
            limit = self._cap
        # out < limit <= _cap here, and _nr_objects == out if nothing is
        # free: a new slab of at least one object fits under _cap.
        if not self._free and not self._grow(gfp_mask):
            self._alloc_failures += 1
            return None
        return self._pop_free(limit, busy)

    def _grow(self, gfp_mask: GFP | int = GFP_KERNEL) -> bool:
        """Add one slab, its slots on the free list; False if out of memory
        or, with a shared budget, out of budget even once the other caches
        gave back their wholly free slabs."""
        count = min(self._objects_per_slab, self._cap - self._nr_objects)
        size = self._object_size
        budget = self._budget
        if budget is not None:
            # Cut the slab down to what the budget holds (GFP.HIGH may use
            # its headroom), after asking the others for room first.
            high = gfp_mask is not GFP_KERNEL and decode_mask(gfp_mask).high
            room = budget.room(high)
            if room < count * size:
                budget.reclaim(count * size - room, self)
                room = budget.room(high)
            count = min(count, room // size)
            if count < 1:
                return False
        length = count * size
        try:
            block = mmap.mmap(-1, length) if self._mapped else bytearray(length)
        except (MemoryError, OSError):
            return False
        if budget is not None:
            budget.charge(length)
            # A new slab may empty with fewer frees than _reclaim()'s last
            # look counted for the others: look again.
            self._unreclaimable = 0
        slab = _Slab(self._next_number, block, self._object_size)
        self._next_number += 1
        self._slabs[slab.number] = slab
        for index, view in enumerate(slab.views):
            self._slots[id(view)] = (slab, index)
            if self._debug:
                poison(view)
        # Reversed, so that slot 0 is on top and handed out first.
        self._free.extend(reversed(slab.views))
        self._nr_objects += count
        if self._trim_after is not None and self._trim_timer is None:
            self._arm_trim()
        return True

    # -- idle trimming -----------------------------------------------------

    @property
    def trim_after(self) -> float | None:
        """Seconds a slab stays wholly free before it goes back, or None."""
        return self._trim_after

    def _arm_trim(self) -> None:
        """Tick every trim_after / 2 seconds on the running loop, if any:
        a slab is trimmed after it was seen wholly free at ticks spanning
        trim_after seconds. The timer holds the cache weakly."""
        loop = running_loop()
        if loop is not None and self._trim_after is not None:
            self._trim_timer = loop.call_later(
                self._trim_after / 2, _trim_tick, weakref.ref(self)
            )

    def _trim(self, now: float | None = None) -> int:
        """One tick of idle trimming; returns the slabs given back.

        A slab wholly free at this tick and at every tick since
        ``trim_after`` seconds ago goes back (slabs with a buffer out, or
        lent to a pool's reserve, never do: the reserve stays). Then the
        free list is ordered so that allocations take the slots of the
        fullest slabs first: the few buffers a server uses after a burst
        come from few slabs, and the burst's other slabs empty out and
        go. Ordering at the ticks, not per allocation, costs the hot paths
        nothing (within a slab, the most recently freed slot stays first).
        O(free slots) per tick.
        """
        if self._closed or self._trim_after is None:
            return 0
        now = time.monotonic() if now is None else now
        slots = self._slots
        nfree: dict[_Slab, int] = {}
        for view in self._free:
            slab = slots[id(view)][0]
            nfree[slab] = nfree.get(slab, 0) + 1
        gone: list[_Slab] = []
        for slab in self._slabs.values():
            if nfree.get(slab) != len(slab.views):
                slab.idle_since = None
            elif slab.idle_since is None:
                slab.idle_since = now
            elif now - slab.idle_since >= self._trim_after:
                gone.append(slab)
        if gone:
            dead = set(gone)
            self._free[:] = [v for v in self._free if slots[id(v)][0] not in dead]
            for slab in gone:
                self._release(slab)
        # The fullest slabs' slots last, on top of the stack: taken first.
        self._free.sort(
            key=lambda v: len(slots[id(v)][0].views) - nfree[slots[id(v)][0]]
        )
        return len(gone)

    # -- freeing -----------------------------------------------------------

    def free(self, view: memoryview, pool_data: object = None) -> None:
        """Take back a buffer that ``alloc()`` handed out.

        ``pool_data`` is ignored (``free`` serves as a Mempool's
        ``free_fn``, as ``mempool_free_slab()`` does).

        Only the very view handed out is taken, once: not a slice of it, a
        copy, a buffer of another cache, or one a pool of this cache holds.
        Never awaits. After ``close()``, a slab goes back as soon as its
        last buffer does; each free costs O(1) then too.

        What is caught: a free of a buffer that is free (an immediate double
        free), of anything that is not one of the cache's buffers (a slice,
        a copy, another cache's), of one another pool holds. What is not,
        as in the kernel's SLUB outside its debug options: a stale free of
        a buffer that was freed and then handed out again, since the same
        view stands for its slot at every allocation; it is taken as a free
        of the current holder's buffer. Debug mode catches that too, in the
        pools of ``aiomempool.pools``: it lends a fresh view per allocation.

        Raises:
            DoubleFreeError: ``view`` is a buffer of this cache, already free.
            ForeignElementError: ``view`` is not a buffer of this cache, or
                one that a pool of this cache holds.
        """
        self._free_fn(view, self._busy)

    def _free_fn(self, view: memoryview, busy: set[int]) -> None:
        """free() of a buffer kept in ``busy`` (see ``_alloc_fn``)."""
        self._push_free(view, busy)
        if self._debug:
            poison(self._free[-1])  # the slot just taken back
        if self._closed:
            self._reap()

    def _push_free(self, view: memoryview, busy: set[int]) -> None:
        """Take back a view kept in ``busy``: the common case of every
        free, called by SlabPool's and BufferArena's hot paths too."""
        try:
            busy.remove(id(view))
        except KeyError:
            slot = self._alias_slot(view)  # a leak detector's alias?
            if slot is None or id(slot) not in busy:
                raise self._refusal(view, busy) from None
            self._take_alias(view)
            busy.remove(id(slot))
            view = slot
        self._free.append(view)
        self._frees += 1

    def _refusal(self, view: object, busy: set[int]) -> ValueError:
        """The error for a free() of something not in ``busy``: what was
        it?"""
        slot: object = self._alias_slot(view)  # a leak detector's alias
        if slot is None:
            slot = view
        where = self._slot_of(slot)
        if where is not None:
            name = f"{view!r} (slab {where[0].number}, slot {where[1]})"
            if busy is not self._busy:
                # From a pool: out with the cache's own callers, or with
                # another pool of this cache (or in its reserve).
                if id(slot) in self._busy:
                    return ForeignElementError(
                        f"{self!r}: {name} is out with a caller of the cache's "
                        "own alloc(), not with this pool: free it there"
                    )
                if not any(v is slot for v in self._free):
                    return ForeignElementError(
                        f"{self!r}: {name} belongs to another pool of this "
                        "cache (out with it, or in its reserve): free it there"
                    )
            if not self._closed and not any(v is slot for v in self._free):
                # Neither out with a caller of alloc() nor on the free list:
                # a pool's, out with it or lent to its reserve.
                return ForeignElementError(
                    f"{self!r}: {name} is a mempool's (in its reserve, or out "
                    "with it), not out with a caller of alloc(): free it there"
                )
            if self._closed:
                state = "it is not out (freed already, or in a mempool's reserve)"
            else:
                state = "it is already free"
            return DoubleFreeError(f"{self!r}: double free of {name}: {state}")
        hint = ""
        if isinstance(view, memoryview):
            try:
                obj = view.obj
            except ValueError:
                hint = "; it is released (its slab given back by shrink()?)"
            else:
                for slab in self._slabs.values():
                    if slab.block is obj:
                        hint = f"; it views the memory of slab {slab.number}"
                        break
        return ForeignElementError(
            f"{self!r}: {short_repr(view)} is not a buffer handed out by this "
            f"cache (a slice or a copy?){hint}"
        )

    # -- the leak detector's aliases -------------------------------------

    def _add_alias(self, key: int, alias: _Alias) -> None:
        """Register ``alias``, lent as the view whose id is ``key``."""
        self._aliases[key] = alias

    def _drop_alias(self, key: int, alias: _Alias) -> None:
        """Forget ``alias`` (its view was dropped), if still registered."""
        if self._aliases.get(key) is alias:
            del self._aliases[key]

    def _alias_sizes(self) -> list[int]:
        """The lengths of the aliases registered, as they were lent."""
        return [alias.nbytes for alias in self._aliases.values()]

    def _alias_slot(self, view: object) -> memoryview | None:
        """The slot ``view`` is a registered alias of, or None."""
        alias = self._aliases.get(id(view))
        if alias is None or not alias.is_alias(view):
            return None
        return alias.slot

    def _take_alias(self, view: object) -> memoryview | None:
        """The slot ``view`` is an alias of, taken back and forgotten; None
        if it is not one."""
        alias = self._aliases.get(id(view))
        if alias is None or not alias.is_alias(view):
            return None
        del self._aliases[id(view)]
        return alias.take_back()

    # -- giving memory back ------------------------------------------------

    def shrink(self) -> int:
        """Give back every slab with no object out; return how many.

        The free views of those slabs leave the free list and are released:
        a view kept after ``free()`` fails from then on. Never awaits;
        O(objects).
        """
        nfree: dict[int, int] = {}  # slab number -> its slots on the free list
        slots = self._slots
        for view in self._free:
            number = slots[id(view)][0].number
            nfree[number] = nfree.get(number, 0) + 1
        empty = [s for s in self._slabs.values() if nfree.get(s.number) == len(s.views)]
        if not empty:
            return 0
        gone = {s.number for s in empty}
        # Every view of those slabs is on the free list: none is out.
        self._free[:] = [v for v in self._free if slots[id(v)][0].number not in gone]
        for slab in empty:
            self._release(slab)
        return len(empty)

    def _share(self, budget: Budget) -> None:
        """Grow within ``budget``, shared with other caches, from now on.

        Each new slab is charged to it (cut down to what is left) and each
        slab given back is credited; when a slab does not fit, the other
        caches of the budget give back their wholly free slabs first. The
        idle timer then lets every slab go, the last one too, and slabs are
        anonymous maps, unmapped when they go. A cache joins
        one budget, empty (before its first slab). Never awaits.

        Raises:
            RuntimeError: the cache has slabs, or a budget already.
        """
        if self._budget is not None or self._slabs:
            raise RuntimeError(
                f"{self!r}: _share() needs a cache with no slabs and no budget yet"
            )
        self._budget = budget
        self._trim_floor = 0
        # Memory given back must leave the process, for the budget's
        # figures to be the process's: a malloc'd block may stay in the
        # heap below a live one, an anonymous map is unmapped whole.
        self._mapped = True
        budget.join(self)

    def _reclaim(self, nbytes: int) -> int:
        """For the budget: give back wholly free slabs, the last made
        first, until ``nbytes`` are back or none is left; return the
        bytes given back. O(free slots), and nothing at all until enough
        frees happened since a call found nothing to give (see below)."""
        if self._closed or self._frees < self._unreclaimable:
            return 0
        slots = self._slots
        nfree: dict[_Slab, int] = {}
        for view in self._free:
            slab = slots[id(view)][0]
            nfree[slab] = nfree.get(slab, 0) + 1
        gone: list[_Slab] = []
        got = 0
        for slab in reversed(self._slabs.values()):
            if got >= nbytes:
                break
            if nfree.get(slab) == len(slab.views):
                gone.append(slab)
                got += len(slab.block)
        if not gone:
            # None to give, and none can be before the slab nearest to
            # wholly free has all its missing slots back: a slab empties only
            # by frees, each counted in _frees. So it looks again no sooner,
            # and never later than a slab could go.
            self._unreclaimable = self._frees + min(
                len(slab.views) - nfree.get(slab, 0) for slab in self._slabs.values()
            )
            return 0
        dead = set(gone)
        self._free[:] = [v for v in self._free if slots[id(v)][0] not in dead]
        for slab in gone:
            self._release(slab)
        return got

    def _look_again(self) -> None:
        """Let the next _reclaim() look, whatever came back since the last."""
        self._unreclaimable = 0

    def _viewed_by(self, obj: object) -> bool:
        """True if ``obj`` (a view's ``obj``) is the block of one of this
        cache's slabs, or the map of one it gave back while a view of it
        was alive: a view of it that is not out was freed already."""
        if any(slab.block is obj for slab in self._slabs.values()):
            return True
        return isinstance(obj, mmap.mmap) and obj in self._given_back

    def _release(self, slab: _Slab) -> None:
        """Forget ``slab``, none of whose views is out or on the free list,
        and give its memory back."""
        del self._slabs[slab.number]
        for view in slab.views:
            del self._slots[id(view)]
        self._nr_objects -= len(slab.views)
        if self._budget is not None:
            self._budget.credit(len(slab.block))
        slab.release()
        if isinstance(slab.block, mmap.mmap) and not slab.block.closed:
            self._given_back.add(slab.block)  # a view of it is still alive

    def close(self) -> None:
        """Give every slab back and refuse further allocations; idempotent.

        The ``kmem_cache_destroy()`` analogue. Slabs with objects still
        out stay until those come back: ``free()`` still takes them, and
        each slab goes the moment its last object returns. Every later
        ``alloc()`` raises ``PoolClosedError``. Never awaits.
        """
        if self._closed:
            return
        self._closed = True
        self._limit = 0  # see alloc(): every call now takes the slow path
        timer, self._trim_timer = self._trim_timer, None
        if timer is not None:
            with suppress(RuntimeError):  # uvloop's, once its loop is closed
                timer.cancel()
        self.shrink()
        # Nothing is allocated again: the free list is only books now. Each
        # slab left counts its objects out, and goes when that reaches 0
        # (_reap()): O(1) per free, where a shrink() per free rescanned all.
        slots = self._slots
        out = {slab: len(slab.views) for slab in self._slabs.values()}
        for view in self._free:
            out[slots[id(view)][0]] -= 1
        self._out_by_slab = out
        self._stranded = len(self._free)
        self._free.clear()

    def _reap(self) -> None:
        """After close(): the view just freed, on top of the free list,
        leaves it; its slab goes if that was its last object out."""
        view = self._free.pop()
        slab = self._slots[id(view)][0]
        out = self._out_by_slab[slab] - 1
        if out:
            self._out_by_slab[slab] = out
            self._stranded += 1
            return
        del self._out_by_slab[slab]
        self._stranded -= len(slab.views) - 1  # its other slots were free
        self._release(slab)


def _trim_tick(ref: weakref.ref[SlabCache]) -> None:
    """The trim timer's callback: one tick, then the next while the cache
    lives, is open and holds more than its floor of slabs (the next growth restarts
    a stopped timer)."""
    cache = ref()
    if cache is None:
        return
    cache._trim_timer = None
    cache._trim()
    if not cache._closed and len(cache._slabs) > cache._trim_floor:
        cache._arm_trim()
