"""The exception hierarchy: one base, MempoolError, for every exception of
the library's own, each also the builtin a caller would already catch."""

from __future__ import annotations

import asyncio
import inspect

import pytest

import aiomempool
from aiomempool import errors
from aiomempool.errors import (
    AllocTimeoutError,
    CorruptionError,
    DoubleFreeError,
    ForeignElementError,
    InvalidFreeError,
    MempoolError,
    PoolClosedError,
    PoolExhaustedError,
)


def test_every_exception_of_the_library_derives_from_mempoolerror() -> None:
    defined = {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ == errors.__name__
    }
    assert defined == set(errors.__all__)
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), MempoolError), name
        assert getattr(aiomempool, name) is getattr(errors, name)  # re-exported
    assert MempoolError.__bases__ == (Exception,)


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (PoolClosedError, RuntimeError),
        (PoolExhaustedError, MemoryError),
        (AllocTimeoutError, TimeoutError),
        (AllocTimeoutError, asyncio.TimeoutError),
        (InvalidFreeError, ValueError),
        (DoubleFreeError, InvalidFreeError),
        (ForeignElementError, InvalidFreeError),
    ],
)
def test_each_error_is_also_the_builtin_its_callers_already_catch(
    error: type[Exception], builtin: type[Exception]
) -> None:
    assert issubclass(error, builtin)


def test_a_corruption_is_not_mistaken_for_a_bad_argument_or_a_lack_of_memory() -> None:
    for other in (ValueError, MemoryError, RuntimeError, TimeoutError):
        assert not issubclass(CorruptionError, other)
    assert not issubclass(PoolExhaustedError, ValueError)
