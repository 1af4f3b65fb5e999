"""The baselines: a bare list, bytearray(n), and the pools users write by hand
with asyncio.Queue, asyncio.Semaphore and asyncio.Condition.

Each uncontended batch builds its pool, then times ``n`` cycles of take one
element, give it back. Each contended run has ``tasks`` tasks loop ``cycles``
times over take, ``await asyncio.sleep(0)``, give back, on ``ELEMENTS``
elements, timing how long every take waited.
"""

from __future__ import annotations

import asyncio
from time import perf_counter_ns

from benchmarks.cases import ELEMENTS, IN_FLIGHT
from benchmarks.harness import Batch, Handoff, race


def stock(count: int, size: int = 16) -> list[bytearray]:
    return [bytearray(size) for _ in range(count)]


def queue_of(elements: list[bytearray]) -> asyncio.Queue[bytearray]:
    queue: asyncio.Queue[bytearray] = asyncio.Queue()
    for element in elements:
        queue.put_nowait(element)
    return queue


# -- uncontended -------------------------------------------------------------


async def list_cycle(n: int) -> float:
    """The floor: what taking and giving back costs with no pool logic."""
    lst = stock(ELEMENTS)
    start = perf_counter_ns()
    for _ in range(n):
        x = lst.pop()
        lst.append(x)
    return (perf_counter_ns() - start) / n


async def queue_cycle(n: int) -> float:
    q = queue_of(stock(ELEMENTS))
    start = perf_counter_ns()
    for _ in range(n):
        x = await q.get()
        q.put_nowait(x)
    return (perf_counter_ns() - start) / n


async def semaphore_cycle(n: int) -> float:
    sem = asyncio.Semaphore(ELEMENTS)
    lst = stock(ELEMENTS)
    start = perf_counter_ns()
    for _ in range(n):
        await sem.acquire()
        x = lst.pop()
        lst.append(x)
        sem.release()
    return (perf_counter_ns() - start) / n


async def condition_cycle(n: int) -> float:
    cond = asyncio.Condition()
    lst = stock(ELEMENTS)
    start = perf_counter_ns()
    for _ in range(n):
        async with cond:
            while not lst:
                await cond.wait()
            x = lst.pop()
        async with cond:  # notify() needs the lock: giving back awaits
            lst.append(x)
            cond.notify()
    return (perf_counter_ns() - start) / n


def bytearray_cycle(size: int) -> Batch:
    """``bytearray(size)`` with ``IN_FLIGHT`` alive: no pool at all."""

    async def batch(n: int) -> float:
        ring = stock(IN_FLIGHT, size)
        start = perf_counter_ns()
        for i in range(n):
            ring[i % IN_FLIGHT] = bytearray(size)
        return (perf_counter_ns() - start) / n

    return batch


def queue_buffer_cycle(size: int) -> Batch:
    """An ``asyncio.Queue`` of ``bytearray(size)``, ``IN_FLIGHT`` out."""

    async def batch(n: int) -> float:
        q = queue_of(stock(2 * IN_FLIGHT, size))
        ring = [q.get_nowait() for _ in range(IN_FLIGHT)]
        start = perf_counter_ns()
        for i in range(n):
            x = await q.get()
            k = i % IN_FLIGHT
            q.put_nowait(ring[k])
            ring[k] = x
        return (perf_counter_ns() - start) / n

    return batch


# -- contended ---------------------------------------------------------------


async def queue_handoff(tasks: int, cycles: int) -> Handoff:
    q = queue_of(stock(ELEMENTS))
    waits: list[int] = []

    async def worker() -> None:
        for _ in range(cycles):
            start = perf_counter_ns()
            x = await q.get()
            waits.append(perf_counter_ns() - start)
            await asyncio.sleep(0)
            q.put_nowait(x)

    return await race([worker() for _ in range(tasks)], waits)


async def semaphore_handoff(tasks: int, cycles: int) -> Handoff:
    sem = asyncio.Semaphore(ELEMENTS)
    lst = stock(ELEMENTS)
    waits: list[int] = []

    async def worker() -> None:
        for _ in range(cycles):
            start = perf_counter_ns()
            await sem.acquire()
            x = lst.pop()
            waits.append(perf_counter_ns() - start)
            await asyncio.sleep(0)
            lst.append(x)
            sem.release()

    return await race([worker() for _ in range(tasks)], waits)


async def condition_handoff(tasks: int, cycles: int) -> Handoff:
    cond = asyncio.Condition()
    lst = stock(ELEMENTS)
    waits: list[int] = []

    async def worker() -> None:
        for _ in range(cycles):
            start = perf_counter_ns()
            async with cond:
                while not lst:
                    await cond.wait()
                x = lst.pop()
            waits.append(perf_counter_ns() - start)
            await asyncio.sleep(0)
            async with cond:
                lst.append(x)
                cond.notify()

    return await race([worker() for _ in range(tasks)], waits)
