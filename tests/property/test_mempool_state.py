"""Every kind of pool driven by hypothesis against a model of the contract.

The state machine owns an event loop (asyncio's or uvloop's, one per run)
and steps it by hand, so that it can act between any two steps of the
tasks: free an element right after a task parked, cancel a task that a
free has just woken and that has not run yet, start tasks that only run
later, resize or close the pool with hand-offs in flight.

It runs on every kind of pool (``KINDS``): a ``Mempool`` on the test's
``Backing``; ``buffer_pool()`` plain, with ``zero_on_free`` and with
``leak_sampling=1`` (every allocation watched): the specialised fast paths
of ``SlabPool``, which take from and give back to the cache's free list
themselves; ``kmalloc_pool()``; ``page_pool()``. A kind tells the model what
can be seen of its allocator: the Backing and kmalloc's allocator (observed
through the pool's alloc_fn, which TrackedPool never inlines) show every
call and can be switched down, up or to some masks only; a buffer pool's
cache is bounded (``max_nr`` and ``headroom``), so that exhaustion is
reached, and its books (allocations, frees, failures) are read from its
stats, which the fast paths must keep too.

The model knows what the test holds, what the allocator made and disposed
of, and which tasks were seen parked, in the order they arrived. After every
step it checks what must hold at any time (conservation of elements,
``curr_nr <= min_nr``, the counters, and every buffer the test holds still
carries the bytes written into it when it was handed out); after the loop
has settled, when every task left is parked, it checks what must hold at
rest (no element is in flight, ``waiters`` is the number of pending tasks,
and no element sits in the reserve while a task waits). Where the outcome of
an operation is determined by what the test can see, the rule predicts it
exactly. The pools of ``aiomempool.pools`` must refuse a free of a stranger,
a slice, or an element freed already and not handed out since, changing
nothing; a ``zero_on_free`` pool must hand out only zeros.

FIFO: a free or a resize hands its element to the first task in line (the
model predicts which, and checks that task ends with that very element, or
one of the same memory for a pool that lends watched aliases); nobody
barges (no task gets an element while a task that arrived before it is
known to be still waiting, and ``alloc_nowait()`` then returns None without
asking the allocator).

The retry timer is set to an hour, so waiters are woken only by frees,
resizes, cancellations and timeouts: every outcome is then a function of
the sequence of rules, and hypothesis can shrink a failure to it. Timeouts
are 0, an hour, or short ones that a rule waits out on purpose.

``AIOMEMPOOL_EXAMPLES`` raises the number of examples for a deeper search.
"""

from __future__ import annotations

import asyncio
import mmap
import os
import time
from collections.abc import Callable
from typing import Any, ClassVar

import pytest
import uvloop
from helpers import Backing, address
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from aiomempool import (
    GFP,
    GFP_ATOMIC,
    GFP_KERNEL,
    GFP_NOWAIT,
    AllocTimeoutError,
    InvalidFreeError,
    Mempool,
    PoolClosedError,
    SlabCache,
    buffer_pool,
    kmalloc_pool,
    page_pool,
    slab_pool,
)

POOL_DATA = object()
#: A timeout that never expires within a run.
LONG = 1000.0
#: A timeout that expires while the test waits for it on purpose.
SHORT = 0.005
#: The pool's retry timer never fires within a run.
RETRY_INTERVAL = 3600.0
#: Bytes per buffer of the buffer and kmalloc pools.
SIZE = 64
NOWAIT_MASKS = [
    GFP_NOWAIT,
    GFP_ATOMIC,
    GFP_NOWAIT | GFP.NOWARN,
    GFP_ATOMIC | GFP.NOWARN,
]
WAIT_MASKS = [GFP_KERNEL, GFP_KERNEL | GFP.HIGH, GFP_KERNEL | GFP.NOWARN]
TASK_MASKS = [GFP_KERNEL, *WAIT_MASKS, GFP_NOWAIT, GFP_ATOMIC]
MODES = ["up", "down", "reclaim_only", "high_only"]
#: A promise the model cannot name: some element made for the waiter.
ANY = object()


# -- the kinds of pool, and what the model sees of their allocators -----------


