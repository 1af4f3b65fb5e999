"""Mempool without contention: construction, the kernel's order, free,
resize, close, element(), stats, errors of the callbacks."""

from __future__ import annotations

import ast
import asyncio
import inspect
import itertools
import logging
import pkgutil
from pathlib import Path
from typing import Any

import pytest
from helpers import Backing, Elem, drained

import aiomempool
from aiomempool import (
    GFP,
    GFP_ATOMIC,
    GFP_KERNEL,
    GFP_NOWAIT,
    Mempool,
    PoolClosedError,
    PoolExhaustedError,
)

# -- construction ---------------------------------------------------------


def test_constructor_preallocates_min_nr_with_gfp_kernel_and_pool_data() -> None:
    calls: list[tuple[GFP, Any]] = []

    def alloc_fn(gfp_mask: GFP, pool_data: Any) -> object:
        calls.append((gfp_mask, pool_data))
        return object()

    pool = Mempool(3, alloc_fn, lambda e, d: None, pool_data="data")
    assert pool.min_nr == 3 and pool.curr_nr == 3
    assert calls == [(GFP_KERNEL, "data")] * 3


def test_constructor_needs_no_running_loop() -> None:
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()
    backing = Backing()
    pool = backing.pool(2)
    assert pool.curr_nr == 2
    assert pool.alloc_nowait() is not None


@pytest.mark.parametrize("failure", ["none", "memoryerror"])
def test_constructor_failure_frees_what_it_made(failure: str) -> None:
    backing = Backing(supply=2)
    if failure == "memoryerror":
        backing.supply = None
        made = 0

        def alloc_fn(gfp_mask: GFP, pool_data: Any) -> Elem:
            nonlocal made
            made += 1
            if made > 2:
                raise MemoryError
            element = Elem()
            backing.made.append(element)
            return element

        with pytest.raises(MemoryError):
            Mempool(5, alloc_fn, backing.free)
    else:
        with pytest.raises(MemoryError, match="2 of the 5"):
            Mempool(5, backing.alloc, backing.free)
    assert len(backing.made) == 2
    assert backing.freed == backing.made


