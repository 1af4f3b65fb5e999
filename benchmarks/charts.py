"""PNG charts of a run (matplotlib, Agg) and the benchmark page's table."""

from __future__ import annotations

from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter

from benchmarks.cases import AIOMEMPOOL
from benchmarks.report import num
from benchmarks.results import GroupResult, Run

LOOP_COLORS = {"asyncio": "#4c72b0", "uvloop": "#dd8452"}
AIOMEMPOOL_COLOR = "#2a7a2a"
PERCENTILES = (("p50_ns", "p50", "o"), ("p99_ns", "p99", "^"), ("max_ns", "max", "s"))


def _save(fig: Figure, path: Path) -> None:
    """Render with Agg, the non-interactive backend, whatever the default."""
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110)


def _footer(run: Run) -> str:
    m = run.machine
    return (
        f"{m['python']} on {m['platform']}, {m['cpu']}, {m['cpu_count']} CPUs; "
        f"aiomempool {run.versions['aiomempool']}; {run.mode} run of {m['date']}"
    )


def _color(name: str) -> str:
    return LOOP_COLORS.get(name, "#777777")


def _style_labels(ax: Axes, families: list[str]) -> None:
    for tick, family in zip(ax.get_yticklabels(), families, strict=True):
        if family == AIOMEMPOOL:
            tick.set_fontweight("bold")
            tick.set_color(AIOMEMPOOL_COLOR)


def _group_panel(ax: Axes, run: Run, key: str) -> None:
    """Horizontal bars, one per implementation and loop; missing figures
    say why in the bar's place."""
    per_loop = [(loop.name, loop.group(key)) for loop in run.loops]
    first = per_loop[0][1]
    assert first is not None
    labels = [row.label for row in first.rows]
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
            text = num(row.median) + ("" if ratio is None else f"  ({ratio:.2f}x)")
            ax.text(row.median, pos, " " + text, va="center", fontsize=7)
    for y, row in enumerate(first.rows):
        if row.median is None:
            ax.text(
                0.01,
                y,
                row.status,
                transform=ax.get_yaxis_transform(),
                va="center",
                fontsize=8,
                color="#aa3333",
            )
    log = bool(values) and max(values) / max(min(values), 1e-9) > 30
    if log:
        ax.set_xscale("log")
    ax.set_xlim(
        (min(values) / 2 if log else 0) if values else 0,
        max(values) * (4 if log else 1.45) if values else 1,
    )
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    _style_labels(ax, [row.family for row in first.rows])
    ax.set_xlabel(
        f"{first.unit}{', log scale' if log else ''}; lower is better; "
        f"in brackets: / {first.reference}",
        fontsize=8,
    )
    ax.set_title(first.title, fontsize=10, loc="left")
    ax.grid(axis="x", alpha=0.3, which="both")


def _legend(fig: Figure, run: Run) -> None:
    handles = [Rectangle((0, 0), 1, 1, color=_color(loop.name)) for loop in run.loops]
    fig.legend(
        handles,
        [loop.name for loop in run.loops],
        loc="upper right",
        fontsize=8,
        ncols=len(run.loops),
    )


def _groups_chart(run: Run, keys: list[str], title: str, path: Path) -> Path:
    first = run.loops[0]
    sizes = []
    for key in keys:
        group = first.group(key)
        assert isinstance(group, GroupResult)
        sizes.append(len(group.rows) + 1.5)
    fig = Figure(figsize=(11, 0.42 * sum(sizes) + 1.2))
    axes = fig.subplots(
        len(keys), 1, gridspec_kw={"height_ratios": sizes}, squeeze=False
    )
    for ax, key in zip(axes[:, 0], keys, strict=True):
        _group_panel(ax, run, key)
    fig.suptitle(title, fontsize=12, x=0.01, ha="left")
    _legend(fig, run)
    fig.text(0.01, 0.005, _footer(run), fontsize=7, color="#555555")
    fig.tight_layout(rect=(0, 0.02, 1, 0.97))
    _save(fig, path)
    return path


