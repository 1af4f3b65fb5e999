"""The examples run, on asyncio and on uvloop, and say what they promise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("loop", [[], ["--uvloop"]], ids=["asyncio", "uvloop"])
def test_demo_tours_waiting_nonblocking_and_atomic_modes(loop: list[str]) -> None:
    out = run_example("demo.py", *loop)
    assert "first come, first served" in out
    assert "alloc_nowait() -> None" in out
    assert "from the headroom" in out
    assert "raised TimeoutError" in out
    assert "0 outstanding" in out
    assert "allocator buffers in use: 0" in out


@pytest.mark.parametrize("loop", [[], ["--uvloop"]], ids=["asyncio", "uvloop"])
def test_anyio_example_gets_every_buffer_back(loop: list[str]) -> None:
    out = run_example("anyio_workers.py", "--seconds", "0.3", *loop)
    assert "every buffer is back, nobody is waiting" in out
