"""TimingMiddleware: Server-Timing, X-Response-Time, per-route latency percentiles, slow requests.

Per request (``http`` scopes only; lifespan and websocket pass through untouched):

- Opens the per-request context (:mod:`asgi_perf.context`) so inner layers can contribute
  Server-Timing entries. When forwarding ``http.response.start`` it appends one ``Server-Timing``
  field line (W3C Server-Timing) holding ``total;dur=<ms until the start message>`` and every
  inner entry, plus ``X-Response-Time: <ms>ms`` (the same figure). A ``Server-Timing`` the app set
  itself is kept: the field is a list, several lines combine.
- The recorded duration runs from the call to the moment the last body message
  (``more_body`` false) has been handed to the server, not to the end of the app call, so work
  the app does after responding (Starlette ``BackgroundTasks``) does not count (an
  ``http.response.pathsend`` ends it too). An app that returns without a final body message is
  measured to its return. Time to first byte (until the first body message) is recorded for
  streamed responses, those sent in more than one body message; for the others it is the
  duration.
- Status: the one sent. A client that disconnected (``http.disconnect`` received, or the app
  cancelled) before any response started is recorded as 499 (nginx's "client closed request");
  an app that raised before starting one as 500. Errors are 5xx statuses plus exceptions.
- Requests slower than ``slow_threshold`` are logged once, at WARNING on ``asgi_perf.timing``,
  with method, route, status, duration and the inner entries (also in ``extra``).
- ``expose_server_timing`` limits who sees Server-Timing (it can leak internals): ``True``
  (everyone), ``False``, a list of IPs/CIDRs (the client address, resolved through
  ``trusted_proxies``), or a ``callable(scope) -> bool``. The statistics record either way.
  ``X-Response-Time`` carries only what the client can measure itself and is not restricted.

Aggregates, per ``(method, route template)`` (:mod:`asgi_perf.routes`): request, error, slow
and per-status counts, duration and time-to-first-byte percentiles from a bounded sketch
(:mod:`asgi_perf.histogram`, ≤ 0.5% relative error), maximum. Methods outside the registered
HTTP methods count as ``_OTHER`` and at most ``max_routes`` series are kept (later ones go to
``__overflow__``), so a hostile client cannot grow memory. The in-flight gauge is per middleware
(the route is known only after the app ran).

OpenTelemetry (:mod:`asgi_perf.otel`), option ``otel`` / ``ASGI_PERF_OTEL``:
``"auto"`` (default) uses ``tracer_provider``/``meter_provider`` when given and, for one not
given, the global provider when a real SDK provider is installed (not the API's no-op proxy).
Without explicit providers this is checked at the first request, so providers set up in a
lifespan handler count, and ``opentelemetry`` is not even imported if nothing imported it before.
``"on"`` always instruments (through the global proxies when none is set, which forward to a
provider set later); ``"off"`` never.

Recording happens after the response is gone; if it ever fails, the request is unaffected and
the failure is logged once and counted (``record_failures``).

Environment (``from_env``): ``ASGI_PERF_TIMING_ENABLED`` (default true),
``ASGI_PERF_SLOW_REQUEST_THRESHOLD`` (seconds or ``500ms``; ``off``), ``ASGI_PERF_SERVER_TIMING``
(bool), ``ASGI_PERF_SERVER_TIMING_TRUSTED`` (IPs/CIDRs allowed to see Server-Timing),
``ASGI_PERF_TRUSTED_PROXIES``, ``ASGI_PERF_RESPONSE_TIME_HEADER`` (a name, or ``off``),
``ASGI_PERF_OTEL`` (``auto``/``on``/``off``), ``ASGI_PERF_TIMING_MAX_ROUTES`` (500),
``ASGI_PERF_TIMING_ROUTE_FROM_SCOPE`` (true).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import sys
import time
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from .asgi import ASGIApp, Message, Receive, Scope, Send
from .config import ConfigError, EnvConfigurable, EnvVar, to_bool, to_choice, to_duration, to_int
from .context import RequestContext, close_context, format_server_timing, open_context
from .histogram import LatencyHistogram
from .identity import ClientIP, parse_networks
from .routes import route_template
from .stats import register

if TYPE_CHECKING:
    from .otel import Telemetry

__all__ = ["RouteStats", "TimingMiddleware"]

logger = logging.getLogger("asgi_perf.timing")

OVERFLOW = "__overflow__"
QUANTILES = (0.5, 0.95, 0.99)
# RFC 9110 §9 plus PATCH (RFC 5789): anything else is one "_OTHER" series, as in OTel semconv
KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
_UNRESOLVED: Any = object()


def _off_or(convert: Callable[[str, str], Any]) -> Callable[[str, str], Any]:
    """An env converter that also accepts ``off``/``none``/``false`` for "disabled"."""

    def wrapped(value: str, name: str) -> Any:
        if value.strip().lower() in ("off", "none", "false", "no", "0"):
            return None
        return convert(value, name)

    return wrapped


def _header_name(value: object, name: str) -> bytes | None:
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.isascii() and value.strip().replace("-", "").isalnum():
        return value.strip().lower().encode("ascii")
    raise ConfigError(name, value, "a header name (letters, digits, '-'), or None to disable")


class RouteStats:
    """What one ``(method, route)`` series has seen."""

    __slots__ = ("count", "duration", "errors", "slow", "statuses", "ttfb")

    def __init__(self) -> None:
        self.count = 0
        self.errors = 0
        self.slow = 0
        self.statuses: dict[int, int] = {}
        self.duration = LatencyHistogram()
        self.ttfb = LatencyHistogram()

    def as_dict(self, method: str, route: str) -> dict[str, Any]:
        def summary(hist: LatencyHistogram) -> dict[str, float | None]:
            out = {f"p{round(q * 100)}": hist.quantile(q) for q in QUANTILES}
            out["max"] = hist.max if hist.count else None
            out["mean"] = hist.mean
            return out

        return {
            "method": method,
            "route": route,
            "count": self.count,
            "errors": self.errors,
            "slow": self.slow,
            "statuses": {str(code): n for code, n in sorted(self.statuses.items())},
            "duration_seconds": summary(self.duration),
            "duration_sum_seconds": self.duration.sum,
            "ttfb_seconds": summary(self.ttfb),
            "ttfb_count": self.ttfb.count,
            "ttfb_sum_seconds": self.ttfb.sum,
        }


class TimingMiddleware(EnvConfigurable):
    """Measure every HTTP request; add Server-Timing; keep per-route percentiles."""

    ENV_ENABLED = ("ASGI_PERF_TIMING_ENABLED", True)
    ENV_VARS = (
        EnvVar("ASGI_PERF_SERVER_TIMING", "server_timing", to_bool),
        EnvVar(
            "ASGI_PERF_SERVER_TIMING_TRUSTED",
            "expose_server_timing",
            lambda v, n: parse_networks(v, n),
        ),
        EnvVar(
            "ASGI_PERF_RESPONSE_TIME_HEADER",
            "response_time_header",
            _off_or(lambda v, n: _header_name(v, n) and v.strip()),
        ),
        EnvVar("ASGI_PERF_SLOW_REQUEST_THRESHOLD", "slow_threshold", _off_or(to_duration)),
        EnvVar("ASGI_PERF_OTEL", "otel", lambda v, n: to_choice(v, n, ("auto", "on", "off"))),
        EnvVar("ASGI_PERF_TRUSTED_PROXIES", "trusted_proxies", lambda v, n: parse_networks(v, n)),
        EnvVar("ASGI_PERF_TIMING_MAX_ROUTES", "max_routes", lambda v, n: to_int(v, n, minimum=1)),
        EnvVar("ASGI_PERF_TIMING_ROUTE_FROM_SCOPE", "route_from_scope", to_bool),
    )

    def __init__(
        self,
        app: ASGIApp,
        *,
        server_timing: bool = True,
        response_time_header: str | None = "X-Response-Time",
        slow_threshold: float | str | None = 1.0,
        tracer_provider: Any = None,
        meter_provider: Any = None,
        route_from_scope: bool = True,
        expose_server_timing: bool | str | Iterable[Any] | Callable[[Scope], bool] = True,
        trusted_proxies: Iterable[Any] | str = (),
        otel: str = "auto",
        max_routes: int = 500,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.app = app
        self.server_timing = to_bool(server_timing, "server_timing")
        self.response_time_header = _header_name(response_time_header, "response_time_header")
        self.slow_threshold = (
            None if slow_threshold is None else to_duration(slow_threshold, "slow_threshold")
        )
        self.route_from_scope = to_bool(route_from_scope, "route_from_scope")
        self.max_routes = to_int(max_routes, "max_routes", minimum=1)
        self.otel_mode = to_choice(otel, "otel", ("auto", "on", "off"))
        if not callable(clock):
            raise ConfigError("clock", clock, "a callable returning seconds as a float")
        self._clock = clock
        self._client_ip = ClientIP(
            [str(n) for n in trusted_proxies]
            if not isinstance(trusted_proxies, str)
            else trusted_proxies
        )
        expose = self._exposure(expose_server_timing)
        self._expose = expose if self.server_timing else False
        self._adds_headers = self._expose is not False or self.response_time_header is not None
        self._routes: dict[tuple[str, str], RouteStats] = {}
        self.in_flight = 0
        self.overflowed = 0
        self.record_failures = 0
        self._telemetry: Telemetry | None = _UNRESOLVED
        self._providers = (tracer_provider, meter_provider)
        if self.otel_mode == "off":
            self._telemetry = None
        elif tracer_provider is not None or meter_provider is not None or self.otel_mode == "on":
            self._resolve_telemetry()  # explicit: fail now, not at the first request
        register("timing", self)

    # -- configuration ------------------------------------------------------------------------
    def _exposure(self, value: object) -> Callable[[Scope], bool] | bool:
        accepted = "True, False, IPs/CIDRs (a comma-separated string or a list) or callable(scope)"
        if isinstance(value, bool):
            return value
        if callable(value):
            return value  # type: ignore[no-any-return]
        if isinstance(value, str | Iterable):
            items = value if isinstance(value, str) else [str(v) for v in value]
            networks = parse_networks(items, "expose_server_timing")
            if not networks:
                raise ConfigError("expose_server_timing", value, accepted)
            resolve = self._client_ip.resolve

            @lru_cache(maxsize=1024)
            def trusted_ip(text: str) -> bool:
                try:
                    ip = ipaddress.ip_address(text)
                except ValueError:
                    return False  # "unknown", a garbled address: not trusted
                return any(ip.version == n.version and ip in n for n in networks)

            return lambda scope: trusted_ip(resolve(scope))
        raise ConfigError("expose_server_timing", value, accepted)

    def _resolve_telemetry(self) -> None:
        tracer_provider, meter_provider = self._providers
        explicit = tracer_provider is not None or meter_provider is not None
        if (
            self.otel_mode == "auto"
            and not explicit
            and "opentelemetry.trace" not in sys.modules
            and "opentelemetry.metrics" not in sys.modules
        ):
            self._telemetry = None  # nothing imported OpenTelemetry: nothing configured it
            return
        try:
            from .otel import Telemetry
        except ImportError as exc:
            if self.otel_mode == "on" or explicit:
                raise ConfigError(
                    "otel", self.otel_mode, "'auto' or 'off' (opentelemetry-api is not installed)"
                ) from exc
            self._telemetry = None
            return
        self._telemetry = Telemetry.from_providers(
            tracer_provider, meter_provider, force=self.otel_mode == "on"
        )

    # -- request path -------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        clock = self._clock
        start = clock()
        if self._telemetry is _UNRESOLVED:
            self._resolve_telemetry()
        ctx, token = open_context()
        # per-request state lives in this frame; the wrappers below close over it
        status = 0  # 0: no response started yet
        disconnected = False
        ttfb: float | None = None
        end: float | None = None

        async def receive_wrapper() -> Message:
            nonlocal disconnected
            message = await receive()
            if message["type"] == "http.disconnect" and not status:
                disconnected = True
            return message

        async def send_wrapper(message: Message) -> None:
            nonlocal status, ttfb, end
            kind = message["type"]
            if kind == "http.response.body":
                if message.get("more_body", False):
                    if ttfb is None:
                        ttfb = clock() - start
                    await send(message)
                    return
                await send(message)
                if end is None:
                    end = clock()
                return
            if kind == "http.response.start":
                status = message["status"]
                if self._adds_headers:
                    self._add_headers(message, scope, ctx, clock() - start)
            elif kind == "http.response.pathsend":  # the file is the whole body
                await send(message)
                if end is None:
                    end = clock()
                return
            await send(message)

        method = scope.get("method") or "GET"
        if method not in KNOWN_METHODS:
            method = "_OTHER"
        telemetry = self._telemetry
        otel_request = None if telemetry is None else telemetry.start(scope, method)
        self.in_flight += 1
        exc: BaseException | None = None
        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        except BaseException as error:
            exc = error
            raise
        finally:
            close_context(token)
            if otel_request is not None:
                otel_request.detach()
            self.in_flight -= 1
            if disconnected or (not status and isinstance(exc, asyncio.CancelledError)):
                status = 499
            elif not status:
                status = 500
            try:
                duration = (clock() if end is None else end) - start
                template, from_framework = route_template(scope, status, self.route_from_scope)
                stats = self._routes.get((method, template))
                if stats is None:
                    stats = self._new_series((method, template))
                stats.count += 1
                stats.statuses[status] = stats.statuses.get(status, 0) + 1
                failed = status >= 500 or (
                    exc is not None and not isinstance(exc, asyncio.CancelledError)
                )
                if failed:
                    stats.errors += 1
                stats.duration.record(duration)
                if ttfb is not None:
                    stats.ttfb.record(ttfb)
                if self.slow_threshold is not None and duration >= self.slow_threshold:
                    stats.slow += 1
                    self._log_slow(method, template, status, duration, ctx)
                if otel_request is not None:
                    otel_request.finish(
                        method,
                        status,
                        template if from_framework else None,
                        duration,
                        scope.get("http_version") or "1.1",
                        exc if failed else None,
                    )
            except Exception:  # the response is gone: bookkeeping must not fail the request
                self.record_failures += 1
                if self.record_failures == 1:
                    logger.exception("recording a request failed (logged once, then counted)")

    def _add_headers(
        self, message: Message, scope: Scope, ctx: RequestContext, elapsed: float
    ) -> None:
        """Server-Timing and X-Response-Time onto the start message (a new header list)."""
        ms = b"%.3f" % (elapsed * 1000.0)
        headers = list(message.get("headers", ()))
        expose = self._expose
        if expose is True or (expose is not False and expose(scope)):
            value = b"total;dur=" + ms.rstrip(b"0").rstrip(b".")
            if ctx.timings:
                value += b", " + format_server_timing(ctx.timings)
            headers.append((b"server-timing", value))
        if self.response_time_header is not None:
            headers.append((self.response_time_header, ms + b"ms"))
        # a new list, not an in-place append: a recorder inside may hold the old one
        message["headers"] = headers

    def _new_series(self, key: tuple[str, str]) -> RouteStats:
        if len(self._routes) >= self.max_routes:
            self.overflowed += 1
            key = (key[0], OVERFLOW)
            existing = self._routes.get(key)
            if existing is not None:
                return existing
        stats = self._routes[key] = RouteStats()
        return stats

    def _log_slow(
        self, method: str, route: str, status: int, duration: float, ctx: RequestContext
    ) -> None:
        entries = format_server_timing(ctx.timings).decode("latin-1")
        logger.warning(
            "slow request: %s %s -> %d in %.3fs%s",
            method,
            route,
            status,
            duration,
            f" ({entries})" if entries else "",
            extra={
                "http_method": method,
                "http_route": route,
                "http_status": status,
                "duration_seconds": duration,
                "server_timing": entries,
            },
        )

    # -- statistics ---------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        return {
            "requests": sum(stats.count for stats in self._routes.values()),
            "in_flight": self.in_flight,
            "slow_threshold_seconds": self.slow_threshold,
            "routes_overflowed": self.overflowed,
            "record_failures": self.record_failures,
            "otel": self._telemetry is not None and self._telemetry is not _UNRESOLVED,
            "routes": [
                stats.as_dict(method, route)
                for (method, route), stats in sorted(self._routes.items())
            ],
        }