def _handoff_chart(run: Run, title: str, path: Path) -> Path:
    rows = run.loops[0].handoff
    labels = [row.label for row in rows]
    fig = Figure(figsize=(11, 0.55 * len(rows) + 2.2))
    thr, wait = fig.subplots(1, 2, sharey=True)
    n = len(run.loops)
    height = 0.8 / n
    waits = []
    for i, loop in enumerate(run.loops):
        color = _color(loop.name)
        for y, row in enumerate(loop.handoff):
            h = row.figures
            pos = y - 0.4 + height * (i + 0.5)
            if h is None:
                continue
            thr.barh(pos, h.throughput, height, color=color)
            thr.text(
                h.throughput, pos, " " + num(h.throughput), va="center", fontsize=7
            )
            points = [getattr(h, field) / 1e3 for field, _, _ in PERCENTILES]
            waits += points
            wait.plot([min(points), max(points)], [pos, pos], color=color, lw=1)
            for (_, _, marker), x in zip(PERCENTILES, points, strict=True):
                wait.plot(x, pos, marker, color=color, markersize=5)
    for y, row in enumerate(rows):
        if row.figures is None:
            thr.text(
                0.01,
                y,
                row.status,
                transform=thr.get_yaxis_transform(),
                va="center",
                fontsize=8,
                color="#aa3333",
            )
    thr.set_yticks(range(len(labels)), labels, fontsize=8)
    thr.set_ylim(len(labels) - 0.5, -0.5)
    _style_labels(thr, [row.family for row in rows])
    xmax = max(
        (r.figures.throughput for loop in run.loops for r in loop.handoff if r.figures),
        default=1,
    )
    thr.set_xlim(0, xmax * 1.35)
    thr.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
    thr.set_xlabel("cycles per second, higher is better", fontsize=8)
    thr.set_title("Throughput", fontsize=10, loc="left")
    thr.grid(axis="x", alpha=0.3)
    wait.set_xscale("log")
    if waits:
        wait.set_xlim(min(waits) / 3, max(waits) * 3)
    wait.set_xlabel("microseconds, log scale; lower is fairer", fontsize=8)
    wait.set_title("How long each take waited", fontsize=10, loc="left")
    wait.legend(
        [Line2D([], [], marker=m, color="#333333", ls="") for _, _, m in PERCENTILES],
        [name for _, name, _ in PERCENTILES],
        fontsize=8,
        loc="lower right",
    )
    wait.grid(axis="x", alpha=0.3, which="both")
    fig.suptitle(title, fontsize=12, x=0.01, ha="left")
    _legend(fig, run)
    fig.text(0.01, 0.005, _footer(run), fontsize=7, color="#555555")
    fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    _save(fig, path)
    return path


def draw(run: Run, out: Path, handoff_title: str) -> list[Path]:
    """Every chart of the run, as PNG files in ``out``."""
    buffer_keys = [g.key for g in run.loops[0].groups if g.key.startswith("buffers")]
    return [
        _groups_chart(
            run,
            ["sync", "await"],
            "Uncontended take + give back: aiomempool, hand-rolled pools, libraries",
            out / "uncontended.png",
        ),
        _groups_chart(
            run,
            buffer_keys,
            "Buffers: bytearray(n), a Queue of buffers, aiomempool's buffer pool",
            out / "buffers.png",
        ),
        _handoff_chart(run, handoff_title, out / "handoff.png"),
    ]


# -- the page's table -------------------------------------------------------


def _cell(value: float | None, ratio: float | None, status: str) -> str:
    if value is None:
        return status.replace("|", "\\|")
    return num(value) + ("" if ratio is None else f" ({ratio:.2f}x)")


def _group_tables(run: Run) -> list[str]:
    """A table per group: a row per implementation, a column per loop."""
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


def _targets_table(run: Run) -> list[str]:
    lines = [
        "",
        "**Targets of the project's issues**",
        "",
        "| loop | ratio | measured | target | result |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for t in run.targets:
        measured = "n/a" if t.ratio is None else f"{t.ratio:.2f}"
        result = (
            "n/a (no figure)" if t.passed is None else ("PASS" if t.passed else "MISS")
        )
        lines.append(
            f"| {t.loop} | {t.text} | {measured} | {t.bound_text} | {result} |"
        )
    return lines


def write_page_table(run: Run, path: Path, handoff_title: str) -> Path:
    """The figures as Markdown, for the benchmark page to include."""
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
        *_targets_table(run),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
