"""Mempool under contention: waiting, fairness, cancellation, timeouts,
retries of the allocator, anyio cancel scopes, threads and loops."""

from __future__ import annotations

import asyncio
import functools
import gc
import threading
from collections.abc import Callable
from typing import Any

import anyio
import pytest
import uvloop
from helpers import TIMEOUT, Backing, Elem, drained, settle

from aiomempool import GFP, GFP_ATOMIC, WAIT_BUCKETS, AllocTimeoutError, Mempool
from aiomempool._waitqueue import COMPACT_SLACK

LOOPS = pytest.mark.parametrize(
    "new_loop",
    [asyncio.new_event_loop, uvloop.new_event_loop],
    ids=["asyncio", "uvloop"],
)


async def park(pool: Mempool[Elem], n: int, **kwargs: Any) -> list[asyncio.Task[Any]]:
    """Start n allocations, one after the other, and let them all park."""
    tasks = []
    for _ in range(n):
        tasks.append(asyncio.create_task(pool.alloc(**kwargs)))
        await asyncio.sleep(0)
    assert pool.waiters == n
    return tasks


# -- waiting and fairness ---------------------------------------------------


@pytest.mark.asyncio
async def test_alloc_waits_until_an_element_is_freed() -> None:
    _, pool, (held,) = drained()
    (task,) = await park(pool, 1)
    await settle()
    assert not task.done()
    pool.free(held)
    assert await task is held
    stats = pool.stats()
    assert (stats.waits, stats.reserve_hits, pool.waiters) == (1, 2, 0)
    assert stats.max_wait_s > 0


@pytest.mark.asyncio
async def test_waiters_are_served_first_come_first_served() -> None:
    _, pool, held = drained(3)
    tasks = await park(pool, 5)
    served: list[int] = []
    for i, task in enumerate(tasks):
        task.add_done_callback(functools.partial(lambda i, _: served.append(i), i))
    for element in held:
        pool.free(element)
        await settle()
    assert served == [0, 1, 2]
    pool.free(await tasks[0])
    pool.free(await tasks[1])
    await settle()
    assert served == [0, 1, 2, 3, 4]


@pytest.mark.asyncio
async def test_a_freed_element_is_handed_to_the_waiter_not_taken_by_others() -> None:
    # asyncio.Queue lets get_nowait() take the item put_nowait() woke a
    # getter for; the pool must not.
    _, pool, (held,) = drained()
    (task,) = await park(pool, 1)
    pool.free(held)
    assert pool.curr_nr == 0  # handed over, not in the reserve
    assert pool.alloc_nowait() is None
    assert pool.alloc_nowait(GFP_ATOMIC) is None
    assert await pool.alloc(GFP_ATOMIC) is None
    assert await task is held


@pytest.mark.asyncio
async def test_new_callers_queue_behind_waiters_even_if_the_allocator_recovers() -> (
    None
):
    backing, pool, (held,) = drained()
    (first,) = await park(pool, 1)
    backing.up = True
    late = asyncio.create_task(pool.alloc())
    await asyncio.sleep(0)
    assert pool.waiters == 2
    assert pool.alloc_nowait() is None  # nobody overtakes a waiter
    pool.free(held)
    assert await first is held
    pool.free(held)
    assert await late is held


@pytest.mark.asyncio
async def test_a_newcomer_is_not_stranded_behind_a_woken_waiter() -> None:
    """Found by the state machine in an earlier version: a task that calls
    alloc() in the same loop iteration as two frees, the first of which
    woke a waiter, must not park behind that waiter while the second
    element sits in the reserve."""
    backing = Backing(supply=2)  # the reserve, then nothing more
    pool = backing.pool(2, retry_interval=3600)
    x, y = pool.alloc_nowait(), pool.alloc_nowait()
    first = asyncio.create_task(pool.alloc())
    await asyncio.sleep(0)
    assert pool.waiters == 1
    newcomer = asyncio.create_task(pool.alloc())  # runs after the frees
    pool.free(x)  # to the waiter
    pool.free(y)  # nobody is parked: to the reserve
    done, _ = await asyncio.wait([first, newcomer], timeout=1)
    assert pool.curr_nr == 0 and pool.waiters == 0
    assert {t.result() for t in done} == {x, y}, (pool, newcomer)
    pool.close()


