"""asgi-perf: composable pure-ASGI middlewares that make ASGI apps faster and safer under load.

``asgi_perf.from_env(app)`` wraps an app in every middleware the environment enables; each
middleware is also a plain class ``Middleware(app, **options)`` with ``Middleware.from_env``.
"""

from __future__ import annotations

from .cache import CacheMiddleware
from .compression import CompressionMiddleware
from .config import ConfigError
from .dedup import DedupMiddleware
from .queries import NPlusOneError, QueryMiddleware
from .ratelimit import RateLimitMiddleware
from .report import report_app
from .stack import from_env
from .stores import Store, StoreUnavailable, create_store
from .timing import TimingMiddleware

__all__ = [
    "CacheMiddleware",
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
    "report_app",
]

__version__ = "0.1.0"
