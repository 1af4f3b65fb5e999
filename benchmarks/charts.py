"""PNG charts of a run (matplotlib, Agg) and the benchmark page's tables.

``draw()`` makes every chart of a run; ``python -m benchmarks.charts`` draws
them again from the files a run left (``results.json``, and ``servers.md``
and ``hostile.md`` from ``python -m benchmarks.servers``), without
measuring anything: after a server run, or after a change to the charts.

The charts are made for the width of the benchmark page: 8 inches drawn at
150 dpi, shown about 700 pixels wide, so that 9-point text stays readable.
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, NullFormatter

from benchmarks.cases import AIOMEMPOOL, ELEMENTS
from benchmarks.harness import Config
from benchmarks.report import num, read_json, waste_line
from benchmarks.results import GroupResult, HandoffRow, Run

LOOP_COLORS = {"asyncio": "#4c72b0", "uvloop": "#dd8452"}
AIOMEMPOOL_COLOR = "#2a7a2a"
FAILED_COLOR = "#aa3333"
FOOTER_COLOR = "#555555"
# The wait percentiles of the hand-off, each a bar of the loop's colour,
# lighter for the lower percentiles.
PERCENTILES = (("p50_ns", "p50", 0.35), ("p99_ns", "p99", 0.65), ("max_ns", "max", 1.0))
# The server benchmark's commands, each a bar colour.
COMMANDS = (("ping", "#8da0cb"), ("set", "#66a61e"), ("get", "#e78ac3"))
RSS_COLOR = "#7570b3"

WIDTH = 8.0  # inches: the page's width at DPI, about 700 px on screen
DPI = 150
LABEL_SIZE = 9.5  # implementation names
VALUE_SIZE = 8.5  # the figures written beside the bars
TITLE_SIZE = 10.5
SUPTITLE_SIZE = 12
FOOTER_SIZE = 7.5
LABEL_WIDTH = 34  # characters: longer labels wrap onto a second line


def _save(fig: Figure, path: Path) -> None:
    """Render with Agg, the non-interactive backend, whatever the default."""
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI)


def _footer(run: Run) -> str:
    m = run.machine
    return (
        f"{m['python']} on {m['platform']}, {m['cpu']}, {m['cpu_count']} CPUs; "
        f"aiomempool {run.versions['aiomempool']}; {run.mode} run of {m['date']}"
    )


def _color(name: str) -> str:
    return LOOP_COLORS.get(name, "#777777")


def _wrap(label: str) -> str:
    return "\n".join(textwrap.wrap(label, LABEL_WIDTH, break_on_hyphens=False))


def _labels(ax: Axes, labels: list[str], aiomempool: list[bool]) -> None:
    """One y tick per label, top down; aiomempool's in bold green."""
    ax.set_yticks(range(len(labels)), [_wrap(x) for x in labels], fontsize=LABEL_SIZE)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    for tick, ours in zip(ax.get_yticklabels(), aiomempool, strict=True):
        if ours:
            tick.set_fontweight("bold")
            tick.set_color(AIOMEMPOOL_COLOR)


def _status(ax: Axes, y: float, text: str) -> None:
    """Why a row has no bar, written in its place."""
    ax.text(
        0.01,
        y,
        "\n".join(textwrap.wrap(text, 60)),
        transform=ax.get_yaxis_transform(),
        va="center",
        fontsize=VALUE_SIZE,
        color=FAILED_COLOR,
    )


def _loop_legend(fig: Figure, run: Run) -> None:
    handles = [Rectangle((0, 0), 1, 1, color=_color(loop.name)) for loop in run.loops]
    fig.legend(
        handles,
        [loop.name for loop in run.loops],
        loc="upper right",
        fontsize=LABEL_SIZE,
        ncols=len(run.loops),
        frameon=False,
    )


