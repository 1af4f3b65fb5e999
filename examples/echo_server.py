"""An echo server whose reads borrow buffers from a pool.

Every read lands in a buffer of a ``buffer_pool`` and goes back to the pool
as soon as it is echoed. On SIGINT or SIGTERM it prints the pool's stats
and shuts down: every buffer is back by then (``outstanding=0``).

    python examples/echo_server.py [--port 7000] [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from typing import NoReturn

from aiomempool import Mempool, PooledBufferedProtocol, buffer_pool

#: Connections the kernel queues for accept(): redis-server's default
#: (tcp-backlog). asyncio's and uvloop's default, 100, overflows when a few
#: hundred clients connect at once, and the kernel resets the connections
#: it could not queue before the server ever sees them.
BACKLOG = 511


class Echo(PooledBufferedProtocol):
    """Writes back every byte it receives."""

    def __init__(self, pool: Mempool[memoryview], conns: set[Echo]) -> None:
        super().__init__(pool)
        self.conns = conns
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.conns.add(self)

    def view_received(self, view: memoryview) -> None:
        # A copy: transport.write() may keep what it is given until it is
        # sent (Python 3.12+, uvloop), and the buffer is free for the next
        # read at once.
        self.transport.write(bytes(view))

    # A client that does not read its echo stops us reading from it.
    # The protocol's pause_reading(), not the transport's: it composes with
    # the pause while waiting for a buffer of a dry pool.
    def pause_writing(self) -> None:
        self.pause_reading()

    def resume_writing(self) -> None:
        self.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)  # gives the buffers back
        self.conns.discard(self)
        if not self.lost.done():
            self.lost.set_result(None)


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


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    pool = buffer_pool(
        args.buffer_size, min_nr=args.min_nr, max_nr=args.max_nr, name="echo"
    )
    conns: set[Echo] = set()
    try:
        try:  # the port may be taken, the host not ours...
            server = await loop.create_server(
                lambda: Echo(pool, conns), args.host, args.port, backlog=BACKLOG
            )
        except OSError as exc:
            raise CannotListen(args.host, args.port, exc) from exc
        host, port = server.sockets[0].getsockname()[:2]
        print(f"listening on {host}:{port}", flush=True)

        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()

        server.close()
        # Python 3.12+ waits here for the connections too: close them first.
        lost = [conn.lost for conn in conns]
        for conn in list(conns):
            conn.transport.abort()
        await asyncio.wait_for(asyncio.gather(*lost), timeout=5)
        await server.wait_closed()
        print(f"stats: {pool.stats()}", flush=True)
    finally:
        pool.close()


def main() -> None:
    parser = Parser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
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
