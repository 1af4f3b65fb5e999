"""Seeded stress: thousands of tasks over a small pool, cancelled at random.

Each run starts TASKS tasks over a pool of 8 to 32 elements whose backing
allocator has little headroom, fails at random and goes down now and then;
the pool's retry timer is short, so allocator retries for waiters happen
too. Each task does a few rounds of alloc (some with a timeout, some with a
mask that may not wait), a short hold and a free; a driver cancels tasks at
random (and allocates from callbacks with ``alloc_nowait()``), and a task
that frees an element sometimes cancels the longest waiter right away: the
task the free has just handed the element to, before it runs (the hard case
of cancellation safety).

Checked during the run: no element is held by two tasks at once; a monitor
task, stepping with the loop, never sees an element in the reserve while a
task waits, in two snapshots in a row with nothing done in between (the
loop runs every woken task between two snapshots, so a waiter seen twice
beside a free element is stranded). Checked at the end: every element is
back (the reserve is full, the rest went to free_fn), ``outstanding`` and
``waiters`` are 0, and the counters agree with what the tasks saw.

One worker body runs in two cancellation styles: asyncio's
(``Task.cancel()``, deadlines by ``alloc(timeout=)``) and anyio's (a task
group, ``CancelScope.cancel()``, half the deadlines by ``move_on_after``).

The backing allocator draws from the seeded RNG in the order the loop calls
it, so a seed fixes the run up to timer jitter; the number of tasks is
fixed, and ``asyncio.wait_for`` bounds each run.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import anyio
import pytest
from helpers import Backing, Elem

from aiomempool import (
    GFP,
    GFP_ATOMIC,
    GFP_KERNEL,
    GFP_NOWAIT,
    AllocTimeoutError,
    Mempool,
)

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]

SEEDS = [1, 2, 3, 4, 5, 6]
TASKS = 3000
#: A run that takes longer than this is stuck.
BOUND_S = 20.0
POOL_DATA = object()


class Weather(Backing):
    """A backing allocator with ``headroom`` elements beyond the reserve
    (two more for ``GFP.HIGH``), that fails at random, now returning None,
    now raising MemoryError, and goes down on demand."""

    def __init__(self, rng: random.Random, min_nr: int, headroom: int) -> None:
        super().__init__(supply=min_nr + headroom, headroom=2, pool_data=POOL_DATA)
        self.rng = rng
        self.min_nr = min_nr
        self.flaky = False  # fails at random too

    def weather(self) -> None:
        """Now and then the allocator goes down or up, or its headroom
        changes: waiters then get elements from the pool's retries."""
        if self.rng.random() < 0.005:
            self.up = not self.up
        if self.rng.random() < 0.02:
            self.limit = self.min_nr + self.rng.randint(0, 12)

    def room(self, gfp_mask: GFP) -> int | None:
        if self.flaky and self.rng.random() < 0.05:
            return 0
        return super().room(gfp_mask)

    def alloc(self, gfp_mask: GFP, pool_data: Any) -> Elem | None:
        self.raises = self.rng.random() < 0.5
        return super().alloc(gfp_mask, pool_data)


class Ledger:
    """What the tasks saw: elements in use, and counts to match stats()."""

    def __init__(self) -> None:
        self.in_use: set[int] = set()
        self.errors: list[str] = []
        self.allocs = 0
        self.frees = 0
        self.nones = 0
        self.timeouts = 0
        self.gave_up = 0  # left alloc() by a cancel scope's deadline
        self.hard_cancels = 0
        #: Tasks inside alloc(), in the order they called it.
        self.in_alloc: dict[Any, None] = {}

    def took(self, element: Any) -> None:
        if not isinstance(element, Elem):
            self.errors.append(f"alloc() returned {element!r}")
            return
        if element.n in self.in_use:
            self.errors.append(f"{element} handed out while in use")
        self.in_use.add(element.n)
        self.allocs += 1

    def gives_back(self, element: Elem) -> None:
        self.in_use.discard(element.n)
        self.frees += 1


class Monitor:
    """Steps with the loop; flags a waiter stranded beside a free element."""

    def __init__(self, pool: Mempool[Elem]) -> None:
        self.pool = pool
        self.stop = False
        self.checks = 0
        self.seen_waiting = 0
        self.violations: list[str] = []

    async def run(self) -> None:
        prev = None
        while not self.stop:
            s = self.pool.stats()
            self.checks += 1
            self.seen_waiting += s.waiters > 0
            if s.curr_nr > s.min_nr:
                self.violations.append(f"curr_nr > min_nr: {s}")
            if s.curr_nr > 0 and s.waiters > 0:
                key = (s.curr_nr, s.waiters, s.allocs, s.frees, s.timeouts, s.waits)
                if key == prev and len(self.violations) < 10:
                    self.violations.append(
                        f"{s.curr_nr} element(s) in the reserve while {s.waiters} "
                        f"task(s) wait, twice in a row: {s}"
                    )
                prev = key
            else:
                prev = None
            await asyncio.sleep(0)


def make_pool(rng: random.Random) -> tuple[Mempool[Elem], Weather]:
    min_nr = rng.randint(8, 32)
    backing = Weather(rng, min_nr, headroom=rng.randint(0, 8))
    pool = backing.pool(min_nr, retry_interval=rng.choice([0.001, 0.005, 0.05]))
    backing.flaky = True
    return pool, backing


