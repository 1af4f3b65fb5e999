"""WaitQueue alone, as trio's test_parking_lot.py tests ParkingLot: first
come first served, dead futures skipped, what a leaver hands back, deadlines,
closing, errors, the on_empty callback, compaction, and the loop of the
line (another loop refused, a closed loop's line forgotten)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import uvloop
from helpers import Elem, settle

from aiomempool import GFP, GFP_KERNEL
from aiomempool._waitqueue import CLOSED, COMPACT_SLACK, TIMEDOUT, Fresh, WaitQueue

LOOPS = pytest.mark.parametrize(
    "new_loop",
    [asyncio.new_event_loop, uvloop.new_event_loop],
    ids=["asyncio", "uvloop"],
)


class Emptied:
    """An on_empty callback that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


def line_and_count() -> tuple[WaitQueue, Emptied]:
    emptied = Emptied()
    return WaitQueue(emptied), emptied


def park(line: WaitQueue, n: int) -> list[asyncio.Future[object]]:
    """n futures parked one after the other, as n tasks would."""
    return [line.park(GFP_KERNEL) for _ in range(n)]


# -- an empty line --------------------------------------------------------------


def test_a_new_line_is_empty_and_has_nobody_to_hand_to() -> None:
    line, emptied = line_and_count()
    assert len(line) == 0 and line.nparked == 0
    assert repr(line) == "<WaitQueue waiters=0>"
    assert not line.has_live() and line.first() is None
    assert line.hand(Elem()) is False
    assert line.fail_first(KeyError("nobody")) is False
    line.close()
    assert emptied.calls == 0  # nobody left: nobody was there


# -- first come, first served ---------------------------------------------------


@pytest.mark.asyncio
async def test_hand_resolves_the_first_waiter_then_the_next_in_arrival_order() -> None:
    line, _ = line_and_count()
    futs = park(line, 3)
    assert len(line) == 3 and repr(line) == "<WaitQueue waiters=3>"
    for i, value in enumerate("abc"):
        assert line.hand(value) is True
        assert futs[i].result() == value
        assert not any(f.done() for f in futs[i + 1 :])
        assert len(line) == 2 - i
    assert line.hand("d") is False  # nobody left


@pytest.mark.asyncio
async def test_tasks_woken_one_by_one_run_in_the_order_they_parked() -> None:
    line, _ = line_and_count()
    record: list[str] = []

    async def waiter(name: str) -> None:
        record.append(f"park {name}")
        record.append(f"woke {name} with {await line.park(GFP_KERNEL)}")

    tasks = []
    for name in "abc":
        tasks.append(asyncio.create_task(waiter(name)))
        await settle()
    for value in (1, 2, 3):
        line.hand(value)
        await settle()
    await asyncio.gather(*tasks)
    assert record == [
        "park a", "park b", "park c",
        "woke a with 1", "woke b with 2", "woke c with 3",
    ]  # fmt: skip


@pytest.mark.asyncio
async def test_park_makes_a_future_of_the_running_loop_when_nobody_waits() -> None:
    line, _ = line_and_count()
    (fut,) = park(line, 1)
    assert fut.get_loop() is asyncio.get_running_loop()
    assert line.accepts(asyncio.get_running_loop())
    line.hand(None)


@pytest.mark.asyncio
async def test_first_is_the_first_live_waiter_and_its_mask() -> None:
    line, _ = line_and_count()
    gone = line.park(GFP_KERNEL)
    live = line.park(GFP_KERNEL | GFP.HIGH)
    assert line.first() == (gone, GFP_KERNEL)
    gone.cancel()
    assert line.first() == (live, GFP_KERNEL | GFP.HIGH)
    assert line.has_live()
    line.hand(None)
    assert line.first() is None and not line.has_live()


# -- dead futures ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_done_and_cancelled_futures_are_skipped() -> None:
    line, _ = line_and_count()
    cancelled, timed_out, first_live, second_live = park(line, 4)
    cancelled.cancel()  # as Task.cancel() does: its task has not run yet
    line.expire(timed_out)
    assert line.hand("x") is True
    assert first_live.result() == "x"
    assert timed_out.result() is TIMEDOUT
    # The cancelled one counts until its task leaves; the timed-out one was
    # served by its deadline.
    assert line.nparked == len(line) == 2
    assert line.leave(cancelled) is None
    assert len(line) == 1
    assert line.hand("y") is True and second_live.result() == "y"
    assert line.hand("z") is False


