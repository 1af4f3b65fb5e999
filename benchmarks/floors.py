"""The floors under the speed targets: what the benchmark's own loop costs
around a pool that does the least its kind can do.

``python -m benchmarks.floors`` (``make bench-floors``) drives, through the
loop of the package's own benchmark (the loops of ``benchmarks.mempools``
and ``benchmarks.arena``, which take what makes their pool), aiomempool's
compiled build, an instrument of
``benchmarks/_floor_types.pyx`` (compiled on the spot by Cython's
pyximport, as the compiled build is: Cython, binding methods, cpdef hot
paths) and the case's baseline (a list, an ``asyncio.Queue``,
``bytearray(n)``), interleaved, on asyncio and uvloop. Each row gives the
three times and two ratios to the baseline: aiomempool's and the floor's.
A target below the floor's ratio cannot be met by any pool of that kind
driven by that loop, on this interpreter and machine.

The instruments, the least of each kind:

* ``CallingPool``: calls ``alloc_fn`` and ``free_fn`` (a ``Mempool``'s
  steady state: the benchmark's allocator is a Python function popping a
  free list), its ``alloc()`` a coroutine, its ``element()`` a context
  whose entry is a coroutine and whose exit a done awaitable;
* ``BarePool``: a free list of buffers, nothing else;
* ``TrackedPool``: that, and the id of every buffer out in a set: the least
  that refuses a double free or a foreign buffer, as the buffer pools must;
* ``BareArena``: exact-size views of size classes with the map from slice
  to slot a slice needs, and no ownership set, budget or counters.

Writes ``docs/assets/benchmarks/floors.md`` unless ``--quick`` (or
``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomempool
from benchmarks.arena import LOG_UNIFORM, QUEUE_SIZE, arena_alloc_cycle, new_arena
from benchmarks.cases import IN_FLIGHT
from benchmarks.handrolled import (
    bytearray_cycle,
    list_cycle,
    queue_buffer_cycle,
    queue_cycle,
    stock,
)
from benchmarks.mempools import (
    _alloc_from,
    _return_to,
    await_loop,
    buffer_pool_of,
    cheap_pool,
    element_loop,
    nowait_loop,
    ring_loop,
)
from benchmarks.results import _cpu_model

try:
    import uvloop
except ImportError:  # the optional extra
    uvloop = None

OUT = Path(__file__).resolve().parent.parent / "docs" / "assets" / "benchmarks"

#: A timed batch: ``n`` cycles, nanoseconds per cycle.
Batch = Callable[[int], Awaitable[float]]


def instruments() -> Any:
    """benchmarks/_floor_types.pyx, compiled (once per build directory)."""
    import pyximport

    build = Path(tempfile.gettempdir()) / "aiomempool-floors"
    pyximport.install(build_dir=str(build), language_level=3)
    from benchmarks import _floor_types

    return _floor_types


# -- the rows ----------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One target: aiomempool's case and the floor's, by the same loop, and
    the baseline the target is a ratio to."""

    title: str
    floor_name: str
    ours: Batch
    floor: Batch
    baseline_name: str
    baseline: Batch
    #: The target's ratio to the baseline, and which way it bounds.
    target: float
    at_most: bool = True
    #: False for an instrument that does less than the pools must (a free
    #: list that cannot refuse a double free): shown for what the rest
    #: costs, not a floor of the target.
    bounds: bool = True


def rows(floors: Any) -> list[Row]:
    def calling() -> Any:
        return floors.CallingPool(_alloc_from, _return_to, stock(64))

    def buffers(size: int, kind: Any) -> Callable[[], Any]:
        return lambda: kind([memoryview(bytearray(size)) for _ in range(4 * IN_FLIGHT)])

    def bare_arena() -> Any:
        sizer = new_arena(trim_after=None)
        try:
            return floors.BareArena(sizer.classes, 2 * IN_FLIGHT)
        finally:
            sizer.close()

    def nowait_rows(size: int, target: float) -> list[Row]:
        """``buffer_pool(size)``'s ``alloc_nowait()`` + ``free()`` against
        ``bytearray(size)``, beside the floor (TrackedPool) and, for what
        the tracking costs, BarePool."""
        return [
            Row(
                f"buffer_pool({size}) alloc_nowait() + free()",
                kind.__name__,
                ring_loop(buffer_pool_of(size), awaited=False),
                ring_loop(buffers(size, kind), awaited=False),
                f"bytearray({size})",
                bytearray_cycle(size),
                target,
                bounds=kind is floors.TrackedPool,
            )
            for kind in (floors.TrackedPool, floors.BarePool)
        ]

    return [
        Row(
            "alloc_nowait() + free()",
            "CallingPool",
            nowait_loop(cheap_pool),
            nowait_loop(calling),
            "list pop() + append()",
            list_cycle,
            4.0,
        ),
        Row(
            "await alloc() + free()",
            "CallingPool",
            await_loop(cheap_pool),
            await_loop(calling),
            "asyncio.Queue",
            queue_cycle,
            0.45,
        ),
        Row(
            "async with element()",
            "CallingPool",
            element_loop(cheap_pool),
            element_loop(calling),
            "asyncio.Queue",
            queue_cycle,
            0.6,
        ),
        *nowait_rows(4096, 1.0),
        *nowait_rows(65536, 1 / 12),
        Row(
            "buffer_pool(65536) await alloc() + free()",
            "TrackedPool",
            ring_loop(buffer_pool_of(65536), awaited=True),
            ring_loop(buffers(65536, floors.TrackedPool), awaited=True),
            "Queue of 64 KiB",
            queue_buffer_cycle(65536),
            0.5,
        ),
        Row(
            "buffer_arena await alloc(n) + free(), log-uniform spread",
            "BareArena",
            arena_alloc_cycle(LOG_UNIFORM),
            arena_alloc_cycle(LOG_UNIFORM, bare_arena),
            "Queue of 64 KiB",
            queue_buffer_cycle(QUEUE_SIZE),
            0.8,
        ),
    ]


