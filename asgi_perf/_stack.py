"""``asgi_perf.from_env(app)``: every middleware the environment enables, in the cheapest order.

Outermost first: Timing → RateLimit → Dedup → Cache → Compression → Query → app.

- Timing outermost, so its ``total`` covers everything and every inner layer's Server-Timing
  entry reaches it.
- RateLimit next: a refused request costs one check and nothing else (no body read, no cache
  or dedup work), and a 429 can never be stored or shared by the layers inside.
- Dedup before Cache: identical in-flight requests collapse before they even look up the cache.
- Cache outside Compression: entries are stored already compressed (one entry per negotiated
  coding), so a hit costs no compression at all.
- Query innermost: it only needs the app's own queries.

RateLimit right inside Timing hands its response fields to Timing's request context, so both
layers' fields leave on one new header list and RateLimit wraps no ``send``; Query, innermost,
leaves its ``db`` entry for Timing to make when it renders, and wraps no ``send`` either (steps
of issue 17's one pass; each used alone, or stacked by hand, adds its own).

With two or more of RateLimit, Dedup and Cache on Redis, a :class:`~asgi_perf._prefetcher.
Prefetcher` just outside them sends their first store calls in one round trip.

Any other order is also correct (``tests/system/test_composition.py``); this one does the
least work.

``ASGI_PERF_CACHE_WARM`` adds :class:`asgi_perf.CacheWarmer` around all of them: its startup
requests take the path real requests take.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any, Protocol, TypeVar

from asgi_perf._core.asgi import ASGIApp, Receive, Scope, Send
from asgi_perf._core.config import (
    ENV_PREFIX,
    EnvConfigurable,
    check_environment,
    register_variables,
    storage_variable,
    to_choice,
)
from asgi_perf._prefetcher import Prefetcher, prefetching

__all__ = ["STACK_ORDER", "STORAGE_CHECK_ENV", "from_env", "install", "middleware_classes"]

logger = logging.getLogger("asgi_perf.config")

#: ``off`` (default: a store that is down fails open, as each middleware documents), ``warn``
#: (one warning at start-up) or ``fail`` (the stack refuses to build: the server does not start).
STORAGE_CHECK_ENV = ENV_PREFIX + "STORAGE_CHECK"
register_variables(STORAGE_CHECK_ENV)

STACK_ORDER = (
    "timing:TimingMiddleware",
    "ratelimit:RateLimitMiddleware",
    "dedup:DedupMiddleware",
    "cache:CacheMiddleware",
    "compression:CompressionMiddleware",
    "queries:QueryMiddleware",
)


def middleware_classes() -> list[type[EnvConfigurable]]:
    """The six middleware classes, outermost first (imported on demand)."""
    classes: list[type[EnvConfigurable]] = []
    for entry in STACK_ORDER:
        module, name = entry.split(":")
        classes.append(getattr(importlib.import_module(f"asgi_perf.{module}"), name))
    return classes


def from_env(app: ASGIApp, environ: Mapping[str, str] | None = None) -> ASGIApp:
    """Wrap ``app`` in every middleware enabled by ``ASGI_PERF_*_ENABLED`` variables.

    Defaults: compression and timing on; rate limiting, dedup, cache and queries off. A bad
    value anywhere raises ``ConfigError`` naming the variable, before any request is served;
    so does an ``ASGI_PERF_*`` name nothing reads under ``ASGI_PERF_STRICT=true`` (otherwise
    it is logged), and an unreachable store under ``ASGI_PERF_STORAGE_CHECK=fail``.
    """
    env = os.environ if environ is None else environ
    check_environment(env)
    wrapped: Any = app
    stored = False
    stateful: list[Any] = []  # the layers with a store, innermost first
    for cls in reversed(middleware_classes()):
        if not cls.enabled_in_env(env):
            continue
        if stateful and not cls.ENV_STORAGE:  # just outside them: their calls sent together
            wrapped, stateful = prefetching(wrapped, stateful), []
        wrapped = cls.from_env(wrapped, environ=env)
        if cls.ENV_STORAGE:
            stored = True
            stateful.append(wrapped)
    if stateful:
        wrapped = prefetching(wrapped, stateful)
    _hand_over_to_timing(wrapped, app)
    _check_storage(env, stored)
    if wrapped is not app:  # nothing enabled: nothing to let the report past
        wrapped = _with_report(wrapped, app, env)
    if env.get("ASGI_PERF_CACHE_WARM", "").strip():
        # outermost: warming requests go through every layer, like the first users' requests
        from asgi_perf._warm import CacheWarmer

        wrapped = CacheWarmer.from_env(wrapped, environ=env)
    return wrapped  # type: ignore[no-any-return]


def _hand_over_to_timing(stack: Any, app: Any) -> None:
    """Under Timing (outermost when enabled), two layers stop wrapping ``send``: the one right
    inside it (past a :class:`~asgi_perf._prefetcher.Prefetcher`, which reads no response
    field) hands its response fields to Timing's request context (``hands_fields``), and the
    innermost leaves its Server-Timing entry for Timing to make when it renders
    (``hands_entry``; it still stands first, as the innermost's entry). Only here, where the
    stack is all ours and nothing of the user's sits between; elsewhere each adds its own."""
    if not getattr(type(stack), "TAKES_FIELDS", False):
        return
    inner = stack.app
    if isinstance(inner, Prefetcher):
        inner = inner.app
    if inner is app:
        return
    if hasattr(inner, "hands_fields"):
        inner.hands_fields = True
    innermost = inner
    while innermost.app is not app:
        innermost = innermost.app
    if hasattr(innermost, "hands_entry"):
        innermost.hands_entry = True


# -- install(app): the stack inside a Starlette / FastAPI app, keeping the app object ----------
class _AddsMiddleware(Protocol):
    def add_middleware(self, middleware_class: Any, /, *args: Any, **kwargs: Any) -> None: ...


AppT = TypeVar("AppT", bound=_AddsMiddleware)


def install(app: AppT, environ: Mapping[str, str] | None = None) -> AppT:
    """Add the :func:`from_env` stack to a Starlette or FastAPI ``app``; return ``app`` itself.

    The stack becomes the outermost of the middlewares added so far (``add_middleware``
    puts the last added outside), in the recommended order. It is built *now*, not when
    Starlette builds its middleware lazily at the first request: a bad option or variable
    raises here, while the app is imported, so the server refuses to start. Routes added
    after ``install`` are served as usual (the app object is the same).
    """
    if not callable(getattr(app, "add_middleware", None)):
        raise TypeError(
            "asgi_perf.install(app) needs an app with add_middleware (Starlette, FastAPI); "
            "Litestar: plugins=[asgi_perf.contrib.litestar.AsgiPerfPlugin()]; "
            "any ASGI app: app = asgi_perf.from_env(app)"
        )
    seam = _Seam()
    stack = from_env(seam, environ)
    if stack is not seam:
        app.add_middleware(_Installed(stack, seam))
    return app


class _Seam:
    """The innermost app of a stack built before the app it wraps exists (:func:`install`)."""

    __slots__ = ("app",)

    def __init__(self) -> None:
        self.app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.app is None:
            raise RuntimeError("asgi_perf: the installed stack was called before it was added")
        await self.app(scope, receive, send)


class _Installed:
    """What :func:`install` hands ``add_middleware``: Starlette calls it with the inner app."""

    __name__ = "asgi_perf.install"  # Starlette's Middleware repr reads it

    def __init__(self, stack: ASGIApp, seam: _Seam) -> None:
        self.stack = stack
        self.seam = seam

    def __call__(self, app: ASGIApp) -> ASGIApp:
        self.seam.app = app
        # Point the innermost layer straight at the app: no extra call per request. (The seam
        # still forwards, for anything that kept a reference to it.)
        layer: Any = self.stack
        while getattr(layer, "app", None) is not self.seam:
            layer = layer.app
        layer.app = app
        return self.stack


# -- ASGI_PERF_STORAGE_CHECK -------------------------------------------------------------------
def _check_storage(env: Mapping[str, str], used: bool) -> None:
    """Read one key from the store the stack uses, when ``ASGI_PERF_STORAGE_CHECK`` asks."""
    raw = env.get(STORAGE_CHECK_ENV, "").strip()
    mode = to_choice(raw, STORAGE_CHECK_ENV, ("off", "warn", "fail")) if raw else "off"
    found = storage_variable(env)
    if mode == "off" or not used or found is None or found[1].startswith("memory://"):
        return
    variable, url = found
    problem = _probe(url)
    if problem is None:
        return
    message = f"{variable}={url!r} did not answer at start-up ({problem})"
    if mode == "warn":
        logger.warning("%s; requests fail open until it does", message)
        return
    from asgi_perf.stores import StoreUnavailable

    raise StoreUnavailable(f"{message}; {STORAGE_CHECK_ENV}=fail refuses to start")


def _probe(url: str, timeout: float = 5.0) -> str | None:
    """``None`` when the store at ``url`` answers a read, else what went wrong.

    Run in a thread of its own with its own event loop, so it works the same when the stack
    is built inside a running loop.
    """
    from asgi_perf.stores import create_store

    async def read() -> None:
        store = create_store(url, timeout=1.0, name=ENV_PREFIX + "STORAGE_URL")
        try:
            await asyncio.wait_for(store.get("storage-check"), timeout)
        finally:
            await store.close()

    outcome: list[str | None] = [None]

    def run() -> None:
        try:
            asyncio.run(read())
        except Exception as exc:
            outcome[0] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=run, name="asgi_perf storage check", daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return "no answer in time" if thread.is_alive() else outcome[0]


def _with_report(stack: ASGIApp, app: ASGIApp, env: Mapping[str, str]) -> ASGIApp:
    """The report's path past the stack, and fleet publishing (:mod:`asgi_perf._report.entry`)."""
    from asgi_perf._report.entry import wrap_stack
    from asgi_perf._report.settings import ReportSettings

    return wrap_stack(stack, app, ReportSettings.resolve(env))
