"""Argument checks and small helpers shared by the package's modules."""

from __future__ import annotations

import asyncio
import os

#: The environment variable that turns debug mode on for pools and caches
#: built with ``debug=None`` (the default).
ENV = "AIOMEMPOOL_DEBUG"


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


def debug_enabled(debug: object) -> bool:
    """``debug`` as given, or for None, what ``AIOMEMPOOL_DEBUG`` says now."""
    if debug is None:
        return os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes")
    if type(debug) is not bool:
        raise TypeError(f"debug must be a bool or None, not {type(debug).__name__}")
    return debug


def short_repr(element: object) -> str:
    """An element for an error or log message: a short repr, never its
    bytes (a 64 KiB bytearray's repr is a quarter of a million characters)."""
    if isinstance(element, (bytes, bytearray)):
        kind = type(element).__name__
        return f"<{kind} of {len(element)} bytes at {id(element):#x}>"
    return format(repr(element), ".60")