@pytest.mark.asyncio
async def test_a_line_of_cancelled_futures_has_nobody_live() -> None:
    line, emptied = line_and_count()
    futs = park(line, 2)
    for fut in futs:
        fut.cancel()
    assert not line.has_live() and line.first() is None
    assert line.hand("x") is False
    assert line.nparked == 2  # until their tasks leave
    for fut in futs:
        assert line.leave(fut) is None
    assert line.nparked == 0 and emptied.calls == 1


# -- leave(): what a leaver was handed ------------------------------------------

ELEMENT = Elem()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("handed", "passed_on"),
    [(ELEMENT, ELEMENT), (Fresh(ELEMENT), ELEMENT), (CLOSED, None), (TIMEDOUT, None)],
    ids=["element", "fresh", "closed", "timedout"],
)
async def test_leave_returns_the_element_the_leaver_was_handed(
    handed: object, passed_on: object
) -> None:
    line, emptied = line_and_count()
    (fut,) = park(line, 1)
    assert line.hand(handed)
    assert emptied.calls == 1
    # Its task is cancelled before it runs, and leaves with what it holds:
    # an element to pass on (unwrapped from Fresh), or None for a message.
    assert line.leave(fut) is passed_on
    assert line.nparked == 0 and emptied.calls == 1  # served once, not twice


@pytest.mark.asyncio
async def test_leave_of_a_cancelled_waiter_returns_none_and_counts_it_gone() -> None:
    line, emptied = line_and_count()
    gone, stays = park(line, 2)
    gone.cancel()
    assert line.leave(gone) is None
    assert line.nparked == 1 and emptied.calls == 0
    assert line.hand("x") and stays.result() == "x"
    assert emptied.calls == 1


@pytest.mark.asyncio
async def test_leave_of_a_pending_future_cancels_it_so_nothing_is_handed_to_it() -> (
    None
):
    # An exception thrown into the task by something else than a cancel
    # (or its coroutine closed) leaves the future pending.
    line, emptied = line_and_count()
    thrown, stays = park(line, 2)
    assert line.leave(thrown) is None
    assert thrown.cancelled()
    assert line.hand("x") and stays.result() == "x"
    assert emptied.calls == 1


@pytest.mark.asyncio
async def test_leave_after_fail_first_returns_none() -> None:
    line, _ = line_and_count()
    (fut,) = park(line, 1)
    error = KeyError("allocator bug")
    assert line.fail_first(error)
    assert fut.exception() is error
    assert line.leave(fut) is None and line.nparked == 0


@pytest.mark.asyncio
async def test_a_task_cancelled_after_the_hand_off_leaves_with_the_element() -> None:
    # The pool's pattern: a leaver passes on what it was handed, so a
    # cancellation arriving after the wake-up loses nothing.
    line, _ = line_and_count()
    got: dict[str, object] = {}

    async def waiter(name: str) -> None:
        fut = line.park(GFP_KERNEL)
        try:
            got[name] = await fut
        except BaseException:
            passed_on = line.leave(fut)
            if passed_on is not None:
                line.hand(passed_on)
            raise

    first = asyncio.create_task(waiter("first"))
    second = asyncio.create_task(waiter("second"))
    await settle()
    element = Elem()
    line.hand(element)  # to the first, whose task has not run yet ...
    first.cancel()  # ... and is cancelled before it does
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 1)
    assert got == {"second": element}
    assert line.nparked == 0


# -- deadlines, closing, errors -------------------------------------------------


@pytest.mark.asyncio
async def test_expire_times_out_a_waiter_unless_it_was_handed_something() -> None:
    line, emptied = line_and_count()
    late, handed = park(line, 2)
    line.expire(late)
    assert late.result() is TIMEDOUT and line.nparked == 1
    line.hand("x")
    line.expire(handed)  # its deadline passes after the hand-off
    assert handed.result() == "x"
    assert line.nparked == 0 and emptied.calls == 1
    line.expire(late)  # twice: nothing more
    assert late.result() is TIMEDOUT and emptied.calls == 1


@pytest.mark.asyncio
async def test_close_sends_closed_to_every_live_waiter() -> None:
    line, emptied = line_and_count()
    a, cancelled, b = park(line, 3)
    cancelled.cancel()
    line.close()
    assert a.result() is CLOSED and b.result() is CLOSED
    assert line.nparked == 1 and emptied.calls == 0  # the cancelled one's task
    assert line.leave(cancelled) is None
    assert emptied.calls == 1
    line.close()  # nobody left to tell
    assert emptied.calls == 1


