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

Any other order is also correct (``composition.md``); this one does the least work.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import Any

from asgi_perf._core.asgi import ASGIApp
from asgi_perf._core.config import EnvConfigurable

__all__ = ["STACK_ORDER", "from_env", "middleware_classes"]

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
    value anywhere raises ``ConfigError`` naming the variable, before any request is served.
    """
    env = os.environ if environ is None else environ
    wrapped: Any = app
    for cls in reversed(middleware_classes()):
        if cls.enabled_in_env(env):
            wrapped = cls.from_env(wrapped, environ=env)
    return _with_report(wrapped, app, env)


def _with_report(stack: ASGIApp, app: ASGIApp, env: Mapping[str, str]) -> ASGIApp:
    """The report's path past the stack, and fleet publishing (:mod:`asgi_perf._report.entry`)."""
    from asgi_perf._report.entry import wrap_stack
    from asgi_perf._report.settings import ReportSettings

    return wrap_stack(stack, app, ReportSettings.resolve(env))
