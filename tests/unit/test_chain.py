"""BufferChain: a frame in the pool buffers it arrived in."""

from __future__ import annotations

import asyncio

import pytest
from helpers import TIMEOUT, tcp_pair

from aiomempool import BufferChain, PooledWriter, buffer_arena, buffer_pool


def filled(pool: object, parts: list[bytes]) -> BufferChain:
    chain = BufferChain(pool)  # type: ignore[arg-type]
    for part in parts:
        buf = pool.alloc_nowait()  # type: ignore[attr-defined]
        buf[: len(part)] = part
        chain.append(buf, len(part))
    return chain


def test_a_chain_reads_as_its_frame_and_gives_every_buffer_back() -> None:
    pool = buffer_pool(8, min_nr=4)
    chain = filled(pool, [b"abcdefgh", b"ijk", b"lmnopqrs"])
    assert len(chain) == 19 and chain.nbuffers == 3
    assert [bytes(v) for v in chain] == [b"abcdefgh", b"ijk", b"lmnopqrs"]
    assert chain.tobytes() == b"abcdefghijklmnopqrs"
    dest = bytearray(25)
    assert chain.copy_into(dest, 3) == 19
    assert dest[3:22] == b"abcdefghijklmnopqrs"
    with pytest.raises(ValueError, match="must hold 19 bytes from offset 10"):
        chain.copy_into(dest, 10)
    assert pool.stats().outstanding == 3
    with chain:
        pass
    assert pool.stats().outstanding == 0 and len(chain) == 0
    chain.free()  # idempotent
    assert pool.stats().frees == 3
    pool.close()


def test_a_bad_count_is_refused_and_a_refused_free_frees_the_others() -> None:
    pool = buffer_pool(8, min_nr=2)
    chain = BufferChain(pool)
    buf = pool.alloc_nowait()
    assert buf is not None
    with pytest.raises(ValueError, match="from 1 to 8"):
        chain.append(buf, 9)
    with pytest.raises(ValueError, match="from 1 to 8"):
        chain.append(buf, 0)
    chain.append(buf, 8)
    chain.append(memoryview(bytearray(8)), 8)  # not the pool's
    chain.append(pool.alloc_nowait(), 4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a buffer"):
        chain.free()
    assert pool.stats().outstanding == 0
    pool.close()


@pytest.mark.asyncio
async def test_a_writer_sends_a_chain_whole_and_frees_each_buffer_once_sent() -> None:
    arena = buffer_arena(8 << 20, classes=(1024, 65536), trim_after=None)
    async with tcp_pair() as (a, b):
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, a)
        writer = PooledWriter(transport, arena)
        chain = BufferChain(arena)
        payload = bytes(range(256)) * 600  # 153,600 bytes
        at = 0
        while at < len(payload):
            part = payload[at : at + 65536]
            buf = arena.alloc_nowait(len(part))
            assert buf is not None
            buf[:] = part
            chain.append(buf, len(part))
            at += len(part)
        writer.write(chain)
        assert len(chain) == 0  # the writer's now
        b.setblocking(False)
        got = bytearray()
        while len(got) < len(payload):
            got += await asyncio.wait_for(loop.sock_recv(b, 1 << 20), TIMEOUT)
        assert bytes(got) == payload
        await asyncio.wait_for(writer.wait_sent(), TIMEOUT)
        assert arena.stats().total.outstanding == 0
        with pytest.raises(ValueError, match="not a chain"):
            writer.write(BufferChain(arena), 10)
        transport.close()
    arena.close()
