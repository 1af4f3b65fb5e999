"""A TCP proxy whose buffers travel from one side to the other.

Each connection accepted is paired with a connection to the upstream
server. Every read, on either side, lands in a buffer of a pool (each side
is a ``PooledBufferedProtocol``). A large read (``SMALL_READ`` of a buffer
or more) is sent without a copy: ``take_buffer()`` hands that very buffer
to the other side's ``PooledWriter``, which gives it back to the pool only
once the transport has sent it (on Python 3.12+ and uvloop,
``transport.write()`` keeps a view of what it is given until it is sent).
A small read is copied instead, ``transport.write(bytes(view))``, and its
buffer is free again at once: a 64 KiB buffer held for every 1 KB message
queued would let a few clients that never read their replies hold the
whole pool.

Backpressure counts buffers, not only bytes. A side stops reading while
the other side's writer holds ``MAX_QUEUED`` buffers of its reads (not
sent yet), and reads on once they are all sent; and while the other side's
transport has more bytes queued than its high-water mark (its
``pause_writing()``, 64 KiB by default), until it drains
(``resume_writing()``). So one direction of a connection holds at most
``MAX_QUEUED + 2`` buffers of the pool: ``MAX_QUEUED`` queued, one more
read that fills a buffer as reading stops, and the one it reads into. A
connection, both directions, holds at most ``2 * (MAX_QUEUED + 2)``
buffers, 1.25 MiB of 64 KiB buffers, however slowly its peers read (the
copies of small reads add about the transports' high-water marks). A pool
of ``max_nr`` buffers thus never runs dry for fewer than ``max_nr / 20``
connections (51 at the default 1024); when it does all the same, a side
stops reading and waits in line for a buffer.

On SIGINT or SIGTERM it shuts down, then prints the pool's stats (with the
most buffers ever out at once, ``high_water``): every buffer is back by
then (``outstanding=0``).

    python examples/tcp_proxy.py --upstream HOST:PORT [--port 7000] [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from collections.abc import Coroutine
from typing import Any, NoReturn

from aiomempool import (
    Mempool,
    PooledBufferedProtocol,
    PooledWriter,
    SlabCache,
    slab_pool,
)

#: On shutdown, how long connections may flush what they have queued.
GRACE_S = 2.0
#: Buffers of one side's reads that the other side's writer may hold, not
#: sent yet, before that side stops reading (until they are all sent).
MAX_QUEUED = 8
#: A read of fewer bytes than this share of a buffer is copied, not taken.
SMALL_READ = 1 / 8
#: Seconds after which wholly free slabs of the pool go back (buffer_pool's).
TRIM_AFTER = 30.0
#: Connections the kernel queues for accept(): redis-server's default
#: (tcp-backlog). asyncio's and uvloop's default, 100, overflows when a few
#: hundred clients connect at once, and the kernel resets the connections
#: it could not queue before the server ever sees them.
BACKLOG = 511


class Proxy:
    """What every connection shares: the pool, the sides, the counters."""

    def __init__(
        self, pool: Mempool[memoryview], buffer_size: int, upstream: tuple[str, int]
    ) -> None:
        self.pool = pool
        self.upstream = upstream
        #: Reads of fewer bytes are copied (see SMALL_READ).
        self.small_read = max(1, int(buffer_size * SMALL_READ))
        self.sides: set[Side] = set()
        self.tasks: set[asyncio.Task[None]] = set()  # cancelled on shutdown
        # Writers of lost connections that still hold buffers (on uvloop an
        # aborted transport drops its queue only after connection_lost()):
        # waited for on shutdown, so that every buffer is back by then.
        self.draining: set[asyncio.Task[None]] = set()
        self.pauses = 0  # reading paused for the other side's bytes queued
        self.buffer_pauses = 0  # ... for the other side's buffers queued
        self.most_queued = 0  # the most buffers a writer held at once
        self.copies = 0  # small reads copied, their buffers back at once

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def drain(self, writer: PooledWriter) -> None:
        """Wait, in the background, until ``writer`` has given back every
        buffer (a lost transport's: shutdown waits for it too)."""
        task = asyncio.get_running_loop().create_task(writer.wait_sent())
        self.draining.add(task)
        task.add_done_callback(self.draining.discard)


class Side(PooledBufferedProtocol):
    """One connection of a pair: each large read's buffer goes, whole, to
    the other side's ``PooledWriter`` (``take_buffer()``); a small read is
    copied to the other side's transport.

    Ownership: the protocol holds the buffer being read into, and a dry
    pool's wait (``PooledBufferedProtocol``); a buffer taken is held by
    ``_early`` (read before the other side was connected) or, once written,
    by a ``PooledWriter``. ``connection_lost()`` frees ``_early``; the
    writers free the rest as the transports send it or drop it.

    Reading is paused while any reason in ``_blocked`` holds: "link" (the
    other side is not connected yet), "peer" (the other side's transport
    asked us to stop: its bytes queued), "queue" (the other side's writer
    holds ``MAX_QUEUED`` buffers of our reads: until it has sent them). The
    protocol pauses it too while it waits for a buffer, and resumes only
    once neither it nor we hold it.
    """

    def __init__(self, proxy: Proxy) -> None:
        super().__init__(proxy.pool)
        self.proxy = proxy
        self.writer: PooledWriter | None = None  # writes to *this* transport
        self.peer: Side | None = None
        self.eof = False  # this side sent us its EOF
        self.lost = asyncio.get_running_loop().create_future()
        self._blocked: set[str] = set()
        # Read before linked(), in order: a buffer taken from the protocol
        # and the bytes in it, or a small read's copy.
        self._early: list[tuple[memoryview, int] | bytes] = []

    # -- reading, paused for any of several reasons -------------------------

    def block(self, reason: str) -> None:
        if not self._blocked:
            self.pause_reading()
        self._blocked.add(reason)

    def unblock(self, reason: str) -> None:
        if reason not in self._blocked:
            return
        self._blocked.discard(reason)
        if not self._blocked:
            self.resume_reading()

    # -- the protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.writer = PooledWriter(self.transport, self.pool)
        self.proxy.sides.add(self)
        # Nothing to send the bytes to until the other side is there.
        self.block("link")

    def view_received(self, view: memoryview) -> None:
        peer = self.peer
        small = len(view) < self.proxy.small_read
        if peer is None and "link" in self._blocked:
            # Read before the other side is there (uvloop reads accepted
            # connections once, paused or not): the protocol holds such bytes
            # until linked() resumes reading, but for a read that fills a
            # buffer and the end of the stream, delivered here. Kept, in
            # order, until linked().
            self._early.append(
                bytes(view) if small else (self.take_buffer(), len(view))
            )
            self.pause_reading()
            return
        if peer is None or peer.transport.is_closing():
            return  # the other side is going away: nowhere to send them
        if small:
            # A copy, which the transport owns: the buffer is free for the
            # next read as soon as we return. pause_writing() may be called
            # in there, and pause our reading.
            peer.transport.write(bytes(view))
            self.proxy.copies += 1
            return
        assert peer.writer is not None
        # From here the buffer is the writer's: it goes back to the pool once
        # peer's transport has sent it.
        peer.writer.write(self.take_buffer(), len(view))
        self._limit_queue(peer.writer)

    def eof_received(self) -> bool:
        super().eof_received()  # the bytes read before it first
        self.eof = True
        if self.peer is None and "link" in self._blocked:
            return True  # linked() passes it on, after the bytes read before
        return self._pass_eof()

    def _pass_eof(self) -> bool:
        """Pass our EOF on to the other side; close both once both sent it."""
        peer = self.peer
        if peer is None or peer.eof:
            self.transport.close()
            if peer is not None:
                peer.transport.close()  # flushes what it has queued first
            return False
        if not peer.transport.is_closing():
            # Half-close: pass the EOF on, keep the other direction open.
            if peer.transport.can_write_eof():
                peer.transport.write_eof()  # after the bytes queued
            else:
                peer.transport.close()
        return True

    def pause_writing(self) -> None:
        # Our transport has too much queued: stop reading from the other side.
        if self.peer is not None:
            self.proxy.pauses += 1
            self.peer.block("peer")

    def resume_writing(self) -> None:
        if self.writer is not None:
            # Give buffers back without the timer: this wakes the other
            # side's _read_on() too, if they were all that was queued.
            self.writer.release_sent()
        if self.peer is not None:
            self.peer.unblock("peer")

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)  # gives back what the protocol holds
        self.proxy.sides.discard(self)
        early, self._early = self._early, []
        for read in early:
            if not isinstance(read, bytes):
                self.pool.free(read[0])
        writer = self.writer
        if writer is not None:
            writer.release_sent()  # a lost transport dropped its queue...
            if writer.pending:
                # ... but uvloop's, aborted, says so only after this call:
                # the writer's timer gives those buffers back then.
                self.proxy.drain(writer)
        peer = self.peer
        if peer is not None:
            if exc is None:
                # Closed cleanly: the other side flushes what it has queued.
                peer.transport.close()
            else:
                # Reset, or failed: abort the other side too, dropping what
                # it has queued. A graceful close() would wait for its peer
                # to read it, while no longer reading what that peer sends:
                # both could stall for good, holding their buffers.
                peer.transport.abort()
            peer.unblock("peer")  # our resume_writing() will never come
        if not self.lost.done():
            self.lost.set_result(None)

    # -- internals ----------------------------------------------------------

    def linked(self, peer: Side) -> None:
        """The other side is there: send it what was read before, read on."""
        self.peer = peer
        early, self._early = self._early, []
        assert peer.writer is not None
        for read in early:
            if isinstance(read, bytes):
                if not peer.transport.is_closing():
                    peer.transport.write(read)
            else:
                buf, nbytes = read
                if peer.transport.is_closing():  # nowhere to send them
                    self.pool.free(buf)
                else:
                    peer.writer.write(buf, nbytes)
        if self.eof:
            self._pass_eof()
        self._limit_queue(peer.writer)
        self.unblock("link")

    def _limit_queue(self, writer: PooledWriter) -> None:
        """After a write of our reads to ``writer`` (the other side's): if it
        holds ``MAX_QUEUED`` buffers or more, stop reading until it has sent
        them all."""
        pending = writer.pending
        if pending > self.proxy.most_queued:
            self.proxy.most_queued = pending
        if pending >= MAX_QUEUED and "queue" not in self._blocked:
            self.proxy.buffer_pauses += 1
            self.block("queue")
            self.proxy.spawn(self._read_on(writer))

    async def _read_on(self, writer: PooledWriter) -> None:
        """Read again once ``writer`` has sent every buffer of ours: the
        writer's timer, or our peer's resume_writing(), frees them as they
        are sent; and all of them once its transport is lost. Cancelled on
        shutdown, it leaves reading paused."""
        await writer.wait_sent()
        self.unblock("queue")


