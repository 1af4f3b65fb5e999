"""A short tour of aiomempool: waiting, non-blocking and atomic allocations.

The backing allocator here hands out at most 4 buffers, plus 2 more of
emergency headroom that only urgent (GFP_ATOMIC) callers may use. In front
of it, a Mempool keeps a reserve of 2 buffers.

    python examples/demo.py [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any, NoReturn

from aiomempool import GFP, GFP_ATOMIC, GFP_NOWAIT, Mempool


class Allocator:
    """A bounded allocator of 4 KiB buffers with an emergency headroom."""

    def __init__(self, limit: int, headroom: int) -> None:
        self.limit = limit
        self.headroom = headroom
        self.in_use = 0

    def alloc(self, gfp_mask: GFP, pool_data: Any) -> bytearray | None:
        cap = self.limit + (self.headroom if gfp_mask & GFP.HIGH else 0)
        if self.in_use >= cap:
            return None
        self.in_use += 1
        return bytearray(4096)

    def free(self, buf: bytearray, pool_data: Any) -> None:
        self.in_use -= 1


async def tour() -> None:
    allocator = Allocator(limit=4, headroom=2)
    pool = Mempool(2, allocator.alloc, allocator.free, name="demo")
    print(f"built {pool!r}: 2 buffers reserved, the allocator has 2 left")

    # 1. Waiting: six tasks ask for a buffer; four get one at once (two from
    # the allocator, two from the reserve), two wait in line.
    order: list[str] = []

    async def worker(name: str) -> bytearray:
        buf = await pool.alloc()
        order.append(name)
        assert buf is not None  # GFP_KERNEL waits: never None
        return buf

    tasks = [asyncio.create_task(worker(f"task{i}")) for i in range(6)]
    await asyncio.sleep(0.01)
    print(f"\n1. waiting: served {order}, {pool.waiters} waiting: {pool!r}")
    held = [t.result() for t in tasks if t.done()]
    for buf in held[:2]:
        pool.free(buf)  # each free goes straight to the longest waiter
    await asyncio.sleep(0)
    print(f"   two frees later, served {order}: first come, first served")
    held = held[2:] + [await t for t in tasks[4:]]

    # 2. Non-blocking: alloc_nowait() never waits; None when nothing is left.
    print(f"\n2. non-blocking: alloc_nowait() -> {pool.alloc_nowait(GFP_NOWAIT)}")

    # 3. Atomic: an urgent caller may use the allocator's emergency headroom.
    urgent = pool.alloc_nowait(GFP_ATOMIC)
    print(
        "3. atomic: alloc_nowait(GFP_ATOMIC) -> "
        f"{type(urgent).__name__} of {len(urgent or b'')} bytes from the headroom"
    )

    # 4. A deadline, and the element() context manager.
    try:
        await pool.alloc(timeout=0.05)
    except TimeoutError:
        print("4. timeout: alloc(timeout=0.05) raised TimeoutError")
    for buf in [*held, urgent]:
        pool.free(buf)
    async with pool.element() as buf:
        buf[:5] = b"hello"
        print(f"   element(): borrowed {bytes(buf[:5])!r}, returned on exit")

    stats = pool.stats()
    print(
        f"\nstats: {stats.allocs} allocs, {stats.frees} frees, "
        f"{stats.outstanding} outstanding, {stats.reserve_hits} from the reserve, "
        f"{stats.waits} waits (longest {stats.max_wait_s * 1e3:.1f} ms), "
        f"{stats.timeouts} timeout, {stats.alloc_fn_failures} allocator failures"
    )
    pool.close()
    print(f"closed {pool!r}; allocator buffers in use: {allocator.in_use}")


class Parser(argparse.ArgumentParser):
    """Says what is wrong with the arguments in one line, and exits 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def main() -> None:
    parser = Parser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = parser.parse_args()
    # Failed allocations are logged (rate-limited) unless GFP.NOWARN is set.
    logging.basicConfig(stream=sys.stdout, format="   log: %(message)s")
    if args.uvloop:
        import uvloop

        uvloop.run(tour())
    else:
        asyncio.run(tour())


if __name__ == "__main__":
    main()