def make_plan(rng: random.Random) -> list[tuple[GFP, float | None, float | None]]:
    """Rounds of (mask, timeout, hold): hold None frees at once, 0 after a
    sleep(0), else after that many seconds."""
    plan = []
    for _ in range(rng.randint(1, 4)):
        mask = rng.choice(
            [GFP_KERNEL] * 8 + [GFP_KERNEL | GFP.HIGH, GFP_NOWAIT, GFP_ATOMIC]
        )
        timeout = None if rng.random() < 0.7 else rng.choice([0, 0.0005, 0.002, 0.01])
        hold = rng.choice([None, 0, 0, 0, 0.0005, 0.001])
        plan.append((mask, timeout, hold))
    return plan


def check_end(
    pool: Mempool[Elem], backing: Weather, ledger: Ledger, monitor: Monitor
) -> None:
    errors = backing.errors + ledger.errors + monitor.violations
    assert not errors, "\n".join(errors[:10])
    s = pool.stats()
    assert s.waiters == 0, s
    assert s.outstanding == 0, s
    assert not ledger.in_use
    # Every element is back: the reserve is full, the others went to free_fn.
    assert s.curr_nr == s.min_nr, s
    assert backing.live == s.curr_nr, (backing.live, s)
    assert s.allocs == ledger.allocs and s.frees == ledger.frees, (s, vars(ledger))
    assert s.timeouts == ledger.timeouts, (s, ledger.timeouts)
    assert s.alloc_fn_failures == backing.failures
    # The run did stress what it meant to.
    assert s.waits > 0 and monitor.seen_waiting > 0, s
    assert ledger.timeouts > 0, vars(ledger)
    pool.close()
    assert backing.live == 0 and not backing.errors


class GaveUp(Exception):
    """An anyio deadline (``move_on_after``) passed in alloc()."""


class Cancellable(Protocol):
    def cancel(self) -> Any: ...


Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]]], object]


@contextmanager
def cancel_handle(style: str) -> Iterator[Cancellable]:
    """What another task cancels the running worker by: its task, or an
    anyio cancel scope around its body."""
    if style == "asyncio":
        task = asyncio.current_task()
        assert task is not None
        yield task
    else:
        with anyio.CancelScope() as scope:
            yield scope


async def run_workers(
    style: str, start_all: Callable[[Spawn], Awaitable[None]]
) -> None:
    """``start_all(spawn)`` starts every worker with ``spawn``; returns once
    all have ended. asyncio: tasks of their own, an error of one raised
    here; anyio: a task group on the running loop."""
    if style == "anyio":
        async with anyio.create_task_group() as tg:
            await start_all(tg.start_soon)
        return
    tasks: list[asyncio.Task[None]] = []
    try:
        await start_all(lambda worker: tasks.append(asyncio.ensure_future(worker())))
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("style", ["asyncio", "anyio"])
async def test_thousands_of_tasks_cancelled_at_random_lose_no_element(
    style: str, seed: int
) -> None:
    rng = random.Random(seed)
    pool, backing = make_pool(rng)
    ledger = Ledger()
    monitor = Monitor(pool)
    handles: list[Cancellable] = []
    cancelled = 0

    async def alloc(mask: GFP, timeout: float | None) -> Elem | None:
        if style == "anyio" and timeout is not None and rng.random() < 0.5:
            with anyio.move_on_after(timeout):
                return await pool.alloc(mask)
            raise GaveUp
        return await pool.alloc(mask, timeout=timeout)

    async def worker(plan: list[tuple[GFP, float | None, float | None]]) -> None:
        with cancel_handle(style) as me:
            handles.append(me)
            for mask, timeout, hold in plan:
                ledger.in_alloc[me] = None
                try:
                    element = await alloc(mask, timeout)
                except AllocTimeoutError:
                    ledger.timeouts += 1
                    continue
                except GaveUp:
                    ledger.gave_up += 1
                    continue
                finally:
                    ledger.in_alloc.pop(me, None)
                if element is None:
                    ledger.nones += 1
                    continue
                ledger.took(element)
                try:
                    if hold is not None:
                        await asyncio.sleep(hold)
                finally:
                    ledger.gives_back(element)
                    pool.free(element)
                    if ledger.in_alloc and rng.random() < 0.05:
                        # The longest waiter, most likely just handed this
                        # element and not yet run.
                        next(iter(ledger.in_alloc)).cancel()
                        ledger.hard_cancels += 1

    def release(element: Elem) -> None:
        ledger.gives_back(element)
        pool.free(element)

    def nowait() -> None:
        """An allocation from a callback, given back from the next one."""
        element = pool.alloc_nowait(rng.choice([GFP_NOWAIT, GFP_ATOMIC]))
        if element is None:
            ledger.nones += 1
            return
        ledger.took(element)
        loop.call_soon(release, element)

    async def start_all(spawn: Spawn) -> None:
        nonlocal cancelled
        for i in range(TASKS):
            spawn(functools.partial(worker, make_plan(rng)))
            if handles and rng.random() < 0.02:
                rng.choice(handles).cancel()
                cancelled += 1
            if rng.random() < 0.05:
                loop.call_soon(nowait)
            backing.weather()
            if i % rng.randint(1, 40) == 0:
                await asyncio.sleep(rng.choice([0, 0, 0, 0.0005]))
        backing.up = True

    async def run() -> None:
        await run_workers(style, start_all)
        for _ in range(3):  # the last callbacks
            await asyncio.sleep(0)

    loop = asyncio.get_running_loop()
    watcher = asyncio.ensure_future(monitor.run())
    try:
        await asyncio.wait_for(run(), BOUND_S)
    finally:
        monitor.stop = True
        await watcher
    assert cancelled > 0 and ledger.hard_cancels > 0
    check_end(pool, backing, ledger, monitor)
