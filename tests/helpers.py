"""What several test files share: a backing allocator that counts, records
and can be switched off; the address of a buffer; a bound on every wait;
sockets, streams and servers on 127.0.0.1, and their teardown."""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any, ClassVar, Protocol

from aiomempool import GFP, Mempool

#: Every wait of a test is bounded by this, in seconds: ample on a loaded
#: machine (an example started as a subprocess included), and a stuck test
#: still fails long before pytest's own timeout.
TIMEOUT = 15.0

#: The modes of ``Backing``: which masks its alloc_fn serves.
MODES = ("up", "down", "reclaim_only", "high_only")


class Elem:
    """A unique element; ``n`` says in which order the elements were made.
    Weakly referenced, as debug mode recognises a second free by."""

    __slots__ = ("__weakref__", "n")

    _ids: ClassVar[itertools.count[int]] = itertools.count()

    def __init__(self) -> None:
        self.n = next(Elem._ids)

    def __repr__(self) -> str:
        return f"Elem({self.n})"


class Backing:
    """alloc_fn and free_fn for a pool, with a log of their calls.

    ``mode`` says which masks alloc_fn serves: ``"up"`` every one,
    ``"down"`` none, ``"reclaim_only"`` those with ``DIRECT_RECLAIM`` (what
    only the third step of the kernel's order gets), ``"high_only"`` those
    with ``HIGH``; ``up`` reads and sets ``"up"`` or ``"down"``.

    ``supply`` bounds how many more elements it may make (None: no bound),
    as memory does: each element made takes one, each element freed gives it
    back (it is ``limit`` minus the elements live); a mask with ``GFP.HIGH``
    may take ``headroom`` more. A failure returns None, or raises
    ``MemoryError`` if ``raises``; ``fail_with`` makes alloc_fn raise that
    instead, and ``free_error`` makes free_fn raise it once it has recorded
    the free.

    It never raises into the pool for what it finds wrong (a ``pool_data``
    that is not its own, a mask that is not a ``GFP``, a free of an element
    it never made or has had back already, or of one whose id is in
    ``held``, the test's): that goes to ``errors``, for the test to check.
    """

    def __init__(
        self,
        up: bool = True,
        supply: int | None = None,
        *,
        headroom: int = 0,
        raises: bool = False,
        pool_data: Any = None,
    ) -> None:
        self.mode = "up" if up else "down"
        #: The most elements live at once (None: no bound).
        self.limit = supply
        self.headroom = headroom
        self.raises = raises
        self.pool_data = pool_data
        self.fail_with: BaseException | None = None
        self.free_error: BaseException | None = None
        self.masks: list[GFP] = []
        self.made: list[Elem] = []
        self.freed: list[Elem] = []
        self.disposed: set[int] = set()  # the n of every element freed
        self.failures = 0
        self.errors: list[str] = []
        self.held: Any = ()  # ids of the elements the test holds
        self._made: dict[int, Elem] = {}

    @property
    def up(self) -> bool:
        return self.mode == "up"

    @up.setter
    def up(self, up: bool) -> None:
        self.mode = "up" if up else "down"

    @property
    def live(self) -> int:
        """Elements made and not freed yet."""
        return len(self.made) - len(self.freed)

    @property
    def supply(self) -> int | None:
        """How many more elements alloc_fn may make (for masks without HIGH)."""
        return None if self.limit is None else self.limit - self.live

    @supply.setter
    def supply(self, supply: int | None) -> None:
        self.limit = None if supply is None else self.live + supply

    def room(self, gfp_mask: GFP) -> int | None:
        """How many more elements alloc_fn would make now for ``gfp_mask``,
        one after the other (None: any number)."""
        mode = self.mode
        if (
            mode == "down"
            or (mode == "reclaim_only" and not gfp_mask & GFP.DIRECT_RECLAIM)
            or (mode == "high_only" and not gfp_mask & GFP.HIGH)
        ):
            return 0
        if self.limit is None:
            return None
        extra = self.headroom if gfp_mask & GFP.HIGH else 0
        return max(0, self.limit + extra - self.live)

    def can(self, gfp_mask: GFP) -> bool:
        """Whether alloc_fn would make an element now for ``gfp_mask``."""
        return self.room(gfp_mask) != 0

    def makes(self, element: object) -> bool:
        """Whether ``element`` is one that this alloc_fn made."""
        return isinstance(element, Elem) and self._made.get(element.n) is element

    def alloc(self, gfp_mask: GFP, pool_data: Any) -> Elem | None:
        if pool_data is not self.pool_data:
            self.errors.append(f"alloc_fn got pool_data={pool_data!r}")
        if type(gfp_mask) is not GFP:
            self.errors.append(f"alloc_fn got gfp_mask={gfp_mask!r}, not a GFP")
        self.masks.append(gfp_mask)
        if self.fail_with is not None:
            raise self.fail_with
        if not self.can(gfp_mask):
            self.failures += 1
            if self.raises:
                raise MemoryError("backing allocator failed")
            return None
        element = Elem()
        self.made.append(element)
        self._made[element.n] = element
        return element

    def free(self, element: Elem, pool_data: Any) -> None:
        if pool_data is not self.pool_data:
            self.errors.append(f"free_fn got pool_data={pool_data!r}")
        if not self.makes(element):
            self.errors.append(f"free_fn got {element!r}, which alloc_fn never made")
        elif element.n in self.disposed:
            self.errors.append(f"free_fn got {element!r} twice")
        else:
            self.disposed.add(element.n)
        if id(element) in self.held:
            self.errors.append(f"free_fn got {element!r}, which the test holds")
        self.freed.append(element)
        if self.free_error is not None:
            raise self.free_error

    def pool(self, min_nr: int, **options: Any) -> Mempool[Elem]:
        """A Mempool on this allocator; the log of masks starts after the
        reserve is made."""
        pool = Mempool(min_nr, self.alloc, self.free, self.pool_data, **options)
        self.masks.clear()
        return pool


