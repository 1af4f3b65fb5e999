"""The Prometheus collector: what a scrape of named pools and arenas shows."""

from __future__ import annotations

import asyncio
import gc
import importlib
import math
import sys
from typing import Any

import pytest
from helpers import Backing, settle
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from aiomempool import (
    GFP,
    WAIT_BUCKETS,
    AllocTimeoutError,
    ArenaStats,
    BufferArena,
    buffer_arena,
    named_pools,
)
from aiomempool.arena import named_arenas
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
    live = [*named_pools(), *named_arenas()]
    assert exported == {pool.name for pool in live}
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


# -- arenas ---------------------------------------------------------------

#: Three classes; four slabs of 64 KiB: the three reserves' and one more.
ARENA_CLASSES = (256, 4096, 65536)
ARENA_BYTES = 4 * 65536


def small_arena(name: str | None) -> BufferArena:
    return buffer_arena(
        ARENA_BYTES, classes=ARENA_CLASSES, headroom=0, trim_after=None, name=name
    )


def arena_names(samples: Samples) -> set[str]:
    return {dict(labels)["pool"] for (_, labels) in samples}


def check_arena(samples: Samples, stats: ArenaStats) -> None:
    """Every series of an arena says what its stats() says."""
    name = stats.name
    assert name is not None
    for field in ("allocs", "frees", "reserve_hits", "waits", "timeouts"):
        assert value(samples, f"{field}_total", name) == getattr(stats.total, field)
    for field in ("min_nr", "curr_nr", "outstanding", "waiters"):
        assert value(samples, field, name) == getattr(stats.total, field)
    assert value(samples, "wait_seconds_count", name) == sum(stats.total.wait_counts)
    for field in (
        "max_bytes",
        "headroom_bytes",
        "bytes_reserved",
        "high_water_bytes",
        "bytes_in_use",
        "bytes_requested",
    ):
        assert value(samples, f"arena_{field}", name) == getattr(stats, field)
    for c in stats.classes:
        size = str(c.size)
        for field in ("allocs", "frees", "waits", "timeouts"):
            got = value(samples, f"arena_class_{field}_total", name, size=size)
            assert got == getattr(c.pool, field)
        for field in ("outstanding", "min_nr", "curr_nr", "waiters"):
            got = value(samples, f"arena_class_{field}", name, size=size)
            assert got == getattr(c.pool, field)
        for field in ("slabs", "bytes_reserved"):
            got = value(samples, f"arena_class_{field}", name, size=size)
            assert got == getattr(c.slab, field)


@pytest.mark.asyncio
async def test_a_scrape_shows_a_named_arenas_totals_budget_and_classes() -> None:
    arena = small_arena("metrics-arena")
    collector = MempoolCollector()  # every live named pool and arena
    small = await arena.alloc(300)  # a slice of a 4096-byte slot
    tiny = arena.alloc_nowait(256)
    assert tiny is not None
    # The fourth slab, then the class's reserve: the budget is spent.
    big = [await arena.alloc(65536), await arena.alloc(65536)]
    waiter = asyncio.ensure_future(arena.alloc(65536))
    await settle()

    parked = scrape(collector)
    check_arena(parked, arena.stats())
    assert value(parked, "arena_max_bytes", "metrics-arena") == ARENA_BYTES
    assert value(parked, "arena_headroom_bytes", "metrics-arena") == 0
    assert value(parked, "arena_bytes_reserved", "metrics-arena") == ARENA_BYTES
    in_use = 4096 + 256 + 2 * 65536
    assert value(parked, "arena_bytes_in_use", "metrics-arena") == in_use
    requested = 300 + 256 + 2 * 65536
    assert value(parked, "arena_bytes_requested", "metrics-arena") == requested
    assert value(parked, "waiters", "metrics-arena") == 1
    assert value(parked, "outstanding", "metrics-arena") == 4
    assert value(parked, "arena_class_waiters", "metrics-arena", size="65536") == 1
    assert value(parked, "arena_class_waiters", "metrics-arena", size="256") == 0
    assert value(parked, "arena_class_curr_nr", "metrics-arena", size="65536") == 0
    assert value(parked, "arena_class_outstanding", "metrics-arena", size="4096") == 1

    await asyncio.sleep(0.002)
    arena.free(big.pop())  # to the waiter
    big.append(await waiter)
    with pytest.raises(AllocTimeoutError):
        await arena.alloc(65536, GFP.DIRECT_RECLAIM | GFP.NOWARN, timeout=0.001)
    arena.free_bulk([*big, small, tiny])

    samples = scrape(collector)
    stats = arena.stats()
    check_arena(samples, stats)
    per_class = {
        size: (
            value(samples, "arena_class_allocs_total", "metrics-arena", size=size),
            value(samples, "arena_class_frees_total", "metrics-arena", size=size),
            value(samples, "arena_class_waits_total", "metrics-arena", size=size),
            value(samples, "arena_class_timeouts_total", "metrics-arena", size=size),
        )
        for size in ("256", "4096", "65536")
    }
    assert per_class == {
        "256": (1, 1, 0, 0),
        "4096": (1, 1, 0, 0),
        "65536": (3, 3, 2, 1),
    }
    assert value(samples, "allocs_total", "metrics-arena") == 5
    assert value(samples, "waits_total", "metrics-arena") == 2
    assert value(samples, "timeouts_total", "metrics-arena") == 1
    assert value(samples, "wait_seconds_count", "metrics-arena") == 1
    assert value(samples, "max_wait_seconds", "metrics-arena") > 0
    assert value(samples, "min_nr", "metrics-arena") == 3
    assert value(samples, "curr_nr", "metrics-arena") == 3
    assert value(samples, "outstanding", "metrics-arena") == 0
    assert value(samples, "arena_bytes_in_use", "metrics-arena") == 0
    assert value(samples, "arena_high_water_bytes", "metrics-arena") == ARENA_BYTES
    assert value(samples, "arena_class_slabs", "metrics-arena", size="65536") == 2
    got = value(samples, "arena_class_bytes_reserved", "metrics-arena", size="65536")
    assert got == 2 * 65536
    # The class pools are the arena's: no series of their own.
    assert {n for n in arena_names(samples) if n.startswith("metrics-arena")} == {
        "metrics-arena"
    }
    arena.close()


