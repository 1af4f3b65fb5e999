"""A small Redis-protocol (RESP2) server that parses in place in pooled buffers.

PING, ECHO, SET, GET, DEL, INCR and CONFIG GET (enough for ``redis-cli``
and ``redis-benchmark -t ping,set,get``), pipelined or not, as RESP arrays
or inline (``printf 'PING\n' | nc 127.0.0.1 PORT``: split as redis-server
splits them, quotes included, one ended by a bare LF too). Commands are
parsed straight from the pool's buffer by slicing memoryviews; only the
keys and values it stores are copied. A command cut by the end of a read
is kept at the start of the buffer (``keep_buffer()``) and completed by the
next reads; one larger than a buffer is gathered in a bytearray instead.
On SIGINT or SIGTERM it prints the pool's stats and shuts down.

    python examples/resp_server.py [--port 6379] [--uvloop]
    redis-benchmark -p PORT -t ping,set,get -q
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
from collections.abc import Callable
from typing import NoReturn

from aiomempool import Mempool, PooledBufferedProtocol, buffer_pool

# The headers of a command: "*3\r\n" (an array of 3 arguments), then
# "$5\r\n" before each argument (a bulk string of 5 bytes). HEAD matches
# the array's header and its first argument's at once.
HEAD = re.compile(rb"\*(\d{1,10})\r\n\$(\d{1,10})\r\n").match
ARRAY = re.compile(rb"\*(\d{1,10})\r\n").match
BULK = re.compile(rb"\$(\d{1,10})\r\n").match
# What a header cut by the end of a read may look like.
CUT_HEADER = re.compile(rb"[*$]\d{0,10}\r?").fullmatch
# An inline command ends at a LF, with or without a CR before it.
LF = re.compile(rb"\n").search
# What takes an inline command off the fast path of bytes.split(): quotes,
# and the two blanks that split() splits on but redis-server keeps inside
# an argument (vertical tab, form feed).
NOT_PLAIN = re.compile(rb"[\"'\v\f]").search
MAX_BULK = 512 * 1024 * 1024  # Redis's proto-max-bulk-len
MAX_ARGS = 1024 * 1024
MAX_INLINE = 64 * 1024  # Redis's PROTO_INLINE_MAX_SIZE

OK = b"+OK\r\n"
NIL = b"$-1\r\n"
# What redis-benchmark asks for first: no snapshots, no append-only file.
CONFIG = {b"save": b"", b"appendonly": b"no"}


class ProtocolError(Exception):
    """The client sent something that is not RESP."""


def bulk(value: bytes | memoryview) -> bytes:
    """``value`` as a RESP bulk string (one copy of it; join copies a big
    memoryview twice as fast as %-formatting)."""
    return b"".join((b"$%d\r\n" % len(value), value, b"\r\n"))


def unbulk(reply: bytes) -> bytes:
    """The value of a bulk string made by ``bulk()``."""
    return reply[reply.index(b"\r\n") + 2 : -2]


def parse_command(view: memoryview, pos: int) -> tuple[list[memoryview], int] | None:
    """The command at ``pos`` (slices of ``view``) and where it ends, or
    None if it is incomplete. The common case, whole headers, costs one
    regex match per argument; the rest is in ``parse_rare()``."""
    m = HEAD(view, pos)
    if m is None:
        return parse_rare(view, pos)
    nargs = int(m[1])
    if nargs > MAX_ARGS:
        raise ProtocolError("too many arguments")
    size = int(m[2])
    end = len(view)
    args: list[memoryview] = []
    while True:
        if size > MAX_BULK:
            raise ProtocolError("bulk string too long")
        start = m.end()
        pos = start + size + 2
        if pos > end:
            return None
        if view[pos - 2] != 13 or view[pos - 1] != 10:
            raise ProtocolError("bulk string not followed by CRLF")
        args.append(view[start : pos - 2])
        if len(args) == nargs:
            return args, pos
        m = BULK(view, pos)
        if m is None:
            return cut_bulk(view, pos)
        size = int(m[1])


def parse_rare(view: memoryview, pos: int) -> tuple[list[memoryview], int] | None:
    """At ``pos``, where no array header with a whole first argument header
    follows: the end of the read, a header cut by it, an empty array, an
    inline command ("PING\r\n" or "PING\n", split as ``split_inline()``
    says), or a protocol error."""
    if pos >= len(view):
        return None
    m = ARRAY(view, pos)
    if m is not None:
        nargs = int(m[1])
        if nargs > MAX_ARGS:
            raise ProtocolError("too many arguments")
        if nargs == 0:
            return [], m.end()
        return cut_bulk(view, m.end())
    if view[pos] == 0x2A:  # "*"
        if CUT_HEADER(view, pos):
            return None
        raise ProtocolError("expected '*' and a length")
    m = LF(view, pos, pos + MAX_INLINE)
    if m is None:
        if len(view) - pos >= MAX_INLINE:
            raise ProtocolError("too big inline request")
        return None
    # The CR of a CRLF is kept: both splits take it for a blank, and a CR
    # inside quotes leaves them unclosed at the end of the line either way.
    line = view[pos : m.start()].tobytes()
    args = line.split() if NOT_PLAIN(line) is None else split_inline(line)
    return [memoryview(arg) for arg in args], m.end()


# redis-server's inline arguments (sds.c's sdssplitargs()): blanks between
# them are C's isspace(); an unquoted one ends at a space, tab, CR or LF.
SPACE = frozenset(b" \t\n\v\f\r")
ENDS_ARG = frozenset(b" \t\n\r")
HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
ESCAPES = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}
UNBALANCED = "unbalanced quotes in request"


def split_inline(line: bytes) -> list[bytes]:
    """The arguments of an inline command, as redis-server splits them.

    Blanks separate arguments; quotes group bytes into one, and may open in
    the middle of it (``a"b c"`` is ``ab c``). In "double quotes", ``\\xHH``
    is a byte, ``\\n \\r \\t \\b \\a`` are control characters and a
    backslash before any other byte keeps that byte; in 'single quotes',
    only ``\\'`` is an escape. A quote that is not closed, or whose closing
    quote is followed by anything but a blank, raises ProtocolError
    ("unbalanced quotes in request"), which closes the connection.
    """
    args: list[bytes] = []
    end = len(line)
    i = 0
    while True:
        while i < end and line[i] in SPACE:
            i += 1
        if i == end:
            return args
        arg = bytearray()
        quote = 0  # the open quote, b'"' or b"'", or 0
        while True:
            if i == end:
                if quote:
                    raise ProtocolError(UNBALANCED)
                break
            c = line[i]
            if quote == 0x22:  # '"'
                if c == 0x5C and i + 1 < end:  # a backslash, and a byte after it
                    escaped = line[i + 1]
                    if (
                        escaped == 0x78  # "x"
                        and i + 3 < end
                        and line[i + 2] in HEX_DIGITS
                        and line[i + 3] in HEX_DIGITS
                    ):
                        arg.append(int(line[i + 2 : i + 4], 16))
                        i += 4
                    else:
                        arg.append(ESCAPES.get(escaped, escaped))
                        i += 2
                    continue
                if c == 0x22:
                    if i + 1 < end and line[i + 1] not in SPACE:
                        raise ProtocolError(UNBALANCED)
                    i += 1
                    break
                arg.append(c)
            elif quote == 0x27:  # "'"
                if c == 0x5C and i + 1 < end and line[i + 1] == 0x27:
                    arg.append(0x27)
                    i += 2
                    continue
                if c == 0x27:
                    if i + 1 < end and line[i + 1] not in SPACE:
                        raise ProtocolError(UNBALANCED)
                    i += 1
                    break
                arg.append(c)
            elif c in ENDS_ARG:
                break
            elif c == 0x22 or c == 0x27:
                quote = c
            else:
                arg.append(c)
            i += 1
        args.append(bytes(arg))


def cut_bulk(view: memoryview, pos: int) -> None:
    """None if the read ends at ``pos``, or in a bulk string's header there;
    a protocol error otherwise."""
    if pos >= len(view) or (view[pos] == 0x24 and CUT_HEADER(view, pos)):  # "$"
        return None
    raise ProtocolError("expected '$' and a length")


class Store:
    """The keys and values, and the commands on them.

    A value is stored as the reply that GET gives, a bulk string: SET copies
    it from the pool's buffer once, into that form, and GET writes it as it
    is, however big.
    """

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}  # key -> bulk(value)
        self.commands: dict[bytes, Callable[[list[memoryview]], bytes]] = {
            b"PING": self.ping,
            b"ECHO": self.echo,
            b"SET": self.set,
            b"GET": self.get,
            b"DEL": self.delete,
            b"INCR": self.incr,
            b"CONFIG": self.config,
        }

    # memoryview.tobytes() copies, as bytes() does, in half the time.
    def execute(self, args: list[memoryview]) -> bytes:
        name = args[0].tobytes()
        command = self.commands.get(name)  # as clients send them, "GET"
        if command is None:
            name = name.upper()  # "get", "Get"
            command = self.commands.get(name)
            if command is None:
                return b"-ERR unknown command '%s'\r\n" % name.lower()[:128]
        try:
            return command(args)
        except IndexError:
            return b"-ERR wrong number of arguments for '%s' command\r\n" % (
                name.lower()
            )

    def ping(self, args: list[memoryview]) -> bytes:
        if len(args) == 1:
            return b"+PONG\r\n"
        if len(args) != 2:
            raise IndexError
        return bulk(args[1])

    def echo(self, args: list[memoryview]) -> bytes:
        if len(args) != 2:
            raise IndexError
        return bulk(args[1])

    def set(self, args: list[memoryview]) -> bytes:
        if len(args) != 3:
            raise IndexError
        self.data[args[1].tobytes()] = bulk(args[2])
        return OK

    def get(self, args: list[memoryview]) -> bytes:
        return self.data.get(args[1].tobytes(), NIL)

    def delete(self, args: list[memoryview]) -> bytes:
        if len(args) < 2:
            raise IndexError
        data = self.data
        return b":%d\r\n" % sum(
            data.pop(key.tobytes(), None) is not None for key in args[1:]
        )

    def incr(self, args: list[memoryview]) -> bytes:
        key = args[1].tobytes()
        try:
            value = int(unbulk(self.data.get(key, b"$1\r\n0\r\n"))) + 1
        except ValueError:
            return b"-ERR value is not an integer or out of range\r\n"
        if not -(2**63) <= value < 2**63:
            return b"-ERR increment or decrement would overflow\r\n"
        self.data[key] = bulk(b"%d" % value)
        return b":%d\r\n" % value

    def config(self, args: list[memoryview]) -> bytes:
        if args[1].tobytes().upper() != b"GET" or len(args) != 3:
            return b"-ERR only CONFIG GET parameter is supported\r\n"
        name = args[2].tobytes().lower()
        value = CONFIG.get(name)
        if value is None:
            return b"*0\r\n"
        return b"*2\r\n" + bulk(name) + bulk(value)


class RespProtocol(PooledBufferedProtocol):
    """One client connection: parses its commands, writes the replies."""

    def __init__(
        self,
        pool: Mempool[memoryview],
        store: Store,
        buffer_size: int,
        conns: set[RespProtocol],
    ) -> None:
        super().__init__(pool)
        self.store = store
        self.buffer_size = buffer_size
        self.conns = conns
        self.lost = asyncio.get_running_loop().create_future()
        # A command larger than a buffer, gathered here; None otherwise.
        self.big: bytearray | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.conns.add(self)

    def view_received(self, view: memoryview) -> None:
        if self.transport.is_closing():
            return
        big = self.big
        if big is None:
            pos = self.execute(view)
            if pos < 0 or pos == len(view):
                return
            if pos or len(view) < self.buffer_size:
                self.keep_buffer(pos)  # a cut command: the next read ends it
            else:
                self.big = bytearray(view)  # larger than a buffer
            return
        big += view
        with memoryview(big) as whole:
            pos = self.execute(whole)
        if pos == len(big):
            self.big = None  # back to parsing in the pool's buffers
        elif pos > 0:
            del big[:pos]

    def execute(self, view: memoryview) -> int:
        """Run the complete commands of ``view`` and write their replies;
        return where the first incomplete one starts, or -1 if the client
        broke the protocol (the connection is closing then)."""
        replies = []
        pos = 0
        end = len(view)
        execute = self.store.execute
        try:
            while pos < end:
                parsed = parse_command(view, pos)
                if parsed is None:
                    break
                args, pos = parsed
                if args:
                    replies.append(execute(args))
        except ProtocolError as exc:
            replies.append(b"-ERR Protocol error: %s\r\n" % str(exc).encode())
            pos = -1
        if replies:
            # One write per read, whatever the pipeline depth.
            self.transport.write(replies[0] if len(replies) == 1 else b"".join(replies))
        if pos < 0:
            self.transport.close()
        return pos

    # A client that does not read its replies stops us reading from it.
    # The protocol's pause_reading(), not the transport's: it composes with
    # the pause while waiting for a buffer of a dry pool.
    def pause_writing(self) -> None:
        self.pause_reading()

    def resume_writing(self) -> None:
        self.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)  # gives the buffers back
        self.big = None
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
        args.buffer_size, min_nr=args.min_nr, max_nr=args.max_nr, name="resp"
    )
    store = Store()
    conns: set[RespProtocol] = set()
    try:
        try:  # the port may be taken, the host not ours...
            server = await loop.create_server(
                lambda: RespProtocol(pool, store, args.buffer_size, conns),
                args.host,
                args.port,
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
