"""The sampled leak detector, for buffer pools outside debug mode.

Netty's idea: capturing a call site costs microseconds, too much for every
allocation of a production server, so about one buffer in N is watched, and
one that is dropped without ``free()`` is reported with where it was
allocated, and its slot goes back to the pool. A memoryview cannot be
weakly referenced, so a watched buffer is an alias of its slot whose
exporter, a ctypes array on the slot, can be.
"""

from __future__ import annotations

import asyncio
import random
import weakref
from typing import Any, Protocol

from ._checks import running_loop
from ._ratelimit import RateLimitedWarning
from ._sites import alias, call_site, site_text
from .slab import SlabCache


class _Owner(Protocol):
    """Who a dropped buffer goes back to: a pool, or an arena."""

    def free(self, element: memoryview | None, /) -> None: ...


class _Watch:
    """One watched buffer: ``slot``, lent as an alias whose exporter, a
    ctypes array on the slot, is weakly referenced. The array lives as long
    as the alias or any view derived from it: when the last goes, ``_gone``
    runs, unless ``take_back()`` (a free) dropped the reference first."""

    __slots__ = ("_slot", "key", "nbytes", "ref", "sampler", "site")

    def __init__(self, sampler: LeakSampler, slot: memoryview, exporter: Any) -> None:
        self.sampler = sampler
        self._slot = slot
        self.site = call_site()
        self.key = 0
        self.nbytes = 0  # the alias's length, as lent
        self.ref: weakref.ref[Any] | None = weakref.ref(exporter, self._gone)

    def _gone(self, ref: weakref.ref[Any]) -> None:
        self.sampler._dropped(self)

    @property
    def slot(self) -> memoryview:
        return self._slot

    def is_alias(self, view: object) -> bool:
        ref = self.ref
        try:
            return ref is not None and type(view) is memoryview and view.obj is ref()
        except ValueError:  # a released view
            return False

    def take_back(self) -> memoryview:
        self.ref = None  # the weak reference dies with its callback
        return self._slot


class LeakSampler:
    """Netty's sampled leak detector, for buffer pools outside debug mode.

    The pool counts its allocations down (``countdown``) and hands the one
    that reaches zero to ``sample()``, which lends an alias of the buffer
    (``watch()``), registered with the cache (``_add_alias()``) so that a
    free of it frees the buffer. Capturing the call site costs microseconds, hence
    the sampling: the others pay a decrement. An alias dropped without
    ``free()`` is logged with where it was allocated, and its buffer goes
    back to the pool.

    The weak reference's callback runs whenever the garbage collector does,
    in any thread: it only queues the watch and asks the pool's loop to
    drain the queue; the next sample drains it too.
    """

    __slots__ = (
        "__weakref__", "_cache", "_every", "_loop", "_out", "_pool", "_queue",
        "_scheduled", "_warn", "countdown",
    )  # fmt: skip

    def __init__(
        self, pool: _Owner, cache: SlabCache, every: int, out: set[int]
    ) -> None:
        self._pool = weakref.ref(pool)
        self._out = out  # the pool's holder set, in the cache's books
        # The loop of the last sample, to drain from: the pool's, since
        # allocations run on its thread.
        self._loop: asyncio.AbstractEventLoop | None = None
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

    def sample(
        self, view: memoryview | None, length: int | None = None
    ) -> memoryview | None:
        """The allocation that brought ``countdown`` to zero: restart the
        count, give back what was dropped, and watch ``view``."""
        self.countdown = self._gap()
        if self._queue:
            self._drain()
        return None if view is None else self.watch(view, length)

    def watch(self, slot: memoryview, length: int | None = None) -> memoryview:
        """An alias of ``slot`` (of its first ``length`` bytes only, if
        given: a free of the alias frees the whole slot), watched: a view
        whose exporter (unlike a memoryview) can be weakly referenced."""
        view, exporter = alias(slot if length is None else slot[:length])
        watch = _Watch(self, slot, exporter)
        watch.key = id(view)
        watch.nbytes = len(view)
        self._cache._add_alias(watch.key, watch)
        loop = running_loop()
        if loop is not None:
            self._loop = loop
        return view

    def _dropped(self, watch: _Watch) -> None:
        # From the garbage collector: queue, and ask the loop to drain.
        self._queue.append(watch)
        loop = self._loop
        if loop is not None and not self._scheduled:
            self._scheduled = True
            try:
                loop.call_soon_threadsafe(self._drain_soon)
            except RuntimeError:  # the loop is closed
                self._scheduled = False

    def drain(self) -> None:
        """Report and free what was dropped, if anything (a sampler of one
        of several pools: BufferArena drains all at each sample)."""
        if self._queue:
            self._drain()

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
            self._cache._drop_alias(watch.key, watch)
            self._warn.warn(
                "%r: buffer dropped without free() (%s), allocated at:\n%s",
                pool if pool is not None else self._cache,
                self._cache._slot_name(watch.slot),
                site_text(watch.site),
            )
            if pool is not None:
                pool.free(watch.slot)
            else:
                self._cache._free_fn(watch.slot, self._out)
