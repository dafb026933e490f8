"""TimingMiddleware's OpenTelemetry with the installed FastAPI's native telemetry: one server span
per request whichever is outside, FastAPI's operation spans as its children when they are on,
Timing's attributes and Server-Timing intact."""

from __future__ import annotations

from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

from asgi_perf.timing import TimingMiddleware
from tests.unit.timing.test_otel import Otel
from tests.unit.timing.test_otel import otel as otel  # the fixture: in-memory exporter and reader

pytest.importorskip("fastapi.telemetry")  # FastAPI with native OpenTelemetry (0.16x+)


def viewer() -> str:
    return "me"


async def user(user_id: int, who: Annotated[str, Depends(viewer)]) -> dict[str, Any]:
    return {"user_id": user_id, "who": who}


def make_app(otel: Otel, **telemetry: Any) -> FastAPI:
    """FastAPI tracing with the test's providers (not the global ones: set once per process)."""
    settings = {"tracer_provider": otel.tracer_provider, "meter_provider": otel.meter_provider}
    app = FastAPI(telemetry={**settings, **telemetry})  # type: ignore[typeddict-item]
    app.get("/users/{user_id}")(user)
    return app


def timing(app: Any, otel: Otel) -> TimingMiddleware:
    return TimingMiddleware(
        app, tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider
    )


async def get(app: Any, path: str = "/users/7") -> httpx.Response:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        response = await client.get(path, headers={"user-agent": "probe/1"})
    assert response.status_code == 200
    assert response.headers["server-timing"].startswith("total;dur=")
    return response


def split(otel: Otel) -> tuple[ReadableSpan, list[ReadableSpan]]:
    spans = otel.exporter.get_finished_spans()
    servers = [s for s in spans if s.kind == SpanKind.SERVER]
    assert len(servers) == 1, [(s.name, s.instrumentation_scope.name) for s in servers]
    return servers[0], [s for s in spans if s.kind != SpanKind.SERVER]


def assert_children(server: ReadableSpan, others: list[ReadableSpan]) -> None:
    names = {s.name for s in others}
    assert {"fastapi.dependencies", "fastapi.endpoint"} <= names, names
    for span in others:
        assert span.context.trace_id == server.context.trace_id
        assert span.parent is not None and span.parent.span_id == server.context.span_id


async def test_timing_outside_fastapi_owns_the_one_server_span(otel: Otel) -> None:
    await get(timing(make_app(otel), otel))
    server, others = split(otel)
    assert server.instrumentation_scope.name == "asgi_perf"
    assert server.name == "GET /users/{user_id}"
    attributes = dict(server.attributes or {})
    assert attributes["http.route"] == "/users/{user_id}"
    assert attributes["http.response.status_code"] == 200
    assert attributes["user_agent.original"] == "probe/1" and "client.address" in attributes
    assert_children(server, others)
    durations = otel.points("http.server.request.duration")
    assert sum(p.count for p in durations) == 1  # Timing's; FastAPI recorded none of its own


async def test_fastapi_operation_spans_off_leaves_one_span(otel: Otel) -> None:
    await get(timing(make_app(otel, operation_spans=False), otel))
    server, others = split(otel)
    assert server.instrumentation_scope.name == "asgi_perf" and others == []


async def test_fastapi_tracing_off_leaves_timing_alone(otel: Otel) -> None:
    await get(timing(make_app(otel, tracing=False), otel))
    server, others = split(otel)
    assert server.instrumentation_scope.name == "asgi_perf" and others == []


async def test_timing_inside_fastapi_adds_to_fastapis_span(otel: Otel) -> None:
    app = make_app(otel)
    app.add_middleware(
        TimingMiddleware, tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider
    )
    await get(app)
    server, others = split(otel)
    assert server.instrumentation_scope.name == "fastapi"
    attributes = dict(server.attributes or {})
    assert attributes["http.route"] == "/users/{user_id}"
    assert attributes["user_agent.original"] == "probe/1" and "client.address" in attributes
    assert_children(server, others)


async def test_two_timings_still_make_one_span(otel: Otel) -> None:
    await get(timing(timing(make_app(otel), otel), otel))
    server, others = split(otel)
    assert_children(server, others)
