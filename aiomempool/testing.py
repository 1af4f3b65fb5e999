"""Testing aids for the test suites of aiomempool's users.

Two tools:

* A pytest plugin, off unless enabled (``-p aiomempool.testing`` on the
  command line, or ``addopts = "-p aiomempool.testing"`` in the pytest
  configuration): a test fails when a pool it created, in the test or in
  its fixtures, still has elements out once the test and its fixtures are
  over. Every element is counted (Netty's leak presence detector in test
  mode): nothing waits for the garbage collector. The pools of fixtures
  wider than a test are judged by what each test adds to them, and by what
  they still have out once their fixture is finalized. For a pool in debug mode
  the report lists where each element out was allocated. A test that keeps
  elements out on purpose says so with
  ``@pytest.mark.aiomempool_leaks_allowed``.
* ``fail_alloc(pool, ...)``, the kernel's ``fail_mempool_alloc`` fault
  injection: while the block runs, the pool's backing allocator fails every
  Nth call, or with a seeded probability, so that a test sees its code run
  on the reserve, wait, time out or get None.

Example:
    ```python
    from aiomempool import buffer_pool
    from aiomempool.testing import fail_alloc

    async def test_the_server_survives_an_allocator_that_fails() -> None:
        pool = buffer_pool(4096, min_nr=2, max_nr=8)
        with fail_alloc(pool, every=1) as faults:  # every call fails
            a = await pool.alloc()  # from the reserve
            assert pool.alloc_nowait() is not None  # the reserve's last
            assert pool.alloc_nowait() is None  # nothing left to give
        assert faults.failures >= 2
        pool.free(a)
    ```
"""

from __future__ import annotations

import random
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from . import mempool as _mempool
from .gfp import GFP
from .mempool import Mempool

__all__ = ["Faults", "LeakReport", "PoolWatch", "fail_alloc", "watch_pools"]

#: The marker of a test whose pools may keep elements out at its end.
LEAKS_ALLOWED = "aiomempool_leaks_allowed"


@dataclass
class Faults:
    """What ``fail_alloc()`` did: calls of the backing allocator it saw, and
    how many of them it made fail."""

    calls: int = 0
    """Calls of ``alloc_fn`` while the block ran."""
    failures: int = 0
    """Of those, the calls that failed (``alloc_fn`` was not called)."""


@contextmanager
def fail_alloc(
    pool: Mempool[Any],
    *,
    every: int | None = None,
    probability: float | None = None,
    seed: int | None = None,
) -> Iterator[Faults]:
    """Make ``pool``'s backing allocator fail while the block runs.

    ``every=N`` fails the Nth call, the 2Nth, and so on (``every=1``: every
    call); ``probability=p`` fails each call with probability ``p``, drawn
    from ``random.Random(seed)``, so a seed makes the run repeatable. The
    pool sees a failing ``alloc_fn`` (it returns nothing), and does what it
    does then: serves from its reserve, retries with a stronger mask, waits,
    or returns None. Yields a ``Faults`` that counts what happened. On exit
    the allocator works again (a waiter is served once an element comes
    back, or at the pool's next retry).

    Synchronous to enter and leave; not for pools shared across threads.

    Raises:
        TypeError: ``pool`` is not a Mempool; ``every`` is not an int;
            ``probability`` is not a number.
        ValueError: neither or both of ``every`` and ``probability`` given;
            ``every < 1``; ``probability`` not from 0 to 1.
        RuntimeError: faults are already injected into ``pool``.
    """
    if not isinstance(pool, Mempool):
        raise TypeError(f"pool must be a Mempool, not {type(pool).__name__}")
    if (every is None) == (probability is None):
        raise ValueError("fail_alloc() takes one of every= and probability=")
    faults = Faults()
    if every is not None:
        if type(every) is not int:
            raise TypeError(f"every must be an int, not {type(every).__name__}")
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        period = every

        def fails(gfp_mask: GFP) -> bool:
            faults.calls += 1
            failed = faults.calls % period == 0
            faults.failures += failed
            return failed

    else:
        if type(probability) is bool or not isinstance(probability, (int, float)):
            raise TypeError(
                f"probability must be a number, not {type(probability).__name__}"
            )
        if not 0 <= probability <= 1:
            raise ValueError(f"probability must be from 0 to 1, got {probability}")
        draw = random.Random(seed).random
        chance = float(probability)

        def fails(gfp_mask: GFP) -> bool:
            faults.calls += 1
            failed = draw() < chance
            faults.failures += failed
            return failed

    pool._inject_faults(fails)  # RuntimeError if faults are injected already
    try:
        yield faults
    finally:
        pool._inject_faults(None)


@dataclass
class LeakReport:
    """The pools a watch saw built whose elements are not all back."""

    leaks: list[tuple[Mempool[Any], int, list[str]]] = field(default_factory=list)
    """Each pool, its elements out, and where each was allocated (debug
    mode only; empty otherwise)."""

    def __bool__(self) -> bool:
        return bool(self.leaks)

    def __str__(self) -> str:
        lines = []
        for pool, out, sites in self.leaks:
            lines.append(f"{pool!r} has {out} element(s) out")
            for site in sites:
                lines.append("  allocated at:\n" + site.rstrip("\n"))
            if not sites:
                lines.append(
                    "  (build the pool with debug=True, or set AIOMEMPOOL_DEBUG=1, "
                    "to see where each was allocated)"
                )
        return "\n".join(lines)


