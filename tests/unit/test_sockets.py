"""recv_into(): real sockets on 127.0.0.1, on both loops."""

from __future__ import annotations

import asyncio
import random
import socket
import sys

import pytest
from helpers import TIMEOUT, settle, tcp_pair

from aiomempool import buffer_pool, recv_into


async def read_exactly(sock: socket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = bytearray()
    while len(data) < n:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, n - len(data)), TIMEOUT)
        assert chunk, "unexpected end of file"
        data += chunk
    return bytes(data)


# -- recv_into ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_recv_into_echo_is_byte_exact_and_gives_every_buffer_back() -> None:
    loop = asyncio.get_running_loop()
    pool = buffer_pool(4096, min_nr=2, max_nr=4)
    message = random.Random(7).randbytes(300_000)

    async def echo(sock: socket.socket) -> None:
        while True:
            async with recv_into(pool, sock) as view:
                if not view:
                    return
                assert len(view) <= 4096
                await loop.sock_sendall(sock, view)

    async with tcp_pair() as (server, client):
        task = asyncio.ensure_future(echo(server))
        sending = asyncio.ensure_future(loop.sock_sendall(client, message))
        echoed = await read_exactly(client, len(message))
        await asyncio.wait_for(sending, TIMEOUT)
        client.shutdown(socket.SHUT_WR)
        await asyncio.wait_for(task, TIMEOUT)
    assert echoed == message
    assert pool.stats().outstanding == 0
    pool.close()


@pytest.mark.asyncio
async def test_recv_into_gives_an_empty_view_at_eof_and_releases_it_on_exit() -> None:
    pool = buffer_pool(1024, min_nr=1, max_nr=1)
    async with tcp_pair() as (server, client):
        client.shutdown(socket.SHUT_WR)
        async with recv_into(pool, server) as view:
            assert len(view) == 0
            assert pool.stats().outstanding == 1
    with pytest.raises(ValueError):
        len(view)  # released: using it after the block fails loudly
    assert pool.stats().outstanding == 0
    pool.close()


@pytest.mark.asyncio
async def test_recv_into_frees_the_buffer_when_the_block_raises() -> None:
    loop = asyncio.get_running_loop()
    pool = buffer_pool(1024, min_nr=1, max_nr=1)
    async with tcp_pair() as (server, client):
        await loop.sock_sendall(client, b"hello")
        with pytest.raises(KeyError):
            async with recv_into(pool, server) as view:
                assert bytes(view) == b"hello"
                raise KeyError("boom")
    assert pool.stats().outstanding == 0
    pool.close()


@pytest.mark.asyncio
async def test_recv_into_cancelled_waiting_for_a_dry_pool_takes_nothing() -> None:
    pool = buffer_pool(1024, min_nr=1, max_nr=1)
    held = await pool.alloc()
    async with tcp_pair() as (server, _client):

        async def receive() -> None:
            async with recv_into(pool, server):
                raise AssertionError("never entered: the pool is dry")

        task = asyncio.ensure_future(receive())
        await settle()
        assert pool.waiters == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert pool.waiters == 0
    assert pool.stats().outstanding == 1  # only ours
    pool.free(held)
    assert pool.stats().outstanding == 0
    # The buffer is usable again: nothing was lost in the cancelled wait.
    async with pool.element() as buf:
        assert len(buf) == 1024
    pool.close()


@pytest.mark.asyncio
async def test_recv_into_cancelled_while_receiving_frees_the_buffer_loses_no_byte() -> (
    None
):
    loop = asyncio.get_running_loop()
    pool = buffer_pool(1024, min_nr=1, max_nr=1)
    async with tcp_pair() as (server, client):

        async def receive() -> None:
            async with recv_into(pool, server):
                raise AssertionError("nothing was sent")

        task = asyncio.ensure_future(receive())
        await settle()
        assert pool.stats().outstanding == 1  # lent to the receive
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.stats().outstanding == 0
        await loop.sock_sendall(client, b"after")
        async with recv_into(pool, server) as view:
            assert bytes(view) == b"after"
    assert pool.stats().outstanding == 0
    pool.close()


