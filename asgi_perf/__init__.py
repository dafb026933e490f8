"""asgi-perf: composable pure-ASGI middlewares that make ASGI apps faster and safer under load.

``asgi_perf.from_env(app)`` wraps an app in every middleware the environment enables,
``asgi_perf.install(app)`` adds the same stack to a Starlette or FastAPI app in place; each
middleware is also a plain class ``Middleware(app, **options)`` with ``Middleware.from_env``.
"""

from __future__ import annotations

from asgi_perf._core.config import ConfigError
from asgi_perf._stack import from_env, install
from asgi_perf._warm import CacheWarmer
from asgi_perf.cache import CacheMiddleware
from asgi_perf.compression import CompressionMiddleware
from asgi_perf.dedup import DedupMiddleware
from asgi_perf.queries import NPlusOneError, QueryMiddleware
from asgi_perf.ratelimit import RateLimitMiddleware
from asgi_perf.report import report_app
from asgi_perf.stores import Store, StoreUnavailable, create_store
from asgi_perf.timing import TimingMiddleware

__all__ = [
    "CacheMiddleware",
    "CacheWarmer",
    "CompressionMiddleware",
    "ConfigError",
    "DedupMiddleware",
    "NPlusOneError",
    "QueryMiddleware",
    "RateLimitMiddleware",
    "Store",
    "StoreUnavailable",
    "TimingMiddleware",
    "create_store",
    "from_env",
    "install",
    "report_app",
]

__version__ = "0.1.0"
