"""A pool under anyio: workers in a task group, deadlines, a cancelled group.

Workers share a small pool of buffers. Each job borrows a buffer for a short
while under `anyio.move_on_after()`; some deadlines are too short and the
job gives up while waiting in line. After a while the whole task group is
cancelled, with tasks parked in the pool. Nothing is lost: at the end every
buffer is back and nobody is left waiting.

    python examples/anyio_workers.py [--uvloop] [--workers 200] [--buffers 8]
"""

from __future__ import annotations

import argparse
import random
from typing import Any, NoReturn

import anyio

from aiomempool import Mempool


def make_pool(buffers: int, size: int) -> Mempool[bytearray]:
    """A fixed set of buffers: the allocator's stock fills the reserve at
    start-up and is empty after, so the reserve is all there is."""
    stock = [bytearray(size) for _ in range(buffers)]

    def alloc_fn(gfp_mask: Any, stock: list[bytearray]) -> bytearray | None:
        return stock.pop() if stock else None

    def free_fn(buf: bytearray, stock: list[bytearray]) -> None:
        stock.append(buf)

    return Mempool(buffers, alloc_fn, free_fn, stock, name="anyio")


async def worker(
    pool: Mempool[bytearray], rng: random.Random, count: list[int]
) -> None:
    while True:
        with anyio.move_on_after(rng.choice([0.001, 0.05, 0.05, 0.05])) as scope:
            async with pool.element() as buf:
                buf[0] = 1
                await anyio.sleep(rng.random() * 0.002)
                count[0] += 1
        if scope.cancelled_caught:
            count[1] += 1


async def run(workers: int, buffers: int, seconds: float) -> None:
    pool = make_pool(buffers, 4096)
    rng = random.Random(7)
    count = [0, 0]  # jobs done, jobs that gave up at their deadline
    async with anyio.create_task_group() as tg:
        for _ in range(workers):
            tg.start_soon(worker, pool, rng, count)
        await anyio.sleep(seconds)
        print(f"before cancelling the group: {pool!r}")
        tg.cancel_scope.cancel()
    stats = pool.stats()
    print(f"after:  {pool!r}")
    print(
        f"{count[0]} jobs done, {count[1]} gave up at their deadline; "
        f"{stats.waits} waited in line, "
        f"longest wait {stats.max_wait_s * 1e3:.1f} ms"
    )
    assert pool.curr_nr == buffers and pool.waiters == 0 and stats.outstanding == 0
    print("every buffer is back, nobody is waiting")


class Parser(argparse.ArgumentParser):
    """Says what is wrong with the arguments in one line, and exits 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def count(text: str) -> int:
    """An argument that counts something: an int >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def seconds(text: str) -> float:
    """A duration: a number of seconds > 0."""
    value = float(text)
    if not value > 0:  # NaN too
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text}")
    return value


def main() -> None:
    parser = Parser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    parser.add_argument(
        "--workers", type=count, default=200, help="tasks that share the pool"
    )
    parser.add_argument(
        "--buffers", type=count, default=8, help="buffers in the pool, all reserved"
    )
    parser.add_argument(
        "--seconds",
        type=seconds,
        default=0.5,
        help="how long the workers run before their group is cancelled",
    )
    args = parser.parse_args()
    anyio.run(
        run,
        args.workers,
        args.buffers,
        args.seconds,
        backend="asyncio",
        backend_options={"use_uvloop": args.uvloop},
    )


if __name__ == "__main__":
    main()
