"""The hostile scenarios of the server benchmark: the attack clients, and a
well-behaved client measuring the service left to it.

Each scenario runs against a server started afresh for it (the pooled
example on asyncio and uvloop, the streams baseline, redis-server; see
``benchmarks/servers.py``, which starts them and prints the table):

1. **slowloris**: N connections each send one byte every 0.5 s of a command
   that never ends (an ECHO's header, then its value), for D seconds, while
   ``redis-benchmark -c 10 -t ping_mbulk`` measures PINGs early in the
   attack, at its end, and once the attackers are gone; each as a ratio of
   the same client's throughput before the attack (the median of three
   runs).
2. **idle one-byte**: 1,100 connections each send ``*`` and then nothing;
   the same measurement.
3. **big unfinished values**: 4 connections each send a SET declaring a
   200 MiB value, then all of it but a few bytes, and never finish; a PING
   client measures its worst latency meanwhile, and a fresh one after.
4. **pipelined big GETs, never read**: a 128 KiB value is SET, then two
   connections (4 KiB receive buffers) each send 64 KiB of pipelined
   ``GET key`` and never read: each would be answered by 380 MiB. Peak RSS
   after a few seconds, and whether a PING is still answered.
5. **SET bursts of big values**: ``redis-benchmark -t set -c 50 -n 2000``
   with 64 KiB values (each command a little larger than that, as users
   send them); and 2,000 connections that each send one SET of a 1 MiB
   value, all at the same moment (2 GiB at once, on one key: the store
   holds one value), while a PING client measures its worst latency.
6. **a 400,000-argument DEL** (2.8 MB) sent at once, while a PING client
   measures its worst latency; the server's CPU time for the DEL from
   ``/proc/PID/stat``.

Every connect, read and run is bounded in time; a server that does not keep
up is reported ("timed out", "no reply"), never waited for. Peak RSS is the
highest of ``VmHWM`` and of ``VmRSS`` sampled every 50 ms (see ``Sampler``).
``--quick`` runs the same scenarios smaller (``QUICK``).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import os
import re
import resource
import socket
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
KIB = 1024
MIB = 1024 * 1024
CONNECT_TIMEOUT = 5.0
CONNECT_CONCURRENCY = 64  # the servers' listen backlog is 100
#: A PING that takes longer than this is "no reply".
PING_TIMEOUT = 5.0
#: An upload whose drain() makes no progress for this long: the server
#: stopped reading from it.
STALL = 5.0
SAMPLE_INTERVAL = 0.05
PONG = b"+PONG\r\n"
PING = b"*1\r\n$4\r\nPING\r\n"


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is: ``FULL`` and ``QUICK``."""

    slowloris_conns: int
    slowloris_seconds: float
    idle_conns: int
    big_conns: int
    big_value: int
    get_value: int
    get_conns: int
    get_hold: float  # seconds the GETs are left unread
    burst_n: dict[int, int]  # requests per value size
    burst_clients: int
    at_once_conns: int  # connections of the SETs at once
    at_once_value: int  # bytes of each one's value
    del_args: int
    del_timeout: float
    ping_n: int  # requests of each well-behaved redis-benchmark run
    ping_clients: int


FULL = Sizes(
    slowloris_conns=2000,
    slowloris_seconds=60.0,
    idle_conns=1100,
    big_conns=4,
    big_value=200 * MIB,
    get_value=128 * KIB,
    get_conns=2,
    get_hold=5.0,
    burst_n={64 * KIB: 2000},
    burst_clients=50,
    at_once_conns=2000,
    at_once_value=MIB,
    del_args=400_000,
    del_timeout=60.0,
    ping_n=100_000,
    ping_clients=10,
)
QUICK = Sizes(
    slowloris_conns=200,
    slowloris_seconds=5.0,
    idle_conns=200,
    big_conns=4,
    big_value=20 * MIB,
    get_value=128 * KIB,
    get_conns=2,
    get_hold=2.0,
    burst_n={64 * KIB: 2000},
    burst_clients=50,
    at_once_conns=500,
    at_once_value=MIB,
    del_args=400_000,
    del_timeout=30.0,
    ping_n=40_000,
    ping_clients=10,
)


