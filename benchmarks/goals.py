"""The project's performance goals, one row per checkable figure, and how each is
computed from the measurements of the same run.

Kinds of figure:
- ``overhead_ratio``: our overhead (time added to the bare app) / the peer's overhead;
- ``time_ratio``: our total time per request / the peer's;
- ``floors``: our overhead / the floor middleware's overhead (in-process, same scenario);
- ``ping``: our overhead / the ``PING`` floor's overhead (one Redis round trip), same scenario;
- ``round_trips``: Redis round trips per request, exactly; ``round_trips_max``: at most;
- ``calls``: Python calls per request beyond the bare app's (deterministic);
- ``size_ratio``: our output bytes / the peer's;
- ``rps_ratio``: requests/second over HTTP / the bare app's, same run;
- ``rps_vs``: requests/second over HTTP / another configuration's, same run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from .http import HTTPResult
from .inprocess import VariantResult

__all__ = ["GOALS", "Goal", "GoalResult", "evaluate", "hint", "meets"]


@dataclass(frozen=True)
class Goal:
    id: str
    scenario: str  # the row of the spec's table
    goal: str
    kind: str
    limit: float
    at_most: bool  # measured ≤ limit (else ≥)
    where: str  # in-process scenario id, or "http"
    ours: str  # variant / config name
    other: str = ""  # the peer or reference variant
    #: rps_vs: an HTTP configuration with no middleware at all, doing only what the app does;
    #: its requests/s over ``other``'s is the most any stack could reach (shown beside)
    ceiling: str = ""
    #: overhead_ratio: a variant of the same scenario doing only the work no middleware can
    #: skip (the codec's call on the same bytes, the OpenTelemetry SDK's calls); its overhead
    #: over ``other``'s is the least any middleware could reach (shown beside)
    reference: str = ""


@dataclass
class GoalResult:
    id: str
    scenario: str
    goal: str
    measured: float | None
    unit: str
    met: bool | None  # None: could not be measured
    detail: str
    hint: str = ""  # for a goal not measured: the flag that measures it

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


G, B, Z = "asgi_perf gzip", "asgi_perf br", "asgi_perf zstd"
STACK = "asgi_perf full stack"
STACK_SHAPES = (
    ("query", "new query each time", "stack-memory"),
    ("path", "new path id each time", "stack-memory-paths"),
)
#: benchmarks.md's call budgets: (scenario, row, variant, Python calls per request at most).
CALL_BUDGETS = (
    ("compress-skip-tiny", "compression not applied (200 B)", "asgi_perf compression", 5),
    ("compress-skip-noae", "compression not applied (no A-E)", "asgi_perf compression", 5),
    ("ratelimit-allow-raw", "rate limit, memory store", "asgi_perf fixed-window", 12),
    ("cache-hit-memory", "cache hit, memory store", "asgi_perf cache hit", 10),
    ("cache-miss-memory", "cache miss then store, memory store", "asgi_perf cache miss", 60),
    ("dedup-memory", "dedup, non-duplicate, memory store", "asgi_perf dedup", 20),
    ("timing", "timing without OpenTelemetry", "asgi_perf timing", 12),
    ("queries", "query middleware, no queries", "asgi_perf queries", 5),
    ("stack-memory", "full stack, new query each time", STACK, 80),
    ("stack-memory-paths", "full stack, new path id each time", STACK, 80),
)
GOALS: list[Goal] = [
    Goal(
        "gzip-time",
        "compression, 12 KB JSON, gzip",
        "≤ 0.6 x Starlette GZipMiddleware(6) time",
        "overhead_ratio",
        0.6,
        True,
        "compress-12k-gzip",
        G,
        "Starlette GZipMiddleware(6)",
        reference="gzip codec alone",
    ),
    Goal(
        "gzip-size",
        "compression, 12 KB JSON, gzip",
        "output within 3% of GZipMiddleware(6)'s size",
        "size_ratio",
        1.03,
        True,
        "compress-12k-gzip",
        G,
        "Starlette GZipMiddleware(6)",
    ),
    Goal(
        "zstd-time",
        "compression, 12 KB JSON, zstd",
        "≤ 0.6 x starlette-compress, zstd level 3",
        "overhead_ratio",
        0.6,
        True,
        "compress-12k-zstd",
        Z,
        "starlette-compress zstd",
        reference="zstd codec alone",
    ),
    Goal(
        "br-time",
        "compression, 12 KB JSON, br",
        "≤ 0.9 x starlette-compress, brotli quality 4",
        "overhead_ratio",
        0.9,
        True,
        "compress-12k-br",
        B,
        "starlette-compress br",
        reference="br codec alone",
    ),
    Goal(
        "gzip-beyond-codec",
        "compression applied, 12 KB JSON, gzip",
        "time beyond the codec's own call on the same bytes ≤ 3 floors",
        "beyond_floors",
        3.0,
        True,
        "compress-12k-gzip",
        G,
        "gzip codec alone",
    ),
    Goal(
        "zstd-beyond-codec",
        "compression applied, 12 KB JSON, zstd",
        "time beyond the codec's own call on the same bytes ≤ 3 floors",
        "beyond_floors",
        3.0,
        True,
        "compress-12k-zstd",
        Z,
        "zstd codec alone",
    ),
    Goal(
        "br-beyond-codec",
        "compression applied, 12 KB JSON, br",
        "time beyond the codec's own call on the same bytes ≤ 3 floors",
        "beyond_floors",
        3.0,
        True,
        "compress-12k-br",
        B,
        "br codec alone",
    ),
    # Compression dictionaries (issue 20): dcz against plain zstd of the same versions.
    Goal(
        "dcz-size",
        "dictionaries, 12 KB JSON polled, versions ~2% apart",
        "dcz ≤ 0.25 x plain zstd's bytes (same version)",
        "size_ratio",
        0.25,
        True,
        "dict-poll-new",
        "asgi_perf dcz",
        Z,
    ),
    Goal(
        "dcz-time-new",
        "dictionaries, polled 12 KB JSON, every dictionary new to the worker",
        "dcz ≤ 1.5 x plain zstd's time (overhead over the bare app)",
        "overhead_ratio",
        1.5,
        True,
        "dict-poll-new",
        "asgi_perf dcz",
        Z,
    ),
    Goal(
        "dcz-time-shared",
        "dictionaries, polled 12 KB JSON, dictionaries shared by many clients",
        "dcz ≤ 1.5 x plain zstd's time (overhead over the bare app)",
        "overhead_ratio",
        1.5,
        True,
        "dict-poll-shared",
        "asgi_perf dcz",
        Z,
    ),
    Goal(
        "br-vs-brotli-asgi",
        "compression, 12 KB JSON, br",
        "≤ 1.0 x brotli-asgi, quality 4",
        "overhead_ratio",
        1.0,
        True,
        "compress-12k-br",
        B,
        "brotli-asgi",
        reference="br codec alone",
    ),
    Goal(
        "compress-skip-tiny",
        "compression not applied (200 B body), in-process",
        "overhead ≤ 1.5 floors",
        "floors",
        1.5,
        True,
        "compress-skip-tiny",
        "asgi_perf compression",
    ),
    Goal(
        "compress-skip-noae",
        "compression not applied (no Accept-Encoding), in-process",
        "overhead ≤ 1.5 floors",
        "floors",
        1.5,
        True,
        "compress-skip-noae",
        "asgi_perf compression",
    ),
    Goal(
        "ratelimit-vs-asgi-ratelimit",
        "rate limit, memory store, in-process",
        "≤ 0.5 x asgi-ratelimit (memory backend)",
        "overhead_ratio",
        0.5,
        True,
        "ratelimit-allow-raw",
        "asgi_perf fixed-window",
        "asgi-ratelimit",
    ),
    Goal(
        "ratelimit-vs-slowapi",
        "rate limit, memory store, in-process",
        "≤ 0.1 x slowapi",
        "overhead_ratio",
        0.1,
        True,
        "ratelimit-allow-memory",
        "asgi_perf fixed-window",
        "slowapi (ASGI middleware)",
    ),
    Goal(
        "ratelimit-redis-time",
        "rate limit, Redis store",
        "≤ 1.3 x one Redis PING round trip over the bare app",
        "ping",
        1.3,
        True,
        "ratelimit-allow-redis",
        "asgi_perf fixed-window",
        "Redis PING floor",
    ),
    Goal(
        "ratelimit-redis-trips",
        "rate limit, Redis store",
        "exactly 1 round trip per check",
        "round_trips",
        1.0,
        True,
        "ratelimit-allow-redis",
        "asgi_perf fixed-window",
    ),
    Goal(
        "cache-hit-floors",
        "cache hit, memory store, in-process",
        "overhead ≤ 1.5 floors",
        "floors",
        1.5,
        True,
        "cache-hit-memory",
        "asgi_perf cache hit",
    ),
    Goal(
        "cache-hit-vs-fastapi-cache2",
        "cache hit, memory store, in-process",
        "≤ 0.5 x fastapi-cache2 hit, same FastAPI route",
        "time_ratio",
        0.5,
        True,
        "cache-hit-fastapi",
        "asgi_perf cache hit",
        "fastapi-cache2 hit (InMemoryBackend)",
    ),
    Goal(
        "cache-hit-redis-trips",
        "cache hit, Redis store",
        "one round trip",
        "round_trips",
        1.0,
        True,
        "cache-hit-redis",
        "asgi_perf cache hit",
    ),
    Goal(
        "dedup-floors",
        "dedup, non-duplicate request, memory store, in-process",
        "overhead ≤ 4 floors",
        "floors",
        4.0,
        True,
        "dedup-memory",
        "asgi_perf dedup",
    ),
    Goal(
        "timing-floors",
        "timing without OpenTelemetry, in-process",
        "overhead ≤ 2 floors",
        "floors",
        2.0,
        True,
        "timing",
        "asgi_perf timing",
    ),
    Goal(
        "timing-otel",
        "timing with OpenTelemetry SDK on",
        "overhead ≤ 0.15 x opentelemetry-instrumentation-asgi",
        "overhead_ratio",
        0.15,
        True,
        "timing-otel",
        "asgi_perf timing + OTel SDK",
        "opentelemetry-instrumentation-asgi",
        reference="OpenTelemetry SDK calls alone",
    ),
    Goal(
        "queries-floors",
        "query middleware, request with no queries, in-process",
        "overhead ≤ 2 floors",
        "floors",
        2.0,
        True,
        "queries",
        "asgi_perf queries",
    ),
    Goal(
        "cache-miss-floors",
        "cache miss then store, memory store, in-process",
        "overhead ≤ 8 floors",
        "floors",
        8.0,
        True,
        "cache-miss-memory",
        "asgi_perf cache miss",
    ),
    Goal(
        "cache-miss-redis-trips",
        "cache miss then store, Redis store",
        "≤ 2 round trips",
        "round_trips_max",
        2.0,
        True,
        "cache-miss-redis",
        "asgi_perf cache miss",
    ),
    Goal(
        "dedup-redis-trips",
        "dedup, non-duplicate request, Redis store",
        "1 round trip",
        "round_trips",
        1.0,
        True,
        "dedup-redis",
        "asgi_perf dedup",
    ),
    *[
        Goal(
            f"stack-floors-{shape}",
            f"full stack, never-repeated no-store request ({what}), memory, in-process",
            "overhead ≤ 12 floors",
            "floors",
            12.0,
            True,
            sid,
            "asgi_perf full stack",
        )
        for shape, what, sid in STACK_SHAPES
    ],
    Goal(
        "stack-redis-miss-trips",
        "full stack, Redis store, no-store miss",
        "≤ 2 round trips",
        "round_trips_max",
        2.0,
        True,
        "stack-redis",
        "asgi_perf full stack",
    ),
    Goal(
        "stack-redis-hit-trips",
        "full stack, Redis store, cache hit",
        "1 round trip",
        "round_trips",
        1.0,
        True,
        "stack-redis-hit",
        "asgi_perf full stack",
    ),
    *[
        Goal(f"calls-{sid}", title, f"≤ {limit} calls", "calls", limit, True, sid, name)
        for sid, title, name, limit in CALL_BUDGETS
    ],
    *[
        Goal(
            f"http-{name}",
            f"{name} alone, passthrough, over HTTP (uvicorn, 200 B)",
            "≥ 0.95 x bare requests/s",
            "rps_ratio",
            0.95,
            False,
            "http",
            name,
        )
        for name in ("compression", "ratelimit", "dedup", "cache", "timing", "queries")
    ],
    *[
        Goal(
            f"http-{name}-paths",
            f"{name} alone, passthrough, new path id each time, over HTTP (uvicorn, 200 B)",
            "≥ 0.95 x bare requests/s",
            "rps_ratio",
            0.95,
            False,
            "http",
            f"{name}-paths",
        )
        for name in ("dedup", "cache")
    ],
    Goal(
        "http-stack",
        "full stack, recommended order, memory store, new query each time, over HTTP",
        "≥ 0.8 x bare requests/s",
        "rps_ratio",
        0.8,
        False,
        "http",
        "stack",
    ),
    Goal(
        "http-vs-peer-stack",
        "full stack vs the peer stack doing the same jobs (FastAPI, OTel on), over HTTP",
        "≥ 3 x the peer stack's requests/s",
        "rps_vs",
        3.0,
        False,
        "http",
        "fastapi-stack",
        "fastapi-peer-stack",
        "fastapi-bare",
    ),
    Goal(
        "http-stack-paths",
        "full stack, recommended order, memory store, new path id each time, over HTTP",
        "≥ 0.8 x bare requests/s",
        "rps_ratio",
        0.8,
        False,
        "http",
        "stack-paths",
    ),
]

UNITS = {
    "overhead_ratio": "x peer overhead",
    "time_ratio": "x peer time",
    "floors": "floors",
    "beyond_floors": "floors",
    "ping": "x PING",
    "round_trips": "round trips",
    "round_trips_max": "round trips",
    "calls": "calls",
    "size_ratio": "x peer size",
    "rps_ratio": "x bare req/s",
    "rps_vs": "x peer req/s",
}


def evaluate(
    goals: list[Goal], variants: list[VariantResult], http: list[HTTPResult]
) -> list[GoalResult]:
    index = {(v.scenario, v.name): v for v in variants}
    http_index = {r.config: r for r in http if r.server == "uvicorn"}
    out = []
    for goal in goals:
        try:
            value, detail = _measure(goal, index, http_index)
        except _Missing as exc:
            value, detail = None, str(exc)
        out.append(
            GoalResult(
                goal.id,
                goal.scenario,
                goal.goal,
                value,
                UNITS[goal.kind],
                meets(goal, value),
                detail,
                hint(goal) if value is None else "",
            )
        )
    return out


def meets(goal: Goal, value: float | None) -> bool | None:
    """Whether ``value`` meets ``goal`` (``None``: not measured); an exact count of round
    trips is met within 0.05 of it."""
    if value is None:
        return None
    if goal.kind == "round_trips":
        return abs(value - goal.limit) < 0.05
    return value <= goal.limit if goal.at_most else value >= goal.limit


def hint(goal: Goal) -> str:
    """What to run so that ``goal`` is measured."""
    if goal.where == "http":
        return f"HTTP: without --no-http, with {goal.ours} in --configs"
    if "redis" in goal.where:
        return "run with --redis URL"
    if goal.other and goal.kind in ("overhead_ratio", "time_ratio", "size_ratio"):
        return "run with --peers"
    return f"run with --only {goal.where}"


class _Missing(Exception):
    pass


def _get(index: dict[Any, Any], key: Any, label: str) -> Any:
    item = index.get(key)
    if item is None:
        raise _Missing(f"{label}: not run")
    if item.status != "ok":
        raise _Missing(f"{label}: {item.status}" + (f" ({item.reason})" if item.reason else ""))
    return item


def _measure(
    goal: Goal, index: dict[Any, VariantResult], http: dict[str, HTTPResult]
) -> tuple[float, str]:
    if goal.kind == "rps_vs":
        a, b = _get(http, goal.ours, goal.ours), _get(http, goal.other, goal.other)
        if not a.rps or not b.rps:
            raise _Missing("no HTTP rounds")
        detail = f"{a.rps:.0f} vs {b.rps:.0f} req/s"
        top = http.get(goal.ceiling) if goal.ceiling else None
        if top is not None and top.rps:
            detail += (
                f"; the app with no middleware {top.rps:.0f} req/s, so at most"
                f" {top.rps / b.rps:.2f} x for any stack"
            )
        return a.rps / b.rps, detail
    if goal.kind == "rps_ratio":
        r = _get(http, goal.ours, goal.ours)
        if r.ratio is None:
            raise _Missing("no HTTP rounds")
        flag = (
            " (load generator CPU-bound: ratio understates the cost)"
            if (r.client_cpu or 0) > 0.9
            else ""
        )
        return r.ratio, f"{r.rps:.0f} vs {r.bare_rps:.0f} req/s{flag}"
    ours: VariantResult = _get(index, (goal.where, goal.ours), goal.ours)
    fns: dict[str, Callable[[], tuple[float, str]]] = {
        "overhead_ratio": lambda: _bounded(
            ours,
            _get(index, (goal.where, goal.other), goal.other),
            index.get((goal.where, goal.reference)) if goal.reference else None,
        ),
        "time_ratio": lambda: _ratio(
            ours, _get(index, (goal.where, goal.other), goal.other), False
        ),
        "size_ratio": lambda: _size(ours, _get(index, (goal.where, goal.other), goal.other)),
        "floors": lambda: _floors(ours),
        "beyond_floors": lambda: _beyond(ours, _get(index, (goal.where, goal.other), goal.other)),
        "ping": lambda: _ratio(ours, _get(index, (goal.where, goal.other), goal.other), True),
        "round_trips": lambda: _trips(ours),
        "round_trips_max": lambda: _trips(ours),
        "calls": lambda: _calls(ours),
    }
    return fns[goal.kind]()


def _ratio(ours: VariantResult, other: VariantResult, overhead: bool) -> tuple[float, str]:
    a, b = (ours.overhead_us, other.overhead_us) if overhead else (ours.us, other.us)
    if a is None or b is None:
        raise _Missing("not timed")
    if b <= 0:
        raise _Missing(f"{other.name}: overhead {b:.2f} µs, too small to divide by")
    what = "overhead" if overhead else "per request"
    return a / b, f"{what} {a:.1f} µs vs {b:.1f} µs"


def _bounded(
    ours: VariantResult, other: VariantResult, reference: VariantResult | None
) -> tuple[float, str]:
    """:func:`_ratio` of the overheads with, when the reference variant was timed, the least
    ratio any middleware could reach: the reference's overhead (the work none can skip) over
    the peer's."""
    value, detail = _ratio(ours, other, True)  # (the peer's overhead is > 0 past this)
    if reference is None or reference.status != "ok" or reference.overhead_us is None:
        return value, detail
    a, b = reference.overhead_us, other.overhead_us
    assert b is not None
    return value, f"{detail}; {reference.name} {a:.1f} µs, so at least {a / b:.2f} x"


