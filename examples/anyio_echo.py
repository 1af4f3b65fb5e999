"""An echo server written with anyio, its reads going into pooled buffers.

Connections are served in a task group; each read borrows a buffer with
``async with pool.element() as buf:`` and a connection idle for longer
than ``--idle-timeout`` seconds is closed (a cancel scope). On SIGINT or
SIGTERM the task group is cancelled, with connections parked in the pool
or in a read; the server prints the pool's stats and exits: every buffer
is back by then (``outstanding=0``).

    python examples/anyio_echo.py [--port 7000] [--uvloop] [--idle-timeout 30]
"""

from __future__ import annotations

import argparse
import signal
from typing import Any

import anyio
import anyio.abc

from aiomempool import Mempool, buffer_pool

# Why the bytes are copied into the pooled buffer, not received into it:
#
# * anyio's TCP streams on asyncio are built on a transport: the transport
#   reads the socket itself, and ``receive(max_bytes)`` returns bytes it
#   already holds. Receiving into our buffer from the raw socket
#   (``stream.extra(SocketAttribute.raw_socket)`` with
#   ``loop.sock_recv_into()``) would race the transport for the same bytes;
#   asyncio refuses it outright ("File descriptor ... is used by
#   transport"). So each read is copied into a buffer of the pool, where a
#   real server would parse or transform it.
# * ``stream.send()`` calls ``transport.write()`` and returns once the
#   transport is below its high-water mark, not once the bytes are sent;
#   on Python 3.12+ and uvloop the transport keeps a view of what it is
#   given. Sending a view of the pooled buffer and then giving the buffer
#   back would let the next borrower overwrite bytes still queued. So what
#   is sent is a copy, ``bytes(...)``, and the buffer goes back as soon as
#   the block ends.


async def echo(
    stream: anyio.abc.SocketStream, pool: Mempool[memoryview], idle_timeout: float
) -> None:
    """Echo one connection until EOF, an error or ``idle_timeout``."""
    async with stream:
        while True:
            # Cancelled anywhere in here (idle timeout, shutdown), the
            # buffer goes back to the pool: element() frees it on exit,
            # and a wait in line for one is left without losing any.
            async with pool.element() as buf:
                with anyio.move_on_after(idle_timeout):
                    try:
                        data = await stream.receive(len(buf))
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        return
                    n = len(data)
                    buf[:n] = data
                    try:
                        await stream.send(bytes(buf[:n]))  # a copy: see above
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                        return
                    continue
            return  # idle for idle_timeout seconds (send included)


def stats_line(pool: Mempool[memoryview]) -> str:
    """The pool's stats on one line."""
    s = pool.stats()
    return (
        f"stats: allocs={s.allocs} frees={s.frees} outstanding={s.outstanding} "
        f"curr_nr={s.curr_nr} min_nr={s.min_nr} reserve_hits={s.reserve_hits} "
        f"waits={s.waits} max_wait_ms={s.max_wait_s * 1e3:.1f}"
    )


async def wait_signal(
    scope: anyio.CancelScope, *, task_status: anyio.abc.TaskStatus[None]
) -> None:
    """Cancel ``scope`` on the first SIGINT or SIGTERM."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()  # handlers in place: now we may say we listen
        async for _ in signals:
            scope.cancel()
            return


async def serve(args: argparse.Namespace) -> None:
    pool = buffer_pool(
        args.buffer_size, min_nr=args.min_nr, max_nr=args.max_nr, name="anyio-echo"
    )
    try:
        listener = await anyio.create_tcp_listener(
            local_host=args.host, local_port=args.port
        )
        async with listener, anyio.create_task_group() as tg:
            await tg.start(wait_signal, tg.cancel_scope)
            host = listener.extra(anyio.abc.SocketAttribute.local_address)[0]
            port = listener.extra(anyio.abc.SocketAttribute.local_port)
            print(f"listening on {host}:{port}", flush=True)

            async def handle(stream: anyio.abc.SocketStream) -> None:
                await echo(stream, pool, args.idle_timeout)

            # serve() starts each connection's handler in tg: cancelling tg
            # cancels them all, and the with block waits until they are done.
            await listener.serve(handle, tg)
        print(stats_line(pool), flush=True)
    finally:
        pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="default: 0, any free port")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    parser.add_argument(
        "--buffer-size", type=int, default=65536, help="bytes per buffer"
    )
    parser.add_argument(
        "--min-nr", type=int, default=16, help="buffers kept in reserve"
    )
    parser.add_argument(
        "--max-nr", type=int, default=1024, help="most buffers in use at once"
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=30.0,
        help="seconds a connection may stay idle (default: 30)",
    )
    args = parser.parse_args()
    options: dict[str, Any] = {"use_uvloop": args.uvloop}
    anyio.run(serve, args, backend="asyncio", backend_options=options)


if __name__ == "__main__":
    main()