@pytest.mark.asyncio
async def test_no_waiter_is_overtaken_more_than_once_by_each_other_task() -> None:
    # 50 tasks share 2 elements in a tight alloc / yield / free loop. Served
    # first come first served, a waiter sees at most one allocation by each
    # other task while it waits; a pool that lets returning tasks barge (as
    # an asyncio.Queue does) starves some waiters for far longer.
    _, pool, held = drained(2)
    for element in held:
        pool.free(element)
    ntasks, rounds = 50, 20
    served = 0
    worst = 0

    async def worker() -> None:
        nonlocal served, worst
        for _ in range(rounds):
            before = served
            element = await pool.alloc()
            worst = max(worst, served - before)
            served += 1
            await asyncio.sleep(0)
            pool.free(element)

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(ntasks))), 10)
    assert served == ntasks * rounds
    assert worst <= ntasks - 1
    assert pool.curr_nr == 2 and pool.waiters == 0


@pytest.mark.asyncio
async def test_wait_times_fall_in_the_histogram_buckets() -> None:
    _, pool, (held,) = drained()
    (task,) = await park(pool, 1)
    await asyncio.sleep(0.003)
    pool.free(held)
    await task
    stats = pool.stats()
    assert len(stats.wait_counts) == len(WAIT_BUCKETS)
    assert sum(stats.wait_counts) == stats.waits == 1
    (bucket,) = [i for i, n in enumerate(stats.wait_counts) if n]
    assert WAIT_BUCKETS[bucket] >= stats.wait_sum_s > 0
    assert bucket == 0 or WAIT_BUCKETS[bucket - 1] < stats.wait_sum_s
    assert stats.max_wait_s == stats.wait_sum_s


# -- cancellation -----------------------------------------------------------


@pytest.mark.asyncio
async def test_cancelling_a_parked_waiter_loses_nothing() -> None:
    _, pool, (held,) = drained()
    a, b = await park(pool, 2)
    a.cancel()
    with pytest.raises(asyncio.CancelledError):
        await a
    assert pool.waiters == 1
    pool.free(held)
    assert await b is held
    assert pool.waiters == 0


@pytest.mark.asyncio
async def test_cancel_after_the_hand_off_passes_the_element_to_the_next() -> None:
    # asyncio.Condition on 3.10-3.12 drops the notification here.
    _, pool, (held,) = drained()
    a, b = await park(pool, 2)
    pool.free(held)  # handed to a, which has not run yet
    a.cancel()
    with pytest.raises(asyncio.CancelledError):
        await a
    assert await asyncio.wait_for(b, 1) is held
    assert pool.stats().outstanding == 1


@pytest.mark.asyncio
async def test_cancel_after_the_hand_off_refills_the_reserve_if_nobody_waits() -> None:
    _, pool, (held,) = drained()
    (a,) = await park(pool, 1)
    pool.free(held)
    a.cancel()
    with pytest.raises(asyncio.CancelledError):
        await a
    assert pool.curr_nr == 1 and pool.waiters == 0
    assert pool.stats().outstanding == 0
    assert pool.alloc_nowait() is held


@pytest.mark.asyncio
async def test_a_free_after_cancels_that_have_not_run_yet_refills_the_reserve() -> None:
    # The cancelled tasks still count as waiting until they run; the free
    # must skip them, not hand to them nor fail.
    _, pool, (held,) = drained()
    tasks = await park(pool, 3)
    for task in tasks:
        task.cancel()
    pool.free(held)
    assert pool.curr_nr == 1
    assert pool.alloc_nowait() is held  # nobody live is in line
    await asyncio.gather(*tasks, return_exceptions=True)
    assert pool.waiters == 0


@pytest.mark.asyncio
async def test_a_newcomer_behind_only_cancelled_waiters_does_not_park() -> None:
    _, pool, (held,) = drained()
    (gone,) = await park(pool, 1)
    gone.cancel()
    pool.free(held)
    assert await asyncio.wait_for(pool.alloc(), 1) is held
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert pool.waiters == 0 and pool.curr_nr == 0


@pytest.mark.asyncio
async def test_timeout_raises_and_leaves_the_queue_clean() -> None:
    _, pool, (held,) = drained()
    with pytest.raises(AllocTimeoutError) as info:
        await pool.alloc(timeout=0.02)
    assert isinstance(info.value, TimeoutError)
    assert pool.waiters == 0 and pool.stats().timeouts == 1
    (b,) = await park(pool, 1)
    pool.free(held)
    assert await b is held


