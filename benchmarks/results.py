"""The figures of one run, the targets they are held to, and the machine."""

from __future__ import annotations

import datetime
import os
import platform
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from benchmarks.cases import AIOMEMPOOL, FLOOR, buffer_group_key, kib
from benchmarks.harness import Config, Handoff

# The labels the targets and the summary look rows up by.
FLOOR_LABEL = "list pop() + append() (the floor)"
NOWAIT_LABEL = "aiomempool alloc_nowait() + free()"
QUEUE_LABEL = "asyncio.Queue await get() + put_nowait()"
ALLOC_LABEL = "aiomempool await alloc() + free()"
RESERVE_LABEL = "aiomempool await alloc() + free(), from the reserve"
ELEMENT_LABEL = "aiomempool async with element()"
READ_BASELINE_LABEL = "asyncio.BufferedProtocol, a 64 KiB buffer per connection"
READ_POOLED_LABEL = "aiomempool PooledBufferedProtocol on buffer_pool(65536)"
MEMPOOL = "aiomempool Mempool"
QUEUE = "asyncio.Queue"
SEMAPHORE = "asyncio.Semaphore + list"
CONDITION = "asyncio.Condition + list"


# The groups of a spread of sizes (benchmarks/arena.py): their keys, what
# each spread is called in the targets and the waste lines, and the labels
# (the same in both groups).
SPREAD_KEY = "buffers-spread"
UNIFORM_SPREAD_KEY = "buffers-uniform"
SPREAD_NAMES = {SPREAD_KEY: "log-uniform", UNIFORM_SPREAD_KEY: "uniform"}
SPREAD_BYTEARRAY_LABEL = "bytearray(n)"
SPREAD_QUEUE_LABEL = "asyncio.Queue of bytearray(65536), one size for every n"
SPREAD_CLASS_POOLS_LABEL = (
    "hand-rolled: a buffer_pool per class, alloc_nowait() + free()"
)
ARENA_NOWAIT_LABEL = "aiomempool buffer_arena alloc_nowait(n) + free()"
ARENA_ALLOC_LABEL = "aiomempool buffer_arena await alloc(n) + free()"


def bytearray_label(size: int) -> str:
    return f"bytearray({size})"


def queue_buffer_label(size: int) -> str:
    return f"asyncio.Queue of bytearray({size})"


def buffer_nowait_label(size: int) -> str:
    return f"aiomempool buffer_pool({size}) alloc_nowait() + free()"


def buffer_alloc_label(size: int) -> str:
    return f"aiomempool buffer_pool({size}) await alloc() + free()"


@dataclass(frozen=True)
class Row:
    """One implementation's median, or why there is none."""

    label: str
    family: str
    median: float | None
    status: str = ""
    note: str = ""


@dataclass(frozen=True)
class GroupResult:
    key: str
    title: str
    unit: str
    reference: str
    rows: list[Row]

    def row(self, label: str) -> Row | None:
        return next((r for r in self.rows if r.label == label), None)

    def ratio(self, row: Row) -> float | None:
        ref = self.row(self.reference)
        if row.median is None or ref is None or not ref.median:
            return None
        return row.median / ref.median


@dataclass(frozen=True)
class HandoffRow:
    label: str
    family: str
    figures: Handoff | None
    status: str = ""
    note: str = ""


@dataclass
class LoopResult:
    """Everything measured on one event loop."""

    name: str
    loop_class: str
    groups: list[GroupResult]
    handoff: list[HandoffRow]

    def group(self, key: str) -> GroupResult | None:
        return next((g for g in self.groups if g.key == key), None)

    def contender(self, label: str) -> Handoff | None:
        row = next((r for r in self.handoff if r.label == label), None)
        return None if row is None else row.figures