def test_constructor_lets_other_errors_through_and_frees() -> None:
    backing = Backing(supply=1)
    pool = backing.pool(1)
    backing.fail_with = KeyError("boom")
    backing.supply = None
    with pytest.raises(KeyError, match="boom"):
        Mempool(3, backing.alloc, backing.free)
    assert pool.curr_nr == 1  # another pool: untouched


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (0, ValueError, "min_nr must be >= 1"),
        (-3, ValueError, "min_nr must be >= 1"),
        (2.0, TypeError, "min_nr must be an int"),
        (True, TypeError, "min_nr must be an int"),
        ("4", TypeError, "min_nr must be an int"),
    ],
)
def test_constructor_checks_min_nr(value: Any, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        Mempool(value, lambda g, d: object(), lambda e, d: None)


def test_constructor_checks_the_callbacks_and_options() -> None:
    with pytest.raises(TypeError, match="alloc_fn must be callable"):
        Mempool(1, None, lambda e, d: None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="free_fn must be callable"):
        Mempool(1, lambda g, d: object(), 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="name must be a str"):
        Mempool(1, lambda g, d: object(), lambda e, d: None, name=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="retry_interval must be > 0"):
        Mempool(1, lambda g, d: object(), lambda e, d: None, retry_interval=0)


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        ("x", TypeError, "retry_interval must be a number of seconds"),
        (None, TypeError, "retry_interval"),
        (True, TypeError, "retry_interval must be a number of seconds"),
        (-1.0, ValueError, "retry_interval"),
        (0, ValueError, "retry_interval must be > 0"),
        (float("nan"), ValueError, "retry_interval"),
    ],
)
def test_retry_interval_must_be_a_positive_number_of_seconds(
    value: Any, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        Mempool(1, lambda g, d: object(), lambda e, d: None, retry_interval=value)


@pytest.mark.parametrize("value", ["x", -1.0, 0, float("nan")])
def test_a_refused_retry_interval_is_told_the_rule_it_breaks(value: Any) -> None:
    with pytest.raises((TypeError, ValueError)) as info:
        Mempool(1, lambda g, d: object(), lambda e, d: None, retry_interval=value)
    message = str(info.value)
    assert "None" not in message and ">= 0" not in message, message


# -- the kernel's order ---------------------------------------------------


@pytest.mark.asyncio
async def test_alloc_tries_the_allocator_without_waiting_first() -> None:
    backing = Backing()
    pool = backing.pool(2)
    element = await pool.alloc()
    assert element is backing.made[-1]
    assert backing.masks == [GFP_NOWAIT]
    assert pool.curr_nr == 2  # the reserve is untouched


@pytest.mark.asyncio
async def test_alloc_falls_back_on_the_reserve_then_the_full_mask() -> None:
    backing = Backing()
    pool = backing.pool(1)
    reserved = backing.made[0]
    backing.up = False
    assert await pool.alloc(GFP_KERNEL, timeout=0) is reserved
    assert backing.masks == [GFP_NOWAIT]
    assert pool.curr_nr == 0 and pool.stats().reserve_hits == 1


@pytest.mark.asyncio
async def test_the_full_mask_retry_comes_before_waiting() -> None:
    masks: list[GFP] = []

    def alloc_fn(gfp_mask: GFP, pool_data: Any) -> Elem | None:
        masks.append(gfp_mask)
        return Elem() if gfp_mask & GFP.DIRECT_RECLAIM else None

    pool = Mempool(1, alloc_fn, lambda e, d: None)
    assert pool.alloc_nowait() is not None  # takes the reserve
    masks.clear()
    mask = GFP.DIRECT_RECLAIM | GFP.HIGH
    assert await pool.alloc(mask) is not None
    assert masks == [GFP.HIGH, mask]
    assert pool.stats().waits == 0


@pytest.mark.asyncio
async def test_a_mask_that_may_not_wait_gets_none() -> None:
    backing = Backing()
    pool = backing.pool(1)
    backing.up = False
    assert await pool.alloc(GFP_NOWAIT) is backing.made[0]
    assert await pool.alloc(GFP_NOWAIT) is None
    assert await pool.alloc(GFP_ATOMIC) is None
    # No second try: the first one was not restricted.
    assert backing.masks == [GFP_NOWAIT, GFP_NOWAIT, GFP_ATOMIC]
    assert pool.waiters == 0


def test_alloc_nowait_in_the_kernels_order() -> None:
    backing = Backing()
    pool = backing.pool(1)
    assert pool.alloc_nowait() is backing.made[-1]
    backing.up = False
    assert pool.alloc_nowait(GFP_ATOMIC) is backing.made[0]
    assert pool.alloc_nowait() is None
    assert backing.masks == [GFP_NOWAIT, GFP_ATOMIC, GFP_NOWAIT]


def test_alloc_nowait_refuses_the_wait_bit() -> None:
    pool = Backing().pool(1)
    with pytest.raises(ValueError, match="DIRECT_RECLAIM"):
        pool.alloc_nowait(GFP_KERNEL)
    with pytest.raises(ValueError, match="DIRECT_RECLAIM"):
        pool.alloc_nowait(int(GFP.DIRECT_RECLAIM | GFP.HIGH))


@pytest.mark.asyncio
async def test_zero_is_refused_because_the_reserve_is_not_zeroed() -> None:
    pool = Backing().pool(1)
    with pytest.raises(ValueError, match=r"GFP\.ZERO"):
        await pool.alloc(GFP_KERNEL | GFP.ZERO)
    with pytest.raises(ValueError, match=r"GFP\.ZERO"):
        pool.alloc_nowait(GFP.ZERO)
    with pytest.raises(ValueError, match=r"GFP\.ZERO"):
        pool.element(GFP.ZERO)


@pytest.mark.asyncio
async def test_bad_masks_and_timeouts_are_refused() -> None:
    pool = Backing().pool(1)
    with pytest.raises(TypeError, match="gfp_mask"):
        await pool.alloc("GFP_KERNEL")  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="timeout must be >= 0"):
        await pool.alloc(timeout=-1)
    with pytest.raises(ValueError, match="timeout must be >= 0"):
        await pool.alloc(timeout=float("nan"))
    with pytest.raises(TypeError, match="timeout must be a number"):
        await pool.alloc(timeout="1")  # type: ignore[call-overload]
    assert pool.stats().allocs == 0


def test_memoryerror_from_alloc_fn_counts_as_none() -> None:
    backing = Backing()
    pool = backing.pool(1)
    backing.fail_with = MemoryError()
    assert pool.alloc_nowait() is backing.made[0]
    assert pool.alloc_nowait() is None
    assert pool.stats().alloc_fn_failures == 2


