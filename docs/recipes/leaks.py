"""Finding leaked elements: outstanding counts, named pools, allocation sites.

An element that is never freed is a leak: ``stats().outstanding`` counts the
elements handed out and not yet freed, so a pool at rest should show 0.
"""

from __future__ import annotations

import asyncio
import traceback
from typing import Generic, TypeVar

from sizing import bounded_pool

from aiomempool import GFP, GFP_KERNEL, GFP_NOWAIT, Mempool, named_pools

T = TypeVar("T")


def leak_report() -> list[str]:
    """A line for every named pool with elements out: for shutdown, or a
    test's teardown once the work is done."""
    return [
        f"{pool.name}: {pool.stats().outstanding} element(s) not freed"
        for pool in named_pools()
        if pool.stats().outstanding
    ]


class AllocationSites(Generic[T]):
    """A pool's alloc and free that remember where each element still out
    was allocated. A debugging aid: each allocation costs a stack walk."""

    def __init__(self, pool: Mempool[T]) -> None:
        self.pool = pool
        self.sites: dict[int, tuple[T, list[str]]] = {}

    async def alloc(self, gfp_mask: GFP = GFP_KERNEL) -> T | None:
        return self._remember(await self.pool.alloc(gfp_mask))

    def alloc_nowait(self, gfp_mask: GFP = GFP_NOWAIT) -> T | None:
        return self._remember(self.pool.alloc_nowait(gfp_mask))

    def free(self, element: T | None) -> None:
        self.sites.pop(id(element), None)
        self.pool.free(element)

    def outstanding(self) -> list[str]:
        """Where each element still out was allocated, innermost call last."""
        return ["".join(stack) for _, stack in self.sites.values()]

    def _remember(self, element: T | None) -> T | None:
        if element is not None:
            stack = traceback.format_stack(limit=4)[:-2]  # without this class
            self.sites[id(element)] = (element, stack)
        return element


async def handle(pool: AllocationSites[memoryview], request: bytes) -> int:
    buf = await pool.alloc()
    assert buf is not None
    if not request:
        return 0  # the bug: this path forgets to free the buffer
    buf[: len(request)] = request
    pool.free(buf)
    return len(request)


async def main() -> None:
    pool = AllocationSites(bounded_pool(4096, min_nr=2, max_nr=16, name="leaky"))
    for request in (b"GET /", b"", b"GET /about"):
        await handle(pool, request)

    print("\n".join(leak_report()))
    print("allocated at:\n" + "\n".join(pool.outstanding()))
    assert "leaky: 1 element(s) not freed" in leak_report()
    assert "in handle" in pool.outstanding()[0]


if __name__ == "__main__":
    asyncio.run(main())
