"""Prometheus metrics of named pools and arenas: a collector for
prometheus-client.

Optional: it needs the ``prometheus`` extra (``pip install
'aiomempool[prometheus]'``). Register one collector and every scrape reads
``stats()`` of the pools and arenas it watches:

```python
from prometheus_client import REGISTRY, start_http_server
from aiomempool.metrics import MempoolCollector

REGISTRY.register(MempoolCollector())  # every live named pool and arena
start_http_server(9100)
```

Every series carries the label ``pool``, the pool's (or arena's) name.
Pools that share a name are added up into one series (the longest wait is
their maximum), so a name can stand for a role ("rx", "tx") played by many
pools; an arena's classes added up are exported as one pool of its name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol, TypeVar

try:
    from prometheus_client.metrics_core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector
except ImportError as exc:
    raise ImportError(
        "aiomempool.metrics needs prometheus-client: "
        "pip install 'aiomempool[prometheus]'"
    ) from exc

from .arena import named_arenas
from .mempool import named_pools
from .stats import WAIT_BUCKETS, ArenaStats, MempoolStats, SizeClassStats

__all__ = ["PREFIX", "MempoolCollector"]

PREFIX = "aiomempool"
"""The prefix of every metric name: ``aiomempool_allocs_total`` and so on."""

# Counters: (field of MempoolStats, also the metric's name; help text).
_COUNTERS = (
    ("allocs", "Elements handed out by alloc() and alloc_nowait()."),
    ("frees", "Elements given back by free()."),
    (
        "reserve_hits",
        "Elements handed out from the reserve, hand-offs to waiters included.",
    ),
    ("alloc_fn_failures", "Calls of alloc_fn that gave nothing (None or MemoryError)."),
    ("waits", "Allocations that had to wait, each counted once."),
    ("timeouts", "Allocations that gave up when their timeout elapsed."),
)

# Gauges: (field of MempoolStats, metric name, how pools of one name add up,
# help text).
_GAUGES: tuple[tuple[str, str, Callable[[Iterable[float]], float], str], ...] = (
    ("min_nr", "min_nr", sum, "Elements the reserve guarantees."),
    ("curr_nr", "curr_nr", sum, "Elements in the reserve now (the reserve level)."),
    ("outstanding", "outstanding", sum, "Elements handed out and not yet freed."),
    ("waiters", "waiters", sum, "Tasks waiting in alloc() now."),
    (
        "max_wait_s",
        "max_wait_seconds",
        max,
        "The longest wait, in seconds, that ended with an element.",
    ),
)

_HISTOGRAM_HELP = "How long allocations that ended with an element waited, seconds."

# An arena's gauges: (field of ArenaStats, metric name after the prefix,
# help text). Arenas of one name add up.
_ARENA_GAUGES = (
    ("max_bytes", "arena_max_bytes", "The budget: bytes of slabs of all classes."),
    (
        "headroom_bytes",
        "arena_headroom_bytes",
        "Bytes beyond the budget that GFP.HIGH (GFP_ATOMIC) may grow slabs into.",
    ),
    ("bytes_reserved", "arena_bytes_reserved", "Bytes held in slabs now."),
    (
        "high_water_bytes",
        "arena_high_water_bytes",
        "The most bytes ever held in slabs at once.",
    ),
    (
        "bytes_in_use",
        "arena_bytes_in_use",
        "Bytes of the buffers out now, whole slots counted.",
    ),
    (
        "bytes_requested",
        "arena_bytes_requested",
        "Bytes asked for, of the buffers out now (in use minus this: the waste).",
    ),
)

# A size class's counters and gauges: (where in SizeClassStats, field,
# metric name after the prefix, help text). Labelled pool and size.
_CLASS_COUNTERS = (
    ("pool", "allocs", "arena_class_allocs", "Buffers of the class handed out."),
    ("pool", "frees", "arena_class_frees", "Buffers of the class given back."),
    (
        "pool",
        "waits",
        "arena_class_waits",
        "Allocations of the class that had to wait, each counted once.",
    ),
    (
        "pool",
        "timeouts",
        "arena_class_timeouts",
        "Allocations of the class that gave up when their timeout elapsed.",
    ),
)
_CLASS_GAUGES = (
    (
        "pool",
        "outstanding",
        "arena_class_outstanding",
        "Buffers of the class out now.",
    ),
    ("pool", "min_nr", "arena_class_min_nr", "Buffers the class's reserve guarantees."),
    ("pool", "curr_nr", "arena_class_curr_nr", "Buffers in the class's reserve now."),
    (
        "pool",
        "waiters",
        "arena_class_waiters",
        "Tasks waiting in the arena for a buffer of the class now.",
    ),
    ("slab", "slabs", "arena_class_slabs", "Slabs of the class held now."),
    (
        "slab",
        "bytes_reserved",
        "arena_class_bytes_reserved",
        "Bytes held in the class's slabs now.",
    ),
)

# A pool or an arena created on the loop's thread while a scrape, on the
# exporter's thread, walks named_pools() or named_arenas() makes that walk
# fail ("Set changed size during iteration"), as does a buffer lent or freed
# while an arena's stats() walks its books; so many fresh tries are made
# before giving up.
_WALKS = 8

R = TypeVar("R")


class _Exported(Protocol):
    """What the collector needs of a pool or an arena: a name and a
    ``stats()``."""

    @property
    def name(self) -> str | None: ...

    def stats(self) -> MempoolStats | ArenaStats: ...


def _bound_text(bound: float) -> str:
    """A bucket bound as Prometheus writes it in ``le``."""
    return "+Inf" if math.isinf(bound) else repr(float(bound))


_LE = tuple(_bound_text(bound) for bound in WAIT_BUCKETS)


class MempoolCollector(Collector):
    """A prometheus-client collector of pools' and arenas' ``stats()``.

    ``pools=None`` watches every live named pool (``named_pools()``) and
    every live named ``BufferArena`` (``aiomempool.arena.named_arenas()``),
    so those created after registration are exported too; otherwise the
    pools and arenas given, mixed in one iterable as you like, each of
    which must have a name. The collector holds what it was given, and
    nothing when it watches the named ones.

    Exported, each series labelled ``pool``, each named after the field of
    ``MempoolStats`` it reads:

    - counters: ``aiomempool_allocs_total``, ``aiomempool_frees_total``,
      ``aiomempool_reserve_hits_total``,
      ``aiomempool_alloc_fn_failures_total``, ``aiomempool_waits_total``,
      ``aiomempool_timeouts_total``;
    - gauges: ``aiomempool_min_nr``, ``aiomempool_curr_nr`` (the reserve
      level), ``aiomempool_outstanding``, ``aiomempool_waiters``,
      ``aiomempool_max_wait_seconds``;
    - the histogram ``aiomempool_wait_seconds`` of the waits that ended with
      an element, with the bounds of ``WAIT_BUCKETS``.

    An arena is exported under those names as one pool of its name (its
    ``ArenaStats.total``: every class added up), so a dashboard of pools
    shows arenas too; and under families of its own:

    - gauges labelled ``pool``, from ``ArenaStats``:
      ``aiomempool_arena_max_bytes``, ``aiomempool_arena_headroom_bytes``,
      ``aiomempool_arena_bytes_reserved``,
      ``aiomempool_arena_high_water_bytes``,
      ``aiomempool_arena_bytes_in_use``,
      ``aiomempool_arena_bytes_requested``;
    - per size class, labelled ``pool`` and ``size`` (the class's bytes),
      the counters ``aiomempool_arena_class_allocs_total``,
      ``..._frees_total``, ``..._waits_total``, ``..._timeouts_total`` and
      the gauges ``aiomempool_arena_class_outstanding``, ``..._min_nr``,
      ``..._curr_nr``, ``..._waiters``, ``..._slabs``,
      ``..._bytes_reserved``.

    Whatever shares a name is added up: pools and arenas in the families
    they share, arenas in their own (the high water as the sum of each
    one's), and classes of one size of arenas of one name.

    ``collect()`` runs on the scraping thread and only reads the pools and
    arenas: a scrape taken while the loop works may be off by the
    operations in progress, never inconsistent in a way that lasts.

    Args:
        pools (Iterable[Mempool | BufferArena] | None): The pools and arenas
            to export, each with a name and a ``stats()`` (a ``Mempool`` of
            any kind, a ``BufferArena``), or None for every live named pool
            and arena.

    Raises:
        ValueError: a pool or arena given has no name.
    """

    def __init__(self, pools: Iterable[_Exported] | None = None) -> None:
        if pools is None:
            self._pools: tuple[_Exported, ...] | None = None
            return
        self._pools = tuple(pools)
        for pool in self._pools:
            if pool.name is None:
                raise ValueError(
                    f"pools must be named to be exported, {pool!r} has no name "
                    "(build it with name=...)"
                )

    def describe(self) -> Iterable[Metric]:
        """The metric families, without samples, for registration."""
        return list(_Families())

    def collect(self) -> Iterable[Metric]:
        """Every metric family with one sample set per pool name (an
        arena's name, too), and per class size of each arena name."""
        families = _Families()
        pools, arenas = _snapshots(self._watched())
        totals = pools + [arena.total for arena in arenas]
        for name, stats in _by_name(totals):
            labels = [name]
            for counter, (field, _) in zip(families.counters, _COUNTERS, strict=True):
                counter.add_metric(labels, sum(getattr(s, field) for s in stats))
            for gauge, (field, _, add_up, _) in zip(
                families.gauges, _GAUGES, strict=True
            ):
                gauge.add_metric(labels, add_up(getattr(s, field) for s in stats))
            families.waits.add_metric(
                labels, _cumulative(stats), sum(s.wait_sum_s for s in stats)
            )
        for name, group in _by_name(arenas):
            for gauge, (field, _, _) in zip(
                families.arena_gauges, _ARENA_GAUGES, strict=True
            ):
                gauge.add_metric([name], sum(getattr(a, field) for a in group))
            for size, classes in _by_size(group):
                labels = [name, str(size)]
                for family, (part, field, _, _) in zip(
                    families.class_counters + families.class_gauges,
                    _CLASS_COUNTERS + _CLASS_GAUGES,
                    strict=True,
                ):
                    family.add_metric(
                        labels, sum(getattr(getattr(c, part), field) for c in classes)
                    )
        return list(families)

    def _watched(self) -> Sequence[_Exported]:
        if self._pools is not None:
            return self._pools
        return [*_retried(named_pools), *_retried(named_arenas)]


class _Families:
    """One scrape's metric families, in the order they are exported."""

    def __init__(self) -> None:
        self.counters = [
            CounterMetricFamily(f"{PREFIX}_{name}", text, labels=["pool"])
            for name, text in _COUNTERS
        ]
        self.gauges = [
            GaugeMetricFamily(f"{PREFIX}_{name}", text, labels=["pool"])
            for _, name, _, text in _GAUGES
        ]
        self.waits = HistogramMetricFamily(
            f"{PREFIX}_wait_seconds", _HISTOGRAM_HELP, labels=["pool"]
        )
        self.arena_gauges = [
            GaugeMetricFamily(f"{PREFIX}_{name}", text, labels=["pool"])
            for _, name, text in _ARENA_GAUGES
        ]
        self.class_counters: list[CounterMetricFamily | GaugeMetricFamily] = [
            CounterMetricFamily(f"{PREFIX}_{name}", text, labels=["pool", "size"])
            for _, _, name, text in _CLASS_COUNTERS
        ]
        self.class_gauges: list[CounterMetricFamily | GaugeMetricFamily] = [
            GaugeMetricFamily(f"{PREFIX}_{name}", text, labels=["pool", "size"])
            for _, _, name, text in _CLASS_GAUGES
        ]

    def __iter__(self) -> Iterator[Metric]:
        yield from self.counters
        yield from self.gauges
        yield self.waits
        yield from self.arena_gauges
        yield from self.class_counters
        yield from self.class_gauges


def _retried(read: Callable[[], R]) -> R:
    """``read()``, tried again while it fails with the RuntimeError of a
    set or dict changed by the loop's thread meanwhile; the last try's
    error is raised."""
    for _ in range(_WALKS - 1):
        try:
            return read()
        except RuntimeError:
            continue
    return read()


def _snapshots(
    watched: Iterable[_Exported],
) -> tuple[list[MempoolStats], list[ArenaStats]]:
    """The snapshots of pools and of arenas, apart; anything whose
    ``stats()`` is neither a ``MempoolStats`` nor an ``ArenaStats`` is
    skipped."""
    pools: list[MempoolStats] = []
    arenas: list[ArenaStats] = []
    for pool in watched:
        stats = _retried(pool.stats)
        if isinstance(stats, MempoolStats):
            pools.append(stats)
        elif isinstance(stats, ArenaStats):
            arenas.append(stats)
    return pools, arenas


S = TypeVar("S", MempoolStats, ArenaStats)


def _by_name(snapshots: Iterable[S]) -> list[tuple[str, list[S]]]:
    """Snapshots grouped by name, in name order; unnamed ones skipped."""
    groups: dict[str, list[S]] = {}
    for stats in snapshots:
        if stats.name is not None:
            groups.setdefault(stats.name, []).append(stats)
    return sorted(groups.items())


def _by_size(arenas: Iterable[ArenaStats]) -> list[tuple[int, list[SizeClassStats]]]:
    """The classes of ``arenas`` grouped by size, smallest first."""
    groups: dict[int, list[SizeClassStats]] = {}
    for arena in arenas:
        for size_class in arena.classes:
            groups.setdefault(size_class.size, []).append(size_class)
    return sorted(groups.items())


def _cumulative(stats: Sequence[MempoolStats]) -> list[tuple[str, float]]:
    """Per-bucket counts (as in ``wait_counts``) made cumulative, as
    Prometheus wants them: each bucket counts every wait up to its bound."""
    buckets = []
    total = 0
    for i, le in enumerate(_LE):
        total += sum(s.wait_counts[i] for s in stats)
        buckets.append((le, float(total)))
    return buckets
