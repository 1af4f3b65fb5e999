"""The TCP proxy and the anyio echo server, run as they would be: each test
starts one as a subprocess, on asyncio or uvloop, drives it with an asyncio
client, then stops it with SIGINT and reads its stats: every buffer back
(``outstanding=0``) and exit code 0.

The proxy forwards to an echo server run by the test itself, so both
examples answer every byte with itself, and the clients check the echo
byte for byte.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import struct
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import TIMEOUT, close

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LOOPS = pytest.mark.parametrize("loop", [[], ["--uvloop"]], ids=["asyncio", "uvloop"])
EXAMPLE = pytest.mark.parametrize("example", ["tcp_proxy.py", "anyio_echo.py"])
#: Small buffers, so that messages of several buffers stay cheap.
BUFFER = 4096


#: What asyncio.start_server() calls for each connection.
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Running:
    proc: asyncio.subprocess.Process
    port: int


async def upstream_echo(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """The proxy's upstream: echoes until EOF, then closes."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()
        with suppress(ConnectionError):
            await writer.wait_closed()


@asynccontextmanager
async def serving(
    example: str, loop: list[str], *args: str, upstream_cb: Handler | None = None
) -> AsyncIterator[Running]:
    """Start ``example`` (behind the proxy: an upstream server of the
    test's, ``upstream_cb`` for each connection, ``upstream_echo()`` by
    default), yield it once it listens; kill it in the end if still alive."""
    upstream = None
    options = ["--port", "0", "--buffer-size", str(BUFFER), *loop, *args]
    if example == "tcp_proxy.py":
        handler = upstream_echo if upstream_cb is None else upstream_cb
        upstream = await asyncio.start_server(handler, "127.0.0.1", 0)
        upstream_port = upstream.sockets[0].getsockname()[1]
        options += ["--upstream", f"127.0.0.1:{upstream_port}"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / example),
        *options,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)
        assert line.startswith(b"listening on 127.0.0.1:"), line
        yield Running(proc, int(line.rsplit(b":", 1)[1]))
    finally:
        if proc.returncode is None:
            proc.kill()
            await asyncio.wait_for(proc.communicate(), TIMEOUT)
        if upstream is not None:
            upstream.close()
            await asyncio.wait_for(upstream.wait_closed(), TIMEOUT)


async def stop(server: Running) -> dict[str, str]:
    """SIGINT: the server must exit with 0 and every buffer back; its stats."""
    server.proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(server.proc.communicate(), TIMEOUT)
    stderr = err.decode(errors="replace")
    assert server.proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "Exception" not in stderr, stderr
    line = out.decode().strip().splitlines()[-1]
    assert line.startswith("stats: "), out
    stats = dict(field.split("=", 1) for field in line.split()[1:])
    assert stats["outstanding"] == "0", line
    assert stats["allocs"] == stats["frees"], line
    return stats


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)


def messages(seed: int, count: int) -> list[bytes]:
    """Messages of varied sizes: 1 byte, around the buffer size, several
    buffers, and random sizes up to eight buffers."""
    rng = random.Random(seed)
    edges = [1, BUFFER - 1, BUFFER, BUFFER + 1, 3 * BUFFER, 5 * BUFFER + 7]
    sizes = [rng.choice(edges) if i % 2 else rng.randint(1, 8 * BUFFER)
             for i in range(count)]  # fmt: skip
    return [rng.randbytes(size) for size in sizes]


async def ping_pong(port: int, seed: int) -> None:
    """One message at a time, each echoed byte for byte; then EOF both ways."""
    reader, writer = await connect(port)
    try:
        for message in messages(seed, 40):
            writer.write(message)
            echoed = await asyncio.wait_for(reader.readexactly(len(message)), TIMEOUT)
            assert echoed == message
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
    finally:
        await close(writer)


async def stream(port: int, seed: int) -> None:
    """Every message written at once while reading: the echo is the same
    stream, in order; then EOF both ways."""
    reader, writer = await connect(port)
    try:
        data = b"".join(messages(seed, 60))

        async def send() -> None:
            for i in range(0, len(data), 3 * BUFFER + 11):
                writer.write(data[i : i + 3 * BUFFER + 11])
                await writer.drain()
            writer.write_eof()

        sender = asyncio.create_task(send())
        echoed = await asyncio.wait_for(reader.readexactly(len(data)), TIMEOUT)
        await asyncio.wait_for(sender, TIMEOUT)
        assert echoed == data
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
    finally:
        await close(writer)