# -- the server process -------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in bytes (empty once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {
        m[1]: int(m[2]) * 1024
        for m in re.finditer(r"^(VmRSS|VmHWM):\s+(\d+) kB", text, re.M)
    }


def cpu_seconds(pid: int) -> float | None:
    """The user + system CPU time of ``pid`` (all its threads), in seconds."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name, in brackets, may hold spaces: split after it.
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


class Sampler:
    """Samples a process's VmRSS (and VmHWM) every 50 ms in a thread, so
    that its peak is known even if it dies or is killed."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self.last = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.sample()
        self._thread.start()

    def sample(self) -> int:
        status = proc_status(self.pid)
        if status:
            self.last = status.get("VmRSS", 0)
            self.peak = max(self.peak, self.last, status.get("VmHWM", 0))
        return self.last

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL):
            self.sample()

    def stop(self) -> int | None:
        """Stop sampling; the peak, in bytes (None if never read)."""
        self.sample()
        self._stop.set()
        self._thread.join()
        return self.peak or None


@dataclass
class Target:
    """The server under attack: its pid and port, and whether it lives."""

    pid: int
    port: int
    sampler: Sampler
    alive: Callable[[], bool]


@dataclass
class Outcome:
    """What a scenario measured on one server. The scenario fills it as it
    goes, so that what it had measured survives a timeout."""

    client: str = ""  # the well-behaved client's figures, as shown
    notes: list[str] = field(default_factory=list)  # what happened
    figures: dict[str, Any] = field(default_factory=dict)  # JSON-able

    def note(self, text: str) -> None:
        self.notes.append(text)


# -- clients ------------------------------------------------------------------

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def connect(port: int) -> Conn:
    """A stream connection to the server, within ``CONNECT_TIMEOUT``."""
    return await asyncio.wait_for(asyncio.open_connection(HOST, port), CONNECT_TIMEOUT)


async def raw_connect(port: int, rcvbuf: int | None = None) -> socket.socket:
    """A non-blocking socket connected to the server, its receive buffer
    ``rcvbuf`` bytes (set before connecting) if given: for a client that
    never reads, or one that sends from a buffer of its own, uncopied."""
    sock = socket.socket()
    try:
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.sock_connect(sock, (HOST, port)), CONNECT_TIMEOUT)
    except BaseException:
        sock.close()
        raise
    return sock


async def server_closed(reader: asyncio.StreamReader) -> tuple[bool, bytes]:
    """Whether the server has closed this connection, and the start of what
    it sent on it (an error, say); the rest is read and dropped."""
    first = b""
    try:
        while data := await asyncio.wait_for(reader.read(65536), 0.05):
            first = first or data[:80]
    except asyncio.TimeoutError:
        return False, first
    except OSError:
        pass
    return True, first


class Attacker(asyncio.Protocol):
    """One connection of a crowd: writes what it is told, drops what it
    gets, and knows when the server closed it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.first = b""  # the start of what the server sent, if anything

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if not self.first:
            self.first = data[:80]

    def eof_received(self) -> bool:
        self.closed = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def connect_many(
    port: int, n: int, deadline: float
) -> tuple[list[Attacker], int]:
    """Up to ``n`` connections, ``CONNECT_CONCURRENCY`` at a time, until
    ``deadline`` (monotonic); the connections and how many failed."""
    limit = asyncio.Semaphore(CONNECT_CONCURRENCY)
    loop = asyncio.get_running_loop()

    async def one() -> Attacker:
        async with limit:
            left = deadline - time.monotonic()
            if left <= 0:
                raise asyncio.TimeoutError
            _, attacker = await asyncio.wait_for(
                loop.create_connection(Attacker, HOST, port),
                min(left, CONNECT_TIMEOUT),
            )
            return attacker

    results = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
    conns = [r for r in results if isinstance(r, Attacker)]
    return conns, n - len(conns)


async def ping_once(port: int) -> float | None:
    """Seconds from a fresh connection's PING to its PONG; None if no PONG
    came within ``PING_TIMEOUT`` (connecting included)."""
    conn: Conn | None = None
    try:
        started = time.perf_counter()
        conn = await connect(port)
        reader, writer = conn
        sent = time.perf_counter()
        writer.write(PING)
        reply = await asyncio.wait_for(
            reader.readexactly(len(PONG)), PING_TIMEOUT - (sent - started)
        )
        return time.perf_counter() - sent if reply == PONG else None
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
        return None
    finally:
        if conn is not None:
            conn[1].transport.abort()


class Pinger:
    """A well-behaved client: one connection, a PING every 10 ms, each
    waiting for its PONG; ``worst()`` is its longest wait since ``mark()``,
    a PING still unanswered included."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self._worst = 0.0
        self._sent: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._conn: Conn | None = None
        self.error = ""

    async def start(self, port: int) -> None:
        self._conn = await connect(port)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        assert self._conn is not None
        reader, writer = self._conn
        try:
            while True:
                self._sent = time.perf_counter()
                writer.write(PING)
                reply = await reader.readexactly(len(PONG))
                latency = time.perf_counter() - self._sent
                self._sent = None
                if reply != PONG:
                    self.error = f"unexpected reply {reply!r}"
                    return
                self.latencies.append(latency)
                self._worst = max(self._worst, latency)
                await asyncio.sleep(0.01)
        except (OSError, asyncio.IncompleteReadError) as exc:
            self.error = f"PING connection lost: {type(exc).__name__}"

    def mark(self) -> None:
        self._worst = 0.0

    def worst(self) -> float:
        worst = self._worst
        if self._sent is not None:
            worst = max(worst, time.perf_counter() - self._sent)
        return worst

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._conn is not None:
            self._conn[1].transport.abort()