def _finish(fig: Figure, title: str, footer: str, path: Path) -> Path:
    """Title and legend above the panels, the footer below, then save."""
    height = fig.get_figheight()
    title = "\n".join(textwrap.wrap(title, 60, break_on_hyphens=False))
    footer = "\n".join(textwrap.wrap(footer, 115, break_on_hyphens=False))
    fig.suptitle(
        title, fontsize=SUPTITLE_SIZE, x=0.01, y=1 - 0.1 / height, ha="left", va="top"
    )
    fig.text(0.01, 0.06 / height, footer, fontsize=FOOTER_SIZE, color=FOOTER_COLOR)
    # tight_layout() makes room for the suptitle, which the legend is beside.
    top = 1 - 0.12 / height
    bottom = (0.1 + 0.14 * (footer.count("\n") + 1)) / height
    fig.tight_layout(rect=(0, bottom, 1, top))
    _save(fig, path)
    return path


def _duration(ns: float) -> str:
    """A duration in the unit that suits it: 338 ns, 4.18 ms."""
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("\u00b5s", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"


def _log_axis(ax: Axes, text: Callable[[float], str]) -> None:
    """A log x axis whose decades are labelled by ``text(value)``."""
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: text(x)))
    ax.xaxis.set_minor_formatter(NullFormatter())


# -- uncontended cycles and buffers: one panel per group ----------------------


def _group_panel(ax: Axes, run: Run, key: str) -> None:
    """Horizontal bars, one per implementation and loop; missing figures
    say why in the bar's place."""
    per_loop = [(loop.name, loop.group(key)) for loop in run.loops]
    first = per_loop[0][1]
    assert first is not None
    height = 0.8 / len(per_loop)
    values = []
    for i, (name, group) in enumerate(per_loop):
        assert group is not None
        for y, row in enumerate(group.rows):
            pos = y - 0.4 + height * (i + 0.5)
            if row.median is None:
                continue
            values.append(row.median)
            ax.barh(pos, row.median, height, color=_color(name))
            ratio = group.ratio(row)
            text = num(row.median) + ("" if ratio is None else f" ({ratio:.2f}x)")
            ax.text(row.median, pos, " " + text, va="center", fontsize=VALUE_SIZE)
    for y, row in enumerate(first.rows):
        if row.median is None:
            _status(ax, y, row.status)
    log = bool(values) and max(values) / max(min(values), 1e-9) > 30
    if log:
        _log_axis(ax, lambda x: f"{x:,.0f}")
    else:
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
    ax.set_xlim(
        (min(values) / 2 if log else 0) if values else 0,
        max(values) * (8 if log else 1.6) if values else 1,
    )
    _labels(
        ax,
        [row.label for row in first.rows],
        [r.family == AIOMEMPOOL for r in first.rows],
    )
    ax.set_xlabel(
        f"{first.unit}{', log scale' if log else ''}; lower is better; "
        f"in brackets: / {first.reference}",
        fontsize=VALUE_SIZE,
    )
    ax.tick_params(axis="x", labelsize=VALUE_SIZE)
    ax.set_title(first.title, fontsize=TITLE_SIZE, loc="left")
    ax.grid(axis="x", alpha=0.3, which="both")


def _rows_height(labels: list[str]) -> float:
    """Inches for the rows of a panel, a wrapped label counting more."""
    return sum(0.5 if len(x) > LABEL_WIDTH else 0.36 for x in labels)


def _groups_chart(run: Run, keys: list[str], title: str, path: Path) -> Path:
    first = run.loops[0]
    sizes = []
    for key in keys:
        group = first.group(key)
        assert isinstance(group, GroupResult)
        sizes.append(_rows_height([row.label for row in group.rows]) + 0.9)
    fig = Figure(figsize=(WIDTH, sum(sizes) + 1.0))
    axes = fig.subplots(
        len(keys), 1, gridspec_kw={"height_ratios": sizes}, squeeze=False
    )
    for ax, key in zip(axes[:, 0], keys, strict=True):
        _group_panel(ax, run, key)
    _loop_legend(fig, run)
    return _finish(fig, title, _footer(run), path)