@pytest.mark.asyncio
async def test_other_errors_of_alloc_fn_propagate_and_change_nothing() -> None:
    backing = Backing()
    pool = backing.pool(2)
    backing.fail_with = ZeroDivisionError("allocator bug")
    with pytest.raises(ZeroDivisionError, match="allocator bug"):
        await pool.alloc()
    with pytest.raises(ZeroDivisionError):
        pool.alloc_nowait()
    stats = pool.stats()
    assert (pool.curr_nr, stats.allocs, stats.outstanding) == (2, 0, 0)
    backing.fail_with = None
    assert await pool.alloc() is not None


# -- free -----------------------------------------------------------------


def test_free_refills_the_reserve_below_min_nr_and_disposes_above() -> None:
    backing = Backing()
    pool = backing.pool(2)
    backing.up = False
    a = pool.alloc_nowait()
    assert pool.curr_nr == 1
    pool.free(a)
    assert pool.curr_nr == 2 and backing.freed == []
    extra = Elem()
    pool.free(extra)
    assert backing.freed == [extra]
    assert pool.curr_nr == 2


def test_free_ignores_none() -> None:
    pool = Backing().pool(1)
    pool.free(None)
    assert pool.stats().frees == 0


def test_free_fn_errors_propagate_after_the_accounting() -> None:
    backing = Backing()
    pool = backing.pool(1)
    element = pool.alloc_nowait()
    backing.free_error = OSError("munmap failed")
    with pytest.raises(OSError, match="munmap"):
        pool.free(element)
    assert backing.freed == [element]
    assert pool.stats().frees == 1 and pool.stats().outstanding == 0


# -- resize ---------------------------------------------------------------


def test_resize_grows_with_gfp_kernel() -> None:
    backing = Backing()
    pool = backing.pool(1)
    pool.resize(4)
    assert (pool.min_nr, pool.curr_nr) == (4, 4)
    assert backing.masks == [GFP_KERNEL] * 3


def test_resize_growth_refills_what_is_missing() -> None:
    backing = Backing()
    pool = backing.pool(2)
    backing.up = False
    pool.alloc_nowait()
    backing.up = True
    pool.resize(3)
    assert (pool.min_nr, pool.curr_nr) == (3, 3)


def test_resize_that_cannot_grow_changes_nothing() -> None:
    backing = Backing(supply=3)
    pool = backing.pool(2)
    with pytest.raises(MemoryError):
        pool.resize(5)
    assert (pool.min_nr, pool.curr_nr) == (2, 2)
    assert backing.freed == [backing.made[2]]  # the one it made, given back


def test_resize_shrinks_by_freeing_the_surplus_from_the_top() -> None:
    backing = Backing()
    pool = backing.pool(4)
    top = backing.made[1:]
    pool.resize(1)
    assert (pool.min_nr, pool.curr_nr) == (1, 1)
    assert sorted(e.n for e in backing.freed) == sorted(e.n for e in top)


def test_resize_not_growing_allocates_nothing() -> None:
    """Found by the state machine: init_pool(min_nr=1, take=1); resize(1).

    mempool_resize() allocates only to grow min_nr; a resize to a min_nr no
    larger than the current one frees the surplus of the reserve and
    nothing else, so it cannot fail. Elements out are not missing: their
    frees refill the reserve.
    """
    backing = Backing(supply=4)
    pool = backing.pool(2)
    held = [pool.alloc_nowait(), pool.alloc_nowait()]  # fresh ones
    backing.up = False
    held += [pool.alloc_nowait(), pool.alloc_nowait()]  # the reserve
    assert pool.curr_nr == 0 and None not in held
    ncalls = len(backing.masks)
    pool.resize(2)  # the same min_nr: nothing to do
    pool.resize(1)  # shrinking: the reserve holds no surplus
    assert backing.masks[ncalls:] == []
    assert (pool.min_nr, pool.curr_nr) == (1, 0)
    for element in held:
        pool.free(element)
    assert pool.curr_nr == 1 and len(backing.freed) == 3
    pool.close()


@pytest.mark.parametrize(
    ("value", "error"), [(0, ValueError), (-1, ValueError), (1.5, TypeError)]
)
def test_resize_checks_new_min_nr(value: Any, error: type) -> None:
    pool = Backing().pool(2)
    with pytest.raises(error, match="new_min_nr"):
        pool.resize(value)
    assert pool.min_nr == 2