#: The PING client of ``PingerProcess``: "s T" as it sends a PING, "r T"
#: as its PONG comes (``time.monotonic()``, the same clock in every process
#: of the machine); it ends when its stdin closes, or the connection.
PINGER_CHILD = """
import os, socket, sys, threading, time
threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
try:
    sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5.0)
    while True:
        print("s", time.monotonic(), flush=True)
        sock.sendall(b"*1\\r\\n$4\\r\\nPING\\r\\n")
        reply = b""
        while len(reply) < 7:
            data = sock.recv(7 - len(reply))
            if not data:
                sys.exit(0)
            reply += data
        print("r", time.monotonic(), flush=True)
        time.sleep(0.01)
except OSError:
    sys.exit(0)
"""


class PingerProcess:
    """``Pinger``'s measure from a process of its own: for a scenario whose
    attacking client keeps its own loop busy (its sends on 2,000 sockets
    take a second of the client's time), so that what is measured is the
    server's delay, not the client's."""

    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._worst = 0.0
        self._sent: float | None = None  # the PING without its PONG yet
        self._mark = 0.0
        self.replies = 0
        self.error = ""

    async def start(self, port: int) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            PINGER_CHILD,
            HOST,
            str(port),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        self._task = asyncio.create_task(self._read())
        for _ in range(int(CONNECT_TIMEOUT / 0.01)):
            if self.replies:
                return
            await asyncio.sleep(0.01)
        self.error = "the PING process got no PONG"

    async def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        while line := await self._proc.stdout.readline():
            kind, when = line.split()
            at = float(when)
            if kind == b"s":
                self._sent = at
            elif self._sent is not None:
                if self._sent >= self._mark:
                    self._worst = max(self._worst, at - self._sent)
                self._sent = None
                self.replies += 1
        self.error = self.error or "the PING connection ended"

    def mark(self) -> None:
        self._mark = time.monotonic()
        self._worst = 0.0

    async def worst(self) -> float:
        """The longest wait since ``mark()``, a PING unanswered included,
        once the lines the child wrote meanwhile are read."""
        await asyncio.sleep(0.05)
        worst = self._worst
        if self._sent is not None:
            worst = max(worst, time.monotonic() - max(self._sent, self._mark))
        return worst

    async def stop(self) -> None:
        proc = self._proc
        if proc is not None and proc.returncode is None:
            assert proc.stdin is not None
            proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 2.0)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def redis_benchmark(
    port: int, args: list[str], timeout: float
) -> tuple[float | None, str]:
    """``redis-benchmark ARGS -q --csv``'s requests/s (of its last test),
    and why there is none ("timed out", "failed ...")."""
    argv = ["redis-benchmark", "-h", HOST, "-p", str(port), *args, "-q", "--csv"]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        return None, f"timed out after {timeout:.0f} s"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    rps = None
    for fields in csv.reader(io.StringIO(out.decode(errors="replace"))):
        if len(fields) >= 2 and fields[0] != "test":
            with contextlib.suppress(ValueError):
                rps = float(fields[1])
    if proc.returncode != 0 or rps is None:
        return None, f"failed ({proc.returncode}): {err.decode()[-120:]!r}"
    return rps, ""


