"""Seeded, bounded stress of PooledBufferedProtocol's framing: random frame
sizes (a few bytes to several buffers), random cuts by the network,
connections that vanish mid-frame, on an arena and on a small pool; every
byte echoed exactly, every buffer back."""

from __future__ import annotations

import asyncio
import random
import struct
from typing import Any

import pytest
from helpers import TIMEOUT, close, shut_down

from aiomempool import (
    BufferChain,
    PooledBufferedProtocol,
    PooledWriter,
    buffer_arena,
    buffer_pool,
)

pytestmark = pytest.mark.slow

CLIENTS = 24
FRAMES = 16


class Frames(PooledBufferedProtocol):
    """4-byte length and payload, echoed: copied when whole in the view,
    gathered and written as a chain otherwise; a cut header kept."""

    def __init__(self, pool: Any) -> None:
        super().__init__(pool)
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.writer = PooledWriter(self.transport, self.pool)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.lost.done():
            self.lost.set_result(None)

    def view_received(self, view: memoryview) -> None:
        offset, end = 0, len(view)
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
        self.writer.write(chain)


def stream_of(rng: random.Random, largest: int) -> bytes:
    sizes = [min(largest, int(2 ** rng.uniform(0, 18.5))) for _ in range(FRAMES)]
    return b"".join(struct.pack(">I", n) + rng.randbytes(n) for n in sizes)


async def client(port: int, seed: int, largest: int) -> None:
    rng = random.Random(seed)
    data = stream_of(rng, largest)
    vanish = rng.random() < 0.25  # leaves mid-stream
    cut = rng.randrange(len(data)) if vanish else len(data)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def send() -> None:
        at = 0
        while at < cut:
            n = min(cut - at, rng.choice((1, 3, 700, 1500, 9000, 65536, 200_000)))
            writer.write(data[at : at + n])
            at += n
            await writer.drain()
            if rng.random() < 0.3:
                await asyncio.sleep(rng.random() * 0.002)

    sender = asyncio.ensure_future(send())
    try:
        if vanish:
            await asyncio.wait_for(sender, TIMEOUT)
            writer.transport.abort()
            return
        echoed = await asyncio.wait_for(reader.readexactly(len(data)), TIMEOUT)
        assert echoed == data, f"client {seed}: echo differs"
        await sender
    finally:
        sender.cancel()
        await close(writer)


async def run(source: Any, largest: int, seed: int) -> None:
    made: list[Frames] = []

    def make() -> Frames:
        made.append(Frames(source))
        return made[-1]

    server = await asyncio.get_running_loop().create_server(make, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await asyncio.wait_for(
            asyncio.gather(
                *(client(port, seed * 100 + i, largest) for i in range(CLIENTS))
            ),
            3 * TIMEOUT,
        )
    finally:
        await shut_down(server, made)


async def all_back(stats: Any) -> None:
    for _ in range(int(TIMEOUT / 0.01)):
        if stats() == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{stats()} buffers still out")


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.asyncio
async def test_random_frames_over_an_arena_echo_exactly_and_give_every_buffer_back(
    seed: int,
) -> None:
    arena = buffer_arena(64 << 20, trim_after=None)
    await run(arena, 300_000, seed)
    await all_back(lambda: arena.stats().total.outstanding)
    arena.close()


@pytest.mark.parametrize("seed", [3, 4])
@pytest.mark.asyncio
async def test_random_frames_over_a_small_pool_lose_nothing(
    seed: int,
) -> None:
    # Room for what every client may hold at once (a frame of three buffers
    # gathering, the last one's three being written, a receive buffer):
    # tight, never short, so that nobody waits for another's frame to end.
    pool = buffer_pool(16384, min_nr=4, max_nr=CLIENTS * 7, headroom=0)
    await run(pool, 40_000, seed)
    await all_back(lambda: pool.stats().outstanding)
    pool.close()