# -- the contended hand-off ---------------------------------------------------


def handoff_title(config: Config) -> str:
    """The hand-off's title, as ``python -m benchmarks`` gives it."""
    return (
        f"Contended hand-off: {config.tasks:,} tasks share {ELEMENTS} elements "
        f"({config.task_cycles} cycles each; medians of {config.handoff_repeats} "
        "runs)"
    )


def _throughput_panel(ax: Axes, run: Run) -> None:
    rows = run.loops[0].handoff
    height = 0.8 / len(run.loops)
    best = 1.0
    for i, loop in enumerate(run.loops):
        for y, row in enumerate(loop.handoff):
            if row.figures is None:
                continue
            pos = y - 0.4 + height * (i + 0.5)
            rate = row.figures.throughput
            best = max(best, rate)
            ax.barh(pos, rate, height, color=_color(loop.name))
            ax.text(rate, pos, " " + num(rate), va="center", fontsize=VALUE_SIZE)
    for y, row in enumerate(rows):
        if row.figures is None:
            _status(ax, y, row.status)
    _labels(ax, [row.label for row in rows], [r.family == AIOMEMPOOL for r in rows])
    ax.set_xlim(0, best * 1.3)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
    ax.tick_params(axis="x", labelsize=VALUE_SIZE)
    ax.set_xlabel(
        "take + give back cycles per second; higher is better", fontsize=VALUE_SIZE
    )
    ax.set_title("Throughput", fontsize=TITLE_SIZE, loc="left")
    ax.grid(axis="x", alpha=0.3)


def _wait_panel(ax: Axes, run: Run, measured: list[int]) -> None:
    """For each implementation that can wait, per loop, three bars: p50,
    p99 and the longest wait, each with its figure."""
    rows: list[HandoffRow] = [run.loops[0].handoff[r] for r in measured]
    per_row = len(run.loops) * len(PERCENTILES)
    height = 0.84 / per_row
    waits: list[float] = []
    for y, r in enumerate(measured):
        for i, loop in enumerate(run.loops):
            h = loop.handoff[r].figures
            if h is None:
                continue
            for j, (field, name, alpha) in enumerate(PERCENTILES):
                pos = y - 0.42 + height * (i * len(PERCENTILES) + j + 0.5)
                us = getattr(h, field) / 1e3
                waits.append(us)
                ax.barh(pos, us, height * 0.92, color=_color(loop.name), alpha=alpha)
                ax.text(
                    us,
                    pos,
                    f" {name} {_duration(us * 1e3)}",
                    va="center",
                    fontsize=VALUE_SIZE,
                )
    _log_axis(ax, lambda x: _duration(x * 1e3))
    if waits:
        ax.set_xlim(min(waits) / 3, max(waits) * 12)
    _labels(ax, [row.label for row in rows], [r.family == AIOMEMPOOL for r in rows])
    ax.tick_params(axis="x", labelsize=VALUE_SIZE)
    ax.set_xlabel(
        "log scale; a longest wait (max) near the median is fair",
        fontsize=VALUE_SIZE,
    )
    ax.set_title(
        "How long each take waited: p50, p99 and max, per loop",
        fontsize=TITLE_SIZE,
        loc="left",
    )
    ax.grid(axis="x", alpha=0.3)


def _handoff_chart(run: Run, title: str, path: Path) -> Path:
    rows = run.loops[0].handoff
    measured = [
        r for r in range(len(rows)) if any(lp.handoff[r].figures for lp in run.loops)
    ]
    top_h = _rows_height([row.label for row in rows]) + 0.9
    wait_h = 1.05 * len(measured) + 0.9
    fig = Figure(figsize=(WIDTH, top_h + wait_h + 0.9))
    thr, wait = fig.subplots(2, 1, gridspec_kw={"height_ratios": [top_h, wait_h]})
    _throughput_panel(thr, run)
    _wait_panel(wait, run, measured)
    _loop_legend(fig, run)
    return _finish(fig, title, _footer(run), path)