# -- formatting ---------------------------------------------------------------


def ms(seconds: float | None) -> str:
    if seconds is None:
        return "no reply"
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def mib(n: float) -> str:
    return f"{n / MIB:,.0f} MiB" if n >= 10 * MIB else f"{n / MIB:.1f} MiB"


def rate(x: float) -> str:
    return f"{x / 1e3:,.1f}k/s" if x >= 1e4 else f"{x:,.0f}/s"


# -- 1 and 2: many connections that never finish a command --------------------

#: The never-finished command of slowloris: an ECHO declaring 4,096 bytes,
#: sent a byte at a time (240 bytes in a minute: it never ends).
SLOW_COMMAND = b"*2\r\n$4\r\nECHO\r\n$4096\r\n" + b"x" * 4096
SLOW_INTERVAL = 0.5
#: The unloaded PING throughput is the median of this many runs.
BASELINE_RUNS = 3


def ping_args(sizes: Sizes) -> list[str]:
    return ["-t", "ping_mbulk", "-c", str(sizes.ping_clients), "-n", str(sizes.ping_n)]


#: A loaded PING run may take this many times the unloaded one; beyond,
#: it is killed, and its throughput is under 1/SLOWDOWN of the unloaded.
SLOWDOWN = 5


def versus(rps: float | None, unloaded: float, why: str) -> str:
    """``rps`` as a ratio of ``unloaded`` ("0.93x"), or why there is none
    ("< 0.20x (timed out after 21 s)")."""
    if rps is not None:
        return f"{rps / unloaded:.2f}x"
    if why.startswith("timed out"):
        return f"< {1 / SLOWDOWN:.2f}x ({why})"
    return why


def bench_timeout(unloaded: float, sizes: Sizes) -> float:
    """How long a loaded PING run may take: ``SLOWDOWN`` times the unloaded
    one, at least 10 s."""
    return max(10.0, SLOWDOWN * sizes.ping_n / unloaded)