def test_an_unnamed_arena_is_not_exported_and_cannot_be_given() -> None:
    arena = small_arena(None)
    arena.free(arena.alloc_nowait(1000))
    samples = scrape(MempoolCollector(), auto_describe=True)
    live = {a.name for a in named_arenas()} | {p.name for p in named_pools()}
    assert arena_names(samples) == live
    assert arena not in named_arenas()
    with pytest.raises(ValueError, match="must be named"):
        MempoolCollector([arena])
    arena.close()


def test_a_closed_and_dropped_arena_disappears_from_the_scrape() -> None:
    arena = small_arena("metrics-dropped")
    arena.free(arena.alloc_nowait(1000))
    collector = MempoolCollector()
    assert value(scrape(collector), "allocs_total", "metrics-dropped") == 1
    arena.close()
    del arena
    gc.collect()
    samples = scrape(collector)
    assert "metrics-dropped" not in arena_names(samples)


def test_a_collector_given_pools_and_arenas_exports_those_only() -> None:
    pool = Backing().pool(2, name="metrics-given-pool")
    arena = small_arena("metrics-given-arena")
    other = small_arena("metrics-other-arena")
    samples = scrape(MempoolCollector([pool, arena]))
    assert arena_names(samples) == {"metrics-given-pool", "metrics-given-arena"}
    assert value(samples, "min_nr", "metrics-given-pool") == 2
    assert value(samples, "arena_max_bytes", "metrics-given-arena") == ARENA_BYTES
    # A pool's name has no arena series.
    assert ("aiomempool_arena_max_bytes", (("pool", "metrics-given-pool"),)) not in (
        samples
    )
    arena.close()
    other.close()


def test_arenas_of_one_name_add_up_and_so_does_a_pool_of_that_name() -> None:
    one = small_arena("metrics-twins")
    two = small_arena("metrics-twins")
    pool = Backing().pool(2, name="metrics-twins")
    one.free(one.alloc_nowait(1000))
    held = two.alloc_nowait(1000)
    samples = scrape(MempoolCollector([one, two, pool]))
    assert value(samples, "arena_max_bytes", "metrics-twins") == 2 * ARENA_BYTES
    assert value(samples, "arena_bytes_in_use", "metrics-twins") == 4096
    got = value(samples, "arena_class_allocs_total", "metrics-twins", size="4096")
    assert got == 2
    got = value(samples, "arena_class_min_nr", "metrics-twins", size="256")
    assert got == 2
    # The families pools and arenas share add up the three of them.
    assert value(samples, "min_nr", "metrics-twins") == 3 + 3 + 2
    assert value(samples, "outstanding", "metrics-twins") == 1
    two.free(held)
    one.close()
    two.close()


def test_a_scrape_walks_the_named_arenas_again_if_one_is_made_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    arena = small_arena("metrics-arena-walk")
    walks = []

    def racing_named_arenas() -> list[BufferArena]:
        walks.append(1)
        if len(walks) == 1:
            raise RuntimeError("Set changed size during iteration")
        return [arena]

    monkeypatch.setattr("aiomempool.metrics.named_arenas", racing_named_arenas)
    samples = scrape(MempoolCollector())
    assert value(samples, "arena_max_bytes", "metrics-arena-walk") == ARENA_BYTES
    assert len(walks) == 2
    arena.close()


def test_a_scrape_reads_an_arena_again_if_its_books_change_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A buffer lent or freed on the loop's thread while the exporter's
    # thread reads the arena's books makes stats() fail: it is read again.
    arena = small_arena("metrics-arena-books")
    reads = []

    class Racing:
        """The arena, its books changing while the first read runs (a
        wrapper: the compiled build's BufferArena takes no patch)."""

        def __getattr__(self, name: str) -> Any:
            return getattr(arena, name)

        def stats(self) -> ArenaStats:
            reads.append(1)
            if len(reads) == 1:
                raise RuntimeError("dictionary changed size during iteration")
            return arena.stats()

    samples = scrape(MempoolCollector([Racing()]))  # type: ignore[list-item]
    assert value(samples, "arena_max_bytes", "metrics-arena-books") == ARENA_BYTES
    assert len(reads) == 2
    arena.close()
