"""The in-process scenarios: for each, a bare app and the variants measured against it.

Every asgi_perf middleware and every peer is imported lazily when its variant is built, so a
module that is missing (not written yet, extra not installed) turns its rows into "not available"
instead of stopping the run. Each variant has a ``check``: the benchmark sends one request and
verifies the variant really does the job it is timed for (the body was compressed, the hit was a
hit, the refusal a 429) before timing it; a failed check is reported, never timed.
"""

from __future__ import annotations

import gzip
import importlib
import inspect
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import apps
from .apps import BODIES
from .driver import Request, Response
from .floor import FloorMiddleware, PingMiddleware

__all__ = [
    "Context",
    "Scenario",
    "Unavailable",
    "Variant",
    "build_scenarios",
    "from_env",
    "stack_environ",
]

Check = Callable[[Response], "str | None"]
Builder = Callable[["Context"], Any]

HUGE = "1000000000/hour"  # a limit the benchmark never reaches: every request is allowed
ALL_CODINGS = "gzip, deflate, br, zstd"
NO_STORE = ((b"cache-control", b"no-store"),)  # the HTTP mode's passthrough response
CACHEABLE = ((b"cache-control", b"max-age=300"),)
ACCEPT_ALL = (("accept-encoding", ALL_CODINGS),)
STACK = "asgi_perf full stack"


class Unavailable(Exception):
    """A variant that cannot be built here (module missing, peer not installed, no Redis)."""


@dataclass
class Context:
    redis_url: str | None = None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    scenario: str = ""  # set by the runner: each scenario gets its own keys
    closers: list[Callable[[], Any]] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        """Every Redis key the benchmark writes contains this (cleanup deletes ``*<run_id>*``)."""
        return f"asgi_perf_bench:{self.run_id}:{self.scenario}:"

    def redis_client(self) -> Any:
        if not self.redis_url:
            raise Unavailable("no --redis URL")
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(self.redis_url)
        self.closers.append(client.aclose)
        return client


@dataclass
class Variant:
    name: str
    role: str  # bare | floor | ping | ours | peer | reference (the irreducible work alone)
    build: Builder
    check: Check | None = None
    prime: int = 0  # requests sent before the check (fill a cache, use up a limit)
    round_trips: bool = False  # count Redis round trips per request
    note: str = ""


@dataclass
class Scenario:
    id: str
    title: str
    request: Request
    variants: list[Variant]  # variants[0] is the bare app
    needs_redis: bool = False


# -- building blocks ------------------------------------------------------------------------------
def _import(module: str, name: str) -> Any:
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise Unavailable(f"{module}.{name} not importable: {exc}") from exc


def ours(module: str, cls: str, app: Builder, **options: Any) -> Builder:
    """An asgi_perf middleware around ``app``; options it does not accept are an API mismatch."""

    def build(ctx: Context) -> Any:
        klass = _import(f"asgi_perf.{module}", cls)
        return klass(app(ctx), **_options(ctx, klass, options))

    return build


def _options(ctx: Context, klass: Any, options: dict[str, Any]) -> dict[str, Any]:
    params = inspect.signature(klass).parameters
    opts = dict(options)
    if opts.get("storage") == "redis":
        opts["storage"] = _redis_url(ctx)
        opts["key_prefix"] = ctx.prefix
    if "otel" in opts and "otel" not in params:
        del opts["otel"]  # a signature without it: OpenTelemetry is off unless providers are given
    unknown = [k for k in opts if k not in params and not _has_var_kw(params)]
    if unknown:
        raise Unavailable(f"{klass.__name__} does not accept {', '.join(unknown)}")
    return opts


def _has_var_kw(params: Any) -> bool:
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _redis_url(ctx: Context) -> str:
    if not ctx.redis_url:
        raise Unavailable("no --redis URL")
    return ctx.redis_url


def peer(factory: Callable[[Context], Any], requirement: str) -> Builder:
    def build(ctx: Context) -> Any:
        try:
            return factory(ctx)
        except ImportError as exc:
            raise Unavailable(f"{requirement} not installed: {exc}") from exc

    return build


def raw(body: str = "200B", extra: tuple[tuple[bytes, bytes], ...] = ()) -> Builder:
    return lambda ctx: apps.bytes_app(BODIES[body], extra=extra)


def codec_alone(coding: str, options: dict[str, Any], body: str = "12KB") -> Builder:
    """The bare app sending its body encoded, per request, by the codec CompressionMiddleware
    makes for ``coding`` with the same ``options`` (one call on the same bytes): the codec's
    own time, which no middleware can spend less than."""

    def build(ctx: Context) -> Any:
        from asgi_perf.compression._codecs import make_codec

        codec = make_codec(coding, **options)
        return apps.encoded_app(BODIES[body], codec.compress, coding.encode("ascii"))

    return build


