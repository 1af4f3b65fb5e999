"""``python -m benchmarks``: every benchmark, on asyncio and on uvloop.

Measured in one run, on each loop, every group interleaved (see harness):

* synchronous cycles, nobody waiting: the floor (a list ``pop()`` +
  ``append()``), ``alloc_nowait()`` + ``free()``, and the libraries' own
  non-awaiting calls;
* awaited cycles, nobody waiting: the hand-rolled pools (``asyncio.Queue``,
  ``asyncio.Semaphore`` + list, ``asyncio.Condition`` + list), ``await
  alloc()`` + ``free()``, ``async with element()``, and the libraries;
* buffers of 4 KiB, 64 KiB and 256 KiB with 64 in flight: ``bytearray(n)``,
  an ``asyncio.Queue`` of them, and ``buffer_pool`` where this version has it;
* buffers of a seeded spread of sizes, 64 B to 1 MiB, 64 in flight
  (``benchmarks/arena.py``), twice: log-uniform (mostly small, frames as
  they come) and uniform (mostly large, the arena issue's spread); each
  with ``bytearray(n)``, a Queue of 64 KiB buffers, a ``buffer_pool`` per
  size class, and ``buffer_arena``;
* contended hand-off: 1,000 tasks share 16 elements, each looping take,
  ``await asyncio.sleep(0)``, give back; cycles per second over the run and
  how long each take waited (p50, p99, max).

Once per run, what rounding up to the arena's classes wastes over each
spread; then the targets of the project's issues, PASS or MISS. A full run
writes ``results.json``, the charts and the page's table into
``docs/assets/benchmarks/``; ``--quick`` writes nothing there (only where
``--out`` says). ``--servers`` adds the server figures, from
``benchmarks/servers.py`` (its ``run(quick)``
prints its table and returns what goes into the JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.metadata
import importlib.util
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks import arena, handrolled, libraries, mempools, reads, report
from benchmarks import results as res
from benchmarks.cases import (
    AIOMEMPOOL,
    BUFFER_SIZES,
    ELEMENTS,
    FLOOR,
    HAND_ROLLED,
    IN_FLIGHT,
    NO_POOL,
    Case,
    Group,
    buffer_group_key,
    kib,
)
from benchmarks.harness import (
    FULL,
    QUICK,
    Config,
    HandoffRun,
    measure_batches,
    measure_handoffs,
)

DOCS_OUT = Path(__file__).resolve().parent.parent / "docs" / "assets" / "benchmarks"
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def groups(libs: list[libraries.Loaded]) -> list[Group]:
    """Every group of uncontended cases, in the order they are printed."""
    out = [
        Group(
            "sync",
            "Synchronous cycles, nobody waiting",
            "ns/cycle",
            res.FLOOR_LABEL,
            [
                Case(res.FLOOR_LABEL, FLOOR, handrolled.list_cycle),
                Case(res.NOWAIT_LABEL, AIOMEMPOOL, mempools.nowait_cycle),
                *libraries.sync_cases(libs),
            ],
        ),
        Group(
            "await",
            "Awaited cycles, nobody waiting",
            "ns/cycle",
            res.QUEUE_LABEL,
            [
                Case(res.QUEUE_LABEL, HAND_ROLLED, handrolled.queue_cycle),
                Case(
                    "asyncio.Semaphore + list", HAND_ROLLED, handrolled.semaphore_cycle
                ),
                Case(
                    "asyncio.Condition + list", HAND_ROLLED, handrolled.condition_cycle
                ),
                Case(res.ALLOC_LABEL, AIOMEMPOOL, mempools.alloc_cycle),
                Case(res.RESERVE_LABEL, AIOMEMPOOL, mempools.reserve_cycle),
                Case(res.ELEMENT_LABEL, AIOMEMPOOL, mempools.element_cycle),
                *libraries.awaited_cases(libs),
            ],
        ),
    ]
    for size in BUFFER_SIZES:
        out.append(
            Group(
                buffer_group_key(size),
                f"{kib(size)} buffers, {IN_FLIGHT} in flight",
                "ns/cycle",
                res.bytearray_label(size),
                [
                    Case(
                        res.bytearray_label(size),
                        NO_POOL,
                        handrolled.bytearray_cycle(size),
                    ),
                    Case(
                        res.queue_buffer_label(size),
                        HAND_ROLLED,
                        handrolled.queue_buffer_cycle(size),
                    ),
                    Case(
                        res.buffer_nowait_label(size),
                        AIOMEMPOOL,
                        mempools.buffer_nowait_cycle(size),
                    ),
                    Case(
                        res.buffer_alloc_label(size),
                        AIOMEMPOOL,
                        mempools.buffer_alloc_cycle(size),
                    ),
                ],
            )
        )
    out.append(
        Group(
            "reads",
            f"A read of {reads.READ} bytes through a BufferedProtocol",
            "ns/read",
            res.READ_BASELINE_LABEL,
            [
                Case(res.READ_BASELINE_LABEL, HAND_ROLLED, reads.per_connection_cycle),
                Case(res.READ_POOLED_LABEL, AIOMEMPOOL, reads.pooled_cycle),
            ],
        )
    )
    for spread in arena.SPREADS:
        out.append(
            Group(
                spread.key,
                spread.title,
                "ns/cycle",
                res.SPREAD_BYTEARRAY_LABEL,
                [
                    Case(
                        res.SPREAD_BYTEARRAY_LABEL,
                        NO_POOL,
                        arena.bytearray_cycle(spread),
                    ),
                    Case(
                        res.SPREAD_QUEUE_LABEL,
                        HAND_ROLLED,
                        handrolled.queue_buffer_cycle(arena.QUEUE_SIZE),
                    ),
                    Case(
                        res.SPREAD_CLASS_POOLS_LABEL,
                        HAND_ROLLED,
                        arena.class_pools_cycle(spread),
                    ),
                    Case(
                        res.ARENA_NOWAIT_LABEL,
                        AIOMEMPOOL,
                        arena.arena_nowait_cycle(spread),
                    ),
                    Case(
                        res.ARENA_ALLOC_LABEL,
                        AIOMEMPOOL,
                        arena.arena_alloc_cycle(spread),
                    ),
                ],
            )
        )
    return out


def contenders(libs: list[libraries.Loaded]) -> list[Case[HandoffRun]]:
    return [
        Case(res.MEMPOOL, AIOMEMPOOL, mempools.mempool_handoff),
        Case(res.QUEUE, HAND_ROLLED, handrolled.queue_handoff),
        Case(res.SEMAPHORE, HAND_ROLLED, handrolled.semaphore_handoff),
        Case(res.CONDITION, HAND_ROLLED, handrolled.condition_handoff),
        *libraries.handoff_cases(libs),
    ]


def _note(case: Case[Any], status: str) -> str:
    return next(
        (text for kind, text in case.known_failures.items() if kind in status), ""
    )


def _measure_group(
    loop: asyncio.AbstractEventLoop, group: Group, cfg: Config
) -> res.GroupResult:
    jobs = {c.label: c.job for c in group.cases if c.job is not None}
    medians, failed = measure_batches(loop, jobs, cfg)
    rows = []
    for c in group.cases:
        status = failed.get(c.label, c.status)
        median = medians.get(c.label)
        rows.append(res.Row(c.label, c.family, median, status, _note(c, status)))
    return res.GroupResult(group.key, group.title, group.unit, group.reference, rows)


def _measure_contenders(
    loop: asyncio.AbstractEventLoop, contenders: list[Case[HandoffRun]], cfg: Config
) -> list[res.HandoffRow]:
    runs = {c.label: c.job for c in contenders if c.job is not None}
    figures, failed = measure_handoffs(loop, runs, cfg)
    rows = []
    for c in contenders:
        status = failed.get(c.label, c.status)
        h = figures.get(c.label)
        rows.append(res.HandoffRow(c.label, c.family, h, status, _note(c, status)))
    return rows


def measure_loop(
    name: str,
    factory: LoopFactory,
    cfg: Config,
    all_groups: list[Group],
    all_contenders: list[Case[HandoffRun]],
) -> res.LoopResult:
    """Every group, then the contended runs, on a new loop of one kind."""
    loop = factory()
    try:
        group_results = [_measure_group(loop, group, cfg) for group in all_groups]
        handoff = _measure_contenders(loop, all_contenders, cfg)
    finally:
        loop.close()
    loop_class = f"{type(loop).__module__}.{type(loop).__qualname__}"
    return res.LoopResult(name, loop_class, group_results, handoff)


def loop_factories() -> list[tuple[str, LoopFactory]]:
    factories: list[tuple[str, LoopFactory]] = [("asyncio", asyncio.new_event_loop)]
    try:
        import uvloop
    except ImportError:
        print("uvloop is not installed: measuring the asyncio loop only")
        return factories
    factories.append(("uvloop", uvloop.new_event_loop))
    return factories


def versions(libs: list[libraries.Loaded]) -> dict[str, str]:
    out = {"aiomempool": importlib.metadata.version("aiomempool")}
    for dist in ("uvloop", "matplotlib"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    for lib in libs:
        out[lib.adapter.dist] = lib.version or "not installed"
    return out


def _servers(quick: bool) -> dict[str, Any] | None:
    from benchmarks import servers  # it drives redis-benchmark: only if asked

    data: dict[str, Any] = servers.run(quick)
    return data


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=(
            "aiomempool against a bare list, bytearray(n), the pools users write "
            "with asyncio, and pool libraries from PyPI, on asyncio and uvloop."
        ),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer repeats and cycles; writes nothing unless --out is given",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        type=Path,
        help="where to write results.json, the charts and the page's table "
        "(a full run's default: docs/assets/benchmarks)",
    )
    parser.add_argument("--servers", action="store_true", help="add the server figures")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Measure everything, print the tables, write the results."""
    args = _parse_args(argv)
    started = time.perf_counter()
    cfg, mode = (QUICK, "quick") if args.quick else (FULL, "full")
    libs = libraries.load()
    run = res.Run(mode, cfg, res.machine(), versions(libs))
    report.print_header(run)
    run.arena_waste = {spread.key: arena.waste(spread) for spread in arena.SPREADS}
    for waste in run.arena_waste.values():
        print(report.waste_line(waste))
    all_groups, all_contenders = groups(libs), contenders(libs)
    handoff_title = (
        f"Contended hand-off: {cfg.tasks:,} tasks share {ELEMENTS} elements "
        f"({cfg.task_cycles} cycles each; medians of {cfg.handoff_repeats} runs)"
    )
    for name, factory in loop_factories():
        loop = measure_loop(name, factory, cfg, all_groups, all_contenders)
        report.print_loop(loop, handoff_title)
        run.loops.append(loop)
        run.targets += res.targets(
            loop,
            BUFFER_SIZES,
            [spread.key for spread in arena.SPREADS],
            compiled=run.machine["build"] == "compiled",
        )
        run.closest += res.closest(loop)
    if args.servers:
        run.servers = _servers(args.quick)
    run.seconds = time.perf_counter() - started
    report.print_summary(run)
    out = args.out if args.out is not None else (None if args.quick else DOCS_OUT)
    if out is not None:
        _write(run, out, handoff_title)
    elif args.quick:
        # Draw the charts all the same, so that a quick run checks they work.
        with tempfile.TemporaryDirectory() as tmp:
            _write(run, Path(tmp), handoff_title, quiet=True)


def _write(run: res.Run, out: Path, handoff_title: str, quiet: bool = False) -> None:
    """The JSON, the charts and the page's table, all or nothing."""
    if importlib.util.find_spec("matplotlib") is None:
        print(
            "\nmatplotlib is not installed (pip install -e '.[bench]'): "
            f"nothing written to {out}"
        )
        return
    from benchmarks import charts

    out.mkdir(parents=True, exist_ok=True)
    report.write_json(run, out / "results.json")
    written = [out / "results.json"]
    written += charts.draw(run, out, handoff_title)
    written.append(charts.write_page_table(run, out / "last-run.md", handoff_title))
    if not quiet:
        here = Path.cwd()
        shown = [p.relative_to(here) if p.is_relative_to(here) else p for p in written]
        print("\nwrote " + ", ".join(str(p) for p in shown))
