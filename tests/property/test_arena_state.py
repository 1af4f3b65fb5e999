"""BufferArena driven by hypothesis against a model of its contract.

One model (``ArenaModel``) follows the arena as its code is documented to
work, and two machines drive a real arena beside it:

* ``ArenaMachine``, synchronous: ``alloc_nowait()`` with ``GFP_NOWAIT`` and
  ``GFP_ATOMIC``, ``alloc(timeout=0)`` and ``alloc_bulk()`` with masks that
  never wait (each run to completion on the machine's loop), ``free()``,
  ``free_bulk()``, double frees, frees of foreign views (a stranger, a
  copy, a slice of a buffer held), and ``shrink()``; and, when nothing is
  out, ``alloc_bulk(bulk_limit(n), n)``, which the budget guarantees.
* ``ArenaWaitMachine``, the same and tasks that wait in ``alloc()`` and
  ``alloc_bulk()``, across sizes, some with timeouts, some cancelled (also
  after a free handed them their buffer and before they ran), while frees
  arrive.

The model predicts every outcome exactly, down to the slot a buffer comes
from: each class has its cache's free list (a stack: a new slab pushes its
slots so that slot 0 is on top) and its pool's reserve (a stack too); a
class short of a slot grows a slab within the budget, cut down to what it
holds (``GFP.HIGH`` may use the headroom), after the other classes gave
back their wholly free slabs, newest first, the classes asked in turn from
where the last reclaim stopped; then it takes from its reserve; a freed
buffer refills its class's reserve first. So an ``alloc_nowait()`` that
returns None is one the model says cannot be served: no free slot in the
class, no room in the budget even once the other classes' wholly free slabs
went, and an empty reserve; each such None is also checked against the
arena's own stats. A slot is named by its slab (a serial number) and its
index; where a slab lives is learned from the address of the first of its
slots handed out, and every later slot of it must be where the model says.

Every buffer held carries a pattern of its own, written when it was handed
out and checked after every step: a slot handed out twice, or two buffers
that overlap, would break one. After every step the arena's stats must be
the model's: the bytes of slabs (never above ``max_bytes`` plus the
headroom, nor above ``max_bytes`` while no ``GFP.HIGH`` request was made),
the high-water mark, the bytes in use (the class size of each buffer held),
each class's slabs, free slots, reserve and counters.

Waiting runs on a loop of ``asyncio.new_event_loop()`` whose clock is the
machine's (``VirtualClock``): timers fire only when a rule moves the clock
on, so that a timeout expires between two known steps, and every deadline
is distinct (each task's timeout has an offset of its own, far below the
clock's steps). The model keeps the arena's two lines, each first come
first served across sizes: urgent requests (``GFP.HIGH``) in one, served
first and queueing behind urgent waiters only, every other in the other;
a waiter that cannot be served stops everyone behind it. It predicts which
waiter each free, cancellation and timeout serves, with which slots, in
which order the tasks then run, and what a cancelled task that had been
handed its buffers passes on. Beside the model, two checks that need
none: no task is served while a task that arrived before it still waits
(no barging, also not by ``alloc_nowait()``; an urgent request passes
ordinary waiters only), and at rest the next waiter to be served could not
be, from what the stats show (no lost wake-up). Every run of the loop is
bounded (``settle()``), and at the end every buffer is freed: nothing out,
nobody waiting.

The bugs the machines found are pinned down at the end of the file, each
by the smallest scenario that showed it: xfail(strict=True) while it is
open, the machines stepping around it (``KNOWN``) so as to look for others;
a plain test once it is fixed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import mmap
from collections import deque
from collections.abc import Coroutine
from itertools import pairwise
from typing import Any, TypeVar

import pytest
from helpers import address
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
    BufferArena,
    DoubleFreeError,
    ForeignElementError,
    buffer_arena,
)
from aiomempool.arena import ARENA_SLAB_BYTES

T = TypeVar("T")

#: Class sizes of the synchronous machine: small classes of many buffers
#: per slab, odd sizes, a class above a slab's 64 KiB, a lone class.
SYNC_CLASSES = [
    (64, 256, 1024),
    (100, 4096),
    (96, 640, 3000),
    (512, 70000),
    (4096, 16384, 65536),
    (65536,),
]
#: Class sizes of the waiting machine: few buffers per slab, so that the
#: budget is spent in a few steps.
WAIT_CLASSES = [(4096, 16384, 65536), (8192, 30000), (2048, 70000), (65536,)]
NOWAIT_MASKS = [
    GFP_NOWAIT,
    GFP_ATOMIC,
    GFP_NOWAIT | GFP.NOWARN,
    GFP_ATOMIC | GFP.NOWARN,
]
#: Masks of the waiting tasks; the last two never wait.
TASK_MASKS = [
    GFP_KERNEL,
    GFP_KERNEL,
    GFP_KERNEL | GFP.HIGH,
    GFP_KERNEL | GFP.NOWARN,
    GFP_NOWAIT | GFP.NOWARN,
    GFP_ATOMIC | GFP.NOWARN,
]
#: The arena's retry timer never fires: the virtual clock stays far below.
RETRY_INTERVAL = 3600.0
#: A timeout that never expires within a run.
LONG = 1000.0
#: Timeouts that expire when the clock is moved on past them, and the
#: steps the clock moves by.
SHORT = [0.5, 1.0, 2.0]
ADVANCE = [0.25, 0.75, 1.5, 3.0]
#: Each task's timeout is offset by its number times this: the clock and
#: the timeouts being multiples of 1/4 s, no two deadlines are equal, nor
#: is one equal to the clock (with fewer than 2**18 tasks).
OFFSET = 2.0**-20
#: The most buffers one bulk rule asks for (bulk_limit() can be thousands).
BULK_MAX = 64

Slot = tuple[int, int]  # (the serial of its slab, its index in the slab)

#: Bugs the machines step around, each pinned down by an xfail test at the
#: end of the file.
KNOWN: set[str] = set()


def pattern(key: int, nbytes: int) -> bytes:
    unit = key.to_bytes(4, "little")
    return (unit * (nbytes // 4 + 1))[:nbytes]


def per_slab(size: int) -> int:
    return max(1, ARENA_SLAB_BYTES // size)


def slab_bytes(size: int) -> int:
    return per_slab(size) * size


# -- the model ----------------------------------------------------------------


class SlabModel:
    """A slab of ``count`` slots; ``base``, where slot 0 lives, is learned
    when one of its slots is first handed out."""

    __slots__ = ("base", "count", "serial")

    def __init__(self, serial: int, count: int) -> None:
        self.serial = serial
        self.count = count
        self.base: int | None = None


class ClassModel:
    """One size class: its cache's slabs and free list, its pool's reserve,
    and the books of both."""

    def __init__(self, index: int, size: int, min_nr: int) -> None:
        self.index = index
        self.size = size
        self.min_nr = min_nr
        self.per = per_slab(size)
        self.slabs: dict[int, SlabModel] = {}  # by serial, oldest first
        self.free: list[Slot] = []  # the cache's free list, top at the end
        self.reserve: list[Slot] = []  # the pool's reserve, top at the end
        # The cache's books.
        self.high_water = self.cache_frees = self.failures = 0
        # The class pool's books.
        self.allocs = self.frees = self.reserve_hits = 0
        self.waits = self.timeouts = 0

    @property
    def nslots(self) -> int:
        return sum(slab.count for slab in self.slabs.values())

    def wholly_free(self) -> list[SlabModel]:
        """Its slabs whose every slot is on the free list, oldest first."""
        nfree: dict[int, int] = {}
        for serial, _ in self.free:
            nfree[serial] = nfree.get(serial, 0) + 1
        return [s for s in self.slabs.values() if nfree.get(s.serial) == s.count]


class Req:
    """A task in ``alloc()`` or ``alloc_bulk()``: what it asked, what the
    model says of it (``state``) and what it got (``outcome``)."""

    def __init__(
        self,
        key: int,
        cls: ClassModel,
        nbytes: int,
        count: int,
        bulk: bool,
        mask: GFP,
        timeout: float | None,
    ) -> None:
        self.key = key
        self.cls = cls
        self.nbytes = nbytes
        self.count = count
        self.bulk = bulk
        self.mask = mask
        self.timeout = timeout
        self.high = bool(mask & GFP.HIGH)
        self.may_wait = bool(mask & GFP.DIRECT_RECLAIM)
        self.task: asyncio.Task[None] | None = None
        self.outcome: tuple[str, Any] | None = None
        #: Sequence numbers: when the task called the arena, and when the
        #: call returned or raised.
        self.arrival: int | None = None
        self.resumed: int | None = None
        # The model's: new, parked, handed, expiring, then done, none (the
        # mask does not wait), timed_out or cancelled.
        self.state = "new"
        self.slots: list[Slot] = []
        self.from_reserve = 0
        self.cancel = False  # task.cancel() was called
        self.deadline: float | None = None
        self.harvested = False

    def __repr__(self) -> str:
        what = f"bulk {self.count}x" if self.bulk else "alloc"
        return (
            f"Req({self.key}: {what} {self.nbytes} {self.mask!r} "
            f"timeout={self.timeout} {self.state})"
        )


class ArenaModel:
    """The arena as documented: classes under one budget, two lines."""

    def __init__(
        self,
        sizes: tuple[int, ...],
        reserve: list[int],
        max_bytes: int,
        headroom: int,
        debug: bool,
    ) -> None:
        self.limit = max_bytes
        self.cap = max_bytes + headroom
        self.used = self.high_water = 0
        self.next = 0  # the class the next reclaim asks first
        self.debug = debug
        self.high_asked = False  # a GFP.HIGH request was made
        self.classes = [
            ClassModel(i, size, n)
            for i, (size, n) in enumerate(zip(sizes, reserve, strict=True))
        ]
        self.serials = itertools.count()
        self.released: set[int] = set()  # serials of slabs given back
        # Waiting: both lines in arrival order, the tasks counted as parked,
        # and the task steps the loop will run, in order.
        self.now = 0.0
        self.line: list[Req] = []
        self.nparked = 0
        self.steps: deque[tuple[str, Req]] = deque()
        # An urgent request took while ordinary ones waited, and the line
        # was not served since (KNOWN).
        self.passed = False
        for c in self.classes:  # the reserves, made class by class
            for _ in range(c.min_nr):
                slot = self.cache_alloc(c, high=False)
                assert slot is not None
                c.reserve.append(slot)

    def class_of(self, nbytes: int) -> ClassModel:
        return next(c for c in self.classes if c.size >= nbytes)

    def room(self, high: bool) -> int:
        return (self.cap if high else self.limit) - self.used

    def slot_state(self, c: ClassModel, slot: Slot) -> str:
        if slot[0] in self.released:
            return "released"
        if slot in c.free:
            return "free"
        if slot in c.reserve:
            return "reserve"
        return "out"

    # -- the caches and the budget ----------------------------------------

    def release(self, c: ClassModel, slab: SlabModel) -> None:
        del c.slabs[slab.serial]
        c.free = [s for s in c.free if s[0] != slab.serial]
        self.used -= slab.count * c.size
        self.released.add(slab.serial)

    def reclaimable_bytes(self, but: ClassModel) -> int:
        """Bytes a reclaim for ``but`` finds: the wholly free slabs of every
        other class."""
        return sum(
            slab.count * c.size
            for c in self.classes
            if c is not but
            for slab in c.wholly_free()
        )

    def give_back_slabs(self, c: ClassModel, nbytes: int) -> int:
        """SlabCache._reclaim(): wholly free slabs, newest first, until
        ``nbytes`` are back."""
        got = 0
        for slab in reversed(c.wholly_free()):
            if got >= nbytes:
                break
            self.release(c, slab)
            got += slab.count * c.size
        return got

    def reclaim(self, nbytes: int, asker: ClassModel) -> None:
        """Budget.reclaim(): the other classes in turn, from ``next``."""
        got = 0
        n = len(self.classes)
        for step in range(n):
            index = (self.next + step) % n
            member = self.classes[index]
            if member is asker:
                continue
            got += self.give_back_slabs(member, nbytes - got)
            if got >= nbytes:
                self.next = (index + 1) % n
                break

    def grow(self, c: ClassModel, high: bool) -> bool:
        size = c.size
        room = self.room(high)
        if room < c.per * size:
            self.reclaim(c.per * size - room, c)
            room = self.room(high)
        count = min(c.per, room // size)
        if count < 1:
            return False
        slab = SlabModel(next(self.serials), count)
        c.slabs[slab.serial] = slab
        self.used += count * size
        self.high_water = max(self.high_water, self.used)
        c.free.extend((slab.serial, i) for i in reversed(range(count)))
        return True

    def cache_alloc(self, c: ClassModel, high: bool) -> Slot | None:
        self.high_asked = self.high_asked or high
        if not c.free and not self.grow(c, high):
            c.failures += 1
            return None
        slot = c.free.pop()
        c.high_water = max(c.high_water, c.nslots - len(c.free))
        return slot

    # -- the class pools ----------------------------------------------------

    def gather(
        self, c: ClassModel, count: int, high: bool
    ) -> tuple[list[Slot], int] | None:
        """Mempool._gather(): the cache first, then the reserve; all or
        none (what the cache gave goes back to it)."""
        got: list[Slot] = []
        while len(got) < count:
            slot = self.cache_alloc(c, high)
            if slot is None:
                break
            got.append(slot)
        need = count - len(got)
        if need > len(c.reserve):
            c.free.extend(got)
            c.cache_frees += len(got)
            return None
        got.extend(c.reserve.pop() for _ in range(need))
        return got, need

    def take(self, c: ClassModel, count: int, high: bool) -> list[Slot] | None:
        got = self.gather(c, count, high)
        if got is None:
            return None
        c.allocs += count
        c.reserve_hits += got[1]
        return got[0]

    def give_back(self, c: ClassModel, slot: Slot) -> None:
        if len(c.reserve) < c.min_nr:
            c.reserve.append(slot)
        else:
            c.free.append(slot)
            c.cache_frees += 1

    # -- the arena ----------------------------------------------------------

    @property
    def gate(self) -> bool:
        return self.debug or self.nparked > 0

    def live(self, urgent: bool) -> list[Req]:
        """The live waiters of one line, first come first."""
        return [
            r
            for r in self.line
            if r.state == "parked" and not r.cancel and r.high == urgent
        ]

    def clear(self, high: bool) -> bool:
        """BufferArena._clear(): nobody waits that a request must queue
        behind (an urgent one, GFP.HIGH, queues behind urgent ones only)."""
        if self.live(urgent=True):
            return False
        return high or not self.live(urgent=False)

    def alloc_nowait(self, c: ClassModel, count: int, high: bool) -> list[Slot] | None:
        """alloc_nowait(), or alloc()/alloc_bulk() with a mask that never
        waits: nothing while a task waits that it must queue behind."""
        if not self.clear(high):
            return None
        got = self.take(c, count, high)
        if high and self.nparked:
            self.serve()  # what the urgent take left is the ordinary line's
        return got

    def free(self, c: ClassModel, slot: Slot) -> None:
        c.frees += 1
        self.give_back(c, slot)
        if self.nparked:
            self.serve()

    def shrink(self) -> int:
        got = 0
        for c in self.classes:
            for slab in c.wholly_free():
                self.release(c, slab)
                got += slab.count * c.size
        return got

    # -- waiting --------------------------------------------------------------

    def serve(self) -> None:
        """BufferArena._serve(): the first live waiter, the urgent line's
        first, for as long as it can have all it asked for; one that
        cannot stops everyone behind it, the ordinary line too."""
        self.passed = False
        for urgent in (True, False):
            while True:
                live = self.live(urgent)
                if not live:
                    break
                first = live[0]
                got = self.gather(first.cls, first.count, first.high)
                if got is None:
                    return
                first.slots, first.from_reserve = got
                first.state = "handed"
                self.line.remove(first)
                self.nparked -= 1
                self.steps.append(("wake", first))

    def start(self, req: Req) -> None:
        """The task's first step: alloc() or alloc_bulk() is called."""
        c = req.cls
        if (
            not req.bulk
            and req.mask is GFP_KERNEL
            and req.timeout is None
            and not self.gate
        ):
            got = self.take(c, 1, high=False)  # the hot path's alloc_nowait()
            if got is not None:
                req.slots, req.state = got, "done"
                return
        if self.clear(req.high):
            got = self.take(c, req.count, req.high)
            if req.high and self.nparked:
                self.serve()  # what the urgent take left is the line's
            if got is not None:
                req.slots, req.state = got, "done"
                return
        if not req.may_wait:
            req.state = "none"
        elif req.timeout is not None and req.timeout <= 0:
            c.timeouts += 1
            req.state = "timed_out"
        else:
            req.state = "parked"
            self.line.append(req)
            self.nparked += 1
            c.waits += 1
            if req.timeout is not None:
                req.deadline = self.now + req.timeout

    def cancel(self, req: Req) -> None:
        """task.cancel(): a parked task's future is cancelled now, and it
        leaves when it runs; a handed one passes its buffers on then."""
        req.cancel = True
        if req.state == "parked":
            self.steps.append(("leave", req))

    def expire(self) -> None:
        """The timers due at ``now``, in deadline order: each waiter still
        parked times out, and the line is served."""
        due = sorted(
            (r for r in self.line if r.deadline is not None and r.deadline < self.now),
            key=lambda r: r.deadline or 0.0,
        )
        for req in due:
            if req.state != "parked" or req.cancel:
                continue
            req.state = "expiring"
            self.line.remove(req)
            self.nparked -= 1
            self.steps.append(("expired", req))
            self.serve()

    def run_steps(self) -> None:
        """The task steps the loop runs, in the order they were scheduled."""
        while self.steps:
            kind, req = self.steps.popleft()
            c = req.cls
            if kind == "start":
                self.start(req)
            elif kind == "wake" and req.cancel:
                for slot in req.slots:  # passed on to the next in line
                    self.give_back(c, slot)
                req.slots = []
                req.state = "cancelled"
                self.serve()
            elif kind == "wake":
                c.allocs += req.count
                c.reserve_hits += req.from_reserve
                req.state = "done"
            elif kind == "leave":
                self.nparked -= 1
                if req in self.line:
                    self.line.remove(req)
                req.state = "cancelled"
                self.serve()
            else:
                assert kind == "expired"
                c.timeouts += 1
                req.state = "timed_out"