async def crowd(
    target: Target,
    sizes: Sizes,
    out: Outcome,
    conns_wanted: int,
    drip: bool,
    seconds: float,
) -> None:
    """Open ``conns_wanted`` connections; each sends the first byte of
    ``SLOW_COMMAND``, and, with ``drip``, one more every 0.5 s for
    ``seconds``. The PING throughput is measured early in the attack, at its
    end and once the attackers are gone, each as a ratio of the throughput
    before the attack (measured after a warm-up run)."""
    # A first, shorter run warms the server up (and is not counted).
    warm = ping_args(sizes)
    warm[-1] = str(max(1000, sizes.ping_n // 4))
    await redis_benchmark(target.port, warm, 30.0)
    # The machine's noise is large at this scale: the median of three.
    runs = []
    for _ in range(BASELINE_RUNS):
        rps, why = await redis_benchmark(target.port, ping_args(sizes), 30.0)
        if rps is None:
            out.client = f"unloaded PING run {why}"
            return
        runs.append(rps)
    unloaded = statistics.median(runs)
    out.figures["unloaded_rps"] = unloaded
    out.figures["unloaded_runs"] = runs
    conns: list[Attacker] = []
    stop = asyncio.Event()
    try:
        started = time.monotonic()
        conns, failed = await connect_many(target.port, conns_wanted, started + 30.0)
        out.figures["connected"] = len(conns)
        out.figures["connect_seconds"] = time.monotonic() - started
        if failed:
            out.note(f"{failed:,} of {conns_wanted:,} connections failed")
        for attacker in conns:
            attacker.write(SLOW_COMMAND[:1])

        async def dripper() -> None:
            i = 1
            while not stop.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), SLOW_INTERVAL)
                    return
                byte = SLOW_COMMAND[i : i + 1]
                for attacker in conns:
                    attacker.write(byte)
                i += 1

        drip_task = asyncio.create_task(dripper()) if drip else None
        attack_started = time.monotonic()
        await asyncio.sleep(1.0)
        timeout = bench_timeout(unloaded, sizes)
        ratios: list[str] = []
        for when in ("early", "late"):
            if when == "late":
                # The late run ends about when the attack does.
                took = sizes.ping_n / unloaded
                rest = seconds - (time.monotonic() - attack_started) - 1.5 * took
                await asyncio.sleep(max(0.0, rest))
            rps, why = await redis_benchmark(target.port, ping_args(sizes), timeout)
            out.figures[f"{when}_rps"] = rps
            out.figures[f"{when}_ratio"] = None if rps is None else rps / unloaded
            ratios.append(f"{when} {versus(rps, unloaded, why)}")
            out.client = f"{', '.join(ratios)} of {rate(unloaded)} PINGs"
            out.figures["dropped_by_server"] = sum(a.closed for a in conns)
        rest = seconds - (time.monotonic() - attack_started)
        await asyncio.sleep(max(0.0, rest))
        out.figures["attack_seconds"] = time.monotonic() - attack_started
        gone = sum(a.closed for a in conns)
        out.figures["dropped_by_server"] = gone
        said = {a.first.split(b"\r\n")[0] for a in conns if a.first}
        out.note(
            f"{len(conns):,} connections, {gone:,} closed by the server "
            f"within {out.figures['attack_seconds']:.0f} s"
            + "".join(f", replied {r.decode(errors='replace')!r}" for r in sorted(said))
        )
        stop.set()
        if drip_task is not None:
            await drip_task
        for attacker in conns:
            attacker.abort()
        # Once the attackers are gone, the server should serve as before.
        await asyncio.sleep(0.5)
        timeout = bench_timeout(unloaded, sizes)
        rps, why = await redis_benchmark(target.port, ping_args(sizes), timeout)
        out.figures["after_rps"] = rps
        out.figures["after_ratio"] = None if rps is None else rps / unloaded
        ratios.append(f"after {versus(rps, unloaded, why)}")
        out.client = f"{', '.join(ratios)} of {rate(unloaded)} PINGs"
    finally:
        stop.set()
        for attacker in conns:
            attacker.abort()


async def slowloris(target: Target, sizes: Sizes, out: Outcome) -> None:
    await crowd(
        target,
        sizes,
        out,
        sizes.slowloris_conns,
        drip=True,
        seconds=sizes.slowloris_seconds,
    )


async def idle_one_byte(target: Target, sizes: Sizes, out: Outcome) -> None:
    # The attack lasts what the two loaded runs take, a few seconds.
    await crowd(target, sizes, out, sizes.idle_conns, drip=False, seconds=0.0)


# -- 3: big values that never end ---------------------------------------------


async def big_values(target: Target, sizes: Sizes, out: Outcome) -> None:
    """``big_conns`` connections each declare a SET of ``big_value`` bytes
    and send all of it but the last 3 bytes (and its CRLF)."""
    size = sizes.big_value
    header = b"*3\r\n$3\r\nSET\r\n$7\r\nbig:%03d\r\n$%d\r\n"
    chunk = memoryview(b"v" * MIB)
    sent = [0] * sizes.big_conns
    ends: list[str] = []
    pinger = Pinger()
    conns: list[Conn] = []
    try:
        await pinger.start(target.port)
        await asyncio.sleep(0.2)
        pinger.mark()
        conns = [await connect(target.port) for _ in range(sizes.big_conns)]

        async def upload(i: int, conn: Conn) -> None:
            _, writer = conn
            try:
                writer.write(header % (i, size))
                left = size - 3
                while left > 0:
                    piece = chunk[: min(left, len(chunk))]
                    writer.write(piece)
                    await asyncio.wait_for(writer.drain(), STALL)
                    left -= len(piece)
                    sent[i] += len(piece)
                ends.append("sent")
            except asyncio.TimeoutError:
                ends.append(f"stalled at {mib(sent[i])}")
            except OSError as exc:
                ends.append(f"{type(exc).__name__} at {mib(sent[i])}")

        started = time.monotonic()
        await asyncio.gather(*(upload(i, c) for i, c in enumerate(conns)))
        out.figures["upload_seconds"] = time.monotonic() - started
        out.figures["sent_bytes"] = sent
        await asyncio.sleep(0.5)
        during = pinger.worst()
        after = [await ping_once(target.port) for _ in range(3)]
        worst_after = None if None in after else max(a for a in after if a is not None)
        out.figures["ping_worst_during"] = during
        out.figures["ping_after"] = worst_after
        out.client = f"PING worst {ms(during)} during, {ms(worst_after)} after"
        closed = 0
        replies = set()
        for reader, _ in conns:
            gone, first = await server_closed(reader)
            closed += gone
            if first:
                replies.add(first.split(b"\r\n")[0].decode(errors="replace"))
        if pinger.error:
            out.note(pinger.error)
        out.note(
            f"{len(conns)} x {mib(size)} declared: "
            + ", ".join(sorted(set(ends)))
            + f" ({mib(sum(sent))} in {out.figures['upload_seconds']:.1f} s); "
            f"{closed} closed by the server"
            + "".join(f", replied {r!r}" for r in sorted(replies))
        )
    finally:
        await pinger.stop()
        for _, writer in conns:
            writer.transport.abort()


