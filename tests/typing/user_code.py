"""A user's strictly typed code: it must pass ``mypy --strict`` with no
assert and no cast (see test_user_types.py)."""

from __future__ import annotations

from aiomempool import GFP_ATOMIC, GFP_KERNEL, GFP_NOWAIT, buffer_pool, kmalloc_pool


async def main() -> None:
    pool = buffer_pool(4096, min_nr=2, max_nr=8)
    buf: memoryview = await pool.alloc()
    pool.free(buf)
    also: memoryview = await pool.alloc(GFP_KERNEL, timeout=1.0)
    pool.free(also)
    async with pool.element() as view:
        view[:2] = b"hi"
    maybe = await pool.alloc(GFP_NOWAIT)
    reveal_type(maybe)  # noqa: F821
    pool.free(maybe)
    urgent = pool.alloc_nowait(GFP_ATOMIC)
    reveal_type(urgent)  # noqa: F821
    pool.free(urgent)
    kp = kmalloc_pool(2, 100)
    b: bytearray = await kp.alloc()
    reveal_type(b)  # noqa: F821
    kp.free(b)
