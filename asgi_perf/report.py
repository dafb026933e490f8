"""``report_app()``: this process's statistics, as JSON or in Prometheus text format.

Mount it wherever you like (``app.mount("/__perf__", asgi_perf.report_app())``; Litestar:
``asgi("/__perf__", is_mount=True)(report_app())``). ``GET``/``HEAD`` only; any path.

- JSON (``application/json``, via orjson): ``{"pid": …, "time": <unix seconds>, "stats":
  {kind: [stats of each live instance]}}`` straight from :func:`asgi_perf.stats.snapshot`, so a
  middleware that registers appears without this module knowing it.
- Prometheus text exposition format 0.0.4 when ``?format=prometheus`` or when ``Accept`` prefers
  ``text/plain`` or ``application/openmetrics-text`` to ``application/json`` (what a Prometheus
  scraper sends). ``?format=json`` forces JSON. Timing statistics become the usual families
  (``asgi_perf_http_requests_total{method,route,status}``, a
  ``asgi_perf_http_request_duration_seconds`` summary with p50/p95/p99, …); every other
  middleware's numeric statistics become ``asgi_perf_<kind>_<key>`` gauges (nested keys joined
  with ``_``, booleans as 0/1, strings and lists left out). With several instances of one kind,
  samples carry an ``instance`` label (their registration order).

Statistics are per process: with several workers each answers for itself (the ``pid`` says
which); sum counters across scrapes, do not average percentiles.

``…/profiles`` lists the profiles the timing layer kept and ``…/profiles/<id>`` serves one (HTML,
``?format=speedscope``, ``?format=json``): :mod:`asgi_perf.timing._profiles`. Service level
objectives (kind ``slo``) become ``asgi_perf_slo_*`` families.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl

import orjson

from asgi_perf._core.asgi import (
    ASGIApp,
    Receive,
    Scope,
    Send,
    get_header,
    problem_body,
    send_response,
    serve_lifespan,
)
from asgi_perf._core.stats import snapshot

__all__ = ["PROMETHEUS_CONTENT_TYPE", "render_prometheus", "report_app", "wants_prometheus"]

PROMETHEUS_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
_PROMETHEUS_TYPES = frozenset({"text/plain", "application/openmetrics-text"})
_INVALID_NAME = re.compile(r"[^a-zA-Z0-9_:]")

Sample = tuple[str, dict[str, str], float]


def wants_prometheus(scope: Scope) -> bool:
    """``?format=`` wins; else ``Accept`` preferring text/plain (or OpenMetrics) to JSON."""
    query = scope.get("query_string") or b""
    if query:
        for key, value in parse_qsl(query.decode("latin-1")):
            if key == "format":
                return value.lower() in ("prometheus", "text", "openmetrics")
    accept = get_header(scope.get("headers") or (), b"accept")
    if not accept:
        return False
    text_q = json_q = 0.0
    for media_range in accept.decode("latin-1").split(","):
        media, *params = media_range.split(";")
        media = media.strip().lower()
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0  # RFC 9110 §12.4.2: a malformed weight is no preference
        if media in _PROMETHEUS_TYPES:
            text_q = max(text_q, q)
        elif media == "application/json":
            json_q = max(json_q, q)
    return text_q > 0 and text_q > json_q


class _Families:
    """Metric families in exposition order: name -> (type, help, samples)."""

    def __init__(self) -> None:
        self.families: dict[str, tuple[str, str, list[Sample]]] = {}

    def add(
        self, family: str, kind: str, help_: str, sample: str, labels: dict[str, str], value: float
    ) -> None:
        entry = self.families.setdefault(family, (kind, help_, []))
        entry[2].append((sample, labels, value))

    def render(self) -> bytes:
        lines: list[str] = []
        for name, (kind, help_, samples) in self.families.items():
            lines.append(f"# HELP {name} {_escape_help(help_)}")
            lines.append(f"# TYPE {name} {kind}")
            for sample, labels, value in samples:
                if labels:
                    rendered = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items())
                    lines.append(f"{sample}{{{rendered}}} {_number(value)}")
                else:
                    lines.append(f"{sample} {_number(value)}")
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


def _timing(families: _Families, stats: dict[str, Any], base: dict[str, str]) -> None:
    p = "asgi_perf_http_"
    families.add(
        p + "requests_in_flight",
        "gauge",
        "HTTP requests being processed.",
        p + "requests_in_flight",
        base,
        stats.get("in_flight", 0),
    )
    families.add(
        p + "routes_overflowed_total",
        "counter",
        "Requests counted under __overflow__ because max_routes series existed.",
        p + "routes_overflowed_total",
        base,
        stats.get("routes_overflowed", 0),
    )
    families.add(
        p + "record_failures_total",
        "counter",
        "Requests whose statistics could not be recorded (the first one is logged).",
        p + "record_failures_total",
        base,
        stats.get("record_failures", 0),
    )
    for route in stats.get("routes", ()):
        labels = {**base, "method": route["method"], "route": route["route"]}
        for status, count in route["statuses"].items():
            families.add(
                p + "requests_total",
                "counter",
                "HTTP requests by route template and status.",
                p + "requests_total",
                {**labels, "status": status},
                count,
            )
        families.add(
            p + "request_errors_total",
            "counter",
            "HTTP requests answered 5xx or failed with an exception.",
            p + "request_errors_total",
            labels,
            route["errors"],
        )
        families.add(
            p + "slow_requests_total",
            "counter",
            "HTTP requests slower than the slow-request threshold.",
            p + "slow_requests_total",
            labels,
            route["slow"],
        )
        for name, key, count, help_ in (
            ("request_duration_seconds", "duration", route["count"], "HTTP request duration."),
            (
                "time_to_first_byte_seconds",
                "ttfb",
                route["ttfb_count"],
                "Time to the first body message of streamed responses.",
            ),
        ):
            family = p + name
            summary = route[f"{key}_seconds"]
            for q in ("0.5", "0.95", "0.99"):
                value = summary[f"p{round(float(q) * 100)}"]
                if value is not None:
                    families.add(family, "summary", help_, family, {**labels, "quantile": q}, value)
            families.add(
                family, "summary", help_, family + "_sum", labels, route[f"{key}_sum_seconds"]
            )
            families.add(family, "summary", help_, family + "_count", labels, count)
        if route["duration_seconds"]["max"] is not None:
            families.add(
                p + "request_duration_max_seconds",
                "gauge",
                "Slowest HTTP request seen.",
                p + "request_duration_max_seconds",
                labels,
                route["duration_seconds"]["max"],
            )


def _slo(families: _Families, stats: dict[str, Any], base: dict[str, str]) -> None:
    """Objectives' compliance and burn rates; counters so Prometheus can compute its own."""
    p = "asgi_perf_slo_"
    for entry in stats.get("objectives", ()):
        labels = {
            **base,
            "method": entry["method"],
            "route": entry["route"],
            "objective": entry["objective"],
        }
        for name, kind, help_, value in (
            ("requests_total", "counter", "Requests counted by the objective.", "requests_total"),
            ("bad_requests_total", "counter", "Requests that broke the objective.", "bad_total"),
            ("compliance_ratio", "gauge", "Good fraction over the long window.", "compliance"),
            ("compliant", "gauge", "1 if the long window meets the objective.", "compliant"),
        ):
            if entry[value] is not None:
                families.add(p + name, kind, help_, p + name, labels, entry[value])
        for window in ("short", "long"):
            burn = entry[window]["burn_rate"]
            if burn is not None:
                families.add(
                    p + "burn_rate",
                    "gauge",
                    "Error-budget burn rate over the window (1: spent exactly on time).",
                    p + "burn_rate",
                    {**labels, "window": entry[window]["window"]},
                    burn,
                )


