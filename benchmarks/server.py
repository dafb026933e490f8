"""The HTTP-mode server, run in its own process so the load generator does not share its CPU.

``python -m benchmarks.server --server uvicorn --port P [--peers]`` serves one app that dispatches
on the first path segment (``/bare``, ``/compression``, ``/stack`` …) to each configuration; the
dispatch costs the same for all of them. Every configuration wraps the same 200 B JSON app whose
response says ``Cache-Control: no-store``, and the load generator gives every request a new query
string (or, for the ``-paths`` configurations, a new path id): the passthrough path of every
middleware (nothing cached, nothing deduplicated, no body large enough to compress, every
request allowed). The first line on stdout is a JSON object
naming each configuration and whether it could be built.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from .apps import BODIES, bytes_app
from .floor import FloorMiddleware
from .scenarios import HUGE, from_env, stack_environ

__all__ = ["CONFIGS", "build_dispatcher", "main"]

MIDDLEWARES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "compression": ("asgi_perf.compression", "CompressionMiddleware", {}),
    "ratelimit": (
        "asgi_perf.ratelimit",
        "RateLimitMiddleware",
        {"limit": HUGE, "strategy": "fixed-window"},
    ),
    "dedup": ("asgi_perf.dedup", "DedupMiddleware", {}),
    "cache": ("asgi_perf.cache", "CacheMiddleware", {}),
    "timing": ("asgi_perf.timing", "TimingMiddleware", {}),
    "queries": ("asgi_perf.queries", "QueryMiddleware", {}),
}
#: A configuration named ``<name>-paths`` serves ``<name>`` to requests that differ by a path id
#: (``/stack-paths/1``, ``/stack-paths/2`` …, a REST ``/items/{id}``) instead of by the query.
PATH_SHAPED = ("cache", "dedup", "stack")
#: The same jobs done by the peers and by asgi_perf on one FastAPI route (``--peers``): Starlette
#: GZip + slowapi + fastapi-cache2 + OpenTelemetry's ASGI middleware, against ``from_env``'s
#: stack with OpenTelemetry on; both with an SDK tracer provider (no exporter) set globally.
#: ``fastapi-bare`` is the same route with the same provider and no middleware at all: what
#: FastAPI itself costs (its own telemetry included), so the most any stack could reach
#: against the peer stack is its requests/s over the peer stack's.
PEER_STACKS = ("fastapi-stack", "fastapi-peer-stack", "fastapi-bare")
CONFIGS = [
    "bare",
    "floor",
    *MIDDLEWARES,
    "stack",
    "stack-headers",
    *(f"{name}-paths" for name in PATH_SHAPED),
    "starlette-gzip",
    *PEER_STACKS,
]


def _base() -> Any:
    return bytes_app(BODIES["200B"], extra=((b"cache-control", b"no-store"),))


def _middleware(name: str) -> Callable[[], Any]:
    module, cls, options = MIDDLEWARES[name]

    def build() -> Any:
        import importlib
        import inspect

        klass = getattr(importlib.import_module(module), cls)
        opts = dict(options)
        if name == "timing" and "otel" in inspect.signature(klass).parameters:
            opts["otel"] = "off"
        return klass(_base(), **opts)

    return build


def _stack() -> Any:
    return from_env()(_base(), environ=stack_environ("memory://"))


def _stack_headers() -> Any:
    """The bare app sending, as its own, the fields the stack adds to its response (X-Cache,
    Cache-Status, RateLimit*, Server-Timing, X-Response-Time…): no middleware at all, so its
    ratio to the bare app is what the server itself spends on those fields, the part of the
    stack's cost over HTTP that no middleware can save while it sends them."""
    import asyncio

    stack = _stack()
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/stack-headers",
        "raw_path": b"/stack-headers",
        "query_string": b"n=0",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 80),
    }
    asyncio.run(stack(scope, receive, send))
    own = {name for name, _ in sent[0]["headers"][:3]}  # the bare app's three fields
    added = tuple(field for field in sent[0]["headers"] if field[0] not in own)
    return bytes_app(BODIES["200B"], extra=((b"cache-control", b"no-store"), *added))


def _starlette_gzip() -> Any:
    from starlette.middleware.gzip import GZipMiddleware

    return GZipMiddleware(_base(), minimum_size=500, compresslevel=6)