@pytest.mark.asyncio
async def test_timeout_zero_does_not_wait() -> None:
    _, pool, _ = drained()
    with pytest.raises(TimeoutError):
        await pool.alloc(timeout=0)
    assert pool.stats().waits == 0


@pytest.mark.asyncio
async def test_a_waiter_whose_timer_fired_after_the_hand_off_keeps_the_element() -> (
    None
):
    _, pool, (held,) = drained()
    task = asyncio.create_task(pool.alloc(timeout=0.05))
    await asyncio.sleep(0)
    pool.free(held)
    await asyncio.sleep(0.1)
    assert await task is held
    assert pool.stats().timeouts == 0


@pytest.mark.asyncio
async def test_timed_out_waiter_does_not_swallow_a_later_free() -> None:
    _, pool, (held,) = drained()
    slow = asyncio.create_task(pool.alloc(timeout=0.01))
    await asyncio.sleep(0)
    (patient,) = [asyncio.create_task(pool.alloc())]
    await asyncio.sleep(0.05)
    with pytest.raises(TimeoutError):
        await slow
    pool.free(held)
    assert await patient is held


@pytest.mark.asyncio
async def test_many_cancelled_waiters_do_not_pile_up() -> None:
    _, pool, (held,) = drained()
    for _ in range(50):
        tasks = await park(pool, 20)
        for task in tasks[:-1]:
            task.cancel()
        await settle()
        assert pool.waiters == 1
        queued = len(pool._line._entries)
        assert queued <= 2 * pool.waiters + COMPACT_SLACK + 1
        pool.free(held)
        held = await tasks[-1]
    assert pool.waiters == 0


@pytest.mark.asyncio
async def test_cancelled_element_context_entry_loses_nothing() -> None:
    _, pool, (held,) = drained()

    async def user() -> None:
        async with pool.element():
            pass

    a = asyncio.create_task(user())
    await asyncio.sleep(0)
    pool.free(held)
    a.cancel()
    with pytest.raises(asyncio.CancelledError):
        await a
    assert pool.curr_nr == 1 and pool.stats().outstanding == 0


# -- anyio ----------------------------------------------------------------


@pytest.mark.asyncio
async def test_anyio_move_on_after_leaves_the_pool_consistent() -> None:
    _, pool, (held,) = drained()
    with anyio.move_on_after(0.02) as scope:
        await pool.alloc()
    assert scope.cancelled_caught
    assert pool.waiters == 0
    pool.free(held)
    assert pool.curr_nr == 1


@pytest.mark.asyncio
async def test_anyio_cancel_scope_after_the_hand_off_loses_nothing() -> None:
    # anyio does not cancel a task whose wait has already completed: the
    # first waiter keeps the element it was handed. Either way, the element
    # must end with exactly one task and nobody may be left waiting.
    _, pool, (held,) = drained()
    got: dict[str, Elem] = {}

    async def waiter(name: str, scope: anyio.CancelScope) -> None:
        with scope:
            got[name] = await pool.alloc()

    first, second = anyio.CancelScope(), anyio.CancelScope()
    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter, "first", first)
        await settle()
        tg.start_soon(waiter, "second", second)
        await settle()
        assert pool.waiters == 2
        pool.free(held)  # handed to first ...
        first.cancel()  # ... whose scope is cancelled before it runs
        await settle()
        second.cancel()
    assert list(got.values()) == [held]
    assert pool.waiters == 0 and pool.stats().outstanding == 1


@pytest.mark.asyncio
async def test_anyio_task_group_cancelled_while_many_wait() -> None:
    _, pool, held = drained(4)
    async with anyio.create_task_group() as tg:
        for _ in range(30):
            tg.start_soon(pool.alloc)
        await settle()
        assert pool.waiters == 30
        tg.cancel_scope.cancel()
    assert pool.waiters == 0
    for element in held:
        pool.free(element)
    assert pool.curr_nr == 4


# -- retries of the backing allocator ---------------------------------------


