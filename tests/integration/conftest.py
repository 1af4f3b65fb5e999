"""The client programs that the server tests drive the examples with.

redis-cli and redis-benchmark come with Debian's redis-tools, which
``make test`` installs where it can (as root, with apt-get). A test that
needs one skips where it is missing, with a line that says how to install
it; on CI (``CI=true``) a missing tool fails the test instead, so that a
broken set-up cannot pass as a few skips.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

import pytest

#: How to get every tool that require_tool() is asked for.
INSTALL = "apt-get install redis-tools"


def on_ci() -> bool:
    """Whether this is a CI run: the variable ``CI`` is ``true``."""
    return os.environ.get("CI", "").lower() == "true"


def require_tool(name: str) -> str:
    """The path of the program ``name``; if it is not on PATH, skip the
    test, or on CI fail it, saying how to install it."""
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"{name} is not installed (Debian's redis-tools: {INSTALL})"
    if on_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture
def redis_cli() -> str:
    """The path of redis-cli (see ``require_tool()``)."""
    return require_tool("redis-cli")


@pytest.fixture
def redis_benchmark() -> str:
    """The path of redis-benchmark (see ``require_tool()``)."""
    return require_tool("redis-benchmark")


@pytest.fixture(name="require_tool")
def require_tool_fixture() -> Callable[[str], str]:
    """``require_tool()`` itself, for the tests of its rules."""
    return require_tool