# -- plumbing -----------------------------------------------------------------


class VirtualClock:
    """The clock of a loop made by asyncio.new_event_loop(): it stands
    still until ``advance()``, so that timers fire between known steps."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.now = 0.0
        loop.time = self.time  # type: ignore[method-assign]

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Held:
    """A buffer the test holds: where it lives and what was written in it.
    ``plain``: the view is its slot's own (a whole slot, not a slice, a
    debug view or a watched alias), the one view a stale free cannot be
    told from a free of the buffer's next holder by."""

    __slots__ = ("cls", "key", "nbytes", "pattern", "plain", "slot", "start", "view")

    def __init__(
        self, key: int, cls: ClassModel, slot: Slot, view: memoryview, start: int
    ) -> None:
        self.key = key
        self.cls = cls
        self.slot = slot
        self.view = view
        self.nbytes = len(view)
        self.start = start
        self.pattern = pattern(key, self.nbytes)
        self.plain = self.nbytes == cls.size and isinstance(view.obj, mmap.mmap)


def released(view: memoryview) -> bool:
    try:
        view.nbytes  # noqa: B018
    except ValueError:
        return True
    return False


def aliased(view: memoryview) -> bool:
    """A debug view or a watched alias: a view of a ctypes array on the
    slot, not of the slab's map."""
    try:
        return not isinstance(view.obj, mmap.mmap)
    except ValueError:  # released: debug mode took it back
        return True


