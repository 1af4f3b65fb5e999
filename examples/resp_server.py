"""A small Redis-protocol (RESP2) server that parses in place in pooled buffers.

PING, ECHO, SET, GET, DEL, INCR and CONFIG GET (enough for ``redis-cli``
and ``redis-benchmark -t ping,set,get``), pipelined or not, as RESP arrays
or inline (``printf 'PING\n' | nc 127.0.0.1 PORT``: split as redis-server
splits them, quotes included, one ended by a bare LF too). On SIGINT or
SIGTERM it prints the arena's stats and shuts down.

    python examples/resp_server.py [--port 6379] [--uvloop] [--max-bytes N]
    redis-benchmark -p PORT -t ping,set,get -q

Reads land in receive buffers of a ``buffer_arena()`` (``--buffer-size``
bytes each, ``--min-nr`` of them reserved), whose budget (``--max-bytes``;
or ``--max-nr`` receive buffers beyond what the reserves pin, as a
``buffer_pool()``'s ``max_nr``) bounds every buffer the connections hold.
Commands are parsed straight from the receive buffer, and a read's
replies go out in one write: the small arguments of a read are split out
of a window of its bytes at a time (one ``bytes.split()``, its parts
checked against their headers: ``parse_many()``), big ones are slices of
the buffer, and only the values stored are copied out of those.

A command cut by the end of a read is parsed once, never again from its
start: its arguments so far are copied (they are small; plain bytes, which
the cyclic garbage collector does not track) and the parse goes on where
it stopped. A read that parsed ``YIELD_ARGS`` arguments or more of it
pauses the connection's reading until the loop has polled the others
once, and a DEL of more than ``DEL_SLICE`` keys deletes that many per
iteration, the connection's next commands deferred behind it: the other
clients are answered in between (a 400,000-key DEL is 43 reads and 13
slices, a few milliseconds each). Such a DEL is not atomic.

The argument a read cuts is kept (``keep_buffer()``, which moves a few
bytes into a buffer of their size, so an idle or trickling client holds
what it sent, not a receive buffer), or, if it does not fit a receive
buffer (a big SET value), gathered in the arena's buffers (``gather()``)
and received whole in ``frame_received()``, through a server-wide
``Gate``: the frames gathered at once declare a quarter of the budget at
most, the others wait in line with the one buffer their frame began in,
so that 2,000 clients sending a 1 MiB value each at once are all answered
(their first buffers alone would hold half the budget, and 2,000 frames
begun would hold it all, none able to end). Each connection may hold
``max_held`` bytes for an unfinished command (64 MiB, or half the budget
if that is less: a 2.8 MB DEL of 400,000 keys runs): its arguments,
copied, count at their size plus ``ARG_OVERHEAD`` each, and the argument
being received at its declared length, so a command that declares more
is answered ``-ERR`` and the connection closed before any of it is held.

A value is stored as the reply GET gives: one ``bytes`` if it fit a
receive buffer, else a tuple of pieces copied out of the buffers it was
gathered in, which GET writes with ``writelines()`` without joining them
(asyncio joins them on Python 3.11, not from 3.12 on; uvloop never does).
The store is outside the budget, and a gathered SET gives its buffers
back at once: keeping the chain instead would put the store in the
budget, and a DEL could give a buffer back to the arena while a GET's
reply still sits in a transport's write buffer.

Replies are bounded by the transport's flow control: a read's commands
are executed until the replies would pass the write buffer's high-water
mark; if the transport then pauses writing (``pause_writing()``), the
rest of the read waits, copied (at most one read per connection), and
reading pauses; ``resume_writing()`` executes it and resumes reading.
Besides the budget and the store, memory is bounded per connection by
the write buffer (its high-water mark, 64 KiB, plus the last reply), the
commands waiting for it or for a DEL's slices (one read), and the copied
arguments of an unfinished command or of a DEL in slices (each within
``max_held``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import time
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from itertools import repeat
from typing import NoReturn, cast

from aiomempool import (
    BufferArena,
    BufferChain,
    Mempool,
    PooledBufferedProtocol,
    buffer_arena,
    default_classes,
)
from aiomempool.arena import ARENA_SLAB_BYTES

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
MAX_BULK = 512 * 1024 * 1024  # Redis's proto-max-bulk-len; max_held is lower
MAX_ARGS = 1024 * 1024
MAX_INLINE = 64 * 1024  # Redis's PROTO_INLINE_MAX_SIZE
#: The per-connection quota, ``max_held``: bytes an unfinished command may
#: hold (or half the budget, if less).
MAX_HELD = 64 * 1024 * 1024
#: What a copied argument of an unfinished command costs beyond its bytes,
#: for the quota: the bytes object and its slot in the list.
ARG_OVERHEAD = 64
#: A DEL completed across reads deletes this many keys per loop iteration
#: at most (a few milliseconds), the other connections served in between.
DEL_SLICE = 32768
#: A read that parsed this many arguments of a command it did not finish
#: pauses the connection's reading until the loop has polled the others:
#: the next read may be as much work again (uvloop reads up to 32 times in
#: one callback; a 64 KiB read of one-byte keys holds 9,362 arguments).
YIELD_ARGS = 1024
#: The server's big arguments gathered at once: their declared bytes
#: within a quarter of the budget (see ``Gate``); an admitted one whose
#: connection reads nothing for GATE_GRACE seconds leaves the gate.
GATE_SHARE = 4
GATE_GRACE = 1.0
#: Connections the kernel queues for accept(): redis-server's default
#: (tcp-backlog). asyncio's and uvloop's default, 100, overflows when a few
#: hundred clients connect at once, and the kernel resets the connections
#: it could not queue before the server ever sees them.
BACKLOG = 511
MIB = 1024 * 1024

OK = b"+OK\r\n"
NIL = b"$-1\r\n"
# What redis-benchmark asks for first: no snapshots, no append-only file.
CONFIG = {b"save": b"", b"appendonly": b"no"}


class ProtocolError(Exception):
    """The client sent something that is not RESP."""


#: An argument: a slice of the receive buffer (a memoryview, whose
#: ``tobytes()`` copies it), or a copy made already (bytes: plain bytes,
#: which the cyclic garbage collector does not track, so that the 400,000
#: copied keys of a DEL add nothing to what each full collection walks).
Arg = memoryview | bytes
#: A reply: one bytes, or the pieces of a big value's, written as they are.
Reply = bytes | tuple[bytes, ...]


def bulk(value: bytes | memoryview) -> bytes:
    """``value`` as a RESP bulk string (one copy of it; join copies a big
    memoryview twice as fast as %-formatting)."""
    return b"".join((b"$%d\r\n" % len(value), value, b"\r\n"))


def raw(arg: Arg) -> bytes:
    """The bytes of an argument: its slice of the receive buffer copied, or
    the copy made already."""
    return arg.tobytes() if isinstance(arg, memoryview) else arg


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


#: The headers parse_many() knows by heart: "*1" to "*1024" (an array's),
#: "$0" to "$1024" (an argument's), as clients write them.
COUNTS = {b"*%d" % n: n for n in range(1, 1025)}
SIZES = {b"$%d" % n: n for n in range(1025)}
#: parse_many() splits a read a window at a time: the first this many
#: bytes, each next one four times the last, up to WINDOW_MAX (splitting
#: costs a nanosecond a byte: a big value is sliced from the view instead).
WINDOW = 256
WINDOW_MAX = 4096


def parse_many(
    view: memoryview, pos: int, commands: list[tuple[Sequence[Arg], int]]
) -> int:
    """Append to ``commands`` the complete commands from ``pos`` that are
    plainly formed (arrays of at most 1,024 arguments, whole, their headers
    as clients write them), each as its arguments and where it ends; return
    where the first one it did not take starts. Whatever else comes (an
    inline command, a cut, an error, an odd header) is left to
    parse_command(), so both take the same commands, with the same
    arguments.

    The common case costs a split per window of bytes, not a regex match
    per argument: the window's parts alternate headers and arguments,
    whose lengths must agree with the headers. An argument that does not
    (larger than the window, or holding a CRLF) is sliced from ``view`` by
    its declared length, and the next window starts after it. Arguments
    from a window are bytes; those sliced, memoryviews."""
    end = len(view)
    window = WINDOW
    start = pos  # where the window starts
    parts = view[start : start + window].tobytes().split(b"\r\n")
    last = len(parts) - 1  # parts[last] is cut by the window: no CRLF after it
    i = 0
    at = pos  # where parts[i] starts
    args: list[Arg] | None = None  # the command being parsed, if any
    nargs = 0
    while True:
        if i >= last:
            if start + window >= end:
                return pos  # cut by the end of the read
            # A window spent: the next, larger, from where this one ends.
            window = min(window * 4, WINDOW_MAX)
            start = at
            parts = view[start : start + window].tobytes().split(b"\r\n")
            last = len(parts) - 1
            i = 0
            if last == 0:  # no CRLF in a whole window: no header of ours
                return pos
            continue
        if args is None:
            head = parts[i]
            counted = COUNTS.get(head)
            if counted is None:
                return pos
            nargs = counted
            at += len(head) + 2
            i += 1
            args = []
            continue
        header = parts[i]
        size = SIZES.get(header)
        if size is None:
            digits = header[1:]
            if not (header[:1] == b"$" and 1 <= len(digits) <= 10 and digits.isdigit()):
                return pos
            size = int(digits)
            if size > MAX_BULK:
                return pos
        if i + 1 < last and len(parts[i + 1]) == size:
            args.append(parts[i + 1])
            at += len(header) + size + 4
            i += 2
        else:
            # Larger than the window, or holding a CRLF: from the view.
            at += len(header) + 2
            stop = at + size
            if stop + 2 > end or view[stop] != 13 or view[stop + 1] != 10:
                return pos
            args.append(view[at:stop])
            # The next window, after it, is a small one again: arguments
            # with CRLFs in them, one after another, each split only the
            # bytes that follow it up to WINDOW, not up to WINDOW_MAX.
            at = start = stop + 2
            window = WINDOW
            parts = view[start : start + window].tobytes().split(b"\r\n")
            last = len(parts) - 1
            i = 0
        if len(args) == nargs:
            commands.append((args, at))
            pos = at
            args = None


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
    return inline_args(view[pos : m.start()].tobytes()), m.end()


def inline_args(line: bytes) -> list[memoryview]:
    """The arguments of an inline command's line (its LF left out)."""
    # The CR of a CRLF is kept: both splits take it for a blank, and a CR
    # inside quotes leaves them unclosed at the end of the line either way.
    args = line.split() if NOT_PLAIN(line) is None else split_inline(line)
    return [memoryview(arg) for arg in args]