# -- the servers ----------------------------------------------------------------


@dataclass(frozen=True)
class ServerRow:
    """One server in one run of the server benchmark, as its table shows it."""

    run: str  # "-c 50", "-c 50 -P 16", ..., or "burst ..."
    server: str  # "pooled (asyncio)", ..., "redis-server"
    rps: dict[str, float] | None  # requests/s per command, or None
    rss_mib: float | None  # peak resident memory
    text: str  # why there are no figures, or what the burst did


@dataclass(frozen=True)
class Servers:
    """The figures of a server run: where and when, and the rows."""

    header: str
    rows: list[ServerRow]

    def runs(self) -> list[str]:
        return list(dict.fromkeys(r.run for r in self.rows if not _is_burst(r)))


def _is_burst(row: ServerRow) -> bool:
    return row.run.startswith("burst")


def _mib(text: str) -> float | None:
    text = text.strip()
    return float(text.removesuffix("MiB").strip()) if text.endswith("MiB") else None


def parse_servers_md(text: str) -> Servers:
    """The first table of ``servers.md`` (``python -m benchmarks.servers``
    writes it), without the ratios that follow."""
    lines = text.splitlines()
    header = lines[0].strip() if lines else ""
    rows = []
    in_table = False
    for line in lines:
        if line.startswith("| run | server |"):
            in_table = True
            continue
        if not in_table or line.startswith("| ---"):
            continue
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        run, server, rest = cells[0].strip("`"), cells[1], cells[2:]
        figures = rest[:3]
        if all(c.replace(",", "").replace(".", "").isdigit() for c in figures):
            rps = {
                name: float(c.replace(",", ""))
                for (name, _), c in zip(COMMANDS, figures, strict=True)
            }
            rows.append(ServerRow(run, server, rps, _mib(rest[3]), ""))
        else:
            shown = [c for c in rest if c]
            rss = _mib(shown[-1]) if len(shown) > 1 else None
            rows.append(ServerRow(run, server, None, rss, shown[0] if shown else ""))
    return Servers(header, rows)


def servers_from_json(data: dict[str, Any], run: Run) -> Servers | None:
    """The server figures of ``python -m benchmarks --servers``, as
    ``benchmarks/servers.py``'s ``run()`` returned them; None if it had none."""
    if not data.get("rows"):
        return None
    from benchmarks.servers import RUNS  # labels only: it measures nothing here

    runs = {r.key: r.label for r in RUNS}
    burst = data.get("burst", {})
    runs["burst"] = f"burst {burst.get('connections', '?')} x 64 KiB SET"
    labels = {key: s["label"] for key, s in data["servers"].items()}
    rows = []
    for raw in data["rows"]:
        rss = raw["peak_rss_bytes"]
        text = raw["note"] or ""
        if raw["run"] == "burst" and not text and raw["seconds"] is not None:
            text = f"all +OK {raw['seconds']:.2f} s after sending"
        rows.append(
            ServerRow(
                runs.get(raw["run"], raw["run"]),
                labels.get(raw["server"], raw["server"]),
                raw["rps"],
                None if rss is None else rss / 2**20,
                text,
            )
        )
    m = run.machine
    return Servers(f"Run on {m['cpu_count']} CPUs, {m['python']}, {m['date']}.", rows)


def load_servers(run: Run, out: Path) -> Servers | None:
    """The run's own server figures, else those of ``out/servers.md``."""
    if run.servers:
        found = servers_from_json(run.servers, run)
        if found is not None:
            return found
    md = out / "servers.md"
    if md.exists():
        return parse_servers_md(md.read_text(encoding="utf-8"))
    return None


