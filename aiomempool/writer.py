"""PooledWriter: writes pool buffers to a transport, and gives each back
to the pool only once the transport has sent it.

Why it is needed: from Python 3.12 on, and on uvloop, a transport's
``write(buf)`` may keep a reference to ``buf`` (not a copy) in its write
buffer until the bytes reach the kernel; Python 3.11's selector transport
copied them. ``pool.free(buf)`` right after ``write(buf)`` then lends bytes
still queued to the next borrower, whose writes go out on the first
connection: another connection's data, silently. Built on the pool's public
API only.
"""

from __future__ import annotations

import asyncio
from collections import deque
from contextlib import suppress
from typing import Protocol

from .arena import BufferArena
from .chain import BufferChain
from .mempool import Mempool


class _Frees(Protocol):
    """What the buffers go back to: a pool of memoryviews, or an arena."""

    def free(self, element: memoryview | None, /) -> None: ...


__all__ = ["PooledWriter"]

#: Polling of the transport's write buffer: the first interval, in seconds,
#: doubled while nothing was sent, up to ``max_poll_interval``.
MIN_POLL_INTERVAL = 0.001


class PooledWriter:
    """Writes buffers of ``pool`` to one transport, freeing each once sent.

    Each buffer goes back to the pool only once the transport has sent it.
    ``transport_or_writer`` is an ``asyncio.WriteTransport`` (a protocol's
    transport) or an ``asyncio.StreamWriter``. Picture a post office that
    photographs nothing: a letter handed over the counter must not be
    reused for the next one until it has left the building.

    The trap it avoids: on Python 3.12+ and on uvloop, ``transport.write(buf)``
    keeps a view of ``buf`` in the transport's write buffer when the kernel
    does not take all of it at once (a slow reader, a full socket buffer);
    Python 3.11 copied it. So this code sends whatever the next borrower
    writes into ``buf``:

    ```python
    transport.write(buf)
    pool.free(buf)  # WRONG: the next borrower overwrites queued bytes
    ```

    Use instead:

    ```python
    writer = PooledWriter(transport, pool)
    writer.write(buf)  # or writer.write(buf, nbytes): buf[:nbytes]
    ```

    How it knows what was sent: the transport's write buffer is a FIFO, and
    ``get_write_buffer_size()`` counts the bytes written but not yet sent.
    With ``written`` the bytes written through this object, ``written -
    get_write_buffer_size()`` bytes of them have been sent at least (bytes
    written to the transport by others only make the estimate lower: a
    buffer may be freed late, never early), and a buffer whose last byte
    is within that count is freed. After ``write()``, if the transport took
    everything at once (the usual case), the buffer is freed before
    ``write()`` returns; otherwise a timer polls the write buffer, every
    millisecond at first, backing off to ``max_poll_interval`` seconds
    while nothing moves, and stops once every buffer is back. Freeing
    on each buffer sent, rather than when the write buffer is empty, keeps
    a connection that always has bytes queued from holding every buffer.
    A transport that is aborted or loses its connection drops its write
    buffer (its size drops to 0), and every buffer comes back.

    ``await writer.drain()`` is not enough for a ``StreamWriter``: it only
    waits until the write buffer is below the high-water mark, bytes still
    queued. ``PooledWriter.drain()`` does that (flow control), and
    ``wait_sent()`` waits until every buffer written is back in the pool.
    ``release_sent()`` frees what was sent, now: call it from a protocol's
    ``resume_writing()`` to give buffers back without waiting for the timer.

    Not thread-safe: use it on the pool's loop only.

    Raises:
        TypeError: ``pool`` is not a ``Mempool``.
        ValueError: ``max_poll_interval`` is below 0.001 seconds.
        RuntimeError: no event loop is running: build it on the loop (in a
            task, or a protocol's ``connection_made()``).
    """

    __slots__ = (
        "_interval",
        "_loop",
        "_max_interval",
        "_pool",
        "_queue",
        "_stream",
        "_timer",
        "_transport",
        "_waiters",
        "_written",
    )  # fmt: skip

    def __init__(
        self,
        transport_or_writer: asyncio.WriteTransport | asyncio.StreamWriter,
        pool: Mempool[memoryview] | BufferArena,
        *,
        max_poll_interval: float = 0.05,
    ) -> None:
        if not isinstance(pool, (Mempool, BufferArena)):
            raise TypeError(
                f"pool must be a Mempool or a BufferArena, not {type(pool).__name__}"
            )
        if not max_poll_interval >= MIN_POLL_INTERVAL:
            raise ValueError(
                f"max_poll_interval must be >= {MIN_POLL_INTERVAL} seconds, "
                f"got {max_poll_interval}"
            )
        if isinstance(transport_or_writer, asyncio.StreamWriter):
            self._stream: asyncio.StreamWriter | None = transport_or_writer
            transport = transport_or_writer.transport
        else:
            self._stream = None
            transport = transport_or_writer
        self._transport: asyncio.WriteTransport = transport
        self._pool: _Frees = pool
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "PooledWriter() needs a running event loop: build it on the "
                "loop (in a task, or a protocol's connection_made())"
            ) from None
        self._max_interval = float(max_poll_interval)
        self._interval = MIN_POLL_INTERVAL
        # (bytes written through us up to and including buf, buf), oldest
        # first: the order the transport sends them in.
        self._queue: deque[tuple[int, memoryview]] = deque()
        self._written = 0
        self._timer: asyncio.TimerHandle | None = None
        self._waiters: list[asyncio.Future[None]] = []

    def __repr__(self) -> str:
        return (
            f"<PooledWriter pending={len(self._queue)} written={self._written} "
            f"pool={self._pool!r}>"
        )

    @property
    def pending(self) -> int:
        """Buffers written and not yet given back to the pool."""
        return len(self._queue)

    def write(self, buf: memoryview | BufferChain, nbytes: int | None = None) -> None:
        """Write ``buf`` (or ``buf[:nbytes]``); it goes back to the pool once sent.

        ``buf`` must be an element of the pool as ``alloc()`` returned it
        (not a slice of one): from this call on it is the writer's, and
        the caller must neither touch nor free it. Never awaits; may be
        called from protocol callbacks. Freed before returning if the
        transport took all of it at once.

        A ``BufferChain`` (a frame of several buffers of the pool) is
        written whole with ``transport.writelines()``, without joining
        its buffers; each goes back once sent, and the chain is empty
        afterwards.

        Raises:
            ValueError: ``nbytes`` is not within ``buf``, or given with a
                chain.
            Exception: whatever ``transport.write()`` raises, after giving
                ``buf`` back (the transport kept nothing of it then).
        """
        if isinstance(buf, BufferChain):
            if nbytes is not None:
                raise ValueError("nbytes is for a buffer, not a chain: give none")
            self._write_links(buf.detach())
            return
        if nbytes is None:
            data = buf
        elif type(nbytes) is int and 0 <= nbytes <= len(buf):
            data = buf[:nbytes]
        else:
            raise ValueError(
                f"nbytes must be an int from 0 to {len(buf)}, got {nbytes!r}"
            )
        try:
            self._transport.write(data)
        except BaseException:
            self._pool.free(buf)
            raise
        self._written += len(data)
        self._queue.append((self._written, buf))
        self.release_sent()
        if self._queue and self._timer is None:
            self._interval = MIN_POLL_INTERVAL
            self._timer = self._loop.call_later(self._interval, self._poll)

    def _write_links(self, links: list[tuple[memoryview, int]]) -> None:
        """write() of a chain's buffers, each with its count of bytes."""
        views = [buf if n == len(buf) else buf[:n] for buf, n in links]
        try:
            self._transport.writelines(views)
        except BaseException:
            for buf, _ in links:
                self._pool.free(buf)
            raise
        for buf, n in links:
            self._written += n
            self._queue.append((self._written, buf))
        self.release_sent()
        if self._queue and self._timer is None:
            self._interval = MIN_POLL_INTERVAL
            self._timer = self._loop.call_later(self._interval, self._poll)

    def release_sent(self) -> int:
        """Give back to the pool every buffer the transport has sent.

        Returns how many went back. Never awaits.
        """
        queue = self._queue
        if not queue:
            return 0
        # At least this many of our bytes have left the transport: see the
        # class docstring. Our bytes are the last ones we wrote, and the
        # write buffer holds at most them plus foreign bytes.
        sent = self._written - self._transport.get_write_buffer_size()
        freed = 0
        free = self._pool.free
        while queue and queue[0][0] <= sent:
            free(queue.popleft()[1])
            freed += 1
        if not queue:
            self._wake()
        return freed

    async def drain(self) -> None:
        """Wait for flow control, then free what was sent.

        For a ``StreamWriter`` this is ``await writer.drain()``: it waits
        while the write buffer is above the high-water mark, and raises what
        that raises; for a transport it waits for nothing. It does not wait
        for every buffer: see ``wait_sent()``.
        """
        if self._stream is not None:
            await self._stream.drain()
        self.release_sent()

    async def wait_sent(self) -> None:
        """Wait until every buffer written is back in the pool.

        Returns at once if none is pending. Cancelling it loses nothing: the
        buffers still go back as they are sent. Wrap it in
        ``asyncio.wait_for()`` to bound the wait on a peer that reads
        nothing.
        """
        while self._queue:
            fut = self._loop.create_future()
            self._waiters.append(fut)
            try:
                await fut
            finally:
                with suppress(ValueError):
                    self._waiters.remove(fut)

    # -- internals ---------------------------------------------------------

    def _poll(self) -> None:
        """The timer: free what was sent; poll again while any is pending,
        sooner if something moved."""
        self._timer = None
        freed = self.release_sent()
        if self._queue:
            if freed:
                self._interval = MIN_POLL_INTERVAL
            else:
                self._interval = min(self._interval * 2, self._max_interval)
            self._timer = self._loop.call_later(self._interval, self._poll)

    def _wake(self) -> None:
        """Nothing pending: stop the timer and wake ``wait_sent()``."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)
