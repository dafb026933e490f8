"""The fleet's statistics from the statistics of its processes.

Counters add up; latency sketches merge bucket by bucket, which is exact, so the fleet's p99 is
within the sketch's relative accuracy of the p99 of every request any process saw; a configured
figure (a threshold, a bound) is kept once; a ratio is recomputed from the merged counts. Rows of
a list (the N+1 findings) that name the same thing become one row with their numbers added.

Instances of one kind are matched by registration order: every process of a fleet runs the same
app, so its second ``cache`` middleware is the others' second one too.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from asgi_perf.timing._series import RouteStats, timing_document

__all__ = ["combine", "documents", "merge"]

States = dict[str, list[dict[str, Any]]]

#: Configuration echoed in the statistics: the same in every process, never summed.
SETTINGS = frozenset({"max_entries", "max_bytes", "n_plus_one_threshold", "slow_threshold_seconds"})
#: A ratio and the counts it is made of: (numerator keys, denominator keys).
RATIOS = {"hit_ratio": (("hits", "stale_hits"), ("hits", "stale_hits", "misses"))}


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def combine(values: Iterable[Any], key: str = "") -> Any:
    """One value standing for ``values`` (the same leaf in several processes)."""
    present = [value for value in values if value is not None]
    if not present:
        return None
    first = present[0]
    if key in SETTINGS:
        return first
    if all(isinstance(value, bool) for value in present):
        return any(present)  # "down", "open": true if any process says so
    if all(_is_number(value) for value in present):
        return sum(present)
    if all(isinstance(value, dict) for value in present):
        return _combine_dicts(present)
    if all(isinstance(value, list) for value in present):
        return _combine_lists(present)
    if all(value == first for value in present):
        return first
    return sorted({str(value) for value in present})  # processes disagree: show every value


def _combine_dicts(dicts: list[dict[str, Any]]) -> dict[str, Any]:
    keys = list(dict.fromkeys(key for d in dicts for key in d))
    out = {key: combine((d.get(key) for d in dicts), key) for key in keys}
    for ratio, (numerator, denominator) in RATIOS.items():
        if ratio in out and all(_is_number(out.get(k)) for k in denominator):
            total = sum(out[k] for k in denominator)
            out[ratio] = sum(out[k] for k in numerator) / total if total else 0.0
    return out


def _combine_lists(lists: list[list[Any]]) -> list[Any]:
    items = [item for items in lists for item in items]
    if items and all(isinstance(item, dict) for item in items):
        rows: dict[bytes, list[dict[str, Any]]] = {}
        for row in items:
            identity = {k: v for k, v in row.items() if not _is_number(v)}
            rows.setdefault(orjson.dumps(identity, option=orjson.OPT_SORT_KEYS), []).append(row)
        merged = [_combine_dicts(group) for group in rows.values()]
        merged.sort(key=lambda row: [-v for v in row.values() if _is_number(v)])
        return merged
    if all(items == lists[0] for items in lists):
        return lists[0]
    seen: dict[bytes, Any] = {}
    for item in items:
        seen.setdefault(orjson.dumps(item), item)
    return list(seen.values())


def _merge_timing(states: list[dict[str, Any]]) -> dict[str, Any]:
    scalars = _combine_dicts([{k: v for k, v in s.items() if k != "routes"} for s in states])
    routes: dict[tuple[str, str], RouteStats] = {}
    for state in states:
        for route in state.get("routes", ()):
            key = (route["method"], route["route"])
            series = RouteStats.from_state(route)
            if key in routes:
                routes[key].merge(series)
            else:
                routes[key] = series
    return {
        **scalars,
        "routes": [series.state(method, route) for (method, route), series in routes.items()],
    }


def merge(processes: list[States]) -> States:
    """The fleet's mergeable statistics from each process's (as :func:`stats.states` gives)."""
    kinds = list(dict.fromkeys(kind for states in processes for kind in states))
    out: States = {}
    for kind in kinds:
        lists = [states.get(kind, []) for states in processes]
        merged = []
        for index in range(max(len(instances) for instances in lists)):
            column = [instances[index] for instances in lists if index < len(instances)]
            merged.append(_merge_timing(column) if kind == "timing" else _combine_dicts(column))
        out[kind] = merged
    return out


def documents(states: States) -> States:
    """The report's JSON ``stats``: each instance as its ``stats()`` would show it."""
    out: States = {}
    for kind, instances in states.items():
        if kind != "timing":
            out[kind] = instances
            continue
        out[kind] = [
            timing_document(
                {k: v for k, v in state.items() if k != "routes"},
                (
                    ((route["method"], route["route"]), RouteStats.from_state(route))
                    for route in state["routes"]
                ),
            )
            for state in instances
        ]
    return out
