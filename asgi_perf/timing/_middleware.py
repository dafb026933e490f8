"""TimingMiddleware: Server-Timing, X-Response-Time, per-route latency percentiles, slow requests.

Per request (``http`` scopes only; lifespan and websocket pass through untouched):

- Opens the per-request context (:mod:`asgi_perf._core.context`, left in the scope) so inner
  layers can contribute Server-Timing entries. When forwarding ``http.response.start`` it
  appends one ``Server-Timing`` field line (W3C Server-Timing) holding
  ``total;dur=<ms until the start message>`` and every inner entry, plus
  ``X-Response-Time: <ms>ms`` (the same figure). A ``Server-Timing`` the app set
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
  with method, route, status, duration and the inner entries (also in ``extra``: ``http_method``,
  ``http_route``, ``url_path``, ``http_status``, ``duration_seconds``, ``ttfb_seconds``,
  ``server_timing``). A streamed response (several body messages: server-sent events, a
  download) is slow when its *first byte* is late: a stream meant to stay open is not slow.
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
provider set later); ``"off"`` never. Next to FastAPI's own telemetry, or another Timing, a
request still gets one server span (:mod:`asgi_perf.timing._fastapi`).

Recording happens after the response is gone; if it ever fails, the request is unaffected and
the failure is logged once and counted (``record_failures``).

Cost (the spec asks for near zero without OpenTelemetry): one object per request is at once
the context inner layers write into and the state of the ``send``/``receive`` wrappers; the
two headers are formatted once (one ``%.3f``) onto one new list; the series is found through
a ``template -> method`` index (no key tuple), the route template is cached per route object
(:mod:`asgi_perf.routes`), and a duration is written into the sketch's pending batch.

Profiling (:mod:`asgi_perf.timing._profiling`; off by default, and then no layer is added and
pyinstrument is not imported): ``profiling``, ``profile_sample_rate``, ``memory_profiling``,
``profile_keep``, ``profile_max_bytes``, ``profile_interval``. Service level objectives
(:mod:`asgi_perf.timing._slo`): ``slos`` and ``slo_windows``; a series is matched to its
objectives once, when it is created, so routes without one pay nothing per request.

Environment (``from_env``): ``ASGI_PERF_TIMING_ENABLED`` (default true),
``ASGI_PERF_SLOW_REQUEST_THRESHOLD`` (seconds or ``500ms``; ``off``), ``ASGI_PERF_SERVER_TIMING``
(bool), ``ASGI_PERF_SERVER_TIMING_TRUSTED`` (IPs/CIDRs allowed to see Server-Timing),
``ASGI_PERF_TRUSTED_PROXIES``, ``ASGI_PERF_RESPONSE_TIME_HEADER`` (a name, or ``off``),
``ASGI_PERF_OTEL`` (``auto``/``on``/``off``), ``ASGI_PERF_TIMING_MAX_ROUTES`` (500),
``ASGI_PERF_TIMING_ROUTE_FROM_SCOPE`` (true), ``ASGI_PERF_PROFILING_ENABLED``,
``ASGI_PERF_PROFILING_SAMPLE_RATE``, ``ASGI_PERF_MEMORY_PROFILING_ENABLED``,
``ASGI_PERF_PROFILING_KEEP``, ``ASGI_PERF_PROFILING_MAX_BYTES``, ``ASGI_PERF_PROFILING_INTERVAL``,
``ASGI_PERF_SLO``, ``ASGI_PERF_SLO_WINDOWS``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from asgi_perf._core.asgi import ASGIApp, Receive, Scope, Send
from asgi_perf._core.config import (
    ConfigError,
    EnvConfigurable,
    EnvVar,
    install_hint,
    to_bool,
    to_choice,
    to_duration,
    to_header_name,
    to_int,
)
from asgi_perf._core.context import SCOPE_KEY, format_server_timing
from asgi_perf._core.identity import PROXY_HEADER_ENV, TRUSTED_PROXIES_ENV, ClientIP, parse_networks
from asgi_perf._core.routes import method_label as _method
from asgi_perf._core.routes import route_template, template_of
from asgi_perf._core.stats import register
from asgi_perf.timing._exchange import Exchange, ExchangeSettings
from asgi_perf.timing._histogram import BATCH
from asgi_perf.timing._profiling import PROFILING_ENV_VARS, ProfileOptions, ProfilingLayer
from asgi_perf.timing._series import OVERFLOW, RouteStats, timing_document
from asgi_perf.timing._slo import (
    Objective,
    SloTracker,
    parse_slo_windows,
    parse_slos,
)

if TYPE_CHECKING:
    from asgi_perf.timing._otel import Telemetry
    from asgi_perf.timing._otel import _Request as _OtelRequest

__all__ = ["RouteStats", "TimingMiddleware", "timing_document"]  # the series re-exported

logger = logging.getLogger("asgi_perf.timing")

_UNRESOLVED: Any = object()


def _off_or(convert: Callable[[str, str], Any]) -> Callable[[str, str], Any]:
    """An env converter that also accepts ``off``/``none``/``false`` for "disabled"."""

    def wrapped(value: str, name: str) -> Any:
        if value.strip().lower() in ("off", "none", "false", "no", "0"):
            return None
        return convert(value, name)

    return wrapped


class TimingMiddleware(EnvConfigurable):
    """Measure every HTTP request; add Server-Timing; keep per-route percentiles."""

    #: Its request context adds the fields a layer right inside hands it (``from_env``).
    TAKES_FIELDS = True

    ENV_ENABLED = ("ASGI_PERF_TIMING_ENABLED", True)
    OUTERMOST = True  # its total and the inner layers' Server-Timing entries need it outside
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
            _off_or(to_header_name),
        ),
        EnvVar("ASGI_PERF_SLOW_REQUEST_THRESHOLD", "slow_threshold", _off_or(to_duration)),
        EnvVar("ASGI_PERF_OTEL", "otel", lambda v, n: to_choice(v, n, ("auto", "on", "off"))),
        TRUSTED_PROXIES_ENV,
        PROXY_HEADER_ENV,
        EnvVar("ASGI_PERF_TIMING_MAX_ROUTES", "max_routes", lambda v, n: to_int(v, n, minimum=1)),
        EnvVar("ASGI_PERF_TIMING_ROUTE_FROM_SCOPE", "route_from_scope", to_bool),
        *PROFILING_ENV_VARS,
        EnvVar("ASGI_PERF_SLO", "slos", parse_slos),
        EnvVar("ASGI_PERF_SLO_WINDOWS", "slo_windows", parse_slo_windows),
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
        proxy_header: str = "x-forwarded-for",
        otel: str = "auto",
        max_routes: int = 500,
        clock: Callable[[], float] = time.perf_counter,
        profiling: bool = False,
        profile_sample_rate: float | str = 0.0,
        memory_profiling: bool = False,
        profile_keep: int = 5,
        profile_max_bytes: int | str = 8 * 1024 * 1024,
        profile_interval: float | str = 0.001,
        slos: str | Mapping[str, Any] | tuple[Objective, ...] | None = None,
        slo_windows: str | tuple[float | str, float | str] = (300.0, 3600.0),
    ) -> None:
        """Long because it checks every option once, here, so that ``__call__`` checks nothing."""
        self.app = app
        self.server_timing = to_bool(server_timing, "server_timing")
        header = to_header_name(response_time_header, "response_time_header")
        self.response_time_header = None if header is None else header.lower().encode("ascii")
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
            else trusted_proxies,
            proxy_header=proxy_header,
        )
        expose = self._exposure(expose_server_timing)
        self._expose = expose if self.server_timing else False
        self.profiling = ProfileOptions.build(
            profiling,
            profile_sample_rate,
            memory_profiling,
            profile_keep,
            profile_max_bytes,
            profile_interval,
        )
        if self.profiling.enabled:  # else no layer: pyinstrument is not imported, nothing runs
            self.app = ProfilingLayer(
                app,
                self.profiling,
                allowed=expose,
                route_from_scope=self.route_from_scope,
                clock=clock,
            )
        objectives = slos if isinstance(slos, tuple) else parse_slos(slos or "", "slos")
        windows = parse_slo_windows(slo_windows, "slo_windows")  # checked even with no objective
        self.slo = SloTracker(objectives, windows, clock) if objectives else None
        self._exchange = ExchangeSettings(clock, self.response_time_header, self._expose)
        self._routes: dict[tuple[str, str], RouteStats] = {}
        # template -> raw method -> series: the per-request lookup, without building a key
        self._index: dict[str, dict[str, RouteStats]] = {}
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
    @property
    def slow_threshold(self) -> float | None:
        """Seconds from which a request is logged as slow; ``None``: never."""
        return None if self._slow_after == math.inf else self._slow_after

    @slow_threshold.setter
    def slow_threshold(self, seconds: float | None) -> None:
        self._slow_after = math.inf if seconds is None else seconds  # one compare per request

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
            from asgi_perf.timing._fastapi import fastapi_handoff
            from asgi_perf.timing._otel import Telemetry
        except ImportError as exc:
            if self.otel_mode == "on" or explicit:
                raise ConfigError(
                    "otel",
                    self.otel_mode,
                    f"'auto' or 'off': OpenTelemetry is not installed ({install_hint('otel')})",
                ) from exc
            self._telemetry = None
            return
        self._telemetry = Telemetry.from_providers(
            tracer_provider, meter_provider, force=self.otel_mode == "on"
        )
        if self._telemetry is not None and self._telemetry.tracer is not None:
            self._telemetry.handoff = fastapi_handoff(self.app, self._telemetry.tracer_provider)

    # -- request path -------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Long on purpose: the per-request bookkeeping is inlined (every call on it is counted
        by ``tests/unit/package/test_budgets.py``; Timing's budget is 12 calls)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # one object per request: the context inner layers write into, the wrappers' state
        # (its class runs no Python __init__: every slot is set right here)
        ex = Exchange()
        ex.settings = self._exchange
        ex.scope = scope
        ex.send_next = send
        ex.receive_next = receive
        ex.status = 0
        ex.disconnected = False
        ex.ttfb = None
        ex.end = None
        ex.start = start = self._clock()
        # the context inner layers report into, in the scope they all hold (a Timing
        # further out gets its own back when this one is done)
        outer = scope[SCOPE_KEY] if SCOPE_KEY in scope else None
        scope[SCOPE_KEY] = ex
        otel_request = None
        if self._telemetry is not None:
            otel_request = self._start_telemetry(scope)
        self.in_flight += 1
        exc: BaseException | None = None
        try:
            await self.app(scope, ex.receive, ex.send)
        except BaseException as error:
            exc = error
            raise
        finally:
            if outer is None:
                del scope[SCOPE_KEY]
            else:
                scope[SCOPE_KEY] = outer
            if otel_request is not None:
                otel_request.detach()
            self.in_flight -= 1
            status = ex.status
            if ex.disconnected or not status:
                status = 499 if ex.disconnected or isinstance(exc, asyncio.CancelledError) else 500
            try:
                end = ex.end
                duration = (self._clock() if end is None else end) - start
                template = template_of(scope, status, self.route_from_scope)
                try:
                    series = self._index[template][scope["method"]]
                except KeyError:
                    series = self._series(scope.get("method") or "GET", template)
                statuses = series.statuses
                try:
                    statuses[status] += 1
                except KeyError:
                    statuses[status] = 1
                sketch = series.duration  # (its record(), inline: no call)
                held = sketch.held
                sketch.pending[held] = duration
                sketch.held = held = held + 1
                if held == BATCH:
                    sketch.flush()
                if ex.ttfb is not None:
                    series.ttfb.record(ex.ttfb)
                failed = False
                if status >= 500 or exc is not None:
                    failed = status >= 500 or not isinstance(exc, asyncio.CancelledError)
                    if failed:
                        series.errors += 1
                objectives = series.slo
                if objectives is not None:
                    for spec in objectives:
                        spec.record(start + duration, duration, failed)
                # a streamed response (events, a download) is slow to start, not to end
                if (duration if ex.ttfb is None else ex.ttfb) >= self._slow_after:
                    series.slow += 1
                    self._log_slow(scope, template, status, duration, ex)
                if otel_request is not None:
                    route, from_framework = route_template(scope, status, self.route_from_scope)
                    otel_request.finish(
                        _method(scope.get("method") or "GET"),
                        status,
                        route if from_framework else None,
                        duration,
                        scope.get("http_version") or "1.1",
                        exc if failed else None,
                    )
            except Exception:  # the response is gone: bookkeeping must not fail the request
                self.record_failures += 1
                if self.record_failures == 1:
                    logger.exception("recording a request failed (logged once, then counted)")

    def _start_telemetry(self, scope: Scope) -> _OtelRequest | None:
        if self._telemetry is _UNRESOLVED:
            self._resolve_telemetry()
        telemetry = self._telemetry
        if telemetry is None:
            return None
        return telemetry.start(scope, _method(scope.get("method") or "GET"))

    def _series(self, method: str, template: str) -> RouteStats:
        """The series of a request that missed the index: found or made in the table.

        Only known methods of templates that have their own series enter the index, so
        neither raw methods nor overflowing paths can grow it.
        """
        normalised = _method(method)
        key = (normalised, template)
        series = self._routes.get(key)
        if series is None:
            if len(self._routes) >= self.max_routes:
                self.overflowed += 1
                key = (normalised, OVERFLOW)
                series = self._routes.get(key)
                if series is not None:
                    return series
            series = self._routes[key] = RouteStats()
            if self.slo is not None and key[1] == template:
                series.slo = self.slo.for_series(normalised, template)
        if key[1] == template and method == normalised:
            self._index.setdefault(template, {})[method] = series
        return series

    def _log_slow(
        self, scope: Scope, route: str, status: int, duration: float, ex: Exchange
    ) -> None:
        method = _method(scope.get("method") or "GET")
        entries = format_server_timing(ex.timings).decode("latin-1")
        took = f"in {duration:.3f}s" if ex.ttfb is None else f"first byte after {ex.ttfb:.3f}s"
        logger.warning(
            "slow request: %s %s -> %d %s%s",
            method,
            route,
            status,
            took,
            f" ({entries})" if entries else "",
            extra={
                "http_method": method,
                "http_route": route,
                "url_path": scope.get("path") or "/",
                "http_status": status,
                "duration_seconds": duration,
                "ttfb_seconds": ex.ttfb,
                "server_timing": entries,
            },
        )

    # -- statistics ---------------------------------------------------------------------------
    def _scalars(self) -> dict[str, Any]:
        return {
            "in_flight": self.in_flight,
            "slow_threshold_seconds": self.slow_threshold,
            "routes_overflowed": self.overflowed,
            "record_failures": self.record_failures,
            "otel": self._telemetry is not None and self._telemetry is not _UNRESOLVED,
        }

    def stats(self) -> dict[str, Any]:
        return timing_document(self._scalars(), self._routes.items())

    def mergeable_stats(self) -> dict[str, Any]:
        """What the fleet publisher sends: :meth:`stats` with sketch buckets, not quantiles."""
        return {
            **self._scalars(),
            "routes": [
                stats.state(method, route) for (method, route), stats in self._routes.items()
            ],
        }