async def link(proxy: Proxy, client: Side) -> None:
    """Connect to the upstream server for ``client``, then let both read."""
    loop = asyncio.get_running_loop()
    host, port = proxy.upstream
    try:
        _, upstream = await loop.create_connection(lambda: Side(proxy), host, port)
    except OSError:
        client.transport.abort()
        return
    if client.lost.done():
        upstream.transport.close()
        return
    client.linked(upstream)
    upstream.linked(client)


async def shutdown(proxy: Proxy, server: asyncio.Server) -> None:
    """Stop accepting, let connections flush for a while, then abort them;
    wait until every buffer is back."""
    server.close()
    for task in list(proxy.tasks):
        task.cancel()
    await asyncio.gather(*proxy.tasks, return_exceptions=True)
    sides = list(proxy.sides)
    for side in sides:
        side.transport.close()
    lost = [side.lost for side in sides]
    if lost:
        _, pending = await asyncio.wait(lost, timeout=GRACE_S)
        for side in sides:
            if not side.lost.done():
                side.transport.abort()  # a peer that reads nothing
        if pending:
            await asyncio.wait_for(asyncio.gather(*pending), timeout=5)
    for side in sides:
        if side.writer is not None:
            await asyncio.wait_for(side.writer.wait_sent(), timeout=5)
    if proxy.draining:  # lost connections' writers, still giving back
        await asyncio.wait_for(asyncio.gather(*proxy.draining), timeout=5)
    await asyncio.wait_for(server.wait_closed(), timeout=5)