def stream() -> Builder:
    return lambda ctx: apps.stream_app()


def floor(app: Builder) -> Builder:
    return lambda ctx: FloorMiddleware(app(ctx))


def ping(app: Builder) -> Builder:
    return lambda ctx: PingMiddleware(app(ctx), ctx.redis_client())


def full_stack(app: Builder, storage: str = "memory://", without: str | None = None) -> Builder:
    """``asgi_perf.from_env`` with every middleware enabled (the recommended order), or all
    but one: ``without`` names its ``ASGI_PERF_<NAME>_ENABLED`` variable's ``<NAME>``."""

    def build(ctx: Context) -> Any:
        from_env_ = from_env()
        env = stack_environ(storage if storage != "redis" else _redis_url(ctx))
        env["ASGI_PERF_KEY_PREFIX"] = ctx.prefix
        if without is not None:
            env[f"ASGI_PERF_{without}_ENABLED"] = "false"
        return from_env_(app(ctx), environ=env)

    return build


def from_env() -> Any:
    """``asgi_perf.from_env``."""
    return _import("asgi_perf", "from_env")


def stack_environ(storage: str) -> dict[str, str]:
    return {
        "ASGI_PERF_STORAGE_URL": storage,
        "ASGI_PERF_TIMING_ENABLED": "true",
        "ASGI_PERF_OTEL": "off",
        "ASGI_PERF_RATE_LIMIT_ENABLED": "true",
        "ASGI_PERF_RATE_LIMIT": HUGE,
        "ASGI_PERF_RATE_LIMIT_STRATEGY": "fixed-window",
        "ASGI_PERF_DEDUP_ENABLED": "true",
        "ASGI_PERF_CACHE_ENABLED": "true",
        "ASGI_PERF_COMPRESSION_ENABLED": "true",
        "ASGI_PERF_QUERIES_ENABLED": "true",
        # the fleet publisher (one store round trip per 5 s, off the request path) would add a
        # background task to runs that count round trips per request
        "ASGI_PERF_REPORT_PUBLISH_INTERVAL": "off",
    }


def in_starlette(middleware: Callable[[Context, Any], None], body: str = "200B") -> Builder:
    """A Starlette app with a middleware added the Starlette way (``add_middleware``)."""

    def build(ctx: Context) -> Any:
        app = apps.starlette_app(BODIES[body])
        middleware(ctx, app)
        return app

    return build


# -- checks ---------------------------------------------------------------------------------------
def status(code: int) -> Check:
    return lambda r: None if r.status == code else f"status {r.status}, expected {code}"


def encoded(coding: str, original: bytes) -> Check:
    def check(r: Response) -> str | None:
        if r.status != 200:
            return f"status {r.status}"
        got = r.header("content-encoding")
        if got != coding:
            return f"Content-Encoding {got!r}, expected {coding!r}"
        if _decode(coding, r.body) != original:
            return "decoded body differs from the app's body"
        return None

    return check


def _decode(coding: str, body: bytes) -> bytes:
    if coding == "gzip":
        return gzip.decompress(body)
    if coding == "br":
        import brotli

        return bytes(brotli.decompress(body))
    if coding == "zstd":
        import zstandard

        return bytes(zstandard.ZstdDecompressor().decompressobj().decompress(body))
    return zlib.decompress(body)


def identity(original: bytes) -> Check:
    def check(r: Response) -> str | None:
        if r.status != 200 or r.body != original:
            return f"status {r.status}, body of {len(r.body)} bytes: not the app's response"
        if r.header("content-encoding"):
            return f"unexpectedly encoded: {r.header('content-encoding')}"
        return None

    return check


def header_is(name: str, *values: str) -> Check:
    def check(r: Response) -> str | None:
        got = r.header(name)
        if r.status != 200:
            return f"status {r.status}"
        if got is None or got.split(",")[0].strip().upper() not in {v.upper() for v in values}:
            return f"{name}: {got!r}, expected {' or '.join(values)}"
        return None

    return check


def header_absent(name: str) -> Check:
    def check(r: Response) -> str | None:
        if r.status != 200:
            return f"status {r.status}"
        if r.header(name) is not None:
            return f"{name}: {r.header(name)!r} on a request that should be new"
        return None

    return check


def has_header(name: str) -> Check:
    def check(r: Response) -> str | None:
        if r.status != 200:
            return f"status {r.status}"
        return None if r.header(name) is not None else f"no {name} header"

    return check


def span_recorded(recorder: dict[str, int], key: str) -> Check:
    def check(r: Response) -> str | None:
        if r.status != 200:
            return f"status {r.status}"
        return None if recorder.get(key, 0) > 0 else "no span was recorded"

    return check