def _beyond(ours: VariantResult, reference: VariantResult) -> tuple[float, str]:
    """Floors of ``ours``'s overhead beyond the reference's (the codec's own call)."""
    if ours.overhead_us is None or reference.overhead_us is None:
        raise _Missing("not timed")
    if ours.floor_us is None or ours.floor_us <= 0:
        raise _Missing("floor overhead not measured")
    beyond = ours.overhead_us - reference.overhead_us
    return beyond / ours.floor_us, (
        f"overhead {ours.overhead_us:.1f} µs, {reference.name} {reference.overhead_us:.1f} µs,"
        f" floor {ours.floor_us:.2f} µs"
    )


def _size(ours: VariantResult, other: VariantResult) -> tuple[float, str]:
    if not ours.body_bytes or not other.body_bytes:
        raise _Missing("no body sizes")
    return ours.body_bytes / other.body_bytes, f"{ours.body_bytes} vs {other.body_bytes} bytes"


def _floors(ours: VariantResult) -> tuple[float, str]:
    if ours.overhead_us is None:
        raise _Missing("not timed")
    if ours.floors is None or ours.floor_us is None:
        raise _Missing("floor overhead not measured")
    return ours.floors, f"overhead {ours.overhead_us:.2f} µs, floor {ours.floor_us:.2f} µs"


def _trips(ours: VariantResult) -> tuple[float, str]:
    if ours.round_trips is None:
        raise _Missing("round trips not counted")
    return ours.round_trips, f"{ours.round_trips:.2f} per request (redis-py commands sent)"


def _calls(ours: VariantResult) -> tuple[float, str]:
    if ours.calls is None:
        raise _Missing("calls not counted")
    return ours.calls, f"{ours.calls:+.0f} Python calls per request beyond the bare app's"