class PoolWatch:
    """The pools built while a ``watch_pools()`` block runs, held
    (strongly) until it ends: a pool dropped with elements out is reported
    too, without waiting for the garbage collector."""

    def __init__(self) -> None:
        self.pools: list[Mempool[Any]] = []
        """Every pool built so far, in order."""

    def leaks(self) -> LeakReport:
        """Those of ``pools`` with elements out now."""
        report = LeakReport()
        for pool in self.pools:
            out = pool.stats().outstanding
            if out > 0:
                try:
                    sites = [o.allocated_at for o in pool.outstanding()]
                except RuntimeError:  # not in debug mode: no sites recorded
                    sites = []
                report.leaks.append((pool, out, sites))
        return report


@contextmanager
def watch_pools() -> Iterator[PoolWatch]:
    """Watch every pool built while the block runs: the plugin's watch,
    usable without pytest. Watches nest.

    Example:
        ```python
        with watch_pools() as watch:
            run_my_code()
        assert not watch.leaks(), str(watch.leaks())
        ```
    """
    watch = PoolWatch()
    outer = _mempool._created

    def created(pool: Mempool[Any]) -> None:
        watch.pools.append(pool)
        if outer is not None:
            outer(pool)

    _mempool._created = created
    try:
        yield watch
    finally:
        _mempool._created = outer


# -- the pytest plugin: loaded by -p aiomempool.testing --------------------

try:
    import pytest
except ImportError:  # pytest is the user's, if any: fail_alloc() needs none
    pytest = None  # type: ignore[assignment]

if pytest is not None:
    _WATCH = pytest.StashKey[PoolWatch]()

    class _Wide:
        """Pools built by fixtures wider than a test (class, module,
        session): judged by what each test adds to them, and by what they
        still have out once their fixture is finalized."""

        def __init__(self) -> None:
            self.watch: PoolWatch | None = None  # the running test's
            # id(pool) -> (pool, elements out when the test began)
            self.baseline: dict[int, tuple[Mempool[Any], int]] = {}
            # id(fixturedef) -> the pools its setup built
            self.by_fixture: dict[int, list[Mempool[Any]]] = {}

        def begin(self) -> None:
            for key, (pool, _) in list(self.baseline.items()):
                self.baseline[key] = (pool, pool.stats().outstanding)

        def grown(self) -> LeakReport:
            report = LeakReport()
            for pool, before in self.baseline.values():
                out = pool.stats().outstanding
                if out > before:
                    report.leaks.append((pool, out - before, []))
            return report

    _WIDE = _Wide()

    def pytest_configure(config: pytest.Config) -> None:
        config.addinivalue_line(
            "markers",
            f"{LEAKS_ALLOWED}: the test's pools may keep elements out at its "
            "end (aiomempool.testing's leak check passes over it)",
        )

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(
        item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, object, object]:
        # From the setup of the test's fixtures to their teardown.
        _WIDE.begin()
        with watch_pools() as watch:
            item.stash[_WATCH] = watch
            _WIDE.watch = watch
            try:
                return (yield)
            finally:
                _WIDE.watch = None

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(
        fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
    ) -> Generator[None, object, object]:
        watch = _WIDE.watch
        if watch is None or fixturedef.scope == "function":
            return (yield)
        start = len(watch.pools)
        try:
            return (yield)
        finally:
            # Built for longer than this test: not its own to give back.
            built = watch.pools[start:]
            del watch.pools[start:]
            _WIDE.by_fixture.setdefault(id(fixturedef), []).extend(built)
            for pool in built:
                _WIDE.baseline[id(pool)] = (pool, pool.stats().outstanding)

    def pytest_fixture_post_finalizer(
        fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
    ) -> None:
        pools = _WIDE.by_fixture.pop(id(fixturedef), [])
        report = LeakReport()
        for pool in pools:
            _WIDE.baseline.pop(id(pool), None)
            out = pool.stats().outstanding
            if out > 0:
                report.leaks.append((pool, out, []))
        if report:
            raise pytest.fail.Exception(
                f"aiomempool: pools built by the {fixturedef.scope}-scoped "
                f"fixture {fixturedef.argname!r} still have elements out after "
                f"it:\n{report}",
                pytrace=False,
            )

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(
        item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, object, object]:
        result = yield  # the fixtures are torn down: count now
        watch = item.stash.get(_WATCH, None)
        if watch is None or item.get_closest_marker(LEAKS_ALLOWED) is not None:
            return result
        report = watch.leaks()
        report.leaks.extend(_WIDE.grown().leaks)
        if report:
            raise pytest.fail.Exception(
                "aiomempool: pools this test used still have elements out "
                f"after it:\n{report}",
                pytrace=False,
            )
        return result
