"""The TCP proxy and the anyio echo server against hostile clients: run as
subprocesses on asyncio and uvloop with 64 KiB buffers (the examples'
default), they must keep serving a well-behaved client, within a second or
two per message, while clients flood them and never read the replies, or
connect and send nothing; and the proxy must get every buffer back when
clients reset connections whose queues are full.

Each test reads the server's stats on shutdown: every buffer back
(``outstanding=0``, checked by ``stop()``), no wait for a buffer (the pool
never ran dry), and for the proxy the most buffers a writer held
(``most_queued``) and ever out at once (``high_water``), within what its
connections may hold.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import socket
import struct
from pathlib import Path
from typing import cast

from helpers import TIMEOUT, close
from test_proxy_and_anyio import LOOPS, connect, serving, stop

#: The examples' default buffer size and reserve.
BUFFER = 65536
MIN_NR = 16
#: How long hostile clients may fill every queue before the test measures.
FILL_FOR = 8.0


def proxy_max_queued() -> int:
    """The proxy's ``MAX_QUEUED``: buffers of one direction's reads queued
    before it stops reading that direction."""
    path = Path(__file__).resolve().parents[2] / "examples" / "tcp_proxy.py"
    spec = importlib.util.spec_from_file_location("tcp_proxy_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    value = module.MAX_QUEUED
    assert isinstance(value, int)
    return value


MAX_QUEUED = proxy_max_queued()


class Flooder:
    """A client that writes ``total`` bytes in messages of ``message``, as
    fast as the server takes them, and never reads a byte of the replies;
    ``sent`` counts its bytes. Its receive buffer is small (4 KiB), so the
    replies back up into the server soon: ``total`` is more than the
    kernel's buffers (a few MiB) take of them before the server's own
    queue of replies grows."""

    def __init__(self, port: int, message: bytes, total: int) -> None:
        self.port = port
        self.message = message
        self.total = total
        self.sent = 0
        self.done = False  # sent all, or cancelled

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        # Closing resets the connection (SO_LINGER 0), dropping what is
        # queued both ways: a client that never reads could not close else.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.setblocking(False)
        try:
            address = ("127.0.0.1", self.port)
            await asyncio.wait_for(loop.sock_connect(sock, address), TIMEOUT)
        except BaseException:
            sock.close()
            raise
        _, writer = await asyncio.open_connection(sock=sock)
        try:
            while self.sent < self.total:
                writer.write(self.message)
                self.sent += len(self.message)
                await writer.drain()  # may stall for good: every queue full
                await asyncio.sleep(0)  # the others' turn
            self.done = True
            await asyncio.Event().wait()  # reading nothing, until cancelled
        finally:
            self.done = True
            writer.transport.abort()
            await close(writer)


async def flooding(
    port: int, count: int, message: bytes, total: int
) -> list[asyncio.Task[None]]:
    """Start ``count`` flooders of ``total`` bytes each; return once each
    has sent them all or sent nothing for half a second (every queue
    between it and its replies is full), or after ``FILL_FOR`` seconds.
    Their tasks, to cancel."""
    flooders = [Flooder(port, message, total) for _ in range(count)]
    tasks = [asyncio.create_task(flooder.run()) for flooder in flooders]
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FILL_FOR
        last = [-1] * count
        while loop.time() < deadline:
            await asyncio.sleep(0.5)
            now = [flooder.sent for flooder in flooders]
            stalled = [n == was and n > 0 for n, was in zip(now, last, strict=True)]
            if all(f.done or s for f, s in zip(flooders, stalled, strict=True)):
                break
            last = now
        assert all(flooder.sent for flooder in flooders), "a flooder sent nothing"
    except BaseException:
        await cancel(tasks)
        raise
    return tasks


async def cancel(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait, bounded, until they are done."""
    for task in tasks:
        task.cancel()
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), TIMEOUT)


async def echoes(port: int, sizes: list[int], within: float) -> float:
    """A well-behaved client: one message of each size, each echoed byte for
    byte within ``within`` seconds; the slowest echo, in seconds."""
    loop = asyncio.get_running_loop()
    reader, writer = await connect(port)
    slowest = 0.0
    try:
        for size in sizes:
            message = os.urandom(size)
            start = loop.time()
            writer.write(message)
            echoed = await asyncio.wait_for(reader.readexactly(size), within)
            slowest = max(slowest, loop.time() - start)
            assert echoed == message
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
    finally:
        await close(writer)
    return slowest


@LOOPS
def test_proxy_serves_a_client_while_20_flooders_never_read(loop: list[str]) -> None:
    flooders = 20
    kb = os.urandom(1024)

    async def main() -> None:
        async with serving(
            "tcp_proxy.py", loop, "--buffer-size", str(BUFFER)
        ) as server:
            tasks = await flooding(server.port, flooders, kb, 8 << 20)
            try:
                # 1 KB messages like theirs, and some of several buffers.
                sizes = [1024] * 10 + [BUFFER, 3 * BUFFER + 5] + [1024] * 5
                slowest = await echoes(server.port, sizes, within=2.0)
            finally:
                await cancel(tasks)
            stats = await stop(server)
        print(f"slowest echo {slowest * 1e3:.0f} ms; stats {stats}")
        assert stats["waits"] == "0", stats
        assert int(stats["most_queued"]) <= MAX_QUEUED + 1, stats
        # A connection holds at most 2 x (MAX_QUEUED + 2) buffers (see the
        # proxy's docstring), the reserve aside.
        bound = MIN_NR + (flooders + 1) * 2 * (MAX_QUEUED + 2)
        assert int(stats["high_water"]) <= bound, stats

    asyncio.run(main())


