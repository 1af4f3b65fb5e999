"""Poisoning, the kernel's: what free memory holds, and the check that
nothing wrote to it.

Free memory holds ``POISON_FREE`` (0x6b), its last byte ``POISON_END``
(0xa5). When it is handed out, the pattern is checked, and a mismatch
raises ``CorruptionError`` with the offset of the first bad byte and the
bytes around it (the kernel's "poison mismatch" report); then it is filled
with ``POISON_INUSE`` (0x5a). Debug mode poisons a pool's reserve
(``debug.py``) and a ``SlabCache``'s free slots.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from .errors import CorruptionError

POISON_INUSE = 0x5A
POISON_FREE = 0x6B
POISON_END = 0xA5


def poisonable(element: object) -> bool:
    """True for the elements poisoning applies to: writable bytes."""
    if type(element) is bytearray:
        return len(element) > 0
    return (
        type(element) is memoryview
        and not element.readonly
        and element.format == "B"
        and element.ndim == 1
        and element.contiguous
        and element.nbytes > 0
    )


@functools.lru_cache(maxsize=32)
def pattern(size: int, byte: int) -> bytes:
    if byte == POISON_FREE:
        return bytes((POISON_FREE,)) * (size - 1) + bytes((POISON_END,))
    return bytes((byte,)) * size


def poison(buf: memoryview | bytearray) -> None:
    """Fill ``buf`` with the free pattern; ``poisonable(buf)`` is true."""
    buf[:] = pattern(len(buf), POISON_FREE)


def check_poison(buf: memoryview | bytearray, describe: Callable[[], str]) -> None:
    """Check the free pattern of ``buf``, then fill it with POISON_INUSE.

    On a mismatch, ``buf`` is poisoned afresh (so the damage is reported
    once) and CorruptionError is raised, its message starting with
    ``describe()``. One comparison of bytes, no copy: the offset is looked
    for only on a mismatch.
    """
    size = len(buf)
    expected = pattern(size, POISON_FREE)
    if expected.startswith(buf):  # startswith() takes any buffer, == does not
        buf[:] = pattern(size, POISON_INUSE)
        return
    data = bytes(buf)
    # Bisect the common prefix: data[:lo] == expected[:lo], a difference
    # lies in [lo, hi).
    lo, hi = 0, size
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if data[lo:mid] == expected[lo:mid]:
            lo = mid
        else:
            hi = mid
    start, end = max(0, lo - 8), min(size, lo + 8)
    where = describe()  # before the repair: a repr shows the damage
    buf[:] = expected
    raise CorruptionError(
        f"{where}: poison mismatch at offset {lo} of {size} bytes "
        f"(written after it was freed?): bytes {start}..{end - 1} are "
        f"{data[start:end].hex(' ')}; free memory holds {POISON_FREE:#04x}, "
        f"its last byte {POISON_END:#04x}"
    )
