"""Seeded stress: thousands of tasks over a small pool, cancelled at random.

Each test starts TASKS tasks over a pool of 8 to 32 elements whose backing
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

The backing allocator draws from the seeded RNG in the order the loop calls
it, so a seed fixes the run up to timer jitter; the number of tasks is
fixed, and ``asyncio.wait_for`` bounds each run.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import anyio
import pytest

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


class Elem:
    __slots__ = ("serial",)

    def __init__(self, serial: int) -> None:
        self.serial = serial

    def __repr__(self) -> str:
        return f"E{self.serial}"


class Backing:
    """A backing allocator with ``headroom`` elements beyond the reserve
    (more for ``GFP.HIGH``), that fails at random and goes down on demand."""

    def __init__(self, rng: random.Random, min_nr: int, headroom: int) -> None:
        self.rng = rng
        self.min_nr = min_nr
        self.limit = min_nr + headroom
        self.up = True
        self.flaky = False  # fails at random too
        self.made: list[Elem] = []
        self.disposed: set[int] = set()
        self.failures = 0
        self.errors: list[str] = []

    def weather(self) -> None:
        """Now and then the allocator goes down or up, or its headroom
        changes: waiters then get elements from the pool's retries."""
        if self.rng.random() < 0.005:
            self.up = not self.up
        if self.rng.random() < 0.02:
            self.limit = self.min_nr + self.rng.randint(0, 12)

    @property
    def live(self) -> int:
        return len(self.made) - len(self.disposed)

    def alloc(self, gfp: GFP, pool_data: Any) -> Elem | None:
        if pool_data is not POOL_DATA:
            self.errors.append(f"alloc_fn got pool_data={pool_data!r}")
        limit = self.limit + (2 if gfp & GFP.HIGH else 0)
        if (
            not self.up
            or self.live >= limit
            or (self.flaky and self.rng.random() < 0.05)
        ):
            self.failures += 1
            if self.rng.random() < 0.5:
                raise MemoryError("backing allocator failed")
            return None
        element = Elem(len(self.made))
        self.made.append(element)
        return element

    def free(self, element: Elem, pool_data: Any) -> None:
        if pool_data is not POOL_DATA:
            self.errors.append(f"free_fn got pool_data={pool_data!r}")
        if not isinstance(element, Elem) or self.made[element.serial] is not element:
            self.errors.append(f"free_fn got {element!r}, which alloc_fn never made")
        elif element.serial in self.disposed:
            self.errors.append(f"free_fn got {element!r} twice")
        else:
            self.disposed.add(element.serial)


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
        if element.serial in self.in_use:
            self.errors.append(f"{element} handed out while in use")
        self.in_use.add(element.serial)
        self.allocs += 1

    def gives_back(self, element: Elem) -> None:
        self.in_use.discard(element.serial)
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


def make_pool(rng: random.Random) -> tuple[Mempool[Elem], Backing]:
    min_nr = rng.randint(8, 32)
    backing = Backing(rng, min_nr, headroom=rng.randint(0, 8))
    pool = Mempool(
        min_nr,
        backing.alloc,
        backing.free,
        POOL_DATA,
        retry_interval=rng.choice([0.001, 0.005, 0.05]),
    )
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
    pool: Mempool[Elem], backing: Backing, ledger: Ledger, monitor: Monitor
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


@pytest.mark.parametrize("seed", SEEDS)
async def test_stress_asyncio_tasks(seed: int) -> None:
    rng = random.Random(seed)
    pool, backing = make_pool(rng)
    ledger = Ledger()
    monitor = Monitor(pool)
    tasks: list[asyncio.Task[None]] = []

    async def worker(plan: list[tuple[GFP, float | None, float | None]]) -> None:
        me = asyncio.current_task()
        for mask, timeout, hold in plan:
            ledger.in_alloc[me] = None
            try:
                element = await pool.alloc(mask, timeout=timeout)
            except AllocTimeoutError:
                ledger.timeouts += 1
                continue
            finally:
                del ledger.in_alloc[me]
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
                    next(iter(ledger.in_alloc)).cancel()  # type: ignore[attr-defined]
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

    async def driver() -> None:
        for i in range(TASKS):
            tasks.append(asyncio.ensure_future(worker(make_plan(rng))))
            if rng.random() < 0.02:
                rng.choice(tasks).cancel()
            if rng.random() < 0.05:
                loop.call_soon(nowait)
            backing.weather()
            if i % rng.randint(1, 40) == 0:
                await asyncio.sleep(rng.choice([0, 0, 0, 0.0005]))
        backing.up = True
        await asyncio.gather(*tasks, return_exceptions=True)
        for _ in range(3):  # the last callbacks
            await asyncio.sleep(0)

    loop = asyncio.get_running_loop()
    watcher = asyncio.ensure_future(monitor.run())
    try:
        await asyncio.wait_for(driver(), BOUND_S)
    finally:
        monitor.stop = True
        await watcher
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    assert sum(t.cancelled() for t in tasks) > 0
    assert ledger.hard_cancels > 0
    check_end(pool, backing, ledger, monitor)


@pytest.mark.parametrize("seed", SEEDS)
async def test_stress_anyio_cancel_scopes(seed: int) -> None:
    """The same under anyio: a task group on the running loop, deadlines by
    ``move_on_after``, cancellation by ``CancelScope.cancel()``."""
    rng = random.Random(seed)
    pool, backing = make_pool(rng)
    ledger = Ledger()
    monitor = Monitor(pool)
    scopes: list[anyio.CancelScope] = []
    cancelled = 0

    async def worker(plan: list[tuple[GFP, float | None, float | None]]) -> None:
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            for mask, timeout, hold in plan:
                ledger.in_alloc[scope] = None
                element = None
                try:
                    if timeout is not None and rng.random() < 0.5:
                        with anyio.move_on_after(timeout) as deadline:
                            element = await pool.alloc(mask)
                        if deadline.cancelled_caught:
                            ledger.gave_up += 1
                            continue
                    else:
                        element = await pool.alloc(mask, timeout=timeout)
                except AllocTimeoutError:
                    ledger.timeouts += 1
                    continue
                finally:
                    ledger.in_alloc.pop(scope, None)
                if element is None:
                    ledger.nones += 1
                    continue
                ledger.took(element)
                try:
                    if hold is not None:
                        await anyio.sleep(hold)
                finally:
                    ledger.gives_back(element)
                    pool.free(element)
                    if ledger.in_alloc and rng.random() < 0.05:
                        next(iter(ledger.in_alloc)).cancel()
                        ledger.hard_cancels += 1

    async def run_all() -> None:
        nonlocal cancelled
        async with anyio.create_task_group() as tg:
            for i in range(TASKS):
                tg.start_soon(worker, make_plan(rng))
                if scopes and rng.random() < 0.02:
                    rng.choice(scopes).cancel()
                    cancelled += 1
                backing.weather()
                if i % rng.randint(1, 40) == 0:
                    await anyio.sleep(rng.choice([0, 0, 0, 0.0005]))
            backing.up = True

    watcher = asyncio.ensure_future(monitor.run())
    try:
        await asyncio.wait_for(run_all(), BOUND_S)
    finally:
        monitor.stop = True
        await watcher
    assert cancelled > 0 and ledger.hard_cancels > 0
    check_end(pool, backing, ledger, monitor)
