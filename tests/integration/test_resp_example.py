"""examples/resp_server.py's parser and protocol, fed in every way a stream
can be cut: whole commands, commands cut anywhere, commands larger than a
buffer, inline commands (split as redis-server splits them), and garbage."""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import sys
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiomempool import buffer_pool

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


async def drive(stream: bytes, cuts: list[int]) -> Transport:
    """Feed ``stream`` to a RespProtocol, read by read, cut at ``cuts`` and
    wherever a buffer is full; every buffer must be back at the end."""
    pool = buffer_pool(BUFFER_SIZE, min_nr=1, max_nr=8)
    protocol = resp.RespProtocol(pool, resp.Store(), BUFFER_SIZE, set())
    transport = Transport()
    protocol.connection_made(transport)
    bounds = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    for start, end in itertools.pairwise(bounds):
        while start < end and not transport.closed:
            room = protocol.get_buffer(-1)
            n = min(len(room), end - start)
            room[:n] = stream[start : start + n]
            protocol.buffer_updated(n)
            start += n
    protocol.connection_lost(None)
    await asyncio.sleep(0)
    assert pool.stats().outstanding == 0
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
