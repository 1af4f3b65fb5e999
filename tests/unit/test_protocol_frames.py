"""PooledBufferedProtocol against hostile and large traffic: small
incomplete frames compacted on an arena, the per-connection quota, frames
larger than a buffer gathered as chains, and the overload policy."""

from __future__ import annotations

import asyncio
import logging
import random
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from helpers import TIMEOUT, close, shut_down

from aiomempool import (
    BufferArena,
    Mempool,
    PooledBufferedProtocol,
    PooledWriter,
    buffer_arena,
    buffer_pool,
)
from aiomempool.chain import BufferChain

KIB = 1024


class Base(PooledBufferedProtocol):
    def __init__(self, pool: Any, **options: Any) -> None:
        super().__init__(pool, **options)
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.too_large: list[int] = []

    def frame_too_large(self, nbytes: int) -> None:
        self.too_large.append(nbytes)
        super().frame_too_large(nbytes)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.lost.done():
            self.lost.set_result(None)


class Lines(Base):
    """Echoes complete lines; keeps an incomplete one."""

    def view_received(self, view: memoryview) -> None:
        end = bytes(view).rfind(b"\n") + 1
        if end:
            self.transport.write(bytes(view[:end]))
        if end < len(view):
            self.keep_buffer(end)


class Frames(Base):
    """4-byte big-endian length, then the payload; a frame that does not
    end in the view is gathered (or, header cut, kept). Each frame is
    echoed back whole, a chain through a PooledWriter."""

    def __init__(self, pool: Any, **options: Any) -> None:
        super().__init__(pool, **options)
        self.chains: list[int] = []  # buffers of each gathered frame

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.writer = PooledWriter(self.transport, self.pool)

    def view_received(self, view: memoryview) -> None:
        offset = 0
        end = len(view)
        while end - offset >= 4:
            (size,) = struct.unpack_from(">I", view, offset)
            if end - offset - 4 < size:
                self.gather(4 + size, offset)
                return
            self.transport.write(bytes(view[offset : offset + 4 + size]))
            offset += 4 + size
        if offset < end:
            self.keep_buffer(offset)

    def frame_received(self, chain: BufferChain) -> None:
        self.chains.append(chain.nbuffers)
        self.writer.write(chain)


@asynccontextmanager
async def serve(factory: Callable[[], Base]) -> AsyncIterator[tuple[int, list[Base]]]:
    made: list[Base] = []

    def make() -> Base:
        made.append(factory())
        return made[-1]

    server = await asyncio.get_running_loop().create_server(make, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], made
    finally:
        await shut_down(server, made)


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(int(TIMEOUT / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not met in time")


async def closed_by_peer(reader: asyncio.StreamReader) -> bool:
    """True once the peer closed: the end of the stream, or a reset (a
    close with bytes unread sends one)."""
    try:
        return await asyncio.wait_for(reader.read(), TIMEOUT) == b""
    except ConnectionResetError:
        return True


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def arena_out(arena: BufferArena) -> int:
    return arena.stats().total.outstanding


# -- compaction ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_idle_incomplete_frames_pin_small_buffers_not_receive_buffers() -> None:
    arena = buffer_arena(32 << 20, trim_after=None)
    async with serve(lambda: Lines(arena)) as (port, made):
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(200)]
        for _, writer in idle:
            writer.write(b"*")  # one byte of a line, then nothing
        await until(lambda: sum(p._small is not None for p in made) == 200)
        stats = arena.stats()
        receive = next(c for c in stats.classes if c.size == 65536)
        assert receive.pool.outstanding == 0  # nobody pins a 64 KiB buffer
        assert stats.bytes_in_use == 200 * arena.good_size(1)
        # A well-behaved client is served meanwhile.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"PING\n")
        assert await asyncio.wait_for(reader.readline(), TIMEOUT) == b"PING\n"
        await close(writer)
        # The idle ones finish their lines, their first byte kept intact.
        for i, (_, w) in enumerate(idle):
            w.write(b"%d\n" % i)
        for i, (r, _) in enumerate(idle):
            assert await asyncio.wait_for(r.readline(), TIMEOUT) == b"*%d\n" % i
        for _, w in idle:
            await close(w)
    await until(lambda: arena_out(arena) == 0)
    arena.close()


@pytest.mark.asyncio
async def test_a_line_trickled_a_byte_at_a_time_arrives_whole() -> None:
    arena = buffer_arena(16 << 20, trim_after=None)
    async with serve(lambda: Lines(arena)) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        line = bytes(random.Random(3).randrange(32, 127) for _ in range(300))
        for byte in line:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0)
        writer.write(b"\n")
        assert await asyncio.wait_for(reader.readline(), TIMEOUT) == line + b"\n"
        await close(writer)
    await until(lambda: arena_out(arena) == 0)
    arena.close()


