"""Core benchmark: Mempool against asyncio.Queue, asyncio.Semaphore and a list.

Measured in one run, on the default asyncio loop and on uvloop:

1. Uncontended cycle: ``x = await pool.alloc(); pool.free(x)``, nobody
   waiting, a cheap ``alloc_fn``; baseline ``x = await q.get();
   q.put_nowait(x)`` on an ``asyncio.Queue``. Nanoseconds per cycle.
2. Non-waiting cycle: ``x = pool.alloc_nowait(); pool.free(x)``; baseline
   ``x = lst.pop(); lst.append(x)`` on a list. Nanoseconds per cycle.
3. Contended hand-off: 1,000 tasks share 16 elements, the backing allocator
   exhausted; each task loops ``alloc``, ``await asyncio.sleep(0)``,
   ``free``. Baselines with the same loop body: an ``asyncio.Queue`` of 16
   elements, and an ``asyncio.Semaphore(16)`` guarding a list. Cycles per
   second over the whole run, and how long each allocation waited.

Every figure is the median of several repeats. A repeat times one batch with
``time.perf_counter_ns`` inside a coroutine running on the loop under test,
with the garbage collector off. The candidate and its baselines run one after
the other within every repeat, in a rotating order, so that machine noise
hits them alike. Nothing is subtracted: both sides pay the same loop, timer
and attribute-lookup costs.

Reading the ratios: every ratio is pool / baseline. For times per cycle and
for the longest wait (the median over repeats of each repeat's maximum),
lower is better: ``<= 0.75`` means the pool's cycle costs at most three
quarters of the Queue's. For throughput higher is better: ``>= 0.65`` means
the pool completes at least 65% as many cycles per second. PASS means the
ratio meets its target, MISS that it does not.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from statistics import median
from time import perf_counter_ns
from typing import Any, TypeVar

from aiomempool import GFP, Mempool

R = TypeVar("R")
Job = Callable[[], Coroutine[Any, Any, R]]
LoopFactory = Callable[[], asyncio.AbstractEventLoop]

#: Elements shared by the tasks of the hand-off benchmark.
ELEMENTS = 16
#: A hand-off run that takes longer than this is reported as stuck.
WATCHDOG_S = 60.0


@dataclass(frozen=True)
class Config:
    """How much work one run does."""

    repeats: int
    cycle_iterations: int
    nowait_iterations: int
    tasks: int
    task_cycles: int


FULL = Config(
    repeats=7,
    cycle_iterations=100_000,
    nowait_iterations=200_000,
    tasks=1_000,
    task_cycles=128,
)
QUICK = Config(
    repeats=3,
    cycle_iterations=10_000,
    nowait_iterations=20_000,
    tasks=1_000,
    task_cycles=16,
)


# -- the pools ------------------------------------------------------------


def _stock(count: int) -> list[bytearray]:
    return [bytearray(16) for _ in range(count)]


def _alloc_from(gfp_mask: GFP, stock: list[bytearray]) -> bytearray | None:
    """A cheap backing allocator: pops a free list, None once it is empty."""
    return stock.pop() if stock else None


def _return_to(element: bytearray, stock: list[bytearray]) -> None:
    stock.append(element)


def _discard(element: bytearray, data: object) -> None:
    """Never called by the hand-off pool: its reserve is never full."""


def _cheap_pool() -> Mempool[bytearray]:
    return Mempool(4, _alloc_from, _return_to, _stock(64))


def _queue_of(count: int) -> asyncio.Queue[bytearray]:
    queue: asyncio.Queue[bytearray] = asyncio.Queue()
    for element in _stock(count):
        queue.put_nowait(element)
    return queue


# -- 1. and 2.: uncontended cycles, nanoseconds per cycle -----------------


async def _pool_cycle(n: int) -> float:
    pool = _cheap_pool()
    start = perf_counter_ns()
    for _ in range(n):
        x = await pool.alloc()
        pool.free(x)
    return (perf_counter_ns() - start) / n


async def _queue_cycle(n: int) -> float:
    q = _queue_of(16)
    start = perf_counter_ns()
    for _ in range(n):
        x = await q.get()
        q.put_nowait(x)
    return (perf_counter_ns() - start) / n


async def _pool_nowait_cycle(n: int) -> float:
    pool = _cheap_pool()
    start = perf_counter_ns()
    for _ in range(n):
        x = pool.alloc_nowait()
        pool.free(x)
    return (perf_counter_ns() - start) / n


async def _list_cycle(n: int) -> float:
    lst = _stock(16)
    start = perf_counter_ns()
    for _ in range(n):
        x = lst.pop()
        lst.append(x)
    return (perf_counter_ns() - start) / n


# -- 3.: contended hand-off ------------------------------------------------


@dataclass(frozen=True)
class Handoff:
    """One hand-off run: cycles per second and wait times in nanoseconds."""

    throughput: float
    p50_ns: float
    p99_ns: float
    max_ns: float


async def _pool_worker(pool: Mempool[bytearray], cycles: int, waits: list[int]) -> None:
    for _ in range(cycles):
        start = perf_counter_ns()
        x = await pool.alloc()
        waits.append(perf_counter_ns() - start)
        await asyncio.sleep(0)
        pool.free(x)


async def _queue_worker(
    q: asyncio.Queue[bytearray], cycles: int, waits: list[int]
) -> None:
    for _ in range(cycles):
        start = perf_counter_ns()
        x = await q.get()
        waits.append(perf_counter_ns() - start)
        await asyncio.sleep(0)
        q.put_nowait(x)


async def _semaphore_worker(
    sem: asyncio.Semaphore, lst: list[bytearray], cycles: int, waits: list[int]
) -> None:
    for _ in range(cycles):
        start = perf_counter_ns()
        await sem.acquire()
        x = lst.pop()
        waits.append(perf_counter_ns() - start)
        await asyncio.sleep(0)
        lst.append(x)
        sem.release()


def _summarize(elapsed_ns: int, waits: list[int]) -> Handoff:
    waits.sort()
    n = len(waits)
    return Handoff(
        throughput=n * 1e9 / elapsed_ns,
        p50_ns=waits[n // 2],
        p99_ns=waits[min(n - 1, 99 * n // 100)],
        max_ns=waits[-1],
    )


async def _race(
    name: str, workers: list[Coroutine[Any, Any, None]], waits: list[int]
) -> Handoff:
    """Run the workers to completion; the clock covers all of them."""
    tasks = [asyncio.ensure_future(worker) for worker in workers]
    start = perf_counter_ns()
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), WATCHDOG_S)
    except asyncio.TimeoutError:
        stuck = sum(not task.done() for task in tasks)
        raise RuntimeError(
            f"{name} hand-off: {stuck} tasks still waiting after {WATCHDOG_S} s"
        ) from None
    return _summarize(perf_counter_ns() - start, waits)


def _check_pool(pool: Mempool[bytearray], cycles: int, notes: list[str]) -> None:
    """Note any pool whose counters do not add up after a hand-off run."""
    s = pool.stats()
    if (s.allocs, s.frees, s.curr_nr, s.waiters) != (cycles, cycles, ELEMENTS, 0):
        notes.append(f"hand-off pool counters off after {cycles} cycles: {s}")


async def _pool_handoff(tasks: int, cycles: int, notes: list[str]) -> Handoff:
    pool = Mempool(ELEMENTS, _alloc_from, _discard, _stock(ELEMENTS))
    waits: list[int] = []
    workers = [_pool_worker(pool, cycles, waits) for _ in range(tasks)]
    result = await _race("Mempool", workers, waits)
    _check_pool(pool, tasks * cycles, notes)
    return result


async def _queue_handoff(tasks: int, cycles: int) -> Handoff:
    q = _queue_of(ELEMENTS)
    waits: list[int] = []
    workers = [_queue_worker(q, cycles, waits) for _ in range(tasks)]
    return await _race("Queue", workers, waits)


async def _semaphore_handoff(tasks: int, cycles: int) -> Handoff:
    sem = asyncio.Semaphore(ELEMENTS)
    lst = _stock(ELEMENTS)
    waits: list[int] = []
    workers = [_semaphore_worker(sem, lst, cycles, waits) for _ in range(tasks)]
    return await _race("Semaphore", workers, waits)


# -- running ---------------------------------------------------------------


def _run(loop: asyncio.AbstractEventLoop, job: Job[R]) -> R:
    """One timed batch, the garbage collector off while it runs."""
    gc.collect()
    gc.disable()
    try:
        return loop.run_until_complete(job())
    finally:
        gc.enable()


def _interleave(
    loop: asyncio.AbstractEventLoop, jobs: dict[str, Job[R]], repeats: int
) -> dict[str, list[R]]:
    """Every job once per repeat, in an order that rotates; one warm-up."""
    names = list(jobs)
    for name in names:
        _run(loop, jobs[name])
    results: dict[str, list[R]] = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            results[name].append(_run(loop, jobs[name]))
    return results


@dataclass(frozen=True)
class Row:
    """A candidate median against a baseline median."""

    name: str
    median: float
    baseline: float
    target: float
    higher_is_better: bool

    @property
    def ratio(self) -> float:
        return self.median / self.baseline

    @property
    def passed(self) -> bool:
        if self.higher_is_better:
            return self.ratio >= self.target
        return self.ratio <= self.target

    @property
    def target_text(self) -> str:
        return f"{'>=' if self.higher_is_better else '<='} {self.target:g}"

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "ratio": self.ratio,
            "target_text": self.target_text,
            "passed": self.passed,
        }


@dataclass
class LoopReport:
    """Everything measured on one event loop."""

    loop: str
    rows: list[Row]
    handoff: dict[str, Handoff]
    notes: list[str] = field(default_factory=list)


def _median_handoff(runs: list[Handoff]) -> Handoff:
    return Handoff(
        throughput=median(h.throughput for h in runs),
        p50_ns=median(h.p50_ns for h in runs),
        p99_ns=median(h.p99_ns for h in runs),
        max_ns=median(h.max_ns for h in runs),
    )


def _cycle_rows(loop: asyncio.AbstractEventLoop, cfg: Config) -> list[Row]:
    cycle = _interleave(
        loop,
        {
            "pool": partial(_pool_cycle, cfg.cycle_iterations),
            "queue": partial(_queue_cycle, cfg.cycle_iterations),
        },
        cfg.repeats,
    )
    nowait = _interleave(
        loop,
        {
            "pool": partial(_pool_nowait_cycle, cfg.nowait_iterations),
            "list": partial(_list_cycle, cfg.nowait_iterations),
        },
        cfg.repeats,
    )
    return [
        Row(
            "await alloc+free vs Queue get+put [ns/cycle]",
            median(cycle["pool"]),
            median(cycle["queue"]),
            0.75,
            higher_is_better=False,
        ),
        Row(
            "alloc_nowait+free vs list pop+append [ns/cycle]",
            median(nowait["pool"]),
            median(nowait["list"]),
            8.0,
            higher_is_better=False,
        ),
    ]


def _handoff_rows(
    loop: asyncio.AbstractEventLoop, cfg: Config, notes: list[str]
) -> tuple[list[Row], dict[str, Handoff]]:
    runs = _interleave(
        loop,
        {
            "Mempool": partial(_pool_handoff, cfg.tasks, cfg.task_cycles, notes),
            "Queue": partial(_queue_handoff, cfg.tasks, cfg.task_cycles),
            "Semaphore": partial(_semaphore_handoff, cfg.tasks, cfg.task_cycles),
        },
        cfg.repeats,
    )
    med = {name: _median_handoff(r) for name, r in runs.items()}
    pool, queue, sem = med["Mempool"], med["Queue"], med["Semaphore"]
    rows = [
        Row(
            "hand-off throughput vs Queue [cycles/s]",
            pool.throughput,
            queue.throughput,
            0.65,
            higher_is_better=True,
        ),
        Row(
            "hand-off throughput vs Semaphore [cycles/s]",
            pool.throughput,
            sem.throughput,
            0.75,
            higher_is_better=True,
        ),
        Row(
            "hand-off max wait vs Semaphore [us]",
            pool.max_ns / 1e3,
            sem.max_ns / 1e3,
            1.5,
            higher_is_better=False,
        ),
    ]
    return rows, med


def _measure_loop(name: str, factory: LoopFactory, cfg: Config) -> LoopReport:
    loop = factory()
    notes: list[str] = []
    try:
        rows = _cycle_rows(loop, cfg)
        handoff_rows, handoff = _handoff_rows(loop, cfg, notes)
    finally:
        loop.close()
    label = f"{name} ({type(loop).__module__}.{type(loop).__qualname__})"
    return LoopReport(label, rows + handoff_rows, handoff, notes)


def _loop_factories() -> list[tuple[str, LoopFactory]]:
    factories: list[tuple[str, LoopFactory]] = [("asyncio", asyncio.new_event_loop)]
    try:
        import uvloop
    except ImportError:
        print("uvloop is not installed: measuring the asyncio loop only")
        return factories
    version = getattr(uvloop, "__version__", "?")
    factories.append((f"uvloop {version}", uvloop.new_event_loop))
    return factories


# -- reporting -------------------------------------------------------------


def _num(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _print_header(cfg: Config, mode: str) -> None:
    print(f"aiomempool core benchmark ({mode}: {cfg.repeats} repeats, medians)")
    print(f"python:   {platform.python_implementation()} {sys.version.split()[0]}")
    print(f"platform: {platform.platform()}, {os.cpu_count()} CPUs")


def _print_report(report: LoopReport) -> None:
    width = max(len(row.name) for row in report.rows)
    print(f"\nloop: {report.loop}")
    print(
        f"{'benchmark':<{width}}  {'median':>10}  {'baseline':>10}  "
        f"{'ratio':>6}  {'target':>7}  result"
    )
    for row in report.rows:
        print(
            f"{row.name:<{width}}  {_num(row.median):>10}  {_num(row.baseline):>10}  "
            f"{row.ratio:>6.2f}  {row.target_text:>7}  "
            f"{'PASS' if row.passed else 'MISS'}"
        )
    print(
        f"\n{'hand-off, per implementation':<{width}}  {'cycles/s':>10}  "
        f"{'p50 us':>10}  {'p99 us':>10}  {'max us':>10}"
    )
    for name, h in report.handoff.items():
        print(
            f"{name:<{width}}  {_num(h.throughput):>10}  {_num(h.p50_ns / 1e3):>10}  "
            f"{_num(h.p99_ns / 1e3):>10}  {_num(h.max_ns / 1e3):>10}"
        )
    for note in report.notes:
        print(f"NOTE: {note}")


def _write_json(path: str, cfg: Config, mode: str, reports: list[LoopReport]) -> None:
    data = {
        "python": sys.version,
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "mode": mode,
        "config": asdict(cfg),
        "loops": [
            {
                "loop": r.loop,
                "rows": [row.as_dict() for row in r.rows],
                "handoff": {name: asdict(h) for name, h in r.handoff.items()},
                "notes": r.notes,
            }
            for r in reports
        ],
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.core",
        description="Mempool against asyncio.Queue, asyncio.Semaphore and list.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer repeats and iterations"
    )
    parser.add_argument("--json", metavar="PATH", help="write medians and ratios")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Run every benchmark on every loop, print the tables, maybe the JSON."""
    args = _parse_args(argv)
    cfg, mode = (QUICK, "quick") if args.quick else (FULL, "full")
    _print_header(cfg, mode)
    reports = []
    for name, factory in _loop_factories():
        report = _measure_loop(name, factory, cfg)
        _print_report(report)
        reports.append(report)
    if args.json:
        _write_json(args.json, cfg, mode, reports)


if __name__ == "__main__":
    main()