@dataclass(frozen=True)
class Target:
    """A ratio an issue of the project asks for, and whether it was met."""

    loop: str
    text: str
    ratio: float | None
    bound: float
    higher_is_better: bool

    @property
    def passed(self) -> bool | None:
        if self.ratio is None:
            return None
        if self.higher_is_better:
            return self.ratio >= self.bound
        return self.ratio <= self.bound

    @property
    def bound_text(self) -> str:
        return f"{'>=' if self.higher_is_better else '<='} {self.bound:.3g}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def targets(
    loop: LoopResult,
    buffer_sizes: tuple[int, ...],
    spread_keys: Iterable[str] = (),
    compiled: bool = False,
) -> list[Target]:
    """The speed targets of the core, buffers and arena issues, on one loop
    (the arena's on each group of ``spread_keys``, its line naming the
    spread), then the compiled fast path's: those of the build measured
    (``compiled``)."""

    def uncontended(group: str, ours: str, theirs: str) -> float | None:
        g = loop.group(group)
        a, b = (None, None) if g is None else (g.row(ours), g.row(theirs))
        return None if a is None or b is None else _ratio(a.median, b.median)

    def contended(field: str, theirs: str) -> float | None:
        a, b = loop.contender(MEMPOOL), loop.contender(theirs)
        if a is None or b is None:
            return None
        return _ratio(getattr(a, field), getattr(b, field))

    # (what, measured ratio, bound, higher is better)
    specs = [
        (
            "await alloc() + free() / asyncio.Queue get() + put_nowait()",
            uncontended("await", ALLOC_LABEL, QUEUE_LABEL),
            0.75,
            False,
        ),
        (
            "alloc_nowait() + free() / list pop() + append()",
            uncontended("sync", NOWAIT_LABEL, FLOOR_LABEL),
            8.0,
            False,
        ),
        (
            "contended throughput / asyncio.Queue",
            contended("throughput", QUEUE),
            0.65,
            True,
        ),
        (
            "contended throughput / asyncio.Semaphore + list",
            contended("throughput", SEMAPHORE),
            0.75,
            True,
        ),
        (
            "contended max wait / asyncio.Semaphore + list",
            contended("max_ns", SEMAPHORE),
            1.5,
            False,
        ),
    ]
    for size in buffer_sizes:
        key = f"buffers-{size}"
        # The buffers issue: at least 3 times faster than bytearray(n) at
        # 64 KiB, 10 times at 256 KiB.
        speedup = {65536: 3, 262144: 10}.get(size)
        if speedup is not None:
            specs.append(
                (
                    f"buffer_pool alloc_nowait() + free() / bytearray({size})",
                    uncontended(key, buffer_nowait_label(size), bytearray_label(size)),
                    1 / speedup,
                    False,
                )
            )
        if size > 65536:
            continue  # the issue compares with a Queue at 4 and 64 KiB
        specs.append(
            (
                f"buffer_pool await alloc() + free() / Queue of {kib(size)} buffers",
                uncontended(key, buffer_alloc_label(size), queue_buffer_label(size)),
                1.0,
                False,
            )
        )
    for key in spread_keys:
        # The arena issue: over a spread of sizes, at least 10 times faster
        # than bytearray(n); awaited, at most 0.8 times the Queue pool of one
        # size (64 KiB bytearrays, 64 in flight).
        name = SPREAD_NAMES.get(key, key)
        specs += [
            (
                f"arena alloc_nowait(n) + free() / bytearray(n), {name} spread",
                uncontended(key, ARENA_NOWAIT_LABEL, SPREAD_BYTEARRAY_LABEL),
                0.1,
                False,
            ),
            (
                f"arena await alloc(n) + free() / Queue of 64 KiB, {name} spread",
                uncontended(key, ARENA_ALLOC_LABEL, SPREAD_QUEUE_LABEL),
                0.8,
                False,
            ),
        ]
    specs += _build_specs(uncontended, contended, compiled)
    return [Target(loop.name, *spec) for spec in specs]


