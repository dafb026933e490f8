"""Output: the terminal tables, the JSON document and the bar chart."""

from __future__ import annotations

import json
from typing import Any

from .goals import GoalResult
from .http import HTTPResult
from .inprocess import VariantResult

__all__ = ["format_tables", "plot", "summary", "write_json"]


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _overhead(value: float | None, digits: int = 2) -> str:
    """An overhead below zero is noise (the variant was timed a hair faster than bare): ~0."""
    return "~0" if value is not None and value < 0 else _num(value, digits)


def format_tables(
    variants: list[VariantResult],
    http: list[HTTPResult],
    goals: list[GoalResult],
    meta: dict[str, Any],
) -> str:
    lines: list[str] = []
    floor = meta.get("floor_us")
    if variants:
        lines.append(
            f"In-process: µs per request (median of {meta['rounds']} interleaved rounds); "
            "overhead = variant - bare app of the same round (~0: below the noise).\n"
            "A floor is the cost of a middleware that does nothing but wrap send and forward "
            f"({_num(floor)} µs here): 'floors' = overhead / that,\nmeasured in the same "
            "scenario where it is a variant. 2 floors = twice the least any middleware costs."
        )
        lines.append(
            f"{'variant':44} {'µs/req':>9} {'x bare':>8} {'overhead':>9} {'floors':>7}  notes"
        )
        current = ""
        for v in variants:
            if v.scenario != current:
                current = v.scenario
                lines.append(f"-- {meta['titles'].get(current, current)}")
            notes = []
            if v.status != "ok":
                notes.append(f"{v.status}: {v.reason}")
            if v.body_bytes is not None and v.role != "bare" and v.status == "ok":
                notes.append(f"{v.body_bytes} B out")
            if v.round_trips is not None:
                notes.append(f"{v.round_trips:.2f} Redis round trips/req")
            if v.calls is not None:
                notes.append(f"{v.calls:+.0f} calls/req")
            lines.append(
                f"  {v.name:42} {_num(v.us):>9} {_num(v.ratio):>8} {_overhead(v.overhead_us):>9} "
                f"{_overhead(v.floors, 1):>7}  {'; '.join(notes)[:110]}"
            )
        lines.append("")
    if http:
        lines.append(
            f"Over HTTP: requests/s (median of {meta.get('http_rounds')} interleaved rounds); "
            "x bare = median over rounds of req/s / the bare app's req/s in the same round\n"
            "(bare req/s: the median of those bare runs); latency p50/p99 in ms"
        )
        lines.append(
            f"{'server / config':30} {'req/s':>9} {'bare req/s':>10} {'x bare':>8} {'p50':>7} "
            f"{'p99':>7} {'client CPU':>10}  notes"
        )
        for r in http:
            note = r.reason if r.status != "ok" else r.generator
            if r.errors:
                note += f"; {r.errors} error responses"
            cpu = "-" if r.client_cpu is None else f"{100 * r.client_cpu:.0f}%"
            lines.append(
                f"  {r.server + ' ' + r.config:28} {_num(r.rps, 0):>9} {_num(r.bare_rps, 0):>10} "
                f"{_num(r.ratio, 3):>8} {_num(r.p50_ms):>7} {_num(r.p99_ms):>7} {cpu:>10}  "
                f"{note[:90]}"
            )
        lines.append("")
    lines.append("Goals (the targets in benchmarks/goals.py), same run")
    lines.append(f"{'id':28} {'measured':>10}  {'unit':16} {'goal':52} result")
    for g in goals:
        result = "not measured" if g.met is None else ("met" if g.met else "NOT MET")
        lines.append(f"  {g.id:26} {_num(g.measured):>10}  {g.unit:16} {g.goal[:52]:52} {result}")
        detail = f"{g.detail} ({g.hint})" if g.hint else g.detail
        lines.append(f"  {'':26} {'':>10}  {detail[:140]}")
    met = sum(1 for g in goals if g.met)
    unmet = sum(1 for g in goals if g.met is False)
    lines.append(f"{met} met, {unmet} not met, {len(goals) - met - unmet} not measured")
    return "\n".join(lines)


