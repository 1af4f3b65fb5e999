"""GFP flags: the kernel's bits, the mask constants, and decode_mask()."""

from __future__ import annotations

import enum

import pytest

from aiomempool import GFP, GFP_ATOMIC, GFP_KERNEL, GFP_NOWAIT
from aiomempool.gfp import decode_mask


def test_gfp_is_an_intflag_with_the_kernel_bits() -> None:
    assert issubclass(GFP, enum.IntFlag)
    assert {"DIRECT_RECLAIM", "HIGH", "NOWARN", "ZERO"} <= set(GFP.__members__)


def test_every_flag_is_a_single_bit_of_its_own() -> None:
    # __members__ lists aliases too (iterating GFP skips them): two names
    # for one bit, or a name for two bits, would show here.
    values = [member.value for member in GFP.__members__.values()]
    assert all(v > 0 and v & (v - 1) == 0 for v in values), values
    assert len(set(values)) == len(values), GFP.__members__


def test_mask_constants_mean_what_the_kernel_means() -> None:
    assert GFP_KERNEL == GFP.DIRECT_RECLAIM
    assert GFP_NOWAIT == 0 and isinstance(GFP_NOWAIT, GFP)
    assert GFP_ATOMIC == GFP.HIGH
    assert not GFP_ATOMIC & GFP.DIRECT_RECLAIM


def test_decode_takes_the_wait_bit_out_of_the_first_try() -> None:
    info = decode_mask(GFP.DIRECT_RECLAIM | GFP.HIGH)
    assert info.first == GFP.HIGH
    assert info.full == GFP.DIRECT_RECLAIM | GFP.HIGH
    assert info.may_wait and not info.nowarn
    assert isinstance(info.first, GFP)


def test_decode_accepts_plain_ints() -> None:
    assert decode_mask(int(GFP.NOWARN)).nowarn
    assert decode_mask(0) == decode_mask(GFP_NOWAIT)


@pytest.mark.parametrize("bad", [True, 1.0, "1", None])
def test_decode_refuses_what_is_not_a_mask(bad: object) -> None:
    with pytest.raises(TypeError, match="gfp_mask must be a GFP flag or an int"):
        decode_mask(bad)


def test_decode_refuses_zero_with_the_reason() -> None:
    with pytest.raises(ValueError, match=r"GFP\.ZERO"):
        decode_mask(GFP_KERNEL | GFP.ZERO)


@pytest.mark.parametrize("bad", [0x100, -1])
def test_decode_refuses_unknown_bits(bad: int) -> None:
    with pytest.raises(ValueError, match="bits outside GFP"):
        decode_mask(bad)
