"""The baseline of the server benchmark: a RESP2 server written the ordinary
way, with asyncio streams and no pool.

``asyncio.start_server``; each command read with ``await reader.readline()``
and ``await reader.readexactly()``, each reply sent with ``writer.write()``
and ``await writer.drain()``. PING, ECHO, SET, GET, DEL, INCR and CONFIG
GET, inline or as arrays: enough for ``redis-cli`` and ``redis-benchmark
-t ping,set,get``. Same conventions as ``examples/resp_server.py``: prints
"listening on HOST:PORT" first; on SIGINT or SIGTERM prints a stats line
and exits 0.

    python -m benchmarks.resp_streams [--port 0] [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

OK = b"+OK\r\n"
NIL = b"$-1\r\n"
CONFIG = {b"save": b"", b"appendonly": b"no"}
MAX_BULK = 512 * 1024 * 1024
MAX_ARGS = 1024 * 1024


class ProtocolError(Exception):
    """The client sent something that is not RESP."""


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def header(line: bytes, marker: bytes, limit: int) -> int:
    if not line.startswith(marker) or not line.endswith(b"\r\n"):
        raise ProtocolError(f"expected '{marker.decode()}' and a length")
    try:
        n = int(line[1:-2])
    except ValueError:
        raise ProtocolError("invalid length") from None
    if not 0 <= n <= limit:
        raise ProtocolError("invalid length")
    return n


async def read_command(reader: asyncio.StreamReader) -> list[bytes] | None:
    """The next command, or None at the end of the stream."""
    line = await reader.readline()
    if not line:
        return None
    if not line.startswith(b"*"):
        return line.split()  # inline: "PING\r\n"
    args = []
    for _ in range(header(line, b"*", MAX_ARGS)):
        size = header(await reader.readline(), b"$", MAX_BULK)
        data = await reader.readexactly(size + 2)
        if not data.endswith(b"\r\n"):
            raise ProtocolError("bulk string not followed by CRLF")
        args.append(data[:-2])
    return args


class Server:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.connections = 0
        self.commands = 0
        self.tasks: set[asyncio.Task[None]] = set()

    def execute(self, args: list[bytes]) -> bytes:
        name = args[0].upper()
        try:
            if name == b"PING":
                return bulk(args[1]) if len(args) > 1 else b"+PONG\r\n"
            if name == b"ECHO":
                return bulk(args[1])
            if name == b"SET":
                if len(args) != 3:
                    raise IndexError
                self.data[args[1]] = args[2]
                return OK
            if name == b"GET":
                value = self.data.get(args[1])
                return NIL if value is None else bulk(value)
            if name == b"DEL":
                if len(args) < 2:
                    raise IndexError
                return b":%d\r\n" % sum(
                    self.data.pop(key, None) is not None for key in args[1:]
                )
            if name == b"INCR":
                try:
                    value = int(self.data.get(args[1], b"0")) + 1
                except ValueError:
                    return b"-ERR value is not an integer or out of range\r\n"
                self.data[args[1]] = b"%d" % value
                return b":%d\r\n" % value
            if name == b"CONFIG":
                if args[1].upper() != b"GET" or len(args) != 3:
                    return b"-ERR only CONFIG GET parameter is supported\r\n"
                key = args[2].lower()
                value = CONFIG.get(key)
                return (
                    b"*0\r\n" if value is None else b"*2\r\n" + bulk(key) + bulk(value)
                )
        except IndexError:
            return b"-ERR wrong number of arguments for '%s' command\r\n" % (
                name.lower()
            )
        return b"-ERR unknown command '%s'\r\n" % name.lower()[:128]

    async def handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.connections += 1
        try:
            while True:
                try:
                    args = await read_command(reader)
                except ProtocolError as exc:
                    writer.write(b"-ERR Protocol error: %s\r\n" % str(exc).encode())
                    await writer.drain()
                    break
                if args is None:
                    break
                if not args:
                    continue
                self.commands += 1
                writer.write(self.execute(args))
                await writer.drain()
        except (
            ConnectionError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ):
            pass
        finally:
            self.tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    state = Server()
    server = await asyncio.start_server(state.handle, args.host, args.port)
    host, port = server.sockets[0].getsockname()[:2]
    print(f"listening on {host}:{port}", flush=True)

    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()

    server.close()
    tasks = list(state.tasks)
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=5)
    await asyncio.wait_for(server.wait_closed(), timeout=5)
    print(
        f"stats: connections={state.connections} commands={state.commands} "
        f"keys={len(state.data)}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="default: 0, any free port")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.run(serve(args))
    else:
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
