"""The rules of conftest.py's tool fixtures: a missing redis-cli or
redis-benchmark skips a test, saying how to install it, except on CI
(``CI=true``), where it fails the test with the same line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = pytest.mark.parametrize(
    ("fixture", "tool"),
    [("redis_cli", "redis-cli"), ("redis_benchmark", "redis-benchmark")],
)


def hint(tool: str) -> str:
    return (
        f"{tool} is not installed (Debian's redis-tools: apt-get install redis-tools)"
    )


@TOOLS
def test_a_missing_tool_skips_saying_how_to_install_it(
    fixture: str,
    tool: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception) as skipped:
        request.getfixturevalue(fixture)
    assert str(skipped.value) == hint(tool)


@TOOLS
@pytest.mark.parametrize("ci", ["true", "TRUE"])
def test_a_missing_tool_fails_on_ci_with_the_same_line(
    fixture: str,
    tool: str,
    ci: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception) as failed:
        request.getfixturevalue(fixture)
    assert str(failed.value) == hint(tool)


@pytest.mark.parametrize("ci", ["", "false", "0"])
def test_ci_other_than_true_still_skips(
    ci: str, require_tool: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception):
        require_tool("redis-cli")


def test_a_tool_on_path_is_given_by_its_path(
    require_tool: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: f"/opt/bin/{name}")
    monkeypatch.setenv("CI", "true")
    assert require_tool("redis-cli") == "/opt/bin/redis-cli"


def run_server_tests_without_tools(tmp_path: Path, ci: str | None) -> str:
    """Run the redis-cli and redis-benchmark tests of test_servers.py in a
    pytest of their own, with nothing on PATH; its exit code and output."""
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    env["PATH"] = str(tmp_path)  # an empty folder: no tool at all
    if ci is not None:
        env["CI"] = ci
    result = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rsE",
            "tests/integration/test_servers.py::test_resp_server_answers_redis_cli",
            "tests/integration/test_servers.py::test_resp_server_serves_redis_benchmark",
        ],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    return f"exit {result.returncode}\n{result.stdout}{result.stderr}"


def test_without_the_tools_the_server_tests_skip(tmp_path: Path) -> None:
    out = run_server_tests_without_tools(tmp_path, ci=None)
    assert out.startswith("exit 0\n"), out
    assert "6 skipped" in out, out
    assert hint("redis-cli") in out, out
    assert hint("redis-benchmark") in out, out
    assert "error" not in out.lower(), out


def test_without_the_tools_on_ci_the_server_tests_fail(tmp_path: Path) -> None:
    out = run_server_tests_without_tools(tmp_path, ci="true")
    assert out.startswith("exit 1\n"), out
    assert "6 errors" in out, out
    assert "skipped" not in out, out
    assert hint("redis-cli") in out, out
    assert "Traceback" not in out, out
