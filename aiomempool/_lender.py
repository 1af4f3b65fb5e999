"""Lender: what an ``element()`` context needs of the pool that made it.

``Mempool`` and ``BufferArena`` derive from it. ``ElementContext`` calls
its first three methods on entry and exit, and nothing else of its pool;
``PooledBufferedProtocol`` asks ``_steady()``. In the compiled build they
are C calls, through this type. ``nbytes`` is the arena's size, ``None``
for a pool of one size.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from ._native import Native

__all__ = ["Lender"]


class Lender(Native):
    """The first base of the pools that lend for an ``async with`` block."""

    __slots__ = ()

    def _first_try(self, nbytes: Any, gfp_mask: Any, timeout: float | None) -> Any:
        """``alloc()``'s first step, synchronous: the element; None, if the
        mask may not wait; or ``WAIT``: the caller must await
        ``_alloc_for()`` (which tries again)."""
        raise NotImplementedError

    def _alloc_for(
        self, nbytes: Any, gfp_mask: Any, timeout: float | None
    ) -> Awaitable[Any]:
        """``alloc()``, called with these arguments: an override of it in a
        subclass is what allocates."""
        raise NotImplementedError

    def free(self, element: Any) -> None:
        """Give back what ``_first_try()`` or ``_alloc_for()`` gave."""
        raise NotImplementedError

    def _steady(self) -> bool:
        """Whether the pool is in its steady state (open, nobody waits, no
        debug mode): then an element kept back for a while rather than
        freed takes nothing from a waiter and skips no check
        (``PooledBufferedProtocol`` keeps a read's buffer for the next)."""
        raise NotImplementedError
