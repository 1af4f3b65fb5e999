"""examples/resp_server.py's parser and protocol, fed in every way a stream
can be cut: whole commands, commands cut anywhere, commands larger than a
buffer, inline commands (split as redis-server splits them), and garbage."""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiomempool import BufferArena, Mempool, buffer_arena, buffer_pool

BUFFER_SIZE = 64


def load_example() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "examples" / "resp_server.py"
    spec = importlib.util.spec_from_file_location("resp_server_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


resp = load_example()


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.out += data

    def get_write_buffer_size(self) -> int:
        return 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (16384, 65536)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def encode(args: list[bytes]) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(
        b"$%d\r\n%s\r\n" % (len(arg), arg) for arg in args
    )


def feed(protocol: Any, transport: Transport, data: bytes) -> None:
    """``data`` read by ``protocol``, a buffer at a time."""
    start = 0
    while start < len(data) and not transport.closed:
        room = protocol.get_buffer(-1)
        n = min(len(room), len(data) - start)
        room[:n] = data[start : start + n]
        protocol.buffer_updated(n)
        start += n


async def drive_one(
    stream: bytes, cuts: list[int], *, arena: bool, max_held: int | None = None
) -> Transport:
    """Feed ``stream`` to a RespProtocol, read by read, cut at ``cuts`` and
    wherever a buffer is full; every buffer must be back at the end. Its
    buffers are a pool's, or (``arena``) an arena's, which compacts what
    it keeps."""
    pool: Mempool[memoryview] | BufferArena
    if arena:
        pool = buffer_arena(1 << 20, classes=(16, BUFFER_SIZE), trim_after=None)
        protocol = resp.RespProtocol(
            pool, resp.Store(), set(), buffer_size=BUFFER_SIZE, max_held=max_held
        )
    else:
        pool = buffer_pool(BUFFER_SIZE, min_nr=1, max_nr=8)
        protocol = resp.RespProtocol(pool, resp.Store(), set(), max_held=max_held)
    transport = Transport()
    protocol.connection_made(transport)
    bounds = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    for start, end in itertools.pairwise(bounds):
        feed(protocol, transport, stream[start:end])
    protocol.connection_lost(None)
    await asyncio.sleep(0)
    if isinstance(pool, BufferArena):
        assert pool.stats().total.outstanding == 0
    else:
        assert pool.stats().outstanding == 0
    pool.close()
    return transport


async def drive(stream: bytes, cuts: list[int]) -> Transport:
    """``drive_one()`` on a pool and on an arena: the same replies."""
    transport = await drive_one(stream, cuts, arena=False)
    on_arena = await drive_one(stream, cuts, arena=True)
    assert on_arena.out == transport.out
    assert on_arena.closed == transport.closed
    return transport


# Arguments with the protocol's own bytes in them, some larger than a buffer.
ARG = st.binary(max_size=3 * BUFFER_SIZE) | st.sampled_from(
    [b"", b"\r\n", b"$3\r\n", b"*1\r\n", b"\r"]
)
CUTS = st.lists(st.integers(min_value=0, max_value=10_000), max_size=12)


@settings(max_examples=150, deadline=None)
@given(args=st.lists(ARG, min_size=1, max_size=12), cuts=CUTS)
def test_echoed_arguments_come_back_exact_however_the_stream_is_cut(
    args: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(encode([b"ECHO", arg]) for arg in args)
    transport = asyncio.run(drive(stream, cuts))
    assert bytes(transport.out) == b"".join(resp.bulk(arg) for arg in args)
    assert not transport.closed


def test_a_frame_that_keeps_reading_keeps_its_place_in_the_gate_past_the_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A slow sender (or a loaded server) is not a stalled one: the grace
    # runs from the last read, not from the admission.
    monkeypatch.setattr(resp, "GATE_GRACE", 0.1)
    size = 300_000

    async def main() -> None:
        arena = buffer_arena(16 << 20, trim_after=None)
        gate = resp.Gate(400_000)
        (p0, t0), (p1, t1) = gated(arena, resp.Store(), gate, 2)
        requests = [encode([b"SET", b"k%d" % i, b"v" * size]) for i in range(2)]
        feed(p0, t0, requests[0][:1000])
        feed(p1, t1, requests[1][:65536])
        assert t0.reading and not t1.reading
        sent = 1000
        for _ in range(12):  # 0.6 s, six graces, a read every half grace
            await asyncio.sleep(0.05)
            feed(p0, t0, requests[0][sent : sent + 1000])
            sent += 1000
            gate.expire()  # as its timer would, now
            assert not t1.reading, "a frame still reading left the gate"
        await read_as_a_loop_does(p0, t0, requests[0][sent:])
        assert t0.out == b"+OK\r\n"
        assert t1.reading  # its end let the next in
        await read_as_a_loop_does(p1, t1, requests[1][65536:])
        assert t1.out == b"+OK\r\n"
        assert gate.taken == 0 and not gate.waiting and not gate.admitted
        for protocol in (p0, p1):
            protocol.connection_lost(None)
        assert arena.stats().total.outstanding == 0
        arena.close()

    asyncio.run(main())


@settings(max_examples=100, deadline=None)
@given(
    pairs=st.lists(st.tuples(st.binary(max_size=20), ARG), min_size=1, max_size=6),
    cuts=CUTS,
)
def test_set_then_get_returns_each_value_pipelined(
    pairs: list[tuple[bytes, bytes]], cuts: list[int]
) -> None:
    stream = b"".join(
        encode([b"SET", key, value]) + encode([b"get", key]) for key, value in pairs
    )
    stream += b"PING\r\n"  # inline, as redis-benchmark sends it
    transport = asyncio.run(drive(stream, cuts))
    expected = b"".join(b"+OK\r\n" + resp.bulk(value) for _, value in pairs)
    assert bytes(transport.out) == expected + b"+PONG\r\n"


@settings(max_examples=150, deadline=None)
@given(garbage=st.binary(max_size=2 * BUFFER_SIZE), cuts=CUTS)
def test_any_bytes_get_replies_or_a_protocol_error_never_an_exception(
    garbage: bytes, cuts: list[int]
) -> None:
    stream = encode([b"PING"]) + garbage
    transport = asyncio.run(drive(stream, cuts))
    assert bytes(transport.out).startswith(b"+PONG\r\n")
    if transport.closed:
        assert bytes(transport.out).endswith(b"\r\n")
        assert b"-ERR Protocol error" in transport.out


def parse_all(view: memoryview, fast: bool) -> list[object]:
    """What the parser makes of ``view``: each complete command's arguments
    (as bytes) and end, then the error it raised, if any, and where it
    stopped. ``fast``: through parse_many() first, as run() parses."""
    out: list[object] = []
    pos = 0
    while pos < len(view):
        if fast:
            commands: list[tuple[Any, int]] = []
            if resp.parse_many(view, pos, commands) != pos:
                out += [([bytes(a) for a in args], end) for args, end in commands]
                pos = commands[-1][1]
                continue
        try:
            parsed = resp.parse_command(view, pos)
        except resp.ProtocolError as exc:
            out.append(("error", str(exc)))
            break
        if parsed is None:
            break
        out.append(([bytes(a) for a in parsed[0]], parsed[1]))
        pos = parsed[1]
    out.append(("stopped at", pos))
    return out


# Commands as parse_many() takes them, and as it must leave them: headers
# with leading zeros, lengths past its table, an empty array, a wrong
# length, inline commands, garbage.
HEADER_FORM = st.sampled_from(["%d", "0%d", "00%d"])
PIECE = st.one_of(
    st.lists(ARG | st.binary(min_size=200, max_size=5000), min_size=1, max_size=5).map(
        encode
    ),
    st.tuples(HEADER_FORM, HEADER_FORM, st.binary(max_size=1100)).map(
        lambda t: (
            (b"*" + (t[0] % 1).encode() + b"\r\n$" + (t[1] % len(t[2])).encode())
            + b"\r\n"
            + t[2]
            + b"\r\n"
        )
    ),
    st.sampled_from(
        [b"*0\r\n", b"*1\r\n$3\r\nab\r\n", b"PING\r\n", b"*1\r\n$-1\r\n", b"*2\r\n"]
    ),
    st.binary(max_size=40),
)


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(PIECE, min_size=1, max_size=30), cut=st.integers(min_value=0))
def test_parse_many_takes_what_parse_command_takes_as_it_does(
    pieces: list[bytes], cut: int
) -> None:
    # Its windows are split, and their parts checked against the headers;
    # anything else it leaves to parse_command(): the same commands, with
    # the same arguments and ends, the same error at the same place.
    stream = b"".join(pieces)
    stream = stream[: cut % (len(stream) + 1)]
    buf = bytearray(len(stream) + 16)  # a view of a larger buffer, as reads are
    buf[: len(stream)] = stream
    view = memoryview(buf)[: len(stream)]
    assert parse_all(view, fast=True) == parse_all(view, fast=False)


def test_parse_many_takes_plain_commands_and_leaves_the_rest() -> None:
    value = bytes(range(256)) * 40  # 10 KiB, CRLFs in it: sliced from the view
    stream = encode([b"SET", b"k", value]) + encode([b"GET", b"k"]) * 300
    view = memoryview(stream)
    commands: list[tuple[Any, int]] = []
    assert resp.parse_many(view, 0, commands) == len(stream)
    assert len(commands) == 301 and commands[-1][1] == len(stream)
    assert [bytes(a) for a in commands[0][0]] == [b"SET", b"k", value]
    for stream in (b"PING\r\n", b"*0\r\n", b"*01\r\n$4\r\nPING\r\n", b"*1\r\n$4\r\nPI"):
        assert resp.parse_many(memoryview(stream), 0, commands) == 0, stream


def test_protocol_errors_name_what_was_expected() -> None:
    for stream, message in (
        (b"*1\r\n%3\r\n", b"expected '$' and a length"),
        (b"*1\r\n$3\r\nabcXY", b"bulk string not followed by CRLF"),
        (b"*1\r\n$99999999999\r\n", b"expected '$' and a length"),
        (b"*9999999\r\n", b"too many arguments"),
    ):
        transport = asyncio.run(drive(stream, []))
        assert transport.closed and message in transport.out, stream


def test_incr_del_and_errors() -> None:
    stream = b"".join(
        encode(args)
        for args in (
            [b"INCR", b"n"],
            [b"INCR", b"n"],
            [b"SET", b"s", b"text"],
            [b"INCR", b"s"],
            [b"DEL", b"n", b"s", b"missing"],
            [b"GET", b"n"],
            [b"NOPE"],
            [b"GET"],
            [b"CONFIG", b"GET", b"save"],
        )
    )
    transport = asyncio.run(drive(stream, []))
    assert bytes(transport.out) == (
        b":1\r\n:2\r\n+OK\r\n-ERR value is not an integer or out of range\r\n"
        b":2\r\n$-1\r\n-ERR unknown command 'nope'\r\n"
        b"-ERR wrong number of arguments for 'get' command\r\n"
        b"*2\r\n$4\r\nsave\r\n$0\r\n\r\n"
    )


# Inline commands, and what redis-server 7.0 answered each with on a fresh
# connection: the replies, and whether it then closed the connection.
UNBALANCED = b"-ERR Protocol error: unbalanced quotes in request\r\n"
REDIS_INLINE = [
    (b"PING\n", b"+PONG\r\n", False),
    (b"PING\r\n", b"+PONG\r\n", False),
    (b"ping hi\n", b"$2\r\nhi\r\n", False),
    (b'SET "a b\n', UNBALANCED, True),
    (b"SET 'a b\n", UNBALANCED, True),
    (b'PING\nSET "a b\nPING\n', b"+PONG\r\n" + UNBALANCED, True),
    (b'SET "a"b c\n', UNBALANCED, True),
    (b'SET a"b c" d\nGET "ab c"\n', b"+OK\r\n$1\r\nd\r\n", False),
    (b'ECHO "x\\x41\\n\\y"\n', b"$4\r\nxA\ny\r\n", False),
    (b"ECHO 'it\\'s'\n", b"$4\r\nit's\r\n", False),
    (b"ECHO 'a\\nb'\n", b"$4\r\na\\nb\r\n", False),
    (b"\n\r\nPING\n", b"+PONG\r\n", False),
    (b"ECHO a\x0bb\n", b"$3\r\na\x0bb\r\n", False),
    (b"ECHO \x0b\x0ca\n", b"$1\r\na\r\n", False),
    (b'ECHO ""\n', b"$0\r\n\r\n", False),
    (b"ECHO ''\n", b"$0\r\n\r\n", False),
    (b'ECHO "a\\"b"\n', b'$3\r\na"b\r\n', False),
    (b'ECHO "\\x4"\n', b"$2\r\nx4\r\n", False),
    (b"ECHO a\rb\n", b"-ERR wrong number of arguments for 'echo' command\r\n", False),
    (b"  PING  \r\n", b"+PONG\r\n", False),
    (b"PING\r\r\n", b"+PONG\r\n", False),
    (b'ECHO "a"\t\n', b"$1\r\na\r\n", False),
    (
        b'ECHO "a" "b"\n',
        b"-ERR wrong number of arguments for 'echo' command\r\n",
        False,
    ),
    (b'PING "\n', UNBALANCED, True),
    (b'ECHO "abc\\\n', UNBALANCED, True),
    (b"PING a b\r\n", b"-ERR wrong number of arguments for 'ping' command\r\n", False),
    (b"A" * 70_000, b"-ERR Protocol error: too big inline request\r\n", True),
]


@pytest.mark.parametrize(
    ("stream", "replies", "closes"),
    REDIS_INLINE,
    ids=[repr(stream[:30]) for stream, _, _ in REDIS_INLINE],
)
def test_inline_commands_get_redis_servers_replies(
    stream: bytes, replies: bytes, closes: bool
) -> None:
    transport = asyncio.run(drive(stream, []))
    assert bytes(transport.out) == replies
    assert transport.closed is closes


def quote(arg: bytes, style: str) -> bytes:
    """``arg`` as an inline argument, in one of the ways redis-server reads."""
    if style == "hex":  # every byte escaped, as redis-cli's output shows them
        return b'"' + b"".join(b"\\x%02x" % c for c in arg) + b'"'
    if style == "double":
        escaped = arg.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
        return b'"' + escaped.replace(b"\n", b"\\n").replace(b"\r", b"\\r") + b'"'
    return b"'" + arg.replace(b"'", b"\\'") + b"'"  # no backslash before a quote


# An argument and a way to quote it: any bytes in double quotes; in single
# quotes, none that end with a backslash (it would escape the closing quote).
QUOTED_ARG = st.tuples(st.binary(max_size=40), st.sampled_from(["hex", "double"])) | (
    st.tuples(
        st.binary(max_size=40).filter(lambda arg: not arg.endswith(b"\\")),
        st.just("single"),
    )
)


@settings(max_examples=200, deadline=None)
@given(
    args=st.lists(QUOTED_ARG, min_size=1, max_size=6),
    blanks=st.sampled_from([b" ", b"\t", b"  \t ", b" \v\f "]),
)
def test_quoted_inline_arguments_split_back_exact(
    args: list[tuple[bytes, str]], blanks: bytes
) -> None:
    line = blanks + blanks.join(quote(arg, style) for arg, style in args)
    assert resp.split_inline(line) == [arg for arg, _ in args]


@settings(max_examples=200, deadline=None)
@given(line=st.binary(max_size=60).map(lambda b: b.translate(None, b"\"'\v\f")))
def test_a_line_without_quotes_vt_or_ff_splits_as_bytes_split_does(
    line: bytes,
) -> None:
    assert resp.split_inline(line) == line.split()


@settings(max_examples=100, deadline=None)
@given(
    arg=st.binary(max_size=2 * BUFFER_SIZE),
    cuts=CUTS,
    end=st.sampled_from([b"\n", b"\r\n"]),
)
def test_a_quoted_inline_echo_comes_back_exact_however_the_stream_is_cut(
    arg: bytes, cuts: list[int], end: bytes
) -> None:
    # Four bytes a byte: longer than a buffer from 16 bytes on.
    stream = b"ECHO " + quote(arg, "hex") + end + b"PING" + end
    transport = asyncio.run(drive(stream, cuts))
    assert bytes(transport.out) == resp.bulk(arg) + b"+PONG\r\n"
    assert not transport.closed


# -- commands larger than a buffer, the quota, and a peer that does not read --


def test_a_command_larger_than_a_buffer_is_parsed_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each argument's header is matched once, and the one a read cuts once
    # more: parsing again from the command's start after every read would
    # match thousands of headers per read.
    matches = 0
    bulk_match = resp.BULK

    def counting(view: memoryview, pos: int) -> re.Match[bytes] | None:
        nonlocal matches
        matches += 1
        found: re.Match[bytes] | None = bulk_match(view, pos)
        return found

    monkeypatch.setattr(resp, "BULK", counting)
    keys = [b"k%d" % i for i in range(5000)]
    stream = encode([b"SET", b"k7", b"v"]) + encode([b"DEL", *keys])
    transport = asyncio.run(drive_one(stream, [], arena=True, max_held=1 << 20))
    assert bytes(transport.out) == b"+OK\r\n:1\r\n"
    reads = len(stream) // BUFFER_SIZE + 1
    assert matches <= len(keys) + 3 * reads, (matches, len(keys), reads)


@pytest.mark.parametrize("arena", [False, True], ids=["pool", "arena"])
def test_a_command_over_the_quota_is_refused_with_an_error(arena: bool) -> None:
    for stream in (
        encode([b"PING"]) + b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5000\r\nabc",  # declared
        encode([b"PING"]) + encode([b"DEL", *(b"k%d" % i for i in range(100))]),
    ):
        transport = asyncio.run(drive_one(stream, [], arena=arena, max_held=4096))
        assert transport.closed
        assert transport.out.startswith(b"+PONG\r\n-ERR Protocol error: ")
        assert b"over the quota of 4096 bytes" in transport.out


class SlowTransport(Transport):
    """A transport whose peer reads only when ``drain()`` says: as asyncio's
    do, it pauses the protocol's writing past ``HIGH`` bytes buffered, and
    resumes it once they are sent; it records whether reading is paused."""

    LOW, HIGH = 16384, 65536

    def __init__(self, protocol: Any, high: int = HIGH) -> None:
        super().__init__()
        self.protocol = protocol
        self.HIGH = high
        self.buffered = 0
        self.paused = False
        self.reading = True
        self.most = 0  # the most bytes ever buffered
        self.pauses = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.out += data
        self.buffered += len(data)
        self.most = max(self.most, self.buffered)
        if self.buffered > self.HIGH and not self.paused:
            self.paused = True
            self.pauses += 1
            self.protocol.pause_writing()

    def writelines(self, lines: Any) -> None:
        self.write(b"".join(lines))

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self.LOW, self.HIGH)

    def drain(self) -> None:
        self.buffered = 0
        if self.paused:
            self.paused = False
            self.protocol.resume_writing()

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