def _server_panel(ax: Axes, servers: Servers, run_label: str) -> None:
    rows = [r for r in servers.rows if r.run == run_label]
    height = 0.84 / len(COMMANDS)
    best = 1.0
    for y, row in enumerate(rows):
        if row.rps is None:
            _status(ax, y, row.text)
            continue
        for j, (name, color) in enumerate(COMMANDS):
            pos = y - 0.42 + height * (j + 0.5)
            rate = row.rps[name]
            best = max(best, rate)
            ax.barh(pos, rate, height * 0.92, color=color)
            ax.text(rate, pos, f" {num(rate)}", va="center", fontsize=VALUE_SIZE)
    _labels(ax, [r.server for r in rows], [r.server.startswith("pooled") for r in rows])
    ax.set_xlim(0, best * 1.22)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: _rate(x)))
    ax.tick_params(axis="x", labelsize=VALUE_SIZE)
    ax.set_title(
        f"redis-benchmark {run_label}: requests per second, higher is better",
        fontsize=TITLE_SIZE,
        loc="left",
    )
    ax.grid(axis="x", alpha=0.3)


def _rate(x: float) -> str:
    return f"{x / 1e6:g}M" if x >= 1e6 else f"{x / 1e3:,.0f}k" if x else "0"


def _burst_panel(ax: Axes, servers: Servers) -> None:
    rows = [r for r in servers.rows if _is_burst(r)]
    best = max((r.rss_mib or 0.0 for r in rows), default=1.0) or 1.0
    for y, row in enumerate(rows):
        if row.rss_mib is None:
            _status(ax, y, row.text)
            continue
        ax.barh(y, row.rss_mib, 0.6, color=RSS_COLOR)
        ax.text(
            row.rss_mib,
            y,
            f" {row.rss_mib:.1f} MiB; {row.text}",
            va="center",
            fontsize=VALUE_SIZE,
        )
    _labels(ax, [r.server for r in rows], [r.server.startswith("pooled") for r in rows])
    ax.set_xlim(0, best * 2.6)
    ax.tick_params(axis="x", labelsize=VALUE_SIZE)
    ax.set_xlabel("MiB; lower is better", fontsize=VALUE_SIZE)
    what = rows[0].run.removeprefix("burst ").strip() if rows else ""
    ax.set_title(
        f"Burst, {what} at once: the server's peak memory",
        fontsize=TITLE_SIZE,
        loc="left",
    )
    ax.grid(axis="x", alpha=0.3)


def _servers_chart(servers: Servers, path: Path) -> Path:
    runs = servers.runs()
    per_run = [len([r for r in servers.rows if r.run == x]) for x in runs]
    bursts = len([r for r in servers.rows if _is_burst(r)])
    sizes = [0.45 * n + 0.7 for n in per_run] + (
        [0.42 * bursts + 0.9] if bursts else []
    )
    fig = Figure(figsize=(WIDTH, sum(sizes) + 1.0))
    axes = fig.subplots(
        len(sizes), 1, gridspec_kw={"height_ratios": sizes}, squeeze=False
    )[:, 0]
    for ax, run_label in zip(axes, runs, strict=False):
        _server_panel(ax, servers, run_label)
    if bursts:
        _burst_panel(axes[-1], servers)
    fig.legend(
        [Rectangle((0, 0), 1, 1, color=c) for _, c in COMMANDS],
        [name.upper() for name, _ in COMMANDS],
        loc="upper right",
        fontsize=LABEL_SIZE,
        ncols=len(COMMANDS),
        frameon=False,
    )
    title = "Servers: the pooled RESP server, asyncio streams, redis-server"
    return _finish(fig, title, servers.header.replace("`", ""), path)


