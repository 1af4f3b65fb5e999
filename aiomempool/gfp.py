"""GFP flags: what an allocation may do to get memory.

The names follow the kernel's ``gfp_t`` bits (include/linux/gfp_types.h).
Only the bits that mean something to a pool in a Python process are kept.

Flag arithmetic on an ``enum.IntFlag`` costs hundreds of nanoseconds on
CPython 3.11, so the pool never computes with masks on its hot path: every
valid mask is decoded once, at import, into the table ``_MASKS``.
"""

from __future__ import annotations

import enum
from typing import Final, NamedTuple, cast

__all__ = ["GFP", "GFP_ATOMIC", "GFP_KERNEL", "GFP_NOWAIT"]


class GFP(enum.IntFlag):
    """Allocation flags, the ``gfp_t`` of the kernel.

    Combine them with ``|``; most callers pass one of the ready-made masks
    ``GFP_KERNEL``, ``GFP_NOWAIT`` or ``GFP_ATOMIC`` instead.
    """

    DIRECT_RECLAIM = 0x1
    """The caller may wait (``__GFP_DIRECT_RECLAIM``).

    ``await pool.alloc()`` parks until an element comes back instead of
    returning ``None``.
    """
    HIGH = 0x2
    """Urgent caller (``__GFP_HIGH``).

    The backing allocator may dip into an emergency headroom that ordinary
    callers may not use.
    """
    NOWARN = 0x4
    """A failure is expected and logs nothing (``__GFP_NOWARN``)."""
    ZERO = 0x8
    """Zeroed memory (``__GFP_ZERO``), which a mempool refuses.

    Elements that come from the reserve are not zeroed, so the promise could
    not be kept: a mask holding it raises ``ValueError``.
    """


# Final: the overloads of Mempool.alloc() see GFP_KERNEL as the one mask
# that waits, and type its result as never None.
GFP_KERNEL: Final = GFP.DIRECT_RECLAIM
"""May wait for an element: the usual mask for task context."""
GFP_NOWAIT: Final = GFP(0)
"""Never waits, no emergency headroom: for callbacks."""
GFP_ATOMIC: Final = GFP.HIGH
"""Never waits, urgent: may use the allocator's emergency headroom."""
ATOMIC_NOWARN = GFP_ATOMIC | GFP.NOWARN
# GFP_ATOMIC without the warning: what receive paths with a fallback pass
# (PooledBufferedProtocol.get_buffer()). One object, so that the slab
# pools' hot paths can recognise it by identity.
NOWAIT_NOWARN = GFP.NOWARN
# GFP_NOWAIT without the warning: the first try of a caller that will wait
# if it fails (BufferArena.alloc()). One object, as above.

_ALL_BITS = 0
for _flag in GFP:
    _ALL_BITS |= _flag.value


class _Mask(NamedTuple):
    """A mask decoded once: what alloc() needs to know about it."""

    first: GFP  # the cheap first try: DIRECT_RECLAIM taken out
    full: GFP  # the mask as given, for the retry that may wait
    may_wait: bool
    nowarn: bool
    high: bool  # may use the backing allocator's emergency headroom


def _decode(value: int) -> _Mask:
    mask = GFP(value)
    return _Mask(
        first=GFP(value & ~GFP.DIRECT_RECLAIM.value),
        full=mask,
        may_wait=bool(value & GFP.DIRECT_RECLAIM.value),
        nowarn=bool(value & GFP.NOWARN.value),
        high=bool(value & GFP.HIGH.value),
    )


# Every mask without ZERO, keyed by its int value (a GFP hashes as its int).
_MASKS: dict[int, _Mask] = {
    v: _decode(v) for v in range(_ALL_BITS + 1) if not v & GFP.ZERO.value
}
KERNEL_MASK = _MASKS[GFP_KERNEL.value]
NOWAIT_MASK = _MASKS[GFP_NOWAIT.value]


_NAMES = {0: "GFP_NOWAIT", 0x1: "GFP_KERNEL", 0x2: "GFP_ATOMIC"}


class MaskText:
    """A mask as a reader wants it in a log line, formatted only if logged."""

    __slots__ = ("value",)

    def __init__(self, value: int) -> None:
        self.value = value

    def __str__(self) -> str:
        value = self.value
        name = _NAMES.get(value)
        if name is not None:
            return name
        return "|".join(f"GFP.{f.name}" for f in GFP if value & f.value)


def decode_mask(gfp_mask: object) -> _Mask:
    """Check ``gfp_mask`` and return its decoded form.

    Raises TypeError for anything but a ``GFP`` or an ``int`` and ValueError
    for unknown bits or ``GFP.ZERO``.
    """
    kind = type(gfp_mask)
    if kind is not GFP and kind is not int:
        raise TypeError(f"gfp_mask must be a GFP flag or an int, not {kind.__name__}")
    value = cast(int, gfp_mask)
    info = _MASKS.get(value)
    if info is not None:
        return info
    value = int(value)
    if value & GFP.ZERO.value and not value & ~_ALL_BITS:
        raise ValueError(
            "gfp_mask must not hold GFP.ZERO: a mempool hands out reserved "
            "elements that are not zeroed"
        )
    raise ValueError(
        f"gfp_mask {value:#x} has bits outside GFP (known bits: {_ALL_BITS:#x})"
    )