# -- the quota ----------------------------------------------------------------


@pytest.mark.asyncio
async def test_kept_bytes_past_the_quota_are_refused_and_the_connection_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pool = buffer_pool(1024, min_nr=2, max_nr=64)
    async with serve(lambda: Lines(pool, max_held=4096)) as (port, made):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        with caplog.at_level(logging.WARNING, logger="aiomempool"):
            writer.write(b"x" * 6000)  # a line that never fits the quota
            assert await closed_by_peer(reader)
        assert made[0].too_large and made[0].too_large[0] > 4096
        assert "over the quota (max_held=4096)" in caplog.text
        await close(writer)
    await until(lambda: pool.stats().outstanding == 0)
    pool.close()


@pytest.mark.asyncio
async def test_a_declared_frame_above_the_quota_is_refused_at_once() -> None:
    arena = buffer_arena(16 << 20, trim_after=None)
    async with serve(lambda: Frames(arena, max_held=1 << 20)) as (port, made):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(struct.pack(">I", 200 << 20) + b"abc")  # declares 200 MB
        assert await closed_by_peer(reader)
        assert made[0].too_large == [4 + (200 << 20)]
        await close(writer)
    await until(lambda: arena_out(arena) == 0)
    arena.close()


def test_bad_options_are_refused() -> None:
    pool = buffer_pool(1024, min_nr=1)
    with pytest.raises(ValueError, match="max_held"):
        PooledBufferedProtocol(pool, max_held=0)
    with pytest.raises(ValueError, match="hold_timeout"):
        PooledBufferedProtocol(pool, hold_timeout=0)
    with pytest.raises(TypeError, match="buffer_size is for an arena"):
        PooledBufferedProtocol(pool, buffer_size=4096)
    with pytest.raises(TypeError, match="Mempool or a BufferArena"):
        PooledBufferedProtocol(object())  # type: ignore[arg-type]
    pool.close()


# -- frames larger than a buffer ----------------------------------------------


@pytest.mark.parametrize("kind", ["arena", "pool", "dry pool"])
@pytest.mark.asyncio
async def test_frames_larger_than_a_buffer_travel_as_chains_without_a_copy(
    kind: str,
) -> None:
    source: Mempool[memoryview] | BufferArena
    if kind == "arena":
        source = buffer_arena(16 << 20, trim_after=None)
        size = 65536
    elif kind == "pool":
        source = buffer_pool(16384, min_nr=4, max_nr=256)
        size = 16384
    else:  # a pool that runs dry while a frame is gathered
        source = buffer_pool(16384, min_nr=2, max_nr=8)
        size = 16384
    rng = random.Random(7)
    payloads = [rng.randbytes(n) for n in (300_000, 10, 70_000, 5, 100_000)]
    if kind == "dry pool":
        payloads = [rng.randbytes(n) for n in (60_000, 7, 50_000)]
    stream = b"".join(frame(p) for p in payloads)
    async with serve(lambda: Frames(source, max_held=1 << 20)) as (port, made):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for at in range(0, len(stream), 50_000):  # in pieces, as a network cuts
            writer.write(stream[at : at + 50_000])
            await writer.drain()
        echoed = await asyncio.wait_for(reader.readexactly(len(stream)), TIMEOUT)
        assert echoed == stream
        big = [n for n in made[0].chains]
        assert len(big) == sum(len(p) + 4 > size for p in payloads)
        assert all(n >= 2 for n in big)
        await close(writer)
    if isinstance(source, BufferArena):
        await until(lambda: arena_out(source) == 0)
    else:
        await until(lambda: source.stats().outstanding == 0)
    source.close()


@pytest.mark.asyncio
async def test_an_arena_sizes_a_frames_last_buffer_to_what_is_left() -> None:
    arena = buffer_arena(16 << 20, trim_after=None)
    got: list[list[int]] = []

    class Sizes(Frames):
        def frame_received(self, chain: BufferChain) -> None:
            got.append([len(v) for v in chain])
            chain.free()

    async with serve(lambda: Sizes(arena)) as (port, _):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(frame(b"z" * 70_000))
        await until(lambda: bool(got))
        await close(writer)
    assert sum(got[0]) == 70_004
    stats = arena.stats()
    assert stats.total.outstanding == 0
    # The last link came from the class of the bytes left, not 64 KiB.
    small = [c for c in stats.classes if c.pool.allocs and c.size < 65536]
    assert small and max(c.size for c in small) <= arena.good_size(70_004 - 65536)
    arena.close()


# -- the overload policy ------------------------------------------------------