class Kind:
    """A kind of pool, and what the model can see of the allocator under it.

    ``calls`` lists the masks of every call of alloc_fn after construction,
    if they can be seen (None if not: a buffer pool's fast paths call no
    alloc_fn). ``made()``, ``disposed()`` and ``failures()`` count the
    elements the allocator made and took back, and the calls that gave
    nothing. ``room(mask)`` is how many elements it would make now, one
    after the other (None: any number).
    """

    name: ClassVar[str]
    #: Examples per loop (AIOMEMPOOL_EXAMPLES sets them all).
    examples: ClassVar[int] = 60
    #: The allocator can be switched down, up or to some masks only.
    switchable: ClassVar[bool] = False
    #: Its supply can be raised (the Backing's).
    supplied: ClassVar[bool] = False
    #: The pool refuses double and foreign frees (aiomempool.pools).
    tracked: ClassVar[bool] = True
    #: Bytes of an element, written and checked by the model; 0: not bytes.
    size: ClassVar[int] = 0

    calls: list[GFP] | None = None

    def build(
        self, min_nr: int, extra: int, headroom: int, raises: bool, short: bool
    ) -> Mempool[Any]:
        """The pool, with ``min_nr`` reserved and ``extra`` more to be had
        (``headroom`` beyond for GFP.HIGH) where the allocator is bounded;
        ``short``: first check that a construction short of memory fails,
        giving back what it made."""
        raise NotImplementedError

    def set_mode(self, mode: str) -> None:
        raise NotImplementedError

    def add_supply(self, n: int) -> None:
        raise NotImplementedError

    def room(self, gfp_mask: GFP) -> int | None:
        raise NotImplementedError

    def can(self, gfp_mask: GFP) -> bool:
        return self.room(gfp_mask) != 0

    def made(self) -> int:
        raise NotImplementedError

    def disposed(self) -> int:
        raise NotImplementedError

    def failures(self) -> int:
        raise NotImplementedError

    def nth_made(self, n: int) -> object | None:
        """The n-th element the allocator made, if the model can tell."""
        return None

    def ident(self, element: Any) -> int:
        """What tells two elements apart: their memory, for buffers."""
        return id(element)

    def problem(self, element: Any) -> str | None:
        """Why ``element`` cannot be one the pool may hand out, or None."""
        return None

    def watch(self, held: dict[int, int]) -> None:
        """The idents of what the test holds, kept up to date by the model."""

    def stranger(self) -> Any:
        """An element of the right type that the pool never handed out."""
        raise NotImplementedError

    def received(self, element: Any) -> str | None:
        """An element handed to the test: what is wrong with it, or None."""
        return None

    def freed(self, element: Any) -> str | None:
        """An element just freed: what is wrong with it now, or None."""
        return None

    def errors(self) -> list[str]:
        return []


class OnBacking(Kind):
    """A Mempool on the test's Backing: modes, a finite supply, every call
    of alloc_fn and free_fn seen and checked (pool_data, the masks)."""

    name = "Mempool on Backing"
    examples = 150
    switchable = supplied = True
    tracked = False

    def build(
        self, min_nr: int, extra: int, headroom: int, raises: bool, short: bool
    ) -> Mempool[Any]:
        b = self.backing = Backing(
            headroom=headroom, raises=raises, pool_data=POOL_DATA
        )
        self.calls = b.masks
        if short:
            # Not enough supply: construction fails and frees what it made.
            b.supply = min_nr - 1
            with pytest.raises(MemoryError):
                Mempool(min_nr, b.alloc, b.free, POOL_DATA)
            assert b.masks == [GFP_KERNEL] * min_nr
            assert {e.n for e in b.made} == b.disposed
        b.supply = min_nr + extra
        ncalls = len(b.masks)
        pool = Mempool(
            min_nr, b.alloc, b.free, POOL_DATA, retry_interval=RETRY_INTERVAL
        )
        assert b.masks[ncalls:] == [GFP_KERNEL] * min_nr
        return pool

    def set_mode(self, mode: str) -> None:
        self.backing.mode = mode

    def add_supply(self, n: int) -> None:
        supply = self.backing.supply
        assert supply is not None
        self.backing.supply = supply + n

    def room(self, gfp_mask: GFP) -> int | None:
        return self.backing.room(gfp_mask)

    def made(self) -> int:
        return len(self.backing.made)

    def disposed(self) -> int:
        return len(self.backing.freed)

    def failures(self) -> int:
        return self.backing.failures

    def nth_made(self, n: int) -> object | None:
        return self.backing.made[n]

    def problem(self, element: Any) -> str | None:
        if not self.backing.makes(element):
            return "which alloc_fn never made"
        if element.n in self.backing.disposed:
            return "which free_fn disposed of"
        return None

    def watch(self, held: dict[int, int]) -> None:
        self.backing.held = held

    def errors(self) -> list[str]:
        return self.backing.errors


