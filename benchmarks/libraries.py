"""The pool libraries from PyPI a user might pick instead, behind adapters.

Each adapter was written from the library's own source, using its API as
its documentation intends, and chooses the cheapest correct calls where the
library offers several. A library that is not installed, fails to import or
raises while measured is reported in the table, not dropped. A library that
cannot wait for an element gets no contended figures: its contended case
shows, on an exhausted pool, what it does instead.

They come from the ``bench`` extra: ``pip install -e '.[bench]'``.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass, field
from time import perf_counter_ns
from types import ModuleType
from typing import Any

from benchmarks.cases import ELEMENTS, LIBRARY, Case
from benchmarks.handrolled import stock
from benchmarks.harness import Batch, Handoff, HandoffRun, NotMeasurable, race

NOT_INSTALLED = "not installed (pip install -e '.[bench]')"

Make = Callable[[ModuleType], Any]


@dataclass(frozen=True)
class Adapter:
    """How to measure one library: its rows, each a label and a maker that
    builds the job from the imported module."""

    dist: str
    module: str
    sync: list[tuple[str, Make]] = field(default_factory=list)
    awaited: list[tuple[str, Make]] = field(default_factory=list)
    handoff: tuple[str, Make] | None = None
    known_failures: dict[str, str] = field(default_factory=dict)


# -- fastalloc ---------------------------------------------------------------
# FixedPool and AsyncPool keep a stack of objects; AsyncPool.get_async()
# takes an asyncio.Lock and raises PoolEmptyError when the pool is empty.
# release() needs no lock on the loop's thread, and is cheaper than
# release_async(), so the cycle uses it.


def _fastalloc_fixed(fa: ModuleType) -> Batch:
    async def batch(n: int) -> float:
        pool = fa.FixedPool(
            bytearray, ELEMENTS, factory=lambda: bytearray(16), pre_initialize=True
        )
        start = perf_counter_ns()
        for _ in range(n):
            x = pool.get()
            pool.release(x)
        return (perf_counter_ns() - start) / n

    return batch


def _fastalloc_async_pool(fa: ModuleType) -> Any:
    return fa.AsyncPool(
        bytearray, ELEMENTS, factory=lambda: bytearray(16), pre_initialize=True
    )


def _fastalloc_async(fa: ModuleType) -> Batch:
    async def batch(n: int) -> float:
        pool = _fastalloc_async_pool(fa)
        start = perf_counter_ns()
        for _ in range(n):
            x = await pool.get_async()
            pool.release(x)
        return (perf_counter_ns() - start) / n

    return batch


def _fastalloc_handoff(fa: ModuleType) -> HandoffRun:
    async def run(tasks: int, cycles: int) -> Handoff:
        pool = _fastalloc_async_pool(fa)
        held = [await pool.get_async() for _ in range(ELEMENTS)]
        return await _show_no_wait("get_async()", pool.get_async, held)

    return run


# -- object-pool-async -------------------------------------------------------
# Pool.borrow_async() re-checks every object's status under an async RLock,
# picks one at random and returns an ObjectPack, or None when none is free;
# ObjectPack.close() gives it back.


async def _object_pool(op: ModuleType) -> Any:
    pool = op.Pool()
    for element in stock(ELEMENTS):
        await pool.add_async(element)
    return pool


def _object_pool_async(op: ModuleType) -> Batch:
    async def batch(n: int) -> float:
        pool = await _object_pool(op)
        start = perf_counter_ns()
        for _ in range(n):
            pack = await pool.borrow_async()
            pack.close()
        return (perf_counter_ns() - start) / n

    return batch


def _object_pool_handoff(op: ModuleType) -> HandoffRun:
    async def run(tasks: int, cycles: int) -> Handoff:
        pool = await _object_pool(op)
        held = [await pool.borrow_async() for _ in range(ELEMENTS)]
        return await _show_no_wait("borrow_async()", pool.borrow_async, held)

    return run


# -- anopool -----------------------------------------------------------------
# AsyncPool.acquire() is an async context manager over a queue.SimpleQueue
# of idle objects and an asyncio.Condition to wait on; Pool is its
# thread-safe, blocking twin, usable from a loop only while it never waits.


def _anopool_sync(ap: ModuleType) -> Batch:
    class Buffers(ap.Manager):  # type: ignore[name-defined, misc]
        def create(self) -> bytearray:
            return bytearray(16)

    async def batch(n: int) -> float:
        pool = ap.Pool(Buffers(), max_size=ELEMENTS)
        pool.open()
        start = perf_counter_ns()
        for _ in range(n):
            with pool.acquire():
                pass
        return (perf_counter_ns() - start) / n

    return batch


async def _anopool_async_pool(ap: ModuleType) -> Any:
    class Buffers(ap.AsyncManager):  # type: ignore[name-defined, misc]
        async def create(self) -> bytearray:
            return bytearray(16)

    pool = ap.AsyncPool(Buffers(), max_size=ELEMENTS)
    await pool.open()
    return pool


def _anopool_async(ap: ModuleType) -> Batch:
    async def batch(n: int) -> float:
        pool = await _anopool_async_pool(ap)
        start = perf_counter_ns()
        for _ in range(n):
            async with pool.acquire():
                pass
        return (perf_counter_ns() - start) / n

    return batch


def _anopool_handoff(ap: ModuleType) -> HandoffRun:
    async def run(tasks: int, cycles: int) -> Handoff:
        pool = await _anopool_async_pool(ap)
        waits: list[int] = []

        async def worker() -> None:
            for _ in range(cycles):
                start = perf_counter_ns()
                async with pool.acquire():
                    waits.append(perf_counter_ns() - start)
                    await asyncio.sleep(0)

        return await race([worker() for _ in range(tasks)], waits)

    return run


ADAPTERS = [
    Adapter(
        "fastalloc",
        "fastalloc",
        sync=[("FixedPool get() + release()", _fastalloc_fixed)],
        awaited=[("AsyncPool await get_async() + release()", _fastalloc_async)],
        handoff=("AsyncPool", _fastalloc_handoff),
    ),
    Adapter(
        "object-pool-async",
        "object_pool",
        awaited=[("Pool await borrow_async() + close()", _object_pool_async)],
        handoff=("Pool", _object_pool_handoff),
    ),
    Adapter(
        "anopool",
        "anopool",
        sync=[("Pool (threading) with acquire()", _anopool_sync)],
        awaited=[("AsyncPool async with acquire()", _anopool_async)],
        handoff=("AsyncPool", _anopool_handoff),
        known_failures={
            "_queue.Empty": (
                "anopool's AsyncPool.acquire() catches asyncio.QueueEmpty around "
                "queue.SimpleQueue.get_nowait(), which raises queue.Empty: every "
                "acquire() that finds no idle object raises, so it can neither "
                "create its first object nor wait"
            )
        },
    ),
]


async def _show_no_wait(call: str, take: Callable[[], Any], held: list[Any]) -> Handoff:
    """On a pool whose every element is held: what ``take()`` does instead
    of waiting, as a NotMeasurable whose message says so."""
    try:
        got = await asyncio.wait_for(take(), 0.1)
    except asyncio.TimeoutError:
        raise RuntimeError(
            f"{call} waited on an empty pool: write an adapter"
        ) from None
    except Exception as exc:
        raise NotMeasurable(
            f"cannot wait: {call} on an empty pool raises {type(exc).__name__}"
        ) from None
    raise NotMeasurable(f"cannot wait: {call} on an empty pool returns {got!r}")


# -- the cases ---------------------------------------------------------------


@dataclass(frozen=True)
class Loaded:
    """A library as found in this environment."""

    adapter: Adapter
    version: str
    module: ModuleType | None
    problem: str


def load() -> list[Loaded]:
    """Import every library; say what is wrong with those that fail."""
    found = []
    for adapter in ADAPTERS:
        try:
            version = importlib.metadata.version(adapter.dist)
        except importlib.metadata.PackageNotFoundError:
            found.append(Loaded(adapter, "", None, NOT_INSTALLED))
            continue
        try:
            module = importlib.import_module(adapter.module)
        except Exception as exc:
            problem = f"cannot import {adapter.module}: {type(exc).__name__}: {exc}"
            found.append(Loaded(adapter, version, None, problem))
            continue
        found.append(Loaded(adapter, version, module, ""))
    return found


def _case(lib: Loaded, label: str, make: Make) -> Case[Any]:
    name = f"{lib.adapter.dist} {lib.version}".strip()
    text = f"{name}: {label}"
    known = lib.adapter.known_failures
    if lib.module is None:
        return Case(text, LIBRARY, status=lib.problem, known_failures=known)
    try:
        job = make(lib.module)
    except Exception as exc:  # an API that moved
        status = f"fails: {type(exc).__name__}: {exc}"
        return Case(text, LIBRARY, status=status, known_failures=known)
    return Case(text, LIBRARY, job, known_failures=known)


def sync_cases(libs: list[Loaded]) -> list[Case[Batch]]:
    return [_case(lib, label, make) for lib in libs for label, make in lib.adapter.sync]


def awaited_cases(libs: list[Loaded]) -> list[Case[Batch]]:
    return [
        _case(lib, label, make) for lib in libs for label, make in lib.adapter.awaited
    ]


def handoff_cases(libs: list[Loaded]) -> list[Case[HandoffRun]]:
    return [
        _case(lib, *lib.adapter.handoff)
        for lib in libs
        if lib.adapter.handoff is not None
    ]
