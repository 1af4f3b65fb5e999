"""A Mempool driven by hypothesis against a model of its contract.

The state machine owns an event loop (asyncio's or uvloop's, one per run)
and steps it by hand, so that it can act between any two steps of the
tasks: free an element right after a task parked, cancel a task that a
free has just woken and that has not run yet, start tasks that only run
later, resize or close the pool with hand-offs in flight.

The model knows what the test holds, what the backing allocator made and
disposed of, and which tasks were seen parked, in the order they arrived.
After every step it checks what must hold at any time (conservation of
elements, ``curr_nr <= min_nr``, the counters); after the loop has settled,
when every task left is parked, it checks what must hold at rest (no element
is in flight, ``waiters`` is the number of pending tasks, and no element sits
in the reserve while a task waits). Where the outcome of an operation is
determined by what the test can see, the rule predicts it exactly.

FIFO: a free or a resize hands its element to the first task in line (the
model predicts which, and checks that task ends with that very element);
nobody barges (no task gets an element while a task that arrived before it
is known to be still waiting, and ``alloc_nowait()`` then returns None
without asking the allocator).

The retry timer is set to an hour, so waiters are woken only by frees,
resizes, cancellations and timeouts: every outcome is then a function of
the sequence of rules, and hypothesis can shrink a failure to it. Timeouts
are 0, an hour, or short ones that a rule waits out on purpose.

``AIOMEMPOOL_EXAMPLES`` raises the number of examples for a deeper search.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pytest
import uvloop
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from aiomempool import (
    GFP,
    GFP_ATOMIC,
    GFP_KERNEL,
    GFP_NOWAIT,
    AllocTimeoutError,
    Mempool,
    PoolClosedError,
)

POOL_DATA = object()
#: A timeout that never expires within a run.
LONG = 1000.0
#: A timeout that expires while the test waits for it on purpose.
SHORT = 0.005
#: The pool's retry timer never fires within a run.
RETRY_INTERVAL = 3600.0
NOWAIT_MASKS = [
    GFP_NOWAIT,
    GFP_ATOMIC,
    GFP_NOWAIT | GFP.NOWARN,
    GFP_ATOMIC | GFP.NOWARN,
]
WAIT_MASKS = [GFP_KERNEL, GFP_KERNEL | GFP.HIGH, GFP_KERNEL | GFP.NOWARN]
TASK_MASKS = [GFP_KERNEL, *WAIT_MASKS, GFP_NOWAIT, GFP_ATOMIC]
MODES = ["up", "down", "reclaim_only", "high_only"]


class Elem:
    """A unique element; ``serial`` is its rank among those made."""

    __slots__ = ("serial",)

    def __init__(self, serial: int) -> None:
        self.serial = serial

    def __repr__(self) -> str:
        return f"E{self.serial}"


class Backing:
    """The backing allocator: a mode, a finite supply, a record of calls.

    Modes: ``up`` (any mask), ``down`` (nothing), ``reclaim_only`` (only
    masks with ``DIRECT_RECLAIM``: what only the third step of the kernel's
    order gets), ``high_only`` (only masks with ``HIGH``). A failure returns
    None, or raises MemoryError if ``raises``.

    It never raises anything else into the pool: what it finds wrong goes to
    ``errors``, for the test to report.
    """

    def __init__(self, supply: int, raises: bool = False) -> None:
        self.supply = supply
        self.mode = "up"
        self.raises = raises
        self.made: dict[int, Elem] = {}
        self.disposed: set[int] = set()
        self.calls: list[GFP] = []
        self.failures = 0
        self.errors: list[str] = []
        self.held: dict[int, Elem] = {}  # the test's, to catch free_fn on them

    def can(self, gfp: GFP) -> bool:
        if self.supply <= 0 or self.mode == "down":
            return False
        if self.mode == "reclaim_only":
            return bool(gfp & GFP.DIRECT_RECLAIM)
        if self.mode == "high_only":
            return bool(gfp & GFP.HIGH)
        return True

    def alloc(self, gfp: GFP, pool_data: Any) -> Elem | None:
        if pool_data is not POOL_DATA:
            self.errors.append(f"alloc_fn got pool_data={pool_data!r}")
        if type(gfp) is not GFP:
            self.errors.append(f"alloc_fn got gfp_mask={gfp!r}, not a GFP")
        self.calls.append(GFP(gfp))
        if not self.can(gfp):
            self.failures += 1
            if self.raises:
                raise MemoryError("backing allocator failed")
            return None
        self.supply -= 1
        element = Elem(len(self.made))
        self.made[element.serial] = element
        return element

    def free(self, element: Elem, pool_data: Any) -> None:
        if pool_data is not POOL_DATA:
            self.errors.append(f"free_fn got pool_data={pool_data!r}")
        if (
            not isinstance(element, Elem)
            or self.made.get(element.serial) is not element
        ):
            self.errors.append(f"free_fn got {element!r}, which alloc_fn never made")
            return
        if element.serial in self.disposed:
            self.errors.append(f"free_fn got {element!r} twice")
        if element.serial in self.held:
            self.errors.append(f"free_fn got {element!r}, which the test holds")
        self.disposed.add(element.serial)


class Req:
    """One ``alloc()`` task and what the model knows about it."""

    def __init__(
        self, seq: int, mask: GFP, timeout: float | None, closed: bool
    ) -> None:
        self.seq = seq
        self.mask = mask
        self.timeout = timeout
        self.created_closed = closed
        self.task: asyncio.Task[None] | None = None
        self.outcome: tuple[str, Any] | None = None
        self.harvested = False
        #: Seen pending once the loop had settled: it was parked then.
        self.parked = False
        #: The element a free or resize handed to it, as the model predicts.
        self.promised: Elem | None = None
        self.cancelled = False
        #: Parked (and not handed anything) when the pool was closed.
        self.expect_closed = False

    def __repr__(self) -> str:
        flags = "".join(
            f" {name}"
            for name, on in (
                ("parked", self.parked),
                ("cancelled", self.cancelled),
                ("harvested", self.harvested),
            )
            if on
        )
        promised = f" promised={self.promised}" if self.promised else ""
        return (
            f"<T{self.seq} {self.mask!r} timeout={self.timeout}{flags}{promised} "
            f"outcome={self.outcome}>"
        )


def _pick(items: list[Any], i: int) -> Any:
    return items[i % len(items)]


class MempoolMachine(RuleBasedStateMachine):
    """Drives one Mempool on a loop of its own; see the module docstring."""

    new_loop: Any = staticmethod(asyncio.new_event_loop)

    def __init__(self) -> None:
        super().__init__()
        self.loop: asyncio.AbstractEventLoop = self.new_loop()
        self.pool: Mempool[Elem] | None = None
        self.backing = Backing(0)
        self.held: dict[int, Elem] = self.backing.held
        self.reqs: list[Req] = []
        self.log: list[Req] = []  # tasks in the order they completed
        self.log_pos = 0
        self.errors: list[str] = []
        # Whether the model knows which parked task is first in the pool's
        # queue; lost when an element is passed on by a cancelled task.
        self.queue_known = True
        self.n_allocs = 0
        self.n_frees = 0
        self.n_timeouts = 0
        self.failures_base = 0
        self.steps = 0

    # -- plumbing ------------------------------------------------------------

    def teardown(self) -> None:
        try:
            pending = [
                r.task for r in self.reqs if r.task is not None and not r.task.done()
            ]
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.wait(pending, timeout=5))
            if self.pool is not None:
                self.pool.close()
            self.loop.run_until_complete(asyncio.sleep(0))
        finally:
            self.loop.close()

    def error(self, message: str) -> None:
        self.errors.append(message)

    def spawn(self, mask: GFP, timeout: float | None) -> Req:
        pool = self.pool
        assert pool is not None
        req = Req(len(self.reqs), mask, timeout, pool.closed)

        async def run() -> None:
            try:
                if mask is GFP_KERNEL and timeout is None:
                    element = await pool.alloc()  # the hot path
                else:
                    element = await pool.alloc(mask, timeout=timeout)
            except (Exception, asyncio.CancelledError) as exc:
                req.outcome = ("exc", exc)
            else:
                req.outcome = ("elem", element)
            self.log.append(req)

        req.task = self.loop.create_task(run())
        self.reqs.append(req)
        return req

    def pending(self) -> list[Req]:
        return [r for r in self.reqs if not r.harvested]

    def queue(self) -> list[Req]:
        """Tasks seen parked and still parked, first in line first."""
        assert self.pool is not None
        if self.pool.closed:
            return []
        return [
            r
            for r in self.reqs
            if r.parked and not r.harvested and r.promised is None and not r.cancelled
        ]

    def fingerprint(self) -> tuple[Any, ...]:
        assert self.pool is not None
        return (
            len(self.log),
            sum(r.task is not None and r.task.done() for r in self.reqs),
            len(self.backing.calls),
            len(self.backing.disposed),
            self.pool.curr_nr,
            self.pool.waiters,
        )

    def step(self, n: int) -> None:
        """Run the loop a few steps, leaving work half done."""
        for _ in range(n):
            self.loop.run_until_complete(asyncio.sleep(0))
        self.harvest()

    def settle(self) -> None:
        """Run the loop until nothing moves: every pending task is parked."""
        prev = None
        still = 0
        for _ in range(1000):
            self.loop.run_until_complete(asyncio.sleep(0))
            fp = self.fingerprint()
            if fp == prev:
                still += 1
                if still >= 2:
                    break
            else:
                prev, still = fp, 0
        else:
            raise AssertionError("the loop never settled")
        self.harvest()
        self.queue_known = True
        for r in self.pending():
            assert r.promised is None, f"{r} was handed {r.promised} and never took it"
            assert not r.cancelled, f"{r} was cancelled and is still pending"
            r.parked = True
        self.check_settled()

    def receive(self, element: Any, source: str) -> None:
        """An element handed to the test: it must be one nobody holds."""
        b = self.backing
        if not isinstance(element, Elem) or b.made.get(element.serial) is not element:
            self.error(f"{source} returned {element!r}, which alloc_fn never made")
            return
        if element.serial in self.held:
            self.error(f"{source} handed out {element!r}, which the test already holds")
        if element.serial in b.disposed:
            self.error(f"{source} handed out {element!r}, which free_fn disposed of")
        self.held[element.serial] = element
        self.n_allocs += 1

    def harvest(self) -> None:
        """Judge the tasks that completed, in the order they completed."""
        while self.log_pos < len(self.log):
            req = self.log[self.log_pos]
            self.log_pos += 1
            self.judge(req)
        for req in self.reqs:
            if not req.harvested and req.task is not None and req.task.done():
                # Cancelled before it ever ran.
                req.harvested = True
                if not (req.task.cancelled() and req.cancelled):
                    self.error(f"{req} ended without an outcome")

    def judge(self, req: Req) -> None:
        req.harvested = True
        assert req.outcome is not None
        kind, value = req.outcome
        may_wait = bool(req.mask & GFP.DIRECT_RECLAIM)
        if req.cancelled:
            if not isinstance(value, asyncio.CancelledError):
                self.error(f"{req} was cancelled before it completed, yet ended so")
            return
        if kind == "exc":
            if isinstance(value, asyncio.CancelledError):
                self.error(f"{req} was cancelled by nobody")
            elif req.promised is not None:
                self.error(f"{req} raised instead of taking what it was handed")
            elif isinstance(value, AllocTimeoutError):
                self.n_timeouts += 1
                if req.timeout is None or req.timeout == LONG:
                    self.error(f"{req} timed out")
            elif isinstance(value, PoolClosedError):
                if not (self.pool is not None and self.pool.closed):
                    self.error(f"{req} raised PoolClosedError on an open pool")
            else:
                self.error(f"{req} raised {value!r}")
            return
        if req.created_closed or req.expect_closed:
            self.error(f"{req} got {value!r} from a closed pool")
        if value is None:
            if may_wait:
                self.error(f"{req} returned None although its mask may wait")
            return
        if req.promised is not None and value is not req.promised:
            self.error(f"{req} got {value!r}, not the element handed to it")
        if self.queue_known:
            # Nobody barges: no earlier task may still be waiting, unserved.
            for other in self.queue():
                if other.seq < req.seq:
                    self.error(f"{req} got {value!r} while {other} still waits")
        self.receive(value, repr(req))

    def check_errors(self) -> None:
        errors = self.errors + self.backing.errors
        if errors:
            raise AssertionError("\n".join(errors))

    def check_settled(self) -> None:
        """What holds once every pending task is parked."""
        self.check_errors()
        pool, b = self.pool, self.backing
        assert pool is not None
        pending = self.pending()
        in_flight = len(b.made) - len(self.held) - len(b.disposed) - pool.curr_nr
        assert in_flight == 0, f"{in_flight} elements unaccounted for at rest"
        assert pool.waiters == len(pending), (pool.waiters, pending)
        if pool.waiters:
            assert pool.curr_nr == 0, (
                f"{pool.curr_nr} element(s) in the reserve while {pool.waiters} "
                f"task(s) wait: {pending}"
            )
        if pool.closed:
            assert pool.waiters == 0

    # -- setup ---------------------------------------------------------------

    @initialize(
        min_nr=st.integers(1, 4),
        extra=st.integers(0, 8),
        raises=st.booleans(),
        short=st.booleans(),
        mode=st.sampled_from(MODES),
        take=st.integers(0, 4),
    )
    def init_pool(
        self, min_nr: int, extra: int, raises: bool, short: bool, mode: str, take: int
    ) -> None:
        b = self.backing
        b.raises = raises
        if short:
            # Not enough supply: construction fails and frees what it made.
            b.supply = min_nr - 1
            with pytest.raises(MemoryError):
                Mempool(min_nr, b.alloc, b.free, POOL_DATA)
            assert b.calls == [GFP_KERNEL] * min_nr
            assert set(b.made) == b.disposed
        b.supply = min_nr + extra
        ncalls = len(b.calls)
        self.pool = Mempool(
            min_nr, b.alloc, b.free, POOL_DATA, retry_interval=RETRY_INTERVAL
        )
        assert b.calls[ncalls:] == [GFP_KERNEL] * min_nr
        self.failures_base = b.failures
        assert self.pool.min_nr == self.pool.curr_nr == min_nr
        assert self.pool.waiters == 0 and not self.pool.closed
        # Start out short of memory, holding elements: where waiting begins.
        b.mode = mode
        for _ in range(take):
            self.do_alloc_nowait(GFP_NOWAIT)

    # -- the backing allocator ------------------------------------------------

    @rule()
    def allocator_up(self) -> None:
        self.backing.mode = "up"

    @rule()
    def allocator_down(self) -> None:
        self.backing.mode = "down"

    @rule(mode=st.sampled_from(["reclaim_only", "high_only"]))
    def allocator_restricted(self, mode: str) -> None:
        self.backing.mode = mode

    @rule(n=st.integers(1, 4))
    def add_supply(self, n: int) -> None:
        self.backing.supply += n

    # -- allocating ----------------------------------------------------------

    def do_alloc_nowait(self, mask: GFP) -> None:
        pool, b = self.pool, self.backing
        assert pool is not None
        curr, waiters, closed = pool.curr_nr, pool.waiters, pool.closed
        ncalls, nmade = len(b.calls), len(b.made)
        if mask & GFP.DIRECT_RECLAIM:
            with pytest.raises(ValueError):
                pool.alloc_nowait(mask)
            assert len(b.calls) == ncalls
            return
        if closed:
            with pytest.raises(PoolClosedError):
                pool.alloc_nowait(mask)
            assert len(b.calls) == ncalls
            return
        fresh = b.can(mask)
        queue = self.queue() if self.queue_known else None
        element = pool.alloc_nowait(mask)
        blocked = element is None and len(b.calls) == ncalls
        if queue:
            # Nobody overtakes a waiter, and the allocator is not even asked.
            assert blocked, f"alloc_nowait() got {element} past {queue}"
        elif waiters and blocked:
            pass  # someone may wait that the model has not seen parked yet
        else:
            # The kernel's order, without waiting.
            assert b.calls[ncalls:] == [mask]
            if fresh:
                assert element is b.made[nmade]
            elif curr:
                assert element is not None and len(b.made) == nmade
                assert pool.curr_nr == curr - 1
            else:
                assert element is None
        if element is not None:
            self.receive(element, "alloc_nowait()")

    @rule(mask=st.sampled_from([*NOWAIT_MASKS, GFP_KERNEL]))
    def alloc_nowait(self, mask: GFP) -> None:
        self.do_alloc_nowait(mask)

    @rule(
        mask=st.sampled_from(TASK_MASKS),
        timeout=st.sampled_from([None, None, LONG, 0]),
        steps=st.integers(0, 2),
    )
    def start_alloc(self, mask: GFP, timeout: float | None, steps: int) -> None:
        """A task calls alloc(); it runs when the loop next runs."""
        self.spawn(mask, timeout)
        if steps:
            self.step(steps)

    @rule(
        mask=st.sampled_from(TASK_MASKS),
        timeout=st.sampled_from([None, LONG, 0, SHORT]),
    )
    def alloc_at_rest(self, mask: GFP, timeout: float | None) -> None:
        """alloc() from a settled pool: the outcome is predicted exactly.

        With a SHORT timeout the rule waits for it to expire: nothing else
        can hand the task anything meanwhile.
        """
        pool, b = self.pool, self.backing
        assert pool is not None
        self.settle()
        curr, waiters, closed = pool.curr_nr, pool.waiters, pool.closed
        ncalls, nmade = len(b.calls), len(b.made)
        may_wait = bool(mask & GFP.DIRECT_RECLAIM)
        first = GFP(mask & ~GFP.DIRECT_RECLAIM)
        # The kernel's order: first try, reserve, full try, then wait or fail.
        calls: list[GFP] = []
        if closed:
            expect = "closed"
        elif waiters:
            expect = "park" if may_wait else "none"
        else:
            calls.append(first)
            if b.can(first):
                expect = "fresh"
            elif curr:
                expect = "reserve"
            elif not may_wait:
                expect = "none"
            else:
                calls.append(mask)
                expect = "fresh" if b.can(mask) else "park"
        if expect == "park" and timeout == 0:
            expect = "timeout"
        req = self.spawn(mask, timeout)
        if expect == "park" and timeout == SHORT:
            expect = "timeout"
            self.loop.run_until_complete(asyncio.wait([req.task], timeout=10))  # type: ignore[list-item]
        self.settle()
        assert b.calls[ncalls:] == calls
        outcome = req.outcome
        if expect == "park":
            assert not req.harvested and req.parked, req
            assert pool.waiters == waiters + 1
            return
        assert req.harvested, req
        assert outcome is not None
        kind, value = outcome
        if expect == "closed":
            assert isinstance(value, PoolClosedError), req
        elif expect == "timeout":
            assert isinstance(value, AllocTimeoutError), req
            assert pool.waiters == waiters
        elif expect == "none":
            assert kind == "elem" and value is None, req
        elif expect == "fresh":
            assert kind == "elem" and value is b.made[nmade], req
        else:
            assert kind == "elem" and value is not None, req
            assert len(b.made) == nmade and pool.curr_nr == curr - 1

    # -- the loop ------------------------------------------------------------

    @rule(n=st.integers(1, 3))
    def run_loop(self, n: int) -> None:
        self.step(n)

    @rule()
    def settle_loop(self) -> None:
        self.settle()

    # -- freeing -------------------------------------------------------------

    def free(self, element: Elem) -> Req | None:
        """free() with what the test can see beforehand; returns the task
        the element must go to, when the model knows it."""
        pool, b = self.pool, self.backing
        assert pool is not None
        curr, min_nr, waiters, closed = (
            pool.curr_nr,
            pool.min_nr,
            pool.waiters,
            pool.closed,
        )
        queue = self.queue() if self.queue_known else None
        ndisposed = len(b.disposed)
        del self.held[element.serial]
        pool.free(element)
        self.n_frees += 1
        if closed or curr >= min_nr:
            assert element.serial in b.disposed, f"{element} not given to free_fn"
            assert len(b.disposed) == ndisposed + 1
            assert pool.curr_nr == curr
            if waiters and not closed:
                self.queue_known = False  # a waiter may be told to retry
            return None
        assert element.serial not in b.disposed, f"{element} given to free_fn"
        assert len(b.disposed) == ndisposed
        if not waiters:
            assert pool.curr_nr == curr + 1
            return None
        if queue:
            # Refills go to the longest waiter first.
            assert pool.curr_nr == curr, (
                f"{element} went to the reserve past {queue[0]}"
            )
            queue[0].promised = element
            return queue[0]
        assert pool.curr_nr in (curr, curr + 1)
        return None

    def do_free(self, i: int | None) -> None:
        """Free the i-th element held (by serial), or None."""
        pool = self.pool
        assert pool is not None
        if i is None:
            before = pool.stats()
            ndisposed = len(self.backing.disposed)
            pool.free(None)
            assert pool.stats() == before
            assert len(self.backing.disposed) == ndisposed
        elif self.held:
            self.free(self.held[_pick(sorted(self.held), i)])

    @rule(i=st.none() | st.integers(0, 1_000_000), steps=st.integers(0, 1))
    def free_held(self, i: int | None, steps: int) -> None:
        self.do_free(i)
        if steps:
            self.step(steps)

    # -- cancelling ----------------------------------------------------------

    def do_cancel(self, i: int) -> None:
        pending = self.pending()
        if not pending:
            return
        req = _pick(pending, i)
        assert req.task is not None and not req.task.done()
        req.task.cancel()
        req.cancelled = True
        if req.promised is not None:
            # It will pass its element on when it runs.
            self.queue_known = False

    @precondition(lambda self: any(not r.harvested for r in self.reqs))
    @rule(i=st.integers(0, 1_000_000))
    def cancel_task(self, i: int) -> None:
        self.do_cancel(i)

    @rule(
        spawn=st.integers(1, 3),
        frees=st.lists(st.integers(0, 1_000_000), min_size=1, max_size=3),
        then=st.sampled_from(["nothing", "step", "settle"]),
    )
    def arrivals_meet_frees(self, spawn: int, frees: list[int], then: str) -> None:
        """New alloc() calls, then frees, within one turn of the loop: the
        new tasks start only after the frees, while the tasks the frees woke
        have not run yet."""
        for _ in range(spawn):
            self.spawn(GFP_KERNEL, None)
        for i in frees:
            self.do_free(i)
        if then == "step":
            self.step(1)
        elif then == "settle":
            self.settle()

    @rule(
        actions=st.lists(
            st.one_of(
                st.tuples(
                    st.just("spawn"),
                    st.sampled_from(TASK_MASKS),
                    st.sampled_from([None, None, LONG, 0]),
                ),
                st.tuples(st.just("free"), st.integers(0, 1_000_000)),
                st.tuples(st.just("cancel"), st.integers(0, 1_000_000)),
                st.tuples(st.just("nowait"), st.sampled_from(NOWAIT_MASKS)),
                st.tuples(st.just("step"), st.integers(1, 2)),
            ),
            min_size=2,
            max_size=8,
        ),
        settle=st.booleans(),
    )
    def burst(self, actions: list[tuple[Any, ...]], settle: bool) -> None:
        """Several operations back to back, the loop run only by ``step``:
        what callbacks and freshly started tasks do within one iteration."""
        for action in actions:
            kind = action[0]
            if kind == "spawn":
                self.spawn(action[1], action[2])
            elif kind == "free":
                self.do_free(action[1])
            elif kind == "cancel":
                self.do_cancel(action[1])
            elif kind == "nowait":
                self.do_alloc_nowait(action[1])
            else:
                self.step(action[1])
            self.check_always()
        if settle:
            self.settle()

    @precondition(lambda self: self.held)
    @rule(i=st.integers(0, 1_000_000), more=st.integers(0, 2))
    def free_then_cancel_woken(self, i: int, more: int) -> None:
        """The hard case: a free hands an element to the first waiter, which
        is cancelled before it runs; the element must go to the next one.
        ``more`` frees follow before the loop runs."""
        pool = self.pool
        assert pool is not None
        self.settle()
        queue = self.queue()
        if not queue or pool.curr_nr:
            return
        curr = pool.curr_nr
        element = self.held[_pick(sorted(self.held), i)]
        woken = self.free(element)
        assert woken is queue[0]
        queue[0].task.cancel()  # type: ignore[union-attr]
        queue[0].cancelled = True
        served = [queue[0]]
        for _ in range(more):
            if not self.held:
                break
            other = self.held[min(self.held)]
            got = self.free(other)
            if got is not None:
                served.append(got)
        self.queue_known = False  # until the cancelled task has run
        rest = [r for r in queue if r not in served]
        self.settle()
        assert queue[0].task.cancelled() or isinstance(  # type: ignore[union-attr]
            queue[0].outcome and queue[0].outcome[1], asyncio.CancelledError
        )
        # The cancelled task's element went on to the first waiter left.
        if rest:
            assert rest[0].outcome == ("elem", element), (rest[0], element)
        else:
            assert pool.curr_nr >= curr + 1

    @precondition(lambda self: self.held)
    @rule(i=st.integers(0, 1_000_000))
    def timeout_races_free(self, i: int) -> None:
        """A lone waiter's deadline passes while the loop is stopped; one
        loop iteration runs the timer (and maybe the task); then a free.
        Either the task took the element in time, or it timed out and the
        element is in the reserve."""
        pool, b = self.pool, self.backing
        assert pool is not None
        self.settle()
        if (
            pool.closed
            or pool.waiters
            or pool.curr_nr
            or b.can(GFP_KERNEL)
            or b.can(GFP_NOWAIT)
            or not self.held
        ):
            return
        req = self.spawn(GFP_KERNEL, SHORT)
        self.step(1)  # it parks: nothing to take
        if req.harvested:  # the machine is so slow that it timed out already
            assert req.outcome is not None
            assert isinstance(req.outcome[1], AllocTimeoutError), req
            return
        assert pool.waiters == 1
        time.sleep(SHORT * 3)
        self.loop.call_soon(self.loop.stop)
        self.loop.run_forever()
        self.harvest()
        element = self.held[_pick(sorted(self.held), i)]
        del self.held[element.serial]
        pool.free(element)
        self.n_frees += 1
        self.settle()
        assert req.harvested, req
        if req.outcome == ("elem", element):
            assert pool.curr_nr == 0
        else:
            assert req.outcome is not None
            assert isinstance(req.outcome[1], AllocTimeoutError), req
            assert pool.curr_nr == 1, "the element freed after the deadline was lost"

    # -- resizing and closing -------------------------------------------------

    @rule(new_min_nr=st.integers(1, 6))
    def resize(self, new_min_nr: int) -> None:
        pool, b = self.pool, self.backing
        assert pool is not None
        curr, min_nr, waiters, closed = (
            pool.curr_nr,
            pool.min_nr,
            pool.waiters,
            pool.closed,
        )
        ncalls, nmade, ndisposed = len(b.calls), len(b.made), len(b.disposed)
        queue = self.queue() if self.queue_known else None
        if closed:
            with pytest.raises(PoolClosedError):
                pool.resize(new_min_nr)
            assert len(b.calls) == ncalls and pool.min_nr == min_nr
            return
        if new_min_nr <= min_nr:
            # Shrinking (mempool_resize): free the surplus of the reserve,
            # allocate nothing.
            try:
                pool.resize(new_min_nr)
            except MemoryError as exc:
                raised: MemoryError | None = exc
            else:
                raised = None
            assert raised is None and b.calls[ncalls:] == [], (
                f"resize({new_min_nr}) from min_nr={min_nr} with curr_nr={curr} "
                f"called alloc_fn {b.calls[ncalls:]} and raised {raised!r}"
            )
            assert pool.min_nr == new_min_nr
            assert pool.curr_nr == min(curr, new_min_nr)
            assert len(b.disposed) == ndisposed + curr - pool.curr_nr
            return
        need = new_min_nr - curr
        succeed = b.supply >= need and b.can(GFP_KERNEL)
        if not succeed:
            with pytest.raises(MemoryError):
                pool.resize(new_min_nr)
            made = len(b.made) - nmade
            assert b.calls[ncalls:] == [GFP_KERNEL] * (made + 1)
            assert len(b.disposed) == ndisposed + made  # all or nothing
            assert pool.min_nr == min_nr and pool.curr_nr == curr
            return
        pool.resize(new_min_nr)
        assert b.calls[ncalls:] == [GFP_KERNEL] * need
        assert len(b.disposed) == ndisposed
        assert pool.min_nr == new_min_nr
        new = [b.made[n] for n in range(nmade, nmade + need)]
        handed = curr + need - pool.curr_nr
        assert 0 <= handed <= waiters
        if not waiters:
            assert handed == 0
        if queue:
            # New elements go to the waiters first, in order.
            assert handed >= min(need, len(queue))
            for req, element in zip(queue, new, strict=False):
                req.promised = element

    @precondition(lambda self: self.steps >= 12)
    @rule()
    def close(self) -> None:
        pool, b = self.pool, self.backing
        assert pool is not None
        curr, closed = pool.curr_nr, pool.closed
        ndisposed = len(b.disposed)
        if not closed:
            for req in self.pending():
                req.expect_closed = (
                    self.queue_known
                    and req.parked
                    and req.promised is None
                    and not req.cancelled
                )
        pool.close()
        assert pool.closed and pool.curr_nr == 0
        assert len(b.disposed) == ndisposed + (0 if closed else curr)
        pool.close()  # idempotent
        assert len(b.disposed) == ndisposed + (0 if closed else curr)

    # -- what holds after every step ------------------------------------------

    @invariant()
    def consistent(self) -> None:
        self.steps += 1
        self.check_always()

    def check_always(self) -> None:
        pool, b = self.pool, self.backing
        if pool is None:
            return
        self.check_errors()
        assert pool.curr_nr <= pool.min_nr
        pending = self.pending()
        in_flight = len(b.made) - len(self.held) - len(b.disposed) - pool.curr_nr
        assert 0 <= in_flight <= len(pending), (in_flight, pending)
        assert pool.waiters <= len(pending)
        stats = pool.stats()
        assert stats.curr_nr == pool.curr_nr and stats.waiters == pool.waiters
        assert stats.min_nr == pool.min_nr
        assert stats.outstanding == len(self.held) == stats.allocs - stats.frees
        assert stats.allocs == self.n_allocs
        assert stats.frees == self.n_frees
        assert stats.timeouts == self.n_timeouts
        assert stats.alloc_fn_failures == b.failures - self.failures_base
        assert stats.reserve_hits <= stats.allocs
        assert stats.waits >= sum(r.parked for r in self.reqs)
        assert stats.max_wait_s >= 0
        if pool.closed:
            assert pool.curr_nr == 0


def _machine_settings() -> settings:
    return settings(
        max_examples=int(os.environ.get("AIOMEMPOOL_EXAMPLES", "150")),
        stateful_step_count=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )


@_machine_settings()
class AsyncioMempoolMachine(MempoolMachine):
    new_loop = staticmethod(asyncio.new_event_loop)


@_machine_settings()
class UvloopMempoolMachine(MempoolMachine):
    new_loop = staticmethod(uvloop.new_event_loop)


TestMempoolStateAsyncio = AsyncioMempoolMachine.TestCase
TestMempoolStateUvloop = UvloopMempoolMachine.TestCase


# -- what the machine found, shrunk to plain tests -----------------------------


def test_resize_not_growing_allocates_nothing() -> None:
    """Shrunk from the machine: init_pool(min_nr=1, take=1); resize(1).

    mempool_resize() allocates only to grow min_nr; a resize to a min_nr no
    larger than the current one frees the surplus of the reserve and
    nothing else, so it cannot fail. Elements out are not missing: their
    frees refill the reserve.
    """
    b = Backing(supply=4)
    pool = Mempool(2, b.alloc, b.free, POOL_DATA, retry_interval=RETRY_INTERVAL)
    held = [pool.alloc_nowait(), pool.alloc_nowait()]  # fresh ones
    b.mode = "down"
    held += [pool.alloc_nowait(), pool.alloc_nowait()]  # the reserve
    assert pool.curr_nr == 0 and None not in held
    ncalls = len(b.calls)
    pool.resize(2)  # the same min_nr: nothing to do
    pool.resize(1)  # shrinking: the reserve holds no surplus
    assert b.calls[ncalls:] == []
    assert (pool.min_nr, pool.curr_nr) == (1, 0)
    for element in held:
        pool.free(element)
    assert pool.curr_nr == 1 and len(b.disposed) == 3
    pool.close()


@pytest.mark.asyncio
async def test_newcomer_not_stranded_behind_woken_waiter() -> None:
    """A regression the machine found in an earlier version: a task that
    calls alloc() in the same loop iteration as two frees, the first of
    which woke a waiter, must not park behind that waiter while the second
    element sits in the reserve."""
    b = Backing(supply=2)  # the reserve, then nothing more
    pool = Mempool(2, b.alloc, b.free, POOL_DATA, retry_interval=RETRY_INTERVAL)
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
