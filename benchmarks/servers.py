"""The server benchmark (run on demand: ``python -m benchmarks --servers``,
or alone: ``python -m benchmarks.servers [--quick] [--hostile | --no-hostile]
[--scenario KEY ...] [--server KEY ...]``, the last two picking hostile
scenarios and servers, writing nothing).

``redis-benchmark -t ping,set,get -c 50 -q`` drives, each started afresh
per run on 127.0.0.1:

* ``examples/resp_server.py``, the pooled server, on asyncio and uvloop;
* ``benchmarks/resp_streams.py``, the same commands written the ordinary
  way with asyncio streams, on asyncio and uvloop;
* a real ``redis-server`` where one is installed (``--save "" --appendonly
  no``), or "not installed".

Three runs: plain, pipelined (``-P 16``) and with 16 KiB values (``-d
16384``), each on every server three times over, interleaved, and the median
of the three kept (``--quick``: once, with fewer requests). Then a burst:
2,000 connections each send a SET of a 64 KiB value (a command a little
larger than one 64 KiB buffer, as users send it) at the same moment and wait for
their ``+OK``, against the pooled server with a bounded
pool (``--buffer-size 65536 --max-nr 64``) and the streams baseline. For
each server, its peak RSS (``VmHWM`` from ``/proc/PID/status``, read before
it is stopped). Every SET of the burst is on one key, so that what is
measured is what the server holds while reading, not what it stores.

The table ends with the targets of the servers issue, each a ratio of two
servers measured in the same run (PASS or MISS), and other ratios beside
them (info).

Then the hostile scenarios (``benchmarks/hostile.py``: slowloris, idle
one-byte connections, big unfinished values, pipelined GETs never read,
bursts of big SETs, a huge DEL), each on the pooled server (asyncio,
uvloop, with the example's default pool), the streams server (asyncio) and
redis-server, each started afresh for it and run with as many open files
as the hard limit allows: what a well-behaved client got meanwhile, and the
server's peak RSS. ``--hostile`` runs them alone, ``--no-hostile`` leaves
them out.

``run(quick)`` prints the tables and returns their figures (JSON-able), as
``benchmarks/suite.py`` expects; a full run alone also writes them as
Markdown into ``docs/assets/benchmarks/``: ``servers.md`` and
``hostile.md``, from which ``python -m benchmarks.charts`` draws the
benchmark page's server chart, hostile chart and table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import dataclasses
import importlib.util
import io
import os
import re
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import hostile

ROOT = Path(__file__).resolve().parent.parent
RESP_SERVER = ROOT / "examples" / "resp_server.py"
STREAMS_MODULE = "benchmarks.resp_streams"
HOST = "127.0.0.1"
TESTS = ("ping", "set", "get")
# redis-benchmark's names for them; "-t ping" runs PING_INLINE and PING_MBULK,
# and the table shows PING_MBULK (a RESP array, like SET and GET).
CSV_NAMES = {"PING_MBULK": "ping", "SET": "set", "GET": "get"}
CLIENTS = 50
#: Full runs: each figure is the median of this many (quick runs: one).
REPEATS = 3
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
BENCH_TIMEOUT = 120.0
# A burst takes about a second; more means the server is stuck.
BURST_TIMEOUT = {False: 20.0, True: 8.0}  # by quick
BURST_CONNECTIONS = 2000
BURST_SIZE = 64 * 1024
BURST_POOL = ["--buffer-size", "65536", "--min-nr", "16", "--max-nr", "64"]
NOT_INSTALLED = "not installed"


@dataclass(frozen=True)
class Run:
    key: str
    label: str
    args: tuple[str, ...]
    full_n: int
    quick_n: int


RUNS = (
    Run("plain", "-c 50", (), 60_000, 4_000),
    Run("pipelined", "-c 50 -P 16", ("-P", "16"), 300_000, 20_000),
    Run("values_16k", "-c 50 -d 16384", ("-d", "16384"), 40_000, 3_000),
)


@dataclass(frozen=True)
class Server:
    key: str
    label: str
    argv: tuple[str, ...]
    # None if it can run here, else why not ("not installed").
    missing: str | None = None
    python: bool = True


@dataclass
class Row:
    run: str
    server: str
    rps: dict[str, float] = field(default_factory=dict)
    peak_rss: int | None = None  # bytes
    seconds: float | None = None
    note: str = ""


def servers() -> list[Server]:
    """Every server, in the order of the table."""
    py = sys.executable
    no_uvloop = None if importlib.util.find_spec("uvloop") else "uvloop not installed"
    redis = shutil.which("redis-server")
    return [
        Server("pooled_asyncio", "pooled (asyncio)", (py, str(RESP_SERVER))),
        Server(
            "pooled_uvloop",
            "pooled (uvloop)",
            (py, str(RESP_SERVER), "--uvloop"),
            no_uvloop,
        ),
        Server("streams_asyncio", "streams (asyncio)", (py, "-m", STREAMS_MODULE)),
        Server(
            "streams_uvloop",
            "streams (uvloop)",
            (py, "-m", STREAMS_MODULE, "--uvloop"),
            no_uvloop,
        ),
        Server(
            "redis",
            "redis-server",
            (redis or "redis-server",),
            None if redis else NOT_INSTALLED,
            python=False,
        ),
    ]


# -- processes ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def peak_rss(pid: int) -> int | None:
    """The process's peak resident set size in bytes (VmHWM), if known."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    m = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
    return int(m.group(1)) * 1024 if m else None


