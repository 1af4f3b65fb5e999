"""Receiving into a pooled buffer with loop.sock_recv_into().

``async with pool.element() as buf:`` borrows a buffer for one receive and
gives it back when the block ends, also when the task is cancelled while it
waits for data. The bytes are processed in place, before the block ends.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from collections.abc import Callable

from aiomempool import Mempool, buffer_pool


async def receive_all(
    sock: socket.socket,
    pool: Mempool[memoryview],
    consume: Callable[[memoryview], object],
) -> int:
    """Receive until the peer closes; ``consume`` each chunk in place."""
    loop = asyncio.get_running_loop()
    total = 0
    while True:
        async with pool.element() as buf:
            n = await loop.sock_recv_into(sock, buf)
            if n == 0:
                return total
            consume(buf[:n])  # no copy; the view must not outlive the block
            total += n


async def main() -> None:
    pool = buffer_pool(65536, min_nr=2, max_nr=8, name="recv")
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    payload = os.urandom(3 << 20)
    loop = asyncio.get_running_loop()

    async def send() -> None:
        theirs.setblocking(False)
        await loop.sock_sendall(theirs, payload)
        theirs.close()

    digest = hashlib.sha256()
    sender = asyncio.ensure_future(send())
    total = await receive_all(ours, pool, digest.update)
    await sender
    ours.close()

    assert digest.digest() == hashlib.sha256(payload).digest()
    assert pool.stats().outstanding == 0
    print(f"received {total:,} bytes in {pool.stats().allocs} pooled receives")


if __name__ == "__main__":
    asyncio.run(main())
