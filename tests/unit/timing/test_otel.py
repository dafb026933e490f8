"""OpenTelemetry: with the SDK's in-memory exporter and reader, one SERVER span per request with
the current semantic-convention attributes and the parent from ``traceparent``; the duration
histogram and the active-requests counter record. Without configuration nothing is imported."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from asgi_perf._core.config import ConfigError
from asgi_perf.timing import TimingMiddleware
from tests.support import call

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"


class Otel:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        found: list[Any] = []
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found.extend(metric.data.data_points)
        return found


@pytest.fixture
def otel() -> Any:
    o = Otel()
    yield o
    o.tracer_provider.shutdown()
    o.meter_provider.shutdown()


def starlette_app(otel: Otel, seen_active: list[float]) -> Any:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    tracer = otel.tracer_provider.get_tracer("app")

    async def user(request: Any) -> PlainTextResponse:
        seen_active.extend(p.value for p in otel.points("http.server.active_requests"))
        with tracer.start_as_current_span("load user"):
            pass
        return PlainTextResponse("user")

    async def broken(request: Any) -> PlainTextResponse:
        return PlainTextResponse("down", status_code=503)

    return Starlette(routes=[Route("/users/{user_id}", user), Route("/broken", broken)])


async def test_span_per_request_with_attributes_and_parent(otel: Otel) -> None:
    active: list[float] = []
    mw = TimingMiddleware(
        starlette_app(otel, active),
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
    )
    traceparent = f"00-{TRACE_ID}-{PARENT_ID}-01"
    await call(
        mw,
        path="/users/1",
        headers=[("traceparent", traceparent), ("host", "api.example:8443"), ("user-agent", "t/1")],
        client=("10.0.0.9", 5555),
    )
    await call(mw, path="/users/2")
    spans = otel.exporter.get_finished_spans()
    servers = [s for s in spans if s.kind is SpanKind.SERVER]
    assert len(servers) == 2
    first = servers[0]
    assert first.name == "GET /users/{user_id}"
    assert first.parent is not None and first.parent.is_remote
    assert format(first.context.trace_id, "032x") == TRACE_ID
    assert format(first.parent.span_id, "016x") == PARENT_ID
    assert dict(first.attributes or {}) == {
        "http.request.method": "GET",
        "url.path": "/users/1",
        "url.scheme": "http",
        "network.protocol.version": "1.1",
        "server.address": "api.example",
        "server.port": 8443,
        "client.address": "10.0.0.9",
        "user_agent.original": "t/1",
        "http.route": "/users/{user_id}",
        "http.response.status_code": 200,
    }
    assert first.status.status_code is StatusCode.UNSET
    assert servers[1].parent is None  # no traceparent: a new trace
    # the server span is current while the app runs: the app's span is its child
    [child] = [
        s for s in spans if s.name == "load user" and s.context.trace_id == first.context.trace_id
    ]
    assert child.parent is not None and child.parent.span_id == first.context.span_id
    assert active == [1, 1]  # during each request
    [point] = otel.points("http.server.request.duration")
    assert point.count == 2
    assert dict(point.attributes) == {
        "http.request.method": "GET",
        "url.scheme": "http",
        "http.response.status_code": 200,
        "network.protocol.version": "1.1",
        "http.route": "/users/{user_id}",
    }
    assert [p.value for p in otel.points("http.server.active_requests")] == [0]


async def test_5xx_and_exceptions_mark_error(otel: Otel) -> None:
    async def boom(scope: Any, receive: Any, send: Any) -> None:
        raise ValueError("bad")

    mw = TimingMiddleware(starlette_app(otel, []), tracer_provider=otel.tracer_provider)
    await call(mw, path="/broken")
    failing = TimingMiddleware(boom, tracer_provider=otel.tracer_provider)
    with pytest.raises(ValueError):
        await call(failing, path="/x")
    broken, raised = otel.exporter.get_finished_spans()
    assert broken.status.status_code is StatusCode.ERROR
    assert broken.attributes is not None and broken.attributes["error.type"] == "503"
    assert raised.status.status_code is StatusCode.ERROR
    assert raised.attributes is not None and raised.attributes["error.type"] == "ValueError"
    assert raised.name == "GET"  # no framework route: no guessed http.route
    assert "http.route" not in raised.attributes
    assert any(e.name == "exception" for e in raised.events)


async def test_span_ends_at_last_body_message(otel: Otel) -> None:
    now = [50.0]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        now[0] += 0.25
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x"})
        now[0] += 9.0  # background work

    mw = TimingMiddleware(
        app,
        clock=lambda: now[0],
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
    )
    await call(mw)
    [span] = otel.exporter.get_finished_spans()
    assert span.end_time is not None and span.start_time is not None
    assert span.end_time - span.start_time == 250_000_000
    [point] = otel.points("http.server.request.duration")
    assert point.sum == pytest.approx(0.25)


async def test_off_records_nothing(otel: Otel) -> None:
    mw = TimingMiddleware(
        starlette_app(otel, []),
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
        otel="off",
    )
    await call(mw, path="/broken")
    assert otel.exporter.get_finished_spans() == ()
    assert mw.stats()["otel"] is False
    with pytest.raises(ConfigError):
        TimingMiddleware.from_env(starlette_app(otel, []), environ={"ASGI_PERF_OTEL": "maybe"})


def run_python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


PRELUDE = """
    import asyncio, sys
    from asgi_perf.timing import TimingMiddleware
    from tests.support import call

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
"""


def test_not_configured_means_not_imported() -> None:
    out = run_python(
        PRELUDE
        + """
    mw = TimingMiddleware(app)
    asyncio.run(call(mw))
    print(mw.stats()["otel"], any(m.startswith("opentelemetry") for m in sys.modules))
    """
    )
    assert out == "False False"


def test_auto_ignores_the_global_no_op_proxy_and_uses_a_real_sdk_provider() -> None:
    out = run_python(
        PRELUDE
        + """
    from opentelemetry import trace  # imported, but no provider set: the no-op proxy
    proxy = TimingMiddleware(app)
    asyncio.run(call(proxy))

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    real = TimingMiddleware(app)  # built before the provider is set: resolved at 1st request
    trace.set_tracer_provider(provider)
    asyncio.run(call(real))
    forced_off = TimingMiddleware(app, otel="off")
    asyncio.run(call(forced_off))
    print(proxy.stats()["otel"], real.stats()["otel"], len(exporter.get_finished_spans()))
    """
    )
    assert out == "False True 1"


def test_on_uses_the_global_proxy() -> None:
    out = run_python(
        PRELUDE
        + """
    mw = TimingMiddleware(app, otel="on")
    asyncio.run(call(mw))
    print(mw.stats()["otel"])
    """
    )
    assert out == "True"


async def test_two_middlewares_share_one_active_requests_instrument(otel: Otel) -> None:
    seen: list[list[float]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append([p.value for p in otel.points("http.server.active_requests")])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    inner = TimingMiddleware(app, meter_provider=otel.meter_provider)
    outer = TimingMiddleware(inner, meter_provider=otel.meter_provider)
    await call(outer)
    assert seen == [[2]]  # both layers' requests are observed, not only the first layer's
    assert [p.value for p in otel.points("http.server.active_requests")] == [0]