def _fastapi(cached: bool) -> Any:
    """One catch-all FastAPI route answering the 200 B document, ``no-store``; ``cached``: the
    route under fastapi-cache2's decorator (in-memory backend), as a user of it writes it."""
    from fastapi import FastAPI
    from fastapi.responses import Response

    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    body = BODIES["200B"]

    async def endpoint(rest: str) -> Response:
        return Response(body, media_type="application/json", headers={"cache-control": "no-store"})

    if cached:
        from fastapi_cache import FastAPICache
        from fastapi_cache.backends.inmemory import InMemoryBackend
        from fastapi_cache.decorator import cache

        FastAPICache.init(InMemoryBackend(), prefix="bench")
        endpoint = cache(expire=300)(endpoint)
    app.get("/{rest:path}")(endpoint)
    return app


def _global_tracer() -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(TracerProvider())


def _fastapi_stack() -> Any:
    _global_tracer()
    env = {**stack_environ("memory://"), "ASGI_PERF_OTEL": "on"}
    return from_env()(_fastapi(False), environ=env)


def _fastapi_bare() -> Any:
    _global_tracer()
    return _fastapi(False)


def _fastapi_peer_stack() -> Any:
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from slowapi import Limiter, _rate_limit_exceeded_handler
    from slowapi.errors import RateLimitExceeded
    from slowapi.middleware import SlowAPIASGIMiddleware
    from slowapi.util import get_remote_address
    from starlette.middleware.gzip import GZipMiddleware

    _global_tracer()
    app = _fastapi(True)
    app.state.limiter = Limiter(
        key_func=get_remote_address, default_limits=[HUGE], strategy="fixed-window"
    )
    app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)
    app.add_middleware(SlowAPIASGIMiddleware)
    app.add_middleware(GZipMiddleware, minimum_size=500, compresslevel=6)
    return OpenTelemetryMiddleware(app)


def build_dispatcher(peers: bool) -> tuple[Any, dict[str, str]]:
    builders: dict[str, Callable[[], Any]] = {
        "bare": _base,
        "floor": lambda: FloorMiddleware(_base()),
        **{name: _middleware(name) for name in MIDDLEWARES},
        "stack": _stack,
        "stack-headers": _stack_headers,
    }
    for name in PATH_SHAPED:
        builders[f"{name}-paths"] = builders[name]
    if peers:
        builders["starlette-gzip"] = _starlette_gzip
        builders["fastapi-stack"] = _fastapi_stack
        builders["fastapi-peer-stack"] = _fastapi_peer_stack
        builders["fastapi-bare"] = _fastapi_bare
    routes: dict[str, Any] = {}
    status: dict[str, str] = {}
    for name, build in builders.items():
        try:
            routes[name] = build()
            status[name] = "ok"
        except Exception as exc:
            status[name] = f"not available: {exc!r}"
    missing = _base()

    async def dispatch(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            app = routes.get(scope["path"][1:].partition("/")[0], missing)
            await app(scope, receive, send)
        elif scope["type"] == "lifespan":
            await missing(scope, receive, send)

    return dispatch, status


def run_uvicorn(app: Any, port: int, **options: Any) -> None:
    """``app`` under uvicorn on loopback ``port``, quiet (warnings only, no access log)."""
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, **options)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.server")
    parser.add_argument("--server", default="uvicorn", choices=("uvicorn", "granian", "hypercorn"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--peers", action="store_true")
    args = parser.parse_args(argv)
    app, status = build_dispatcher(args.peers)
    print(json.dumps(status), flush=True)
    if args.server == "uvicorn":
        run_uvicorn(app, args.port, loop="auto", http="auto", lifespan="on")
    elif args.server == "hypercorn":
        import asyncio

        from hypercorn.asyncio import serve
        from hypercorn.config import Config

        config = Config()
        config.bind = [f"127.0.0.1:{args.port}"]
        config.loglevel = "WARNING"
        config.accesslog = None
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        asyncio.run(serve(app, config))
    else:
        import os

        from granian.constants import HTTPModes, Interfaces
        from granian.server import Server

        os.environ["ASGI_PERF_BENCH_PEERS"] = "1" if args.peers else ""
        Server(
            f"{__name__}:granian_app",
            address="127.0.0.1",
            port=args.port,
            interface=Interfaces.ASGI,
            http=HTTPModes.http1,
            workers=1,
            factory=True,
            log_enabled=False,
        ).serve()
    sys.exit(0)


def granian_app() -> Any:
    """Granian builds the app in its worker process, from this factory."""
    import os

    return build_dispatcher(bool(os.environ.get("ASGI_PERF_BENCH_PEERS")))[0]


if __name__ == "__main__":
    main()