def scan(view: memoryview, pos: int) -> int:
    """Where the first incomplete command from ``pos`` starts (the end of
    ``view`` if none is); the end too if the client broke the protocol
    (executing the commands finds it again, where it is)."""
    end = len(view)
    try:
        while pos < end:
            parsed = parse_command(view, pos)
            if parsed is None:
                return pos
            pos = parsed[1]
    except ProtocolError:
        return end
    return pos


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


def cut_bulk(view: memoryview, pos: int) -> tuple[list[memoryview], int] | None:
    """None (what parse_command() returns for an incomplete command) if the
    read ends at ``pos``, or in a bulk string's header there; a protocol
    error otherwise."""
    if pos >= len(view) or (view[pos] == 0x24 and CUT_HEADER(view, pos)):  # "$"
        return None
    raise ProtocolError("expected '$' and a length")


def ends_in_crlf(views: Sequence[memoryview]) -> bool:
    """Whether the bytes of ``views``, one after another, end in CRLF."""
    last = views[-1]
    if len(last) >= 2:
        return last[-2] == 13 and last[-1] == 10
    if len(views) < 2 or not last:
        return False
    return views[-2][-1] == 13 and last[0] == 10


class Store:
    """The keys and values, and the commands on them.

    A value is stored as the reply that GET gives, a bulk string: SET copies
    it from the pool's buffer once, into that form, and GET writes it as it
    is, however big. A value that came in one read is one ``bytes``; a
    larger one is the pieces it arrived in (its header, then a copy of each
    buffer of its chain, the last ending in the CRLF), which GET hands to
    ``writelines()`` without joining them.
    """

    def __init__(self) -> None:
        self.data: dict[bytes, Reply] = {}  # key -> GET's reply
        self.commands: dict[bytes, Callable[[Sequence[Arg]], Reply]] = {
            b"PING": self.ping,
            b"ECHO": self.echo,
            b"SET": self.set,
            b"GET": self.get,
            b"DEL": self.delete,
            b"INCR": self.incr,
            b"CONFIG": self.config,
        }

    # memoryview.tobytes() copies, as bytes() does, in half the time; the
    # commands on keys and values test for a slice inline (a call costs more).
    def execute(self, args: Sequence[Arg]) -> Reply:
        name = args[0]
        if isinstance(name, memoryview):
            name = name.tobytes()
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

    def ping(self, args: Sequence[Arg]) -> bytes:
        if len(args) == 1:
            return b"+PONG\r\n"
        if len(args) != 2:
            raise IndexError
        return bulk(args[1])

    def echo(self, args: Sequence[Arg]) -> bytes:
        if len(args) != 2:
            raise IndexError
        return bulk(args[1])

    def set(self, args: Sequence[Arg]) -> bytes:
        if len(args) != 3:
            raise IndexError
        key = args[1]
        self.data[key.tobytes() if isinstance(key, memoryview) else key] = bulk(args[2])
        return OK

    def set_pieces(self, key: bytes, pieces: tuple[bytes, ...]) -> bytes:
        """SET of a value gathered in a chain: ``pieces`` is GET's reply."""
        self.data[key] = pieces
        return OK

    def get(self, args: Sequence[Arg]) -> Reply:
        key = args[1]
        return self.data.get(key.tobytes() if isinstance(key, memoryview) else key, NIL)

    def delete(self, args: Sequence[Arg]) -> bytes:
        if len(args) < 2:
            raise IndexError
        # A copied key is bytes already: no copy more, no call per key.
        pop = self.data.pop
        deleted = 0
        for key in args[1:]:
            if isinstance(key, memoryview):
                key = key.tobytes()
            if pop(key, None) is not None:
                deleted += 1
        return b":%d\r\n" % deleted

    def incr(self, args: Sequence[Arg]) -> bytes:
        key = raw(args[1])
        stored = self.data.get(key, b"$1\r\n0\r\n")
        try:
            if isinstance(stored, tuple):  # pieces: far too long for a number
                raise ValueError
            value = int(unbulk(stored)) + 1
        except ValueError:
            return b"-ERR value is not an integer or out of range\r\n"
        if not -(2**63) <= value < 2**63:
            return b"-ERR increment or decrement would overflow\r\n"
        self.data[key] = bulk(b"%d" % value)
        return b":%d\r\n" % value

    def config(self, args: Sequence[Arg]) -> bytes:
        if raw(args[1]).upper() != b"GET" or len(args) != 3:
            return b"-ERR only CONFIG GET parameter is supported\r\n"
        name = raw(args[2]).lower()
        value = CONFIG.get(name)
        if value is None:
            return b"*0\r\n"
        return b"*2\r\n" + bulk(name) + bulk(value)


