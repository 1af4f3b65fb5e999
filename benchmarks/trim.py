"""What idle trimming gives back: ``python -m benchmarks.trim``.

A PooledBufferedProtocol server on 127.0.0.1 with ``buffer_pool(65536,
min_nr=16, max_nr=2048, trim_after=T)``; a burst of clients each send 64 KiB
that the server holds (``take_buffer()``) until every client has sent, then
gives back. The process's RSS is printed before the burst, at its peak, and
``T`` seconds after it (plus one tick).

``--arena``: the same for a ``buffer_arena(trim_after=T)``, without the
sockets: a burst of ``--allocations`` buffers of the seeded spread of sizes
the benchmarks cycle over (64 B to 1 MiB, ``benchmarks.arena.spread()``),
each written in full and held until the last is had, then all freed. RSS
before the burst, at its peak and ``1.5 * T`` seconds after (``T`` is 1 s
unless ``--trim-after`` says), beside the bytes the arena's slabs hold.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import resource
import socket

from aiomempool import PooledBufferedProtocol, buffer_arena, buffer_pool
from benchmarks.arena import spread

#: The arena's budget in the arena scenario: room for the whole burst (a
#: bound, not an allocation), so that no allocation of it waits.
ARENA_BURST_BYTES = 1 << 30


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


async def arena_main(allocations: int, trim_after: float) -> None:
    arena = buffer_arena(ARENA_BURST_BYTES, trim_after=trim_after)
    sizes = list(itertools.islice(itertools.cycle(spread()), allocations))
    payload = memoryview(b"x" * max(sizes))
    before = rss_mib()
    held: list[memoryview] = []
    try:
        for n in sizes:
            view = await arena.alloc(n, timeout=10.0)
            view[:] = payload[:n]  # as a frame received into it
            held.append(view)
        peak = rss_mib()
        slabs_peak = arena.stats().bytes_reserved
        arena.free_bulk(held)
        held.clear()
        wait = trim_after * 1.5
        await asyncio.sleep(wait)
        after = rss_mib()
        stats = arena.stats()
        print(
            f"{allocations} allocations of the spread (64 B to 1 MiB, seeded; "
            f"{sum(sizes) / 2**20:.1f} MiB asked), trim_after={trim_after} s: "
            f"RSS before {before:.1f} MiB, peak {peak:.1f} MiB "
            f"({slabs_peak / 2**20:.1f} MiB of slabs), {wait:.1f} s after "
            f"{after:.1f} MiB ({stats.bytes_reserved / 2**20:.1f} MiB of slabs; "
            f"{stats.total.outstanding} out)"
        )
    finally:
        arena.free_bulk(held)
        arena.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument(
        "--trim-after",
        type=float,
        default=None,
        help="seconds (default: 2 for the pool, 1 for the arena)",
    )
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument(
        "--arena",
        action="store_true",
        help="a burst of allocations of a spread of sizes through a buffer_arena",
    )
    parser.add_argument(
        "--allocations",
        type=int,
        default=1000,
        help="buffers of the arena's burst (default: 1000, about 100 MiB)",
    )
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.install()
    if args.arena:
        trim = 1.0 if args.trim_after is None else args.trim_after
        asyncio.run(arena_main(args.allocations, trim))
    else:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (min(hard, 2 * args.clients + 256), hard)
        )
        trim = 2.0 if args.trim_after is None else args.trim_after
        asyncio.run(main(args.clients, trim))