def write_servers_table(
    servers: Servers | None, path: Path, hostile: Hostile | None = None
) -> Path:
    """The server figures as Markdown, for the benchmark page to include: a
    row per server, a column per run; then the burst; then the hostile
    scenarios."""
    if servers is None:
        header = hostile.header if hostile is not None else ""
        lines = [header, *(_hostile_lines(hostile) if hostile is not None else [])]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path
    runs = servers.runs()
    names = list(dict.fromkeys(r.server for r in servers.rows if not _is_burst(r)))
    by_key = {(r.run, r.server): r for r in servers.rows}
    lines = [
        servers.header,
        "",
        "Requests per second: PING / SET / GET.",
        "",
        "| server | " + " | ".join(f"`{run}`" for run in runs) + " |",
        "| --- |" + " ---: |" * len(runs),
    ]
    for name in names:
        cells = []
        for run in runs:
            row = by_key.get((run, name))
            if row is None or row.rps is None:
                cells.append("-" if row is None else row.text.replace("|", "\\|"))
            else:
                cells.append(" / ".join(f"{row.rps[c]:,.0f}" for c, _ in COMMANDS))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    bursts = [r for r in servers.rows if _is_burst(r)]
    if bursts:
        what = bursts[0].run.removeprefix("burst ").strip()
        lines += [
            "",
            f"The burst, {what} at once:",
            "",
            "| server | what happened | peak RSS |",
            "| --- | --- | ---: |",
        ]
        for row in bursts:
            rss = "-" if row.rss_mib is None else f"{row.rss_mib:.1f} MiB"
            text = row.text.replace("|", "\\|")
            lines.append(f"| {row.server} | {text} | {rss} |")
    if hostile is not None and hostile.rows:
        if hostile.header != servers.header:
            lines += ["", hostile.header]
        lines += _hostile_lines(hostile)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# -- the hostile scenarios ---------------------------------------------------


@dataclass(frozen=True)
class HostileRow:
    """One server in one hostile scenario, as its table shows it."""

    scenario: str  # "slowloris 2,000 x 1 B/0.5 s, 60 s", ...
    server: str
    client: str  # the well-behaved client's figures
    rss_mib: float | None
    note: str  # what happened


@dataclass(frozen=True)
class Hostile:
    header: str
    rows: list[HostileRow]

    def scenarios(self) -> list[str]:
        return list(dict.fromkeys(r.scenario for r in self.rows))


def parse_hostile_md(text: str) -> Hostile:
    """The first table of ``hostile.md`` (``python -m benchmarks.servers``
    writes it)."""
    lines = text.splitlines()
    header = lines[0].strip() if lines else ""
    rows = []
    in_table = False
    for line in lines:
        if line.startswith("| scenario | server |"):
            in_table = True
            continue
        if not in_table or line.startswith("| ---"):
            continue
        if not line.startswith("|"):
            break
        # "\|" inside a cell is a "|" of the text.
        cells = [
            c.strip().replace("\0", "|")
            for c in line.replace("\\|", "\0").strip().strip("|").split("|")
        ]
        if len(cells) < 5:
            continue
        scenario, server, client, rss, note = cells[:5]
        rows.append(
            HostileRow(
                scenario,
                server,
                "" if client == "-" else client,
                _mib(rss),
                "" if note == "-" else note,
            )
        )
    return Hostile(header, rows)


def hostile_from_json(data: dict[str, Any], run: Run) -> Hostile | None:
    """The hostile figures in ``benchmarks/servers.py``'s ``run()`` return
    value; None if it has none."""
    hostile = data.get("hostile")
    if not hostile or not hostile.get("rows"):
        return None
    labels = {key: s["label"] for key, s in data.get("servers", {}).items()}
    scenarios = hostile.get("scenarios", {})
    rows = []
    for raw in hostile["rows"]:
        rss = raw["peak_rss_bytes"]
        rows.append(
            HostileRow(
                scenarios.get(raw["scenario"], raw["scenario"]),
                labels.get(raw["server"], raw["server"]),
                raw["client"] or "",
                None if rss is None else rss / 2**20,
                raw["note"] or "",
            )
        )
    m = run.machine
    return Hostile(f"Run on {m['cpu_count']} CPUs, {m['python']}, {m['date']}.", rows)


def load_hostile(run: Run, out: Path) -> Hostile | None:
    """The run's own hostile figures, else those of ``out/hostile.md``."""
    if run.servers:
        found = hostile_from_json(run.servers, run)
        if found is not None:
            return found
    md = out / "hostile.md"
    if md.exists():
        return parse_hostile_md(md.read_text(encoding="utf-8"))
    return None