def _build_specs(
    uncontended: Callable[[str, str, str], float | None],
    contended: Callable[[str, str], float | None],
    compiled: bool,
) -> list[tuple[str, float | None, float, bool]]:
    """The compiled fast path issue's targets for the build measured: the
    compiled build's bounds, or the pure build's bound on element()."""
    element = uncontended("await", ELEMENT_LABEL, QUEUE_LABEL)
    if not compiled:
        return [("pure: async with element() / asyncio.Queue", element, 1.0, False)]
    big, small = buffer_group_key(65536), buffer_group_key(4096)
    return [
        (
            "compiled: alloc_nowait() + free() / list pop() + append()",
            uncontended("sync", NOWAIT_LABEL, FLOOR_LABEL),
            4.0,
            False,
        ),
        (
            "compiled: await alloc() + free() / asyncio.Queue",
            uncontended("await", ALLOC_LABEL, QUEUE_LABEL),
            0.45,
            False,
        ),
        (
            "compiled: await alloc() from the reserve / asyncio.Queue",
            uncontended("await", RESERVE_LABEL, QUEUE_LABEL),
            0.8,
            False,
        ),
        (
            "compiled: buffer_pool alloc_nowait() + free() / bytearray(65536)",
            uncontended(big, buffer_nowait_label(65536), bytearray_label(65536)),
            1 / 12,
            False,
        ),
        (
            "compiled: buffer_pool await alloc() + free() / Queue of 64 KiB",
            uncontended(big, buffer_alloc_label(65536), queue_buffer_label(65536)),
            0.5,
            False,
        ),
        (
            "compiled: contended throughput / asyncio.Queue",
            contended("throughput", QUEUE),
            1.0,
            True,
        ),
        (
            "compiled: contended max wait / asyncio.Semaphore + list",
            contended("max_ns", SEMAPHORE),
            1.2,
            False,
        ),
        ("compiled: async with element() / asyncio.Queue", element, 0.6, False),
        (
            "compiled: buffer_pool alloc_nowait() + free() / bytearray(4096)",
            uncontended(small, buffer_nowait_label(4096), bytearray_label(4096)),
            1.0,
            False,
        ),
    ]


@dataclass(frozen=True)
class Closest:
    """An aiomempool figure beside the best alternative's."""

    loop: str
    what: str
    ours: float
    alternative: str
    theirs: float
    unit: str
    higher_is_better: bool


def closest(loop: LoopResult) -> list[Closest]:
    """For every aiomempool figure, the alternative that came closest: the
    fastest one measured in the same group (the floor is no alternative)."""
    out = []
    for group in loop.groups:
        rivals = [
            r
            for r in group.rows
            if r.family not in (AIOMEMPOOL, FLOOR) and r.median is not None
        ]
        for row in group.rows:
            if row.family != AIOMEMPOOL or row.median is None or not rivals:
                continue
            best = min(rivals, key=lambda r: r.median or 0.0)
            assert best.median is not None
            out.append(
                Closest(
                    loop.name,
                    row.label,
                    row.median,
                    best.label,
                    best.median,
                    group.unit,
                    higher_is_better=False,
                )
            )
    ours = loop.contender(MEMPOOL)
    waiting = [r for r in loop.handoff if r.family != AIOMEMPOOL and r.figures]
    if ours is not None and waiting:
        fastest = max(waiting, key=lambda r: r.figures.throughput if r.figures else 0)
        fairest = min(waiting, key=lambda r: r.figures.max_ns if r.figures else 0)
        assert fastest.figures is not None and fairest.figures is not None
        out.append(
            Closest(
                loop.name,
                "contended throughput",
                ours.throughput,
                fastest.label,
                fastest.figures.throughput,
                "cycles/s",
                higher_is_better=True,
            )
        )
        out.append(
            Closest(
                loop.name,
                "contended max wait",
                ours.max_ns / 1e3,
                fairest.label,
                fairest.figures.max_ns / 1e3,
                "us",
                higher_is_better=False,
            )
        )
    return out


@dataclass
class Run:
    """One run of the whole benchmark."""

    mode: str
    config: Config
    machine: dict[str, Any]
    versions: dict[str, str]
    loops: list[LoopResult] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    closest: list[Closest] = field(default_factory=list)
    servers: dict[str, Any] | None = None
    seconds: float = 0.0
    #: What rounding up to the arena's classes wastes over each spread of
    #: sizes, by the key of its group (``benchmarks.arena.waste()``).
    arena_waste: dict[str, dict[str, Any]] | None = None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%d %H:%M UTC"
        ),
        "python": f"{platform.python_implementation()} {sys.version.split()[0]}",
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "build": build(),
    }


def build() -> str:
    """Which build of aiomempool is measured: "compiled" or "pure"."""
    import aiomempool

    return "compiled" if aiomempool.compiled else "pure"
