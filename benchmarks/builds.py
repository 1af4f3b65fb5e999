"""``python -m benchmarks.builds``: the whole benchmark on both builds of
aiomempool, one after the other, then their figures side by side.

The compiled build runs first, as installed; then the same benchmark with
``AIOMEMPOOL_NO_EXTENSIONS=1``, the pure-Python package. Each run prints its
own tables and targets and writes its results (the compiled run where
``python -m benchmarks`` writes them, the pure run in a ``pure`` folder
beside them); the last table gives each aiomempool case's median in both,
and the speed-up. Where no extension is built, the pure run alone is made.

    python -m benchmarks.builds [--quick] [--out DIR] [--servers]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiomempool
from aiomempool._extensions import ENV_VAR
from benchmarks.cases import AIOMEMPOOL
from benchmarks.report import num
from benchmarks.suite import DOCS_OUT


def _run(out: Path, options: list[str], pure: bool) -> dict[str, Any]:
    """One run of the benchmark in a process of its own; its results."""
    env = dict(os.environ)
    if pure:
        env[ENV_VAR] = "1"
    else:
        env.pop(ENV_VAR, None)
    title = "pure" if pure else "compiled"
    print(f"\n##### the {title} build #####", flush=True)
    command = [sys.executable, "-m", "benchmarks", *options, "--out", str(out)]
    subprocess.run(command, env=env, check=True)
    data: dict[str, Any] = json.loads((out / "results.json").read_text("utf-8"))
    return data


def _medians(data: dict[str, Any]) -> dict[tuple[str, str], float | None]:
    """aiomempool's medians, by loop and label (uncontended groups), then
    the contended hand-off's throughput."""
    out: dict[tuple[str, str], float | None] = {}
    for loop in data["loops"]:
        for group in loop["groups"]:
            for row in group["rows"]:
                if row["family"] == AIOMEMPOOL:
                    out[(loop["name"], f"{row['label']} [ns]")] = row["median"]
        for row in loop["handoff"]:
            if row["family"] == AIOMEMPOOL and row["figures"] is not None:
                label = f"{row['label']} contended [cycles/s]"
                out[(loop["name"], label)] = row["figures"]["throughput"]
    return out


def side_by_side(compiled: dict[str, Any], pure: dict[str, Any]) -> list[str]:
    """The lines of the table: each aiomempool case in both builds."""
    ours, theirs = _medians(compiled), _medians(pure)
    width = max((len(label) for _, label in ours), default=10)
    lines = [
        "\n=== both builds, one after the other on this machine ===",
        f"  {'loop':<8} {'case':<{width}} {'compiled':>10} {'pure':>10}  speed-up",
    ]
    for (loop, label), fast in ours.items():
        slow = theirs.get((loop, label))
        if fast is None or slow is None:
            speedup = "n/a"
        elif label.endswith("[cycles/s]"):
            speedup = f"{fast / slow:.2f}x"
        else:
            speedup = f"{slow / fast:.2f}x"
        cells = [num(v) if v is not None else "n/a" for v in (fast, slow)]
        lines.append(
            f"  {loop:<8} {label:<{width}} {cells[0]:>10} {cells[1]:>10}  {speedup}"
        )
    lines.append("\n=== targets missed, by build ===")
    for name, data in (("compiled", compiled), ("pure", pure)):
        missed = [t for t in data["targets"] if t["passed"] is False]
        lines.append(f"  {name}: {len(missed)} of {len(data['targets'])} missed")
        lines += [f"    {t['loop']:<8} {t['text']}: {t['ratio']:.3g}" for t in missed]
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.builds",
        description="the benchmark on the compiled and the pure-Python build",
    )
    parser.add_argument("--quick", action="store_true", help="as for benchmarks")
    parser.add_argument("--servers", action="store_true", help="as for benchmarks")
    parser.add_argument(
        "--out",
        metavar="DIR",
        type=Path,
        help="the compiled run's results (the pure run's in DIR/pure); "
        "a full run's default: docs/assets/benchmarks",
    )
    args = parser.parse_args(argv)
    options = [
        flag
        for flag, on in (("--quick", args.quick), ("--servers", args.servers))
        if on
    ]
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or (Path(tmp) if args.quick else DOCS_OUT)
        if not aiomempool.compiled:
            print(
                "no compiled build is installed (see the installation guide): "
                "the pure build alone"
            )
            _run(out, options, pure=True)
            return
        compiled = _run(out, options, pure=False)
        pure = _run(out / "pure", options, pure=True)
        print("\n".join(side_by_side(compiled, pure)))


if __name__ == "__main__":
    main()