def _hostile_panel(ax: Axes, hostile: Hostile, scenario: str) -> None:
    rows = [r for r in hostile.rows if r.scenario == scenario]
    best = max((r.rss_mib or 0.0 for r in rows), default=1.0) or 1.0
    for y, row in enumerate(rows):
        if row.rss_mib is None:
            _status(ax, y, row.note or row.client)
            continue
        ax.barh(y, row.rss_mib, 0.6, color=RSS_COLOR)
        rss = row.rss_mib
        text = f"{rss:,.0f} MiB" if rss >= 10 else f"{rss:.1f} MiB"
        if row.client:
            text += f"; {row.client}"
        if "timed out after" in row.note:
            text += "; the scenario timed out"
        if "died" in row.note:
            text += "; the server died"
        ax.text(
            rss,
            y,
            "\n".join(" " + line for line in textwrap.wrap(text, 62)),
            va="center",
            fontsize=VALUE_SIZE - 1,
        )
    _labels(ax, [r.server for r in rows], [r.server.startswith("pooled") for r in rows])
    ax.set_xlim(0, best * 2.8)
    ax.tick_params(axis="x", labelsize=VALUE_SIZE)
    ax.set_title(scenario, fontsize=TITLE_SIZE, loc="left")
    ax.grid(axis="x", alpha=0.3)


def _hostile_chart(hostile: Hostile, path: Path) -> Path:
    scenarios = hostile.scenarios()
    sizes = [
        0.42 * len([r for r in hostile.rows if r.scenario == s]) + 0.6
        for s in scenarios
    ]
    fig = Figure(figsize=(WIDTH, sum(sizes) + 1.2))
    axes = fig.subplots(
        len(sizes), 1, gridspec_kw={"height_ratios": sizes}, squeeze=False
    )[:, 0]
    for ax, scenario in zip(axes, scenarios, strict=True):
        _hostile_panel(ax, hostile, scenario)
    axes[-1].set_xlabel(
        "the server's peak memory, MiB; lower is better. Beside it: what a "
        "well-behaved client got",
        fontsize=VALUE_SIZE,
    )
    title = "Hostile clients: the pooled RESP server, asyncio streams, redis-server"
    return _finish(fig, title, hostile.header.replace("`", ""), path)


def _hostile_lines(hostile: Hostile) -> list[str]:
    lines = [
        "",
        "Hostile clients, each scenario on a server started for it: what a "
        "well-behaved client got meanwhile, and the server's peak memory.",
        "",
        "| scenario | server | well-behaved client | peak RSS | what happened |",
        "| --- | --- | --- | ---: | --- |",
    ]
    for row in hostile.rows:
        rss = "-" if row.rss_mib is None else f"{row.rss_mib:.1f} MiB"
        cells = [row.scenario, row.server, row.client or "-", rss, row.note or "-"]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return lines


# -- every chart ----------------------------------------------------------------


def draw(run: Run, out: Path, handoff_title: str) -> list[Path]:
    """Every chart of the run, as PNG files in ``out``; with server figures
    (the run's, or those of ``out/servers.md`` and ``out/hostile.md``),
    their charts and table too."""
    buffer_keys = [g.key for g in run.loops[0].groups if g.key.startswith("buffers")]
    written = [
        _groups_chart(
            run,
            ["sync", "await"],
            "Uncontended take + give back",
            out / "uncontended.png",
        ),
        _groups_chart(
            run,
            buffer_keys,
            "Buffers: bytearray(n), a Queue, buffer_pool, buffer_arena",
            out / "buffers.png",
        ),
        _handoff_chart(run, handoff_title, out / "handoff.png"),
    ]
    servers = load_servers(run, out)
    hostile = load_hostile(run, out)
    if servers is not None and not servers.rows:
        servers = None
    if hostile is not None and not hostile.rows:
        hostile = None
    if servers is not None:
        written.append(_servers_chart(servers, out / "servers.png"))
    if hostile is not None:
        written.append(_hostile_chart(hostile, out / "hostile.png"))
    if servers is not None or hostile is not None:
        table = out / "servers-table.md"
        written.append(write_servers_table(servers, table, hostile))
    return written