# -- 4: replies that are never read -------------------------------------------


async def unread_gets(target: Target, sizes: Sizes, out: Outcome) -> None:
    """SET a ``get_value`` value, then ``get_conns`` connections with 4 KiB
    receive buffers each send 64 KiB of pipelined GETs of it, read nothing,
    and are left so for ``get_hold`` seconds."""
    value = sizes.get_value
    conn: Conn | None = None
    attackers: list[socket.socket] = []
    loop = asyncio.get_running_loop()
    try:
        conn = await connect(target.port)
        reader, writer = conn
        writer.write(
            b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$%d\r\n%s\r\n" % (value, b"v" * value)
        )
        reply = await asyncio.wait_for(reader.readexactly(5), PING_TIMEOUT)
        if reply != b"+OK\r\n":
            out.note(f"SET answered {reply!r}")
            return
        get = b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n"
        count = (64 * KIB) // len(get)
        pipeline = get * count
        reply_bytes = count * (value + len(b"$%d\r\n\r\n" % value))
        out.figures["gets_per_connection"] = count
        out.figures["reply_bytes_per_connection"] = reply_bytes
        for _ in range(sizes.get_conns):
            attackers.append(await raw_connect(target.port, 4 * KIB))
        before = target.sampler.sample()
        sent = "sent"
        try:
            for sock in attackers:
                await asyncio.wait_for(loop.sock_sendall(sock, pipeline), STALL)
        except asyncio.TimeoutError:
            sent = "not all sent: the server stopped reading"
        await asyncio.sleep(sizes.get_hold)
        ping = await ping_once(target.port)
        out.figures["ping_after"] = ping
        out.figures["rss_before"] = before
        out.figures["rss_at_end"] = target.sampler.sample()
        out.client = f"PING {ms(ping)} after {sizes.get_hold:.0f} s"
        out.note(
            f"{len(attackers)} x {count:,} GETs {sent}, unread: "
            f"{mib(reply_bytes)} of replies each if all were built; "
            f"RSS {mib(out.figures['rss_at_end'])} at the end"
        )
    finally:
        if conn is not None:
            conn[1].transport.abort()
        for sock in attackers:
            sock.close()


# -- 5: bursts of big SETs ----------------------------------------------------


def set_burst(value: int) -> Callable[[Target, Sizes, Outcome], Awaitable[None]]:
    async def scenario(target: Target, sizes: Sizes, out: Outcome) -> None:
        n = sizes.burst_n[value]
        args = ["-t", "set", "-d", str(value), "-n", str(n)]
        args += ["-c", str(sizes.burst_clients)]
        started = time.monotonic()
        # At 20 MB/s, a slow server still finishes; slower is "timed out".
        timeout = max(20.0, n * value / 20e6)
        rps, why = await redis_benchmark(target.port, args, timeout)
        out.figures["rps"] = rps
        out.figures["seconds"] = time.monotonic() - started
        out.client = why or f"SET {rate(rps or 0)}"
        out.note(f"{n:,} SETs by {sizes.burst_clients} clients")

    return scenario


