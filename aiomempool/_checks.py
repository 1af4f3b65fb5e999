"""Argument checks shared by the pool's public methods."""

from __future__ import annotations

import asyncio


def check_nr(arg: str, value: object) -> int:
    """An element count: an int >= 1 (not a bool)."""
    if type(value) is not int:
        raise TypeError(f"{arg} must be an int, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{arg} must be >= 1, got {value}")
    return value


def check_timeout(timeout: object, arg: str = "timeout") -> None:
    """A duration in seconds: a real number >= 0 (not a bool, not NaN)."""
    if type(timeout) is bool or not isinstance(timeout, (int, float)):
        raise TypeError(
            f"{arg} must be a number of seconds or None, not {type(timeout).__name__}"
        )
    if not timeout >= 0:  # also refuses NaN
        raise ValueError(f"{arg} must be >= 0 seconds, got {timeout}")


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The running event loop, or None outside one."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