def summary(
    variants: list[VariantResult], http: list[HTTPResult], goals: list[GoalResult]
) -> list[str]:
    """Three plain lines to paste into a pull request."""
    by = {(v.scenario, v.role): v for v in variants if v.status == "ok"}
    stack = by.get(("stack-memory", "ours"))
    stack_http = next(
        (r for r in http if r.server == "uvicorn" and r.config == "stack" and r.ratio), None
    )
    line1 = "- the full stack (recommended order, memory store) adds "
    line1 += (
        f"≈ {max(stack.overhead_us or 0.0, 0.0):.1f} µs per request in-process"
        if stack is not None
        else "(not measured in-process: --only stack-memory)"
    )
    if stack_http is not None:
        line1 += (
            f"; over HTTP (uvicorn, 200 B) {stack_http.rps:.0f} vs {stack_http.bare_rps:.0f} "
            f"req/s bare ({stack_http.ratio:.2f}x)"
        )
    hit, route = by.get(("cache-hit-fastapi", "ours")), by.get(("cache-hit-fastapi", "bare"))
    if hit is not None and route is not None and hit.us is not None and route.us is not None:
        line2 = (
            f"- a cache hit answers a FastAPI route in ≈ {hit.us:.1f} µs instead of ≈ "
            f"{route.us:.1f} µs running it: it saves ≈ {route.us - hit.us:.1f} µs per request"
        )
    else:
        line2 = "- cache hit on a FastAPI route: not measured (--only cache-hit-fastapi)"
    met = sum(1 for g in goals if g.met)
    unmet = sum(1 for g in goals if g.met is False)
    line3 = (
        f"- goals of the bundled table: {met} met, {unmet} not met, "
        f"{len(goals) - met - unmet} not measured (see the rows above for why)"
    )
    return ["Summary:", line1, line2, line3]


def write_json(
    path: str,
    variants: list[VariantResult],
    http: list[HTTPResult],
    goals: list[GoalResult],
    meta: dict[str, Any],
) -> None:
    doc = {
        "meta": meta,
        "in_process": [v.to_json() for v in variants],
        "http": [r.to_json() for r in http],
        "goals": [g.to_json() for g in goals],
    }
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2, default=str)
        fh.write("\n")


def plot(
    path: str, variants: list[VariantResult], http: list[HTTPResult], goals: list[GoalResult]
) -> None:
    """Left: every goal's measured figure with its goal line; right: in-process ratios to bare."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [g for g in goals if g.measured is not None]
    timed = [v for v in variants if v.role != "bare" and v.ratio is not None]
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(16, max(6, 0.32 * max(len(measured), len(timed)) + 2))
    )
    from .goals import GOALS

    limits = {g.id: g.limit for g in GOALS}
    names = [f"{g.id} ({g.unit})" for g in measured]
    values = [g.measured or 0.0 for g in measured]
    colors = ["tab:green" if g.met else "tab:red" for g in measured]
    ys = range(len(measured))
    left.barh(list(ys), values, color=colors)
    for y, g in zip(ys, measured, strict=True):
        left.plot([limits[g.id]] * 2, [y - 0.45, y + 0.45], color="black", linewidth=2)
    left.set_yticks(list(ys), names, fontsize=7)
    left.set_xscale("log")
    left.invert_yaxis()
    left.set_title("Goals: measured (bar) vs goal (black line); green = met")

    labels = [f"{v.scenario}: {v.name}" for v in timed]
    ys2 = range(len(timed))
    right.barh(
        list(ys2),
        [v.ratio or 0.0 for v in timed],
        color=["tab:blue" if v.role == "ours" else "tab:gray" for v in timed],
    )
    right.axvline(1.0, color="black", linewidth=1)
    right.set_yticks(list(ys2), labels, fontsize=6)
    right.set_xscale("log")
    right.invert_yaxis()
    right.set_title("In-process time / bare app (blue = asgi_perf, grey = floor and peers)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
