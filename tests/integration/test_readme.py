"""Every Python example of README.md runs as it is, on asyncio and on
uvloop, and prints what its comments say."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```$", README.read_text(), re.M | re.S)
# Runs a file with uvloop's policy in place, so that asyncio.run() uses it.
ON_UVLOOP = (
    "import asyncio, runpy, sys, uvloop; "
    "asyncio.set_event_loop_policy(uvloop.EventLoopPolicy()); "
    "runpy.run_path(sys.argv[1], run_name='__main__')"
)


def test_the_readme_has_its_examples() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize(
    "code", BLOCKS, ids=[f"example{i}" for i in range(1, len(BLOCKS) + 1)]
)
def test_readme_example_runs(code: str, loop: str, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(code)
    argv = [sys.executable, str(script)]
    if loop == "uvloop":
        argv = [sys.executable, "-c", ON_UVLOOP, str(script)]
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr
    # A printed value with its expected value in a comment: "print(x)  # 5".
    for printed, expected in re.findall(r"print\((.*)\)\s+# (b?'.*')$", code, re.M):
        assert expected in result.stdout.splitlines(), (printed, result.stdout)
