"""TimingMiddleware's OpenTelemetry next to FastAPI's own: one server span per request.

FastAPI (0.16x and later) traces every request itself once an SDK provider is set: a SERVER
span, and "operation" spans for dependencies, the endpoint and serialization. It steps aside
when the scope already carries ``scope["fastapi.telemetry"]``: how an outer FastAPI app hands
its request to a mounted one, through that key and an OpenTelemetry context entry. With
Timing's spans on as well, a request had two server spans, in two traces. Now:

- **Timing outside FastAPI** (``asgi_perf.from_env(app)``): Timing opens the server span and
  hands it over as an outer FastAPI app would. FastAPI opens no span (and records none of its
  own metrics or logs for the request: Timing's metrics stand), names Timing's span after the
  matched route, and nests its operation spans under it when its ``operation_spans`` setting
  is on (``FastAPI(telemetry={"tracing": False})`` keeps FastAPI out entirely).
- **Timing inside FastAPI** (``asgi_perf.install(app)``, ``add_middleware``): FastAPI's span is
  open and current before Timing runs. Timing opens none; it adds what FastAPI's span lacks
  (``client.address``, ``user_agent.original``) to it. Both record the HTTP metrics, each under
  its own instrumentation scope (``fastapi``, ``asgi_perf``).

The hand-off uses FastAPI's private request record and context key, resolved once. If a
FastAPI version lacks them, Timing sets the marker alone: FastAPI then traces nothing for the
request (still one server span, without operation spans).
"""

from __future__ import annotations

import sys
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.context import Context

from asgi_perf._core.asgi import Scope

__all__ = ["SCOPE_KEY", "Handoff", "fastapi_handoff", "outer_span"]

SCOPE_KEY = "fastapi.telemetry"
_MAX_DEPTH = 64


def outer_span(scope: Scope) -> Any:
    """The server span FastAPI (or an outer Timing) already opened for this request, if any."""
    record = scope.get(SCOPE_KEY)
    return None if record is None else getattr(record, "span", None)


def _settings(app: Any) -> dict[str, Any] | None:
    """The ``telemetry`` settings of the FastAPI app ``app`` is or wraps, if found."""
    seen: set[int] = set()
    for _ in range(_MAX_DEPTH):
        if app is None or id(app) in seen:
            return None
        seen.add(id(app))
        settings = getattr(app, "_telemetry", None)
        if isinstance(settings, dict) and type(app).__module__.startswith("fastapi"):
            return settings
        app = getattr(app, "app", None)
    return None


class Handoff:
    """Hands a request's server span to FastAPI, as an outer FastAPI app would."""

    def __init__(self, record: Any, key: Any, tracer: Any, inner: Any) -> None:
        self.record = record  # FastAPI's request record class; None: the marker alone
        self.key = key
        self.tracer = tracer  # FastAPI's tracer for operation spans
        self.default = _settings(inner)  # the wrapped app's, when Timing is outside it

    def enter(self, scope: Scope, span: Any, method: str, context: Context) -> Context | None:
        """Mark ``scope`` and return ``context`` with FastAPI's record of ``span`` in it;
        ``None`` when there is nothing to hand over."""
        if SCOPE_KEY in scope:
            return None  # FastAPI (outside, not tracing) keeps its own record for its metrics
        settings = _settings(scope.get("app")) or self.default or {}
        if not settings.get("tracing", True):
            return None  # FastAPI's tracing is off: nothing to stop, no operation spans wanted
        if self.record is None:
            scope[SCOPE_KEY] = None
            return context
        tracer = self.tracer if settings.get("operation_spans", True) else None
        record = self.record(span=span, span_method=method, tracer=tracer)
        scope[SCOPE_KEY] = record
        return otel_context.set_value(self.key, record, context)


def fastapi_handoff(inner: Any, tracer_provider: Any) -> Handoff | None:
    """The hand-off for a Timing that wraps ``inner``; ``None`` when FastAPI is not loaded."""
    if "fastapi" not in sys.modules:
        return None
    try:
        import fastapi
        from fastapi.telemetry._api import _REQUEST_TELEMETRY_KEY, _RequestTelemetry
    except ImportError:  # a FastAPI without native telemetry: nothing to cooperate with
        return None
    record: Any = _RequestTelemetry
    try:
        record(span=None, span_method="GET", tracer=None)
    except TypeError:  # pragma: no cover - a FastAPI that changed its private record
        record = None
    tracer = tracer_provider.get_tracer("fastapi", getattr(fastapi, "__version__", None))
    return Handoff(record, _REQUEST_TELEMETRY_KEY, tracer, inner)