def _leaves(value: Any, path: tuple[str, ...]) -> Iterable[tuple[tuple[str, ...], float]]:
    if isinstance(value, bool):
        yield path, float(value)
    elif isinstance(value, int | float):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, (*path, str(key)))


def _generic(families: _Families, kind: str, stats: dict[str, Any], base: dict[str, str]) -> None:
    for path, number in _leaves(stats, ()):
        name = _metric_name("asgi_perf", kind, *path)
        families.add(
            name, "gauge", f"asgi_perf {kind} statistic {'.'.join(path)}.", name, base, number
        )


def render_prometheus(stats: dict[str, list[dict[str, Any]]]) -> bytes:
    """Prometheus text format 0.0.4 of a :func:`asgi_perf.stats.snapshot`."""
    families = _Families()
    for kind, instances in stats.items():
        for index, instance in enumerate(instances):
            base = {"instance": str(index)} if len(instances) > 1 else {}
            if kind == "timing":
                _timing(families, instance, base)
            elif kind == "slo":
                _slo(families, instance, base)
            else:
                _generic(families, kind, instance, base)
    return families.render()


def _profiles_page(scope: Scope) -> tuple[int, bytes, bytes] | None:
    """The kept-profiles pages (``…/profiles[/<id>]``), or ``None`` for any other path."""
    path = scope.get("path") or "/"
    root = scope.get("root_path") or ""
    if root and path.startswith(root):
        path = path[len(root) :]
    if "/profiles" not in path:
        return None
    from asgi_perf.timing._profiles import profiles_page

    return profiles_page(scope, path)


def report_app() -> ASGIApp:
    """A tiny ASGI app answering this process's statistics (see the module docstring)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1000})
            return
        method = scope.get("method")
        if method not in ("GET", "HEAD"):
            await send_response(
                send,
                405,
                problem_body(405, "Method Not Allowed", "The report answers GET and HEAD."),
                [(b"allow", b"GET, HEAD")],
                b"application/problem+json",
            )
            return
        profiles = _profiles_page(scope)
        if profiles is not None:
            status, body, content_type = profiles
            headers = [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode("latin-1")),
                (b"cache-control", b"no-store"),
                (b"x-content-type-options", b"nosniff"),
            ]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
            return
        if wants_prometheus(scope):
            body = render_prometheus(snapshot())
            content_type = PROMETHEUS_CONTENT_TYPE
        else:
            document = {"pid": os.getpid(), "time": time.time(), "stats": snapshot()}
            body = orjson.dumps(document, default=str, option=orjson.OPT_NON_STR_KEYS)
            content_type = b"application/json"
        length = str(len(body)).encode("latin-1")
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", content_type),
                    (b"content-length", length),
                    (b"cache-control", b"no-store"),
                    (b"vary", b"Accept"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

    return app
