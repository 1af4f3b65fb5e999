"""The tables on the terminal, and the JSON file (written, and read back)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.harness import Config, Handoff
from benchmarks.results import (
    SPREAD_KEY,
    GroupResult,
    HandoffRow,
    LoopResult,
    Row,
    Run,
    Target,
)

#: What each build of aiomempool is, for the header.
BUILDS = {
    "compiled": "its hot modules compiled by Cython",
    "pure": "pure Python; AIOMEMPOOL_NO_EXTENSIONS=1 or no extension built",
}


def num(value: float) -> str:
    """A figure with the digits that matter."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def waste_line(w: dict[str, Any]) -> str:
    """``benchmarks.arena.waste()`` in one line, for the terminal and the page."""
    return (
        f"Waste per allocation over the {w.get('spread', 'log-uniform')} spread "
        f"({w['sizes']:,} sizes, {w['min_bytes']} B to {w['max_bytes'] >> 20} MiB, "
        f"seed {w['seed']}, mean {w['mean_request_bytes'] / 1024:,.0f} KiB; "
        f"{w['classes']} classes): of the slot, mean {w['mean_of_slot']:.1%}, "
        f"worst {w['worst_of_slot']:.1%}; relative to n, mean "
        f"{w['mean_of_request']:.1%}; of all bytes handed out, {w['of_bytes']:.1%}"
    )


def _width(labels: list[str]) -> int:
    return max([len(x) for x in labels] + [30]) + 2


def print_header(run: Run) -> None:
    m = run.machine
    cfg = run.config
    print(f"aiomempool benchmarks ({run.mode}: medians of {cfg.repeats} repeats)")
    print(f"python:   {m['python']}")
    print(f"machine:  {m['platform']}, {m['cpu']}, {m['cpu_count']} CPUs")
    build = m.get("build", "pure")  # results of runs before builds were told
    print(f"build:    aiomempool {build} ({BUILDS[build]})")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in run.versions.items()))


def _print_group(group: GroupResult, width: int, notes: list[str]) -> None:
    ref = f"/ {group.reference}"
    print(f"\n{group.title} [{group.unit}]; ratio = median {ref}")
    for row in group.rows:
        ratio = group.ratio(row)
        if row.median is None:
            print(f"  {row.label:<{width}}  {row.status}")
        else:
            text = "" if ratio is None else f"{ratio:>8.2f}"
            print(f"  {row.label:<{width}}  {num(row.median):>10}  {text}")
        if row.note and row.note not in notes:
            notes.append(row.note)


def _print_handoff(
    rows: list[HandoffRow], title: str, width: int, notes: list[str]
) -> None:
    print(f"\n{title}")
    print(
        f"  {'':<{width}}  {'cycles/s':>10}  {'p50 us':>10}  {'p99 us':>10}  "
        f"{'max us':>10}"
    )
    for row in rows:
        h = row.figures
        if h is None:
            print(f"  {row.label:<{width}}  {row.status}")
        else:
            print(
                f"  {row.label:<{width}}  {num(h.throughput):>10}  "
                f"{num(h.p50_ns / 1e3):>10}  {num(h.p99_ns / 1e3):>10}  "
                f"{num(h.max_ns / 1e3):>10}"
            )
        if row.note and row.note not in notes:
            notes.append(row.note)


def print_loop(loop: LoopResult, handoff_title: str) -> None:
    labels = [r.label for g in loop.groups for r in g.rows]
    labels += [r.label for r in loop.handoff]
    width = _width(labels)
    print(f"\n=== loop: {loop.name} ({loop.loop_class}) ===")
    notes: list[str] = []
    for group in loop.groups:
        _print_group(group, width, notes)
    _print_handoff(loop.handoff, handoff_title, width, notes)
    for note in notes:
        print(f"NOTE: {note}")


def _target_cell(t: Target) -> str:
    if t.passed is None:
        return f"{'n/a':>8}  {t.bound_text:>8}  n/a (no figure)"
    assert t.ratio is not None
    return f"{t.ratio:>8.2f}  {t.bound_text:>8}  {'PASS' if t.passed else 'MISS'}"


def print_summary(run: Run) -> None:
    width = _width([c.what for c in run.closest])
    print("\n=== aiomempool against the alternative that came closest ===")
    print(
        f"  {'loop':<8} {'aiomempool':<{width}} {'ours':>10}  {'closest alternative'}"
    )
    for c in run.closest:
        better = c.ours >= c.theirs if c.higher_is_better else c.ours <= c.theirs
        factor = c.theirs / c.ours if c.ours else float("inf")
        ahead = "aiomempool ahead" if better else "alternative ahead"
        print(
            f"  {c.loop:<8} {c.what:<{width}} {num(c.ours):>10}  "
            f"{c.alternative}: {num(c.theirs)} {c.unit} ({factor:.2f}x ours, {ahead})"
        )
    width = _width([t.text for t in run.targets])
    print("\n=== targets of the project's issues ===")
    print(f"  {'loop':<8} {'ratio':<{width}} {'measured':>8}  {'target':>8}  result")
    for t in run.targets:
        print(f"  {t.loop:<8} {t.text:<{width}} {_target_cell(t)}")
    print(f"\nthe run took {run.seconds:.0f} s")


def to_json(run: Run) -> dict[str, Any]:
    data = asdict(run)
    for target, raw in zip(run.targets, data["targets"], strict=True):
        raw["passed"] = target.passed
    for loop, raw in zip(run.loops, data["loops"], strict=True):
        for group, graw in zip(loop.groups, raw["groups"], strict=True):
            for row, rraw in zip(group.rows, graw["rows"], strict=True):
                rraw["ratio"] = group.ratio(row)
    return data


def write_json(run: Run, path: Path) -> None:
    path.write_text(json.dumps(to_json(run), indent=2) + "\n", encoding="utf-8")


def read_json(path: Path) -> Run:
    """A run as ``write_json()`` wrote it: its figures, enough to redraw the
    charts and the page's table (the targets and the summary are left out)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    loops = [
        LoopResult(
            loop["name"],
            loop["loop_class"],
            [
                GroupResult(
                    g["key"],
                    g["title"],
                    g["unit"],
                    g["reference"],
                    [
                        Row(
                            r["label"], r["family"], r["median"], r["status"], r["note"]
                        )
                        for r in g["rows"]
                    ],
                )
                for g in loop["groups"]
            ],
            [
                HandoffRow(
                    h["label"],
                    h["family"],
                    None if h["figures"] is None else Handoff(**h["figures"]),
                    h["status"],
                    h["note"],
                )
                for h in loop["handoff"]
            ],
        )
        for loop in data["loops"]
    ]
    return Run(
        data["mode"],
        Config(**data["config"]),
        data["machine"],
        data["versions"],
        loops,
        servers=data.get("servers"),
        seconds=data["seconds"],
        arena_waste=_waste(data.get("arena_waste")),
    )


def _waste(raw: dict[str, Any] | None) -> dict[str, dict[str, Any]] | None:
    """The waste figures by group, as a run writes them; a run written before
    the uniform spread had those of the log-uniform spread alone."""
    if raw is not None and "sizes" in raw:
        return {SPREAD_KEY: raw}
    return raw
