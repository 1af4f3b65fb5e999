"""Prometheus metrics of named pools: a collector for prometheus-client.

Optional: it needs the ``prometheus`` extra (``pip install
'aiomempool[prometheus]'``). Register one collector and every scrape reads
``stats()`` of the pools it watches:

```python
from prometheus_client import REGISTRY, start_http_server
from aiomempool.metrics import MempoolCollector

REGISTRY.register(MempoolCollector())  # every live named pool
start_http_server(9100)
```

Every series carries the label ``pool``, the pool's name. Pools that share a
name are added up into one series (the longest wait is their maximum), so a
name can stand for a role ("rx", "tx") played by many pools.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol

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

from .mempool import named_pools
from .stats import WAIT_BUCKETS, MempoolStats

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

# A pool created on the loop's thread while a scrape, on the exporter's
# thread, walks named_pools() makes that walk fail ("Set changed size during
# iteration"); so many fresh walks are tried before giving up.
_WALKS = 8


class _NamedPool(Protocol):
    """What the collector needs of a pool: a name and a ``stats()``."""

    @property
    def name(self) -> str | None: ...

    def stats(self) -> MempoolStats: ...


def _bound_text(bound: float) -> str:
    """A bucket bound as Prometheus writes it in ``le``."""
    return "+Inf" if math.isinf(bound) else repr(float(bound))


_LE = tuple(_bound_text(bound) for bound in WAIT_BUCKETS)


class MempoolCollector(Collector):
    """A prometheus-client collector of pools' ``stats()``.

    ``pools=None`` watches every live named pool (``named_pools()``), so
    pools created after registration are exported too; otherwise the pools
    given, each of which must have a name. The collector holds the pools it
    was given, and nothing when it watches the named ones.

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

    ``collect()`` runs on the scraping thread and only reads the pools: a
    scrape taken while the loop works may be off by the operations in
    progress, never inconsistent in a way that lasts.

    Args:
        pools (Iterable[Mempool] | None): The pools to export, each with a
            name and a ``stats()`` (a ``Mempool`` of any kind), or None for
            every live named pool.

    Raises:
        ValueError: a pool given has no name.
    """

    def __init__(self, pools: Iterable[_NamedPool] | None = None) -> None:
        if pools is None:
            self._pools: tuple[_NamedPool, ...] | None = None
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
        """Every metric family with one sample set per pool name."""
        families = _Families()
        for name, stats in _by_name(self._watched()):
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
        return list(families)

    def _watched(self) -> Sequence[_NamedPool]:
        if self._pools is not None:
            return self._pools
        for _ in range(_WALKS - 1):
            try:
                return named_pools()
            except RuntimeError:
                continue
        return named_pools()


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

    def __iter__(self) -> Iterator[Metric]:
        yield from self.counters
        yield from self.gauges
        yield self.waits


def _by_name(pools: Iterable[_NamedPool]) -> list[tuple[str, list[MempoolStats]]]:
    """Snapshots grouped by pool name, in name order; unnamed pools, and
    anything whose ``stats()`` is not a ``MempoolStats``, skipped."""
    groups: dict[str, list[MempoolStats]] = {}
    for pool in pools:
        stats = pool.stats()
        if isinstance(stats, MempoolStats) and stats.name is not None:
            groups.setdefault(stats.name, []).append(stats)
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