async def set_at_once(target: Target, sizes: Sizes, out: Outcome) -> None:
    """``at_once_conns`` connections, opened first, then each sends one SET
    of an ``at_once_value``-byte value on the same key, all at once, and
    waits for its reply; a PING client, a process of its own, measures its
    worst latency meanwhile. The command is one bytes object, sent on every
    socket without a copy (``sock_sendall()``), so the client holds 1 MiB,
    not 2 GiB."""
    value = sizes.at_once_value
    wanted = sizes.at_once_conns
    command = b"*3\r\n$3\r\nSET\r\n$9\r\nburst:key\r\n$%d\r\n%s\r\n" % (
        value,
        b"x" * value,
    )
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft < wanted + 100:
        out.note(f"open files limited to {soft:,}: fewer connections")
        wanted = max(0, soft - 100)
    loop = asyncio.get_running_loop()
    limit = asyncio.Semaphore(CONNECT_CONCURRENCY)
    socks: list[socket.socket] = []
    pinger = PingerProcess()
    ends: Counter[str] = Counter()
    answered: list[float] = []

    async def one() -> socket.socket:
        async with limit:
            return await raw_connect(target.port)

    async def upload(sock: socket.socket, started: float) -> None:
        try:
            await loop.sock_sendall(sock, command)
            reply = b""
            while b"\r\n" not in reply:
                data = await loop.sock_recv(sock, 256)
                if not data:
                    ends["closed by the server"] += 1
                    return
                reply += data
            if reply.startswith(b"+OK\r\n"):
                answered.append(time.perf_counter() - started)
                ends["+OK"] += 1
            else:
                line = reply.split(b"\r\n")[0][:60].decode(errors="replace")
                ends[f"replied {line!r}"] += 1
        except OSError as exc:
            ends[type(exc).__name__] += 1

    try:
        await pinger.start(target.port)
        results = await asyncio.gather(
            *(one() for _ in range(wanted)), return_exceptions=True
        )
        socks = [r for r in results if isinstance(r, socket.socket)]
        if len(socks) < wanted:
            out.note(f"{wanted - len(socks):,} of {wanted:,} connections failed")
        out.figures["connected"] = len(socks)
        out.figures["rss_connected"] = target.sampler.sample()
        await asyncio.sleep(0.2)
        pinger.mark()
        started = time.perf_counter()
        # At 20 MB/s, a slow server still finishes; slower is "timed out".
        timeout = max(20.0, len(socks) * len(command) / 20e6)
        try:
            await asyncio.wait_for(
                asyncio.gather(*(upload(sock, started) for sock in socks)), timeout
            )
        except asyncio.TimeoutError:
            ends["no reply"] = len(socks) - sum(ends.values())
            out.note(f"timed out after {timeout:.0f} s")
        seconds = time.perf_counter() - started
        worst = await pinger.worst()
        out.figures.update(
            seconds=seconds,
            ends=dict(ends),
            ping_worst=worst,
            first_ok=min(answered, default=None),
            median_ok=statistics.median(answered) if answered else None,
            last_ok=max(answered, default=None),
        )
        out.client = f"PING worst {ms(worst)}"
        out.note(
            f"{len(socks):,} x SET of {mib(value)} at once: "
            + ", ".join(f"{n:,} {end}" for end, n in ends.most_common())
            + f" in {seconds:.1f} s ({len(socks) * len(command) / seconds / 1e6:,.0f}"
            " MB/s)"
        )
        if pinger.error:
            out.note(pinger.error)
    finally:
        await pinger.stop()
        for sock in socks:
            sock.close()


# -- 6: a DEL of many keys ----------------------------------------------------


def del_command(n: int) -> bytes:
    """A DEL of ``n`` one-byte keys: 7 bytes an argument."""
    return b"*%d\r\n$3\r\nDEL\r\n" % (n + 1) + b"$1\r\nx\r\n" * n


