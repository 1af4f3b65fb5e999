"""The sampled leak detector, for buffer pools outside debug mode.

Netty's idea: capturing a call site costs microseconds, too much for every
allocation of a production server, so about one buffer in N is watched, and
one that is dropped without ``free()`` is reported with where it was
allocated, and its slot goes back to the pool. A memoryview cannot be
weakly referenced, so a watched buffer is an alias of its slot whose
exporter, a ctypes array on the slot, can be.
"""

from __future__ import annotations

import random
import weakref
from typing import TYPE_CHECKING, Any

from ._poison import slot_name
from ._ratelimit import RateLimitedWarning
from .debug import alias, call_site, site_text

if TYPE_CHECKING:
    from .mempool import Mempool
    from .slab import SlabCache


class _Watch:
    """One watched buffer: ``slot``, lent as an alias whose exporter, a
    ctypes array on the slot, is weakly referenced. The array lives as long
    as the alias or any view derived from it: when the last goes, ``_gone``
    runs, unless ``take_back()`` (a free) dropped the reference first."""

    __slots__ = ("key", "ref", "sampler", "site", "slot")

    def __init__(self, sampler: LeakSampler, slot: memoryview, exporter: Any) -> None:
        self.sampler = sampler
        self.slot = slot
        self.site = call_site()
        self.key = 0
        self.ref: weakref.ref[Any] | None = weakref.ref(exporter, self._gone)

    def _gone(self, ref: weakref.ref[Any]) -> None:
        self.sampler._dropped(self)

    def is_alias(self, view: object) -> bool:
        ref = self.ref
        try:
            return ref is not None and type(view) is memoryview and view.obj is ref()
        except ValueError:  # a released view
            return False

    def take_back(self) -> memoryview:
        self.ref = None  # the weak reference dies with its callback
        return self.slot


def aliased_slot(watches: dict[int, Any], view: object) -> memoryview | None:
    """The slot a LeakSampler lent ``view`` for, still watched; None if
    ``view`` is not such an alias."""
    watch = watches.get(id(view))
    if watch is None or not watch.is_alias(view):
        return None
    return watch.slot  # type: ignore[no-any-return]


def unwatch(watches: dict[int, Any], view: object) -> memoryview | None:
    """The slot a LeakSampler lent ``view`` for, taken back and no longer
    watched; None if ``view`` is not such an alias."""
    watch = watches.get(id(view))
    if watch is None or not watch.is_alias(view):
        return None
    del watches[id(view)]
    return watch.take_back()  # type: ignore[no-any-return]


class LeakSampler:
    """Netty's sampled leak detector, for buffer pools outside debug mode.

    The pool counts its allocations down (``countdown``) and hands the one
    that reaches zero to ``sample()``, which lends an alias of the buffer
    (``watch()``), registered in the cache's ``_watches`` so that a free of
    it frees the buffer. Capturing the call site costs microseconds, hence
    the sampling: the others pay a decrement. An alias dropped without
    ``free()`` is logged with where it was allocated, and its buffer goes
    back to the pool.

    The weak reference's callback runs whenever the garbage collector does,
    in any thread: it only queues the watch and asks the pool's loop to
    drain the queue; the next sample drains it too.
    """

    __slots__ = (
        "__weakref__", "_cache", "_every", "_out", "_pool", "_queue",
        "_scheduled", "_warn", "countdown",
    )  # fmt: skip

    def __init__(
        self, pool: Mempool[memoryview], cache: SlabCache, every: int, out: set[int]
    ) -> None:
        self._pool = weakref.ref(pool)
        self._out = out  # the pool's holder set, in the cache's books
        self._cache = cache
        self._every = every
        self._queue: list[_Watch] = []
        self._scheduled = False
        self._warn = RateLimitedWarning(what="leak")
        #: Allocations before the next sample.
        self.countdown = self._gap()

    def _gap(self) -> int:
        # Random gaps, mean `every`: a fixed one could keep missing the
        # allocations of a periodic pattern.
        return 1 + int(random.random() * (2 * self._every - 1))

    def sample(self, view: memoryview | None) -> memoryview | None:
        """The allocation that brought ``countdown`` to zero: restart the
        count, give back what was dropped, and watch ``view``."""
        self.countdown = self._gap()
        if self._queue:
            self._drain()
        return None if view is None else self.watch(view)

    def watch(self, slot: memoryview) -> memoryview:
        """An alias of ``slot``, watched: a view whose exporter (unlike a
        memoryview) can be weakly referenced."""
        view, exporter = alias(slot)
        watch = _Watch(self, slot, exporter)
        watch.key = id(view)
        self._cache._watches[watch.key] = watch
        return view

    def _dropped(self, watch: _Watch) -> None:
        # From the garbage collector: queue, and ask the loop to drain.
        self._queue.append(watch)
        pool = self._pool()
        loop = pool._loop if pool is not None else None
        if loop is not None and not self._scheduled:
            self._scheduled = True
            try:
                loop.call_soon_threadsafe(self._drain_soon)
            except RuntimeError:  # the loop is closed
                self._scheduled = False

    def _drain_soon(self) -> None:
        self._scheduled = False
        self._drain()

    def _drain(self) -> None:
        """Report every dropped buffer and free it: to a waiter, the
        reserve or the cache, as ``pool.free()`` decides. Called on the
        loop, or at the end of an allocation: never inside the pool's
        critical sections."""
        pool = self._pool()
        while self._queue:
            watch = self._queue.pop()
            if self._cache._watches.get(watch.key) is watch:
                del self._cache._watches[watch.key]
            self._warn.warn(
                "%r: buffer dropped without free() (%s), allocated at:\n%s",
                pool if pool is not None else self._cache,
                slot_name(self._cache, watch.slot),
                site_text(watch.site),
            )
            if pool is not None:
                pool.free(watch.slot)
            else:
                self._cache._free_fn(watch.slot, self._out)