class DeafUpstream:
    """An upstream that reads nothing, so that what the proxy forwards to it
    backs up in the proxy; it sends a byte every 10 ms, so that the proxy
    writes to its clients and sees them reset. ``release()`` closes its
    connections."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []
        self.tickers: list[asyncio.Task[None]] = []

    async def __call__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        cast(asyncio.Transport, writer.transport).pause_reading()
        self.writers.append(writer)
        self.tickers.append(asyncio.create_task(self._tick(writer)))

    async def _tick(self, writer: asyncio.StreamWriter) -> None:
        for _ in range(int(TIMEOUT / 0.01)):  # until released, or TIMEOUT
            if writer.transport.is_closing():
                return
            writer.write(b".")
            await asyncio.sleep(0.01)

    async def release(self) -> None:
        for ticker in self.tickers:
            ticker.cancel()
        await asyncio.gather(*self.tickers, return_exceptions=True)
        for writer in self.writers:
            writer.transport.abort()
        await asyncio.wait_for(
            asyncio.gather(*(close(w) for w in self.writers)), TIMEOUT
        )


@LOOPS
def test_proxy_gives_back_every_buffer_of_connections_reset_with_full_queues(
    loop: list[str],
) -> None:
    # Clients send 8 MiB to an upstream that reads none of it, then reset
    # their connections: the proxy aborts the other side, with its writer
    # full. uvloop says that an aborted transport's queue is dropped only
    # after connection_lost(): the buffers come back later, and a shutdown
    # right then must wait for them.
    deaf = DeafUpstream()

    async def main() -> None:
        options = ["--buffer-size", str(BUFFER)]
        async with serving("tcp_proxy.py", loop, *options, upstream_cb=deaf) as server:
            try:
                tasks = await flooding(server.port, 8, os.urandom(BUFFER), 8 << 20)
                await cancel(tasks)  # each resets its connection
                await asyncio.sleep(0.05)  # the proxy's next write sees it
                stats = await stop(server)  # every buffer back
            finally:
                await deaf.release()
        print(f"stats {stats}")
        # The writers toward upstream were full (of bytes, or of buffers).
        assert int(stats["backpressure_pauses"]) + int(stats["buffer_pauses"]), stats
        assert int(stats["most_queued"]) <= MAX_QUEUED + 1, stats

    asyncio.run(main())


async def clients(
    port: int, count: int
) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """``count`` connections, opened 50 at a time."""
    pairs: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    for start in range(0, count, 50):
        pairs += await asyncio.gather(
            *(connect(port) for _ in range(start, min(count, start + 50)))
        )
    return pairs


async def poke(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One byte, echoed: the connection is still served."""
    writer.write(b"!")
    assert await asyncio.wait_for(reader.readexactly(1), TIMEOUT) == b"!"


#: The anyio server's pool: 64 buffers (and 4 of headroom), far fewer than
#: the hostile connections.
SMALL_POOL = ["--buffer-size", str(BUFFER), "--min-nr", str(MIN_NR), "--max-nr", "64"]


@LOOPS
def test_anyio_echo_serves_a_client_past_300_idle_connections(
    loop: list[str],
) -> None:
    async def main() -> None:
        async with serving("anyio_echo.py", loop, *SMALL_POOL) as server:
            pairs = await clients(server.port, 300)
            try:
                await asyncio.sleep(0.5)  # the server accepts them all
                slowest = await echoes(server.port, [5, BUFFER, 1000], within=1.0)
                # The idle ones were left waiting, not dropped: each is served.
                await asyncio.wait_for(
                    asyncio.gather(*(poke(r, w) for r, w in pairs)), TIMEOUT
                )
            finally:
                await asyncio.wait_for(
                    asyncio.gather(*(close(w) for _, w in pairs)), TIMEOUT
                )
            stats = await stop(server)
        print(f"slowest echo {slowest * 1e3:.0f} ms; stats {stats}")
        assert stats["waits"] == "0", stats

    asyncio.run(main())


@LOOPS
def test_anyio_echo_serves_a_client_while_30_flooders_never_read(
    loop: list[str],
) -> None:
    # 16 buffers (and 1 of headroom): fewer than the flooders, each of which
    # has a reply stuck in a send for good.
    pool = ["--buffer-size", str(BUFFER), "--min-nr", "4", "--max-nr", "16"]

    async def main() -> None:
        async with serving("anyio_echo.py", loop, *pool) as server:
            tasks = await flooding(server.port, 30, os.urandom(BUFFER), 6 << 20)
            try:
                slowest = await echoes(server.port, [5, BUFFER, 1000], within=1.0)
            finally:
                await cancel(tasks)
            stats = await stop(server)
        print(f"slowest echo {slowest * 1e3:.0f} ms; stats {stats}")
        assert stats["waits"] == "0", stats

    asyncio.run(main())