# -- peers ----------------------------------------------------------------------------------------
def starlette_gzip(app: Builder, level: int = 6) -> Builder:
    def factory(ctx: Context) -> Any:
        from starlette.middleware.gzip import GZipMiddleware

        return GZipMiddleware(app(ctx), minimum_size=500, compresslevel=level)

    return peer(factory, "starlette")


def starlette_compress(app: Builder, coding: str, level: int) -> Builder:
    def factory(ctx: Context) -> Any:
        from starlette_compress import CompressMiddleware, add_compress_type

        add_compress_type("application/x-ndjson", streaming=True)  # not in its default set

        opts: dict[str, Any] = {"minimum_size": 500, "zstd": False, "brotli": False, "gzip": False}
        if coding == "all":
            opts.update(zstd=True, brotli=True, gzip=True)
        else:
            opts[{"br": "brotli"}.get(coding, coding)] = True
            opts[{"gzip": "gzip_level", "br": "brotli_quality", "zstd": "zstd_level"}[coding]] = (
                level
            )
        return CompressMiddleware(app(ctx), **opts)

    return peer(factory, "starlette-compress")


def brotli_asgi(app: Builder, quality: int) -> Builder:
    def factory(ctx: Context) -> Any:
        from brotli_asgi import BrotliMiddleware

        return BrotliMiddleware(app(ctx), quality=quality, minimum_size=500, gzip_fallback=False)

    return peer(factory, "brotli-asgi")


def _asgi_ratelimit_options(ctx: Context, per_hour: int, redis: bool) -> dict[str, Any]:
    from ratelimit import Rule

    if redis:
        from ratelimit.backends.redis import RedisBackend

        backend: Any = RedisBackend(ctx.redis_client())
    else:
        from ratelimit.backends.simple import MemoryBackend

        backend = MemoryBackend()  # type: ignore[no-untyped-call]
    user = ctx.prefix

    async def authenticate(scope: Any) -> tuple[str, str]:
        return user + scope["client"][0], "default"

    return {
        "authenticate": authenticate,
        "backend": backend,
        "config": {r"^/r": [Rule(hour=per_hour)]},
    }


def asgi_ratelimit_in_starlette(per_hour: int, redis: bool) -> Callable[[Context, Any], None]:
    def add(ctx: Context, app: Any) -> None:
        from ratelimit import RateLimitMiddleware

        app.add_middleware(RateLimitMiddleware, **_asgi_ratelimit_options(ctx, per_hour, redis))

    return add


def asgi_ratelimit(app: Builder, per_hour: int) -> Builder:
    """asgi-ratelimit around a bare app (it is pure ASGI), memory backend."""

    def factory(ctx: Context) -> Any:
        from ratelimit import RateLimitMiddleware

        return RateLimitMiddleware(app(ctx), **_asgi_ratelimit_options(ctx, per_hour, False))

    return peer(factory, "asgi-ratelimit")


def slowapi_in_starlette(limit: str, redis: bool) -> Callable[[Context, Any], None]:
    def add(ctx: Context, app: Any) -> None:
        from slowapi import Limiter, _rate_limit_exceeded_handler
        from slowapi.errors import RateLimitExceeded
        from slowapi.middleware import SlowAPIASGIMiddleware
        from slowapi.util import get_remote_address

        app.state.limiter = Limiter(
            key_func=get_remote_address,
            default_limits=[limit],
            storage_uri=_redis_url(ctx) if redis else "memory://",
            strategy="fixed-window",
            headers_enabled=True,
            key_prefix=ctx.prefix,
        )
        app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)
        app.add_middleware(SlowAPIASGIMiddleware)

    return add


def ours_in_starlette(module: str, cls: str, **options: Any) -> Callable[[Context, Any], None]:
    def add(ctx: Context, app: Any) -> None:
        klass = _import(f"asgi_perf.{module}", cls)
        app.add_middleware(klass, **_options(ctx, klass, options))

    return add


def fastapi_cache(ctx: Context, redis: bool) -> Any:
    from fastapi_cache import FastAPICache
    from fastapi_cache.decorator import cache

    if redis:
        from fastapi_cache.backends.redis import RedisBackend

        backend: Any = RedisBackend(ctx.redis_client())
    else:
        from fastapi_cache.backends.inmemory import InMemoryBackend

        backend = InMemoryBackend()
    FastAPICache.reset()
    FastAPICache.init(backend, prefix=ctx.prefix + "fastapi-cache")
    return apps.fastapi_app(cache(expire=300))


#: The instrumentation scope of :meth:`Otel.sdk_alone`'s spans and records.
REFERENCE_TRACER = "asgi_perf.benchmarks.sdk_alone"


