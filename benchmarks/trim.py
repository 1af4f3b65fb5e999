"""What idle trimming gives back: ``python -m benchmarks.trim``.

A PooledBufferedProtocol server on 127.0.0.1 with ``buffer_pool(65536,
min_nr=16, max_nr=2048, trim_after=T)``; a burst of clients each send 64 KiB
that the server holds (``take_buffer()``) until every client has sent, then
gives back. The process's RSS is printed before the burst, at its peak, and
``T`` seconds after it (plus one tick).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import socket

from aiomempool import PooledBufferedProtocol, buffer_pool


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Holder(PooledBufferedProtocol):
    def __init__(self, pool: object, held: list[memoryview]) -> None:
        super().__init__(pool)  # type: ignore[arg-type]
        self.held = held

    def view_received(self, view: memoryview) -> None:
        self.held.append(self.take_buffer())


async def main(clients: int, trim_after: float) -> None:
    loop = asyncio.get_running_loop()
    pool = buffer_pool(65536, min_nr=16, max_nr=2048, trim_after=trim_after)
    held: list[memoryview] = []
    server = await loop.create_server(
        lambda: Holder(pool, held), "127.0.0.1", 0, backlog=4096
    )
    port = server.sockets[0].getsockname()[1]
    before = rss_mib()
    socks = []
    for _ in range(clients):
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        socks.append(sock)
    payload = b"x" * 65536
    for sock in socks:
        await loop.sock_sendall(sock, payload)
    for _ in range(500):  # bounded: 10 s
        if sum(len(b) for b in held) >= clients * 65536 * 0.99:
            break
        await asyncio.sleep(0.02)
    peak = rss_mib()
    cache = pool._allocator  # type: ignore[attr-defined]
    slabs_peak = cache.stats().slabs
    pool.free_bulk(held)
    held.clear()
    for sock in socks:
        sock.close()
    await asyncio.sleep(trim_after * 1.6)
    after = rss_mib()
    print(
        f"{clients} clients x 64 KiB, trim_after={trim_after} s: RSS before "
        f"{before:.1f} MiB, peak {peak:.1f} MiB ({slabs_peak} slabs), "
        f"{trim_after * 1.6:.1f} s after {after:.1f} MiB "
        f"({cache.stats().slabs} slabs)"
    )
    server.close()
    await server.wait_closed()
    pool.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--trim-after", type=float, default=2.0)
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(
        resource.RLIMIT_NOFILE, (min(hard, 2 * args.clients + 256), hard)
    )
    if args.uvloop:
        import uvloop

        uvloop.install()
    asyncio.run(main(args.clients, args.trim_after))
