"""Backpressure: pause reading when the pool is dry, resume in line.

Each read goes, with its pooled buffer, to a queue of work; a slower worker
frees the buffer once done. Memory stays within the pool's budget: when no
buffer is left, a connection reads once into a small spare of its own, then
pauses reading and waits in ``await pool.alloc()`` for a buffer. Every paused
connection waits in the same line, so they resume first come, first served,
and TCP flow control slows their clients meanwhile.
"""

from __future__ import annotations

import asyncio
from typing import cast

from aiomempool import GFP, GFP_ATOMIC, Mempool, buffer_pool

#: An urgent allocation that logs nothing when it fails: failing is expected.
ATOMIC_QUIET = GFP_ATOMIC | GFP.NOWARN
#: Bytes of the spare buffer each connection reads into once the pool is dry.
SPARE = 1024

#: (the received bytes, the pooled buffer they are in, or None for a copy)
Work = asyncio.Queue[tuple[bytes | memoryview, memoryview | None]]


class Backpressured(asyncio.BufferedProtocol):
    def __init__(self, pool: Mempool[memoryview], work: Work) -> None:
        self.pool = pool
        self.work = work
        self.next: memoryview | None = None  # a pooled buffer for the next read
        self.reading_into_spare = False
        self.spare = memoryview(bytearray(SPARE))
        self.waiting: asyncio.Future[None] | None = None
        self.pauses = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.next is None:
            self.next = self.pool.alloc_nowait(ATOMIC_QUIET)
        self.reading_into_spare = self.next is None
        return self.spare if self.next is None else self.next

    def buffer_updated(self, nbytes: int) -> None:
        if self.reading_into_spare:
            # The spare is read into again later: hand on a copy.
            self.work.put_nowait((bytes(self.spare[:nbytes]), None))
            self.pause()
        else:
            buf, self.next = self.next, None
            assert buf is not None
            self.work.put_nowait((buf[:nbytes], buf))  # the worker frees it

    def pause(self) -> None:
        if self.waiting is None:
            self.transport.pause_reading()
            self.pauses += 1
            self.waiting = asyncio.ensure_future(self.wait_for_buffer())

    async def wait_for_buffer(self) -> None:
        self.next = await self.pool.alloc()
        self.waiting = None
        self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiting is not None:
            self.waiting.cancel()  # cancelling alloc() never loses a buffer
        self.pool.free(self.next)  # None is ignored
        self.next = None


class Tally:
    """What the worker has processed, and the most buffers out at once."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.bytes = 0
        self.peak = 0
        self.done = asyncio.Event()


async def worker(work: Work, pool: Mempool[memoryview], tally: Tally) -> None:
    while True:
        data, buf = await work.get()
        await asyncio.sleep(0.0002)  # slow work: buffers pile up
        tally.bytes += len(data)
        tally.peak = max(tally.peak, pool.stats().outstanding)
        pool.free(buf)  # None is ignored
        if tally.bytes >= tally.expected:
            tally.done.set()


async def main() -> None:
    clients, each = 8, 512 * 1024
    # At most 8 buffers, and a headroom of max(1, 8 // 16) = 1 for GFP_ATOMIC.
    pool = buffer_pool(16384, min_nr=2, max_nr=8, name="bp-rx")
    work: Work = asyncio.Queue()
    tally = Tally(clients * each)
    consumer = asyncio.ensure_future(worker(work, pool, tally))
    protocols: list[Backpressured] = []

    def connection() -> Backpressured:
        protocols.append(Backpressured(pool, work))
        return protocols[-1]

    loop = asyncio.get_running_loop()
    server = await loop.create_server(connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    async def client() -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(bytes(each))
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    await asyncio.gather(*(client() for _ in range(clients)))
    await tally.done.wait()
    server.close()
    await server.wait_closed()
    consumer.cancel()

    pauses = sum(p.pauses for p in protocols)
    # get_buffer() allocates with GFP_ATOMIC: it may take the headroom too.
    assert tally.peak <= 8 + 1 and pool.stats().outstanding == 0
    print(
        f"processed {tally.bytes:,} bytes from {clients} clients with at most "
        f"{tally.peak} of 8 + 1 buffers out; connections paused {pauses} times"
    )
    pool.close()


if __name__ == "__main__":
    asyncio.run(main())