class Deletion:
    """A DEL of more than ``DEL_SLICE`` keys, completed across reads (so
    its keys are copies): deleted a slice at a time, from the end of
    ``args``, which shrinks as it goes (its keys are freed a slice at a
    time too). Not atomic: other connections' commands run between slices.
    """

    def __init__(self, data: dict[bytes, Reply], args: list[Arg]) -> None:
        self.data = data
        self.args = args  # the name, then the keys not deleted yet
        self.deleted = 0

    def step(self) -> bytes | None:
        """Delete the next slice of keys; the reply once none is left."""
        args = self.args
        start = max(1, len(args) - DEL_SLICE)
        keys = args[start:]
        del args[start:]
        data = self.data
        before = len(data)
        # Popping the keys runs no code of ours, nor anyone's: the keys
        # found are what the dict lost. (A key gathered in buffers is a
        # read-only memoryview, which hashes and compares as its bytes.)
        deque(map(data.pop, cast("list[bytes]", keys), repeat(None)), maxlen=0)
        self.deleted += before - len(data)
        return b":%d\r\n" % self.deleted if len(args) == 1 else None


#: What waits while the peer does not read its replies (or while a big DEL
#: runs its slices): a read's complete commands, copied, one command
#: completed across reads, to execute, or a DEL to run a slice at a time.
Deferred = memoryview | Callable[[], Reply] | Deletion