@pytest.mark.asyncio
async def test_resize_serves_waiters_first() -> None:
    backing, pool, [held] = drained()
    tasks = [asyncio.create_task(pool.alloc()) for _ in range(2)]
    await asyncio.sleep(0)
    assert pool.waiters == 2
    backing.up = True
    pool.resize(3)
    got = await asyncio.gather(*tasks)
    assert all(isinstance(e, Elem) for e in got)
    assert pool.curr_nr == 1 and pool.min_nr == 3
    pool.free(held)
    assert pool.curr_nr == 2


# -- close ----------------------------------------------------------------


@pytest.mark.asyncio
async def test_close_frees_the_reserve_and_refuses_allocations() -> None:
    backing = Backing()
    pool = backing.pool(3)
    out = await pool.alloc()
    pool.close()
    assert pool.closed and pool.curr_nr == 0
    assert sorted(e.n for e in backing.freed) == sorted(e.n for e in backing.made[:3])
    with pytest.raises(PoolClosedError):
        await pool.alloc()
    with pytest.raises(PoolClosedError):
        await pool.alloc(GFP_NOWAIT, timeout=1)
    with pytest.raises(PoolClosedError):
        pool.alloc_nowait()
    with pytest.raises(PoolClosedError):
        pool.resize(5)
    pool.free(out)  # an element freed after close goes to free_fn
    assert backing.freed[-1] is out
    pool.close()  # idempotent
    assert len(backing.freed) == 4


@pytest.mark.asyncio
async def test_close_wakes_every_waiter_with_poolclosederror() -> None:
    backing = Backing()
    pool = backing.pool(1)
    backing.up = False
    pool.alloc_nowait()
    tasks = [asyncio.create_task(pool.alloc()) for _ in range(3)]
    await asyncio.sleep(0)
    assert pool.waiters == 3
    pool.close()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, PoolClosedError) for r in results)
    assert pool.waiters == 0


def test_close_frees_everything_even_if_free_fn_raises() -> None:
    backing = Backing()
    pool = backing.pool(3)
    backing.free_error = OSError("first")
    with pytest.raises(OSError, match="first"):
        pool.close()
    assert len(backing.freed) == 3
    assert pool.closed


@pytest.mark.asyncio
async def test_async_with_closes_the_pool() -> None:
    backing = Backing()
    async with backing.pool(2) as pool:
        assert not pool.closed
    assert pool.closed and len(backing.freed) == 2


# -- element() ------------------------------------------------------------


@pytest.mark.asyncio
async def test_element_allocates_and_frees() -> None:
    backing = Backing()
    pool = backing.pool(1)
    backing.up = False
    async with pool.element() as element:
        assert isinstance(element, Elem)
        assert pool.curr_nr == 0
    assert pool.curr_nr == 1
    with pytest.raises(KeyError):
        async with pool.element():
            raise KeyError
    assert pool.curr_nr == 1
    assert pool.stats().outstanding == 0


@pytest.mark.asyncio
async def test_element_allocates_with_a_subclass_override_of_alloc() -> None:
    # element() takes alloc()'s first step itself, unless the pool's class
    # overrides alloc(): then the override is what allocates, every time.
    class Counting(Mempool[Any]):
        calls = 0

        async def alloc(self, *args: Any, **kwargs: Any) -> Any:
            type(self).calls += 1
            return await super().alloc(*args, **kwargs)

    pool = Counting(2, lambda mask, data: object(), lambda e, d: None)
    async with pool.element() as element:
        assert element is not None and pool.stats().outstanding == 1
    async with pool.element(timeout=1.0):
        pass
    assert Counting.calls == 2 and pool.stats().outstanding == 0
    plain = Mempool(1, lambda mask, data: object(), lambda e, d: None)
    async with plain.element():  # its own: the first step, no coroutine
        assert plain.stats().outstanding == 1
    pool.close()
    plain.close()


@pytest.mark.asyncio
async def test_element_frees_when_the_body_is_cancelled() -> None:
    pool = Backing().pool(1)
    entered = asyncio.Event()

    async def body() -> None:
        async with pool.element():
            entered.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(body())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.stats().outstanding == 0