# -- the synchronous machine ----------------------------------------------------


class ArenaRules(RuleBasedStateMachine):
    """One arena and the model, and the rules that never wait: the base of
    both machines."""

    class_sets = SYNC_CLASSES

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = VirtualClock(self.loop)
        self.arena: BufferArena | None = None
        self.model: ArenaModel | None = None
        self.zero = False
        self.held: list[Held] = []
        self.freed: list[Held] = []  # the last buffers freed, for double frees
        self.reqs: list[Req] = []
        self.keys = itertools.count(1)  # of the buffers held
        self.req_keys = itertools.count(1)  # of the tasks
        self.seq = itertools.count()

    # -- building -------------------------------------------------------------

    @initialize(data=st.data())
    def build(self, data: st.DataObject) -> None:
        sizes = data.draw(st.sampled_from(self.class_sets), label="classes")
        reserve = data.draw(
            st.lists(st.integers(1, 2), min_size=len(sizes), max_size=len(sizes)),
            label="min_nr",
        )
        extra = data.draw(
            st.sampled_from([0, 4096, 65536, 131072, 200_000])
            | st.integers(0, 4 * ARENA_SLAB_BYTES),
            label="max_bytes beyond the reserves",
        )
        headroom = data.draw(
            st.none() | st.just(0) | st.integers(0, 2 * ARENA_SLAB_BYTES),
            label="headroom",
        )
        self.zero = data.draw(st.booleans(), label="zero_on_free")
        sampling = data.draw(st.sampled_from([None, None, 1, 3]), label="sampling")
        debug = data.draw(st.booleans(), label="debug")
        # What the reserves take when made (whole slabs), and what they may
        # pin once spread (a slab each, at worst): the bulk guarantee's.
        needed = sum(
            -(-n // per_slab(size)) * slab_bytes(size)
            for size, n in zip(sizes, reserve, strict=True)
        )
        pinned = [n * slab_bytes(size) for size, n in zip(sizes, reserve, strict=True)]
        max_bytes = needed + extra
        options: dict[str, Any] = {
            "classes": sizes,
            "min_nr": dict(zip(sizes, reserve, strict=True)),
            "headroom": headroom,
            "zero_on_free": self.zero,
            "leak_sampling": sampling,
            "trim_after": None,
            "retry_interval": RETRY_INTERVAL,
            "debug": debug,
        }
        # A budget that cannot hold the reserves is refused.
        short: type[Exception] = MemoryError if needed - 1 >= sizes[-1] else ValueError
        with pytest.raises(short):
            buffer_arena(needed - 1, **options)
        arena = self.arena = buffer_arena(max_bytes, **options)
        model = self.model = ArenaModel(
            sizes,
            reserve,
            max_bytes,
            max_bytes // 16 if headroom is None else headroom,
            debug,
        )
        assert arena.classes == sizes
        assert arena.max_bytes == max_bytes
        assert arena.headroom == model.cap - model.limit
        for c, pin in zip(model.classes, pinned, strict=True):
            guarantee = max(c.min_nr, (max_bytes - (sum(pinned) - pin)) // c.size)
            assert arena.bulk_limit(c.size) == guarantee
        # Asking for more than the guarantee is refused, changing nothing.
        c = model.classes[-1]
        before = arena.stats()
        with pytest.raises(ValueError, match="count must be"):
            self.run(arena.alloc_bulk(arena.bulk_limit(c.size) + 1, c.size))
        assert arena.stats() == before

    # -- plumbing -------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run one call that never waits to completion on the loop."""
        return self.loop.run_until_complete(coro)

    def draw_size(self, data: st.DataObject) -> tuple[int, ClassModel]:
        """A size, often at the edge of a class, and its class."""
        model = self.model
        assert model is not None and self.arena is not None
        c = data.draw(st.sampled_from(model.classes), label="class")
        lo = 1 if c.index == 0 else model.classes[c.index - 1].size + 1
        nbytes = data.draw(
            st.sampled_from(sorted({lo, c.size})) | st.integers(lo, c.size),
            label="nbytes",
        )
        assert self.arena.good_size(nbytes) == c.size
        return nbytes, c

    def receive(self, c: ClassModel, slot: Slot, view: Any, nbytes: int) -> None:
        """A buffer handed out for ``slot``: exactly ``nbytes`` writable
        bytes, where the model says the slot lives."""
        assert type(view) is memoryview, view
        assert len(view) == view.nbytes == nbytes, (len(view), nbytes)
        assert not view.readonly and view.contiguous and view.format == "B"
        start = address(view)
        slab = c.slabs[slot[0]]
        if slab.base is None:
            slab.base = start - slot[1] * c.size
        assert start == slab.base + slot[1] * c.size, (
            f"a buffer of class {c.size} is not slot {slot} where the model expects it"
        )
        if self.zero:
            assert view.tobytes() == bytes(nbytes), "zero_on_free: not zeros"
        held = Held(next(self.keys), c, slot, view, start)
        view[:] = held.pattern
        self.held.append(held)

    def release_held(self, i: int) -> Held:
        held = self.held.pop(i % len(self.held))
        assert held.view.tobytes() == held.pattern
        self.freed.append(held)
        del self.freed[:-24]
        return held

    def sync(self) -> None:
        """Hook: run the loop until every task is at rest (the waiting
        machine's); nothing waits here."""

    def waiting(self) -> list[Req]:
        """Hook: the tasks waiting now (the waiting machine's): none."""
        return []

    # -- rules ----------------------------------------------------------------

    @rule(data=st.data(), mask=st.sampled_from(NOWAIT_MASKS))
    def alloc_nowait(self, data: st.DataObject, mask: GFP) -> None:
        self.do_alloc_nowait(data, mask)

    def do_alloc_nowait(self, data: st.DataObject, mask: GFP) -> bool:
        arena, model = self.arena, self.model
        assert arena is not None and model is not None
        nbytes, c = self.draw_size(data)
        high = bool(mask & GFP.HIGH)
        before = arena.stats()
        clear = model.clear(high)
        elsewhere = model.reclaimable_bytes(but=c)
        expected = model.alloc_nowait(c, 1, high)
        view = arena.alloc_nowait(nbytes, mask)
        waiting = self.waiting()
        if any(r.high for r in waiting) or (waiting and not high):
            assert view is None, "alloc_nowait() served ahead of a waiting task"
        if expected is None:
            assert view is None, "alloc_nowait() served what the model cannot"
            if clear:
                # Nothing in the class, and no room even once every other
                # class gave back its wholly free slabs.
                stats = before.classes[c.index]
                assert stats.slab.objects_free == 0
                assert stats.pool.curr_nr == 0
                limit = model.cap if high else model.limit
                assert limit - before.bytes_reserved + elsewhere < c.size
            self.sync()
            return False
        assert view is not None, "alloc_nowait() failed where the model serves"
        self.receive(c, expected[0], view, nbytes)
        self.sync()
        return True

    @rule(data=st.data())
    def alloc_no_wait_timeout(self, data: st.DataObject) -> None:
        """alloc(timeout=0): served now, or AllocTimeoutError at once."""
        arena, model = self.arena, self.model
        assert arena is not None and model is not None
        nbytes, c = self.draw_size(data)
        expected = model.alloc_nowait(c, 1, high=False)
        if expected is None:
            c.timeouts += 1
            with pytest.raises(AllocTimeoutError):
                self.run(arena.alloc(nbytes, timeout=0))
        else:
            view = self.run(arena.alloc(nbytes, timeout=0))
            self.receive(c, expected[0], view, nbytes)
        self.sync()

    @rule(data=st.data(), mask=st.sampled_from(NOWAIT_MASKS))
    def alloc_bulk(self, data: st.DataObject, mask: GFP) -> None:
        arena, model = self.arena, self.model
        assert arena is not None and model is not None
        nbytes, c = self.draw_size(data)
        limit = min(arena.bulk_limit(nbytes), BULK_MAX)
        count = data.draw(st.integers(1, limit) | st.just(limit), label="count")
        expected = model.alloc_nowait(c, count, bool(mask & GFP.HIGH))
        views = self.run(arena.alloc_bulk(count, nbytes, mask))
        if expected is None:
            assert views is None, "alloc_bulk() served what the model cannot"
        else:
            assert views is not None, "alloc_bulk() failed where the model serves"
            assert len(views) == count
            for slot, view in zip(expected, views, strict=True):
                self.receive(c, slot, view, nbytes)
        self.sync()

    @precondition(
        lambda self: not self.held and not any(r.state == "parked" for r in self.reqs)
    )
    @rule(data=st.data())
    def bulk_guarantee(self, data: st.DataObject) -> None:
        """With every buffer back, alloc_bulk(bulk_limit(n), n) never fails:
        what the budget holds of a class less what the other reserves pin."""
        arena, model = self.arena, self.model
        assert arena is not None and model is not None
        nbytes, c = self.draw_size(data)
        count = arena.bulk_limit(nbytes)
        if count > 600:
            return  # thousands of tiny buffers: slow, and nothing more to see
        expected = model.alloc_nowait(c, count, high=False)
        assert expected is not None, "the model breaks the bulk guarantee"
        views = self.run(arena.alloc_bulk(count, nbytes, GFP_NOWAIT))
        assert views is not None, f"alloc_bulk({count}) failed: the guarantee"
        for slot, view in zip(expected, views, strict=True):
            self.receive(c, slot, view, nbytes)
        mine = self.held[-count:]
        del self.held[-count:]
        for held in mine:
            assert held.view.tobytes() == held.pattern
            model.free(c, held.slot)
        arena.free_bulk(h.view for h in mine)
        self.freed.extend(mine)
        del self.freed[:-24]
        self.sync()

    @precondition(lambda self: self.held)
    @rule(i=st.integers(0, 1_000))
    def free(self, i: int) -> None:
        assert self.arena is not None and self.model is not None
        held = self.release_held(i)
        self.arena.free(held.view)
        self.model.free(held.cls, held.slot)
        self.sync()

    @precondition(lambda self: self.held)
    @rule(picks=st.lists(st.integers(0, 1_000), min_size=1, max_size=6))
    def free_bulk(self, picks: list[int]) -> None:
        assert self.arena is not None and self.model is not None
        gone = [self.release_held(i) for i in picks if self.held]
        for held in gone:
            self.model.free(held.cls, held.slot)
        self.arena.free_bulk([h.view for h in gone])
        self.sync()

    @precondition(lambda self: self.freed)
    @rule(i=st.integers(0, 1_000))
    def double_free(self, i: int) -> None:
        """A second free of a buffer: refused, changing nothing. A stale
        free of a slot's own view (its slot handed out again since) is not
        told from a free of its next holder's outside debug mode, as the
        docs say: only the others are tried."""
        arena, model = self.arena, self.model
        assert arena is not None and model is not None
        old = self.freed[i % len(self.freed)]
        where = model.slot_state(old.cls, old.slot)
        if old.plain and where == "out":
            return
        before = arena.stats()
        try:
            arena.free(old.view)
        except DoubleFreeError:
            pass
        except ForeignElementError:
            # A watched alias's second free, or a view of a slab given back,
            # is not told from a foreign view's; a debug view's is.
            assert not model.debug
            assert where == "released" or aliased(old.view)
        else:
            raise AssertionError(f"a double free ({where}) was taken")
        assert arena.stats() == before
        self.sync()

    @rule(
        kind=st.sampled_from(["stranger", "copy", "head", "tail", "same", "bytes"]),
        i=st.integers(0, 1_000),
        data=st.data(),
    )
    def foreign_free(self, kind: str, i: int, data: st.DataObject) -> None:
        """A free of what the arena never handed out: refused, changing
        nothing (a slice or a copy of a buffer held, a stranger of a class
        size)."""
        arena = self.arena
        assert arena is not None
        bad: Any
        if kind in ("stranger", "bytes") or not self.held:
            nbytes, _ = self.draw_size(data)
            bad = memoryview(bytearray(nbytes)) if kind != "bytes" else bytes(nbytes)
        else:
            view = self.held[i % len(self.held)].view
            if kind == "copy":
                bad = memoryview(bytearray(view))
            elif kind == "head" and len(view) > 1:
                bad = view[:-1]
            elif kind == "tail" and len(view) > 1:
                bad = view[1:]
            else:
                bad = view[:]  # the same bytes, another view
        before = arena.stats()
        try:
            arena.free(bad)
        except (DoubleFreeError, ForeignElementError):
            pass
        else:
            raise AssertionError(f"a free of a {kind} was taken")
        finally:
            del bad  # a slice kept alive would pin a debug view (quarantine)
        assert arena.stats() == before
        self.sync()

    @rule()
    def shrink(self) -> None:
        assert self.arena is not None and self.model is not None
        assert self.arena.shrink() == self.model.shrink()
        self.sync()

    # -- what holds after every step --------------------------------------------

    @invariant()
    def consistent(self) -> None:
        arena, model = self.arena, self.model
        if arena is None or model is None:
            return
        # Exactly the bytes asked for, each buffer still holding its pattern,
        # no two of them sharing memory (whole slots counted).
        spans = []
        for h in self.held:
            assert len(h.view) == h.nbytes
            assert h.view.tobytes() == h.pattern, f"buffer {h.key} was overwritten"
            spans.append((h.start, h.start + h.cls.size))
        spans.sort()
        for (_, end), (start, _) in pairwise(spans):
            assert end <= start, "two buffers held overlap"
        # Neither do the slabs the model has seen.
        slabs = sorted(
            (slab.base, slab.base + slab.count * c.size)
            for c in model.classes
            for slab in c.slabs.values()
            if slab.base is not None
        )
        for (_, end), (start, _) in pairwise(slabs):
            assert end <= start, "two live slabs overlap"
        stats = arena.stats()
        assert stats.bytes_reserved == model.used
        assert stats.bytes_reserved <= model.cap
        if not model.high_asked:
            assert stats.bytes_reserved <= model.limit
        assert stats.high_water_bytes == model.high_water
        assert stats.max_bytes == model.limit
        assert stats.headroom_bytes == model.cap - model.limit
        assert stats.total.outstanding == len(self.held)
        assert stats.bytes_in_use == sum(h.cls.size for h in self.held)
        assert stats.bytes_requested == sum(h.nbytes for h in self.held)
        parked = [r for r in model.line if r.state == "parked"]
        assert stats.waiters == arena.waiters == model.nparked == len(parked)
        for c, cs in zip(model.classes, stats.classes, strict=True):
            assert cs.size == c.size
            held = sum(h.cls is c for h in self.held)
            pool, slab = cs.pool, cs.slab
            assert pool.min_nr == c.min_nr
            assert pool.curr_nr == len(c.reserve)
            assert pool.outstanding == held
            assert pool.allocs == c.allocs and pool.frees == c.frees
            assert pool.reserve_hits == c.reserve_hits
            assert pool.waits == c.waits and pool.timeouts == c.timeouts
            assert pool.waiters == sum(r.cls is c for r in parked)
            assert slab.slabs == len(c.slabs)
            assert slab.objects_free == len(c.free)
            assert (
                slab.objects_in_use == c.nslots - len(c.free) == held + len(c.reserve)
            )
            assert slab.bytes_reserved == c.nslots * c.size
            assert slab.high_water == c.high_water
            assert slab.frees == c.cache_frees
            assert slab.alloc_failures == c.failures
        assert stats.total.outstanding == sum(
            cs.pool.outstanding for cs in stats.classes
        )

    def finish(self) -> None:
        """Hook: the waiting machine's tasks end before the teardown."""

    def teardown(self) -> None:
        try:
            arena, model = self.arena, self.model
            if arena is None or model is None:
                return
            self.finish()
            for held in self.held:
                assert held.view.tobytes() == held.pattern
                arena.free(held.view)
                model.free(held.cls, held.slot)
            self.held.clear()
            self.consistent()
            stats = arena.stats()
            assert stats.total.outstanding == 0 and stats.bytes_in_use == 0
            assert stats.waiters == 0
            # Every slab but those of the reserves goes back.
            assert arena.shrink() == model.shrink()
            assert arena.stats().bytes_reserved == model.used
            arena.close()
            assert arena.stats().bytes_reserved == 0
        finally:
            self.loop.close()


@settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
class ArenaMachine(ArenaRules):
    """One arena and the model, nobody waiting: see the module docstring."""


TestArenaState = ArenaMachine.TestCase


# -- the waiting machine ----------------------------------------------------------


@settings(
    max_examples=120,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
class ArenaWaitMachine(ArenaRules):
    """The arena with tasks waiting in alloc() and alloc_bulk(): see the
    module docstring."""

    class_sets = WAIT_CLASSES

    def spawn(self, data: st.DataObject) -> Req:
        """A task that calls alloc() or alloc_bulk(); it runs when the loop
        next runs."""
        arena, model = self.arena, self.model
        assert arena is not None and model is not None
        nbytes, c = self.draw_size(data)
        mask = data.draw(st.sampled_from(TASK_MASKS), label="mask")
        timeout = data.draw(
            st.sampled_from([None, None, LONG, 0.0, *SHORT]), label="timeout"
        )
        bulk = data.draw(st.booleans(), label="bulk")
        count = 1
        if bulk:
            count = data.draw(st.integers(1, min(4, arena.bulk_limit(nbytes))))
        key = next(self.req_keys)
        if timeout is not None and timeout > 0:
            timeout += key * OFFSET
        req = Req(key, c, nbytes, count, bulk, mask, timeout)

        async def run() -> None:
            req.arrival = next(self.seq)
            try:
                got: Any
                if bulk:
                    got = await arena.alloc_bulk(count, nbytes, mask, timeout=timeout)
                elif mask is GFP_KERNEL and timeout is None:
                    got = await arena.alloc(nbytes)  # the hot path
                else:
                    got = await arena.alloc(nbytes, mask, timeout=timeout)
            except (Exception, asyncio.CancelledError) as exc:
                req.outcome = ("exc", exc)
            else:
                req.outcome = ("ok", got)
            req.resumed = next(self.seq)

        req.task = self.loop.create_task(run())
        self.reqs.append(req)
        model.steps.append(("start", req))
        return req

    def settle(self) -> None:
        """Run the loop until nothing moves: every task left is parked."""
        assert self.arena is not None
        prev = None
        still = 0
        for _ in range(200):
            self.loop.run_until_complete(asyncio.sleep(0))
            fp = (
                sum(r.task is not None and r.task.done() for r in self.reqs),
                sum(r.arrival is not None for r in self.reqs),
                self.arena.waiters,
            )
            if fp == prev:
                still += 1
                if still >= 2:
                    return
            else:
                prev, still = fp, 0
        raise AssertionError("the loop never settled")

    def sync(self) -> None:
        """Run the loop to rest and the model's steps with it; then every
        task must be where the model says, with the buffers it says."""
        model = self.model
        assert model is not None
        if not self.reqs:
            return
        self.settle()
        model.run_steps()
        for req in self.reqs:
            if req.harvested:
                continue
            task = req.task
            assert task is not None
            if req.state == "parked":
                assert not task.done() and req.outcome is None, req
                continue
            assert task.done() and req.outcome is not None, req
            req.harvested = True
            kind, value = req.outcome
            if req.state == "done":
                assert kind == "ok" and value is not None, (req, value)
                views = value if req.bulk else [value]
                assert len(views) == req.count
                for slot, view in zip(req.slots, views, strict=True):
                    self.receive(req.cls, slot, view, req.nbytes)
            elif req.state == "none":
                assert kind == "ok" and value is None, (req, value)
            elif req.state == "timed_out":
                assert isinstance(value, AllocTimeoutError), (req, value)
            else:
                assert req.state == "cancelled", req
                assert isinstance(value, asyncio.CancelledError), (req, value)
        self.check_at_rest()

    def check_at_rest(self) -> None:
        """What needs no model: first come, first served, and no waiter
        parked while the first could be served."""
        arena, model = self.arena, self.model
        assert arena is not None and model is not None
        # A task still parked now has waited since it arrived: nobody that
        # arrived after it may have been served meanwhile, but for urgent
        # requests (GFP.HIGH) ahead of an ordinary waiter.
        parked = self.waiting()
        if not parked:
            return
        urgent = [r for r in parked if r.high]
        for first in (urgent[:1], [r for r in parked if not r.high][:1]):
            for waiter in first:
                for late in self.reqs:
                    if late.outcome is None or late.outcome[0] != "ok":
                        continue
                    if late.outcome[1] is None:  # a mask that never waits
                        continue
                    if late.high and not waiter.high:
                        continue  # an urgent request passes ordinary waiters
                    assert late.arrival is not None
                    assert waiter.arrival is not None
                    assert late.arrival < waiter.arrival, (
                        f"{late} was served while {waiter}, who came first, waits"
                    )
        # The next to be served (the first urgent waiter, else the first
        # ordinary one) could not be, from what the arena has.
        if model.passed and "urgent take leaves slots" in KNOWN:
            return
        first = (urgent or parked)[0]
        c = first.cls
        stats = arena.stats()
        cs = stats.classes[c.index]
        limit = model.cap if first.high else model.limit
        room = max(0, limit - stats.bytes_reserved) // c.size
        can = cs.slab.objects_free + cs.pool.curr_nr + room
        assert can < first.count, f"lost wake-up: {first} could have {can}"
        room = max(0, limit - model.used + model.reclaimable_bytes(but=c)) // c.size
        can = len(c.free) + len(c.reserve) + room
        assert can < first.count, f"lost wake-up: {first} could have {can}"

    def waiting(self) -> list[Req]:
        """The tasks that called the arena and have not returned: at rest,
        those parked."""
        return [r for r in self.reqs if r.arrival is not None and r.resumed is None]

    def finish(self) -> None:
        model = self.model
        assert model is not None
        for req in self.reqs:
            if req.task is not None and not req.task.done():
                req.task.cancel()
                model.cancel(req)
        self.sync()
        assert all(r.task is not None and r.task.done() for r in self.reqs)

    # -- rules ------------------------------------------------------------------

    @rule(data=st.data())
    def start_task(self, data: st.DataObject) -> None:
        self.spawn(data)
        self.sync()

    @rule(data=st.data(), n=st.integers(2, 4))
    def start_tasks(self, data: st.DataObject, n: int) -> None:
        """Several tasks arrive in one turn of the loop."""
        for _ in range(n):
            self.spawn(data)
        self.sync()

    @rule(data=st.data(), mask=st.sampled_from(NOWAIT_MASKS))
    def spend(self, data: st.DataObject, mask: GFP) -> None:
        """alloc_nowait() in one class until it fails: the budget spent."""
        for _ in range(100):
            if not self.do_alloc_nowait(data, mask):
                break

    @precondition(lambda self: any(r.state == "parked" for r in self.reqs))
    @rule(i=st.integers(0, 1_000))
    def cancel(self, i: int) -> None:
        model = self.model
        assert model is not None
        parked = [r for r in self.reqs if r.state == "parked"]
        req = parked[i % len(parked)]
        assert req.task is not None
        req.task.cancel()
        model.cancel(req)
        self.sync()

    @precondition(
        lambda self: self.held and any(r.state == "parked" for r in self.reqs)
    )
    @rule(i=st.integers(0, 1_000), j=st.integers(0, 1_000))
    def cancel_then_free(self, i: int, j: int) -> None:
        """A waiter is cancelled, and a buffer freed before it runs: the
        free skips it."""
        arena, model = self.arena, self.model
        assert arena is not None and model is not None
        parked = [r for r in self.reqs if r.state == "parked"]
        req = parked[j % len(parked)]
        assert req.task is not None
        req.task.cancel()
        model.cancel(req)
        held = self.release_held(i)
        arena.free(held.view)
        model.free(held.cls, held.slot)
        self.sync()

    @precondition(
        lambda self: self.held and any(r.state == "parked" for r in self.reqs)
    )
    @rule(i=st.integers(0, 1_000), which=st.integers(0, 3))
    def free_then_cancel_woken(self, i: int, which: int) -> None:
        """A free hands buffers to waiters; one of them is cancelled before
        it runs: it passes them on, to the next in line."""
        arena, model = self.arena, self.model
        assert arena is not None and model is not None
        held = self.release_held(i)
        arena.free(held.view)
        model.free(held.cls, held.slot)
        woken = [r for r in self.reqs if r.state == "handed"]
        if woken:
            req = woken[which % len(woken)]
            assert req.task is not None
            req.task.cancel()
            model.cancel(req)
        self.sync()

    @precondition(lambda self: self.held)
    @rule(i=st.integers(0, 1_000))
    def free_twice(self, i: int) -> None:
        """A buffer freed twice before the loop runs, while tasks wait: the
        first free may hand its slot to a waiter that has not run yet; the
        second is refused all the same, changing nothing."""
        arena, model = self.arena, self.model
        assert arena is not None and model is not None
        held = self.release_held(i)
        arena.free(held.view)
        model.free(held.cls, held.slot)
        before = arena.stats()
        try:
            arena.free(held.view)
        except DoubleFreeError:
            pass
        except ForeignElementError:
            assert aliased(held.view) and not model.debug  # a watched alias
        else:
            raise AssertionError("a second free was taken")
        assert arena.stats() == before
        self.sync()

    @precondition(lambda self: self.held)
    @rule(data=st.data(), i=st.integers(0, 1_000))
    def arrive_then_free(self, data: st.DataObject, i: int) -> None:
        """A task is created, and a buffer freed before the task first runs:
        the free serves those already in line; the newcomer comes after."""
        assert self.arena is not None and self.model is not None
        self.spawn(data)
        held = self.release_held(i)
        self.arena.free(held.view)
        self.model.free(held.cls, held.slot)
        self.sync()

    @precondition(
        lambda self: any(r.state == "parked" and r.deadline for r in self.reqs)
    )
    @rule(dt=st.sampled_from(ADVANCE))
    def advance_clock(self, dt: float) -> None:
        """Time passes: the timeouts due fire, in deadline order."""
        model = self.model
        assert model is not None
        self.clock.advance(dt)
        model.now = self.clock.now
        model.expire()
        self.sync()

    @precondition(
        lambda self: (
            self.held and any(r.state == "parked" and r.deadline for r in self.reqs)
        )
    )
    @rule(dt=st.sampled_from(ADVANCE), i=st.integers(0, 1_000))
    def deadline_passes_then_free(self, dt: float, i: int) -> None:
        """A waiter's deadline passes while the loop is not running, and a
        free comes first: it serves the waiter, whose timer then finds it
        served (a deadline is checked when the loop runs its timer)."""
        assert self.arena is not None and self.model is not None
        self.clock.advance(dt)
        self.model.now = self.clock.now
        held = self.release_held(i)
        self.arena.free(held.view)
        self.model.free(held.cls, held.slot)
        self.model.expire()
        self.sync()


TestArenaWaiting = ArenaWaitMachine.TestCase


# -- bugs the machines found, pinned down -----------------------------------------


def small_arena(**options: Any) -> BufferArena:
    options.setdefault("classes", (64, 256, 1024))
    return buffer_arena(4 * ARENA_SLAB_BYTES, headroom=0, trim_after=None, **options)


@pytest.mark.parametrize("how", ["debug mode", "after shrink()"])
def test_a_second_free_of_a_released_view_is_refused(how: str) -> None:
    # Found: len() of the released view raised a plain ValueError.
    if how == "debug mode":
        # Debug mode releases every view it takes back.
        arena = small_arena(debug=True)
        view = arena.alloc_nowait(256)
        assert view is not None
        arena.free(view)
    else:
        # A class of one buffer per slab: its reserve in slab 0, the buffer
        # in slab 1, which shrink() gives back once it is free.
        arena = small_arena(classes=(65536,))
        view = arena.alloc_nowait(65536)
        assert view is not None
        arena.free(view)
        assert arena.shrink() == 65536
    assert released(view)
    before = arena.stats()
    try:
        with pytest.raises((DoubleFreeError, ForeignElementError)):
            arena.free(view)
        assert arena.stats() == before
    finally:
        arena.close()


def test_a_slab_grown_after_a_fruitless_reclaim_is_given_back_when_empty() -> None:
    # Found: a reclaim that found nothing in a class deferred its next look
    # there until as many frees came back as its fullest slab missed; a slab
    # the class grew since, wholly free after fewer frees, stayed hidden,
    # and an allocation of another class failed beside it (a waiter waited
    # for the retry tick).
    arena = buffer_arena(
        3 * ARENA_SLAB_BYTES, classes=(4096, 65536), headroom=0, trim_after=None
    )

    def alloc(nbytes: int) -> memoryview | None:
        return arena.alloc_nowait(nbytes, GFP_NOWAIT | GFP.NOWARN)

    held = [alloc(4096) for _ in range(15)]  # slab 0 full, with its reserve
    big = [alloc(65536), alloc(65536)]  # a slab more; the reserve, after a
    assert None not in held and None not in big  # fruitless look at 4 KiB
    arena.free_bulk(big)  # the reserve refilled, a 64 KiB slab wholly free
    arena.free(alloc(4096))  # a 4 KiB slab in its stead, wholly free again
    stats = arena.stats()
    assert stats.bytes_reserved == stats.max_bytes
    assert stats.classes[0].slab.slabs == 2
    assert stats.classes[0].slab.objects_free == 16
    assert stats.classes[1].pool.curr_nr == 1
    try:
        # The first from the 4 KiB class's wholly free slab, the second
        # from the reserve.
        held += [alloc(65536), alloc(65536)]
        assert None not in held, "None, with a wholly free 64 KiB slab elsewhere"
        assert arena.stats().classes[0].slab.slabs == 1
    finally:
        arena.free_bulk(v for v in held if v is not None)
        arena.close()


def test_an_immediate_double_free_is_refused_while_a_task_waits() -> None:
    # Found: a slot handed to a waiter stayed in its pool's holder set until
    # the waiter ran, so a second free was taken and the slot handed out
    # twice (to the waiter and to the next caller).
    async def scenario() -> None:
        # Two slabs of one buffer: one for the reserve, one more.
        arena = buffer_arena(
            2 * ARENA_SLAB_BYTES, classes=(65536,), headroom=0, trim_after=None
        )
        a = arena.alloc_nowait(65536)
        b = arena.alloc_nowait(65536)  # the reserve's
        assert a is not None and b is not None
        assert arena.alloc_nowait(65536, GFP_NOWAIT | GFP.NOWARN) is None
        waiter = asyncio.ensure_future(arena.alloc(65536))
        await asyncio.sleep(0)
        assert arena.waiters == 1
        arena.free(a)  # handed to the waiter, which has not run yet
        try:
            before = arena.stats()
            with pytest.raises(DoubleFreeError):
                arena.free(a)
            assert arena.stats() == before
        finally:
            got = await asyncio.wait_for(waiter, 2)
            again = arena.alloc_nowait(65536, GFP_NOWAIT | GFP.NOWARN)
            assert again is None or address(again) != address(got), (
                "the waiter and the next caller share one buffer"
            )
            arena.free_bulk(v for v in (got, b, again) if v is not None)
            assert arena.stats().total.outstanding == 0
            arena.close()

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()


@pytest.mark.parametrize("whole", [False, True], ids=["a slice", "a whole slot"])
def test_a_double_free_is_told_after_the_first_let_its_slab_go_to_a_waiter(
    whole: bool,
) -> None:
    # Found (the waiting machine): the first free of a buffer emptied its
    # slab, which went at once to a waiter of another class (the budget
    # spent); a second free of the stale view, its map no longer a slab
    # of the arena's, was refused as a foreign buffer, not as a double free.
    async def scenario() -> None:
        # Three slabs: the 4 KiB class's first (its reserve's slot in it),
        # the 64 KiB reserve's, and one more.
        arena = buffer_arena(
            3 * ARENA_SLAB_BYTES, classes=(4096, 65536), headroom=0, trim_after=None
        )

        def alloc(nbytes: int) -> memoryview | None:
            return arena.alloc_nowait(nbytes, GFP_NOWAIT | GFP.NOWARN)

        held = [alloc(4096) for _ in range(15)]  # the first 4 KiB slab full
        stale = alloc(4096 if whole else 4000)  # the third slab, alone in it
        reserve = alloc(65536)  # the 64 KiB reserve's
        assert None not in held and stale is not None and reserve is not None
        waiter = asyncio.ensure_future(arena.alloc(65536))
        await asyncio.sleep(0)
        assert arena.waiters == 1
        try:
            arena.free(stale)  # its slab wholly free: it goes to the waiter
            assert waiter.done() or arena.waiters == 0
            assert arena.stats().classes[0].slab.slabs == 1
            before = arena.stats()
            # A whole slot's view is released with its slab: refused as a
            # buffer the arena does not have out (a released view tells
            # nothing of its memory). A slice keeps the map alive.
            refusals = (
                (DoubleFreeError, ForeignElementError) if whole else DoubleFreeError
            )
            with pytest.raises(refusals):
                arena.free(stale)
            assert arena.stats() == before
        finally:
            got = await asyncio.wait_for(waiter, 2)
            arena.free_bulk([*held, reserve, got])
            assert arena.stats().total.outstanding == 0
            arena.close()

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()


@pytest.mark.parametrize("options", [{"debug": True}, {"leak_sampling": 1}])
def test_bytes_requested_is_what_was_asked_for_in_debug_mode_and_sampled(
    options: dict[str, Any],
) -> None:
    # Found: only the slices in _lent were counted short of their slot.
    arena = small_arena(**options)
    view = arena.alloc_nowait(100)  # from the class of 256
    assert view is not None and len(view) == 100
    try:
        stats = arena.stats()
        assert stats.bytes_in_use == 256
        assert stats.bytes_requested == 100
    finally:
        arena.free(view)
        arena.close()


@pytest.mark.parametrize("urgent", ["alloc_nowait", "alloc_bulk"])
def test_an_ordinary_waiter_is_served_from_the_slots_an_urgent_request_left(
    urgent: str,
) -> None:
    async def scenario() -> None:
        # One class of 2 KiB, 32 a slab: one slab, all out (the reserve's
        # too); a headroom of 4 slots.
        arena = buffer_arena(65536, classes=(2048,), headroom=8192, trim_after=None)
        held = [arena.alloc_nowait(2048, GFP_NOWAIT | GFP.NOWARN) for _ in range(32)]
        waiter = asyncio.ensure_future(arena.alloc(2048))
        try:
            await asyncio.sleep(0)
            assert arena.waiters == 1
            if urgent == "alloc_nowait":
                # A slab of 4 in the headroom: one taken, three left free.
                held.append(arena.alloc_nowait(2048, GFP_ATOMIC))
            else:
                # 4 made in the headroom, a fifth not: all given back.
                assert await arena.alloc_bulk(5, 2048, GFP_ATOMIC) is None
            # Handed to the waiter at once, from what the urgent take left.
            assert arena.stats().classes[0].slab.objects_free >= 2
            for _ in range(3):
                await asyncio.sleep(0)
            assert waiter.done(), "the waiter waits beside free slots"
            held.append(waiter.result())
        finally:
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
            arena.free_bulk(v for v in held if v is not None)
            assert arena.stats().total.outstanding == 0
            arena.close()

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()