# -- measuring ---------------------------------------------------------------


def measure(
    row: Row, loop: asyncio.AbstractEventLoop, repeats: int, n: int
) -> dict[str, float]:
    """The medians of ``repeats`` interleaved batches of each of the row's
    three cases."""
    times: dict[str, list[float]] = {"ours": [], "floor": [], "baseline": []}
    for _ in range(repeats):
        for name in times:
            batch: Batch = getattr(row, name)
            times[name].append(loop.run_until_complete(batch(n)))
    return {name: statistics.median(values) for name, values in times.items()}


def verdict(row: Row, ours: float, floor: float) -> str:
    def meets(ratio: float) -> bool:
        return ratio <= row.target if row.at_most else ratio >= row.target

    if not row.bounds:
        return ("PASS" if meets(ours) else "MISS") + (
            "; the instrument refuses no double free: not a floor"
        )
    if not meets(floor):
        return "target below the floor"
    return "PASS" if meets(ours) else "MISS, above the floor"


def table(results: dict[str, list[tuple[Row, dict[str, float]]]]) -> list[str]:
    lines = [
        "| loop | case | floor: the instrument | target / baseline | ours ns "
        "| floor ns | baseline ns | ours | floor | |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for loop_name, measured in results.items():
        for row, m in measured:
            ours, floor = m["ours"] / m["baseline"], m["floor"] / m["baseline"]
            sign = "<=" if row.at_most else ">="
            lines.append(
                f"| {loop_name} | {row.title} | {row.floor_name} | {sign} "
                f"{row.target:.3g} x {row.baseline_name} | {m['ours']:,.0f} | "
                f"{m['floor']:,.0f} | {m['baseline']:,.0f} | {ours:.3g} | "
                f"{floor:.3g} | {verdict(row, ours, floor)} |"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.floors", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer repeats; writes nothing unless --out is given",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help=f"where to write floors.md (a full run's default: {OUT})",
    )
    args = parser.parse_args(argv)
    if not getattr(aiomempool, "compiled", False):
        print(
            "floors: aiomempool's compiled build is not in use; the floors "
            "are of the compiled build (unset AIOMEMPOOL_NO_EXTENSIONS and "
            "install with a C compiler); nothing measured",
            file=sys.stderr,
        )
        return 0
    try:
        floors = instruments()
    except Exception as exc:  # no Cython, no compiler: say so, measure nothing
        print(
            f"floors: the instruments could not be built ({exc}); nothing measured",
            file=sys.stderr,
        )
        return 0
    repeats, n = (3, 2000) if args.quick else (21, 20000)
    loops: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
        "asyncio": asyncio.new_event_loop
    }
    if uvloop is not None:
        loops["uvloop"] = uvloop.new_event_loop
    started = time.monotonic()
    results: dict[str, list[tuple[Row, dict[str, float]]]] = {}
    for loop_name, new_loop in loops.items():
        loop = new_loop()
        try:
            results[loop_name] = []
            for row in rows(floors):
                m = measure(row, loop, repeats, n)
                results[loop_name].append((row, m))
                print(
                    f"  {loop_name:8s} {row.title} / {row.baseline_name}: "
                    f"ours {m['ours'] / m['baseline']:.3g}, floor "
                    f"({row.floor_name}) {m['floor'] / m['baseline']:.3g}",
                    flush=True,
                )
        finally:
            loop.close()
    lines = table(results)
    print("\n".join(lines))
    out = args.out if args.out is not None else (None if args.quick else OUT)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        header = (
            f"Measured on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
            f"with CPython {platform.python_version()} on {platform.platform()}, "
            f"{_cpu_model()}; aiomempool "
            f"{aiomempool.__version__} compiled. Medians of {repeats} "
            f"interleaved batches of {n:,} cycles; the run took "
            f"{time.monotonic() - started:.0f} s. Command: `make bench-floors`."
        )
        (out / "floors.md").write_text(header + "\n\n" + "\n".join(lines) + "\n")
        print(f"wrote {out / 'floors.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