@pytest.mark.asyncio
async def test_element_of_a_dry_pool_waits_in_line_and_a_cancel_loses_nothing() -> None:
    # element() enters by alloc()'s first step, and awaits alloc() only when
    # that says wait: behind an earlier waiter, in line order, and a cancel
    # while waiting hands the element on.
    _, pool, [held] = drained()
    order: list[str] = []

    async def enter(name: str) -> None:
        async with pool.element() as element:
            order.append(name)
            assert element is held

    first = asyncio.create_task(pool.alloc())
    await asyncio.sleep(0)
    second = asyncio.create_task(enter("second"))
    cancelled = asyncio.create_task(enter("cancelled"))
    third = asyncio.create_task(enter("third"))
    await asyncio.sleep(0)
    assert pool.waiters == 4
    cancelled.cancel()
    pool.free(held)  # to the first waiter
    assert await first is held
    pool.free(held)  # to the second, which gives it back at its exit: third
    await asyncio.gather(second, third)
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert order == ["second", "third"]
    assert pool.curr_nr == 1 and pool.waiters == 0
    assert pool.stats().outstanding == 0


@pytest.mark.asyncio
async def test_element_raises_pool_exhausted_for_a_mask_that_may_not_wait() -> None:
    backing = Backing()
    pool = backing.pool(1)
    backing.up = False
    held = pool.alloc_nowait()
    with pytest.raises(PoolExhaustedError, match="without waiting") as info:
        async with pool.element(GFP_ATOMIC):
            pass
    assert isinstance(info.value, MemoryError)
    assert "gfp_mask=GFP_ATOMIC" in str(info.value)
    pool.free(held)
    async with pool.element(GFP_NOWAIT) as element:
        assert element is held


@pytest.mark.asyncio
async def test_pool_exhausted_names_the_mask_as_the_kernel_spells_it() -> None:
    backing = Backing()
    pool = backing.pool(1, name="dry")
    backing.up = False
    held = pool.alloc_nowait()
    with pytest.raises(PoolExhaustedError) as info:
        async with pool.element(GFP_NOWAIT):
            pass
    message = str(info.value)
    assert message.startswith("<Mempool 'dry' ")
    assert "gfp_mask=GFP_NOWAIT" in message and "<GFP" not in message, message
    with pytest.raises(PoolExhaustedError, match=r"gfp_mask=GFP\.HIGH\|GFP\.NOWARN"):
        async with pool.element(GFP.HIGH | GFP.NOWARN):
            pass
    pool.free(held)


# -- stats, repr and logs ---------------------------------------------------


@pytest.mark.asyncio
async def test_stats_count_what_happened() -> None:
    backing = Backing()
    pool = backing.pool(2, name="rx")
    a = await pool.alloc()
    backing.up = False
    b = await pool.alloc()
    assert pool.alloc_nowait() is not None
    assert pool.alloc_nowait() is None
    with pytest.raises(TimeoutError):
        await pool.alloc(timeout=0.01)
    pool.free(a)
    pool.free(b)
    stats = pool.stats()
    assert stats.name == "rx"
    assert (stats.allocs, stats.frees, stats.outstanding) == (3, 2, 1)
    assert stats.reserve_hits == 2
    assert stats.alloc_fn_failures == 5  # b, c, None (1 each), timeout (2)
    assert (stats.waits, stats.timeouts) == (1, 1)
    assert (stats.min_nr, stats.curr_nr, stats.waiters) == (2, 2, 0)
    with pytest.raises(AttributeError):
        stats.allocs = 0  # type: ignore[misc]


STATS_FIELDS = (
    "allocs", "frees", "outstanding", "curr_nr", "min_nr", "waiters",
    "reserve_hits", "waits", "timeouts", "max_wait_ms",
)  # fmt: skip


@pytest.mark.asyncio
@pytest.mark.parametrize("name", ["rx", None])
async def test_str_of_stats_is_one_line_of_named_fields(name: str | None) -> None:
    backing = Backing()
    pool = backing.pool(1, name=name)
    held = [await pool.alloc()]  # a fresh one
    backing.up = False
    held.append(await pool.alloc())  # the reserve's
    with pytest.raises(TimeoutError):
        await pool.alloc(GFP_KERNEL, timeout=0)
    stats = pool.stats()
    line = str(stats)
    assert "\n" not in line
    if name is None:
        assert line.startswith("allocs=")
    else:
        assert line.startswith("pool=rx allocs=")
    fields = dict(field.split("=", 1) for field in line.split())
    assert set(STATS_FIELDS) <= set(fields)
    for field in STATS_FIELDS[:-1]:
        assert fields[field] == str(getattr(stats, field)), field
    assert [fields[f] for f in ("allocs", "outstanding", "reserve_hits")] == [
        "2",
        "2",
        "1",
    ]
    assert (fields["curr_nr"], fields["min_nr"], fields["timeouts"]) == ("0", "1", "1")
    assert float(fields["max_wait_ms"]) == round(stats.max_wait_s * 1e3, 1)
    for element in held:
        pool.free(element)


