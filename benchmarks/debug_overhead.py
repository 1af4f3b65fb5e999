"""What debug mode, the sampled leak detector and ``zero_on_free`` cost:
``python -m benchmarks.debug_overhead``.

One cycle is ``alloc_nowait()`` then ``free()`` of a 64 KiB buffer of a
``buffer_pool`` in its steady state. Every case runs once per repeat, in an
order that rotates from repeat to repeat, with the garbage collector off;
the figure is the median over repeats, and the ratio is against the plain
pool measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
from time import perf_counter_ns
from typing import Any

from aiomempool import buffer_pool
from benchmarks.harness import Batch, Config, measure_batches

SIZE = 64 * 1024

#: name -> options of buffer_pool; the first is the baseline.
CASES: dict[str, dict[str, Any]] = {
    "plain": {},
    "zero_on_free=True": {"zero_on_free": True},
    "leak_sampling=128": {"leak_sampling": 128},
    "leak_sampling=1": {"leak_sampling": 1},
    "debug=True": {"debug": True},
}


def batch(options: dict[str, Any]) -> Batch:
    """A batch of n cycles on a pool of its own: nanoseconds per cycle."""
    pool = buffer_pool(SIZE, min_nr=4, **options)

    async def run(n: int) -> float:
        alloc, free = pool.alloc_nowait, pool.free
        gc.collect()
        gc.disable()
        try:
            start = perf_counter_ns()
            for _ in range(n):
                free(alloc())
            return (perf_counter_ns() - start) / n
        finally:
            gc.enable()

    return run


def measure(repeats: int, batch_s: float) -> dict[str, float]:
    """The median nanoseconds per cycle of every case, through the suite's
    harness (batches interleaved, their order rotating)."""
    cfg = Config(
        repeats=repeats, batch_s=batch_s, handoff_repeats=1, tasks=1, task_cycles=1
    )
    loop = asyncio.new_event_loop()
    try:
        figures, failed = measure_batches(
            loop, {name: batch(options) for name, options in CASES.items()}, cfg
        )
    finally:
        loop.close()
    if failed:
        raise RuntimeError(f"cases failed: {failed}")
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--batch-s", type=float, default=0.05)
    args = parser.parse_args(argv)
    figures = measure(args.repeats, args.batch_s)
    base = figures["plain"]
    print(f"alloc_nowait() + free() of a {SIZE // 1024} KiB buffer_pool buffer")
    print(f"{'case':<20} {'ns/cycle':>10} {'ratio':>8}")
    for name, ns in figures.items():
        print(f"{name:<20} {ns:>10.0f} {ns / base:>7.2f}x")


if __name__ == "__main__":
    main()
