"""python -m benchmarks.runs: several full runs' goal rows side by side, with their medians.

On a shared host a row near its goal is met in one run and not in the next. The goal table
says how such a row is judged: by the median of three runs, naming the rows that straddle.
This reads the JSON that ``python -m benchmarks --json FILE`` wrote for each run, and prints
every goal's figure in each run, its median, whether the median meets the goal, and in how
many runs it was met::

    python -m benchmarks.runs run1.json run2.json run3.json

Runs of different code are compared all the same, with a warning (``meta.commit``, written
by each run; ``unknown`` for a run from before it was).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from typing import Any

from .goals import GOALS, Goal, meets

__all__ = ["Row", "combine", "format_runs", "main"]


@dataclass
class Row:
    goal: Goal
    values: list[float | None]  # one per run, in the order given
    median: float | None  # of the runs that measured it
    met: bool | None  # the median against the goal
    met_in: int  # runs that met it
    measured_in: int  # runs that measured it

    @property
    def straddles(self) -> bool:
        return 0 < self.met_in < self.measured_in


def combine(runs: list[dict[str, Any]]) -> list[Row]:
    """One row per goal of the bundled table, in its order; a goal a run did not report
    (an older run, or a row added since) counts as not measured there."""
    by_run = [{g["id"]: g.get("measured") for g in run.get("goals", ())} for run in runs]
    rows = []
    for goal in GOALS:
        values = [measured.get(goal.id) for measured in by_run]
        present = [v for v in values if v is not None]
        median = statistics.median(present) if present else None
        rows.append(
            Row(
                goal,
                values,
                median,
                meets(goal, median),
                sum(1 for v in present if meets(goal, v)),
                len(present),
            )
        )
    return rows


def _figure(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


def _verdict(row: Row) -> str:
    if row.met is None:
        return "not measured"
    said = "met" if row.met else "NOT MET"
    if row.straddles:
        said += f" (straddles: met in {row.met_in} of {row.measured_in})"
    return said


def _run_line(n: int, run: dict[str, Any]) -> str:
    meta = run.get("meta", {})
    bare = next((r.get("rps") for r in run.get("http", ()) if r.get("config") == "bare"), None)
    floor = meta.get("floor_us")
    load = meta.get("load_average_start") or [None]
    parts = [
        f"  run {n}: {meta.get('started', '?')}",
        f"commit {meta.get('commit') or 'unknown'}",
        f"mode {meta.get('mode', '?')}",
    ]
    if bare:
        parts.append(f"bare app {bare:.0f} req/s")
    if floor:
        parts.append(f"floor {floor:.2f} µs")
    if load[0] is not None:
        parts.append(f"load {load[0]:.2f} at start")
    return ", ".join(parts)


def format_runs(runs: list[dict[str, Any]], rows: list[Row]) -> str:
    lines = [f"{len(runs)} runs:"]
    lines += [_run_line(n, run) for n, run in enumerate(runs, 1)]
    commits = {run.get("meta", {}).get("commit") or "unknown" for run in runs}
    if len(commits) > 1:
        lines.append(f"warning: the runs measured different code ({', '.join(sorted(commits))})")
    modes = {run.get("meta", {}).get("mode") for run in runs}
    if modes != {"full"}:
        lines.append("warning: not every run is a full run (--quick or --smoke figures)")
    head = "".join(f"{'run ' + str(n):>10}" for n in range(1, len(runs) + 1))
    lines.append("")
    lines.append(f"{'id':30}{head}{'median':>10}  {'goal':50} result")
    for row in rows:
        figures = "".join(f"{_figure(v):>10}" for v in row.values)
        lines.append(
            f"  {row.goal.id:28}{figures}{_figure(row.median):>10}  {row.goal.goal:50} "
            f"{_verdict(row)}"
        )
    every = [r for r in rows if r.measured_in and r.met_in == r.measured_in]
    by_median = [r for r in rows if r.met and r.straddles]
    lost = [r for r in rows if r.met is False and r.straddles]
    never = [r for r in rows if r.measured_in and r.met_in == 0]
    unmeasured = [r for r in rows if not r.measured_in]
    lines.append("")
    lines.append(
        f"{len(every)} met in every run that measured them; "
        f"{len(by_median)} met in the median only"
        + (f" ({', '.join(r.goal.id for r in by_median)})" if by_median else "")
        + f"; {len(lost)} met in some run but not in the median"
        + (f" ({', '.join(r.goal.id for r in lost)})" if lost else "")
        + f"; {len(never)} met in no run; {len(unmeasured)} not measured"
    )
    lines.append(f"goals met by the median: {sum(1 for r in rows if r.met)} of {len(rows)}")
    return "\n".join(lines)


def _load(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except OSError as exc:
        raise SystemExit(f"python -m benchmarks.runs: cannot read {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise SystemExit(f"python -m benchmarks.runs: {path} is not JSON ({exc})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("goals"), list):
        raise SystemExit(
            f"python -m benchmarks.runs: {path} has no goal rows "
            "(write it with python -m benchmarks --json FILE)"
        )
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.runs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("files", nargs="+", metavar="RUN.json")
    args = parser.parse_args(argv)
    runs = [_load(path) for path in args.files]
    print(format_runs(runs, combine(runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
