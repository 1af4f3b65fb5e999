"""The Prometheus collector: what a scrape of named pools shows."""

from __future__ import annotations

import asyncio
import importlib
import math
import sys

import pytest
from helpers import Backing, settle
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from aiomempool import WAIT_BUCKETS, AllocTimeoutError, named_pools
from aiomempool.metrics import MempoolCollector

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(collector: MempoolCollector, *, auto_describe: bool = False) -> Samples:
    """Register the collector on a fresh registry and parse one scrape."""
    registry = CollectorRegistry(auto_describe=auto_describe)
    registry.register(collector)
    text = generate_latest(registry).decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples, name: str, pool: str, **labels: str) -> float:
    key = (f"aiomempool_{name}", tuple(sorted({"pool": pool, **labels}.items())))
    return samples[key]


def le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


@pytest.mark.asyncio
async def test_a_scrape_shows_each_named_pools_counters_gauges_and_waits() -> None:
    # Two elements, both in the reserve, and an allocator that is out.
    pool = Backing(supply=2).pool(2, name="rx-metrics")
    first = pool.alloc_nowait()
    second = await pool.alloc()
    waiter = asyncio.ensure_future(pool.alloc())
    await settle()
    collector = MempoolCollector()  # every live named pool

    parked = scrape(collector)
    assert value(parked, "waiters", "rx-metrics") == 1
    assert value(parked, "curr_nr", "rx-metrics") == 0
    assert value(parked, "outstanding", "rx-metrics") == 2

    await asyncio.sleep(0.002)
    pool.free(first)
    third = await waiter
    with pytest.raises(AllocTimeoutError):
        await pool.alloc(timeout=0.001)
    pool.free(second)
    pool.free(third)

    samples = scrape(collector)
    stats = pool.stats()
    assert (stats.waits, stats.timeouts, stats.allocs, stats.frees) == (2, 1, 3, 3)
    for field in (
        "allocs",
        "frees",
        "reserve_hits",
        "alloc_fn_failures",
        "waits",
        "timeouts",
    ):
        assert value(samples, f"{field}_total", "rx-metrics") == getattr(stats, field)
    for field in ("min_nr", "curr_nr", "outstanding", "waiters"):
        assert value(samples, field, "rx-metrics") == getattr(stats, field)
    assert value(samples, "min_nr", "rx-metrics") == 2
    assert value(samples, "curr_nr", "rx-metrics") == 2
    assert value(samples, "outstanding", "rx-metrics") == 0
    assert value(samples, "waiters", "rx-metrics") == 0
    assert value(samples, "max_wait_seconds", "rx-metrics") == stats.max_wait_s > 0

    # The histogram counts the one wait that ended with an element, in
    # cumulative buckets, while stats() counts it in its own bucket only.
    buckets = [
        value(samples, "wait_seconds_bucket", "rx-metrics", le=le(bound))
        for bound in WAIT_BUCKETS
    ]
    assert buckets == [
        float(sum(stats.wait_counts[: i + 1])) for i in range(len(WAIT_BUCKETS))
    ]
    assert buckets[-1] == value(samples, "wait_seconds_count", "rx-metrics") == 1
    assert value(samples, "wait_seconds_sum", "rx-metrics") == stats.wait_sum_s > 0


def test_only_named_pools_are_exported_and_alike_names_add_up() -> None:
    a = Backing().pool(2, name="metrics-shared")
    b = Backing().pool(3, name="metrics-shared")
    solo = Backing().pool(1, name="metrics-solo")
    unnamed = Backing().pool(4)
    a.free(a.alloc_nowait())
    b.alloc_nowait()

    samples = scrape(MempoolCollector(), auto_describe=True)
    assert value(samples, "min_nr", "metrics-shared") == 5
    assert value(samples, "allocs_total", "metrics-shared") == 2
    assert value(samples, "outstanding", "metrics-shared") == 1
    assert value(samples, "min_nr", "metrics-solo") == 1
    exported = {dict(labels)["pool"] for (_, labels) in samples}
    assert exported == {pool.name for pool in named_pools()}
    assert {"metrics-shared", "metrics-solo"} <= exported
    assert unnamed not in named_pools() and solo in named_pools()


def test_a_collector_given_pools_exports_those_only() -> None:
    mine = Backing().pool(2, name="metrics-mine")
    other = Backing().pool(2, name="metrics-other")
    samples = scrape(MempoolCollector([mine]))
    names = {dict(labels)["pool"] for (_, labels) in samples}
    assert names == {"metrics-mine"}
    assert other.name == "metrics-other"


def test_a_pool_without_a_name_is_refused() -> None:
    pool = Backing().pool(1)
    with pytest.raises(ValueError, match="must be named"):
        MempoolCollector([pool])


def test_a_collector_with_no_pools_exports_the_families_only() -> None:
    samples = scrape(MempoolCollector([]))
    assert samples == {}


def test_without_prometheus_client_the_import_error_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.setitem(sys.modules, "prometheus_client.metrics_core", None)
    monkeypatch.setitem(sys.modules, "prometheus_client.registry", None)
    monkeypatch.delitem(sys.modules, "aiomempool.metrics")
    with pytest.raises(ImportError, match=r"aiomempool\[prometheus\]"):
        importlib.import_module("aiomempool.metrics")


def test_a_scrape_walks_the_named_pools_again_if_a_pool_is_made_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A pool made on the loop's thread while the exporter's thread walks the
    # registry makes the walk fail: the scrape walks again.
    pool = Backing().pool(2, name="metrics-walk")
    walks = []

    def racing_named_pools() -> list[object]:
        walks.append(1)
        if len(walks) == 1:
            raise RuntimeError("Set changed size during iteration")
        return [pool]

    monkeypatch.setattr("aiomempool.metrics.named_pools", racing_named_pools)
    samples = scrape(MempoolCollector())
    assert value(samples, "min_nr", "metrics-walk") == 2
    assert len(walks) == 2
