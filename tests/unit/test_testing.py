"""aiomempool.testing: the leak-check plugin, run from a user's test file
with pytester, and fail_alloc()'s fault injection."""

from __future__ import annotations

import asyncio

import pytest

from aiomempool import GFP_ATOMIC, AllocTimeoutError, buffer_pool, kmalloc_pool
from aiomempool.testing import fail_alloc, watch_pools

USER_TESTS = """
import asyncio
import pytest
from aiomempool import buffer_pool

@pytest.fixture
def pool():
    p = buffer_pool(64, min_nr=1, max_nr=4, debug=True, name="fixture-pool")
    yield p
    p.close()

def test_clean(pool):
    buf = pool.alloc_nowait()
    pool.free(buf)

def test_leaks_one(pool):
    kept = pool.alloc_nowait()  # never freed

def leaky_helper():
    return buffer_pool(64, min_nr=1).alloc_nowait()

def test_leaks_in_a_pool_it_dropped():
    leaky_helper()  # the pool itself is dropped, with a buffer out

@pytest.mark.aiomempool_leaks_allowed
def test_allowed(pool):
    kept = pool.alloc_nowait()

def test_freed_by_the_fixture_teardown(pool, request):
    buf = pool.alloc_nowait()
    request.addfinalizer(lambda: pool.free(buf))
"""


def test_the_plugin_is_off_unless_enabled(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=5)


def test_the_plugin_fails_a_test_whose_pools_keep_elements_out(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("-p", "aiomempool.testing")
    result.assert_outcomes(passed=5, errors=2)
    out = result.stdout.str()
    assert "ERROR at teardown of test_leaks_one" in out
    assert "ERROR at teardown of test_leaks_in_a_pool_it_dropped" in out
    assert "has 1 element(s) out" in out
    # Debug mode: where it was allocated; without it: how to get that.
    assert "in test_leaks_one" in out and "kept = pool.alloc_nowait()" in out
    assert "build the pool with debug=True" in out
    for fine in ("test_clean", "test_allowed", "test_freed_by_the_fixture"):
        assert f"teardown of {fine}" not in out


def test_the_plugin_can_be_enabled_in_the_users_config(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    pytester.makeini("[pytest]\naddopts = -p aiomempool.testing\n")
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=5, errors=2)


def test_watch_pools_counts_without_the_garbage_collector() -> None:
    with watch_pools() as watch:
        pool = buffer_pool(64, min_nr=1)
        buf = pool.alloc_nowait()
        other = kmalloc_pool(1, 8)
    report = watch.leaks()
    assert [p for p, _, _ in report.leaks] == [pool]
    pool.free(buf)
    assert not watch.leaks()
    assert watch.pools == [pool, other]


def test_fail_alloc_every_nth_call_fails_and_the_reserve_serves() -> None:
    pool = buffer_pool(64, min_nr=2, max_nr=8)
    with fail_alloc(pool, every=1) as faults:
        got = [pool.alloc_nowait() for _ in range(3)]
    assert got[2] is None and None not in got[:2]  # the reserve's two
    assert pool.stats().reserve_hits == 2
    assert faults.failures == faults.calls == 3
    for buf in got[:2]:
        pool.free(buf)
    # Once out of the block, the allocator works again, fast paths too.
    buf = pool.alloc_nowait()
    assert buf is not None and pool.stats().reserve_hits == 2
    pool.free(buf)


def test_fail_alloc_every_third_call() -> None:
    pool = kmalloc_pool(1, 16)
    with fail_alloc(pool, every=3) as faults:
        got = [pool.alloc_nowait() for _ in range(6)]
    assert faults.calls >= 6 and faults.failures >= 2
    assert pool.stats().alloc_fn_failures == faults.failures
    for buf in got:
        pool.free(buf)


def test_fail_alloc_with_a_seed_is_repeatable() -> None:
    def run() -> list[bool]:
        pool = buffer_pool(64, min_nr=1, max_nr=64)
        with fail_alloc(pool, probability=0.5, seed=7):
            got = [pool.alloc_nowait(GFP_ATOMIC) for _ in range(40)]
        pattern = [g is None for g in got]
        for g in got:
            pool.free(g)
        return pattern

    first = run()
    assert first == run()
    assert 0 < sum(first) < 40


@pytest.mark.asyncio
async def test_under_fail_alloc_a_waiter_waits_and_times_out() -> None:
    pool = buffer_pool(64, min_nr=1, max_nr=8)
    with fail_alloc(pool, every=1):
        held = await pool.alloc()  # the reserve
        with pytest.raises(AllocTimeoutError):
            await pool.alloc(timeout=0.01)
        waiter = asyncio.ensure_future(pool.alloc())
        await asyncio.sleep(0)
        assert pool.waiters == 1
        pool.free(held)  # the waiter gets it
        assert await asyncio.wait_for(waiter, 5) is held
    pool.free(held)


def test_fail_alloc_refuses_bad_arguments_and_nesting() -> None:
    pool = buffer_pool(64, min_nr=1)
    bad: list[tuple[type[Exception], str, dict[str, object]]] = [
        (ValueError, "one of every= and probability=", {}),
        (ValueError, "every must be >= 1", {"every": 0}),
        (ValueError, "probability must be from 0 to 1", {"probability": 2}),
        (TypeError, "every must be an int", {"every": 1.5}),
    ]
    for error, message, options in bad:
        with pytest.raises(error, match=message), fail_alloc(pool, **options):  # type: ignore[arg-type]
            pass
    with (
        pytest.raises(TypeError, match="pool must be a Mempool"),
        fail_alloc(
            object(),  # type: ignore[arg-type]
            every=1,
        ),
    ):
        pass
    with (
        fail_alloc(pool, every=1),
        pytest.raises(RuntimeError, match="active on it already"),
        fail_alloc(pool, every=2),
    ):
        pass
    assert pool.alloc_nowait() is not None


WIDE_FIXTURES = """
import pytest
from aiomempool import buffer_pool

@pytest.fixture(scope="module")
def shared():
    p = buffer_pool(64, min_nr=1, max_nr=8, name="shared")
    held = p.alloc_nowait()  # kept for the whole module: not a test's leak
    yield p
    p.free(held)
    p.close()

def test_first_uses_it_cleanly(shared):
    shared.free(shared.alloc_nowait())

def test_leaks_into_it(shared):
    shared.alloc_nowait()

def test_last_uses_it_cleanly(shared):
    shared.free(shared.alloc_nowait())
"""


def test_the_plugin_judges_wider_fixtures_pools_by_what_each_test_adds(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_wide=WIDE_FIXTURES)
    result = pytester.runpytest_subprocess("-p", "aiomempool.testing")
    result.assert_outcomes(passed=3, errors=2)
    out = result.stdout.str()
    # The test that leaked, not the one that built the module's pool...
    assert "ERROR at teardown of test_leaks_into_it" in out
    assert "teardown of test_first_uses_it_cleanly" not in out
    # ...and the fixture, when it is finalized with the leak still out.
    assert "module-scoped fixture 'shared' still have elements out" in out