# -- the page's table -----------------------------------------------------------


def _cell(value: float | None, ratio: float | None, status: str) -> str:
    if value is None:
        return status.replace("|", "\\|")
    return num(value) + ("" if ratio is None else f" ({ratio:.2f}x)")


def _group_tables(run: Run) -> list[str]:
    """A table per group: a row per implementation, a column per loop (and
    under each spread's, what rounding up to the arena's classes wastes)."""
    lines = []
    for g, group in enumerate(run.loops[0].groups):
        lines += [
            f"**{group.title}**, {group.unit}; in brackets: / {group.reference}",
            "",
            "| implementation | " + " | ".join(lp.name for lp in run.loops) + " |",
            "| --- |" + " ---: |" * len(run.loops),
        ]
        for r, row in enumerate(group.rows):
            cells = []
            for loop in run.loops:
                other = loop.groups[g]
                mine = other.rows[r]
                cells.append(_cell(mine.median, other.ratio(mine), mine.status))
            lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
        lines.append("")
        if run.arena_waste and group.key in run.arena_waste:
            lines += [waste_line(run.arena_waste[group.key]) + ".", ""]
    return lines


def _handoff_table(run: Run, title: str) -> list[str]:
    lines = [
        f"**{title}**; wait times in microseconds",
        "",
        "| implementation | loop | cycles/s | p50 | p99 | max |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r, first in enumerate(run.loops[0].handoff):
        for loop in run.loops:
            row = loop.handoff[r]
            h = row.figures
            if h is None:
                status = row.status.replace("|", "\\|")
                lines.append(f"| {first.label} | {loop.name} | {status} | | | |")
                continue
            lines.append(
                f"| {first.label} | {loop.name} | {num(h.throughput)} | "
                f"{num(h.p50_ns / 1e3)} | {num(h.p99_ns / 1e3)} | "
                f"{num(h.max_ns / 1e3)} |"
            )
    return lines


def _notes(run: Run) -> list[str]:
    notes = {row.note for loop in run.loops for row in loop.handoff if row.note}
    notes |= {
        row.note
        for loop in run.loops
        for group in loop.groups
        for row in group.rows
        if row.note
    }
    return [""] + [f"Note: {note}." for note in sorted(notes)] if notes else []


def write_page_table(run: Run, path: Path, handoff_title: str) -> Path:
    """The figures as Markdown, for the benchmark page to include. The
    targets the project holds itself to are for the terminal only."""
    m = run.machine
    lines = [
        f"Measured on {m['date']} with {m['python']} on {m['platform']}, "
        f"{m['cpu']}, {m['cpu_count']} CPUs; "
        + ", ".join(f"{k} {v}" for k, v in run.versions.items())
        + f". A {run.mode} run: medians of {run.config.repeats} repeats; "
        f"it took {run.seconds:.0f} s.",
        "",
        *_group_tables(run),
        *_handoff_table(run, handoff_title),
        *_notes(run),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> None:
    """Redraw the charts and the page's tables from a run's files."""
    default = Path(__file__).resolve().parent.parent / "docs" / "assets" / "benchmarks"
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.charts",
        description="Draw the charts and the page's tables again from "
        "results.json (and servers.md, hostile.md), measuring nothing.",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        type=Path,
        default=default,
        help="where results.json is and the charts go (default: "
        "docs/assets/benchmarks)",
    )
    args = parser.parse_args(argv)
    run = read_json(args.out / "results.json")
    title = handoff_title(run.config)
    written = [*draw(run, args.out, title)]
    written.append(write_page_table(run, args.out / "last-run.md", title))
    print("wrote " + ", ".join(p.name for p in written))


if __name__ == "__main__":
    main()
