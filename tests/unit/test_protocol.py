"""PooledBufferedProtocol: real servers on 127.0.0.1, clients on streams."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import struct
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest
from helpers import TIMEOUT, close, settle, shut_down

from aiomempool import (
    GFP_ATOMIC,
    Mempool,
    PooledBufferedProtocol,
    PooledWriter,
    SlabCache,
    buffer_arena,
    buffer_pool,
    slab_pool,
)


class Recorder(PooledBufferedProtocol):
    """Sets ``lost`` when the connection ends."""

    def __init__(self, pool: Mempool[memoryview]) -> None:
        super().__init__(pool)
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.lost.done():
            self.lost.set_result(None)


class Echo(Recorder):
    def view_received(self, view: memoryview) -> None:
        self.transport.write(bytes(view))


class Lines(Recorder):
    """Echoes complete lines, keeps an incomplete one; logs who got what."""

    log: list[tuple[str, bytes]]

    def __init__(self, pool: Mempool[memoryview], log: list[tuple[str, bytes]]):
        super().__init__(pool)
        self.log = log

    def view_received(self, view: memoryview) -> None:
        end = bytes(view).rfind(b"\n") + 1
        if end:
            lines = bytes(view[:end])
            for line in lines.splitlines(keepends=True):
                self.log.append((line[:1].decode(), line))
            self.transport.write(lines)
        if end < len(view):
            self.keep_buffer(end)


class Frames(Recorder):
    """Length-prefixed frames (4 bytes, big-endian); an incomplete one is
    kept until the rest arrives."""

    def __init__(self, pool: Mempool[memoryview]) -> None:
        super().__init__(pool)
        self.frames: list[bytes] = []
        self.views = 0

    def view_received(self, view: memoryview) -> None:
        self.views += 1
        offset = 0
        while len(view) - offset >= 4:
            (size,) = struct.unpack_from(">I", view, offset)
            if len(view) - offset - 4 < size:
                break
            self.frames.append(bytes(view[offset + 4 : offset + 4 + size]))
            offset += 4 + size
        if offset < len(view):
            self.keep_buffer(offset)


@asynccontextmanager
async def serve(
    factory: Callable[[], Recorder],
) -> AsyncIterator[tuple[int, list[Recorder]]]:
    """A server on 127.0.0.1, closed on exit; yields its port and the
    protocols it made."""
    made: list[Recorder] = []

    def make() -> Recorder:
        made.append(factory())
        return made[-1]

    server = await asyncio.get_running_loop().create_server(make, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], made
    finally:
        await shut_down(server, made)


async def until(condition: Callable[[], bool]) -> None:
    """Wait, bounded, until ``condition()`` holds."""
    for _ in range(int(TIMEOUT / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not met in time")


def outstanding_is(pool: Mempool[memoryview], n: int) -> Callable[[], bool]:
    return lambda: pool.stats().outstanding == n


def all_back(pool: Mempool[memoryview], count: int) -> None:
    """Nothing is out, and ``count`` buffers can be had at once: none was
    lost, nor is still in quarantine."""
    assert pool.stats().outstanding == 0
    assert pool.waiters == 0
    got = [pool.alloc_nowait(GFP_ATOMIC) for _ in range(count)]
    assert None not in got
    for buf in got:
        pool.free(buf)
    assert pool.stats().outstanding == 0


def on_uvloop() -> bool:
    return type(asyncio.get_running_loop()).__module__.startswith("uvloop")


async def echo_many(port: int, seed: int, sizes: list[int]) -> None:
    rng = random.Random(seed)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for size in sizes:
            data = rng.randbytes(size)
            writer.write(data)
            got = await asyncio.wait_for(reader.readexactly(size), TIMEOUT)
            assert got == data
    finally:
        await close(writer)


SIZES = [1, 7, 100, 1023, 1024, 1025, 4096, 5000, 70_000, 3]


@pytest.mark.asyncio
async def test_echo_is_byte_exact_for_messages_smaller_and_bigger_than_a_buffer() -> (
    None
):
    pool = buffer_pool(1024, min_nr=4, max_nr=64)
    async with serve(lambda: Echo(pool)) as (port, made):
        await asyncio.gather(*(echo_many(port, seed, SIZES) for seed in range(4)))
        await asyncio.wait_for(asyncio.gather(*(p.lost for p in made)), TIMEOUT)
    all_back(pool, 64)


@pytest.mark.asyncio
async def test_keep_buffer_reassembles_frames_split_across_reads() -> None:
    pool = buffer_pool(512, min_nr=2, max_nr=8)
    rng = random.Random(7)
    frames = [rng.randbytes(rng.randrange(0, 500)) for _ in range(60)]
    stream = b"".join(struct.pack(">I", len(f)) + f for f in frames)
    async with serve(lambda: Frames(pool)) as (port, made):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        # Odd-sized pieces with pauses: reads end mid-header and mid-frame.
        pos = 0
        while pos < len(stream):
            step = rng.randrange(1, 700)
            writer.write(stream[pos : pos + step])
            await writer.drain()
            await asyncio.sleep(0.001)
            pos += step
        (protocol,) = made
        assert isinstance(protocol, Frames)
        await until(lambda: len(protocol.frames) == len(frames))
        assert protocol.frames == frames
        assert protocol.views > 1
        await close(writer)
    all_back(pool, 8)


@pytest.mark.asyncio
async def test_dry_pool_pauses_reading_drops_nothing_and_serves_in_order() -> None:
    # Two buffers in all: A and B keep one each with an incomplete line.
    pool = buffer_pool(256, min_nr=1, max_nr=2, headroom=0)
    log: list[tuple[str, bytes]] = []
    async with serve(lambda: Lines(pool, log)) as (port, _):
        clients = {}
        for name in "ABCD":
            clients[name] = await asyncio.open_connection("127.0.0.1", port)
        clients["A"][1].write(b"A-start")
        await until(lambda: pool.stats().outstanding == 1)
        clients["B"][1].write(b"B-start")
        await until(lambda: pool.stats().outstanding == 2)
        # The pool is dry: C, then D, pause and queue, with more than a
        # fallback buffer's worth of lines sent each.
        payload = {
            name: b"".join(f"{name}{i:04}\n".encode() for i in range(300))
            for name in "CD"
        }
        clients["C"][1].write(payload["C"])
        await until(lambda: pool.waiters == 1)
        clients["D"][1].write(payload["D"])
        await until(lambda: pool.waiters == 2)
        await asyncio.sleep(0.02)
        assert [who for who, _ in log] == []  # nothing delivered meanwhile
        # A's line ends: its buffer goes to C, the first in line.
        clients["A"][1].write(b"-end\n")
        for name in "CD":
            got = await asyncio.wait_for(
                clients[name][0].readexactly(len(payload[name])), TIMEOUT
            )
            assert got == payload[name]
        clients["B"][1].write(b"-end\n")
        for name, line in (("A", b"A-start-end\n"), ("B", b"B-start-end\n")):
            assert await asyncio.wait_for(clients[name][0].readline(), TIMEOUT) == line
        order = [who for who, _ in log]
        assert order[0] == "A"
        assert order.index("C") < order.index("D")
        # Each connection's lines came in order, none dropped.
        for name in "CD":
            assert b"".join(line for who, line in log if who == name) == payload[name]
        for _, writer in clients.values():
            await close(writer)
    all_back(pool, 2)


@pytest.mark.asyncio
async def test_abrupt_disconnects_mid_stream_leave_no_buffer_out() -> None:
    pool = buffer_pool(256, min_nr=1, max_nr=2, headroom=0)
    async with serve(lambda: Frames(pool)) as (port, made):
        writers = []
        for n in range(4):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writers.append(writer)
            # An incomplete frame: the first two keep a buffer, the others
            # find the pool dry and wait for one.
            writer.write(struct.pack(">I", 200) + b"x" * 100)
            await writer.drain()
            await until(outstanding_is(pool, min(n + 1, 2)))
        await until(lambda: pool.waiters == 2)
        for writer in writers:
            writer.transport.abort()
        await asyncio.wait_for(asyncio.gather(*(p.lost for p in made)), TIMEOUT)
        await settle()
        all_back(pool, 2)
        for writer in writers:
            await close(writer)
    all_back(pool, 2)


@pytest.mark.asyncio
async def test_debug_mode_gets_every_buffer_back_after_uvloop_exports(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # On uvloop the buffer is exported while buffer_updated() frees it:
    # debug mode quarantines it, then takes it back.
    pool = buffer_pool(1024, min_nr=2, max_nr=16, debug=True)
    with caplog.at_level(logging.WARNING, logger="aiomempool"):
        async with serve(lambda: Echo(pool)) as (port, made):
            await asyncio.gather(*(echo_many(port, s, SIZES) for s in range(3)))
            await asyncio.wait_for(asyncio.gather(*(p.lost for p in made)), TIMEOUT)
        async with serve(lambda: Frames(pool)) as (port, made):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            frames = [bytes([n]) * (n * 37 % 1000) for n in range(40)]
            for frame in frames:
                writer.write(struct.pack(">I", len(frame)) + frame)
                await writer.drain()
            (protocol,) = made
            assert isinstance(protocol, Frames)
            await until(lambda: len(protocol.frames) == len(frames))
            assert protocol.frames == frames
            await close(writer)
        assert pool.stats().outstanding == 0
        await asyncio.sleep(0.25)  # a few turns and the debug recheck
        all_back(pool, 16)
        assert pool.outstanding() == []
    assert not [r for r in caplog.records if r.name.startswith("aiomempool")]
    pool.close()


# -- the callbacks, driven by hand -----------------------------------------


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.reading = True
        self.closing = False

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closing

    def abort(self) -> None:
        self.closing = True


def feed(protocol: PooledBufferedProtocol, data: bytes, sizehint: int = -1) -> None:
    buf = protocol.get_buffer(sizehint)
    assert type(buf) is memoryview
    buf[: len(data)] = data
    protocol.buffer_updated(len(data))


class Keeper(PooledBufferedProtocol):
    def __init__(self, pool: Mempool[memoryview], keep: bool = True) -> None:
        super().__init__(pool)
        self.got: list[bytes] = []
        self.keep = keep

    def view_received(self, view: memoryview) -> None:
        self.got.append(bytes(view))
        if self.keep:
            self.keep_buffer()


P = TypeVar("P", bound=PooledBufferedProtocol)


def dry(
    size: int, make: Callable[[Mempool[memoryview]], P]
) -> tuple[Mempool[memoryview], memoryview, FakeTransport, P]:
    """A pool of one buffer of ``size`` bytes, that buffer taken (``held``):
    the pool is dry. The protocol ``make(pool)``, on a fake transport."""
    pool = buffer_pool(size, min_nr=1, max_nr=1, headroom=0)
    held = pool.alloc_nowait(GFP_ATOMIC)
    assert held is not None
    transport = FakeTransport()
    protocol = make(pool)
    protocol.connection_made(transport)
    return pool, held, transport, protocol


@pytest.mark.asyncio
async def test_the_protocol_is_a_buffered_protocol_its_subclasses_extend() -> None:
    # Its state and logic are a base of its own (an extension type in the
    # compiled build), beside asyncio.BufferedProtocol, which the loops
    # test for: a subclass still adds attributes, is weakly referenced,
    # and overrides the transports' callbacks through super().
    class Counting(Keeper):
        reads: int

        def buffer_updated(self, nbytes: int) -> None:
            self.reads += 1
            super().buffer_updated(nbytes)

    pool = buffer_pool(64, min_nr=1, max_nr=4)
    protocol = Counting(pool, keep=False)
    protocol.reads = 0
    assert isinstance(protocol, asyncio.BufferedProtocol)
    assert weakref.ref(protocol)() is protocol
    protocol.connection_made(FakeTransport())
    feed(protocol, b"one")
    feed(protocol, b"two")
    assert protocol.got == [b"one", b"two"] and protocol.reads == 2
    await asyncio.sleep(0)
    assert pool.stats().outstanding == 0
    protocol.connection_lost(None)


@pytest.mark.asyncio
async def test_get_buffer_ignores_sizehint_and_reuses_space_not_read_into() -> None:
    pool = buffer_pool(64, min_nr=1, max_nr=4)
    protocol = Keeper(pool, keep=False)
    protocol.connection_made(FakeTransport())
    first = protocol.get_buffer(0)
    assert len(first) == 64 and len(protocol.get_buffer(65536)) == 64
    assert pool.stats().outstanding == 1  # no read: the same buffer again
    feed(protocol, b"hi")
    assert protocol.got == [b"hi"] and pool.stats().outstanding == 1
    await asyncio.sleep(0)
    assert pool.stats().outstanding == 0
    protocol.connection_lost(None)


@pytest.mark.asyncio
async def test_a_buffer_no_read_filled_goes_back_once_the_callback_is_over() -> None:
    # uvloop asks for a buffer before every read try, the last one finding
    # nothing (EAGAIN): idle connections must not keep buffers of the pool.
    pool = buffer_pool(64, min_nr=1, max_nr=4)
    protocol = Keeper(pool, keep=False)
    protocol.connection_made(FakeTransport())
    protocol.get_buffer(-1)
    assert pool.stats().outstanding == 1
    await asyncio.sleep(0)
    assert pool.stats().outstanding == 0
    feed(protocol, b"hi")  # a read in one go: delivered, then kept fresh
    assert protocol.got == [b"hi"] and pool.stats().outstanding == 1
    await asyncio.sleep(0)  # for a next read that did not come: back
    assert pool.stats().outstanding == 0
    protocol.connection_lost(None)


@pytest.mark.asyncio
async def test_idle_connections_hold_no_buffer_so_others_are_served() -> None:
    pool = buffer_pool(256, min_nr=1, max_nr=4, headroom=1)
    async with serve(lambda: Echo(pool)) as (port, _):
        idle = []
        for i in range(10):  # more idle connections than buffers
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            # A read that fills a whole buffer makes libuv try once more.
            data = bytes([i]) * 256
            writer.write(data)
            assert await asyncio.wait_for(reader.readexactly(256), TIMEOUT) == data
            idle.append(writer)
        await until(outstanding_is(pool, 0))
        await echo_many(port, 7, [10, 300, 1000])
        for writer in idle:
            await close(writer)
    all_back(pool, 5)


@pytest.mark.asyncio
async def test_a_buffer_kept_full_stays_until_release_kept() -> None:
    pool = buffer_pool(8, min_nr=1, max_nr=4)
    protocol = Keeper(pool)
    protocol.connection_made(FakeTransport())
    feed(protocol, b"abcde")
    feed(protocol, b"fgh")  # the kept bytes come first; the buffer is full
    assert protocol.got == [b"abcde", b"abcdefgh"]
    assert pool.stats().outstanding == 1
    feed(protocol, b"ij")  # a new buffer, a fresh view
    assert protocol.got[-1] == b"ij" and pool.stats().outstanding == 2
    assert "full=1" in repr(protocol)
    protocol.release_kept()
    assert pool.stats().outstanding == 0
    with pytest.raises(RuntimeError, match="view_received"):
        protocol.keep_buffer()
    protocol.connection_lost(None)


@pytest.mark.asyncio
async def test_keep_buffer_refuses_a_start_outside_the_view() -> None:
    pool = buffer_pool(8, min_nr=1, max_nr=4)
    errors: list[Exception] = []

    class Bad(PooledBufferedProtocol):
        def view_received(self, view: memoryview) -> None:
            for start in (-1, len(view) + 1, 1.5):
                try:
                    self.keep_buffer(start)  # type: ignore[arg-type]
                except ValueError as exc:
                    errors.append(exc)

    protocol = Bad(pool)
    protocol.connection_made(FakeTransport())
    feed(protocol, b"abc")
    await asyncio.sleep(0)
    assert len(errors) == 3 and pool.stats().outstanding == 0
    with pytest.raises(TypeError, match="pool must be a Mempool"):
        Bad(bytearray(8))  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_connection_lost_returns_a_buffer_handed_to_the_waiter() -> None:
    pool, held, transport, protocol = dry(16, lambda pool: Keeper(pool, keep=False))
    feed(protocol, b"x" * 10)  # dry: into the fallback, then queued
    await settle()
    assert not transport.reading and pool.waiters == 1 and protocol.got == []
    pool.free(held)  # handed to the waiting task, which has not run yet
    protocol.connection_lost(None)  # cancels it: the pool takes it back
    await settle()
    all_back(pool, 1)
    assert protocol.got == []


@pytest.mark.asyncio
async def test_waiter_delivers_the_fallback_bytes_then_resumes_reading() -> None:
    pool, held, transport, protocol = dry(16, lambda pool: Keeper(pool, keep=False))
    feed(protocol, b"hello")
    assert "waiting pending=5" in repr(protocol)
    pool.free(held)
    await settle()
    assert protocol.got == [b"hello"] and transport.reading
    assert pool.stats().outstanding == 0
    protocol.connection_lost(None)


@pytest.mark.asyncio
async def test_a_failing_view_received_in_the_waiter_aborts_the_connection() -> None:
    pool = buffer_pool(16, min_nr=1, max_nr=1, headroom=0)
    held = pool.alloc_nowait(GFP_ATOMIC)
    transport = FakeTransport()
    seen: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: seen.append(context))

    class Broken(PooledBufferedProtocol):
        def view_received(self, view: memoryview) -> None:
            raise ValueError("bad frame")

    protocol = Broken(pool)
    protocol.connection_made(transport)
    feed(protocol, b"boom")
    pool.free(held)
    await settle()
    loop.set_exception_handler(None)
    assert transport.closing and isinstance(seen[0]["exception"], ValueError)
    protocol.connection_lost(None)
    all_back(pool, 1)


# -- take_buffer() ---------------------------------------------------------------


class Taker(PooledBufferedProtocol):
    """Takes every buffer, with the length of its view."""

    def __init__(self, pool: Mempool[memoryview], keep_first: bool = False) -> None:
        super().__init__(pool)
        self.taken: list[tuple[memoryview, int]] = []
        self.keep_first = keep_first

    def view_received(self, view: memoryview) -> None:
        if self.keep_first:
            self.keep_first = False
            self.keep_buffer()
            return
        self.taken.append((self.take_buffer(), len(view)))


@pytest.mark.asyncio
async def test_take_buffer_hands_the_buffer_over_and_reads_go_on_elsewhere() -> None:
    pool = buffer_pool(16, min_nr=1, max_nr=4)
    protocol = Taker(pool, keep_first=True)
    protocol.connection_made(FakeTransport())
    feed(protocol, b"abc")  # kept
    feed(protocol, b"de")  # taken: the kept bytes first
    feed(protocol, b"fgh")  # a new buffer
    (first, n1), (second, n2) = protocol.taken
    assert bytes(first[:n1]) == b"abcde" and bytes(second[:n2]) == b"fgh"
    assert first is not second and len(first) == 16
    assert pool.stats().outstanding == 2
    protocol.connection_lost(None)  # taken buffers are not the protocol's
    assert pool.stats().outstanding == 2
    pool.free(first)
    pool.free(second)
    all_back(pool, 1)


@pytest.mark.asyncio
async def test_take_buffer_refuses_outside_view_received_and_beside_keep() -> None:
    class Both(PooledBufferedProtocol):
        def __init__(self, pool: Mempool[memoryview], first: str) -> None:
            super().__init__(pool)
            self.first = first
            self.errors: list[str] = []

        def view_received(self, view: memoryview) -> None:
            if self.first == "keep":
                self.keep_buffer()
                with pytest.raises(RuntimeError, match="after keep_buffer"):
                    self.take_buffer()
            else:
                self.take_buffer()
                with pytest.raises(RuntimeError, match="after take_buffer"):
                    self.keep_buffer()
                self.pool.free(self.take_buffer())  # taking twice: the same

    pool = buffer_pool(16, min_nr=1, max_nr=4)
    for first in ("keep", "take"):
        protocol = Both(pool, first)
        protocol.connection_made(FakeTransport())
        with pytest.raises(RuntimeError, match="view_received"):
            protocol.take_buffer()
        feed(protocol, b"xy")
        protocol.connection_lost(None)
        all_back(pool, 1)


@pytest.mark.asyncio
async def test_take_buffer_works_for_bytes_delivered_by_the_waiter() -> None:
    pool, held, transport, protocol = dry(16, Taker)
    feed(protocol, b"late")  # the pool is dry: the fallback, and a waiter
    assert not transport.reading
    pool.free(held)
    await settle()
    ((buf, n),) = protocol.taken
    assert bytes(buf[:n]) == b"late" and buf is held and transport.reading
    protocol.connection_lost(None)
    pool.free(buf)
    all_back(pool, 1)


@pytest.mark.asyncio
@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
async def test_taken_buffers_written_through_pooled_writers_echo_byte_exact(
    debug: bool,
) -> None:
    # The zero-copy echo: each buffer read goes out as it is, and back to the
    # pool once sent (freeing at write() would corrupt the stream on 3.12+
    # and uvloop when the client reads slowly). In debug mode, a buffer sent
    # at once is freed while uvloop still exports it: quarantined, then back.
    pool = buffer_pool(1024, min_nr=2, max_nr=8, headroom=2, debug=debug)

    class ZeroCopyEcho(Recorder):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            self.writer = PooledWriter(self.transport, pool)

        def view_received(self, view: memoryview) -> None:
            self.writer.write(self.take_buffer(), len(view))

    async with serve(lambda: ZeroCopyEcho(pool)) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        data = random.Random(11).randbytes(300_000)
        writer.write(data)
        await asyncio.sleep(0.05)  # a slow reader: the server's writes queue
        got = await asyncio.wait_for(reader.readexactly(len(data)), TIMEOUT)
        assert got == data
        await close(writer)
    await until(outstanding_is(pool, 0))


# -- pause_reading() / resume_reading() ------------------------------------------


@pytest.mark.asyncio
async def test_a_buffer_arriving_keeps_reading_paused_while_the_user_pauses() -> None:
    # The user pauses for backpressure while the protocol waits for a buffer:
    # the buffer arriving must not resume reading behind the user's back.
    pool, held, transport, protocol = dry(16, lambda pool: Keeper(pool, keep=False))
    feed(protocol, b"one")  # dry: waits for a buffer, reading paused
    protocol.pause_reading()  # and the peer reads too slowly
    pool.free(held)
    await settle()
    # Held in the buffer, unseen while paused.
    assert protocol.got == [] and not transport.reading
    protocol.resume_reading()
    await settle()
    assert protocol.got == [b"one"] and transport.reading
    protocol.connection_lost(None)
    all_back(pool, 1)


@pytest.mark.asyncio
async def test_resume_reading_waits_for_the_buffer_the_protocol_waits_for() -> None:
    pool, held, transport, protocol = dry(16, lambda pool: Keeper(pool, keep=False))
    feed(protocol, b"two")
    protocol.pause_reading()
    protocol.resume_reading()  # the user's reason is gone, the pool's is not
    assert not transport.reading
    pool.free(held)
    await settle()
    assert protocol.got == [b"two"] and transport.reading
    protocol.connection_lost(None)
    all_back(pool, 1)


@pytest.mark.asyncio
async def test_an_unfilled_buffer_goes_back_at_the_next_get_buffer_of_anyone() -> None:
    pool = buffer_pool(64, min_nr=1, max_nr=32)
    protocols = [Keeper(pool, keep=False) for _ in range(20)]
    for protocol in protocols:
        protocol.connection_made(FakeTransport())
        protocol.get_buffer(-1)  # no read follows
        # The read of the one before is over: its buffer is handed on.
        assert pool.stats().outstanding == 1
    feed(protocols[0], b"x")  # one that is read into: delivered, kept fresh
    assert pool.stats().outstanding == 1
    protocols[1].get_buffer(-1)
    assert pool.stats().outstanding == 1
    # One buffer went from each to the next, never back and out again.
    assert pool.stats().allocs == 1 and pool.stats().frees == 0
    await asyncio.sleep(0)  # and the last one once the callbacks are over
    assert pool.stats().outstanding == 0
    for protocol in protocols:
        protocol.connection_lost(None)


@pytest.mark.asyncio
async def test_a_read_buffer_stays_for_the_next_read_while_nobody_waits() -> None:
    # uvloop asks for a buffer again right after each read (libuv reads
    # until EAGAIN): the buffer of a read that kept nothing serves that
    # next try, not given back and taken again, and goes back once the
    # loop's callbacks are over if no read comes.
    pool = buffer_pool(64, min_nr=1, max_nr=4)
    protocol = Keeper(pool, keep=False)
    protocol.connection_made(FakeTransport())
    first = protocol.get_buffer(-1)
    for data in (b"one", b"two", b"three"):
        feed(protocol, data)
        assert protocol.get_buffer(-1) is first  # the try after the read
    assert protocol.got == [b"one", b"two", b"three"]
    stats = pool.stats()
    assert (stats.allocs, stats.frees, stats.outstanding) == (1, 0, 1)
    await asyncio.sleep(0)
    stats = pool.stats()
    assert (stats.allocs, stats.frees, stats.outstanding) == (1, 1, 0)
    protocol.connection_lost(None)


@pytest.mark.asyncio
async def test_a_read_buffer_goes_back_at_once_while_a_task_waits() -> None:
    # Kept for the next read, it would pass the waiter by: it goes to the
    # waiter as the read ends, first come first served.
    pool = buffer_pool(64, min_nr=1, max_nr=1, headroom=0)
    protocol = Keeper(pool)
    protocol.connection_made(FakeTransport())
    feed(protocol, b"h")  # kept: the pool's only buffer
    waiter = asyncio.ensure_future(pool.alloc())
    await settle()
    assert not waiter.done() and pool.waiters == 1
    protocol.keep = False
    feed(protocol, b"i")
    assert pool.waiters == 0  # served by the read's end, not by a sweep
    got = await asyncio.wait_for(waiter, TIMEOUT)
    assert protocol.got == [b"h", b"hi"] and pool.stats().outstanding == 1
    pool.free(got)
    protocol.connection_lost(None)
    all_back(pool, 1)


@pytest.mark.asyncio
@pytest.mark.parametrize("why", ["debug", "paused"])
async def test_a_read_buffer_goes_back_at_once_in_debug_mode_or_paused(
    why: str,
) -> None:
    # Debug mode checks at once that nobody kept a view of it (and
    # quarantines it if so); a paused connection reads no more.
    pool = buffer_pool(64, min_nr=1, max_nr=4, debug=why == "debug")

    class Pausing(Keeper):
        def view_received(self, view: memoryview) -> None:
            super().view_received(view)
            if why == "paused":
                self.pause_reading()

    protocol = Pausing(pool, keep=False)
    protocol.connection_made(FakeTransport())
    feed(protocol, b"hi")
    assert protocol.got == [b"hi"] and pool.stats().outstanding == 0
    protocol.connection_lost(None)


@pytest.mark.asyncio
async def test_a_fresh_buffer_is_handed_on_only_within_its_pool_and_size() -> None:
    # The next get_buffer() of another connection takes the buffer of the
    # last read straight, when it would have allocated the same one: a
    # receive buffer of the same pool and size.
    class Sink(PooledBufferedProtocol):
        def view_received(self, view: memoryview) -> None:
            pass

    arena = buffer_arena(16 << 20, trim_after=None)
    other = buffer_pool(4096, min_nr=1, max_nr=4)
    a, b = Sink(arena, buffer_size=4096), Sink(arena, buffer_size=4096)
    big, elsewhere = Sink(arena, buffer_size=8192), Sink(other)
    for protocol in (a, b, big, elsewhere):
        protocol.connection_made(FakeTransport())
    feed(a, b"x")
    lent = a.get_buffer(-1)
    assert b.get_buffer(-1) is lent  # handed on
    assert arena.stats().total.allocs == 1
    feed(b, b"y")
    assert len(big.get_buffer(-1)) == 8192  # b's went back: not its size
    assert arena.stats().total.allocs == 2 and arena.stats().total.frees == 1
    feed(big, b"z")
    assert len(elsewhere.get_buffer(-1)) == 4096  # big's went back too
    assert arena.stats().total.outstanding == 0
    assert other.stats().outstanding == 1
    await asyncio.sleep(0)
    assert other.stats().outstanding == 0
    for protocol in (a, b, big, elsewhere):
        protocol.connection_lost(None)
    arena.close()


@pytest.mark.asyncio
async def test_eof_gives_back_the_buffer_asked_for_its_read_at_once() -> None:
    pool = buffer_pool(64, min_nr=1, max_nr=4)
    protocol = Keeper(pool, keep=False)
    protocol.connection_made(FakeTransport())
    protocol.get_buffer(-1)
    assert pool.stats().outstanding == 1
    protocol.eof_received()  # the read found the end of the stream
    assert pool.stats().outstanding == 0
    protocol.connection_lost(None)


@pytest.mark.parametrize("how", ["close", "reset"])
@pytest.mark.asyncio
async def test_a_storm_of_idle_connections_ending_at_once_does_not_grow_the_pool(
    how: str,
) -> None:
    """Every connection's last read asks get_buffer() for a buffer before it
    finds the end of the stream (or a reset): hundreds of them in one loop
    iteration must not each take one, growing the cache for good."""
    loop = asyncio.get_running_loop()
    count = 300
    cache = SlabCache(4096, objects_per_slab=8, max_objects=1024)
    pool = slab_pool(4, cache)
    before = cache.stats()
    clients: list[socket.socket] = []
    async with serve(lambda: Echo(pool)) as (port, made):
        try:
            for _ in range(count):
                client = socket.socket()
                clients.append(client)
                client.setblocking(False)
                await asyncio.wait_for(
                    loop.sock_connect(client, ("127.0.0.1", port)), TIMEOUT
                )
            await until(lambda: len(made) == count)
            await settle()
            assert pool.stats().outstanding == 0  # idle: they hold nothing
            for client in clients:  # all at once, no await in between
                if how == "reset":
                    client.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                client.close()
            await asyncio.wait_for(
                asyncio.gather(*(protocol.lost for protocol in made)), TIMEOUT
            )
        finally:
            for client in clients:
                client.close()
    after = cache.stats()
    assert after.slabs == before.slabs, (before, after)
    assert after.high_water <= before.high_water + 2, (before, after)
    assert pool.stats().outstanding == 0
    assert pool.curr_nr == 4
    pool.close()
    cache.close()


# -- after a dry pool's wait -------------------------------------------------------


@pytest.mark.asyncio
async def test_after_a_wait_the_next_read_fills_the_same_buffer_first() -> None:
    # Delivered at once, the fallback's few bytes would use up a buffer that
    # the user takes: one buffer per 256 bytes under overload.
    pool, held, transport, protocol = dry(64, Taker)
    feed(protocol, b"head-")  # dry: the fallback, a waiter
    pool.free(held)
    await asyncio.sleep(0)  # the waiter runs: the buffer, reading resumed
    assert transport.reading and protocol.taken == []
    feed(protocol, b"and-the-rest")
    ((buf, n),) = protocol.taken
    assert bytes(buf[:n]) == b"head-and-the-rest" and buf is held
    await settle()  # nothing unseen left for the flush
    assert len(protocol.taken) == 1
    protocol.connection_lost(None)
    pool.free(buf)
    all_back(pool, 1)


@pytest.mark.asyncio
async def test_bytes_read_while_dry_are_delivered_before_the_end_of_stream() -> None:
    pool, held, _, protocol = dry(64, lambda pool: Keeper(pool, keep=False))
    feed(protocol, b"last words")
    pool.free(held)
    await asyncio.sleep(0)
    assert protocol.got == []  # unseen, reading resumed
    assert protocol.eof_received() is None  # the client shut its side
    assert protocol.got == [b"last words"]
    protocol.connection_lost(None)
    all_back(pool, 1)


@pytest.mark.asyncio
async def test_an_overloaded_server_fills_every_buffer_a_slow_worker_frees() -> None:
    # Buffers taken by a slow worker: each freed one goes to a waiting
    # connection, which must fill it with a real read, not with the few
    # bytes of its fallback (that collapsed throughput 50-fold).
    pool = buffer_pool(16384, min_nr=2, max_nr=4, headroom=0)
    work: asyncio.Queue[tuple[memoryview, int]] = asyncio.Queue()
    clients, each = 4, 256 * 1024
    items = 0

    class ToWorker(Recorder):
        def view_received(self, view: memoryview) -> None:
            work.put_nowait((self.take_buffer(), len(view)))

    async def worker() -> None:
        nonlocal items
        received = 0
        while received < clients * each:
            buf, nbytes = await work.get()
            await asyncio.sleep(0.0002)
            items += 1
            received += nbytes
            pool.free(buf)

    async with serve(lambda: ToWorker(pool)) as (port, _):
        consumer = asyncio.ensure_future(worker())

        async def client() -> None:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(bytes(each))
            await writer.drain()
            await close(writer)

        await asyncio.wait_for(asyncio.gather(*(client() for _ in range(clients))), 30)
        await asyncio.wait_for(consumer, 30)
    assert pool.stats().waits > 0  # the pool did run dry
    # At 256 bytes a buffer this would be 4,096 items.
    assert items <= clients * each // 2048, items
    await until(outstanding_is(pool, 0))


# -- paused by the user: nothing delivered until resume_reading() ------------------


@pytest.mark.asyncio
async def test_pause_reading_in_connection_made_holds_what_uvloop_reads_anyway() -> (
    None
):
    # uvloop starts reading accepted connections after connection_made(),
    # paused or not: without the hold, view_received() ran while paused.
    pool = buffer_pool(1024, min_nr=1, max_nr=4)

    class Gated(Recorder):
        def __init__(self) -> None:
            super().__init__(pool)
            self.got: list[bytes] = []

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            self.pause_reading()

        def view_received(self, view: memoryview) -> None:
            self.got.append(bytes(view))

    async with serve(Gated) as (port, made):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"early bytes")
        await asyncio.sleep(0.05)
        (protocol,) = made
        assert isinstance(protocol, Gated)
        assert protocol.got == []
        protocol.resume_reading()
        await until(lambda: b"".join(protocol.got) == b"early bytes")
        writer.write(b", and more")
        await until(lambda: b"".join(protocol.got) == b"early bytes, and more")
        await close(writer)
    all_back(pool, 1)


@pytest.mark.asyncio
async def test_bytes_read_while_paused_wait_for_resume_reading() -> None:
    pool = buffer_pool(16, min_nr=1, max_nr=4)
    transport = FakeTransport()
    protocol = Keeper(pool, keep=False)
    protocol.connection_made(transport)
    protocol.pause_reading()
    transport.reading = True  # a transport that reads over the pause
    feed(protocol, b"abc")
    assert protocol.got == [] and not transport.reading  # held, paused again
    feed(protocol, b"de")
    assert protocol.got == [] and pool.stats().outstanding == 1
    protocol.resume_reading()
    assert protocol.got == [] and not transport.reading  # from a callback
    protocol.pause_reading()  # paused again before it ran: still held
    await settle()
    assert protocol.got == []
    protocol.resume_reading()
    await settle()
    assert protocol.got == [b"abcde"] and transport.reading
    assert pool.stats().outstanding == 0
    protocol.connection_lost(None)


@pytest.mark.asyncio
async def test_a_read_that_fills_the_buffer_or_the_end_is_delivered_paused() -> None:
    pool = buffer_pool(8, min_nr=1, max_nr=4)
    transport = FakeTransport()
    protocol = Keeper(pool, keep=False)
    protocol.connection_made(transport)
    protocol.pause_reading()
    feed(protocol, b"abc")
    feed(protocol, b"defgh")  # the buffer is full: no room left to hold in
    assert protocol.got == [b"abcdefgh"]
    feed(protocol, b"xy")
    assert protocol.eof_received() is None  # the end: delivered, paused or not
    assert protocol.got == [b"abcdefgh", b"xy"]
    protocol.connection_lost(None)
    all_back(pool, 1)


@pytest.mark.asyncio
async def test_a_pool_failing_to_take_a_buffer_back_spares_the_others() -> None:
    def refuse(buf: memoryview, _: object) -> None:
        raise RuntimeError("free_fn failed")

    # The reserve is full: a buffer freed goes to free_fn, which raises.
    failing = Mempool(1, lambda mask, size: memoryview(bytearray(size)), refuse, 64)
    pool = buffer_pool(64, min_nr=1, max_nr=4)
    seen: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: seen.append(context))
    try:
        first, second = Keeper(failing, keep=False), Keeper(pool, keep=False)
        for protocol in (first, second):
            protocol.connection_made(FakeTransport())
            protocol.get_buffer(-1)  # no read follows: both swept together
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert pool.stats().outstanding == 0  # swept despite the first failing
    assert [str(c["exception"]) for c in seen] == ["free_fn failed"]
    assert seen[0]["protocol"] is first
    second.connection_lost(None)


@pytest.mark.asyncio
async def test_release_kept_while_paused_drops_the_kept_bytes_not_the_held() -> None:
    pool = buffer_pool(16, min_nr=1, max_nr=4)
    transport = FakeTransport()
    protocol = Keeper(pool)  # keeps every view whole
    protocol.connection_made(transport)
    feed(protocol, b"ab")  # seen, kept
    protocol.pause_reading()
    feed(protocol, b"cd")  # read over the pause: held, unseen
    protocol.release_kept()  # drops "ab", not "cd"
    protocol.keep = False
    protocol.resume_reading()
    await settle()
    assert protocol.got == [b"ab", b"cd"]
    assert pool.stats().outstanding == 0
    protocol.connection_lost(None)


@pytest.mark.asyncio
async def test_a_pause_after_a_dry_wait_keeps_its_bytes_unseen_until_resume() -> None:
    pool, held, transport, protocol = dry(64, lambda pool: Keeper(pool, keep=False))
    feed(protocol, b"waited")
    pool.free(held)
    await asyncio.sleep(0)  # the waiter: buffer, reading resumed, flush due
    protocol.pause_reading()  # before the flush: it must not deliver now
    await settle()
    assert protocol.got == [] and not transport.reading
    protocol.resume_reading()
    await settle()
    assert protocol.got == [b"waited"] and transport.reading
    protocol.connection_lost(None)
    all_back(pool, 1)


@pytest.mark.asyncio
async def test_connection_lost_before_held_bytes_are_delivered_frees_them() -> None:
    pool = buffer_pool(16, min_nr=1, max_nr=4)
    protocol = Keeper(pool, keep=False)
    protocol.connection_made(FakeTransport())
    seen: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: seen.append(context))
    try:
        protocol.pause_reading()
        feed(protocol, b"held")
        protocol.resume_reading()  # delivery is due in a callback...
        protocol.connection_lost(None)  # ...that comes after the connection
        await settle()
    finally:
        loop.set_exception_handler(None)
    assert protocol.got == [] and seen == []
    all_back(pool, 1)
