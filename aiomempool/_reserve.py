"""The reserve of a pool: filling it, resizing it, destroying it.

The kernel's ``mempool_init()``, ``mempool_resize()`` and
``mempool_destroy()``. The reserve is a stack (``_elements``, top at the
end) of at most ``_min_nr`` elements. ``_push()`` and ``_pop()`` are the
only code that changes it: pools that must know what sits in their reserve
(slab-backed pools, debug mode's poisoning) extend those two.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._checks import check_nr
from ._waiting import Waiting
from .errors import PoolClosedError
from .gfp import GFP, GFP_KERNEL

if TYPE_CHECKING:
    from .debug import PoolDebug

T = TypeVar("T")
R = TypeVar("R", bound="Reserve[Any]")


class Reserve(Waiting, Generic[T]):
    """The reserve half of a Mempool."""

    __slots__ = ("_elements", "_min_nr")
    _elements: list[T]
    _min_nr: int

    if TYPE_CHECKING:  # provided by Mempool
        _pool_data: Any
        _free_fn: Callable[[T, Any], object]
        _debug: PoolDebug[T] | None

        def _call_alloc_fn(self, gfp_mask: GFP) -> T | None: ...
        def _regate(self) -> None: ...

    def _push(self, element: T) -> None:
        """Put ``element`` on top of the reserve (poisoned in debug mode)."""
        if self._debug is not None:
            self._debug.poison(element)
        self._elements.append(element)
        self._regate()

    def _pop(self) -> T:
        """Take the top element of the reserve, which is not empty.

        In debug mode its poison is checked first: a CorruptionError leaves
        it on top, poisoned afresh.
        """
        if self._debug is not None:
            self._debug.check(self._elements[-1])
        self._gate = True  # the reserve is below min_nr now
        return self._elements.pop()

    def _prealloc(self, count: int) -> list[T]:
        """Make ``count`` elements with ``alloc_fn(GFP_KERNEL)``, or none."""
        made: list[T] = []
        try:
            for _ in range(count):
                element = self._call_alloc_fn(GFP_KERNEL)
                if element is None:
                    raise MemoryError(
                        f"alloc_fn made {len(made)} of the {count} elements asked for"
                    )
                made.append(element)
        except BaseException:
            self._free_all(made, suppress=True)
            raise
        return made

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
            TypeError, ValueError: ``new_min_nr`` is not an int >= 1.
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
            surplus = [self._pop() for _ in range(excess)]
            self._regate()
            self._free_all(surplus)
            return
        made = self._prealloc(new_min_nr - len(self._elements))
        self._min_nr = new_min_nr
        self._gate = True
        for element in made:
            self._put(element)

    def close(self) -> None:
        """Free the reserve and refuse further allocations; idempotent.

        The ``mempool_destroy()`` analogue: every reserved element goes to
        ``free_fn``; tasks waiting in ``alloc()`` raise ``PoolClosedError``,
        as does every later ``alloc()`` or ``alloc_nowait()``. Elements
        still out may be freed later: they go to ``free_fn``. Synchronous.

        Raises the first exception of ``free_fn``, once all were freed.
        """
        if self._closed:
            return
        self._closed = True
        self._gate = True
        if self._debug is not None:
            self._debug.report_leaks()
        self._close_line()
        elements = [self._pop() for _ in range(len(self._elements))]
        self._free_all(elements)

    async def __aenter__(self: R) -> R:
        self._loop = asyncio.get_running_loop()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