@pytest.mark.parametrize("size", [1000, 100_000], ids=["1000 B", "100 KB"])
def test_replies_wait_for_a_peer_that_reads_them_and_keep_their_order(
    size: int,
) -> None:
    value = bytes(range(256)) * (size // 256) + b"!" * (size % 256)

    async def main() -> None:
        arena = buffer_arena(16 << 20, trim_after=None)
        protocol = resp.RespProtocol(arena, resp.Store(), set(), buffer_size=65536)
        transport = SlowTransport(protocol)
        protocol.connection_made(transport)
        feed(protocol, transport, encode([b"SET", b"k", value]))
        assert transport.out == b"+OK\r\n"
        transport.drain()
        transport.out.clear()
        gets = encode([b"GET", b"k"]) * 1000  # 18 KB: one read
        feed(protocol, transport, gets + encode([b"PING"]) + b"*2\r\n$4\r\nECHO")
        # Replies stop at the high-water mark (and the reply past it); the
        # rest waits, and so does reading.
        assert not transport.reading
        assert transport.most <= SlowTransport.HIGH + len(value) + 100
        for _ in range(5000):
            if transport.reading:
                break
            transport.drain()
            assert transport.most <= SlowTransport.HIGH + len(value) + 100
        assert transport.reading
        feed(protocol, transport, b"\r\n$2\r\nhi\r\n")  # the cut ECHO, ended
        expected = resp.bulk(value) * 1000 + b"+PONG\r\n$2\r\nhi\r\n"
        assert transport.out == expected
        protocol.connection_lost(None)
        assert arena.stats().total.outstanding == 0
        arena.close()

    asyncio.run(main())


def test_commands_waiting_at_the_end_of_the_stream_are_answered_then_closed() -> None:
    async def main() -> None:
        pool = buffer_pool(65536, min_nr=1, max_nr=4)
        protocol = resp.RespProtocol(pool, resp.Store(), set())
        transport = SlowTransport(protocol)
        protocol.connection_made(transport)
        feed(protocol, transport, encode([b"SET", b"k", b"v" * 30000]))
        transport.drain()
        transport.out.clear()
        feed(protocol, transport, encode([b"GET", b"k"]) * 10)
        assert protocol.eof_received() is True  # open until they are answered
        while not transport.closed:
            transport.drain()
        assert transport.out == resp.bulk(b"v" * 30000) * 10
        protocol.connection_lost(None)
        assert pool.stats().outstanding == 0
        pool.close()

    asyncio.run(main())


def test_a_value_gathered_in_buffers_is_stored_and_written_in_pieces() -> None:
    class Lines(Transport):
        def __init__(self) -> None:
            super().__init__()
            self.lines: list[list[bytes]] = []

        def writelines(self, lines: Any) -> None:
            self.lines.append(list(lines))
            self.write(b"".join(lines))

    async def main() -> None:
        arena = buffer_arena(16 << 20, trim_after=None)
        protocol = resp.RespProtocol(arena, resp.Store(), set(), buffer_size=65536)
        transport = Lines()
        protocol.connection_made(transport)
        value = bytes(range(256)) * 1000  # 256,000 bytes: four buffers
        feed(protocol, transport, encode([b"SET", b"k", value]))
        feed(protocol, transport, encode([b"GET", b"k"]))
        assert transport.out == b"+OK\r\n" + resp.bulk(value)
        (pieces,) = transport.lines
        assert len(pieces) >= 4 and max(map(len, pieces)) <= 65536
        protocol.connection_lost(None)
        assert arena.stats().total.outstanding == 0
        arena.close()

    asyncio.run(main())


def test_bytes_read_while_replies_wait_come_after_them() -> None:
    async def main() -> None:
        pool = buffer_pool(65536, min_nr=1, max_nr=4)
        protocol = resp.RespProtocol(pool, resp.Store(), set())
        transport = SlowTransport(protocol)
        protocol.connection_made(transport)
        feed(protocol, transport, encode([b"SET", b"k", b"v" * 30000]))
        transport.drain()
        transport.out.clear()
        feed(protocol, transport, encode([b"GET", b"k"]) * 10)
        assert not transport.reading
        # A transport may read once more (uvloop does, after a pause in
        # connection_made()): the protocol holds those bytes until resumed,
        # but delivers a read that fills its buffer at once.
        pings = b"PING\r\n" * (65536 // 6 + 1)
        feed(protocol, transport, pings[:65536])  # ends in a cut PING
        feed(protocol, transport, pings[65536:] + b"ECHO x\r\n")
        for _ in range(100):
            transport.drain()
            await asyncio.sleep(0)
        assert transport.out == (
            resp.bulk(b"v" * 30000) * 10
            + b"+PONG\r\n" * (65536 // 6 + 1)
            + b"$1\r\nx\r\n"
        )
        assert transport.reading
        protocol.connection_lost(None)
        assert pool.stats().outstanding == 0
        pool.close()

    asyncio.run(main())


@settings(max_examples=100, deadline=None)
@given(
    pairs=st.lists(st.tuples(st.binary(max_size=20), ARG), min_size=1, max_size=6),
    cuts=CUTS,
    high=st.sampled_from([0, 30, 300]),
    arena=st.booleans(),
)
def test_a_peer_that_reads_slowly_gets_the_same_replies(
    pairs: list[tuple[bytes, bytes]], cuts: list[int], high: int, arena: bool
) -> None:
    # Replies wait whenever the write buffer is past ``high`` bytes (0:
    # after every write), until the peer reads them all; commands of every
    # kind, cut anywhere, some values larger than a buffer.
    stream = b"".join(
        encode([b"SET", key, value])
        + encode([b"ECHO", value])
        + b"GET "
        + quote(key, "hex")
        + b"\n"
        for key, value in pairs
    )
    expected = asyncio.run(drive(stream, cuts)).out

    async def slowly() -> bytes:
        pool: Mempool[memoryview] | BufferArena
        if arena:
            pool = buffer_arena(1 << 20, classes=(16, BUFFER_SIZE), trim_after=None)
            protocol = resp.RespProtocol(
                pool, resp.Store(), set(), buffer_size=BUFFER_SIZE
            )
        else:
            pool = buffer_pool(BUFFER_SIZE, min_nr=1, max_nr=8)
            protocol = resp.RespProtocol(pool, resp.Store(), set())
        transport = SlowTransport(protocol, high)
        protocol.connection_made(transport)

        async def let_it_read() -> None:
            for _ in range(10_000):
                if transport.reading or transport.closed:
                    return
                transport.drain()  # the peer reads
                await asyncio.sleep(0)  # and the protocol's callbacks run
            raise AssertionError("reading never resumed")

        bounds = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
        for start, end in itertools.pairwise(bounds):
            while start < end and not transport.closed:
                await let_it_read()
                room = protocol.get_buffer(-1)
                n = min(len(room), end - start)
                room[:n] = stream[start : start + n]
                protocol.buffer_updated(n)
                start += n
        await let_it_read()
        assert transport.pauses or high
        protocol.connection_lost(None)
        await asyncio.sleep(0)
        if isinstance(pool, BufferArena):
            assert pool.stats().total.outstanding == 0
        else:
            assert pool.stats().outstanding == 0
        pool.close()
        return bytes(transport.out)

    assert asyncio.run(slowly()) == expected


# -- a command of many arguments: the other connections are served meanwhile --


async def read_as_a_loop_does(
    protocol: Any, transport: SlowTransport, data: bytes
) -> int:
    """``data`` read by ``protocol`` as a transport reads: a buffer at a
    time, one read per loop iteration, none while reading is paused; the
    loop iterations it took."""
    start = 0
    for turn in range(100_000):
        if start == len(data) or transport.closed:
            return turn
        if transport.reading:
            room = protocol.get_buffer(-1)
            n = min(len(room), len(data) - start)
            room[:n] = data[start : start + n]
            protocol.buffer_updated(n)
            start += n
        await asyncio.sleep(0)
    raise AssertionError("reading never resumed")


async def turns_until(condition: Any, limit: int = 1000) -> int:
    """Loop iterations until ``condition()`` holds (at most ``limit``)."""
    for turn in range(limit):
        if condition():
            return turn
        await asyncio.sleep(0)
    raise AssertionError("never")


def test_a_read_of_many_arguments_ends_the_connections_reading_for_the_iteration() -> (
    None
):
    async def main() -> None:
        arena = buffer_arena(64 << 20, trim_after=None)
        protocol = resp.RespProtocol(
            arena, resp.Store(), set(), buffer_size=65536, max_held=64 << 20
        )
        transport = SlowTransport(protocol)
        protocol.connection_made(transport)
        keys = [b"k%d" % i for i in range(20_000)]  # 200 KB: four reads
        command = encode([b"DEL", *keys])
        # A read that ends in a command after a few of its arguments reads on.
        feed(protocol, transport, encode([b"SET", b"k1", b"v"]) + command[:1000])
        assert transport.reading
        # One that parsed thousands of them (a 64 KiB read) waits until the
        # loop has polled once without it: it reads on two iterations later.
        feed(protocol, transport, command[1000:60000])
        assert not transport.reading
        await asyncio.sleep(0)
        assert not transport.reading
        await asyncio.sleep(0)
        assert transport.reading
        feed(protocol, transport, command[60000:120000])
        assert not transport.reading
        # A read that comes all the same (a transport may read once more
        # after a pause: uvloop does) is held, then delivered, not lost.
        feed(protocol, transport, command[120000:121000])
        await turns_until(lambda: transport.reading)
        turns = await read_as_a_loop_does(protocol, transport, command[121000:])
        assert turns >= 2
        await turns_until(lambda: transport.out == b"+OK\r\n:1\r\n")
        assert transport.reading
        protocol.connection_lost(None)
        assert arena.stats().total.outstanding == 0
        arena.close()

    asyncio.run(main())


def test_a_del_of_many_keys_runs_in_slices_and_the_replies_keep_their_order() -> None:
    slices = 3
    nkeys = slices * resp.DEL_SLICE + 5

    async def main() -> None:
        arena = buffer_arena(256 << 20, trim_after=None)
        store = resp.Store()
        keys = [b"k%d" % i for i in range(nkeys)]
        for key in keys[::2]:
            store.data[key] = resp.bulk(b"v")
        store.data[b"other"] = resp.bulk(b"o")
        deleting = resp.RespProtocol(
            arena, store, set(), buffer_size=65536, max_held=64 << 20
        )
        mine = SlowTransport(deleting)
        deleting.connection_made(mine)
        other = resp.RespProtocol(
            arena, store, set(), buffer_size=65536, max_held=64 << 20
        )
        theirs = SlowTransport(other)
        other.connection_made(theirs)
        # The DEL of a key twice, then commands of the same connection
        # after it, in the same read as its end.
        stream = encode([b"DEL", *keys, keys[0]])
        stream += encode([b"SET", keys[0], b"new"]) + encode([b"GET", keys[0]])
        await read_as_a_loop_does(deleting, mine, stream)
        # The DEL is whole: its slices run one per loop iteration, and the
        # other connection is answered in between.
        assert mine.out == b""
        assert not mine.reading  # what comes next waits in the socket
        feed(other, theirs, encode([b"PING"]) + encode([b"GET", b"other"]))
        assert theirs.out == b"+PONG\r\n$1\r\no\r\n"
        turns = await turns_until(lambda: bool(mine.out))
        assert turns >= slices
        deleted = len(keys[::2])
        assert mine.out == b":%d\r\n+OK\r\n$3\r\nnew\r\n" % deleted
        assert mine.reading
        assert set(store.data) == {b"other", keys[0]}
        for protocol in (deleting, other):
            protocol.connection_lost(None)
        assert arena.stats().total.outstanding == 0
        arena.close()

    asyncio.run(main())


def test_a_del_in_slices_is_answered_before_the_close_or_dropped_if_lost() -> None:
    nkeys = 2 * resp.DEL_SLICE + 1
    command = encode([b"DEL", *(b"k%d" % i for i in range(nkeys))])

    async def main() -> None:
        arena = buffer_arena(256 << 20, trim_after=None)
        # The peer sends the DEL and closes its side: answered, then closed.
        protocol = resp.RespProtocol(
            arena, resp.Store(), set(), buffer_size=65536, max_held=64 << 20
        )
        transport = SlowTransport(protocol)
        protocol.connection_made(transport)
        await read_as_a_loop_does(protocol, transport, command)
        assert protocol.eof_received() is True
        await turns_until(lambda: transport.closed)
        assert transport.out == b":0\r\n"
        protocol.connection_lost(None)
        # The connection is lost while the slices run: nothing more is
        # written, and every buffer is back.
        protocol = resp.RespProtocol(
            arena, resp.Store(), set(), buffer_size=65536, max_held=64 << 20
        )
        transport = SlowTransport(protocol)
        protocol.connection_made(transport)
        await read_as_a_loop_does(protocol, transport, command + encode([b"PING"]))
        transport.closed = True
        protocol.connection_lost(None)
        for _ in range(10):
            await asyncio.sleep(0)
        assert transport.out == b""
        assert arena.stats().total.outstanding == 0
        arena.close()

    asyncio.run(main())


# -- big values at once: the gate ---------------------------------------------


def gated(
    arena: BufferArena, store: Any, gate: Any, count: int
) -> list[tuple[Any, SlowTransport]]:
    """``count`` connections of ``store`` behind ``gate``."""
    conns = []
    for _ in range(count):
        protocol = resp.RespProtocol(
            arena, store, set(), buffer_size=65536, max_held=1 << 20, gate=gate
        )
        transport = SlowTransport(protocol)
        protocol.connection_made(transport)
        conns.append((protocol, transport))
    return conns


def test_big_values_at_once_are_gathered_in_turn_through_the_gate() -> None:
    size = 300_000  # five buffers each; the gate holds one such frame

    async def main() -> None:
        arena = buffer_arena(16 << 20, trim_after=None)
        store = resp.Store()
        gate = resp.Gate(400_000)
        conns = gated(arena, store, gate, 4)
        requests = [encode([b"SET", b"k", b"%d" % i * size]) for i in range(4)]
        for (protocol, transport), request in zip(conns, requests, strict=True):
            feed(protocol, transport, request[:65536])  # each frame begun
        # The first is admitted; the others wait in line, reading paused,
        # each holding the buffer its frame began in.
        assert [t.reading for _, t in conns] == [True, False, False, False]
        assert gate.taken == size + 2
        (p0, t0), (p1, t1), (p2, _), (p3, t3) = conns
        await read_as_a_loop_does(p0, t0, requests[0][65536:])
        assert t0.out == b"+OK\r\n"
        assert [t.reading for _, t in conns] == [True, True, False, False]
        # One lost while it waits leaves the line: the next end admits the
        # one behind it.
        p2.connection_lost(None)
        await read_as_a_loop_does(p1, t1, requests[1][65536:])
        assert t1.out == b"+OK\r\n"
        assert t3.reading
        await read_as_a_loop_does(p3, t3, requests[3][65536:])
        feed(p0, t0, encode([b"GET", b"k"]))
        assert t0.out == b"+OK\r\n" + resp.bulk(b"3" * size)
        assert gate.taken == 0 and not gate.waiting and not gate.admitted
        for protocol, _ in conns:
            protocol.connection_lost(None)
        assert arena.stats().total.outstanding == 0
        arena.close()

    asyncio.run(main())


def test_a_frame_that_stalls_in_the_gate_lets_the_next_in_after_its_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(resp, "GATE_GRACE", 0.05)
    size = 300_000

    async def main() -> None:
        arena = buffer_arena(16 << 20, trim_after=None)
        gate = resp.Gate(400_000)
        (p0, t0), (p1, t1) = gated(arena, resp.Store(), gate, 2)
        requests = [encode([b"SET", b"k%d" % i, b"v" * size]) for i in range(2)]
        feed(p0, t0, requests[0][:100_000])  # and no more for now
        feed(p1, t1, requests[1][:65536])
        assert t0.reading and not t1.reading
        for _ in range(200):  # 2 s at most
            if t1.reading:
                break
            await asyncio.sleep(0.01)
        assert t1.reading  # the stalled frame left the gate
        await read_as_a_loop_does(p1, t1, requests[1][65536:])
        assert t1.out == b"+OK\r\n"
        # The stalled one may still end: it gathers on, uncounted.
        await read_as_a_loop_does(p0, t0, requests[0][100_000:])
        assert t0.out == b"+OK\r\n"
        assert gate.taken == 0 and not gate.waiting and not gate.admitted
        for protocol in (p0, p1):
            protocol.connection_lost(None)
        assert arena.stats().total.outstanding == 0
        arena.close()

    asyncio.run(main())


@settings(max_examples=100, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["set", "del", "get", "ping"]),
            st.lists(st.binary(min_size=1, max_size=3), min_size=1, max_size=12),
        ),
        min_size=1,
        max_size=8,
    ),
    cuts=CUTS,
    high=st.sampled_from([0, 30, 1 << 20]),
    gate=st.booleans(),
)
def test_dels_in_slices_and_reads_that_yield_give_the_same_replies(
    ops: list[tuple[str, list[bytes]]], cuts: list[int], high: int, gate: bool
) -> None:
    # The same stream as drive() feeds at once, read as a loop reads it,
    # with slices of two keys, a pause after every read of two arguments
    # or more, and replies that wait past ``high`` bytes: DELs cut anywhere
    # and run in slices, the commands behind them deferred, replies the same.
    stream = b""
    for op, keys in ops:
        if op == "set":
            stream += encode([b"SET", keys[0], b"v" * (len(keys) * 20)])
        elif op == "get":
            stream += encode([b"GET", keys[0]])
        elif op == "del":
            stream += encode([b"DEL", *keys])
        else:
            stream += b"PING\r\n"
    expected = asyncio.run(drive(stream, cuts)).out

    async def sliced() -> bytes:
        pool = buffer_arena(1 << 20, classes=(16, BUFFER_SIZE), trim_after=None)
        protocol = resp.RespProtocol(
            pool,
            resp.Store(),
            set(),
            buffer_size=BUFFER_SIZE,
            gate=resp.Gate(100) if gate else None,
        )
        transport = SlowTransport(protocol, high)
        protocol.connection_made(transport)

        async def let_it_read() -> None:
            for _ in range(10_000):
                if transport.reading or transport.closed:
                    return
                transport.drain()
                await asyncio.sleep(0)
            raise AssertionError("reading never resumed")

        bounds = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
        for start, end in itertools.pairwise(bounds):
            while start < end and not transport.closed:
                await let_it_read()
                room = protocol.get_buffer(-1)
                n = min(len(room), end - start)
                room[:n] = stream[start : start + n]
                protocol.buffer_updated(n)
                start += n
        assert protocol.eof_received() in (True, None)
        for _ in range(10_000):
            if not protocol.deferred and protocol.draining is None:
                break
            transport.drain()
            await asyncio.sleep(0)
        protocol.connection_lost(None)
        await asyncio.sleep(0)
        assert pool.stats().total.outstanding == 0
        pool.close()
        return bytes(transport.out)

    saved = resp.DEL_SLICE, resp.YIELD_ARGS
    resp.DEL_SLICE, resp.YIELD_ARGS = 2, 2
    try:
        assert asyncio.run(sliced()) == expected
    finally:
        resp.DEL_SLICE, resp.YIELD_ARGS = saved


