"""A read through a ``BufferedProtocol``, as a transport makes it, without a
socket: ``get_buffer()``, then ``buffer_updated()`` of ``READ`` bytes, whose
view the protocol hands to the user's code.

The hand-rolled baseline is a buffer per connection (a ``bytearray`` of
``SIZE`` bytes, handed out again at every read, its memory pinned for the
connection's life). ``PooledBufferedProtocol`` borrows a buffer of
``buffer_pool(SIZE)`` for each read and gives it back once the user's
``view_received()`` returns: the per-read path that the compiled build
compiles. Every 32 reads the loop runs an iteration (its callbacks: the
sweeper's, for the pooled protocol), as it would between reads.
"""

from __future__ import annotations

import asyncio
from time import perf_counter_ns

import aiomempool

#: Bytes per read: a small request.
READ = 100
#: Bytes of a connection's buffer, and of the pool's.
SIZE = 65536


class _Transport(asyncio.Transport):
    """What the protocols ask of a transport during a read: nothing."""

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class _PerConnection(asyncio.BufferedProtocol):
    """A buffer of its own, and the view of each read handed on."""

    def __init__(self) -> None:
        self.buf = memoryview(bytearray(SIZE))
        self.seen = 0

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buf

    def buffer_updated(self, nbytes: int) -> None:
        self.view_received(self.buf[:nbytes])

    def view_received(self, view: memoryview) -> None:
        self.seen += len(view)


class _Pooled(aiomempool.PooledBufferedProtocol):
    seen = 0

    def view_received(self, view: memoryview) -> None:
        self.seen += len(view)


async def _reads(protocol: asyncio.BufferedProtocol, n: int) -> float:
    protocol.connection_made(_Transport())
    start = perf_counter_ns()
    for i in range(n):
        protocol.get_buffer(-1)
        protocol.buffer_updated(READ)
        if not i & 31:
            await asyncio.sleep(0)
    elapsed = perf_counter_ns() - start
    protocol.connection_lost(None)
    return elapsed / n


async def per_connection_cycle(n: int) -> float:
    return await _reads(_PerConnection(), n)


async def pooled_cycle(n: int) -> float:
    pool = aiomempool.buffer_pool(SIZE, min_nr=16, max_nr=64)
    try:
        return await _reads(_Pooled(pool), n)
    finally:
        pool.close()