async def big_del(target: Target, sizes: Sizes, out: Outcome) -> None:
    command = del_command(sizes.del_args)
    out.figures["command_bytes"] = len(command)
    pinger = Pinger()
    conn: Conn | None = None
    try:
        await pinger.start(target.port)
        conn = await connect(target.port)
        reader, writer = conn
        await asyncio.sleep(0.3)
        pinger.mark()
        cpu_before = cpu_seconds(target.pid)
        started = time.perf_counter()
        writer.write(command)
        reply: bytes | None = None
        try:
            reply = await asyncio.wait_for(reader.readline(), sizes.del_timeout)
        except asyncio.TimeoutError:
            pass
        except (OSError, asyncio.IncompleteReadError) as exc:
            out.note(f"DEL connection lost: {type(exc).__name__}")
        wall = time.perf_counter() - started
        cpu_after = cpu_seconds(target.pid)
        await asyncio.sleep(0.05)
        worst = pinger.worst()
        cpu = (
            None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
        )
        out.figures.update(
            reply=None if reply is None else reply.decode(errors="replace").strip(),
            wall_seconds=wall,
            cpu_seconds=cpu,
            ping_worst=worst,
        )
        out.client = f"PING worst {ms(worst)}"
        cpu_text = "?" if cpu is None else f"{cpu:.2f} s"
        if reply is None:
            out.note(f"no reply in {sizes.del_timeout:.0f} s (CPU {cpu_text} so far)")
        else:
            out.note(
                f"replied {reply.strip().decode(errors='replace')!r} "
                f"in {wall:.2f} s; server CPU {cpu_text}"
            )
        if pinger.error:
            out.note(pinger.error)
    finally:
        await pinger.stop()
        if conn is not None:
            conn[1].transport.abort()


# -- the scenarios ------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    key: str
    label: Callable[[Sizes], str]
    run: Callable[[Target, Sizes, Outcome], Awaitable[None]]
    #: The longest it may take, in seconds: beyond, "timed out".
    bound: Callable[[Sizes], float]


def _count(n: int) -> str:
    return f"{n:,}"


SCENARIOS = (
    Scenario(
        "slowloris",
        lambda s: (
            f"slowloris {_count(s.slowloris_conns)} x 1 B/0.5 s, "
            f"{s.slowloris_seconds:.0f} s"
        ),
        slowloris,
        lambda s: s.slowloris_seconds + 120.0,
    ),
    Scenario(
        "idle",
        lambda s: f"idle {_count(s.idle_conns)} x '*'",
        idle_one_byte,
        lambda s: 120.0,
    ),
    Scenario(
        "big_values",
        lambda s: f"{s.big_conns} x unfinished {mib(s.big_value)} SET",
        big_values,
        lambda s: 60.0 + s.big_conns * s.big_value / 20e6,
    ),
    Scenario(
        "unread_gets",
        lambda s: f"{s.get_conns} x 64 KiB of GET {s.get_value // KIB} KiB, unread",
        unread_gets,
        lambda s: s.get_hold + 30.0,
    ),
    Scenario(
        "set_64k",
        lambda s: f"SET -d 65536 -n {_count(s.burst_n[64 * KIB])} -c {s.burst_clients}",
        set_burst(64 * KIB),
        lambda s: 30.0 + s.burst_n[64 * KIB] * 64 * KIB / 20e6,
    ),
    Scenario(
        "set_1m",
        lambda s: f"{_count(s.at_once_conns)} x SET of {mib(s.at_once_value)} at once",
        set_at_once,
        lambda s: 60.0 + s.at_once_conns * s.at_once_value / 20e6,
    ),
    Scenario(
        "big_del",
        lambda s: (
            f"DEL of {_count(s.del_args)} keys "
            f"({len(del_command(s.del_args)) / 1e6:.1f} MB)"
        ),
        big_del,
        lambda s: s.del_timeout + 30.0,
    ),
)


async def run_scenario(
    scenario: Scenario, target: Target, sizes: Sizes, out: Outcome
) -> None:
    """Run ``scenario``, within its bound; a server that dies is noted."""
    bound = scenario.bound(sizes)
    try:
        await asyncio.wait_for(scenario.run(target, sizes, out), bound)
    except asyncio.TimeoutError:
        out.note(f"timed out after {bound:.0f} s")
        out.figures["timed_out"] = True
    except (OSError, asyncio.IncompleteReadError) as exc:
        out.note(f"failed: {type(exc).__name__}: {exc}"[:160])
    if not target.alive():
        out.note("the server died")
        out.figures["died"] = True