def ping(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def nofile_to_hard() -> None:
    """In a server's child process before exec: as many open files as the
    hard limit allows (thousands of hostile connections)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass
class Proc:
    """A started server: its pid and port; once stopped, ``stats`` is the
    line it printed then ("stats: ..."), ``returncode`` how it ended, and
    ``killed`` whether it had to be killed."""

    pid: int
    port: int
    popen: subprocess.Popen[str]
    stats: str | None = None
    returncode: int | None = None
    stderr_tail: str = ""
    killed: bool = False  # it did not stop in time

    def alive(self) -> bool:
        return self.popen.poll() is None


@contextlib.contextmanager
def launched(
    server: Server, extra: list[str], stop_timeout: float = STOP_TIMEOUT
) -> Iterator[Proc]:
    """Start ``server`` on a free port of 127.0.0.1, its open files limit
    raised to the hard one; yield it. Stopped (SIGINT) on exit, killed if
    it does not stop within ``stop_timeout``; then ``stats`` and
    ``returncode`` say how it ended."""
    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "stderr", "w+") as err:
        if server.python:
            argv = [*server.argv, "--port", "0", "--host", HOST, *extra]
            proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                preexec_fn=nofile_to_hard,
            )
        else:
            port = free_port()
            argv = [
                *server.argv,
                "--bind", HOST, "--port", str(port), "--save", "", "--appendonly",
                "no", "--dir", tmp, "--daemonize", "no", "--protected-mode", "no",
                *extra,
            ]  # fmt: skip
            proc = subprocess.Popen(
                argv,
                cwd=tmp,
                stdout=subprocess.DEVNULL,
                stderr=err,
                text=True,
                preexec_fn=nofile_to_hard,
            )
        handle: Proc | None = None
        try:
            if server.python:
                assert proc.stdout is not None
                ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT)
                line = proc.stdout.readline() if ready else ""
                m = re.fullmatch(r"listening on [\d.]+:(\d+)\n", line)
                if m is None:
                    err.seek(0)
                    raise RuntimeError(
                        f"{server.label} did not start: {line!r} {err.read()[-500:]}"
                    )
                port = int(m.group(1))
            else:
                deadline = time.monotonic() + START_TIMEOUT
                while not ping(port):
                    if proc.poll() is not None or time.monotonic() > deadline:
                        err.seek(0)
                        raise RuntimeError(
                            f"{server.label} did not start: {err.read()[-500:]}"
                        )
                    time.sleep(0.05)
            handle = Proc(proc.pid, port, proc)
            yield handle
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            try:
                out, _ = proc.communicate(timeout=stop_timeout)
            except subprocess.TimeoutExpired:
                handle.killed = True  # killed below
            else:
                found = re.findall(r"^stats: .*$", out or "", re.M)
                handle.stats = found[-1] if found else None
        finally:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired, ValueError):
                proc.communicate(timeout=STOP_TIMEOUT)
            if handle is not None:
                handle.returncode = proc.returncode
                err.seek(0)
                handle.stderr_tail = err.read()[-300:]


@contextlib.contextmanager
def started(server: Server, extra: list[str]) -> Iterator[tuple[int, int]]:
    """Start ``server`` on a free port of 127.0.0.1; yield (pid, port).
    Stopped on exit, killed if it does not stop in time."""
    with launched(server, extra) as proc:
        yield proc.pid, proc.port
    if proc.killed:
        raise RuntimeError(f"{server.label} did not stop within {STOP_TIMEOUT:.0f} s")


# -- redis-benchmark ----------------------------------------------------------


def redis_benchmark(port: int, run: Run, n: int) -> dict[str, float]:
    argv = [
        "redis-benchmark", "-h", HOST, "-p", str(port), "-t", ",".join(TESTS),
        "-c", str(CLIENTS), "-n", str(n), "-q", "--csv", *run.args,
    ]  # fmt: skip
    out = subprocess.run(
        argv, capture_output=True, text=True, timeout=BENCH_TIMEOUT, check=False
    )
    rps: dict[str, float] = {}
    for fields in csv.reader(io.StringIO(out.stdout)):
        if len(fields) >= 2 and fields[0] in CSV_NAMES:
            with contextlib.suppress(ValueError):
                rps[CSV_NAMES[fields[0]]] = float(fields[1])
    if out.returncode != 0 or set(rps) != set(TESTS):
        raise RuntimeError(
            f"redis-benchmark failed ({out.returncode}): {out.stderr[-300:]}"
        )
    return rps


# -- the burst ----------------------------------------------------------------


def set_command(value: int) -> bytes:
    """A SET of a ``value``-byte value on one key, as a user sends it: the
    command is a little larger than the value (a 64 KiB value does not fit
    one 64 KiB buffer)."""
    return b"*3\r\n$3\r\nSET\r\n$9\r\nburst:key\r\n$%d\r\n%s\r\n" % (
        value,
        b"x" * value,
    )


async def burst(port: int, connections: int, command: bytes, timeout: float) -> float:
    """Open ``connections`` connections, then send ``command`` on every one
    at once and wait for every ``+OK``; the seconds from the first send to
    the last ``+OK`` (connecting 2,000 clients through a listen backlog of
    100 can take seconds of SYN retries, on uvloop above all: not the
    server's reading)."""
    limit = asyncio.Semaphore(64)  # the servers' listen backlog is 100

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with limit:
            return await asyncio.open_connection(HOST, port)

    results = await asyncio.wait_for(
        asyncio.gather(
            *(connect() for _ in range(connections)), return_exceptions=True
        ),
        timeout,
    )
    pairs = [r for r in results if not isinstance(r, BaseException)]
    try:
        for r in results:
            if isinstance(r, BaseException):
                raise r
        started_at = time.perf_counter()
        for _, writer in pairs:
            writer.write(command)

        async def reply(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            await writer.drain()
            line = await reader.readexactly(5)
            if line != b"+OK\r\n":
                raise RuntimeError(f"unexpected reply {line!r}")

        await asyncio.wait_for(
            asyncio.gather(*(reply(r, w) for r, w in pairs)), timeout
        )
        return time.perf_counter() - started_at
    finally:
        for _, writer in pairs:
            writer.transport.abort()
        await asyncio.sleep(0)


def raise_nofile() -> int:
    """Raise the soft limit on open files to the hard one; the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 65536)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- the hostile scenarios ----------------------------------------------------

#: The servers of the hostile scenarios: the example on both loops, the
#: streams baseline and redis-server (each started afresh per scenario).
HOSTILE_SERVERS = ("pooled_asyncio", "pooled_uvloop", "streams_asyncio", "redis")
HOSTILE_STOP_TIMEOUT = 8.0


@dataclass
class HostileRow:
    scenario: str
    server: str
    client: str = ""  # the well-behaved client's figures
    note: str = ""  # what happened
    peak_rss: int | None = None  # bytes
    figures: dict[str, Any] = field(default_factory=dict)
    stats: str | None = None  # the example's "stats: ..." line
    seconds: float | None = None


def measure_hostile(
    quick: bool,
    scenarios: Collection[str] = (),
    on: Collection[str] = HOSTILE_SERVERS,
) -> list[HostileRow]:
    """Every hostile scenario (or those of ``scenarios``) on every server of
    ``on``, each on a server started for it; a line of progress per run."""
    sizes = hostile.QUICK if quick else hostile.FULL
    raise_nofile()
    rows: list[HostileRow] = []
    for scenario in hostile.SCENARIOS:
        if scenarios and scenario.key not in scenarios:
            continue
        label = scenario.label(sizes)
        for server in servers():
            if server.key not in on:
                continue
            row = HostileRow(scenario.key, server.key)
            rows.append(row)
            if server.missing:
                row.note = server.missing
                continue
            print(f"  hostile: {label} on {server.label} ...", end="", flush=True)
            out = hostile.Outcome()
            started_at = time.monotonic()
            proc: Proc | None = None
            try:
                with launched(server, [], HOSTILE_STOP_TIMEOUT) as proc:
                    sampler = hostile.Sampler(proc.pid)
                    target = hostile.Target(proc.pid, proc.port, sampler, proc.alive)
                    try:
                        asyncio.run(hostile.run_scenario(scenario, target, sizes, out))
                    finally:
                        row.peak_rss = sampler.stop()
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                out.note(f"failed: {exc}"[:200])
            if proc is not None:
                row.stats = proc.stats
                if out.figures.get("died"):
                    last = proc.stderr_tail.strip().splitlines()[-1:] or [""]
                    out.note(f"exit status {proc.returncode}: {last[0][:100]}")
                elif proc.killed:
                    stop = HOSTILE_STOP_TIMEOUT
                    out.note(f"did not stop within {stop:.0f} s: killed")
            row.seconds = time.monotonic() - started_at
            row.client = out.client
            row.note = "; ".join(out.notes)
            row.figures = out.figures
            print(f" {row.seconds:.0f} s", flush=True)
    return rows


def hostile_targets(rows: list[HostileRow]) -> list[dict[str, Any]]:
    """The ratios of the hostile scenarios worth a look (judged by nothing
    yet): the peak RSS of the pooled server over the streams server's in
    the bursts of big SETs."""
    peaks = {
        (r.scenario, r.server): r.peak_rss
        for r in rows
        if r.peak_rss and not r.figures.get("timed_out")
    }
    lines = []
    for scenario, what in (("set_64k", "64 KiB"), ("set_1m", "1 MiB")):
        streams = peaks.get((scenario, "streams_asyncio"))
        for loop in ("asyncio", "uvloop"):
            pooled = peaks.get((scenario, f"pooled_{loop}"))
            ratios = None if not pooled or not streams else {"rss": pooled / streams}
            name = f"{what} SETs peak RSS: pooled ({loop}) / streams (asyncio)"
            lines.append(ratio_line(name, ratios, None, 0))
    return lines


def hostile_labels(quick: bool) -> dict[str, str]:
    sizes = hostile.QUICK if quick else hostile.FULL
    return {s.key: s.label(sizes) for s in hostile.SCENARIOS}


def print_hostile(
    rows: list[HostileRow], lines: list[dict[str, Any]], quick: bool
) -> None:
    labels = {s.key: s.label for s in servers()}
    scenarios = hostile_labels(quick)
    print(
        "\nHostile clients: each scenario on a server started for it; peak RSS = "
        "the highest VmHWM / VmRSS (sampled every 50 ms)"
    )
    head = f"  {'server':<18} {'well-behaved client':<56} {'peak RSS':>11}"
    head += "  what happened"
    print(head)
    print("-" * len(head))
    for key, title in scenarios.items():
        print(title)
        for row in rows:
            if row.scenario != key:
                continue
            client = row.client or "-"
            print(
                f"  {labels[row.server]:<18} {client:<56} "
                f"{mib(row.peak_rss):>11}  {row.note}"
            )
    print("\nHostile ratios")
    for line in lines:
        shown, verdict = ratio_text(line)
        target = line["target"] or "-"
        print(f"  {line['name']:<58} {shown:<12} {target:<8} {verdict}")


def hostile_markdown(
    rows: list[HostileRow],
    lines: list[dict[str, Any]],
    info: dict[str, Any],
    quick: bool,
) -> str:
    """The hostile table as ``hostile.md``; ``benchmarks/charts.py`` parses
    its first table."""
    labels = {s.key: s.label for s in servers()}
    scenarios = hostile_labels(quick)

    def cell(text: str) -> str:
        return text.replace("|", "\\|") or "-"

    out = [
        f"Run on {info['machine']}, {time.strftime('%Y-%m-%d')}; "
        f"`{' '.join(info['command'])}`.",
        "",
        "| scenario | server | well-behaved client | peak RSS | what happened |",
        "| --- | --- | --- | ---: | --- |",
    ]
    for row in rows:
        out.append(
            f"| {cell(scenarios[row.scenario])} | {labels[row.server]} "
            f"| {cell(row.client)} | {mib(row.peak_rss)} | {cell(row.note)} |"
        )
    out += ["", "| ratio | measured | target | |", "| --- | --- | --- | --- |"]
    for line in lines:
        shown, verdict = ratio_text(line)
        out.append(
            f"| `{line['name']}` | {shown} | {line['target'] or '-'} | {verdict} |"
        )
    return "\n".join(out) + "\n"


def hostile_json(
    rows: list[HostileRow], lines: list[dict[str, Any]], quick: bool
) -> dict[str, Any]:
    sizes = hostile.QUICK if quick else hostile.FULL
    labels = hostile_labels(quick)
    return {
        "mode": "quick" if quick else "full",
        "sizes": {
            k: ({str(size): n for size, n in v.items()} if isinstance(v, dict) else v)
            for k, v in dataclasses.asdict(sizes).items()
        },
        "scenarios": labels,
        "rows": [
            {
                "scenario": row.scenario,
                "server": row.server,
                "client": row.client or None,
                "note": row.note or None,
                "peak_rss_bytes": row.peak_rss,
                "figures": row.figures,
                "stats": row.stats,
                "seconds": row.seconds,
            }
            for row in rows
        ],
        "ratios": lines,
    }


# -- the table ----------------------------------------------------------------


def mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


def ratio_line(
    name: str, ratios: dict[str, float] | None, target: str | None, wanted: float
) -> dict[str, Any]:
    """One ratio of the table. ``target`` is None for a figure shown beside
    the targets, judged by nothing; otherwise ">= x" or "<= x"."""
    ok = None
    if ratios is not None and target is not None:
        worst = (
            min(ratios.values()) if target.startswith(">=") else max(ratios.values())
        )
        ok = worst >= wanted if target.startswith(">=") else worst <= wanted
    return {"name": name, "ratios": ratios, "target": target, "ok": ok}


def measure(quick: bool) -> tuple[list[Row], list[Row], dict[str, Any]]:
    """Every run on every server, ``REPEATS`` times interleaved (so that a
    slow spell of the machine hits them alike); each figure is the median
    of its repeats, each peak RSS the highest."""
    repeats = 1 if quick else REPEATS
    rows = [Row(run.key, server.key) for run in RUNS for server in servers()]
    samples: dict[tuple[str, str], list[dict[str, float]]] = {}
    for _ in range(repeats):
        for run in RUNS:
            n = run.quick_n if quick else run.full_n
            for server in servers():
                row = next(
                    r for r in rows if (r.run, r.server) == (run.key, server.key)
                )
                if server.missing:
                    row.note = server.missing
                    continue
                if row.note:
                    continue  # failed once: not run again
                try:
                    with started(server, []) as (pid, port):
                        started_at = time.perf_counter()
                        rps = redis_benchmark(port, run, n)
                        seconds = time.perf_counter() - started_at
                        rss = peak_rss(pid)
                except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                    row.note = f"failed: {exc}"[:200]
                    continue
                samples.setdefault((run.key, server.key), []).append(rps)
                row.seconds = (row.seconds or 0.0) + seconds
                if rss is not None:
                    row.peak_rss = max(row.peak_rss or 0, rss)
    for row in rows:
        got = samples.get((row.run, row.server))
        if got and not row.note:
            row.rps = {t: statistics.median(s[t] for s in got) for t in TESTS}

    limit = raise_nofile()
    conns = min(BURST_CONNECTIONS, max(0, limit - 64))
    command = set_command(BURST_SIZE)
    bursts: list[Row] = []
    for server in servers():
        if not server.key.startswith(("pooled", "streams")):
            continue
        row = Row("burst", server.key)
        bursts.append(row)
        if server.missing:
            row.note = server.missing
            continue
        extra = BURST_POOL if server.key.startswith("pooled") else []
        try:
            with started(server, extra) as (pid, port):
                row.seconds = asyncio.run(
                    burst(port, conns, command, BURST_TIMEOUT[quick])
                )
                row.peak_rss = peak_rss(pid)
        except asyncio.TimeoutError:
            row.note = f"failed: not every +OK within {BURST_TIMEOUT[quick]:.0f} s"
        except (RuntimeError, OSError, subprocess.SubprocessError, EOFError) as exc:
            row.note = f"failed: {type(exc).__name__}: {exc}"[:200]
    requests = {run.key: run.quick_n if quick else run.full_n for run in RUNS}
    info: dict[str, Any] = {
        "connections": conns,
        "command_bytes": len(command),
        "n": requests,
    }
    return rows, bursts, info


def targets(rows: list[Row], bursts: list[Row]) -> list[dict[str, Any]]:
    """The servers issue's targets, then the other ratios worth a look."""

    def rps(run: str, server: str) -> dict[str, float] | None:
        for row in rows:
            if row.run == run and row.server == server and row.rps:
                return row.rps
        return None

    def ratios(run: str, a: str, b: str) -> dict[str, float] | None:
        x, y = rps(run, a), rps(run, b)
        if x is None or y is None:
            return None
        return {t: x[t] / y[t] for t in TESTS}

    peaks = {row.server: row.peak_rss for row in bursts if not row.note}

    def rss(loop: str) -> dict[str, float] | None:
        pooled, streams = peaks.get(f"pooled_{loop}"), peaks.get(f"streams_{loop}")
        return None if not pooled or not streams else {"rss": pooled / streams}

    # (name, run, server, baseline, target, wanted): the targets,
    # then, judged by nothing, the other loop and small values.
    pairs: list[tuple[str, str, str, str, str | None, float]] = [
        ("-P 16: pooled (uvloop) / streams (asyncio)", "pipelined",
         "pooled_uvloop", "streams_asyncio", ">= 3", 3),
        ("-d 16384: pooled (uvloop) / redis-server", "values_16k",
         "pooled_uvloop", "redis", ">= 0.9", 0.9),
        ("-P 16: pooled (asyncio) / streams (asyncio)", "pipelined",
         "pooled_asyncio", "streams_asyncio", None, 0),
        ("-d 16384: pooled (asyncio) / redis-server", "values_16k",
         "pooled_asyncio", "redis", None, 0),
        ("-c 50: pooled (uvloop) / redis-server", "plain",
         "pooled_uvloop", "redis", None, 0),
        ("-c 50: pooled (asyncio) / redis-server", "plain",
         "pooled_asyncio", "redis", None, 0),
    ]  # fmt: skip
    lines = [
        ratio_line(name, ratios(run, a, b), target, wanted)
        for name, run, a, b, target, wanted in pairs
    ]
    for i, loop in enumerate(("asyncio", "uvloop")):
        name = f"burst peak RSS: pooled ({loop}) / streams ({loop})"
        lines.insert(2 + i, ratio_line(name, rss(loop), "<= 0.3", 0.3))
    return lines


def print_table(
    rows: list[Row],
    bursts: list[Row],
    lines: list[dict[str, Any]],
    info: dict[str, Any],
) -> None:
    labels = {s.key: s.label for s in servers()}
    runs = {run.key: run.label for run in RUNS}
    print(
        "\nServers: redis-benchmark -t ping,set,get -c 50 -q on 127.0.0.1, "
        "requests/s (ping = PING_MBULK); peak RSS = the server's VmHWM"
    )
    head = f"{'run':<16} {'server':<18} " + " ".join(f"{t:>10}" for t in TESTS)
    head += f" {'peak RSS':>11}"
    print(head)
    print("-" * len(head))
    for row in rows:
        if row.note:
            cells = f"{row.note[:67]}"
            print(f"{runs[row.run]:<16} {labels[row.server]:<18} {cells}")
            continue
        nums = " ".join(f"{row.rps[t]:>10,.0f}" for t in TESTS)
        print(
            f"{runs[row.run]:<16} {labels[row.server]:<18} {nums} "
            f"{mib(row.peak_rss):>11}"
        )
    burst_label = f"burst {info['connections']}x64K"
    for row in bursts:
        if row.note:
            print(f"{burst_label:<16} {labels[row.server]:<18} {row.note[:67]}")
            continue
        print(
            f"{burst_label:<16} {labels[row.server]:<18} {burst_text(row):<32} "
            f"{mib(row.peak_rss):>11}"
        )
    print("\nServer targets (the worst of ping/set/get is judged)")
    for line in lines:
        shown, verdict = ratio_text(line)
        target = line["target"] or "-"
        print(f"  {line['name']:<52} {shown:<32} {target:<8} {verdict}")


def burst_text(row: Row) -> str:
    pool = " (pool 64x64 KiB)" if row.server.startswith("pooled") else ""
    return f"all +OK {row.seconds:.2f} s after sending{pool}"


def ratio_text(line: dict[str, Any]) -> tuple[str, str]:
    """A ratio line's figures, and its verdict: PASS, MISS, n/a, or info
    for a figure that no target judges."""
    r = line["ratios"]
    if r is None:
        return "n/a", "n/a"
    shown = "  ".join(f"{k} {v:.2f}" for k, v in r.items())
    if line["target"] is None:
        return shown, "info"
    return shown, "PASS" if line["ok"] else "MISS"


def markdown(
    rows: list[Row],
    bursts: list[Row],
    lines: list[dict[str, Any]],
    info: dict[str, Any],
) -> str:
    """The table as docs/benchmarks.md includes it."""
    labels = {s.key: s.label for s in servers()}
    runs = {run.key: run.label for run in RUNS}
    out = [
        f"Run on {info['machine']}, {time.strftime('%Y-%m-%d')}; "
        f"`{' '.join(info['command'])}`.",
        "",
        "| run | server | ping | set | get | peak RSS |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        if row.note:
            out.append(f"| {runs[row.run]} | {labels[row.server]} | {row.note} ||||")
            continue
        nums = " | ".join(f"{row.rps[t]:,.0f}" for t in TESTS)
        out.append(
            f"| `{runs[row.run]}` | {labels[row.server]} | {nums} "
            f"| {mib(row.peak_rss)} |"
        )
    for row in bursts:
        label = f"burst {info['connections']} x 64 KiB SET"
        text = row.note or burst_text(row)
        out.append(
            f"| {label} | {labels[row.server]} | {text} ||| {mib(row.peak_rss)} |"
        )
    out += ["", "| ratio (worst of ping/set/get) | measured | target | |"]
    out.append("| --- | --- | --- | --- |")
    for line in lines:
        shown, verdict = ratio_text(line)
        target = line["target"] or "-"
        out.append(f"| `{line['name']}` | {shown} | {target} | {verdict} |")
    return "\n".join(out) + "\n"


def machine() -> str:
    """What the figures were measured on, in a few words."""
    cpus = os.cpu_count() or 0
    impl = sys.implementation.name
    version = ".".join(map(str, sys.version_info[:3]))
    return f"{cpus} CPUs, {impl} {version}"


def run(
    quick: bool = False,
    out: Path | None = None,
    throughput: bool = True,
    hostile_part: bool = True,
    scenarios: Collection[str] = (),
    on: Collection[str] = HOSTILE_SERVERS,
) -> dict[str, Any]:
    """Measure, print the tables, return the figures: the throughput runs
    and the burst, then the hostile scenarios (either may be left out;
    ``scenarios`` and ``on`` pick some scenarios and servers of them);
    with ``out``, write the tables as Markdown there too (``servers.md``,
    ``hostile.md``)."""
    started_at = time.perf_counter()
    if shutil.which("redis-benchmark") is None:
        print("\nserver figures: redis-benchmark is not installed (redis-tools)")
        return {"error": "redis-benchmark not installed"}
    info: dict[str, Any] = {"machine": machine()}
    argv = ["python", "-m", "benchmarks.servers"]
    argv += ["--hostile"] * (hostile_part and not throughput)
    argv += ["--no-hostile"] * (throughput and not hostile_part)
    argv += [f"--scenario={key}" for key in scenarios]
    argv += [f"--server={key}" for key in on if tuple(on) != HOSTILE_SERVERS]
    info["command"] = [*argv, *(["--quick"] * quick)]
    rows: list[Row] = []
    bursts: list[Row] = []
    lines: list[dict[str, Any]] = []
    if throughput:
        rows, bursts, measured = measure(quick)
        info.update(measured)
        lines = targets(rows, bursts)
        print_table(rows, bursts, lines, info)
    hostile_data = None
    if hostile_part:
        print("\nHostile scenarios:", flush=True)
        hostile_rows = measure_hostile(quick, scenarios, on)
        hostile_lines = hostile_targets(hostile_rows)
        print_hostile(hostile_rows, hostile_lines, quick)
        hostile_data = hostile_json(hostile_rows, hostile_lines, quick)
    seconds = time.perf_counter() - started_at
    print(f"(server figures in {seconds:.0f} s)")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if throughput:
            (out / "servers.md").write_text(markdown(rows, bursts, lines, info))
            print(f"table written to {out / 'servers.md'}")
        if hostile_part:
            (out / "hostile.md").write_text(
                hostile_markdown(hostile_rows, hostile_lines, info, quick)
            )
            print(f"hostile table written to {out / 'hostile.md'}")
    data: dict[str, Any] = {"mode": "quick" if quick else "full", "clients": CLIENTS}
    if throughput:
        data.update(
            {
                "requests": info["n"],
                "burst": {
                    "connections": info["connections"],
                    "command_bytes": info["command_bytes"],
                    "pooled_args": " ".join(BURST_POOL),
                },
                "rows": [
                    {
                        "run": row.run,
                        "server": row.server,
                        "rps": row.rps or None,
                        "peak_rss_bytes": row.peak_rss,
                        "seconds": row.seconds,
                        "note": row.note or None,
                    }
                    for row in rows + bursts
                ],
                "targets": lines,
            }
        )
    data["servers"] = {
        s.key: {"label": s.label, "available": s.missing is None} for s in servers()
    }
    if hostile_data is not None:
        data["hostile"] = hostile_data
    data["seconds"] = seconds
    return data


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.servers", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="small runs")
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--hostile",
        action="store_true",
        help="only the hostile scenarios (benchmarks/hostile.py)",
    )
    which.add_argument(
        "--no-hostile",
        action="store_true",
        help="only the throughput runs and the burst, no hostile scenario",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write the tables there as servers.md and hostile.md (a full run "
        "without it writes into docs/assets/benchmarks; --quick writes nothing)",
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=[s.key for s in hostile.SCENARIOS],
        default=[],
        help="only this hostile scenario (repeat for more; implies --hostile "
        "and writes nothing)",
    )
    parser.add_argument(
        "--server",
        action="append",
        choices=HOSTILE_SERVERS,
        default=[],
        help="the hostile scenarios on this server only (repeat for more; "
        "writes nothing)",
    )
    args = parser.parse_args()
    out = args.out
    partial = bool(args.scenario or args.server)
    if out is None and not args.quick and not partial:
        out = ROOT / "docs" / "assets" / "benchmarks"
    if partial and args.no_hostile:
        parser.error("--scenario and --server pick hostile scenarios")
    run(
        args.quick,
        out,
        throughput=not (args.hostile or partial),
        hostile_part=not args.no_hostile,
        scenarios=args.scenario,
        on=args.server or HOSTILE_SERVERS,
    )


if __name__ == "__main__":
    if os.name != "posix":
        sys.exit("the server benchmark needs Linux")
    main()
