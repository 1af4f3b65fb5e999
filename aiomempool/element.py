"""``async with pool.element() as buf:``: one element for one block."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Generic, TypeVar

from .errors import PoolExhaustedError
from .gfp import GFP

if TYPE_CHECKING:
    from .mempool import Mempool

__all__ = ["ElementContext"]

T = TypeVar("T")


class ElementContext(Generic[T]):
    """What ``Mempool.element()`` returns: an async context manager."""

    __slots__ = ("_element", "_gfp_mask", "_pool", "_timeout")

    def __init__(
        self, pool: Mempool[T], gfp_mask: GFP | int, timeout: float | None
    ) -> None:
        self._pool = pool
        self._gfp_mask = gfp_mask
        self._timeout = timeout
        self._element: T | None = None

    async def __aenter__(self) -> T:
        if self._element is not None:
            raise RuntimeError("this element() context is already entered")
        element = await self._pool.alloc(self._gfp_mask, timeout=self._timeout)
        if element is None:
            raise PoolExhaustedError(
                f"{self._pool!r}: nothing to hand out without waiting "
                f"(gfp_mask={self._gfp_mask!r})"
            )
        self._element = element
        return element

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        element, self._element = self._element, None
        self._pool.free(element)