class Kmalloc(Kind):
    """kmalloc_pool(): bytearrays, its double and foreign frees refused.
    Its allocator is observed, and switched as the Backing's modes say
    (helpers), through the pool's alloc_fn and free_fn, wrapped: TrackedPool
    has no inlined copy of them, so every call goes through."""

    name = "kmalloc_pool"
    switchable = True
    size = SIZE

    def build(
        self, min_nr: int, extra: int, headroom: int, raises: bool, short: bool
    ) -> Mempool[Any]:
        pool = kmalloc_pool(min_nr, SIZE, retry_interval=RETRY_INTERVAL)
        assert pool.curr_nr == min_nr
        self.weather = Backing()  # its modes only: it makes nothing
        self.calls = []
        self._made: list[object | None] = [None] * min_nr  # the reserve's
        self._disposed = self._failures = 0
        alloc_fn, free_fn = pool._alloc_fn, pool._free_fn

        def observed_alloc(gfp_mask: GFP, pool_data: Any) -> bytearray | None:
            assert self.calls is not None
            self.calls.append(gfp_mask)
            if not self.weather.can(gfp_mask):
                self._failures += 1
                if raises:
                    raise MemoryError("kmalloc switched off")
                return None
            element = alloc_fn(gfp_mask, pool_data)
            self._made.append(element)
            return element

        def observed_free(element: bytearray, pool_data: Any) -> None:
            free_fn(element, pool_data)  # a refusal raises before the count
            self._disposed += 1

        pool._alloc_fn = observed_alloc
        pool._free_fn = observed_free
        return pool

    def set_mode(self, mode: str) -> None:
        self.weather.mode = mode

    def room(self, gfp_mask: GFP) -> int | None:
        return self.weather.room(gfp_mask)

    def made(self) -> int:
        return len(self._made)

    def disposed(self) -> int:
        return self._disposed

    def failures(self) -> int:
        return self._failures

    def nth_made(self, n: int) -> object | None:
        return self._made[n]

    def problem(self, element: Any) -> str | None:
        if type(element) is not bytearray or len(element) != SIZE:
            return "which is not a kmalloc pool's bytearray"
        return None

    def stranger(self) -> Any:
        return bytearray(SIZE)


class Buffers(Kind):
    """buffer_pool(): a SlabPool on a bounded cache of its own; the cache's
    books are read from its stats (the pool's fast paths keep them)."""

    name = "buffer_pool"
    size = SIZE
    options: ClassVar[dict[str, Any]] = {}

    def build(
        self, min_nr: int, extra: int, headroom: int, raises: bool, short: bool
    ) -> Mempool[Any]:
        if short and min_nr > 1:
            # A cache too small for the reserve: construction fails and
            # gives back to the cache what it took.
            small = SlabCache(SIZE, max_objects=min_nr - 1, headroom=0)
            with pytest.raises(MemoryError, match="max_objects"):
                slab_pool(min_nr, small, retry_interval=RETRY_INTERVAL)
            books = small.stats()
            assert books.objects_in_use == 0, books
            assert books.allocs == books.frees == min_nr - 1, books
        pool = buffer_pool(
            SIZE,
            min_nr=min_nr,
            max_nr=min_nr + extra,
            headroom=headroom,
            retry_interval=RETRY_INTERVAL,
            **self.options,
        )
        self.cache: SlabCache = pool._allocator  # type: ignore[attr-defined]
        return pool

    def room(self, gfp_mask: GFP) -> int | None:
        cache = self.cache
        if cache.max_objects is None:
            return None
        cap = cache.max_objects + (cache.headroom if gfp_mask & GFP.HIGH else 0)
        return max(0, cap - cache.stats().objects_in_use)

    def made(self) -> int:
        return self.cache.stats().allocs

    def disposed(self) -> int:
        return self.cache.stats().frees

    def failures(self) -> int:
        return self.cache.stats().alloc_failures

    def ident(self, element: Any) -> int:
        return address(element)

    def problem(self, element: Any) -> str | None:
        if type(element) is not memoryview or element.nbytes != self.size:
            return f"which is not a memoryview of {self.size} bytes"
        if not self.cache.owns(element):
            return "which is not one of the cache's buffers"
        return None

    def stranger(self) -> Any:
        return memoryview(bytearray(self.size))


