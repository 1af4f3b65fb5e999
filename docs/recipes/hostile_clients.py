"""Serving slow, idle and greedy clients: an arena, the quota, chains.

A length-prefixed echo server (4-byte big-endian length, then the payload)
on a ``buffer_arena``: 100 clients send one byte of a header and stop, one
declares a frame far above the quota, and a well-behaved client sends a
frame larger than a receive buffer, echoed back as the chain it arrived in.
"""

from __future__ import annotations

import asyncio
import struct

from aiomempool import (
    BufferChain,
    PooledBufferedProtocol,
    PooledWriter,
    buffer_arena,
)


class FrameEcho(PooledBufferedProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.writer = PooledWriter(self.transport, self.pool)

    def view_received(self, view: memoryview) -> None:
        offset, end = 0, len(view)
        while end - offset >= 4:
            (size,) = struct.unpack_from(">I", view, offset)
            if end - offset - 4 < size:
                self.gather(4 + size, offset)  # the rest comes in pooled buffers
                return
            self.transport.write(bytes(view[offset : offset + 4 + size]))
            offset += 4 + size
        if offset < end:
            self.keep_buffer(offset)  # a cut header: compacted, a few bytes

    def frame_received(self, chain: BufferChain) -> None:
        self.writer.write(chain)  # writelines(), each buffer freed once sent

    def frame_too_large(self, nbytes: int) -> None:
        self.transport.write(b"\x00\x00\x00\x00")  # an empty frame: "refused"
        super().frame_too_large(nbytes)  # logs, and closes


async def main() -> None:
    arena = buffer_arena(32 << 20, name="frames")
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: FrameEcho(arena, max_held=4 << 20), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]

    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(100)]
    for _, writer in idle:
        writer.write(b"\x00")  # one byte of a header, then nothing
    await asyncio.sleep(0.2)
    receive = next(c for c in arena.stats().classes if c.size == 65536)
    assert receive.pool.outstanding == 0  # no idle client pins 64 KiB
    print(f"100 idle clients hold {arena.stats().bytes_in_use} bytes")

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(struct.pack(">I", 1 << 30))  # declares 1 GiB: over the quota
    assert await reader.read() == b"\x00\x00\x00\x00"  # refused, then closed
    writer.close()

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = bytes(range(256)) * 1000  # 256,000 bytes: four receive buffers
    writer.write(struct.pack(">I", len(payload)) + payload)
    echoed = await reader.readexactly(4 + len(payload))
    assert echoed[4:] == payload
    print(f"a frame of {len(payload)} bytes came back whole")
    writer.close()

    for _, w in idle:
        w.close()
    server.close()
    await server.wait_closed()
    await asyncio.sleep(0.1)
    assert arena.stats().total.outstanding == 0
    arena.close()


if __name__ == "__main__":
    asyncio.run(main())