class Otel:
    """One SDK tracer and meter provider shared by both OpenTelemetry variants."""

    def __init__(self) -> None:
        self.spans: dict[str, int] = {}
        self._providers: tuple[Any, Any] | None = None

    def providers(self) -> tuple[Any, Any]:
        if self._providers is None:
            from opentelemetry.sdk.metrics import MeterProvider
            from opentelemetry.sdk.metrics.export import InMemoryMetricReader
            from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

            spans = self.spans

            class Count(SpanProcessor):
                def on_end(self, span: Any) -> None:
                    scope = span.instrumentation_scope
                    name = scope.name if scope is not None else "?"
                    key = (
                        "theirs"
                        if "instrumentation" in name
                        else "reference"
                        if name == REFERENCE_TRACER
                        else "ours"
                    )
                    spans[key] = spans.get(key, 0) + 1

            tracer_provider = TracerProvider()
            tracer_provider.add_span_processor(Count())
            meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
            self._providers = (tracer_provider, meter_provider)
        return self._providers

    def ours(self, app: Builder) -> Builder:
        def build(ctx: Context) -> Any:
            tracer_provider, meter_provider = self.providers()
            make = ours(
                "timing",
                "TimingMiddleware",
                app,
                tracer_provider=tracer_provider,
                meter_provider=meter_provider,
                otel="on",
            )
            return make(ctx)

        return build

    def theirs(self, app: Builder) -> Builder:
        def factory(ctx: Context) -> Any:
            from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

            tracer_provider, meter_provider = self.providers()
            return OpenTelemetryMiddleware(
                app(ctx), tracer_provider=tracer_provider, meter_provider=meter_provider
            )

        return peer(factory, "opentelemetry-instrumentation-asgi")

    def sdk_alone(self, app: Builder) -> Builder:
        """The SDK calls any middleware meeting timing.md must make, and nothing else: a SERVER
        span with the request's attributes, current while the app runs, then its status code
        and its end; one ``http.server.request.duration`` record. No Server-Timing, no route,
        no propagation lookup: what it costs over the bare app is the SDK's own share."""

        def build(ctx: Context) -> Any:
            from opentelemetry import context, trace
            from opentelemetry.trace import SpanKind

            tracer_provider, meter_provider = self.providers()
            tracer = tracer_provider.get_tracer(REFERENCE_TRACER)
            duration = meter_provider.get_meter(REFERENCE_TRACER).create_histogram(
                "http.server.request.duration", unit="s"
            )
            inner = app(ctx)

            async def sdk_alone(scope: Any, receive: Any, send: Any) -> None:
                start = time.time_ns()
                server, client = scope["server"], scope["client"]
                attributes = {
                    "http.request.method": scope["method"],
                    "url.path": scope["path"],
                    "url.scheme": scope["scheme"],
                    "network.protocol.version": scope["http_version"],
                    "server.address": server[0],
                    "server.port": server[1],
                    "client.address": client[0],
                }
                span = tracer.start_span(
                    scope["method"], kind=SpanKind.SERVER, attributes=attributes, start_time=start
                )
                token = context.attach(trace.set_span_in_context(span))
                try:
                    await inner(scope, receive, send)
                finally:
                    context.detach(token)
                span.set_attributes({"http.response.status_code": 200})
                end = time.time_ns()
                span.end(end_time=end)
                measured = {
                    "http.request.method": scope["method"],
                    "url.scheme": scope["scheme"],
                    "http.response.status_code": 200,
                    "network.protocol.version": scope["http_version"],
                }
                duration.record((end - start) / 1e9, measured)

            return sdk_alone

        return build


# -- the scenarios --------------------------------------------------------------------------------
def build_scenarios(peers: bool, redis: bool) -> list[Scenario]:
    """Every in-process scenario; peer variants only with ``peers``, Redis ones with ``redis``.

    One table per middleware (:mod:`benchmarks.tables`), memory first, then the Redis ones.
    """
    # imported here: these modules build on this one's helpers
    from . import tables
    from .dictionaries import dictionary_scenarios
    from .profiling import profiling_scenarios

    scenarios = [
        *tables.floor_scenario(),
        *tables.compression_scenarios(peers),
        *tables.ratelimit_scenarios(peers, redis=False),
        *tables.cache_scenarios(peers, redis=False),
        *tables.dedup_scenarios(redis=False),
        *tables.timing_scenarios(peers),
        *tables.queries_scenarios(),
        *tables.stack_scenarios(redis=False),
        *dictionary_scenarios(),
        *profiling_scenarios(),
    ]
    if redis:
        scenarios += [
            *tables.ratelimit_scenarios(peers, redis=True),
            *tables.cache_scenarios(peers, redis=True),
            *tables.stack_scenarios(redis=True),
            *tables.dedup_scenarios(redis=True),
        ]
    return scenarios
