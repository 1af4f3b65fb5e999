"""PooledWriter: a buffer is freed only once the transport has sent it, on
streams and on transports; a free right after write() corrupts the stream
(the trap it avoids, shown); an aborted transport gives every buffer back;
bad arguments. Real sockets on 127.0.0.1, on both loops."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Awaitable, Callable

import pytest
import uvloop
from helpers import TIMEOUT, tcp_pair

from aiomempool import Mempool, PooledWriter, buffer_pool

SIZE = 16384  # bytes per buffer in the write tests
COUNT = 48  # buffers written per connection in the write tests


# -- the write trap ----------------------------------------------------------

Send = Callable[[asyncio.StreamWriter, Mempool[memoryview], memoryview], None]


def pattern(i: int) -> bytes:
    """Buffer i's distinctive bytes: never the thief's 0xEE."""
    return bytes([i % 200]) * SIZE


def steal_and_scribble(pool: Mempool[memoryview]) -> None:
    """What a busy server does: the next borrowers take every buffer free
    now and overwrite it, then give them back."""
    taken = []
    while (buf := pool.alloc_nowait()) is not None:
        buf[:] = b"\xee" * len(buf)
        taken.append(buf)
    for buf in taken:
        pool.free(buf)


async def slow_stream(
    send: Callable[[asyncio.StreamWriter, Mempool[memoryview], memoryview], None],
    after: Callable[[asyncio.StreamWriter], Awaitable[None]],
) -> tuple[bytes, bytes, Mempool[memoryview]]:
    """A server writes COUNT pooled buffers with ``send`` to a client that
    reads slowly, scribbling over every free buffer after each write;
    returns (bytes sent, bytes received, pool)."""
    pool = buffer_pool(SIZE, min_nr=2, max_nr=8)
    done = asyncio.get_running_loop().create_future()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        try:
            for i in range(COUNT):
                buf = await asyncio.wait_for(pool.alloc(), TIMEOUT)
                assert buf is not None
                buf[:] = pattern(i)
                send(writer, pool, buf)
                steal_and_scribble(pool)
                await asyncio.sleep(0)
            await after(writer)
        finally:
            writer.close()
            done.set_result(None)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.wait_for(
            asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port)),
            TIMEOUT,
        )
        reader, writer = await asyncio.open_connection(sock=sock)
        try:
            received = bytearray()
            while len(received) < COUNT * SIZE:
                chunk = await asyncio.wait_for(reader.read(4096), TIMEOUT)
                assert chunk, "unexpected end of file"
                received += chunk
                if len(received) % 65536 < 4096:
                    await asyncio.sleep(0.002)  # a slow reader
            await asyncio.wait_for(done, TIMEOUT)
        finally:
            writer.close()
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), TIMEOUT)
    sent = b"".join(pattern(i) for i in range(COUNT))
    return sent, bytes(received), pool


@pytest.mark.asyncio
@pytest.mark.parametrize("through", ["stream", "transport"])
async def test_pooled_writer_frees_a_buffer_only_once_sent(through: str) -> None:
    writers: dict[asyncio.StreamWriter, PooledWriter] = {}
    peak = 0

    def send(
        writer: asyncio.StreamWriter, pool: Mempool[memoryview], buf: memoryview
    ) -> None:
        nonlocal peak
        if writer not in writers:
            target = writer if through == "stream" else writer.transport
            writers[writer] = PooledWriter(target, pool)
        writers[writer].write(buf)
        peak = max(peak, writers[writer].pending)

    async def after(writer: asyncio.StreamWriter) -> None:
        pooled = writers[writer]
        await pooled.drain()
        await asyncio.wait_for(pooled.wait_sent(), TIMEOUT)
        assert pooled.pending == 0

    sent, received, pool = await slow_stream(send, after)
    assert received == sent
    assert peak > 1, "the test never queued a buffer: it proves nothing"
    assert pool.stats().outstanding == 0
    pool.close()


@pytest.mark.asyncio
async def test_free_right_after_write_corrupts_the_stream_where_writes_are_views() -> (
    None
):
    """The trap itself: proves the test above would catch a bad free."""
    if sys.version_info < (3, 12) and not isinstance(
        asyncio.get_running_loop(), uvloop.Loop
    ):
        pytest.skip("Python 3.11's selector transport copies what it is written")

    def send(
        writer: asyncio.StreamWriter, pool: Mempool[memoryview], buf: memoryview
    ) -> None:
        writer.write(buf)
        pool.free(buf)  # WRONG: the transport may still hold a view of buf

    async def after(writer: asyncio.StreamWriter) -> None:
        await writer.drain()

    sent, received, pool = await slow_stream(send, after)
    assert len(received) == len(sent)
    assert received != sent
    assert b"\xee" in received  # the next borrower's bytes went out
    pool.close()


@pytest.mark.asyncio
async def test_pooled_writer_gives_every_buffer_back_when_the_transport_aborts() -> (
    None
):
    pool = buffer_pool(SIZE, min_nr=2, max_nr=64)
    got: asyncio.Future[asyncio.StreamWriter] = (
        asyncio.get_running_loop().create_future()
    )

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.set_result(writer)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        _reader, client = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer = await asyncio.wait_for(got, TIMEOUT)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            pooled = PooledWriter(writer, pool)
            for _ in range(64):  # 1 MiB to a client that reads nothing
                buf = pool.alloc_nowait()
                assert buf is not None
                pooled.write(buf)
            assert pooled.pending > 0
            writer.transport.abort()
            await asyncio.wait_for(pooled.wait_sent(), TIMEOUT)
            assert pooled.pending == 0
            assert pool.stats().outstanding == 0
        finally:
            client.close()
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), TIMEOUT)
    pool.close()


@pytest.mark.asyncio
async def test_pooled_writer_refuses_bad_arguments() -> None:
    pool = buffer_pool(64, min_nr=1, max_nr=1)
    async with tcp_pair() as (server, _client):
        _reader, writer = await asyncio.open_connection(sock=server)
        with pytest.raises(TypeError, match="pool must be a Mempool"):
            PooledWriter(writer, object())  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="max_poll_interval"):
            PooledWriter(writer, pool, max_poll_interval=0)
        pooled = PooledWriter(writer, pool)
        buf = await pool.alloc()
        assert buf is not None
        with pytest.raises(ValueError, match="nbytes"):
            pooled.write(buf, 65)
        pool.free(buf)  # refused: still ours
        writer.close()
    assert pool.stats().outstanding == 0
    pool.close()


def test_pooled_writer_needs_a_running_event_loop() -> None:
    pool = buffer_pool(64, min_nr=1)
    with pytest.raises(RuntimeError, match="needs a running event loop"):
        PooledWriter(asyncio.WriteTransport(), pool)
    pool.close()
