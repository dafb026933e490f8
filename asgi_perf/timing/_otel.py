"""OpenTelemetry for :class:`~asgi_perf.timing.TimingMiddleware`: one server span, two metrics.

Imported only when OpenTelemetry is configured (see ``TimingMiddleware``): an app that does not
use it never imports ``opentelemetry``.

What it records follows the stable HTTP semantic conventions (semconv 1.23+):

- a SERVER span ``"{method} {http.route}"`` (``"{method}"`` when no framework route is known)
  with ``http.request.method``, ``url.path``, ``url.scheme``, ``server.address``/``server.port``
  (from ``Host``), ``network.protocol.version``, ``client.address``, ``user_agent.original``, and
  at the end ``http.route``, ``http.response.status_code`` and ``error.type``; status ERROR on 5xx
  and on exceptions. Its parent comes from the request headers through the global propagator
  (W3C ``traceparent``/``tracestate`` by default); it is the current span while the app runs, so
  the app's own spans nest under it. It ends at the last body message, like the measurement.
- ``http.server.request.duration`` (histogram, seconds, semconv bucket advice) and
  ``http.server.active_requests`` (an up-down counter, observed: the middleware keeps the
  count per method and scheme and the reader collects it) with the conventional attributes.

Why it is cheaper than ``opentelemetry-instrumentation-asgi``: one span instead of three (that
package also opens an internal span per ``send``), attributes passed in one call, propagator
extraction skipped when the request carries none of the propagator's headers, an observed
active-requests counter (no SDK call per request), and no header collection hooks.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterable
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.metrics import Observation
from opentelemetry.propagate import get_global_textmap
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import SpanKind, Status, StatusCode

from asgi_perf._core.asgi import Scope
from asgi_perf.timing._fastapi import SCOPE_KEY, Handoff, outer_span

__all__ = ["Telemetry", "is_configured"]

_SCHEMA_URL = "https://opentelemetry.io/schemas/1.26.0"
# semconv advice for http.server.request.duration (seconds)
_DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)


def _tracer_is_real(provider: Any) -> bool:
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def _meter_is_real(provider: Any) -> bool:
    # the global default is a private ``_ProxyMeterProvider`` that forwards to nothing until set
    return not isinstance(provider, metrics.NoOpMeterProvider) and not type(
        provider
    ).__name__.startswith("_Proxy")


def is_configured() -> bool:
    """Whether a real (SDK) tracer or meter provider is installed globally."""
    return _tracer_is_real(trace.get_tracer_provider()) or _meter_is_real(
        metrics.get_meter_provider()
    )


class _HeaderGetter(Getter[Any]):
    """Propagator getter over the raw ASGI header list (names are lowercase in ASGI)."""

    def get(self, carrier: Iterable[tuple[bytes, bytes]], key: str) -> list[str] | None:
        name = key.lower().encode("latin-1")
        values = [v.decode("latin-1") for k, v in carrier if k.lower() == name]
        return values or None

    def keys(self, carrier: Iterable[tuple[bytes, bytes]]) -> list[str]:
        return [k.decode("latin-1") for k, _ in carrier]


_GETTER = _HeaderGetter()


def _client_attributes(scope: Scope) -> dict[str, Any]:
    """``client.address`` and ``user_agent.original``: what FastAPI's own span lacks."""
    attributes: dict[str, Any] = {}
    client = scope.get("client")
    if client:
        attributes["client.address"] = str(client[0])
    for key, value in scope.get("headers") or ():
        if key == b"user-agent":
            attributes["user_agent.original"] = value.decode("latin-1")
            break
    return attributes


def _host(scope: Scope) -> tuple[str | None, int | None]:
    for key, value in scope.get("headers") or ():
        if key == b"host":
            text = value.decode("latin-1")
            host, sep, port = text.rpartition(":")
            if sep and port.isdigit() and not host.endswith(":"):  # not a bare IPv6
                return host.strip("[]"), int(port)
            return text.strip("[]"), None
    server = scope.get("server")
    if server:
        return str(server[0]), server[1]
    return None, None


# One in-flight count per meter provider, shared by every middleware using it: the SDK keeps the
# first observable instrument of a name and drops the callbacks of later ones.
_ACTIVE: weakref.WeakKeyDictionary[Any, dict[tuple[str, str], int]] = weakref.WeakKeyDictionary()


def _active_counts(meter_provider: Any) -> dict[tuple[str, str], int]:
    """The (method, scheme) -> in-flight dict observed as ``http.server.active_requests``."""
    counts = _ACTIVE.get(meter_provider)
    if counts is None:
        from asgi_perf import __version__

        counts = _ACTIVE[meter_provider] = {}
        meter = meter_provider.get_meter("asgi_perf", __version__, schema_url=_SCHEMA_URL)

        def observe(options: Any) -> Iterable[Observation]:
            while True:
                try:
                    snapshot = dict(counts)  # the reader may run in another thread
                    break
                except RuntimeError:  # pragma: no cover - resized while copying
                    continue
            return [
                Observation(n, {"http.request.method": method, "url.scheme": scheme})
                for (method, scheme), n in snapshot.items()
            ]

        meter.create_observable_up_down_counter(
            "http.server.active_requests",
            callbacks=[observe],
            unit="{request}",
            description="Number of active HTTP server requests.",
        )
    return counts