@pytest.mark.asyncio
async def test_waiters_retry_the_allocator_when_it_may_have_recovered() -> None:
    # Nothing is freed into this pool, but the allocator comes back: the
    # kernel's timed retry wakes the first waiter, and each success the next.
    backing, pool, _ = drained(1, retry_interval=0.02)
    tasks = await park(pool, 3)
    backing.up = True
    got = await asyncio.wait_for(asyncio.gather(*tasks), 1)
    assert all(isinstance(e, Elem) for e in got)
    assert pool.waiters == 0


@pytest.mark.asyncio
async def test_a_failed_retry_keeps_the_first_place_in_line() -> None:
    backing, pool, (held,) = drained(1, retry_interval=0.01)
    a, b = await park(pool, 2)
    await asyncio.sleep(0.05)  # several retries, all failing
    assert backing.masks.count(GFP.DIRECT_RECLAIM) >= 2
    pool.free(held)
    assert await a is held
    assert not b.done()
    b.cancel()


@pytest.mark.asyncio
async def test_retries_serve_waiters_in_order_until_the_allocator_fails() -> None:
    backing, pool, (held,) = drained(1, retry_interval=0.01)
    tasks = await park(pool, 3)
    backing.up = True
    backing.supply = 2
    done, pending = await asyncio.wait(tasks, timeout=0.2)
    assert done == set(tasks[:2]) and pending == {tasks[2]}
    assert [t.result() for t in tasks[:2]] == backing.made[-2:]
    assert pool.waiters == 1
    pool.free(held)
    assert await tasks[2] is held
    assert pool.stats().reserve_hits == 2  # held twice; the rest were fresh


@pytest.mark.asyncio
async def test_the_reserve_is_never_full_while_a_task_waits() -> None:
    # Why free() never needs to leave a waiter behind: tasks park only on an
    # empty reserve, and every free below min_nr goes to the first of them.
    _, pool, held = drained(3)
    tasks = await park(pool, 5)
    for element in held:
        pool.free(element)
        assert pool.curr_nr == 0
    assert pool.waiters == 2
    for task in tasks[3:]:
        task.cancel()
    got = await asyncio.gather(*tasks, return_exceptions=True)
    assert got[:3] == held  # in the order they parked
    assert pool.curr_nr == 0 and pool.waiters == 0


@pytest.mark.asyncio
async def test_an_allocator_error_in_a_retry_reaches_the_first_waiter_only() -> None:
    backing, pool, (held,) = drained(1, retry_interval=0.01)
    a, b = await park(pool, 2)
    backing.fail_with = ZeroDivisionError("allocator bug")
    with pytest.raises(ZeroDivisionError):
        await asyncio.wait_for(a, 1)
    backing.fail_with = None
    assert pool.waiters == 1
    pool.free(held)
    assert await b is held


# -- threads and loops ------------------------------------------------------


@pytest.mark.asyncio
async def test_free_threadsafe_returns_an_element_from_a_worker_thread() -> None:
    _, pool, (held,) = drained()
    (task,) = await park(pool, 1)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, pool.free_threadsafe, held)
    assert await asyncio.wait_for(task, 1) is held


@pytest.mark.asyncio
async def test_free_threadsafe_with_an_explicit_loop() -> None:
    _, pool, (held,) = drained()
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, lambda: pool.free_threadsafe(held, loop=loop))
    await settle()
    assert pool.curr_nr == 1


def test_free_threadsafe_without_a_known_loop_says_what_to_do() -> None:
    _, pool, (held,) = drained()
    with pytest.raises(RuntimeError, match="pass loop="):
        pool.free_threadsafe(held)


def test_a_pool_moves_to_a_new_loop_when_nothing_waits() -> None:
    _, pool, (held,) = drained()

    async def cycle() -> Elem:
        task = asyncio.create_task(pool.alloc())
        await asyncio.sleep(0)
        pool.free(held)
        return await task

    for _ in range(3):  # as a test suite does: a new loop each time
        assert asyncio.run(cycle()) is held
        pool.free(held)
        pool.alloc_nowait()