class Parser(argparse.ArgumentParser):
    """Says what is wrong with the arguments in one line, and exits 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def count(text: str) -> int:
    """An argument that counts something: an int >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def tcp_port(text: str) -> int:
    """A TCP port, or 0 for any free one."""
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0 to 65535, got {value}")
    return value


class CannotListen(Exception):
    """The listening socket could not be bound (the port is taken, say)."""

    def __init__(self, host: str, port: int, exc: OSError) -> None:
        # asyncio's message wraps the system's; the system's alone says it.
        errno = exc.errno or 0
        reason = os.strerror(errno) if errno > 0 else exc.strerror or str(exc)
        super().__init__(f"cannot listen on {host}:{port}: {reason}")


def parse_address(text: str) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets: [::1]:6379)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    # What buffer_pool() builds, with the cache at hand: its stats count the
    # most buffers ever out at once (high_water).
    cache = SlabCache(
        args.buffer_size, max_objects=args.max_nr, name="proxy", trim_after=TRIM_AFTER
    )
    try:
        pool = slab_pool(args.min_nr, cache, name="proxy")
    except BaseException:
        cache.close()
        raise
    proxy = Proxy(pool, args.buffer_size, args.upstream)
    try:
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)

        def accept() -> Side:
            client = Side(proxy)
            proxy.spawn(link(proxy, client))
            return client

        try:  # the port may be taken, the host not ours...
            server = await loop.create_server(
                accept, args.host, args.port, backlog=BACKLOG
            )
        except OSError as exc:
            raise CannotListen(args.host, args.port, exc) from exc
        host, port = server.sockets[0].getsockname()[:2]
        print(f"listening on {host}:{port}", flush=True)
        await stop.wait()
        await shutdown(proxy, server)
        print(
            f"stats: {proxy.pool.stats()} high_water={cache.stats().high_water} "
            f"most_queued={proxy.most_queued} backpressure_pauses={proxy.pauses} "
            f"buffer_pauses={proxy.buffer_pauses} copies={proxy.copies}",
            flush=True,
        )
    finally:
        pool.close()
        cache.close()  # the pool's own cache: slab_pool() leaves it open


def main() -> None:
    parser = Parser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--upstream",
        type=parse_address,
        required=True,
        default=argparse.SUPPRESS,  # required: no default to show
        help="HOST:PORT of the server to forward to",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port", type=tcp_port, default=0, help="port to listen on; 0: any free one"
    )
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    parser.add_argument(
        "--buffer-size", type=count, default=65536, help="bytes per buffer"
    )
    parser.add_argument(
        "--min-nr", type=count, default=16, help="buffers kept in reserve"
    )
    parser.add_argument(
        "--max-nr", type=count, default=1024, help="most buffers in use at once"
    )
    args = parser.parse_args()
    if args.min_nr > args.max_nr:
        parser.error(f"--min-nr ({args.min_nr}) must be <= --max-nr ({args.max_nr})")
    try:
        if args.uvloop:
            import uvloop

            uvloop.run(serve(args))
        else:
            asyncio.run(serve(args))
    except CannotListen as exc:
        parser.error(str(exc))


if __name__ == "__main__":
    main()