class Telemetry:
    """The tracer and instruments one middleware records with; ``tracing``/``metering`` flags."""

    def __init__(self, tracer_provider: Any = None, meter_provider: Any = None) -> None:
        from asgi_perf import __version__

        self.tracer = (
            tracer_provider.get_tracer("asgi_perf", __version__, schema_url=_SCHEMA_URL)
            if tracer_provider is not None
            else None
        )
        self.tracer_provider = tracer_provider
        self.handoff: Handoff | None = None  # to FastAPI's telemetry (see ``_fastapi``)
        self.duration = None
        # in-flight requests per (method, scheme), observed when the reader collects: an
        # asynchronous instrument costs a dict update per request instead of two SDK calls
        self.active: dict[tuple[str, str], int] = {}
        if meter_provider is not None:
            self.active = _active_counts(meter_provider)
            meter = meter_provider.get_meter("asgi_perf", __version__, schema_url=_SCHEMA_URL)
            self.duration = meter.create_histogram(
                "http.server.request.duration",
                unit="s",
                description="Duration of HTTP server requests.",
                explicit_bucket_boundaries_advisory=list(_DURATION_BUCKETS),
            )
        self.propagator = get_global_textmap()
        self.fields = frozenset(f.lower().encode("latin-1") for f in self.propagator.fields)

    @classmethod
    def from_providers(
        cls, tracer_provider: Any, meter_provider: Any, *, force: bool
    ) -> Telemetry | None:
        """The given providers; for one not given, the global one when it is a real (SDK)
        provider, not the API's no-op proxy (or always, when ``force``)."""
        if tracer_provider is None:
            tracers = trace.get_tracer_provider()
            tracer_provider = tracers if force or _tracer_is_real(tracers) else None
        if meter_provider is None:
            meters = metrics.get_meter_provider()
            meter_provider = meters if force or _meter_is_real(meters) else None
        if tracer_provider is None and meter_provider is None:
            return None
        return cls(tracer_provider, meter_provider)

    def start(self, scope: Scope, method: str) -> _Request:
        """Open the span (current until :meth:`_Request.finish`) and count the request active."""
        return _Request(self, scope, method)


class _Request:
    __slots__ = (
        "active_key",
        "handed",
        "scheme",
        "scope",
        "span",
        "start_ns",
        "telemetry",
        "token",
    )

    def __init__(self, telemetry: Telemetry, scope: Scope, method: str) -> None:
        self.telemetry = telemetry
        self.start_ns = time.time_ns()
        self.scheme = scope.get("scheme") or "http"
        self.scope = scope
        self.span: Any = None
        self.token: Any = None
        self.handed = False
        if telemetry.tracer is not None:
            self._open_span(telemetry, telemetry.tracer, scope, method)
        active = telemetry.active
        key = self.active_key = (method, self.scheme)
        active[key] = active.get(key, 0) + 1

    def _open_span(self, telemetry: Telemetry, tracer: Any, scope: Scope, method: str) -> None:
        """Open this request's server span, unless FastAPI (outside) has opened it already."""
        outer = outer_span(scope)
        if outer is not None:  # one server span per request: add to it what it lacks
            outer.set_attributes(_client_attributes(scope))
            return
        headers = scope.get("headers") or ()
        fields = telemetry.fields
        parent = None
        for key, _ in headers:
            if key in fields:
                parent = telemetry.propagator.extract(headers, getter=_GETTER)
                break
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "url.path": scope.get("path") or "/",
            "url.scheme": self.scheme,
            "network.protocol.version": scope.get("http_version") or "1.1",
        }
        if method == "_OTHER":
            attributes["http.request.method_original"] = scope.get("method") or ""
        host, port = _host(scope)
        if host:
            attributes["server.address"] = host
        if port is not None:
            attributes["server.port"] = port
        attributes.update(_client_attributes(scope))
        self.span = tracer.start_span(
            method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
            start_time=self.start_ns,
        )
        context = trace.set_span_in_context(self.span, parent)
        if telemetry.handoff is not None:
            handed = telemetry.handoff.enter(scope, self.span, method, context)
            if handed is not None:
                context, self.handed = handed, True
        self.token = otel_context.attach(context)

    def detach(self) -> None:
        """Stop being the current span (the app returned); call before :meth:`finish`."""
        if self.token is not None:
            otel_context.detach(self.token)
            self.token = None
        if self.handed:
            self.scope.pop(SCOPE_KEY, None)

    def finish(
        self,
        method: str,
        status: int,
        route: str | None,
        duration: float,
        http_version: str,
        exc: BaseException | None,
    ) -> None:
        """End the span at ``start + duration`` and record the metrics."""
        error_type = None
        if exc is not None:
            error_type = type(exc).__qualname__
        elif status >= 500:
            error_type = str(status)
        span = self.span
        if span is not None:
            end: dict[str, Any] = {"http.response.status_code": status}
            if route is not None:
                end["http.route"] = route
                span.update_name(f"{method} {route}")
            if error_type is not None:
                end["error.type"] = error_type
                if exc is not None:
                    span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR))
            span.set_attributes(end)
            span.end(end_time=self.start_ns + int(duration * 1e9))
        telemetry = self.telemetry
        if telemetry.duration is not None:
            attrs: dict[str, Any] = {
                "http.request.method": method,
                "url.scheme": self.scheme,
                "http.response.status_code": status,
                "network.protocol.version": http_version,
            }
            if route is not None:
                attrs["http.route"] = route
            if error_type is not None:
                attrs["error.type"] = error_type
            telemetry.duration.record(duration, attrs)
        telemetry.active[self.active_key] -= 1