class Gate:
    """The big arguments being gathered at once, server-wide: admitted first
    come, first served while their declared bytes together stay within
    ``limit`` (one is always admitted if none is being gathered).

    Without it, 2,000 clients sending a 1 MiB value each at once hold the
    budget with the first buffers of 2,000 frames none of which can finish
    (each needs 15 more). A connection not admitted holds the buffer its
    frame began in, its reading paused, until the gate admits it: so the
    admitted frames find the rest of their buffers in what the budget has
    left (``limit`` is a quarter of it; 2,000 first buffers of 64 KiB are
    half of 256 MiB), and each one that ends admits the next.

    A frame admitted whose connection reads nothing for ``GATE_GRACE``
    seconds leaves the gate uncounted (it gathers on): a client that stops
    in the middle of a big value keeps the others out that long (twice
    that at most: the gate looks at the frame's ``frame_left`` every
    ``GATE_GRACE`` seconds), no longer, while one that sends slowly, or a
    server slowed down, keeps its place as long as bytes come. The
    frames waiting hold a receive buffer each: past three quarters of the
    budget of them (3,000 frames begun at once, with the defaults), the
    admitted ones may find too little, and the protocol's ``hold_timeout``
    closes connections until they do.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.taken = 0  # the declared bytes of the admitted frames
        # The admitted frames: their bytes, when the gate looks at them
        # next, and their frame_left when it last did (or admitted them).
        self.admitted: dict[RespProtocol, tuple[int, float, int]] = {}
        self.waiting: deque[tuple[RespProtocol, int]] = deque()
        self.timer: asyncio.TimerHandle | None = None  # the next expiry

    def admit(self, conn: RespProtocol, nbytes: int) -> bool:
        """Whether ``conn`` may gather a frame of ``nbytes`` now; if not, it
        waits in line, and ``conn.admitted()`` is called once it may."""
        if not self.waiting and (self.taken == 0 or self.taken + nbytes <= self.limit):
            self.take(conn, nbytes)
            return True
        self.waiting.append((conn, nbytes))
        self.arm()
        return False

    def take(self, conn: RespProtocol, nbytes: int) -> None:
        self.taken += nbytes
        due = time.monotonic() + GATE_GRACE
        self.admitted[conn] = (nbytes, due, conn.frame_left)

    def release(self, conn: RespProtocol) -> None:
        """The frame of ``conn`` is over (received, or lost)."""
        entry = self.admitted.pop(conn, None)
        if entry is not None:
            self.taken -= entry[0]
        else:
            for waiting in self.waiting:
                if waiting[0] is conn:
                    self.waiting.remove(waiting)
                    break
        self.admit_next()

    def admit_next(self) -> None:
        """Admit the waiting frames that fit now, in order."""
        waiting = self.waiting
        while waiting:
            conn, nbytes = waiting[0]
            if self.taken and self.taken + nbytes > self.limit:
                self.arm()
                return
            waiting.popleft()
            self.take(conn, nbytes)
            conn.admitted()

    def arm(self) -> None:
        """While frames wait, expire the admitted ones when they are due."""
        if self.timer is None and self.waiting and self.admitted:
            due = min(entry[1] for entry in self.admitted.values())
            delay = max(0.0, due - time.monotonic())
            loop = asyncio.get_running_loop()
            self.timer = loop.call_later(delay, self.expire)

    def expire(self) -> None:
        """The admitted frames that read nothing since the gate last looked
        leave it; those that did are looked at again ``GATE_GRACE`` later."""
        self.timer = None
        now = time.monotonic()
        for conn, (nbytes, due, left) in list(self.admitted.items()):
            if due <= now:
                if conn.frame_left != left:  # bytes came: not stalled
                    self.admitted[conn] = (nbytes, now + GATE_GRACE, conn.frame_left)
                else:
                    del self.admitted[conn]
                    self.taken -= nbytes
        self.admit_next()
        self.arm()


class RespProtocol(PooledBufferedProtocol):
    """One client connection: parses its commands, writes the replies.

    The parse state between reads (see the module's docstring): at most
    one unfinished command, an array (``args``) or an inline one
    (``inline``, ``line``), and the commands deferred while writing is
    paused (``deferred``).
    """

    # Its attributes in slots: in the compiled build the protocol's base is
    # an extension type, and CPython reads a subclass's own attributes
    # three times slower from its __dict__ then; slots it reads as fast.
    __slots__ = (
        "args",
        "conns",
        "deferred",
        "draining",
        "eof",
        "first",
        "gate",
        "gated",
        "gathering",
        "held",
        "high_water",
        "inline",
        "line",
        "lost",
        "nargs",
        "queued",
        "store",
        "writing_paused",
        "yielding",
    )

    def __init__(
        self,
        pool: Mempool[memoryview] | BufferArena,
        store: Store,
        conns: set[RespProtocol],
        *,
        buffer_size: int | None = None,
        max_held: int | None = None,
        gate: Gate | None = None,
    ) -> None:
        super().__init__(pool, buffer_size=buffer_size, max_held=max_held)
        self.store = store
        self.conns = conns
        # The server's frames gathered at once (None: no bound); whether
        # this connection's frame is in it (admitted, or waiting in line,
        # its reading paused).
        self.gate = gate
        self.gated = False
        self.queued = False
        self.lost = asyncio.get_running_loop().create_future()
        # An array command cut by the end of a read: its arguments so far
        # (copied), how many it declares, and what they count for the quota.
        self.args: list[Arg] | None = None
        self.nargs = 0
        self.held = 0
        # The length of the argument being gathered (its bulk string, CRLF
        # left out), while gather() fills buffers with it; -1 otherwise.
        self.gathering = -1
        # An inline command cut by the end of a read: kept, its first
        # ``inline`` bytes known to hold no LF (0: none); or, if it filled
        # a buffer (buffers below MAX_INLINE), copied here until its LF.
        self.inline = 0
        self.line: bytearray | None = None
        # Commands held back while writing is paused, or behind a DEL that
        # runs in slices, in order; the callback of drain() due, if any.
        self.deferred: deque[Deferred] = deque()
        self.draining: asyncio.Handle | None = None
        self.writing_paused = False
        # Reading paused for the rest of the loop iteration after a read
        # of many arguments (see unfinished()).
        self.yielding = False
        self.eof = False  # the peer closed its side with commands deferred
        # While view_received() parses on the command a read began in: the
        # reply of that command once complete (see view_received()).
        self.first: list[Reply] | None = None
        self.high_water = 65536  # the transport's, from connection_made()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.high_water = self.transport.get_write_buffer_limits()[1]
        self.conns.add(self)

    # -- reading ------------------------------------------------------------

    def view_received(self, view: memoryview) -> None:
        if self.transport.is_closing():
            return
        first: list[Reply] = []
        try:
            pos = 0
            if self.args is not None or self.inline or self.line is not None:
                # The reply of the command this read completes waits in
                # ``first``, to go out in the read's one write with the
                # others (with -P 16, most reads end in a command cut).
                self.first = first
                try:
                    if self.args is not None:
                        pos = self.parse_args(view, 0)
                    else:
                        pos = self.resume_inline(view)
                finally:
                    self.first = None
            end = len(view)
            while 0 <= pos < end:
                if not self.deferred and not self.writing_paused:
                    pos = self.run(view, pos, first)
                    first = []
                    if pos < 0 or pos == end:
                        return
                if self.deferred or self.writing_paused:
                    # The peer does not read: the rest of the read's
                    # complete commands wait for resume_writing(), copied.
                    cut = scan(view, pos)
                    if cut > pos:
                        self.deferred.append(memoryview(view[pos:cut].tobytes()))
                    pos = cut
                    if pos == end:
                        return
                pos = self.cut(view, pos)
        except ProtocolError as exc:
            for reply in first:
                self.send(reply)
            self.fail(exc)
            return
        for reply in first:  # the read ended with the command it completed
            self.send(reply)

    def run(self, view: memoryview, pos: int, first: Sequence[Reply] = ()) -> int:
        """Execute the complete commands of ``view`` from ``pos`` and write
        their replies, after ``first`` (those of commands completed before
        ``pos``); return where it stopped: at the first incomplete command,
        at the end, or where writing paused (``writing_paused``); -1 if the
        client broke the protocol (the connection is closing)."""
        transport = self.transport
        replies: list[bytes] = []
        pieces = False  # a big value's pieces are among the replies
        out = 0
        for reply in first:
            if isinstance(reply, tuple):
                replies.extend(reply)
                out += sum(map(len, reply))
                pieces = True
            else:
                replies.append(reply)
                out += len(reply)
        room = self.high_water - transport.get_write_buffer_size()
        end = len(view)
        execute = self.store.execute
        try:
            while pos < end:
                commands: list[tuple[Sequence[Arg], int]] = []
                if parse_many(view, pos, commands) == pos:
                    parsed = parse_command(view, pos)  # the rare forms
                    if parsed is None:
                        break
                    commands.append(parsed)
                for args, pos in commands:
                    if not args:
                        continue
                    reply = execute(args)
                    if not isinstance(reply, tuple):
                        replies.append(reply)
                        out += len(reply)
                    else:
                        replies.extend(reply)
                        out += sum(map(len, reply))
                        pieces = True
                    if out > room:
                        # Past the high-water mark: write, and go on only if
                        # the transport took it without pausing us.
                        self.write(replies, pieces)
                        replies = []
                        pieces = False
                        out = 0
                        if self.writing_paused:
                            return pos
                        if transport.is_closing():
                            return -1
                        room = self.high_water - transport.get_write_buffer_size()
        except ProtocolError as exc:
            replies.append(b"-ERR Protocol error: %s\r\n" % str(exc).encode())
            pos = -1
        if replies:
            # One write per read, whatever the pipeline depth.
            self.write(replies, pieces)
        if pos < 0:
            self.reset()
            transport.close()
        return pos

    def write(self, replies: list[bytes], pieces: bool) -> None:
        if pieces:
            self.transport.writelines(replies)  # big values: not joined
        elif len(replies) == 1:
            self.transport.write(replies[0])
        else:
            self.transport.write(b"".join(replies))

    def cut(self, view: memoryview, pos: int) -> int:
        """The command at ``pos`` is cut by the end of ``view``: parse what
        there is of it, and keep or gather the rest (-1: the next reads
        complete it; parse_args() says why it may not be -1)."""
        if view[pos] != 0x2A:  # not "*": an inline command
            self.cut_inline(view, pos)
            return -1
        m = ARRAY(view, pos)
        if m is None:
            self.keep_buffer(pos)  # its header is cut (parse_rare() checked)
            return -1
        self.args = []
        self.nargs = int(m[1])  # 1 to MAX_ARGS: parse_command() checked
        self.held = 0
        return self.parse_args(view, m.end())

    def parse_args(self, view: memoryview, pos: int) -> int:
        """Parse on the arguments of the unfinished array command from
        ``pos``; once they are all there, execute it (or defer it) and
        return where it ends. If the view ends first, return -1, having
        kept the argument it ends in (from its header) or asked to gather
        it; the arguments before it are copied into ``args``."""
        args = self.args
        assert args is not None
        nargs = self.nargs
        end = len(view)
        had = len(args)
        while len(args) < nargs:
            if pos >= end:
                # Between two arguments: nothing to keep.
                return self.unfinished(len(args) - had)
            m = BULK(view, pos)
            if m is None:
                if view[pos] == 0x24 and CUT_HEADER(view, pos):  # "$"
                    self.keep_buffer(pos)
                    return self.unfinished(len(args) - had)
                raise ProtocolError("expected '$' and a length")
            size = int(m[1])
            if size > MAX_BULK:
                raise ProtocolError("bulk string too long")
            held = self.held + size + ARG_OVERHEAD
            if held > self.max_held:
                self.frame_too_large(held)
                return -1
            start = m.end()
            stop = start + size + 2
            if stop > end:
                if stop - pos <= self.buffer_size:
                    # It fits a receive buffer from its header: kept (a few
                    # bytes move to a buffer of their size), the next reads
                    # complete it in place.
                    self.keep_buffer(pos)
                else:
                    self.gathering = size
                    self.gather(size + 2, start)
                    if size + 2 <= self.max_held:  # else refused, closing
                        self.enter(size + 2)
                return self.unfinished(len(args) - had)
            if view[stop - 2] != 13 or view[stop - 1] != 10:
                raise ProtocolError("bulk string not followed by CRLF")
            args.append(view[start : stop - 2].tobytes())
            self.held = held
            pos = stop
        self.args = None
        self.complete(args)
        return pos

    def unfinished(self, parsed: int) -> int:
        """A read ended in the command after ``parsed`` more of its
        arguments: if they are many, the connection reads no more in this
        loop iteration (the next read would be as much work again), the
        other connections served first. Returns -1, as parse_args() does."""
        if parsed >= YIELD_ARGS and not self.yielding:
            self.yielding = True
            self.pause_reading()
            asyncio.get_running_loop().call_soon(self.yielded)
        return -1

    def yielded(self) -> None:
        """The loop iteration after a read of many arguments: read on from
        the next one, so that the loop polls the other connections once
        without this one (uvloop runs callbacks before it polls)."""
        asyncio.get_running_loop().call_soon(self.read_on)

    def read_on(self) -> None:
        self.yielding = False
        self.read_again()

    def read_again(self) -> None:
        """Resume reading, unless it waits for something else: the peer to
        read its replies, or the commands deferred, or the gate (each
        resumes it when done)."""
        if not (
            self.writing_paused
            or self.deferred
            or self.queued
            or self.transport.is_closing()
        ):
            self.resume_reading()

    def enter(self, nbytes: int) -> None:
        """A frame of ``nbytes`` is being gathered: through the gate, or
        the connection waits for it, reading paused (its frame holds the
        one buffer it began in)."""
        gate = self.gate
        if gate is None:
            return
        self.gated = True
        if not gate.admit(self, nbytes):
            self.queued = True
            self.pause_reading()

    def admitted(self) -> None:
        """The gate lets the waiting frame in: read on."""
        self.queued = False
        self.read_again()

    def leave(self) -> None:
        """The frame is over (received, or lost): out of the gate."""
        if self.gated:
            assert self.gate is not None
            self.gated = False
            self.queued = False
            self.gate.release(self)

    def complete(self, args: list[Arg]) -> None:
        """An array command completed across reads: executed, or deferred
        behind what waits. A DEL of more than ``DEL_SLICE`` keys runs a
        slice per loop iteration, the connection's next commands deferred
        behind it (and its reading paused: at most a read waits)."""
        if len(args) > DEL_SLICE + 1 and raw(args[0]).upper() == b"DEL":
            self.deferred.append(Deletion(self.store.data, args))
            self.pause_reading()
            self.drain_soon()
        else:
            self.finish(partial(self.store.execute, args))

    def frame_received(self, chain: BufferChain) -> None:
        """The argument being gathered, whole: a SET's value is stored as
        its pieces; any other argument is copied, and the command goes on."""
        size, self.gathering = self.gathering, -1
        self.leave()
        args = self.args
        if args is None or self.transport.is_closing():
            chain.free()
            return
        try:
            views = chain.views()
            if not ends_in_crlf(views):
                raise ProtocolError("bulk string not followed by CRLF")
            name = raw(args[0]).upper()
            if len(args) == 2 and self.nargs == 3 and name == b"SET":
                pieces = (b"$%d\r\n" % size, *[v.tobytes() for v in views])
                self.args = None
                self.finish(partial(self.store.set_pieces, raw(args[1]), pieces))
                return
            # One copy: a slice of a bytes' memoryview (read-only, so it
            # hashes and compares as the bytes do, a key of a DEL too).
            args.append(memoryview(chain.tobytes())[:-2])
        except ProtocolError as exc:
            self.fail(exc)
            return
        finally:
            chain.free()  # copied: the buffers go back now
        self.held += size + ARG_OVERHEAD
        if len(args) == self.nargs:
            self.args = None
            self.complete(args)

    def cut_inline(self, view: memoryview, pos: int) -> None:
        """An inline command without its LF yet, from ``pos`` to the end."""
        nbytes = len(view) - pos
        if nbytes >= MAX_INLINE:
            raise ProtocolError("too big inline request")
        if nbytes < self.buffer_size:
            self.keep_buffer(pos)
            self.inline = nbytes  # none of them is a LF
        else:  # it fills a buffer: copied, up to MAX_INLINE
            self.line = bytearray(view[pos:])

    def resume_inline(self, view: memoryview) -> int:
        """Look for the LF of the unfinished inline command; return where
        the command ends (executed or deferred), or -1 if it goes on."""
        line = self.line
        if line is None:  # kept: it starts the view
            m = LF(view, self.inline, MAX_INLINE)
            self.inline = 0
            if m is None:
                self.cut_inline(view, 0)
                return -1
            args = inline_args(view[: m.start()].tobytes())
        else:
            m = LF(view, 0, MAX_INLINE - len(line))
            if m is None:
                if len(line) + len(view) >= MAX_INLINE:
                    raise ProtocolError("too big inline request")
                line += view
                return -1
            line += view[: m.start()]
            self.line = None
            args = inline_args(bytes(line))
        if args:
            self.finish(partial(self.store.execute, args))
        return m.end()

    def finish(self, command: Callable[[], Reply]) -> None:
        """Execute a command completed across reads, and write its reply
        (or leave it to view_received(), which writes it with the read's
        next ones); or defer it behind the commands that wait."""
        if self.deferred or self.writing_paused:
            self.deferred.append(command)
        elif self.first is not None:
            self.first.append(command())
        else:
            self.send(command())

    def send(self, reply: Reply) -> None:
        if isinstance(reply, tuple):
            self.transport.writelines(reply)
        else:
            self.transport.write(reply)

    def frame_too_large(self, nbytes: int) -> None:
        """An unfinished command would hold more than ``max_held``: say so,
        then close (the protocol logs it)."""
        self.reset()
        if not self.transport.is_closing():
            self.transport.write(
                b"-ERR Protocol error: a command of %d bytes or more is over "
                b"the quota of %d bytes\r\n" % (nbytes, self.max_held)
            )
        super().frame_too_large(nbytes)

    def fail(self, exc: ProtocolError) -> None:
        self.reset()
        self.transport.write(b"-ERR Protocol error: %s\r\n" % str(exc).encode())
        self.transport.close()

    def reset(self) -> None:
        """Forget the unfinished command and what waits."""
        self.args = None
        self.gathering = -1
        self.inline = 0
        self.line = None
        self.deferred.clear()
        if self.draining is not None:
            self.draining.cancel()
            self.draining = None

    # -- writing: a client that does not read its replies -------------------

    # It stops us reading from it. The protocol's pause_reading(), not the
    # transport's: it composes with the pause while waiting for a buffer of
    # a dry pool.
    def pause_writing(self) -> None:
        self.writing_paused = True
        self.pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.drain()

    def drain(self) -> None:
        """Execute what waits, in order, until writing pauses again or a
        DEL in slices has run one (the next, an iteration later); once
        nothing waits, read on (or close, if the peer has)."""
        deferred = self.deferred
        transport = self.transport
        while deferred and not self.writing_paused:
            if transport.is_closing():
                deferred.clear()
                return
            item = deferred[0]
            if isinstance(item, memoryview):
                deferred.popleft()
                pos = self.run(item, 0)  # complete commands: never cut
                if 0 <= pos < len(item):
                    deferred.appendleft(item[pos:])
            elif isinstance(item, Deletion):
                reply = item.step()
                if reply is None:
                    self.drain_soon()
                    return
                deferred.popleft()
                self.send(reply)
            else:
                deferred.popleft()
                self.send(item())
        if deferred or self.writing_paused or transport.is_closing():
            return
        if self.eof:
            transport.close()
        else:
            self.read_again()

    def drain_soon(self) -> None:
        """drain() in the next loop iteration (once, however often asked)."""
        if self.draining is None:
            loop = asyncio.get_running_loop()
            self.draining = loop.call_soon(self.drain_now)

    def drain_now(self) -> None:
        self.draining = None
        self.drain()

    def eof_received(self) -> bool | None:
        super().eof_received()
        if self.deferred and not self.transport.is_closing():
            self.eof = True
            return True  # open until what waits is answered
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)  # gives the buffers back
        self.reset()
        self.leave()
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


class Plan:
    """The arena the options ask for: its classes, reserves and budget.

    The classes, four per doubling from 256 bytes, go up to the receive
    buffer's (``--buffer-size``, rounded up to a class): a frame larger
    than a buffer is gathered in receive buffers, and kept bytes are
    smaller. The receive class reserves
    ``--min-nr`` buffers, every other class one (a whole slab each, at
    most ``ARENA_SLAB_BYTES``: ``floor`` is what they pin together).
    """

    def __init__(self, args: argparse.Namespace) -> None:
        largest = max(256, 1 << (args.buffer_size - 1).bit_length())
        self.classes = default_classes(256, largest)
        self.buffer_size = next(c for c in self.classes if c >= args.buffer_size)
        self.reserve = {self.buffer_size: args.min_nr}
        self.floor = 0
        for size in self.classes:
            per_slab = max(1, ARENA_SLAB_BYTES // size)
            slabs = -(-self.reserve.get(size, 1) // per_slab)
            self.floor += slabs * per_slab * size
        if args.max_nr is not None:
            self.max_bytes = self.floor + args.max_nr * self.buffer_size
        else:
            self.max_bytes = args.max_bytes
        # What one connection may hold for an unfinished command.
        self.max_held = min(MAX_HELD, self.max_bytes // 2)

    def arena(self) -> BufferArena:
        return buffer_arena(
            self.max_bytes, classes=self.classes, min_nr=self.reserve, name="resp"
        )


async def serve(args: argparse.Namespace, plan: Plan) -> None:
    loop = asyncio.get_running_loop()
    arena = plan.arena()
    store = Store()
    gate = Gate(plan.max_bytes // GATE_SHARE)
    conns: set[RespProtocol] = set()
    try:
        try:  # the port may be taken, the host not ours...
            server = await loop.create_server(
                lambda: RespProtocol(
                    arena,
                    store,
                    conns,
                    buffer_size=plan.buffer_size,
                    max_held=plan.max_held,
                    gate=gate,
                ),
                args.host,
                args.port,
                backlog=BACKLOG,
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
        stats = arena.stats()
        print(
            f"stats: {stats.total} bytes_in_use={stats.bytes_in_use} "
            f"high_water_bytes={stats.high_water_bytes} max_bytes={stats.max_bytes}",
            flush=True,
        )
    finally:
        arena.close()


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
        "--buffer-size",
        type=count,
        default=65536,
        help="bytes per receive buffer (rounded up to a size class, 256 at least)",
    )
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument(
        "--max-bytes",
        type=count,
        default=256 * MIB,
        help="the arena's budget: every buffer the connections hold (receive "
        "buffers, unfinished commands); one connection may hold half of it, "
        f"{MAX_HELD // MIB} MiB at most, for an unfinished command",
    )
    budget.add_argument(
        "--max-nr",
        type=count,
        help="the budget as this many receive buffers beyond the reserves, "
        "instead of --max-bytes",
    )
    parser.add_argument(
        "--min-nr", type=count, default=16, help="receive buffers kept in reserve"
    )
    args = parser.parse_args()
    if args.max_nr is not None and args.min_nr > args.max_nr:
        parser.error(f"--min-nr ({args.min_nr}) must be <= --max-nr ({args.max_nr})")
    plan = Plan(args)
    if plan.max_bytes < plan.floor:
        parser.error(
            f"--max-bytes ({plan.max_bytes}) must hold the arena's reserves: "
            f"{plan.floor} bytes or more with --buffer-size {args.buffer_size} "
            f"and --min-nr {args.min_nr}"
        )
    try:
        if args.uvloop:
            import uvloop

            uvloop.run(serve(args, plan))
        else:
            asyncio.run(serve(args, plan))
    except CannotListen as exc:
        parser.error(str(exc))


if __name__ == "__main__":
    main()
