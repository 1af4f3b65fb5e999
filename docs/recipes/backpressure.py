"""Backpressure: pause reading when the pool is dry, resume in line.

Each read goes, in its pooled buffer, to a queue of work: ``take_buffer()``
hands the buffer over without a copy, and a slower worker frees it once
done. Memory stays within the pool's budget: when no buffer is left,
``PooledBufferedProtocol`` reads the bytes on their way into a small spare,
pauses reading and waits in ``await pool.alloc()`` for a buffer. Every
paused connection waits in the same line, so they resume first come, first
served, and TCP flow control slows their clients meanwhile.
"""

from __future__ import annotations

import asyncio

from aiomempool import Mempool, PooledBufferedProtocol, buffer_pool

#: (a pooled buffer, the bytes received at its start)
Work = asyncio.Queue[tuple[memoryview, int]]


class Backpressured(PooledBufferedProtocol):
    def __init__(self, pool: Mempool[memoryview], work: Work) -> None:
        super().__init__(pool)
        self.work = work

    def view_received(self, view: memoryview) -> None:
        # The buffer is the worker's now; the next read goes into another.
        self.work.put_nowait((self.take_buffer(), len(view)))


class Tally:
    """What the worker has processed, and the most buffers out at once."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.bytes = 0
        self.peak = 0
        self.done = asyncio.Event()


async def worker(work: Work, pool: Mempool[memoryview], tally: Tally) -> None:
    while True:
        buf, nbytes = await work.get()
        await asyncio.sleep(0.0002)  # slow work: buffers pile up
        tally.bytes += nbytes
        tally.peak = max(tally.peak, pool.stats().outstanding)
        pool.free(buf)
        if tally.bytes >= tally.expected:
            tally.done.set()


async def main() -> None:
    clients, each = 8, 512 * 1024
    # At most 8 buffers, and a headroom of max(1, 8 // 16) = 1 for GFP_ATOMIC.
    pool = buffer_pool(16384, min_nr=2, max_nr=8, name="bp-rx")
    work: Work = asyncio.Queue()
    tally = Tally(clients * each)
    consumer = asyncio.ensure_future(worker(work, pool, tally))

    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Backpressured(pool, work), "127.0.0.1", 0)
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

    stats = pool.stats()
    # get_buffer() allocates with GFP_ATOMIC: it may take the headroom too.
    assert tally.peak <= 8 + 1 and stats.outstanding == 0
    print(
        f"processed {tally.bytes:,} bytes from {clients} clients with at most "
        f"{tally.peak} of 8 + 1 buffers out; connections paused and waited "
        f"in line {stats.waits} times"
    )
    pool.close()


if __name__ == "__main__":
    asyncio.run(main())
