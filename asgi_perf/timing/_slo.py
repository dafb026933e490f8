"""Service level objectives per route: compliance and multi-window error-budget burn rates.

``ASGI_PERF_SLO`` / ``slos=``, e.g.
``GET /items/{id}: p95<200ms, errors<0.5%; POST /orders: p99<1s``:

- A **latency** objective ``pNN<duration`` says NN% of requests finish faster than the
  duration: a request at or over it is a *bad* event, and the error budget is ``1 - NN%``.
- An **availability** objective ``errors<N%`` says fewer than N% of requests fail (5xx, or an
  exception): a failure is a bad event, the budget is N%.
- ``<=`` instead of ``<`` makes the bound inclusive. Without a method the objective covers every
  method of the route together. Route placeholders match whatever their names
  (``/items/{id}`` is FastAPI's ``/items/{item_id}``).

For each objective the tracker counts requests and bad events in time buckets and reports, over
a short and a long window (default 5 minutes and 1 hour, ``ASGI_PERF_SLO_WINDOWS``), the bad
ratio and the **burn rate** (bad ratio / budget: 1 spends the budget exactly at the rate the
objective allows; SRE practice alerts when both windows burn fast). ``compliant`` is the long
window's verdict, ``None`` while it saw no request. Counting costs nothing for routes without
an objective: the series is matched once, when it is created, not per request.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from asgi_perf._core.config import ConfigError, to_duration
from asgi_perf._core.routes import KNOWN_METHODS
from asgi_perf._core.stats import register

__all__ = ["Objective", "RouteObjectives", "SloTracker", "parse_slo_windows", "parse_slos"]

EXAMPLE = "'GET /items/{id}: p95<200ms, errors<0.5%; POST /orders: p99<1s'"
_LATENCY = re.compile(r"^p(\d+(?:\.\d+)?)\s*(<=?)\s*(\S+)$", re.IGNORECASE)
_ERRORS = re.compile(r"^errors\s*(<=?)\s*(\d+(?:\.\d+)?|\.\d+)\s*%$", re.IGNORECASE)
_PLACEHOLDER = re.compile(r"\{[^{}]*\}")
MAX_BUCKETS = 720  # per route spec: the long window is at most this many buckets


@dataclass(frozen=True, slots=True)
class Objective:
    """One objective of one route: ``budget`` is the bad fraction allowed (0.05, 0.005)."""

    method: str | None  # None: every method of the route
    route: str
    text: str  # as normalised for reports: "p95<200ms", "errors<0.5%"
    kind: str  # "latency" | "errors"
    budget: float
    threshold: float | None = None  # seconds, latency objectives only
    inclusive: bool = False  # "<=": a value equal to the bound is still good

    @property
    def target(self) -> float:
        """The good fraction required (0.95 for ``p95<…``)."""
        return 1.0 - self.budget

    def met_by(self, bad_ratio: float) -> bool:
        """Whether a bad-event ratio keeps the objective: ``p95<200ms`` allows 5% of requests
        at 200 ms or more; ``errors<1%`` needs fewer than 1% failures (``<=``: at most)."""
        if self.kind == "errors" and not self.inclusive:
            return bad_ratio < self.budget
        return bad_ratio <= self.budget


def _bad(name: str, fragment: str, accepted: str) -> ConfigError:
    return ConfigError(name, fragment, f"{accepted}, as in {EXAMPLE}")


def _percent(text: str) -> str:
    return f"{float(text):g}"


def _objective(method: str | None, route: str, text: str, name: str) -> Objective:
    compact = re.sub(r"\s+", "", text)
    latency = _LATENCY.match(compact)
    if latency is not None:
        pct, op, raw = latency.groups()
        quantile = float(pct)
        if not 0 < quantile < 100:
            raise _bad(name, text, "a percentile strictly between 0 and 100 (p50, p95, p99.9)")
        try:
            seconds = to_duration(raw, name)
        except ConfigError:
            raise _bad(name, text, "a latency bound with a unit: 200ms, 1s, 1.5s") from None
        if seconds <= 0:
            raise _bad(name, text, "a latency bound above zero")
        budget = round((100 - quantile) / 100, 12)  # p99.9: 0.001, not 0.000999…
        text = f"p{_percent(pct)}{op}{raw}"
        return Objective(method, route, text, "latency", budget, seconds, op == "<=")
    errors = _ERRORS.match(compact)
    if errors is not None:
        op, pct = errors.groups()
        budget = float(pct)
        if not 0 < budget < 100:
            raise _bad(name, text, "an error budget strictly between 0% and 100% (errors<0.5%)")
        return Objective(
            method, route, f"errors{op}{_percent(pct)}%", "errors", budget / 100, None, op == "<="
        )
    raise _bad(
        name, text, "an objective: pNN<duration (p95<200ms, p99.9<1s) or errors<N% (errors<1%)"
    )


def _route_part(part: str, name: str) -> tuple[str | None, str]:
    words = part.split()
    if len(words) == 2:
        method, route = words[0].upper(), words[1]
        if method not in KNOWN_METHODS:
            methods = ", ".join(sorted(KNOWN_METHODS))
            raise _bad(name, part, f"an HTTP method ({methods}) or none")
    elif len(words) == 1:
        method, route = None, words[0]
    else:
        raise _bad(name, part, "'[METHOD] /route/template' before the ':'")
    if not route.startswith("/"):
        raise _bad(name, part, "a route template starting with '/'")
    return method, route


def parse_slos(value: object, name: str = "slos") -> tuple[Objective, ...]:
    """Objectives from ``'[METHOD] /route: objective, …; …'`` or a mapping route -> objectives.

    A pure function: every mistake is a :class:`ConfigError` naming ``name`` and the part that
    is wrong. Empty input means no objectives.
    """
    if isinstance(value, Mapping):
        items = [(str(k), v if isinstance(v, str) else ", ".join(v)) for k, v in value.items()]
    elif isinstance(value, str):
        items = []
        for chunk in value.split(";"):
            if not chunk.strip():
                continue
            route, colon, objectives = chunk.partition(":")
            if not colon:
                accepted = "'[METHOD] /route: objective, …' (a ':' is missing)"
                raise _bad(name, chunk.strip(), accepted)
            items.append((route, objectives))
    else:
        accepted = f"a string such as {EXAMPLE}, or a mapping route -> objectives"
        raise ConfigError(name, value, accepted)
    out: list[Objective] = []
    seen: set[tuple[str | None, str, str]] = set()
    for route_part, objectives in items:
        method, route = _route_part(route_part.strip(), name)
        texts = [t.strip() for t in objectives.split(",") if t.strip()]
        if not texts:
            raise _bad(name, route_part.strip(), "at least one objective after the ':'")
        for text in texts:
            objective = _objective(method, route, text, name)
            key = (method, _PLACEHOLDER.sub("{}", route), objective.text.split("<")[0])
            if key in seen:
                raise _bad(name, text, "each objective once per route")
            seen.add(key)
            out.append(objective)
    return tuple(out)


def parse_slo_windows(value: object, name: str = "slo_windows") -> tuple[float, float]:
    """``'5m,1h'`` (or a pair of seconds): the short and the long window, short < long."""
    accepted = "two durations 'short,long' with short < long, e.g. '5m,1h'"
    parts: list[object]
    if isinstance(value, str):
        parts = [p for p in value.split(",") if p.strip()]
    elif isinstance(value, Iterable):
        parts = list(value)
    else:
        raise ConfigError(name, value, accepted)
    if len(parts) != 2:
        raise ConfigError(name, value, accepted)
    try:
        short, long = (to_duration(p, name) for p in parts)
    except ConfigError:
        raise ConfigError(name, value, accepted) from None
    if not 0 < short < long:
        raise ConfigError(name, value, accepted)
    return short, long


def window_label(seconds: float) -> str:
    """``300`` -> ``5m``: the label of a window in the report and Prometheus."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