@pytest.mark.asyncio
async def test_when_the_pool_is_dry_the_oldest_stale_holder_loses_its_buffers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pool = buffer_pool(4096, min_nr=2, max_nr=4, headroom=0)
    async with serve(lambda: Lines(pool, hold_timeout=0.2)) as (port, _):
        hoarders = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
        for _, writer in hoarders:
            writer.write(b"half a line")  # kept: a whole buffer each
        await until(lambda: pool.stats().outstanding == 4)
        await asyncio.sleep(0.3)  # older than hold_timeout now
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        with caplog.at_level(logging.WARNING, logger="aiomempool"):
            writer.write(b"hello\n")  # finds the pool dry
            assert await asyncio.wait_for(reader.readline(), TIMEOUT) == b"hello\n"
        assert "incomplete frame for more than 0.2 s" in caplog.text
        assert await closed_by_peer(hoarders[0][0])  # the oldest lost its buffer
        for i, (r, w) in enumerate(hoarders[1:]):  # the others were spared
            w.write(b" %d\n" % i)
            assert await asyncio.wait_for(r.readline(), TIMEOUT) == (
                b"half a line %d\n" % i
            )
        for _, w in [*hoarders, (reader, writer)]:
            await close(w)
    await until(lambda: pool.stats().outstanding == 0)
    pool.close()


@pytest.mark.asyncio
async def test_young_holders_are_not_evicted_and_the_newcomer_waits() -> None:
    pool = buffer_pool(4096, min_nr=2, max_nr=4, headroom=0)
    async with serve(lambda: Lines(pool, hold_timeout=30.0)) as (port, _):
        hoarders = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
        for _, writer in hoarders:
            writer.write(b"half")
        await until(lambda: pool.stats().outstanding == 4)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hello\n")
        await asyncio.sleep(0.2)
        assert pool.waiters == 1  # waits in line; nobody was closed
        hoarders[0][1].write(b" done\n")  # one finishes its line
        assert await asyncio.wait_for(hoarders[0][0].readline(), TIMEOUT) == (
            b"half done\n"
        )
        assert await asyncio.wait_for(reader.readline(), TIMEOUT) == b"hello\n"
        for _, w in [*hoarders, (reader, writer)]:
            await close(w)
    await until(lambda: pool.stats().outstanding == 0)
    pool.close()


@pytest.mark.asyncio
async def test_a_burst_of_frames_no_one_can_finish_loses_the_oldest_and_moves_on() -> (
    None
):
    # Eight 16 KiB buffers; six clients each declare a 60 KB frame and send
    # 20 KB of it: they fill the pool with frames none can finish. While they
    # wait, the oldest stale holder is closed every quarter of hold_timeout,
    # until the others can go on.
    pool = buffer_pool(16384, min_nr=2, max_nr=8, headroom=0)
    async with serve(lambda: Frames(pool, hold_timeout=0.2)) as (port, _):
        clients = [await asyncio.open_connection("127.0.0.1", port) for _ in range(6)]
        body = bytes(60_000)
        for _, writer in clients:
            writer.write(frame(body)[:20_004])
            await writer.drain()
        await asyncio.sleep(0.5)
        for _, writer in clients:
            if not writer.is_closing():
                writer.write(body[20_000:])
        served = closed = 0
        for reader, _ in clients:
            try:
                echoed = await asyncio.wait_for(reader.readexactly(60_004), TIMEOUT)
            except (asyncio.IncompleteReadError, ConnectionResetError):
                closed += 1
            else:
                assert echoed == frame(body)
                served += 1
        for _, writer in clients:
            await close(writer)
        assert served >= 1 and closed >= 1 and served + closed == 6
    await until(lambda: pool.stats().outstanding == 0)
    pool.close()


@pytest.mark.asyncio
async def test_frames_just_over_a_buffer_from_200_clients_all_finish() -> None:
    # The arena holds about 60 receive buffers: every client's first buffer
    # is full of its frame, and the last 100 bytes of each need one more.
    # Those are urgent (ahead of fresh reads), so frames finish and free
    # what they hold instead of waiting behind new reads for ever.
    arena = buffer_arena(4 << 20, classes=(256, 65536), trim_after=None)
    done: list[int] = []

    class Counted(Frames):
        def frame_received(self, chain: BufferChain) -> None:
            done.append(len(chain))
            chain.free()
            self.transport.write(b"ok")

    payload = frame(bytes(65536 + 96))

    async def one(port: int) -> bool:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(payload)
        try:
            return await asyncio.wait_for(reader.readexactly(2), TIMEOUT) == b"ok"
        finally:
            await close(writer)

    async with serve(lambda: Counted(arena)) as (port, _):
        answers = await asyncio.gather(*(one(port) for _ in range(200)))
    assert all(answers) and len(done) == 200
    await until(lambda: arena_out(arena) == 0)
    arena.close()