@EXAMPLE
@LOOPS
def test_echoes_messages_of_every_size_byte_exact(
    example: str, loop: list[str]
) -> None:
    async def main() -> None:
        async with serving(example, loop) as server:
            clients = [ping_pong(server.port, seed) for seed in range(4)]
            clients += [stream(server.port, seed) for seed in range(4, 8)]
            await asyncio.gather(*clients)
            stats = await stop(server)
            assert int(stats["allocs"]) > 0

    asyncio.run(main())


async def vanish(port: int, nbytes: int, read_first: int) -> None:
    """Write ``nbytes`` without reading them back (after reading
    ``read_first`` bytes), then reset the connection: SO_LINGER 0."""
    reader, writer = await connect(port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.write(os.urandom(nbytes))
    if read_first:
        await asyncio.wait_for(reader.readexactly(read_first), TIMEOUT)
    await asyncio.sleep(0.01)
    writer.transport.abort()
    await close(writer)


@EXAMPLE
@LOOPS
def test_survives_clients_that_vanish_mid_transfer(
    example: str, loop: list[str]
) -> None:
    async def main() -> None:
        async with serving(example, loop) as server:
            await asyncio.gather(
                *(vanish(server.port, 0, 0) for _ in range(4)),  # at once
                *(vanish(server.port, 1 << 20, 0) for _ in range(4)),
                *(vanish(server.port, 1 << 20, 5 * BUFFER) for _ in range(4)),
            )
            await asyncio.sleep(0.1)
            await ping_pong(server.port, 99)  # and it still serves
            await stop(server)

    asyncio.run(main())


async def slow_reader(port: int, nbytes: int) -> None:
    """A client with a tiny receive buffer that reads slowly while it
    writes everything: the server must neither lose nor reorder a byte."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), TIMEOUT)
    except BaseException:
        sock.close()
        raise
    reader, writer = await asyncio.open_connection(sock=sock, limit=8192)
    try:
        data = random.Random(nbytes).randbytes(nbytes)

        async def send() -> None:
            for i in range(0, len(data), 65536):
                writer.write(data[i : i + 65536])
                await writer.drain()
            writer.write_eof()

        sender = asyncio.create_task(send())
        await asyncio.sleep(0.3)  # not reading at all, for a start
        echoed = bytearray()
        while len(echoed) < nbytes:
            chunk = await asyncio.wait_for(reader.read(16384), TIMEOUT)
            assert chunk, f"EOF after {len(echoed)} of {nbytes} bytes"
            echoed += chunk
            await asyncio.sleep(0.001)
        await asyncio.wait_for(sender, TIMEOUT)
        assert echoed == data
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
    finally:
        await close(writer)


@EXAMPLE
@LOOPS
@pytest.mark.parametrize("small_pool", [False, True], ids=["pool1024", "pool4"])
def test_slow_reader_loses_and_reorders_nothing(
    example: str, loop: list[str], small_pool: bool
) -> None:
    # With 1024 buffers of 4 KiB, the proxy stops reading a side once the
    # other side's writer holds MAX_QUEUED (8) of its buffers, 32 KiB: before
    # the transport's high-water mark (64 KiB). With 4, the pool is dry
    # before that: its reads wait for buffers.
    pool = ["--min-nr", "2", "--max-nr", "4"] if small_pool else []

    async def main() -> None:
        async with serving(example, loop, *pool) as server:
            await asyncio.gather(
                slow_reader(server.port, 4 << 20), stream(server.port, 1)
            )
            stats = await stop(server)
            if example == "tcp_proxy.py" and small_pool:
                assert int(stats["waits"]) > 0, stats
            elif example == "tcp_proxy.py":
                assert int(stats["buffer_pauses"]) > 0, stats
                assert int(stats["most_queued"]) <= 8 + 1, stats

    asyncio.run(main())
