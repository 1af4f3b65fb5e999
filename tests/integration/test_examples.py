"""The examples run, on asyncio and on uvloop, and say what they promise;
their command lines show their defaults, and refuse bad arguments and a
port in use in one line on stderr, with exit status 2."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LOOPS = pytest.mark.parametrize("loop", [[], ["--uvloop"]], ids=["asyncio", "uvloop"])
#: The servers, and the arguments each needs besides.
SERVERS = {
    "echo_server.py": [],
    "resp_server.py": [],
    "tcp_proxy.py": ["--upstream", "127.0.0.1:9"],  # not dialled until a client
    "anyio_echo.py": [],
}
SERVER_DEFAULTS = {
    "--host": "127.0.0.1",
    "--port": "0",
    "--uvloop": "False",
    "--buffer-size": "65536",
    "--min-nr": "16",
    "--max-nr": "1024",
}
#: What each example's --help must show as the default of each option.
DEFAULTS = {
    "demo.py": {"--uvloop": "False"},
    "anyio_workers.py": {
        "--uvloop": "False",
        "--workers": "200",
        "--buffers": "8",
        "--seconds": "0.5",
    },
    "echo_server.py": SERVER_DEFAULTS,
    # On an arena: --max-bytes is its budget, --max-nr an alternative.
    "resp_server.py": {
        **SERVER_DEFAULTS,
        "--max-bytes": "268435456",
        "--max-nr": "None",
    },
    "tcp_proxy.py": SERVER_DEFAULTS,  # and --upstream, required: no default
    "anyio_echo.py": {**SERVER_DEFAULTS, "--idle-timeout": "30.0"},
}


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


def run_briefly(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_every_example_is_covered() -> None:
    assert sorted(DEFAULTS) == sorted(p.name for p in EXAMPLES.glob("*.py"))


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_help_shows_every_default(name: str) -> None:
    result = run_briefly(name, "--help")
    assert result.returncode == 0, result.stderr
    # One entry per option: "  --min-nr MIN_NR  buffers kept ... (default: 16)",
    # wrapped over lines where it is long.
    entries = {
        entry.split()[0].rstrip(","): " ".join(entry.split())
        for entry in re.split(r"\n(?=  -)", result.stdout.split("options:\n", 1)[1])
    }
    options = set(entries) - {"-h"}
    if name == "tcp_proxy.py":
        assert "(default:" not in entries.pop("--upstream")
        options.discard("--upstream")
    assert options == set(DEFAULTS[name]), entries
    for option, default in DEFAULTS[name].items():
        assert entries[option].endswith(f"(default: {default})"), entries[option]


def assert_refused_in_one_line(result: subprocess.CompletedProcess[str]) -> str:
    """Exit status 2, nothing on stdout, one line on stderr; that line."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout == "", result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        *(
            (name, [*extra, *args], message)
            for name, extra in SERVERS.items()
            for args, message in [
                (["--max-nr", "4"], "--min-nr (16) must be <= --max-nr (4)"),
                (["--buffer-size", "-1"], "argument --buffer-size: must be >= 1"),
                (["--min-nr", "0"], "argument --min-nr: must be >= 1"),
                (["--port", "65536"], "argument --port: must be 0 to 65535"),
                (["--max-nr", "many"], "argument --max-nr: invalid count value"),
            ]
        ),
        ("tcp_proxy.py", [], "the following arguments are required: --upstream"),
        ("tcp_proxy.py", ["--upstream", "127.0.0.1"], "expected HOST:PORT"),
        ("anyio_echo.py", ["--idle-timeout", "-1"], "must be > 0 seconds"),
        ("anyio_workers.py", ["--buffers", "0"], "argument --buffers: must be >= 1"),
        ("anyio_workers.py", ["--seconds", "nan"], "must be > 0 seconds"),
        ("demo.py", ["--no-such-option"], "unrecognized arguments"),
    ],
)
def test_a_bad_argument_is_refused_in_one_line(
    name: str, args: list[str], message: str
) -> None:
    line = assert_refused_in_one_line(run_briefly(name, *args))
    assert line.startswith(f"{name}: error: "), line
    assert message in line, line


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port of 127.0.0.1 that a socket of the test listens on."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock.getsockname()[1]


@LOOPS
@pytest.mark.parametrize("name", sorted(SERVERS))
def test_a_port_in_use_is_refused_in_one_line(
    name: str, loop: list[str], busy_port: int
) -> None:
    result = run_briefly(name, *SERVERS[name], "--port", str(busy_port), *loop)
    line = assert_refused_in_one_line(result)
    assert line == (
        f"{name}: error: cannot listen on 127.0.0.1:{busy_port}: Address already in use"
    ), line
