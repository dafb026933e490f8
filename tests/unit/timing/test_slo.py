"""Service level objectives: the parser by tables, windows and burn rates on an injected clock,
and a real Starlette route answering 5% of 500s reported non-compliant in JSON and Prometheus."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from asgi_perf import ConfigError, from_env, report_app
from asgi_perf.timing import TimingMiddleware
from asgi_perf.timing._slo import Objective, parse_slo_windows, parse_slos, window_label
from tests.support import call

# -- the parser -----------------------------------------------------------------------------------
VALID = [
    (
        "GET /items/{id}: p95<200ms, errors<0.5%; POST /orders: p99<1s",
        [
            ("GET", "/items/{id}", "p95<200ms", "latency", 0.05, 0.2, False),
            ("GET", "/items/{id}", "errors<0.5%", "errors", 0.005, None, False),
            ("POST", "/orders", "p99<1s", "latency", 0.01, 1.0, False),
        ],
    ),
    ("/health: errors<=1%", [(None, "/health", "errors<=1%", "errors", 0.01, None, True)]),
    ("get /a:p99.9 <= 50ms", [("GET", "/a", "p99.9<=50ms", "latency", 0.001, 0.05, True)]),
    ("  ;  /a : P50<2s ; ", [(None, "/a", "p50<2s", "latency", 0.5, 2.0, False)]),
    ("", []),
    (
        {"GET /x": "p90<1s", "/y": ["errors<2%", "p99<3s"]},
        [
            ("GET", "/x", "p90<1s", "latency", 0.1, 1.0, False),
            (None, "/y", "errors<2%", "errors", 0.02, None, False),
            (None, "/y", "p99<3s", "latency", 0.01, 3.0, False),
        ],
    ),
]


@pytest.mark.parametrize(("text", "expected"), VALID)
def test_valid_objectives(text: Any, expected: list[tuple[Any, ...]]) -> None:
    got = [
        (o.method, o.route, o.text, o.kind, o.budget, o.threshold, o.inclusive)
        for o in parse_slos(text, "ASGI_PERF_SLO")
    ]
    assert got == expected


INVALID = [
    ("GET /items p95<200ms", "GET /items p95<200ms", "a ':' is missing"),
    ("FETCH /items: p95<1s", "FETCH /items", "an HTTP method"),
    ("GET items: p95<1s", "GET items", "starting with '/'"),
    ("GET /a /b: p95<1s", "GET /a /b", "'[METHOD] /route/template'"),
    ("/a:", "/a", "at least one objective"),
    ("/a: p95>200ms", "p95>200ms", "an objective: pNN<duration"),
    ("/a: p95<fast", "p95<fast", "a latency bound with a unit"),
    ("/a: p100<1s", "p100<1s", "strictly between 0 and 100"),
    ("/a: p0<1s", "p0<1s", "strictly between 0 and 100"),
    ("/a: p95<0ms", "p95<0ms", "above zero"),
    ("/a: errors<0%", "errors<0%", "an error budget"),
    ("/a: errors<100%", "errors<100%", "an error budget"),
    ("/a: errors<1", "errors<1", "an objective"),
    ("/a: p95<1s, p95<2s", "p95<2s", "each objective once per route"),
    ("/a/{x}: errors<1%; /a/{y}: errors<2%", "errors<2%", "each objective once per route"),
]


@pytest.mark.parametrize(("text", "fragment", "accepted"), INVALID)
def test_invalid_objectives_name_the_variable_and_the_part(
    text: str, fragment: str, accepted: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_slos(text, "ASGI_PERF_SLO")
    message = str(info.value)
    assert info.value.name == "ASGI_PERF_SLO" and info.value.value == fragment
    assert accepted in message and "GET /items/{id}: p95<200ms" in message  # shows an example


def test_not_a_string_is_refused() -> None:
    with pytest.raises(ConfigError, match="slos"):
        parse_slos(42, "slos")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("5m,1h", (300.0, 3600.0)), ("30s, 10m", (30.0, 600.0)), ((60, "1h"), (60.0, 3600.0))],
)
def test_windows(value: Any, expected: tuple[float, float]) -> None:
    assert parse_slo_windows(value, "ASGI_PERF_SLO_WINDOWS") == expected


@pytest.mark.parametrize("value", ["1h,5m", "5m", "5m,5m", "0,1h", "5m,soon", 7, "1m,2m,3m"])
def test_bad_windows(value: Any) -> None:
    with pytest.raises(ConfigError, match="ASGI_PERF_SLO_WINDOWS"):
        parse_slo_windows(value, "ASGI_PERF_SLO_WINDOWS")


@pytest.mark.parametrize(
    ("seconds", "label"), [(300, "5m"), (3600, "1h"), (86400, "1d"), (90, "90s"), (0.5, "0.5s")]
)
def test_window_labels(seconds: float, label: str) -> None:
    assert window_label(seconds) == label


@pytest.mark.parametrize(
    ("objective", "bad_ratio", "met"),
    [
        ("/a: errors<1%", 0.0099, True),
        ("/a: errors<1%", 0.01, False),
        ("/a: errors<=1%", 0.01, True),
        ("/a: p95<1s", 0.05, True),  # 95% under the bound is what p95 asks
        ("/a: p95<1s", 0.0501, False),
    ],
)
def test_meeting_an_objective(objective: str, bad_ratio: float, met: bool) -> None:
    (parsed,) = parse_slos(objective)
    assert isinstance(parsed, Objective) and parsed.met_by(bad_ratio) is met


# -- tracking -------------------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def five_percent_failing() -> Starlette:
    seen = {"n": 0}

    async def item(request: Request) -> PlainTextResponse:
        seen["n"] += 1
        if seen["n"] % 20 == 0:  # 5% of answers are 500s
            return PlainTextResponse("broken", status_code=500)
        return PlainTextResponse("item " + request.path_params["item_id"])

    async def other(request: Request) -> PlainTextResponse:
        return PlainTextResponse("other")

    return Starlette(routes=[Route("/items/{item_id}", item), Route("/other", other)])


async def test_five_percent_of_500s_breaks_errors_below_one_percent() -> None:
    mw = TimingMiddleware(
        five_percent_failing(), slos="GET /items/{id}: errors<1%, p99<10s; /other: errors<1%"
    )
    for i in range(200):
        await call(mw, path=f"/items/{i}")
    await call(mw, path="/other")

    document = orjson.loads((await call(report_app())).body)
    (mine,) = [s for s in document["stats"]["slo"] if s is not None and s == mw.slo.stats()]  # type: ignore[union-attr]
    by_objective = {(o["route"], o["objective"]): o for o in mine["objectives"]}
    errors = by_objective[("/items/{id}", "errors<1%")]
    assert errors["requests_total"] == 200 and errors["bad_total"] == 10
    assert errors["compliant"] is False and errors["compliance"] == pytest.approx(0.95)
    assert errors["short"]["burn_rate"] == pytest.approx(5.0)
    assert errors["long"]["burn_rate"] == pytest.approx(5.0)
    assert (errors["short"]["window"], errors["long"]["window"]) == ("5m", "1h")
    assert by_objective[("/items/{id}", "p99<10s")]["compliant"] is True
    assert by_objective[("/other", "errors<1%")]["compliant"] is True

    text = (await call(report_app(), query="format=prometheus")).body.decode()
    samples = {
        (s.name, s.labels.get("route"), s.labels.get("objective"), s.labels.get("window")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("asgi_perf_slo_")
    }
    key = ("/items/{id}", "errors<1%")
    assert samples[("asgi_perf_slo_compliant", *key, None)] == 0
    assert samples[("asgi_perf_slo_burn_rate", *key, "5m")] == pytest.approx(5.0)
    assert samples[("asgi_perf_slo_burn_rate", *key, "1h")] == pytest.approx(5.0)
    assert samples[("asgi_perf_slo_bad_requests_total", *key, None)] == 10


async def test_short_and_long_windows_forget_at_their_own_pace() -> None:
    clock = Clock()

    async def fail(scope: Any, receive: Any, send: Any) -> None:
        status = 500 if scope["path"] == "/bad" else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    mw = TimingMiddleware(fail, slos="/bad: errors<10%; /good: errors<10%", clock=clock)
    assert mw.slo is not None
    for _ in range(10):
        await call(mw, path="/bad")  # all fail at t=1000

    def burns() -> tuple[Any, Any]:
        (entry, _) = mw.slo.stats()["objectives"]  # type: ignore[union-attr]
        return entry["short"]["burn_rate"], entry["long"]["burn_rate"]

    assert burns() == (pytest.approx(10.0), pytest.approx(10.0))
    clock.now += 400  # past the 5 minute window, inside the hour
    assert burns() == (None, pytest.approx(10.0))
    clock.now += 3600
    assert burns() == (None, None)
    assert mw.slo.stats()["objectives"][0]["compliant"] is None  # type: ignore[union-attr]
    assert mw.slo.stats()["objectives"][0]["requests_total"] == 10  # type: ignore[union-attr]


async def test_objectives_match_placeholders_by_shape_and_methods() -> None:
    mw = TimingMiddleware(
        five_percent_failing(), slos="/items/{id}: p99<10s; POST /items/{x}: errors<1%"
    )
    await call(mw, path="/items/1")
    await call(mw, "POST", path="/items/1")  # 405 from Starlette: counted, not an error
    stats = mw.slo.stats()["objectives"]  # type: ignore[union-attr]
    counts = {(o["method"], o["objective"]): o["requests_total"] for o in stats}
    assert counts == {("*", "p99<10s"): 2, ("POST", "errors<1%"): 1}
    await call(mw, path="/other")  # a route without objectives: no objective counts it
    after = mw.slo.stats()["objectives"]  # type: ignore[union-attr]
    assert {(o["method"], o["objective"]): o["requests_total"] for o in after} == counts


def test_from_env_reads_the_objectives_and_names_a_bad_one() -> None:
    env = {"ASGI_PERF_SLO": "GET /a: p95<200ms", "ASGI_PERF_SLO_WINDOWS": "1m,30m"}
    mw = TimingMiddleware.from_env(five_percent_failing(), environ=env)
    assert mw.slo is not None and mw.slo.windows == (60.0, 1800.0)
    with pytest.raises(ConfigError, match="ASGI_PERF_SLO="):
        from_env(five_percent_failing(), environ={"ASGI_PERF_SLO": "GET /a: p95 under 1s"})


def test_no_objectives_no_tracker() -> None:
    assert TimingMiddleware(five_percent_failing()).slo is None
    assert TimingMiddleware(five_percent_failing(), slos="").slo is None