def drained(
    min_nr: int = 1, **kwargs: Any
) -> tuple[Backing, Mempool[Elem], list[Elem]]:
    """A pool whose allocator is down and whose reserve is all handed out."""
    backing = Backing()
    pool = backing.pool(min_nr, **kwargs)
    backing.up = False
    held = [pool.alloc_nowait() for _ in range(min_nr)]
    assert pool.curr_nr == 0
    return backing, pool, held  # type: ignore[return-value]


async def settle(rounds: int = 5) -> None:
    """Let every ready task run a few steps."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def address(buf: Any) -> int:
    """Where the first byte of a writable buffer lives (no export kept)."""
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


# -- sockets, streams and servers on 127.0.0.1 ---------------------------------


@asynccontextmanager
async def tcp_pair() -> AsyncIterator[tuple[socket.socket, socket.socket]]:
    """Two connected non-blocking sockets on 127.0.0.1; closed on exit."""
    loop = asyncio.get_running_loop()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.setblocking(False)
        client = socket.socket()
        client.setblocking(False)
        try:
            accepted = asyncio.ensure_future(loop.sock_accept(listener))
            await asyncio.wait_for(
                loop.sock_connect(client, listener.getsockname()), TIMEOUT
            )
            server, _ = await asyncio.wait_for(accepted, TIMEOUT)
        except BaseException:
            client.close()
            raise
    server.setblocking(False)
    try:
        yield server, client
    finally:
        server.close()
        client.close()


async def close(writer: asyncio.StreamWriter) -> None:
    """Close a stream and wait, bounded, until it is closed (a peer that
    reset the connection first is no error)."""
    writer.close()
    with suppress(ConnectionError):
        await asyncio.wait_for(writer.wait_closed(), TIMEOUT)


class Served(Protocol):
    """A server's protocol that resolves ``lost`` when its connection ends."""

    lost: asyncio.Future[None]

    @property
    def transport(self) -> asyncio.Transport: ...


async def shut_down(server: asyncio.AbstractServer, made: Sequence[Served]) -> None:
    """Close ``server``, abort the connections still open among ``made``
    (the protocols it made), and wait, bounded, until every one has ended."""
    server.close()
    await asyncio.wait_for(server.wait_closed(), TIMEOUT)
    for protocol in made:
        if not protocol.lost.done():
            protocol.transport.abort()
    await asyncio.wait_for(asyncio.gather(*(p.lost for p in made)), TIMEOUT)
