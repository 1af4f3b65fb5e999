"""A backing allocator for tests: it counts, records and can be switched off."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from aiomempool import GFP, Mempool


class Elem:
    """A unique element; ``n`` says in which order the allocator made it."""

    _ids = itertools.count()

    def __init__(self) -> None:
        self.n = next(self._ids)

    def __repr__(self) -> str:
        return f"Elem({self.n})"


class Backing:
    """alloc_fn and free_fn for a pool, with a log of their calls.

    ``up`` says whether alloc_fn succeeds; ``supply`` bounds how many more
    elements it may make (None: no bound); ``fail_with`` makes it raise.
    """

    def __init__(self, up: bool = True, supply: int | None = None) -> None:
        self.up = up
        self.supply = supply
        self.fail_with: BaseException | None = None
        self.masks: list[GFP] = []
        self.made: list[Elem] = []
        self.freed: list[Elem] = []
        self.free_error: BaseException | None = None

    def alloc(self, gfp_mask: GFP, pool_data: Any) -> Elem | None:
        self.masks.append(gfp_mask)
        if self.fail_with is not None:
            raise self.fail_with
        if not self.up or self.supply == 0:
            return None
        if self.supply is not None:
            self.supply -= 1
        element = Elem()
        self.made.append(element)
        return element

    def free(self, element: Elem, pool_data: Any) -> None:
        self.freed.append(element)
        if self.supply is not None:
            self.supply += 1
        if self.free_error is not None:
            raise self.free_error

    def pool(self, min_nr: int, **kwargs: Any) -> Mempool[Elem]:
        pool = Mempool(min_nr, self.alloc, self.free, **kwargs)
        self.masks.clear()
        return pool


async def settle(rounds: int = 5) -> None:
    """Let every ready task run a few steps."""
    for _ in range(rounds):
        await asyncio.sleep(0)