class ZeroingBuffers(Buffers):
    """buffer_pool(zero_on_free=True): every buffer freed is wiped, so
    every buffer handed out reads zeros."""

    name = "buffer_pool(zero_on_free=True)"
    options: ClassVar[dict[str, Any]] = {"zero_on_free": True}

    def received(self, element: Any) -> str | None:
        if any(element):
            return "which does not read zeros"
        return None

    def freed(self, element: Any) -> str | None:
        try:
            if any(element):
                return "which still holds bytes after free()"
        except ValueError:  # released: its slab went back, once closed
            pass
        return None


class SampledBuffers(Buffers):
    """buffer_pool(leak_sampling=1): every allocation lends a watched alias
    of its buffer; a free of the alias frees the buffer."""

    name = "buffer_pool(leak_sampling=1)"
    options: ClassVar[dict[str, Any]] = {"leak_sampling": 1}

    def problem(self, element: Any) -> str | None:
        if type(element) is not memoryview or element.nbytes != self.size:
            return f"which is not a memoryview of {self.size} bytes"
        if self.cache.owns(element) or isinstance(element.obj, bytearray):
            return "which is the buffer itself, not a watched alias of it"
        return None


class Pages(Buffers):
    """page_pool(): page-aligned buffers of a cache without a bound."""

    name = "page_pool"
    examples = 40
    size = mmap.PAGESIZE

    def build(
        self, min_nr: int, extra: int, headroom: int, raises: bool, short: bool
    ) -> Mempool[Any]:
        pool = page_pool(min_nr, 0, retry_interval=RETRY_INTERVAL)
        self.cache = pool._allocator  # type: ignore[attr-defined]
        return pool

    def problem(self, element: Any) -> str | None:
        problem = super().problem(element)
        if problem is None and address(element) % mmap.PAGESIZE:
            return "which is not page-aligned"
        return problem


KINDS: list[type[Kind]] = [
    OnBacking,
    Buffers,
    ZeroingBuffers,
    SampledBuffers,
    Kmalloc,
    Pages,
]


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
        #: The element a free or resize handed to it, as the model predicts
        #: (ANY: one the allocator made for it, which the model cannot name).
        self.promised: Any = None
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
        promised = f" promised={self.promised}" if self.promised is not None else ""
        return (
            f"<T{self.seq} {self.mask!r} timeout={self.timeout}{flags}{promised} "
            f"outcome={self.outcome}>"
        )


def _pick(items: list[Any], i: int) -> Any:
    return items[i % len(items)]


def pattern(key: int, size: int) -> bytes:
    """What the model writes into the buffer it received as its key-th."""
    return bytes([1 + key % 251]) * size


