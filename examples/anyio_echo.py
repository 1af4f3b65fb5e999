"""An echo server written with anyio, its reads going into pooled buffers.

Connections are served in a task group. Each waits for bytes holding no
buffer; once a read is there, it borrows one with ``async with
pool.element() as buf:``, works on the bytes in it, and gives it back
before it sends the reply. So a connection holds a buffer only while it
has bytes in hand, never while it waits: thousands of idle connections,
or clients that never read their replies, hold none, and cannot keep the
pool from the others. A connection idle for longer than
``--idle-timeout`` seconds is closed (a cancel scope). On SIGINT or
SIGTERM the task group is cancelled, with connections parked in a read,
in the pool or in a send; the server prints the pool's stats and exits:
every buffer is back by then (``outstanding=0``).

    python examples/anyio_echo.py [--port 7000] [--uvloop] [--idle-timeout 30]
"""

from __future__ import annotations

import argparse
import os
import signal
from typing import Any, NoReturn

import anyio
import anyio.abc

from aiomempool import Mempool, buffer_pool

# Why a buffer is borrowed after the receive, and given back before the send:
#
# * anyio's TCP streams on asyncio are built on a transport: the transport
#   reads the socket itself, and ``receive(max_bytes)`` returns bytes it
#   already holds. Receiving into our buffer from the raw socket
#   (``stream.extra(SocketAttribute.raw_socket)`` with
#   ``loop.sock_recv_into()``, or ``anyio.wait_readable()`` then
#   ``sock.recv_into()``) would race the transport for the same bytes;
#   asyncio refuses it outright ("File descriptor ... is used by
#   transport"). So ``receive()`` is the wait for bytes, and it needs no
#   buffer of ours: borrowing one before it would pin a buffer per idle
#   connection (a few hundred silent clients would hold the whole pool,
#   and everyone else would wait in line behind them). Each read is copied
#   into a buffer of the pool, where a real server would parse or
#   transform it.
# * ``stream.send()`` calls ``transport.write()`` and returns once the
#   transport is below its high-water mark, not once the bytes are sent;
#   on Python 3.12+ and uvloop the transport keeps a view of what it is
#   given. Sending a view of the pooled buffer and then giving the buffer
#   back would let the next borrower overwrite bytes still queued; holding
#   the buffer until ``send()`` returns would let a client that never reads
#   its replies pin it. So the reply is a copy, ``bytes(...)``, made before
#   the buffer goes back, and sent after.


async def echo(
    stream: anyio.abc.SocketStream,
    pool: Mempool[memoryview],
    buffer_size: int,
    idle_timeout: float,
) -> None:
    """Echo one connection until EOF, an error or ``idle_timeout``.

    A buffer of ``pool`` (of ``buffer_size`` bytes) is held only from a
    read's arrival to its reply's copy: not in the wait for bytes, nor in
    the send.
    """
    async with stream:
        while True:
            with anyio.move_on_after(idle_timeout):
                try:
                    # The wait for bytes: no buffer held (see above).
                    data = await stream.receive(buffer_size)
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return
                # Cancelled in here (idle timeout, shutdown), the buffer goes
                # back to the pool: element() frees it on exit, and a wait in
                # line for one is left without losing any.
                async with pool.element() as buf:
                    n = len(data)
                    buf[:n] = data  # where a real server parses, transforms
                    reply = bytes(buf[:n])  # a copy: see above
                try:
                    await stream.send(reply)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    return
                continue
            return  # idle for idle_timeout seconds (send included)


async def wait_signal(
    scope: anyio.CancelScope, *, task_status: anyio.abc.TaskStatus[None]
) -> None:
    """Cancel ``scope`` on the first SIGINT or SIGTERM."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()  # handlers in place: now we may say we listen
        async for _ in signals:
            scope.cancel()
            return


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


def seconds(text: str) -> float:
    """A duration: a number of seconds > 0."""
    value = float(text)
    if not value > 0:  # NaN too
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text}")
    return value


async def serve(args: argparse.Namespace) -> None:
    pool = buffer_pool(
        args.buffer_size, min_nr=args.min_nr, max_nr=args.max_nr, name="anyio-echo"
    )
    try:
        try:  # the port may be taken, the host not ours...
            listener = await anyio.create_tcp_listener(
                local_host=args.host, local_port=args.port
            )
        except OSError as exc:
            raise CannotListen(args.host, args.port, exc) from exc
        async with listener, anyio.create_task_group() as tg:
            await tg.start(wait_signal, tg.cancel_scope)
            host = listener.extra(anyio.abc.SocketAttribute.local_address)[0]
            port = listener.extra(anyio.abc.SocketAttribute.local_port)
            print(f"listening on {host}:{port}", flush=True)

            async def handle(stream: anyio.abc.SocketStream) -> None:
                await echo(stream, pool, args.buffer_size, args.idle_timeout)

            # serve() starts each connection's handler in tg: cancelling tg
            # cancels them all, and the with block waits until they are done.
            await listener.serve(handle, tg)
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
    parser.add_argument(
        "--idle-timeout",
        type=seconds,
        default=30.0,
        help="seconds a connection may stay idle",
    )
    args = parser.parse_args()
    if args.min_nr > args.max_nr:
        parser.error(f"--min-nr ({args.min_nr}) must be <= --max-nr ({args.max_nr})")
    options: dict[str, Any] = {"use_uvloop": args.uvloop}
    try:
        anyio.run(serve, args, backend="asyncio", backend_options=options)
    except CannotListen as exc:
        parser.error(str(exc))


if __name__ == "__main__":
    main()