def test_a_read_that_completes_a_command_answers_it_in_its_one_write() -> None:
    class Writes(Transport):
        def __init__(self) -> None:
            super().__init__()
            self.writes: list[bytes] = []

        def write(self, data: bytes | bytearray | memoryview) -> None:
            self.writes.append(bytes(data))
            super().write(data)

    async def main() -> None:
        arena = buffer_arena(16 << 20, trim_after=None)
        protocol = resp.RespProtocol(arena, resp.Store(), set(), buffer_size=65536)
        transport = Writes()
        protocol.connection_made(transport)
        pipeline = encode([b"SET", b"k", b"v" * 16384]) * 5 + encode([b"GET", b"k"])
        feed(protocol, transport, pipeline[:40000])  # ends in the third SET
        feed(protocol, transport, pipeline[40000:] + b"PING\r\n")
        assert transport.writes == [
            b"+OK\r\n" * 2,
            b"+OK\r\n" * 3 + resp.bulk(b"v" * 16384) + b"+PONG\r\n",
        ]
        # An inline command completed by a read, and a read that ends there.
        feed(protocol, transport, b"PI")
        feed(protocol, transport, b"NG\r\nECHO x\r\n")
        feed(protocol, transport, encode([b"ECHO", b"y"])[:9])
        feed(protocol, transport, encode([b"ECHO", b"y"])[9:])
        assert transport.writes[2:] == [b"+PONG\r\n$1\r\nx\r\n", b"$1\r\ny\r\n"]
        protocol.connection_lost(None)
        assert arena.stats().total.outstanding == 0
        arena.close()

    asyncio.run(main())
