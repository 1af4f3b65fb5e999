"""Pooled buffers for code written with sockets: ``recv_into(pool, sock)``.

``async with recv_into(pool, sock) as view:`` is a buffer of the pool that
the socket received into (a cancellation loses no byte), given back on
exit. Built on the pool's public API only.
"""

from __future__ import annotations

import asyncio
import socket
from contextlib import suppress
from types import TracebackType

from .mempool import Mempool

__all__ = ["RecvInto", "recv_into"]


def recv_into(pool: Mempool[memoryview], sock: socket.socket) -> RecvInto:
    """Receive once from ``sock`` into a buffer of ``pool``, for one block.

    ``async with recv_into(pool, sock) as view:`` borrows a buffer with
    ``await pool.alloc()``, receives once into it (``sock.recv_into()``)
    and binds ``view`` to the bytes received: a memoryview of exactly that
    many bytes, empty at end of file. On exit, however the block ends
    (normally, by an exception, by cancellation), ``view`` is released and
    the buffer goes back to the pool.

    Cancellation never loses a byte: the receive is made by the task
    itself, after it has waited for the socket to be readable, with no
    await between the receive and the block. So a cancellation (a timeout,
    a task group, a cancel scope) that lands while waiting for the pool or
    for bytes, even in the loop iteration where the bytes arrive, leaves
    every byte in the socket for the next receive; and bytes received are
    always in ``view``. (``loop.sock_recv_into()`` receives in a callback of
    the loop: a cancellation in that iteration throws away what it read.)

    ``sock`` must be a non-blocking socket (``sock.setblocking(False)``),
    as for ``loop.sock_recv_into()``, on a loop with ``add_reader()``
    (asyncio's selector loops, uvloop); ``pool`` a pool of writable
    memoryviews, such as ``buffer_pool()``'s.

    Awaits on entry: for a buffer, then for bytes. Do not keep ``view``
    past the block: it is released there (using it raises ``ValueError``).

    Example:
        ```python
        while True:
            async with recv_into(rx, sock) as view:
                if not view:
                    break  # end of file
                await loop.sock_sendall(sock, view)
        ```

    Raises:
        TypeError: ``pool`` is not a ``Mempool``.
        PoolClosedError: on entry, as ``pool.alloc()`` raises it.
        OSError: on entry, as ``sock.recv_into()`` raises it.
    """
    return RecvInto(pool, sock)


class RecvInto:
    """What ``recv_into()`` returns: an async context manager, entered once.

    Entry borrows a buffer and receives into it; exit gives the buffer back,
    however the block ends. No path out of it keeps a buffer.
    """

    # Ownership: the buffer is held by the task in __aenter__ from
    # pool.alloc() returning to its storing in _buf, with no await in
    # between; then by _buf until __aexit__ (or the failed receive) frees it.
    # So no path out of this object keeps a buffer.

    __slots__ = ("_buf", "_entered", "_pool", "_sock", "_view")

    def __init__(self, pool: Mempool[memoryview], sock: socket.socket) -> None:
        if not isinstance(pool, Mempool):
            raise TypeError(f"pool must be a Mempool, not {type(pool).__name__}")
        self._pool = pool
        self._sock = sock
        self._buf: memoryview | None = None
        self._view: memoryview | None = None
        self._entered = False

    def __repr__(self) -> str:
        state = "" if self._view is None else f" received={len(self._view)}"
        return f"<RecvInto{state} pool={self._pool!r}>"

    async def __aenter__(self) -> memoryview:
        if self._entered:
            raise RuntimeError(
                f"{self._pool!r}: this recv_into() context is entered already "
                "(one recv_into() per async with)"
            )
        self._entered = True  # before the first await: see ElementContext
        loop = asyncio.get_running_loop()
        try:
            # Cancelled in alloc(), the pool gives back what it handed us.
            buf = await self._pool.alloc()
        except BaseException:
            self._entered = False
            raise
        self._buf = buf
        try:
            nbytes = await _receive(loop, self._sock, buf)
        except BaseException:
            # Nothing was received (see _receive()), and nothing writes
            # into buf later: the reader is gone.
            self._buf = None
            self._entered = False
            self._pool.free(buf)
            raise
        self._view = view = buf[:nbytes]
        return view

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        view, self._view = self._view, None
        buf, self._buf = self._buf, None
        self._entered = False
        if view is not None:
            # The user's view dies first; if they exported it (numpy...), it
            # stays valid as long as they hold it, at their own risk.
            with suppress(BufferError):
                view.release()
        self._pool.free(buf)


async def _receive(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, buf: memoryview
) -> int:
    """``sock.recv_into(buf)`` once the socket has bytes (or an end of file,
    or an error) to give.

    The receive happens here, in the task, after the wait and never inside
    a callback of the loop: a cancellation can only land in the wait, where
    nothing was taken from the socket yet, and from the receive to the
    caller there is no await (trio's receives work the same way).
    """
    while True:
        try:
            return sock.recv_into(buf)
        except (BlockingIOError, InterruptedError):
            pass
        ready = loop.create_future()
        fd = sock.fileno()
        loop.add_reader(fd, _set_ready, ready)
        try:
            await ready
        finally:
            loop.remove_reader(fd)


def _set_ready(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)
