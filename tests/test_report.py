"""report_app(): the JSON document's schema, Prometheus text parsed by prometheus_client's own
parser, content negotiation, and that any registered middleware appears without report code."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from asgi_perf._core import stats
from asgi_perf.report import render_prometheus, report_app, wants_prometheus
from asgi_perf.timing import TimingMiddleware
from tests.support import call, make_scope


async def hello(scope: Any, receive: Any, send: Any) -> None:
    status = 500 if scope["path"] == "/fail" else 200
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


class Dummy:
    """A middleware-to-be that only registers its statistics."""

    def __init__(self) -> None:
        stats.register("dummy_kind", self)

    def stats(self) -> dict[str, Any]:
        return {
            "hits": 7,
            "ratio": 0.25,
            "enabled": True,
            "store": {"round_trips": 3, "url": "memory://"},
            "recent": [1, 2],
            "label": "x",
            "by_code": {429: 2},
        }


@pytest.fixture
async def timing() -> TimingMiddleware:
    mw = TimingMiddleware(hello)
    for path in ("/report-users/1", "/report-users/2", "/fail"):
        await call(mw, path=path)
    return mw


def mine(document: dict[str, Any], mw: TimingMiddleware) -> dict[str, Any]:
    for entry in document["stats"]["timing"]:
        if entry == mw.stats():
            return entry
    raise AssertionError("this test's TimingMiddleware is missing from the report")


async def test_json_schema(timing: TimingMiddleware) -> None:
    dummy = Dummy()
    response = await call(report_app())
    assert response.status == 200
    assert response.header("content-type") == "application/json"
    assert response.header("cache-control") == "no-store"
    document = orjson.loads(response.body)
    assert set(document) == {"pid", "time", "stats"}
    assert isinstance(document["pid"], int) and isinstance(document["time"], float)
    assert {**dummy.stats(), "by_code": {"429": 2}} in document["stats"]["dummy_kind"]
    entry = mine(document, timing)
    assert set(entry) == {
        "requests",
        "in_flight",
        "slow_threshold_seconds",
        "routes_overflowed",
        "record_failures",
        "otel",
        "routes",
    }
    assert entry["requests"] == 3 and entry["in_flight"] == 0
    routes = {r["route"]: r for r in entry["routes"]}
    users = routes["/report-users/{id}"]
    assert set(users) == {
        "method",
        "route",
        "count",
        "errors",
        "slow",
        "statuses",
        "duration_seconds",
        "duration_sum_seconds",
        "ttfb_seconds",
        "ttfb_count",
        "ttfb_sum_seconds",
    }
    assert users["count"] == 2 and users["statuses"] == {"200": 2} and users["errors"] == 0
    assert set(users["duration_seconds"]) == {"p50", "p95", "p99", "max", "mean"}
    durations = users["duration_seconds"]
    assert 0 < durations["p50"] <= durations["p95"] <= durations["p99"] <= durations["max"] * 1.005
    assert routes["/fail"]["errors"] == 1


async def test_prometheus_text_parses(timing: TimingMiddleware) -> None:
    dummy = Dummy()
    response = await call(report_app(), query="format=prometheus")
    assert response.header("content-type") == "text/plain; version=0.0.4; charset=utf-8"
    families = {f.name: f for f in text_string_to_metric_families(response.text())}
    # several TimingMiddleware instances may be alive in this process: find ours by route
    requests = [
        s
        for s in families["asgi_perf_http_requests"].samples
        if s.labels["route"] == "/report-users/{id}"
    ]
    assert [(s.labels["status"], s.value) for s in requests] == [("200", 2.0)]
    assert families["asgi_perf_http_requests"].type == "counter"
    duration = families["asgi_perf_http_request_duration_seconds"]
    assert duration.type == "summary"
    ours = [s for s in duration.samples if s.labels["route"] == "/report-users/{id}"]
    quantiles = {s.labels["quantile"] for s in ours if "quantile" in s.labels}
    assert quantiles == {"0.5", "0.95", "0.99"}
    assert [s.value for s in ours if s.name.endswith("_count")] == [2.0]
    errors = [
        s for s in families["asgi_perf_http_request_errors"].samples if s.labels["route"] == "/fail"
    ]
    assert [s.value for s in errors] == [1.0]
    assert families["asgi_perf_http_requests_in_flight"].type == "gauge"
    # a middleware the report knows nothing about: numeric leaves become gauges
    hits = families["asgi_perf_dummy_kind_hits"]
    assert hits.type == "gauge" and 7.0 in [s.value for s in hits.samples]
    assert 3.0 in [s.value for s in families["asgi_perf_dummy_kind_store_round_trips"].samples]
    assert 1.0 in [s.value for s in families["asgi_perf_dummy_kind_enabled"].samples]
    assert not any(name.startswith("asgi_perf_dummy_kind_label") for name in families)
    del dummy


def test_prometheus_escapes_labels_and_marks_instances() -> None:
    snapshot = {
        "timing": [
            {
                "in_flight": 1,
                "routes_overflowed": 0,
                "routes": [
                    {
                        "method": "GET",
                        "route": '/we"ird\\path\n',
                        "count": 1,
                        "errors": 0,
                        "slow": 0,
                        "statuses": {"200": 1},
                        "duration_seconds": {
                            "p50": 0.1,
                            "p95": 0.1,
                            "p99": 0.1,
                            "max": 0.1,
                            "mean": 0.1,
                        },
                        "duration_sum_seconds": 0.1,
                        "ttfb_seconds": {
                            "p50": None,
                            "p95": None,
                            "p99": None,
                            "max": None,
                            "mean": None,
                        },
                        "ttfb_count": 0,
                        "ttfb_sum_seconds": 0.0,
                    }
                ],
            },
            {"in_flight": 0, "routes_overflowed": 0, "routes": []},
        ],
        "9 odd-kind": [{"a-b": float("inf")}],
    }
    families = {
        f.name: f for f in text_string_to_metric_families(render_prometheus(snapshot).decode())
    }
    [sample] = families["asgi_perf_http_requests"].samples
    assert sample.labels == {
        "instance": "0",
        "method": "GET",
        "route": '/we"ird\\path\n',
        "status": "200",
    }
    assert sorted(
        s.labels["instance"] for s in families["asgi_perf_http_requests_in_flight"].samples
    ) == ["0", "1"]
    [odd] = families["asgi_perf_9_odd_kind_a_b"].samples
    assert odd.value == float("inf")
    assert render_prometheus({}) == b""


@pytest.mark.parametrize(
    ("accept", "query", "expected"),
    [
        (None, "", False),
        ("*/*", "", False),
        ("application/json", "", False),
        ("text/html,application/xhtml+xml,*/*;q=0.8", "", False),
        ("text/plain; version=0.0.4", "", True),
        (
            "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1",
            "",
            True,
        ),
        ("application/json, text/plain;q=0.5", "", False),
        ("text/plain;q=0", "", False),
        ("text/plain;q=bogus", "", False),
        ("application/json", "format=prometheus", True),
        ("text/plain", "format=json", False),
    ],
)
def test_negotiation(accept: str | None, query: str, expected: bool) -> None:
    headers = [("accept", accept)] if accept is not None else []
    assert wants_prometheus(make_scope(query=query, headers=headers)) is expected


async def test_methods_head_and_lifespan() -> None:
    app = report_app()
    head = await call(app, "HEAD")
    assert head.status == 200 and head.body == b"" and int(head.header("content-length") or 0) > 0
    post = await call(app, "POST")
    assert post.status == 405 and post.header("allow") == "GET, HEAD"
    assert orjson.loads(post.body)["status"] == 405

    inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return inbox.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "lifespan"}, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


async def test_mounted_under_starlette() -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    app = TimingMiddleware(Starlette(routes=[Mount("/__perf__", app=report_app())]))
    await call(app, path="/__perf__/")
    response = await call(app, path="/__perf__/", headers=[("accept", "text/plain")])
    assert response.status == 200
    families = {f.name: f for f in text_string_to_metric_families(response.text())}
    # Other tests' middlewares may still be alive in this process (then samples carry an
    # ``instance`` label telling them apart): look at the labels that name the series.
    assert {"route": "/__perf__/{path}", "method": "GET", "status": "200"} in [
        {k: v for k, v in s.labels.items() if k != "instance"}
        for s in families["asgi_perf_http_requests"].samples
    ]
