"""report_app(): the JSON document's schema, the Prometheus text and OpenMetrics expositions
parsed by prometheus_client's own parsers, content negotiation, pages, the bearer token, and
that any registered middleware appears without report code."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from asgi_perf._core import stats
from asgi_perf._core.config import ConfigError
from asgi_perf._report.prometheus import LATENCY_BUCKETS
from asgi_perf.report import negotiate, render_prometheus, report_app, wants_prometheus
from asgi_perf.timing import TimingMiddleware
from asgi_perf.timing._histogram import LatencyHistogram
from tests.support import call, make_scope

NO_ENV: dict[str, str] = {}  # the test runner's REDIS_URL must not turn these into fleet reports


def local_report(**options: Any) -> Any:
    return report_app(environ=NO_ENV, **options)


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


def ours(samples: list[Any], route: str) -> list[Any]:
    return [s for s in samples if s.labels.get("route") == route]


async def test_json_schema(timing: TimingMiddleware) -> None:
    dummy = Dummy()
    response = await call(local_report())
    assert response.status == 200
    assert response.header("content-type") == "application/json"
    assert response.header("cache-control") == "no-store"
    document = orjson.loads(response.body)
    assert set(document) == {"scope", "host", "pid", "time", "instances", "fleet", "note", "stats"}
    assert document["scope"] == "process" and document["fleet"] is None
    assert "this process only" in document["note"]  # without a backend the report says so
    assert isinstance(document["pid"], int) and isinstance(document["time"], float)
    [me] = document["instances"]
    assert set(me) == {"id", "host", "pid", "started", "published"}
    assert me["pid"] == document["pid"] and me["host"] == document["host"]
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
    response = await call(local_report(), query="format=prometheus")
    assert response.header("content-type") == "text/plain; version=0.0.4; charset=utf-8"
    text = response.text()
    assert "# TYPE asgi_perf_http_requests_total counter" in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    # several TimingMiddleware instances may be alive in this process: find ours by route
    requests = ours(families["asgi_perf_http_requests"].samples, "/report-users/{id}")
    assert [(s.name, s.labels["status"], s.value) for s in requests] == [
        ("asgi_perf_http_requests_total", "200", 2.0)
    ]
    assert families["asgi_perf_http_requests"].type == "counter"
    assert {s.labels["scope"] for f in families.values() for s in f.samples} == {"process"}
    duration = families["asgi_perf_http_request_duration_seconds"]
    assert duration.type == "histogram"
    series = ours(duration.samples, "/report-users/{id}")
    buckets = [s for s in series if s.name.endswith("_bucket")]
    assert [s.labels["le"] for s in buckets] == [*map(repr, LATENCY_BUCKETS), "+Inf"]
    counts = [s.value for s in buckets]
    assert counts == sorted(counts) and counts[-1] == 2.0  # cumulative, ending at the count
    assert [s.value for s in series if s.name.endswith("_count")] == [2.0]
    errors = ours(families["asgi_perf_http_request_errors"].samples, "/fail")
    assert [s.value for s in errors] == [1.0]
    assert families["asgi_perf_http_requests_in_flight"].type == "gauge"
    assert [s.value for s in families["asgi_perf_report_instances"].samples] == [1.0]
    # a middleware the report knows nothing about: numeric leaves become gauges
    hits = families["asgi_perf_dummy_kind_hits"]
    assert hits.type == "gauge" and 7.0 in [s.value for s in hits.samples]
    assert 3.0 in [s.value for s in families["asgi_perf_dummy_kind_store_round_trips"].samples]
    assert 1.0 in [s.value for s in families["asgi_perf_dummy_kind_enabled"].samples]
    assert not any(name.startswith("asgi_perf_dummy_kind_label") for name in families)
    del dummy


async def test_openmetrics_parses_with_the_openmetrics_parser(timing: TimingMiddleware) -> None:
    accept = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4"
    response = await call(local_report(), headers=[("accept", accept)])
    assert response.header("content-type") == (
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    )
    text = response.text()
    assert text.endswith("# EOF\n")
    # the strict parser: counters end in _total, histograms have +Inf, _count and _sum, …
    families = {f.name: f for f in openmetrics_families(text)}
    assert families["asgi_perf_http_requests"].type == "counter"
    assert families["asgi_perf_http_request_duration_seconds"].type == "histogram"
    requests = ours(families["asgi_perf_http_requests"].samples, "/report-users/{id}")
    assert [(s.name, s.value) for s in requests] == [("asgi_perf_http_requests_total", 2.0)]


def _route_state(route: str, durations: list[float]) -> dict[str, Any]:
    sketch = LatencyHistogram()
    for value in durations:
        sketch.record(value)
    return {
        "method": "GET",
        "route": route,
        "errors": 0,
        "slow": 0,
        "statuses": {"200": len(durations)},
        "duration": sketch.state(),
        "ttfb": LatencyHistogram().state(),
    }


@pytest.mark.parametrize("openmetrics", [False, True])
def test_prometheus_escapes_labels_and_marks_instances(openmetrics: bool) -> None:
    states = {
        "timing": [
            {
                "in_flight": 1,
                "routes_overflowed": 0,
                "routes": [_route_state('/we"ird\\p\n', [0.1])],
            },
            {"in_flight": 0, "routes_overflowed": 0, "routes": []},
        ],
        "compression": [{"compressed": {"gzip": 3, "br": 1}, "codec_errors": {}}],
        "9 odd-kind": [{"a-b": 2.5}],
    }
    text = render_prometheus(states, openmetrics=openmetrics, scope="fleet", instances=2).decode()
    parse = openmetrics_families if openmetrics else text_string_to_metric_families
    families = {f.name: f for f in parse(text)}
    [sample] = families["asgi_perf_http_requests"].samples
    assert sample.labels == {
        "scope": "fleet",
        "index": "0",
        "method": "GET",
        "route": '/we"ird\\p\n',
        "status": "200",
    }
    assert sorted(
        s.labels["index"] for s in families["asgi_perf_http_requests_in_flight"].samples
    ) == ["0", "1"]
    # values become labels, not names
    coded = families["asgi_perf_compression_responses"].samples
    assert {(s.labels["coding"], s.value) for s in coded} == {("gzip", 3.0), ("br", 1.0)}
    [odd] = families["asgi_perf_9_odd_kind_a_b"].samples
    assert odd.value == 2.5
    assert [s.value for s in families["asgi_perf_report_instances"].samples] == [2.0]


@pytest.mark.parametrize(
    ("accept", "query", "expected"),
    [
        (None, "", "json"),
        ("*/*", "", "json"),
        ("application/json", "", "json"),
        ("text/html,application/xhtml+xml,*/*;q=0.8", "", "json"),
        ("text/plain; version=0.0.4", "", "prometheus"),
        (
            "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1",
            "",
            "openmetrics",
        ),
        ("application/openmetrics-text;q=0.3,text/plain;q=0.5", "", "prometheus"),
        ("application/json, text/plain;q=0.5", "", "json"),
        ("text/plain;q=0", "", "json"),
        ("text/plain;q=bogus", "", "json"),
        ("application/json", "format=prometheus", "prometheus"),
        ("application/json", "format=openmetrics", "openmetrics"),
        ("text/plain", "format=json", "json"),
    ],
)
def test_negotiation(accept: str | None, query: str, expected: str) -> None:
    headers = [("accept", accept)] if accept is not None else []
    scope = make_scope(query=query, headers=headers)
    assert negotiate(scope) == expected
    assert wants_prometheus(scope) is (expected != "json")


async def test_methods_head_and_lifespan() -> None:
    app = local_report()
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


async def test_pages_and_bad_parameters(timing: TimingMiddleware) -> None:
    app = local_report()
    metrics = await call(app, path="/metrics")  # no Accept: still the exposition
    assert metrics.header("content-type") == "text/plain; version=0.0.4; charset=utf-8"
    assert "asgi_perf_http_requests_total" in metrics.text()
    nested = await call(app, path="/__perf__/metrics")
    assert nested.status == 404  # not mounted: "__perf__" is a page name here, and unknown
    mounted = make_scope(path="/__perf__/metrics", root_path="/__perf__")
    assert (await call(app, scope=mounted)).header("content-type") == (
        "text/plain; version=0.0.4; charset=utf-8"
    )
    missing = await call(app, path="/nope")
    assert missing.status == 404 and orjson.loads(missing.body)["status"] == 404
    bad = await call(app, query="scope=everything")
    assert bad.status == 400 and "scope" in orjson.loads(bad.body)["detail"]
    process = orjson.loads((await call(app, query="scope=process")).body)
    assert process["scope"] == "process" and "this process only" in process["note"]


async def test_bearer_token() -> None:
    app = local_report(token="s3cret-token")
    missing = await call(app)
    assert missing.status == 401
    assert missing.header("www-authenticate") == 'Bearer realm="asgi-perf"'
    assert b"s3cret" not in missing.body
    wrong = await call(app, headers=[("authorization", "Bearer nope")])
    assert wrong.status == 401
    assert wrong.header("www-authenticate") == 'Bearer realm="asgi-perf", error="invalid_token"'
    basic = await call(app, headers=[("authorization", "Basic czNjcmV0LXRva2Vu")])
    assert basic.status == 401
    # before the method check: an unauthenticated client learns nothing about the report
    assert (await call(app, "POST")).status == 401
    ok = await call(app, headers=[("authorization", "bearer s3cret-token")])
    assert ok.status == 200 and orjson.loads(ok.body)["stats"] is not None
    from_env = report_app(environ={"ASGI_PERF_REPORT_TOKEN": "from-the-env"})
    assert (await call(from_env)).status == 401
    assert (await call(from_env, headers=[("authorization", "Bearer from-the-env")])).status == 200


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ASGI_PERF_REPORT_TOKEN", "two words"),
        ("ASGI_PERF_REPORT_PUBLISH_INTERVAL", "soon"),
        ("ASGI_PERF_REPORT_PUBLISH_INTERVAL", "0ms"),
        ("ASGI_PERF_REPORT_PATH", "relative"),
        ("ASGI_PERF_REPORT_PATH", "/"),
        ("ASGI_PERF_STORAGE_URL", "ftp://x"),
    ],
)
def test_bad_env_values_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        report_app(environ={variable: value})
    assert info.value.name == variable
    assert "two words" not in str(info.value)  # a token is never echoed


def test_bad_stats_dir_is_named(tmp_path: Any) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError) as info:
        report_app(environ={"ASGI_PERF_STATS_DIR": str(blocker / "below")})
    assert info.value.name == "ASGI_PERF_STATS_DIR"


async def test_mounted_under_starlette() -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    app = TimingMiddleware(Starlette(routes=[Mount("/__perf__", app=local_report())]))
    await call(app, path="/__perf__/")
    response = await call(app, path="/__perf__/", headers=[("accept", "text/plain")])
    assert response.status == 200
    families = {f.name: f for f in text_string_to_metric_families(response.text())}
    # Other tests' middlewares may still be alive in this process (then samples carry an
    # ``index`` label telling them apart): look at the labels that name the series.
    assert {"route": "/__perf__/{path}", "method": "GET", "status": "200"} in [
        {k: v for k, v in s.labels.items() if k not in ("index", "scope")}
        for s in families["asgi_perf_http_requests"].samples
    ]
    metrics = await call(app, path="/__perf__/metrics")
    assert metrics.status == 200 and "asgi_perf_http_requests_total" in metrics.text()
