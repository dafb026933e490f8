"""Prometheus exposition of the report: text format 0.0.4, or OpenMetrics 1.0.0.

- Counters are counters: ``# TYPE … counter``, samples ending in ``_total``; labels for what
  varies (:mod:`asgi_perf._report.metrics`).
- Latency is a histogram with fixed buckets (:data:`LATENCY_BUCKETS`, seconds), the same in
  every process, so buckets add up across instances and ``histogram_quantile`` works on their
  sum. The bucket counts come from the latency sketch (no per-request cost): a value counts
  below a bound by its sketch bucket, i.e. within the sketch's 0.5% relative accuracy of it.
- Every sample carries ``scope="fleet"`` (the merged figures of every live process) or
  ``scope="process"`` (this process alone), so that scraping several processes that each answer
  for the fleet shows up as what it is; see the README on scraping.
- With several instances of one kind in a process, samples carry ``index`` (their
  registration order).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

from asgi_perf._report.metrics import METRICS, Metric
from asgi_perf.timing._histogram import LatencyHistogram

__all__ = [
    "LATENCY_BUCKETS",
    "OPENMETRICS_CONTENT_TYPE",
    "PROMETHEUS_CONTENT_TYPE",
    "exposition",
]

PROMETHEUS_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = b"application/openmetrics-text; version=1.0.0; charset=utf-8"
#: Upper bounds (seconds) of the latency histograms' buckets; ``+Inf`` is added.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_INVALID_NAME = re.compile(r"[^a-zA-Z0-9_:]")

Labels = dict[str, str]


class Families:
    """Metric families in exposition order: base name -> (type, help, samples)."""

    def __init__(self, base: Labels) -> None:
        self.base = base
        self.families: dict[str, tuple[str, str, list[tuple[str, Labels, float]]]] = {}

    def add(
        self, family: str, kind: str, help_: str, labels: Labels, value: float, suffix: str = ""
    ) -> None:
        entry = self.families.setdefault(family, (kind, help_, []))
        if entry[0] == kind:  # a name two sources use differently keeps its first type
            entry[2].append((suffix, {**self.base, **labels}, value))

    def render(self, openmetrics: bool) -> bytes:
        lines: list[str] = []
        for name, (kind, help_, samples) in self.families.items():
            if not samples:
                continue
            declared = name + "_total" if kind == "counter" and not openmetrics else name
            lines.append(f"# HELP {declared} {_escape_help(help_)}")
            lines.append(f"# TYPE {declared} {kind}")
            for suffix, labels, value in samples:
                rendered = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items())
                body = f"{{{rendered}}}" if rendered else ""
                lines.append(f"{name}{suffix}{body} {_number(value)}")
        if openmetrics:
            lines.append("# EOF")
        return ("\n".join(lines) + "\n").encode("utf-8") if lines else b""


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if isinstance(value, int) or value.is_integer():
        return str(int(value))
    return repr(float(value))


def _metric_name(*parts: str) -> str:
    name = _INVALID_NAME.sub("_", "_".join(p for p in parts if p))
    return name if not name[:1].isdigit() else "_" + name


def _histogram(
    families: Families, family: str, help_: str, labels: Labels, sketch: LatencyHistogram
) -> None:
    counts = sketch.cumulative(list(LATENCY_BUCKETS))
    for bound, count in zip(LATENCY_BUCKETS, counts, strict=True):
        families.add(family, "histogram", help_, {**labels, "le": repr(bound)}, count, "_bucket")
    total = sketch.count
    families.add(family, "histogram", help_, {**labels, "le": "+Inf"}, total, "_bucket")
    families.add(family, "histogram", help_, labels, total, "_count")
    families.add(family, "histogram", help_, labels, sketch.sum if total else 0.0, "_sum")


def _timing(families: Families, state: dict[str, Any], labels: Labels) -> None:
    """Long because it is a list: one family per timing figure, in exposition order."""
    p = "asgi_perf_http_"
    families.add(
        p + "requests_in_flight",
        "gauge",
        "HTTP requests being processed.",
        labels,
        state.get("in_flight") or 0,
    )
    for key, name, help_ in (
        (
            "routes_overflowed",
            "routes_overflowed",
            "Requests counted under __overflow__ because max_routes series existed.",
        ),
        (
            "record_failures",
            "record_failures",
            "Requests whose statistics could not be recorded (the first one is logged).",
        ),
    ):
        families.add(p + name, "counter", help_, labels, state.get(key) or 0, "_total")
    for route in state.get("routes", ()):
        series = {**labels, "method": route["method"], "route": route["route"]}
        for status, count in sorted(route["statuses"].items()):
            families.add(
                p + "requests",
                "counter",
                "HTTP requests by method, route template and status.",
                {**series, "status": status},
                count,
                "_total",
            )
        families.add(
            p + "request_errors",
            "counter",
            "HTTP requests answered 5xx or failed with an exception.",
            series,
            route["errors"],
            "_total",
        )
        families.add(
            p + "slow_requests",
            "counter",
            "HTTP requests slower than the slow-request threshold.",
            series,
            route["slow"],
            "_total",
        )
        _histogram(
            families,
            p + "request_duration_seconds",
            "HTTP request duration, to the last body message.",
            series,
            LatencyHistogram.from_state(route["duration"]),
        )
        ttfb = LatencyHistogram.from_state(route["ttfb"])
        if ttfb.count:
            _histogram(
                families,
                p + "time_to_first_byte_seconds",
                "Time to the first body message of streamed responses.",
                series,
                ttfb,
            )


def _lookup(stats: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = stats
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _table(
    families: Families, metrics: list[Metric], stats: dict[str, Any], labels: Labels
) -> None:
    for metric in metrics:
        value = _lookup(stats, metric.path)
        family = "asgi_perf_" + metric.family
        suffix = "_total" if metric.type == "counter" else ""
        fixed = {**labels, **dict(metric.labels)}
        if metric.by is None:
            points = [(fixed, value)]
        elif isinstance(value, dict):
            points = [
                (
                    {**fixed, metric.by: str(key)},
                    item.get(metric.field) if metric.field and isinstance(item, dict) else item,
                )
                for key, item in value.items()
            ]
        else:
            points = []
        for point_labels, number in points:
            if isinstance(number, bool | int | float):
                scaled = float(number) * metric.scale if metric.scale != 1.0 else number
                families.add(family, metric.type, metric.help, point_labels, scaled, suffix)


def _leaves(value: Any, path: tuple[str, ...]) -> Iterable[tuple[tuple[str, ...], float]]:
    if isinstance(value, bool):
        yield path, float(value)
    elif isinstance(value, int | float):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, (*path, str(key)))


def _slo(families: Families, stats: dict[str, Any], labels: Labels) -> None:
    """Objectives' compliance and burn rates; counters so Prometheus can compute its own."""
    p = "asgi_perf_slo_"
    for entry in stats.get("objectives", ()):
        own = {
            **labels,
            "method": entry["method"],
            "route": entry["route"],
            "objective": entry["objective"],
        }
        for name, kind, help_, value in (
            ("requests", "counter", "Requests counted by the objective.", "requests_total"),
            ("bad_requests", "counter", "Requests that broke the objective.", "bad_total"),
            ("compliance_ratio", "gauge", "Good fraction over the long window.", "compliance"),
            ("compliant", "gauge", "1 if the long window meets the objective.", "compliant"),
        ):
            if entry[value] is not None:
                suffix = "_total" if kind == "counter" else ""
                families.add(p + name, kind, help_, own, float(entry[value]), suffix)
        for window in ("short", "long"):
            burn = entry[window]["burn_rate"]
            if burn is not None:
                families.add(
                    p + "burn_rate",
                    "gauge",
                    "Error-budget burn rate over the window (1: spent exactly on time).",
                    {**own, "window": entry[window]["window"]},
                    burn,
                )


def _generic(families: Families, kind: str, stats: dict[str, Any], labels: Labels) -> None:
    for path, number in _leaves(stats, ()):
        name = _metric_name("asgi_perf", kind, *path)
        families.add(name, "gauge", f"asgi_perf {kind} statistic {'.'.join(path)}.", labels, number)


def exposition(
    states: dict[str, list[dict[str, Any]]],
    *,
    scope: str = "process",
    instances: int = 1,
    openmetrics: bool = False,
) -> bytes:
    """The exposition of mergeable statistics (:func:`asgi_perf._core.stats.states`)."""
    families = Families({"scope": scope})
    families.add(
        "asgi_perf_report_instances",
        "gauge",
        "Processes whose statistics these are.",
        {},
        instances,
    )
    for kind, entries in states.items():
        for index, stats in enumerate(entries):
            labels = {"index": str(index)} if len(entries) > 1 else {}
            if kind == "timing":
                _timing(families, stats, labels)
            elif kind == "slo":
                _slo(families, stats, labels)
            elif kind in METRICS:
                _table(families, METRICS[kind], stats, labels)
            else:
                _generic(families, kind, stats, labels)
    return families.render(openmetrics)
