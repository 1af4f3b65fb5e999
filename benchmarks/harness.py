"""How every figure is measured: batches, medians, interleaving.

A batch is a coroutine that runs ``n`` cycles of one implementation on the
loop under test and returns nanoseconds per cycle, timed with
``time.perf_counter_ns`` inside the coroutine; whatever it builds first (a
pool, its elements) is outside the clock. The garbage collector is off while
a batch runs. Nothing is subtracted: every implementation pays the same
loop, timer and attribute-lookup costs.

Within a group, every implementation runs once per repeat, in an order that
rotates from repeat to repeat, so that machine noise hits them alike; the
figure is the median over repeats. The number of cycles per batch is chosen
per implementation from a short probe, so that a batch lasts about the same
time whatever the implementation costs.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from functools import partial
from statistics import median
from time import perf_counter_ns
from typing import Any, TypeVar

R = TypeVar("R")

#: One timed batch: ``n`` cycles in, nanoseconds per cycle out.
Batch = Callable[[int], Coroutine[Any, Any, float]]
#: One contended run: (tasks, cycles per task) in, its figures out.
HandoffRun = Callable[[int, int], Coroutine[Any, Any, "Handoff"]]

#: A contended run that takes longer than this is reported as stuck.
WATCHDOG_S = 60.0


@dataclass(frozen=True)
class Config:
    """How much work one run does."""

    #: Repeats of every batch; figures are medians over them.
    repeats: int
    #: About how long one batch of uncontended cycles lasts, in seconds.
    batch_s: float
    #: Repeats of every contended run.
    handoff_repeats: int
    #: Tasks of the contended runs.
    tasks: int
    #: Cycles each task runs.
    task_cycles: int


FULL = Config(repeats=9, batch_s=0.03, handoff_repeats=7, tasks=1_000, task_cycles=128)
QUICK = Config(repeats=3, batch_s=0.002, handoff_repeats=3, tasks=1_000, task_cycles=8)


class NotMeasurable(Exception):
    """Raised by a job that shows the implementation cannot do what the
    table measures (wait, say); its message is the table's cell."""


def failure(exc: BaseException) -> str:
    """What went wrong, in one line, for a table cell."""
    if isinstance(exc, NotMeasurable):
        return str(exc)
    kind = type(exc)
    module = "" if kind.__module__ == "builtins" else f"{kind.__module__}."
    text = str(exc).splitlines()[0][:80] if str(exc) else ""
    return f"fails: {module}{kind.__qualname__}{': ' + text if text else ''}"


def _run(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, R]) -> R:
    """Run one batch to completion, the garbage collector off meanwhile."""
    gc.collect()
    gc.disable()
    try:
        return loop.run_until_complete(coro)
    finally:
        gc.enable()


def _cycles_for(loop: asyncio.AbstractEventLoop, batch: Batch, cfg: Config) -> int:
    """Cycles per batch so that one lasts about ``cfg.batch_s``."""
    n = 100
    while True:
        ns = _run(loop, batch(n)) * n
        if ns >= 2e6 or n >= 10_000_000:
            break
        n *= 10
    return max(100, round(n * cfg.batch_s * 1e9 / max(ns, 1.0)))


def interleave(
    loop: asyncio.AbstractEventLoop,
    jobs: Mapping[str, Callable[[], Coroutine[Any, Any, R]]],
    repeats: int,
) -> tuple[dict[str, list[R]], dict[str, str]]:
    """Every job once per repeat, in an order that rotates, after one
    warm-up each. Returns each job's results, and for every job that raised,
    what it raised (it is left out of the later repeats and the results)."""
    failed: dict[str, str] = {}
    for name, job in jobs.items():
        try:
            _run(loop, job())
        except Exception as exc:
            failed[name] = failure(exc)
    names = [name for name in jobs if name not in failed]
    results: dict[str, list[R]] = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names) if names else 0
        for name in names[k:] + names[:k]:
            if name in failed:
                continue
            try:
                results[name].append(_run(loop, jobs[name]()))
            except Exception as exc:
                failed[name] = failure(exc)
    return {n: v for n, v in results.items() if n not in failed}, failed


def measure_batches(
    loop: asyncio.AbstractEventLoop, batches: dict[str, Batch], cfg: Config
) -> tuple[dict[str, float], dict[str, str]]:
    """The median nanoseconds per cycle of every batch, and what each one
    that raised raised."""
    jobs: dict[str, Callable[[], Coroutine[Any, Any, float]]] = {}
    failed: dict[str, str] = {}
    for name, batch in batches.items():
        try:
            jobs[name] = partial(batch, _cycles_for(loop, batch, cfg))
        except Exception as exc:
            failed[name] = failure(exc)
    results, failed_later = interleave(loop, jobs, cfg.repeats)
    return {n: median(v) for n, v in results.items()}, failed | failed_later


# -- contended hand-off ------------------------------------------------------


@dataclass(frozen=True)
class Handoff:
    """One contended run: cycles per second, wait times in nanoseconds."""

    throughput: float
    p50_ns: float
    p99_ns: float
    max_ns: float


def summarize(elapsed_ns: int, waits: list[int]) -> Handoff:
    """Throughput over the whole run; percentiles of the waits."""
    waits.sort()
    n = len(waits)
    return Handoff(
        throughput=n * 1e9 / elapsed_ns,
        p50_ns=waits[n // 2],
        p99_ns=waits[min(n - 1, 99 * n // 100)],
        max_ns=waits[-1],
    )


async def race(workers: list[Coroutine[Any, Any, None]], waits: list[int]) -> Handoff:
    """Run the workers to completion; the clock covers all of them."""
    tasks = [asyncio.ensure_future(worker) for worker in workers]
    start = perf_counter_ns()
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), WATCHDOG_S)
    except asyncio.TimeoutError:
        stuck = sum(not task.done() for task in tasks)
        raise RuntimeError(
            f"{stuck} tasks still waiting after {WATCHDOG_S} s"
        ) from None
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return summarize(perf_counter_ns() - start, waits)


def median_handoff(runs: list[Handoff]) -> Handoff:
    """The median of each figure over the runs (the max too)."""
    return Handoff(
        throughput=median(h.throughput for h in runs),
        p50_ns=median(h.p50_ns for h in runs),
        p99_ns=median(h.p99_ns for h in runs),
        max_ns=median(h.max_ns for h in runs),
    )


def measure_handoffs(
    loop: asyncio.AbstractEventLoop, runs: dict[str, HandoffRun], cfg: Config
) -> tuple[dict[str, Handoff], dict[str, str]]:
    """The medians of every contended run, and what each one that raised
    raised."""
    jobs = {
        name: partial(run, cfg.tasks, cfg.task_cycles) for name, run in runs.items()
    }
    results, failed = interleave(loop, jobs, cfg.handoff_repeats)
    return {n: median_handoff(v) for n, v in results.items()}, failed