def test_recv_into_refuses_what_is_not_a_pool() -> None:
    with socket.socket() as sock, pytest.raises(TypeError, match="must be a Mempool"):
        recv_into(object(), sock)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_recv_into_cancelled_as_the_bytes_arrive_loses_none_of_them() -> None:
    """The race: the bytes become readable and the task is cancelled in the
    same loop iteration, before it runs. A receive made in the loop's
    callback (loop.sock_recv_into()) takes them from the socket and then
    throws them away with the CancelledError."""
    loop = asyncio.get_running_loop()
    pool = buffer_pool(1024, min_nr=1, max_nr=2)
    trials = 30
    async with tcp_pair() as (server, client):
        trigger_r, trigger_w = socket.socketpair()
        trigger_r.setblocking(False)
        try:
            for trial in range(trials):
                message = b"message %d;" % trial

                async def receive() -> bytes:
                    async with recv_into(pool, server) as view:
                        return bytes(view)

                task = asyncio.ensure_future(receive())
                await settle()  # parked, waiting for bytes

                def cancel_now(task: asyncio.Future[bytes]) -> None:
                    loop.remove_reader(trigger_r.fileno())
                    trigger_r.recv(16)
                    task.cancel()

                loop.add_reader(trigger_r.fileno(), cancel_now, task)
                # Both become readable at once; the kernel reports the
                # server socket first (epoll lists fds in readiness order),
                # so the cancel runs after its read callback, in that same
                # iteration, before the task is woken.
                client.send(message)
                trigger_w.send(b"x")
                with pytest.raises(asyncio.CancelledError):
                    await asyncio.wait_for(task, TIMEOUT)
                async with recv_into(pool, server) as view:
                    assert bytes(view) == message, f"trial {trial}"
        finally:
            trigger_r.close()
            trigger_w.close()
    assert pool.stats().outstanding == 0
    pool.close()


@pytest.mark.parametrize("style", ["asyncio.timeout", "asyncio.wait_for"])
@pytest.mark.asyncio
async def test_a_read_loop_under_a_short_timeout_gets_every_byte(style: str) -> None:
    if style == "asyncio.timeout" and sys.version_info < (3, 11):
        pytest.skip("asyncio.timeout() is new in 3.11")
    loop = asyncio.get_running_loop()
    pool = buffer_pool(512, min_nr=1, max_nr=4)
    rng = random.Random(11)
    chunks = [rng.randbytes(rng.randrange(1, 300)) for _ in range(1500)]
    expected = b"".join(chunks)
    received = bytearray()
    timeouts = 0

    async def once(sock: socket.socket) -> None:
        async with recv_into(pool, sock) as view:
            assert view, "unexpected end of file"
            received.extend(view)

    async def send_slowly(sock: socket.socket) -> None:
        for i, chunk in enumerate(chunks):
            await loop.sock_sendall(sock, chunk)
            if i % 3 == 0:
                await asyncio.sleep(0.0005 * rng.randrange(5))

    async with tcp_pair() as (server, client):
        sending = asyncio.ensure_future(send_slowly(client))
        deadline = loop.time() + 30
        while len(received) < len(expected):
            assert loop.time() < deadline, "the read loop made no progress"
            try:
                if style == "asyncio.timeout":
                    async with asyncio.timeout(0.002):  # type: ignore[attr-defined]
                        await once(server)
                else:
                    await asyncio.wait_for(once(server), 0.002)
            except (TimeoutError, asyncio.TimeoutError):
                timeouts += 1
        await asyncio.wait_for(sending, TIMEOUT)
    assert bytes(received) == expected
    assert timeouts > 10  # the timeouts did land, often, mid-read
    assert pool.stats().outstanding == 0
    pool.close()