def test_waiting_from_a_second_loop_is_refused() -> None:
    _, pool, _ = drained()
    parked = threading.Event()
    release = threading.Event()
    result: list[Any] = []

    def other_loop() -> None:
        async def main() -> None:
            task = asyncio.create_task(pool.alloc())
            await asyncio.sleep(0)
            parked.set()
            while not release.is_set():
                await asyncio.sleep(0.001)
            task.cancel()
            result.append(await asyncio.gather(task, return_exceptions=True))

        asyncio.run(main())

    thread = threading.Thread(target=other_loop)
    thread.start()
    assert parked.wait(5)
    with pytest.raises(RuntimeError, match="tasks of another event loop wait"):
        asyncio.run(pool.alloc())
    assert pool.stats().waits == 1  # the other loop's task only
    release.set()
    thread.join(5)
    assert pool.waiters == 0


@LOOPS
def test_a_task_of_a_second_loop_is_refused_naming_the_pool_and_not_counted(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    _, pool, (held,) = drained(name="rx")
    first, second = new_loop(), new_loop()
    try:
        waiter = first.create_task(pool.alloc())
        first.run_until_complete(settle())  # parked; the loop stays open
        assert pool.waiters == 1 and pool.stats().waits == 1
        with pytest.raises(RuntimeError) as info:
            second.run_until_complete(pool.alloc())
        message = str(info.value)
        assert message.startswith("<Mempool 'rx' ")
        assert "tasks of another event loop wait on this pool" in message
        assert pool.stats().waits == 1  # the first loop's task only
        assert pool.waiters == 1
        pool.free(held)  # still goes to the first loop's waiter
        assert first.run_until_complete(asyncio.wait_for(waiter, TIMEOUT)) is held
    finally:
        first.close()
        second.close()


# -- a loop closed while its tasks wait ---------------------------------------


def park_and_close(
    pool: Mempool[Elem], new_loop: Callable[[], asyncio.AbstractEventLoop]
) -> asyncio.Task[Any]:
    """As an embedder or a test fixture does: run a loop until a task is
    parked in alloc(), then close the loop with the task still pending."""
    loop = new_loop()
    task = loop.create_task(pool.alloc())
    loop.run_until_complete(settle())
    assert pool.waiters == 1
    loop.close()
    return task


@LOOPS
def test_a_waiter_of_a_closed_loop_is_dead_and_free_refills_the_reserve(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    backing, pool, (held,) = drained()
    task = park_and_close(pool, new_loop)
    assert pool.waiters == 0  # no phantom waiter
    pool.free(held)  # neither raises nor lands in the dead future
    assert pool.curr_nr == 1
    assert pool.stats().outstanding == 0
    assert pool.stats().waiters == 0
    assert not task.done()
    del task
    gc.collect()  # the task's coroutine is closed: it gives back nothing
    assert pool.curr_nr == 1
    assert backing.freed == []


@LOOPS
def test_a_pool_whose_waiters_loop_closed_serves_a_new_loop(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    _, pool, (held,) = drained()
    stale = park_and_close(pool, new_loop)

    async def wait_in_line() -> Elem:
        # Waiting must park on this loop, not queue behind the dead task.
        task = asyncio.create_task(pool.alloc())
        await settle()
        assert pool.waiters == 1
        pool.free(held)
        return await asyncio.wait_for(task, TIMEOUT)

    loop = new_loop()
    try:
        assert loop.run_until_complete(wait_in_line()) is held
    finally:
        loop.close()
    assert pool.waiters == 0
    pool.free(held)
    assert pool.curr_nr == 1
    del stale
    gc.collect()
    assert pool.curr_nr == 1


@LOOPS
def test_an_element_handed_to_a_task_whose_loop_closed_comes_back(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    _, pool, (held,) = drained()
    loop = new_loop()
    task = loop.create_task(pool.alloc())
    loop.run_until_complete(settle())
    # Between two runs of the loop, the free hands the element to the
    # waiter; the loop is closed before the woken task runs.
    pool.free(held)
    loop.close()
    assert pool.curr_nr == 0  # in the dead task's future
    assert not task.done()
    del task
    gc.collect()  # closing the coroutine gives it back
    assert pool.curr_nr == 1
    assert pool.alloc_nowait() is held


@LOOPS
def test_the_retry_timer_of_a_closed_loop_is_dropped(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    backing, pool, (held,) = drained(retry_interval=0.01)
    stale = park_and_close(pool, new_loop)
    backing.up = True
    assert pool.waiters == 0
    pool.free(held)  # the reserve's, not a retry for the dead waiter
    assert pool.curr_nr == 1
    assert backing.made[-1] is held  # the allocator was not called again
    del stale
    gc.collect()