@pytest.mark.asyncio
async def test_fail_first_raises_in_the_first_live_waiter_only() -> None:
    line, emptied = line_and_count()
    cancelled, first, second = park(line, 3)
    cancelled.cancel()
    error = ZeroDivisionError("allocator bug")
    assert line.fail_first(error) is True
    assert first.exception() is error
    assert not second.done()
    assert line.leave(cancelled) is None
    assert line.nparked == 1 and emptied.calls == 0
    assert line.fail_first(KeyError("again")) is True
    assert isinstance(second.exception(), KeyError)
    assert line.fail_first(KeyError("nobody")) is False
    assert emptied.calls == 1


# -- on_empty ----------------------------------------------------------------


@pytest.mark.asyncio
async def test_on_empty_is_called_exactly_when_the_last_live_waiter_goes() -> None:
    line, emptied = line_and_count()
    a, b = park(line, 2)
    line.hand(1)
    assert emptied.calls == 0  # b still waits
    line.hand(2)
    assert b.result() == 2
    assert emptied.calls == 1
    assert line.hand(3) is False and emptied.calls == 1  # nobody: no call
    assert line.leave(a) == 1 and emptied.calls == 1  # served already
    (c,) = park(line, 1)
    c.cancel()
    line.leave(c)
    assert emptied.calls == 2
    (d,) = park(line, 1)
    line.expire(d)
    assert emptied.calls == 3
    park(line, 1)
    line.fail_first(KeyError("x"))
    assert emptied.calls == 4
    park(line, 2)
    line.close()
    assert emptied.calls == 5
    assert len(line) == 0 and emptied.calls == 5


# -- compaction ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_dead_entries_stay_within_twice_the_live_ones_plus_the_slack() -> None:
    # Nothing is removed from the middle of the deque: the entries of
    # waiters that left stay queued until a compaction drops them.
    line, _ = line_and_count()
    head = park(line, 1)  # a live head: has_live() drops nothing behind it
    bound = 0
    for _ in range(20):
        futs = park(line, 30)
        for fut in futs[:-1]:
            fut.cancel()
            line.leave(fut)
            queued = len(line._entries)
            assert queued <= 2 * line.nparked + COMPACT_SLACK
            bound = max(bound, queued)
        head.append(futs[-1])
    assert line.nparked == len(head) == 21
    assert bound > 2 * 21  # the dead ones did pile up, up to the bound
    for i in range(len(head)):
        assert line.hand(i)
    assert [f.result() for f in head] == list(range(21))


# -- the loop of the line -------------------------------------------------------


def park_in(
    loop: asyncio.AbstractEventLoop, line: WaitQueue, n: int
) -> list[asyncio.Future[object]]:
    """Park n futures from a task of ``loop``, then stop the loop (open)."""

    async def main() -> list[asyncio.Future[object]]:
        return park(line, n)

    return loop.run_until_complete(main())


@LOOPS
def test_a_second_loop_is_refused_while_tasks_of_the_first_wait(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    first, second = new_loop(), new_loop()
    try:
        line, _ = line_and_count()
        assert line.accepts(first) and line.accepts(second)  # nobody waits
        (fut,) = park_in(first, line, 1)
        assert line.accepts(first)
        assert not line.accepts(second)
        line.hand("x")
        assert fut.result() == "x"
        assert line.accepts(second)  # nobody waits any more
    finally:
        first.close()
        second.close()


@LOOPS
def test_a_line_whose_loop_closed_is_forgotten(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    first, second = new_loop(), new_loop()
    try:
        line, emptied = line_and_count()
        stale = park_in(first, line, 2)
        first.close()  # its tasks never run again
        assert len(line) == 0 and line.nparked == 0
        assert emptied.calls == 1
        assert line.hand("x") is False and not line.has_live()
        assert line.accepts(second)
        assert emptied.calls == 1  # forgotten once
        assert not any(f.done() for f in stale)  # a closed loop's: untouchable

        async def wait_in_line() -> object:
            fut = line.park(GFP_KERNEL)
            assert fut.get_loop() is second
            # A task of the closed loop, closed later by the garbage
            # collector, leaves: the new line is not touched.
            assert line.leave(stale[0]) is None
            assert line.nparked == 1
            line.hand("y")
            return await fut

        assert second.run_until_complete(wait_in_line()) == "y"
        assert emptied.calls == 2
    finally:
        first.close()
        second.close()


@LOOPS
def test_an_element_handed_before_the_loop_closed_is_returned_by_leave(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    loop = new_loop()
    try:
        line, emptied = line_and_count()
        (fut,) = park_in(loop, line, 1)
        element = Elem()
        line.hand(element)  # the woken task never runs: the loop closes
        loop.close()
        assert emptied.calls == 1
        line.expire(fut)  # its deadline, on a closed loop: nothing
        assert line.leave(fut) is element  # to be passed on
        assert line.nparked == 0 and emptied.calls == 1
    finally:
        loop.close()
