"""The exceptions aiomempool raises: all derive from MempoolError."""

from __future__ import annotations

import asyncio
import sys

__all__ = [
    "AllocTimeoutError",
    "CorruptionError",
    "DoubleFreeError",
    "ForeignElementError",
    "InvalidFreeError",
    "MempoolError",
    "PoolClosedError",
    "PoolExhaustedError",
]


class MempoolError(Exception):
    """Base of every exception aiomempool raises of its own."""


class PoolClosedError(MempoolError, RuntimeError):
    """The pool was closed: it hands out nothing more."""


class CorruptionError(MempoolError):
    """Debug mode found the poison of a free element overwritten.

    Something wrote to the element after it was freed. The message names the
    pool (or cache), the element (for a buffer of a ``SlabCache``, its slab
    and slot), the offset of the first bad byte and the bytes around it: the
    kernel's "poison mismatch" report. The element is poisoned afresh and
    stays free.
    """


class PoolExhaustedError(MempoolError, MemoryError):
    """A non-waiting allocation found nothing to hand out.

    A ``MemoryError`` too, so code that already handles allocation failure
    handles this one.
    """


# asyncio.TimeoutError is the builtin TimeoutError from 3.11 on, a class of
# its own on 3.10: derive from both so that either ``except`` catches it.
_TIMEOUT_BASES: tuple[type[BaseException], ...] = (
    (TimeoutError,)
    if sys.version_info >= (3, 11)
    else (TimeoutError, asyncio.TimeoutError)
)


class AllocTimeoutError(MempoolError, *_TIMEOUT_BASES):  # type: ignore[misc]
    """``alloc(timeout=...)`` waited that long and got no element.

    A ``TimeoutError`` (and an ``asyncio.TimeoutError`` on every Python).
    """


class InvalidFreeError(MempoolError, ValueError):
    """``free()`` was given something it must not take back; nothing changed.

    The base of ``DoubleFreeError`` and ``ForeignElementError``.
    """


class DoubleFreeError(InvalidFreeError):
    """An element was given back that is already free.

    The message names the allocator, the element and where it lives.
    """


class ForeignElementError(InvalidFreeError):
    """An element was given back that this allocator never handed out.

    A slice or a copy of an element is foreign too: only the very object
    handed out may be given back.
    """