class MempoolMachine(RuleBasedStateMachine):
    """Drives one pool of ``kind`` on a loop of its own; see the module
    docstring."""

    kind_type: ClassVar[type[Kind]] = OnBacking
    new_loop: Callable[[], asyncio.AbstractEventLoop] = staticmethod(
        asyncio.new_event_loop
    )

    def __init__(self) -> None:
        super().__init__()
        self.loop: asyncio.AbstractEventLoop = self.new_loop()
        self.pool: Mempool[Any] | None = None
        self.kind = self.kind_type()
        #: What the test holds, by the rank of its receipt; and the ident of
        #: each (its memory, for a buffer) to that rank.
        self.held: dict[int, Any] = {}
        self.held_ids: dict[int, int] = {}
        self.received = 0
        #: Elements the test freed and has not been handed since, by ident.
        self.freed_ids: dict[int, Any] = {}
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

    def same(self, a: Any, b: Any) -> bool:
        """Whether ``a`` and ``b`` are the same element (the same memory,
        for buffers: a watched alias stands for its buffer)."""
        if b is ANY:
            return a is not None
        return (
            a is not None and b is not None and self.kind.ident(a) == self.kind.ident(b)
        )

    def ncalls(self) -> int | None:
        calls = self.kind.calls
        return None if calls is None else len(calls)

    def calls_since(self, ncalls: int | None) -> list[GFP] | None:
        calls = self.kind.calls
        return None if calls is None or ncalls is None else calls[ncalls:]

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
            self.ncalls(),
            self.kind.made(),
            self.kind.disposed(),
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
        kind = self.kind
        problem = kind.problem(element)
        if problem is not None:
            self.error(f"{source} returned {element!r}, {problem}")
            return
        ident = kind.ident(element)
        if ident in self.held_ids:
            self.error(f"{source} handed out {element!r}, which the test already holds")
        problem = kind.received(element)
        if problem is not None:
            self.error(f"{source} handed out {element!r}, {problem}")
        key = self.received
        self.received += 1
        if kind.size:
            element[:] = pattern(key, kind.size)
        self.held[key] = element
        self.held_ids[ident] = key
        self.freed_ids.pop(ident, None)
        self.n_allocs += 1

    def release(self, key: int) -> Any:
        """The test lets go of the key-th element it received, to free it."""
        element = self.held.pop(key)
        ident = self.kind.ident(element)
        del self.held_ids[ident]
        self.freed_ids[ident] = element
        return element

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
        if req.promised is not None and not self.same(value, req.promised):
            self.error(f"{req} got {value!r}, not the element handed to it")
        if self.queue_known:
            # Nobody barges: no earlier task may still be waiting, unserved.
            for other in self.queue():
                if other.seq < req.seq:
                    self.error(f"{req} got {value!r} while {other} still waits")
        self.receive(value, repr(req))

    def check_errors(self) -> None:
        errors = self.errors + self.kind.errors()
        if errors:
            raise AssertionError("\n".join(errors))

    def in_flight(self) -> int:
        """Elements neither with the test, in the reserve nor given back to
        the allocator: handed to tasks that have not run yet."""
        assert self.pool is not None
        kind = self.kind
        return kind.made() - kind.disposed() - len(self.held) - self.pool.curr_nr

    def check_settled(self) -> None:
        """What holds once every pending task is parked."""
        self.check_errors()
        pool = self.pool
        assert pool is not None
        pending = self.pending()
        in_flight = self.in_flight()
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
        headroom=st.integers(0, 2),
        raises=st.booleans(),
        short=st.booleans(),
        mode=st.sampled_from(MODES),
        take=st.integers(0, 4),
    )
    def init_pool(
        self,
        min_nr: int,
        extra: int,
        headroom: int,
        raises: bool,
        short: bool,
        mode: str,
        take: int,
    ) -> None:
        kind = self.kind
        self.pool = kind.build(min_nr, extra, headroom, raises, short)
        kind.watch(self.held_ids)
        self.failures_base = kind.failures()
        assert self.pool.min_nr == self.pool.curr_nr == min_nr
        assert kind.made() - kind.disposed() == min_nr  # the reserve, no more
        assert self.pool.waiters == 0 and not self.pool.closed
        # Start out short of memory, holding elements: where waiting begins.
        if kind.switchable:
            kind.set_mode(mode)
        for _ in range(take):
            self.do_alloc_nowait(GFP_NOWAIT)

    # -- the backing allocator ------------------------------------------------

    @precondition(lambda self: self.kind.switchable)
    @rule()
    def allocator_up(self) -> None:
        self.kind.set_mode("up")

    @precondition(lambda self: self.kind.switchable)
    @rule()
    def allocator_down(self) -> None:
        self.kind.set_mode("down")

    @precondition(lambda self: self.kind.switchable)
    @rule(mode=st.sampled_from(["reclaim_only", "high_only"]))
    def allocator_restricted(self, mode: str) -> None:
        self.kind.set_mode(mode)

    @precondition(lambda self: self.kind.supplied)
    @rule(n=st.integers(1, 4))
    def add_supply(self, n: int) -> None:
        self.kind.add_supply(n)

    # -- allocating ----------------------------------------------------------

    def do_alloc_nowait(self, mask: GFP) -> None:
        pool, kind = self.pool, self.kind
        assert pool is not None
        curr, waiters, closed = pool.curr_nr, pool.waiters, pool.closed
        ncalls, nmade = self.ncalls(), kind.made()
        if mask & GFP.DIRECT_RECLAIM:
            with pytest.raises(ValueError):
                pool.alloc_nowait(mask)
            assert self.ncalls() == ncalls and kind.made() == nmade
            return
        if closed:
            with pytest.raises(PoolClosedError):
                pool.alloc_nowait(mask)
            assert self.ncalls() == ncalls and kind.made() == nmade
            return
        fresh = kind.can(mask)
        queue = self.queue() if self.queue_known else None
        element = pool.alloc_nowait(mask)
        blocked = element is None and self.ncalls() == ncalls
        if queue:
            # Nobody overtakes a waiter, and the allocator is not even asked.
            assert blocked, f"alloc_nowait() got {element} past {queue}"
            assert kind.made() == nmade
        elif waiters and blocked:
            pass  # someone may wait that the model has not seen parked yet
        else:
            # The kernel's order, without waiting.
            calls = self.calls_since(ncalls)
            assert calls is None or calls == [mask], calls
            if fresh:
                assert element is not None and kind.made() == nmade + 1
                assert pool.curr_nr == curr
                expected = kind.nth_made(nmade)
                assert expected is None or element is expected
            elif curr:
                assert element is not None and kind.made() == nmade
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
        pool, kind = self.pool, self.kind
        assert pool is not None
        self.settle()
        curr, waiters, closed = pool.curr_nr, pool.waiters, pool.closed
        ncalls, nmade = self.ncalls(), kind.made()
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
            if kind.can(first):
                expect = "fresh"
            elif curr:
                expect = "reserve"
            elif not may_wait:
                expect = "none"
            else:
                calls.append(mask)
                expect = "fresh" if kind.can(mask) else "park"
        if expect == "park" and timeout == 0:
            expect = "timeout"
        req = self.spawn(mask, timeout)
        if expect == "park" and timeout == SHORT:
            expect = "timeout"
            assert req.task is not None
            self.loop.run_until_complete(asyncio.wait([req.task], timeout=10))
        self.settle()
        seen = self.calls_since(ncalls)
        assert seen is None or seen == calls, (seen, calls)
        outcome = req.outcome
        if expect == "park":
            assert not req.harvested and req.parked, req
            assert pool.waiters == waiters + 1
            return
        assert req.harvested, req
        assert outcome is not None
        kind_, value = outcome
        if expect == "closed":
            assert isinstance(value, PoolClosedError), req
        elif expect == "timeout":
            assert isinstance(value, AllocTimeoutError), req
            assert pool.waiters == waiters
        elif expect == "none":
            assert kind_ == "elem" and value is None, req
        elif expect == "fresh":
            assert kind_ == "elem" and value is not None, req
            assert kind.made() == nmade + 1 and pool.curr_nr == curr, req
            expected = kind.nth_made(nmade)
            assert expected is None or value is expected, req
        else:
            assert kind_ == "elem" and value is not None, req
            assert kind.made() == nmade and pool.curr_nr == curr - 1

    # -- the loop ------------------------------------------------------------

    @rule(n=st.integers(1, 3))
    def run_loop(self, n: int) -> None:
        self.step(n)

    @rule()
    def settle_loop(self) -> None:
        self.settle()

    # -- freeing -------------------------------------------------------------

    def free(self, key: int) -> Req | None:
        """free() of the key-th element received, with what the test can see
        beforehand; returns the task the element must go to, when the model
        knows it."""
        pool, kind = self.pool, self.kind
        assert pool is not None
        curr, min_nr, waiters, closed = (
            pool.curr_nr,
            pool.min_nr,
            pool.waiters,
            pool.closed,
        )
        queue = self.queue() if self.queue_known else None
        ndisposed = kind.disposed()
        element = self.release(key)
        pool.free(element)
        self.n_frees += 1
        problem = kind.freed(element)
        if problem is not None:
            self.error(f"free() of {element!r}: {problem}")
        if closed or curr >= min_nr:
            assert kind.disposed() == ndisposed + 1, f"{element} not given back"
            assert pool.curr_nr == curr
            if waiters and not closed:
                self.queue_known = False  # a waiter may be told to retry
            return None
        assert kind.disposed() == ndisposed, f"{element} given back to the allocator"
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
        """Free the i-th element held (in the order received), or None."""
        pool = self.pool
        assert pool is not None
        if i is None:
            before = pool.stats()
            ndisposed = self.kind.disposed()
            pool.free(None)
            assert pool.stats() == before
            assert self.kind.disposed() == ndisposed
        elif self.held:
            self.free(_pick(sorted(self.held), i))

    @rule(i=st.none() | st.integers(0, 1_000_000), steps=st.integers(0, 1))
    def free_held(self, i: int | None, steps: int) -> None:
        self.do_free(i)
        if steps:
            self.step(steps)

    @precondition(lambda self: self.kind.tracked)
    @rule(what=st.sampled_from(["stranger", "slice", "freed"]), i=st.integers(0, 99))
    def free_refused(self, what: str, i: int) -> None:
        """A free the pools of aiomempool.pools refuse, changing nothing: of
        an element they never handed out, a slice of one held, or one freed
        and not handed out since (to the allocator, the reserve, or a
        waiter that has not run yet)."""
        pool, kind = self.pool, self.kind
        assert pool is not None
        if what == "stranger":
            element = kind.stranger()
        elif what == "slice" and kind.size and self.held:
            element = self.held[_pick(sorted(self.held), i)][: kind.size // 2]
        elif what == "freed" and self.freed_ids:
            element = _pick(list(self.freed_ids.values()), i)
        else:
            return
        before = (
            pool.stats(),
            pool.curr_nr,
            pool.waiters,
            kind.made(),
            kind.disposed(),
            kind.failures(),
            self.ncalls(),
        )
        with pytest.raises(InvalidFreeError):
            pool.free(element)
        after = (
            pool.stats(),
            pool.curr_nr,
            pool.waiters,
            kind.made(),
            kind.disposed(),
            kind.failures(),
            self.ncalls(),
        )
        assert after == before, (what, before, after)

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
            what = action[0]
            if what == "spawn":
                self.spawn(action[1], action[2])
            elif what == "free":
                self.do_free(action[1])
            elif what == "cancel":
                self.do_cancel(action[1])
            elif what == "nowait":
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
        if not queue or pool.curr_nr or not self.held:
            return
        curr = pool.curr_nr
        key = _pick(sorted(self.held), i)
        element = self.held[key]
        woken = self.free(key)
        assert woken is queue[0]
        assert queue[0].task is not None
        queue[0].task.cancel()
        queue[0].cancelled = True
        served = [queue[0]]
        for _ in range(more):
            if not self.held:
                break
            got = self.free(min(self.held))
            if got is not None:
                served.append(got)
        self.queue_known = False  # until the cancelled task has run
        rest = [r for r in queue if r not in served]
        self.settle()
        outcome = queue[0].outcome
        assert queue[0].task.cancelled() or isinstance(
            outcome and outcome[1], asyncio.CancelledError
        )
        # The cancelled task's element went on to the first waiter left.
        if rest:
            outcome = rest[0].outcome
            assert outcome is not None and outcome[0] == "elem", rest[0]
            assert self.same(outcome[1], element), (rest[0], element)
        else:
            assert pool.curr_nr >= curr + 1

    @precondition(lambda self: self.held)
    @rule(i=st.integers(0, 1_000_000))
    def timeout_races_free(self, i: int) -> None:
        """A lone waiter's deadline passes while the loop is stopped; one
        loop iteration runs the timer (and maybe the task); then a free.
        Either the task took the element in time, or it timed out and the
        element is in the reserve."""
        pool, kind = self.pool, self.kind
        assert pool is not None
        self.settle()
        if (
            pool.closed
            or pool.waiters
            or pool.curr_nr
            or kind.can(GFP_KERNEL)
            or kind.can(GFP_NOWAIT)
            or not self.held
        ):
            return
        req = self.spawn(GFP_KERNEL, SHORT)
        self.step(1)  # it parks: nothing to take
        if req.harvested:  # the machine is so slow that it timed out already
            assert req.outcome is not None
            assert isinstance(req.outcome[1], AllocTimeoutError), req
            return
        assert pool.stats().waiters == 1
        time.sleep(SHORT * 3)
        self.loop.call_soon(self.loop.stop)
        self.loop.run_forever()
        self.harvest()
        key = _pick(sorted(self.held), i)
        element = self.release(key)
        pool.free(element)
        self.n_frees += 1
        self.settle()
        assert req.harvested, req
        assert req.outcome is not None
        if req.outcome[0] == "elem" and self.same(req.outcome[1], element):
            assert pool.curr_nr == 0
        else:
            assert isinstance(req.outcome[1], AllocTimeoutError), req
            assert pool.curr_nr == 1, "the element freed after the deadline was lost"

    # -- resizing and closing -------------------------------------------------

    @rule(new_min_nr=st.integers(1, 6))
    def resize(self, new_min_nr: int) -> None:
        pool, kind = self.pool, self.kind
        assert pool is not None
        curr, min_nr, waiters, closed = (
            pool.curr_nr,
            pool.min_nr,
            pool.waiters,
            pool.closed,
        )
        ncalls, nmade, ndisposed = self.ncalls(), kind.made(), kind.disposed()
        queue = self.queue() if self.queue_known else None
        if closed:
            with pytest.raises(PoolClosedError):
                pool.resize(new_min_nr)
            assert self.ncalls() == ncalls and kind.made() == nmade
            assert pool.min_nr == min_nr
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
            assert raised is None and kind.made() == nmade, (
                f"resize({new_min_nr}) from min_nr={min_nr} with curr_nr={curr} "
                f"called alloc_fn {self.calls_since(ncalls)} and raised {raised!r}"
            )
            assert self.calls_since(ncalls) in (None, [])
            assert pool.min_nr == new_min_nr
            assert pool.curr_nr == min(curr, new_min_nr)
            assert kind.disposed() == ndisposed + curr - pool.curr_nr
            return
        need = new_min_nr - curr
        room = kind.room(GFP_KERNEL)
        if room is not None and room < need:
            with pytest.raises(MemoryError):
                pool.resize(new_min_nr)
            made = kind.made() - nmade
            calls = self.calls_since(ncalls)
            assert calls is None or calls == [GFP_KERNEL] * (made + 1), calls
            assert kind.disposed() == ndisposed + made  # all or nothing
            assert pool.min_nr == min_nr and pool.curr_nr == curr
            return
        pool.resize(new_min_nr)
        calls = self.calls_since(ncalls)
        assert calls is None or calls == [GFP_KERNEL] * need, calls
        assert kind.made() == nmade + need
        assert kind.disposed() == ndisposed
        assert pool.min_nr == new_min_nr
        handed = curr + need - pool.curr_nr
        assert 0 <= handed <= waiters
        if not waiters:
            assert handed == 0
        if queue:
            # New elements go to the waiters first, in order.
            assert handed >= min(need, len(queue))
            for n, req in zip(range(nmade, nmade + need), queue, strict=False):
                element = kind.nth_made(n)
                req.promised = ANY if element is None else element

    @precondition(lambda self: self.steps >= 12)
    @rule()
    def close(self) -> None:
        pool, kind = self.pool, self.kind
        assert pool is not None
        curr, closed = pool.curr_nr, pool.closed
        ndisposed = kind.disposed()
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
        assert kind.disposed() == ndisposed + (0 if closed else curr)
        pool.close()  # idempotent
        assert kind.disposed() == ndisposed + (0 if closed else curr)

    # -- what holds after every step ------------------------------------------

    @invariant()
    def consistent(self) -> None:
        self.steps += 1
        self.check_always()

    def check_always(self) -> None:
        pool, kind = self.pool, self.kind
        if pool is None:
            return
        self.check_errors()
        assert pool.curr_nr <= pool.min_nr
        pending = self.pending()
        in_flight = self.in_flight()
        assert 0 <= in_flight <= len(pending), (in_flight, pending)
        assert pool.waiters <= len(pending)
        stats = pool.stats()
        assert stats.curr_nr == pool.curr_nr and stats.waiters == pool.waiters
        assert stats.min_nr == pool.min_nr
        assert stats.outstanding == len(self.held) == stats.allocs - stats.frees
        assert stats.allocs == self.n_allocs
        assert stats.frees == self.n_frees
        assert stats.timeouts == self.n_timeouts
        assert stats.alloc_fn_failures == kind.failures() - self.failures_base
        assert stats.reserve_hits <= stats.allocs
        assert stats.waits >= sum(r.parked for r in self.reqs)
        assert stats.max_wait_s >= 0
        if pool.closed:
            assert pool.curr_nr == 0
        if kind.size:
            # Nobody else wrote into what the test holds: no buffer is out
            # twice, and none was wiped or poisoned while held.
            for key, element in self.held.items():
                assert bytes(element) == pattern(key, kind.size), (key, element)


# -- the machine on every kind of pool, on both loops ---------------------------

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("kind", KINDS, ids=[kind.name for kind in KINDS])
def test_every_pool_kind_keeps_the_contract_of_the_model(
    kind: type[Kind], loop: str
) -> None:
    # A class of its own per case: hypothesis keys its example database by
    # the machine's name.
    machine = type(
        f"MempoolMachine[{kind.name}, {loop}]",
        (MempoolMachine,),
        {"kind_type": kind, "new_loop": staticmethod(LOOPS[loop])},
    )
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=int(os.environ.get("AIOMEMPOOL_EXAMPLES", kind.examples)),
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
