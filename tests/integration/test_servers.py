"""The example servers, on asyncio and uvloop, driven by real clients.

Each test starts a server as a subprocess on 127.0.0.1 with small buffers
(so that big messages span several), drives it, checks that it still
answers, then stops it with SIGINT: it must exit 0 with every buffer back.
The tests that use redis-cli or redis-benchmark take them from the fixtures
of conftest.py: skipped where they are missing, failed on CI.
"""

from __future__ import annotations

import asyncio
import random
import re
import select
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
BUFFER_SIZE = 4096
LOOPS = pytest.mark.parametrize("loop", [[], ["--uvloop"]], ids=["asyncio", "uvloop"])


@contextmanager
def server(name: str, loop: list[str]) -> Iterator[int]:
    """Run ``examples/name`` on a free port; yield the port. On exit, stop
    it with SIGINT and check that it shut down cleanly."""
    proc = subprocess.Popen(
        [
            sys.executable,
            str(EXAMPLES / name),
            "--port=0",
            f"--buffer-size={BUFFER_SIZE}",
            "--min-nr=4",
            "--max-nr=16",
            *loop,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        assert ready, "the server did not say where it listens"
        line = proc.stdout.readline()
        match = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)\n", line)
        stderr = proc.stderr
        assert match, (
            line,
            stderr.read() if stderr and proc.poll() is not None else "",
        )
        yield int(match.group(1))
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        assert re.search(r"^stats: .*\boutstanding=0\b", out, re.M), out
        assert "Traceback" not in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def run(*argv: str) -> str:
    """Run a client program; its output."""
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def reset(sock: socket.socket) -> None:
    """Close ``sock`` with a RST rather than a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# -- echo ---------------------------------------------------------------------


async def echo_client(port: int) -> None:
    rng = random.Random(1)
    sizes = [1, 2, 100, BUFFER_SIZE - 1, BUFFER_SIZE, BUFFER_SIZE + 1, 100_000]
    sizes += [rng.randrange(1, 3 * BUFFER_SIZE) for _ in range(50)]

    async def one(sizes: list[int]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for size in sizes:
                message = rng.randbytes(size)
                writer.write(message)
                await writer.drain()
                assert await reader.readexactly(size) == message
            # Many messages at once, echoed in order and byte-exact.
            burst = [rng.randbytes(rng.randrange(1, 20_000)) for _ in range(40)]
            writer.write(b"".join(burst))
            assert await reader.readexactly(sum(map(len, burst))) == b"".join(burst)
        finally:
            writer.close()
            await writer.wait_closed()

    await asyncio.wait_for(
        asyncio.gather(*(one(sizes[i::4]) for i in range(4))), timeout=30
    )


def echo_once(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"still there?")
        assert sock.recv(100) == b"still there?"


@LOOPS
def test_echo_server_echoes_every_size_byte_exact(loop: list[str]) -> None:
    with server("echo_server.py", loop) as port:
        asyncio.run(echo_client(port))
        echo_once(port)


@LOOPS
def test_echo_server_survives_clients_that_vanish(loop: list[str]) -> None:
    with server("echo_server.py", loop) as port:
        for i in range(10):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"x" * (BUFFER_SIZE * 3 + i))  # echoed to nobody
            if i % 2:
                reset(sock)
            else:
                sock.close()
        echo_once(port)
        # Clients still connected when the server stops give back their buffers.
        idle = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            echo_once(port)
        finally:
            idle.close()


# -- RESP ---------------------------------------------------------------------


def command(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(
        b"$%d\r\n%s\r\n" % (len(arg), arg) for arg in args
    )


async def read_reply(reader: asyncio.StreamReader) -> object:
    line = await reader.readline()
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        return RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        return None if size < 0 else (await reader.readexactly(size + 2))[:-2]
    if kind == b"*":
        return [await read_reply(reader) for _ in range(int(rest))]
    raise AssertionError(f"unexpected reply {line!r}")


async def resp_client(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def call(*args: bytes) -> object:
        writer.write(command(*args))
        return await read_reply(reader)

    try:
        big = random.Random(2).randbytes(100 * 1024)
        assert await call(b"PING") == "PONG"
        assert await call(b"ping", b"hi") == b"hi"
        assert await call(b"ECHO", b"\r\n\x00$*") == b"\r\n\x00$*"
        assert await call(b"SET", b"big", big) == "OK"
        assert await call(b"GET", b"big") == big
        assert await call(b"SET", b"k\x00\r\n", b"") == "OK"
        assert await call(b"GET", b"k\x00\r\n") == b""
        assert await call(b"GET", b"missing") is None
        assert await call(b"INCR", b"n") == 1
        assert await call(b"INCR", b"n") == 2
        assert isinstance(await call(b"INCR", b"big"), RuntimeError)
        assert await call(b"DEL", b"big", b"n", b"missing") == 2
        assert await call(b"GET", b"big") is None
        assert isinstance(await call(b"NOPE"), RuntimeError)
        assert isinstance(await call(b"GET"), RuntimeError)
        assert await call(b"CONFIG", b"GET", b"appendonly") == [b"appendonly", b"no"]

        # Pipelined: many commands in one write, some bigger than a buffer,
        # sent a few bytes at a time too, so that commands are cut anywhere.
        rng = random.Random(3)
        values = [rng.randbytes(rng.randrange(0, 3 * BUFFER_SIZE)) for _ in range(60)]
        batch = b"".join(
            command(b"SET", b"key%d" % i, value) + command(b"GET", b"key%d" % i)
            for i, value in enumerate(values)
        )
        writer.write(batch[: len(batch) // 2])
        for i in range(len(batch) // 2, len(batch), 997):
            writer.write(batch[i : i + 997])
            await writer.drain()
        for value in values:
            assert await read_reply(reader) == "OK"
            assert await read_reply(reader) == value
        writer.write(b"PING\r\n" * 100)  # inline, as redis-benchmark sends it
        for _ in range(100):
            assert await read_reply(reader) == "PONG"
    finally:
        writer.close()
        await writer.wait_closed()


def ping(port: int) -> None:
    """A PING from a fresh connection gets its PONG."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(command(b"PING"))
        assert sock.recv(100) == b"+PONG\r\n"


def read_until(sock: socket.socket, expected: bytes) -> bytes:
    """What ``sock`` receives until it has ``expected`` or the server closes
    the connection (each read waits 5 s at most)."""
    got = b""
    while len(got) < len(expected):
        data = sock.recv(65536)
        if not data:
            break
        got += data
    return got


@LOOPS
def test_resp_server_answers_inline_commands_ended_by_a_bare_lf(
    loop: list[str],
) -> None:
    with server("resp_server.py", loop) as port:
        # As `printf 'PING\n' | nc 127.0.0.1 PORT` sends it: a line, then EOF.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"PING\n")
            sock.shutdown(socket.SHUT_WR)
            assert read_until(sock, b"+PONG\r\n" + b"?") == b"+PONG\r\n"
        # Split as redis-server splits them: quotes group, escapes in them.
        lines = [
            (b"ping hi\n", b"$2\r\nhi\r\n"),
            (b'SET "a b" "c\\td"\r\n', b"+OK\r\n"),
            (b"GET 'a b'\n", b"$3\r\nc\td\r\n"),
            (b'ECHO "\\x41\\"\\n"\n', b'$3\r\nA"\n\r\n'),
            (b"\n", b""),  # an empty line: nothing to run
            (b"  PING  \n", b"+PONG\r\n"),
        ]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            for line, _ in lines:
                sock.sendall(line)
            expected = b"".join(reply for _, reply in lines)
            assert read_until(sock, expected) == expected


@LOOPS
@pytest.mark.parametrize("line", [b'SET "a b\n', b"SET 'a b\r\n", b'SET "a"b c\n'])
def test_resp_server_refuses_unbalanced_quotes_and_closes(
    loop: list[str], line: bytes
) -> None:
    error = b"-ERR Protocol error: unbalanced quotes in request\r\n"
    with server("resp_server.py", loop) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            # The command before it is answered; none after it is run.
            sock.sendall(b"PING\n" + line + b"PING\n")
            assert read_until(sock, b"+PONG\r\n" + error + b"?") == (
                b"+PONG\r\n" + error
            )
        ping(port)  # the server goes on


@pytest.fixture
def cli(redis_cli: str) -> Callable[..., str]:
    """``cli(port, *args)``: redis-cli's answer from 127.0.0.1:port."""

    def call(port: int, *args: str) -> str:
        return run(redis_cli, "-h", "127.0.0.1", "-p", str(port), *args).strip()

    return call


@LOOPS
def test_resp_server_answers_an_asyncio_client(loop: list[str]) -> None:
    with server("resp_server.py", loop) as port:
        asyncio.run(asyncio.wait_for(resp_client(port), timeout=30))
        ping(port)


@LOOPS
def test_resp_server_answers_redis_cli(
    loop: list[str], cli: Callable[..., str]
) -> None:
    with server("resp_server.py", loop) as port:
        assert cli(port, "SET", "k", "v") == "OK"
        assert cli(port, "GET", "k") == "v"
        assert cli(port, "INCR", "n") == "1"
        assert cli(port, "DEL", "k", "n") == "2"
        assert cli(port, "GET", "k") == ""
        assert cli(port, "PING") == "PONG"


@LOOPS
@pytest.mark.parametrize("pipeline", [1, 16], ids=["P1", "P16"])
def test_resp_server_serves_redis_benchmark(
    loop: list[str], pipeline: int, redis_benchmark: str, cli: Callable[..., str]
) -> None:
    with server("resp_server.py", loop) as port:
        out = run(
            redis_benchmark, "-h", "127.0.0.1", "-p", str(port),
            "-t", "ping,set,get", "-n", "2000", "-c", "20", "-q",
            "-P", str(pipeline),
        )  # fmt: skip
        rates = dict(re.findall(r"(\w+): ([\d.]+) requests per second", out))
        assert set(rates) == {"PING_INLINE", "PING_MBULK", "SET", "GET"}, out
        assert all(float(rate) > 0 for rate in rates.values()), out
        # -s shows them with `pytest -s`: how fast the example goes.
        print(f"\n{' '.join(loop) or 'asyncio'} -P {pipeline}: {rates}")
        assert cli(port, "PING") == "PONG"


@LOOPS
def test_resp_server_survives_clients_that_vanish_mid_command(
    loop: list[str],
) -> None:
    halves = [
        command(b"SET", b"k", b"v" * 100)[:20],  # cut in a small command
        command(b"SET", b"k", b"v" * 100_000)[:50_000],  # in a big one
        b"*3\r\n$3\r\nSET\r\n$1",  # in a length
        b"PI",  # in an inline command
        command(b"PING") + command(b"SET", b"k", b"v")[:7],  # after a whole one
    ]
    with server("resp_server.py", loop) as port:
        for i, half in enumerate(halves * 2):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(half)
            if i % 2:
                reset(sock)
            else:
                sock.close()
        # One that breaks the protocol is told so and closed.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"*1\r\n%3\r\n")
            assert sock.recv(100).startswith(b"-ERR Protocol error")
            assert sock.recv(100) == b""
        # Connected in the middle of a command when the server stops.
        idle = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            idle.sendall(command(b"SET", b"k", b"v" * 100_000)[:30_000])
            ping(port)
        finally:
            idle.close()