class RouteObjectives:
    """The objectives of one route spec: requests and bad events per time bucket."""

    __slots__ = ("_bad", "_epoch", "_total", "bad_total", "objectives", "requests", "width")

    def __init__(self, objectives: list[Objective], width: float, buckets: int) -> None:
        self.objectives = objectives
        self.width = width
        self._epoch = [-1] * buckets
        self._total = [0] * buckets
        self._bad = [[0] * buckets for _ in objectives]
        self.requests = 0
        self.bad_total = [0] * len(objectives)

    def record(self, now: float, duration: float, failed: bool) -> None:
        """Count one finished request (``now`` on the middleware's clock)."""
        index = int(now // self.width)
        slot = index % len(self._epoch)
        if self._epoch[slot] != index:
            self._epoch[slot] = index
            self._total[slot] = 0
            for counts in self._bad:
                counts[slot] = 0
        self._total[slot] += 1
        self.requests += 1
        for i, objective in enumerate(self.objectives):
            bound = objective.threshold
            if bound is None:
                bad = failed
            elif objective.inclusive:
                bad = duration > bound
            else:
                bad = duration >= bound
            if bad:
                self._bad[i][slot] += 1
                self.bad_total[i] += 1

    def window(self, now: float, seconds: float) -> tuple[int, list[int]]:
        """Requests and bad events per objective in the last ``seconds``."""
        newest = int(now // self.width)
        oldest = newest - max(1, math.ceil(seconds / self.width)) + 1
        total = 0
        bad = [0] * len(self.objectives)
        for slot, index in enumerate(self._epoch):
            if oldest <= index <= newest:
                total += self._total[slot]
                for i, counts in enumerate(self._bad):
                    bad[i] += counts[slot]
        return total, bad


class SloTracker:
    """Every objective of one ``TimingMiddleware``; reported under the ``slo`` kind."""

    def __init__(
        self,
        objectives: tuple[Objective, ...],
        windows: tuple[float, float],
        clock: Callable[[], float],
    ) -> None:
        self.windows = windows
        self._clock = clock
        short, long = windows
        width = max(short / 10, long / MAX_BUCKETS)
        buckets = math.ceil(long / width) + 1
        specs: dict[tuple[str | None, str], list[Objective]] = {}
        for objective in objectives:
            key = (objective.method, _PLACEHOLDER.sub("{}", objective.route))
            specs.setdefault(key, []).append(objective)
        self._specs = {key: RouteObjectives(objs, width, buckets) for key, objs in specs.items()}
        register("slo", self)

    def for_series(self, method: str, template: str) -> tuple[RouteObjectives, ...] | None:
        """The objectives a new ``(method, template)`` series counts into, or ``None``."""
        shape = _PLACEHOLDER.sub("{}", template)
        found = tuple(
            spec
            for (spec_method, route), spec in self._specs.items()
            if route == shape and spec_method in (None, method)
        )
        return found or None

    def stats(self) -> dict[str, Any]:
        now = self._clock()
        short, long = self.windows
        labels = {"short": window_label(short), "long": window_label(long)}
        out: list[dict[str, Any]] = []
        for spec in self._specs.values():
            windows = {"short": spec.window(now, short), "long": spec.window(now, long)}
            for i, objective in enumerate(spec.objectives):
                entry: dict[str, Any] = {
                    "method": objective.method or "*",
                    "route": objective.route,
                    "objective": objective.text,
                    "kind": objective.kind,
                    "target": objective.target,
                    "threshold_seconds": objective.threshold,
                    "requests_total": spec.requests,
                    "bad_total": spec.bad_total[i],
                }
                for name, (total, bad) in windows.items():
                    ratio = bad[i] / total if total else None
                    entry[name] = {
                        "window": labels[name],
                        "requests": total,
                        "bad": bad[i],
                        "bad_ratio": ratio,
                        "burn_rate": None if ratio is None else ratio / objective.budget,
                    }
                long_ratio = entry["long"]["bad_ratio"]
                entry["compliance"] = None if long_ratio is None else 1.0 - long_ratio
                entry["compliant"] = None if long_ratio is None else objective.met_by(long_ratio)
                out.append(entry)
        return {"windows": labels, "objectives": out}
