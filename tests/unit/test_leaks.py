"""The sampled leak detector of buffer pools outside debug mode
(``leak_sampling``): a watched buffer dropped without free() is reported
with where it was allocated and goes back; a freed one is not reported;
about one allocation in N is watched; only pools of a SlabCache's buffers
take the option."""

from __future__ import annotations

import gc
import logging

import pytest
from helpers import settle

import aiomempool
from aiomempool import (
    GFP,
    ForeignElementError,
    Mempool,
    SlabCache,
    buffer_pool,
    kmalloc_pool,
    slab_pool,
)

SIZE = 4096
NOWARN = GFP.NOWARN  # an expected failure logs nothing


@pytest.fixture(autouse=True)
def no_debug_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Debug mode tracks every element and leaves the sampler off.
    monkeypatch.delenv("AIOMEMPOOL_DEBUG", raising=False)


def messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def leak(pool: Mempool[memoryview]) -> None:
    buf = pool.alloc_nowait()
    assert buf is not None
    buf[:4] = b"lost"  # ... and never freed


@pytest.mark.asyncio
async def test_a_sampled_buffer_dropped_without_free_is_reported_and_returned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pool = buffer_pool(SIZE, min_nr=1, max_nr=2, headroom=0, leak_sampling=1)
    with caplog.at_level(logging.WARNING, logger="aiomempool"):
        leak(pool)  # slab 0, slot 1: slot 0 is in the reserve
        gc.collect()
        assert pool.stats().outstanding == 1
        await settle()
    (report,) = messages(caplog, "buffer dropped without free()")
    assert "slab 0, slot 1" in report and "in leak" in report
    assert "buf = pool.alloc_nowait()" in report
    assert pool.stats().outstanding == 0
    held = [pool.alloc_nowait(NOWARN) for _ in range(2)]
    assert None not in held  # the slot is back


def test_without_a_loop_the_next_allocation_returns_a_dropped_buffer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pool = buffer_pool(SIZE, min_nr=1, max_nr=2, headroom=0, leak_sampling=1)
    with caplog.at_level(logging.WARNING, logger="aiomempool"):
        leak(pool)
        gc.collect()
        assert pool.stats().outstanding == 1
        assert pool.alloc_nowait() is not None
    assert len(messages(caplog, "buffer dropped without free()")) == 1
    assert pool.stats().outstanding == 1


@pytest.mark.asyncio
async def test_a_sampled_buffer_freed_is_not_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pool = buffer_pool(SIZE, min_nr=1, max_nr=2, headroom=0, leak_sampling=1)
    with caplog.at_level(logging.WARNING, logger="aiomempool"):
        for _ in range(3):
            buf = await pool.alloc()  # the cache's: watched
            pool.free(buf)
            with pytest.raises(ForeignElementError):
                pool.free(buf)  # an alias freed twice is foreign, not lost
            del buf
            gc.collect()
            await settle()
    assert caplog.records == []
    assert pool.stats().outstanding == 0


@pytest.mark.asyncio
async def test_leak_sampling_watches_about_one_allocation_in_n() -> None:
    pool = buffer_pool(SIZE, min_nr=1, leak_sampling=8)
    watched = 0
    for _ in range(4000):
        buf = pool.alloc_nowait()
        assert buf is not None
        watched += not isinstance(buf.obj, bytearray)  # an alias's exporter
        pool.free(buf)
    assert 300 < watched < 700
    unsampled = buffer_pool(SIZE, min_nr=1)
    for _ in range(100):
        buf = unsampled.alloc_nowait()
        assert buf is not None and isinstance(buf.obj, bytearray)
        unsampled.free(buf)


@pytest.mark.asyncio
async def test_leak_sampling_is_for_pools_of_a_caches_buffers() -> None:
    with pytest.raises(TypeError, match="leak_sampling"):
        kmalloc_pool(1, SIZE, leak_sampling=1)
    with pytest.raises(ValueError, match="leak_sampling must be >= 1"):
        buffer_pool(SIZE, min_nr=1, leak_sampling=0)
    cache = SlabCache(SIZE)
    pool = slab_pool(1, cache, leak_sampling=1)
    buf = pool.alloc_nowait()
    assert buf is not None and not isinstance(buf.obj, bytearray)
    pool.free(buf)
    assert aiomempool.pools.page_pool(1, leak_sampling=1).alloc_nowait() is not None