def test_repr_shows_live_state() -> None:
    pool = Backing().pool(4, name="rx")
    pool.alloc_nowait()
    assert repr(pool) == "<Mempool 'rx' min_nr=4 curr_nr=4 waiters=0>"
    pool.close()
    assert "closed" in repr(pool)


def test_failed_allocations_log_a_warning_unless_nowarn(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backing = Backing()
    pool = backing.pool(1)
    backing.up = False
    pool.alloc_nowait()
    with caplog.at_level(logging.WARNING, logger="aiomempool"):
        assert pool.alloc_nowait(GFP.NOWARN) is None
        assert caplog.records == []
        assert pool.alloc_nowait() is None
    assert len(caplog.records) == 1
    assert "allocation failed" in caplog.records[0].getMessage()
    assert caplog.records[0].name == "aiomempool"


def test_a_storm_of_failures_is_rate_limited(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aiomempool._ratelimit as ratelimit

    now = [1000.0]
    monkeypatch.setattr("aiomempool._ratelimit.time.monotonic", lambda: now[0])
    backing = Backing()
    pool = backing.pool(1)
    backing.up = False
    pool.alloc_nowait()
    with caplog.at_level(logging.WARNING, logger="aiomempool"):
        for _ in range(1000):
            pool.alloc_nowait()
        assert len(caplog.records) == ratelimit.BURST
        now[0] += ratelimit.INTERVAL
        pool.alloc_nowait()
    messages = [r.getMessage() for r in caplog.records]
    assert (
        f"{1000 - ratelimit.BURST} allocation failure warnings suppressed" in messages
    )
    assert len(messages) == ratelimit.BURST + 2


def test_named_pools_are_listed_while_they_live() -> None:
    import gc

    rx = Backing().pool(1, name="rx-test")
    Backing().pool(1)  # unnamed: not listed
    assert rx in aiomempool.named_pools()
    assert all(p.name is not None for p in aiomempool.named_pools())
    del rx
    gc.collect()
    assert "rx-test" not in [p.name for p in aiomempool.named_pools()]


def attribute_docstrings() -> set[str]:
    """The module-level names of the package given a docstring (a string
    right after their assignment, which the API reference shows)."""
    names: set[str] = set()
    folder = Path(aiomempool.__file__).parent
    # From the .py files: the compiled build's modules have no source of
    # their own to inspect.
    modules = ["__init__"] + [info.name for info in pkgutil.iter_modules([str(folder)])]
    for name in modules:
        source = (folder / f"{name}.py").read_text(encoding="utf-8")
        body = ast.parse(source).body
        for statement, after in itertools.pairwise(body):
            if not (
                isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                continue
            if isinstance(statement, ast.Assign):
                targets = statement.targets
            elif isinstance(statement, ast.AnnAssign):
                targets = [statement.target]
            else:
                continue
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def test_every_name_all_lists_is_importable_and_documented() -> None:
    documented = attribute_docstrings()
    assert len(set(aiomempool.__all__)) == len(aiomempool.__all__)
    for name in aiomempool.__all__:
        value = getattr(aiomempool, name)  # from aiomempool import name
        # isroutine: a function of a compiled module is a cyfunction.
        if inspect.isclass(value) or inspect.isroutine(value):
            assert value.__doc__ and value.__doc__.strip(), f"{name}: no docstring"
        else:
            assert name in documented, f"{name}: no docstring after its assignment"


def test_every_public_name_the_package_exports_is_in_all() -> None:
    exported = {
        name
        for name, value in vars(aiomempool).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert exported == set(aiomempool.__all__)
    assert {"Mempool", "GFP", "GFP_KERNEL", "GFP_NOWAIT", "GFP_ATOMIC"} <= exported


def test_the_kernels_pool_constructors_are_functions_of_the_package() -> None:
    for name in ("slab_pool", "kmalloc_pool", "page_pool", "buffer_pool"):
        assert name in aiomempool.__all__
        assert inspect.isroutine(getattr(aiomempool, name))
        assert not inspect.isclass(getattr(aiomempool, name))
        assert not hasattr(Mempool, name), f"Mempool.{name} is still there"
