"""A SlabCache driven by hypothesis against a model of its contract.

The model predicts every outcome exactly: which slot ``alloc()`` returns
(the free list is a stack; a new slab pushes its slots so that slot 0 is on
top), when it returns None (``max_objects`` for ordinary masks,
``max_objects + headroom`` for ``GFP.HIGH``), when a new slab is made and
of what size, and which slabs ``shrink()`` gives back. A slot is named by
its block and its offset in it, found from the addresses of the views.

Every buffer the test holds carries a pattern of its own, written when it
was handed out and checked after every step and when it is freed: a slot
handed out twice, or two views that overlap, would break one of them.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from helpers import address
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from aiomempool import GFP_ATOMIC, GFP_KERNEL, GFP_NOWAIT
from aiomempool.errors import DoubleFreeError, ForeignElementError
from aiomempool.slab import SlabCache

MASKS = [GFP_NOWAIT, GFP_KERNEL, GFP_ATOMIC]
Slot = tuple[int, int]  # (id of the slab's block, offset in it)


class Held:
    """A buffer the test holds, where it lives and what was written in it."""

    def __init__(self, view: memoryview, slot: Slot, pattern: bytes) -> None:
        self.view = view
        self.slot = slot
        self.pattern = pattern
        self.start = address(view)


@settings(max_examples=200, stateful_step_count=50, deadline=None)
class SlabMachine(RuleBasedStateMachine):
    """One SlabCache and the model: see the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self.cache: SlabCache | None = None
        self.held: list[Held] = []
        #: id(block) -> [block, objects in it]; the model's slabs, kept alive.
        self.slabs: dict[int, list[Any]] = {}
        self.free_slots: list[Slot] = []  # the free list, top at the end
        self.freed: dict[Slot, memoryview] = {}  # views the test gave back
        self.serial = 0
        self.allocs = self.frees = self.failures = self.high_water = 0

    @initialize(
        object_size=st.sampled_from([1, 8, 24, 4096]),
        per_slab=st.none() | st.integers(1, 5),
        max_objects=st.none() | st.integers(1, 12),
        headroom=st.none() | st.integers(0, 3),
        page_aligned=st.booleans(),
    )
    def build(
        self,
        object_size: int,
        per_slab: int | None,
        max_objects: int | None,
        headroom: int | None,
        page_aligned: bool,
    ) -> None:
        if max_objects is None and headroom:
            headroom = None
        page_aligned = page_aligned and object_size == 4096
        if per_slab is None and object_size < 4096:
            per_slab = 7  # the default would make slabs of a MiB of tiny slots
        self.cache = SlabCache(
            object_size,
            objects_per_slab=per_slab,
            max_objects=max_objects,
            headroom=headroom,
            page_aligned=page_aligned,
        )
        if max_objects is None:
            self.limit = self.cap = 1 << 60
        else:
            self.limit = max_objects
            default = max(1, max_objects // 16)
            self.cap = max_objects + (default if headroom is None else headroom)

    @property
    def total(self) -> int:
        return sum(n for _, n in self.slabs.values())

    def pattern(self) -> bytes:
        assert self.cache is not None
        self.serial += 1
        unit = self.serial.to_bytes(4, "little")
        size = self.cache.object_size
        return (unit * (size // 4 + 1))[:size]

    def slot_of(self, view: memoryview) -> Slot:
        block = view.obj
        return id(block), address(view) - address(block)

    # -- rules ----------------------------------------------------------------

    @rule(mask=st.sampled_from(MASKS))
    def alloc(self, mask: Any) -> None:
        cache = self.cache
        assert cache is not None
        out = len(self.held)
        allowed = out < self.limit or (mask is GFP_ATOMIC and out < self.cap)
        view = cache.alloc(mask)
        if not allowed:
            assert view is None
            self.failures += 1
            return
        assert view is not None and len(view) == cache.object_size
        block = view.obj
        if not self.free_slots:  # a new slab, its slot 0 on top
            assert id(block) not in self.slabs
            count = min(cache.objects_per_slab, self.cap - self.total)
            assert memoryview(block).nbytes == count * cache.object_size
            self.slabs[id(block)] = [block, count]
            size = cache.object_size
            self.free_slots += [(id(block), i * size) for i in reversed(range(count))]
        slot = self.slot_of(view)
        assert slot == self.free_slots.pop(), "not the most recently freed slot"
        self.freed.pop(slot, None)
        pattern = self.pattern()
        view[:] = pattern
        self.held.append(Held(view, slot, pattern))
        self.allocs += 1
        self.high_water = max(self.high_water, len(self.held))

    @precondition(lambda self: self.held)
    @rule(i=st.integers(0, 1_000))
    def free(self, i: int) -> None:
        assert self.cache is not None
        held = self.held.pop(i % len(self.held))
        assert held.view.tobytes() == held.pattern
        self.cache.free(held.view)
        self.free_slots.append(held.slot)
        self.freed[held.slot] = held.view
        self.frees += 1

    @rule(
        kind=st.sampled_from(["double", "slice", "copy", "stranger"]),
        i=st.integers(0, 1_000),
    )
    def bad_free(self, kind: str, i: int) -> None:
        cache = self.cache
        assert cache is not None
        expected: type[Exception] = ForeignElementError
        if kind == "double":
            if not self.freed:
                return
            bad: Any = list(self.freed.values())[i % len(self.freed)]
            expected = DoubleFreeError
        elif kind in ("slice", "copy"):
            if not self.held:
                return
            view = self.held[i % len(self.held)].view
            bad = view[1:] if kind == "slice" else memoryview(bytearray(view))
        else:
            bad = memoryview(bytearray(cache.object_size))
        before = cache.stats()
        try:
            cache.free(bad)
        except expected:
            pass
        else:
            raise AssertionError(f"free() of a {kind} did not raise")
        assert cache.stats() == before

    @rule()
    def shrink(self) -> None:
        assert self.cache is not None
        busy = {h.slot[0] for h in self.held}
        gone = {key for key in self.slabs if key not in busy}
        assert self.cache.shrink() == len(gone)
        for key in gone:
            del self.slabs[key]
        self.free_slots = [s for s in self.free_slots if s[0] not in gone]
        for slot in [s for s in self.freed if s[0] in gone]:
            view = self.freed.pop(slot)
            assert not self.cache.owns(view)
            try:
                view[0]
            except ValueError:
                pass  # released, as it should be
            else:
                raise AssertionError("a view of a slab given back still works")

    # -- what holds after every step ------------------------------------------

    @invariant()
    def consistent(self) -> None:
        cache = self.cache
        if cache is None:
            return
        size = cache.object_size
        slots = [h.slot for h in self.held]
        assert len(set(slots)) == len(slots), "a slot handed out twice"
        spans = sorted((h.start, h.start + size) for h in self.held)
        for (_, end), (start, _) in pairwise(spans):
            assert end <= start, "two held views overlap"
        for h in self.held:
            assert h.view.tobytes() == h.pattern
            assert cache.owns(h.view)
        assert len(self.held) <= self.cap
        total = self.total
        stats = cache.stats()
        assert stats.objects_in_use == len(self.held)
        assert stats.objects_free == total - len(self.held) == len(self.free_slots)
        assert stats.slabs == len(self.slabs)
        assert stats.bytes_reserved == total * size
        assert stats.allocs == self.allocs and stats.frees == self.frees
        assert stats.alloc_failures == self.failures
        assert stats.high_water == self.high_water

    def teardown(self) -> None:
        cache = self.cache
        if cache is None:
            return
        cache.close()
        for h in self.held:
            assert h.view.tobytes() == h.pattern  # close() leaves them alone
            cache.free(h.view)
        assert cache.stats().slabs == 0
        for h in self.held:
            try:
                h.view[0]
            except ValueError:
                pass
            else:
                raise AssertionError("a view outlived close() and its free()")


TestSlabState = SlabMachine.TestCase
