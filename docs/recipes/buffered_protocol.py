"""An asyncio.BufferedProtocol that reads into pooled buffers: an echo server.

get_buffer() is a callback, so it takes a buffer of a buffer_pool with
alloc_nowait(GFP_ATOMIC); buffer_updated() hands the received bytes on, then
frees the buffer. A connection holds a buffer only while a read is in
progress.
"""

from __future__ import annotations

import asyncio
import os
from typing import cast

from aiomempool import GFP_ATOMIC, Mempool, PoolExhaustedError, buffer_pool


class PooledProtocol(asyncio.BufferedProtocol):
    """Reads into buffers borrowed from ``pool``; subclasses override consume()."""

    def __init__(self, pool: Mempool[memoryview]) -> None:
        self.pool = pool
        self.buf: memoryview | None = None

    def get_buffer(self, sizehint: int) -> memoryview:
        # sizehint is no minimum (-1 on selector loops, 65536 on uvloop, even
        # 0 under TLS): any non-empty buffer will do. GFP_ATOMIC: a read in
        # progress is urgent, it may use the pool's headroom beyond max_nr.
        buf = self.pool.alloc_nowait(GFP_ATOMIC)
        if buf is None:
            # asyncio closes the connection; see the Backpressure recipe for
            # pausing it instead.
            raise PoolExhaustedError("no receive buffer left")
        self.buf = buf
        return buf

    def buffer_updated(self, nbytes: int) -> None:
        buf, self.buf = self.buf, None
        assert buf is not None
        try:
            self.consume(buf[:nbytes])
        finally:
            self.pool.free(buf)  # the view given to consume() is stale now

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.free(self.buf)  # None is ignored
        self.buf = None

    def consume(self, data: memoryview) -> None:
        raise NotImplementedError


class Echo(PooledProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def consume(self, data: memoryview) -> None:
        # A copy: from Python 3.12 on, and on uvloop, write() may keep a view
        # of what it is given until the bytes are sent, and this buffer goes
        # back to the pool as soon as consume() returns.
        self.transport.write(bytes(data))


async def main() -> None:
    # zero_on_free: every buffer is wiped when freed, so the next borrower,
    # another connection maybe, never finds the bytes received into it before.
    pool = buffer_pool(16384, min_nr=4, max_nr=64, zero_on_free=True, name="echo-rx")
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Echo(pool), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    payload = os.urandom(1 << 20)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def send() -> None:
        writer.write(payload)
        await writer.drain()
        writer.write_eof()

    sender = asyncio.ensure_future(send())
    echoed = await reader.read()  # until the server closes
    await sender
    writer.close()
    server.close()
    await server.wait_closed()

    s = pool.stats()
    assert echoed == payload
    assert s.outstanding == 0
    reused = pool.alloc_nowait()  # a buffer the echo read into: wiped
    assert reused is not None and not any(reused)
    pool.free(reused)
    print(
        f"echoed {len(echoed):,} bytes in {s.allocs} reads into pooled buffers; "
        f"{s.outstanding} outstanding"
    )


if __name__ == "__main__":
    asyncio.run(main())
