"""asgi-perf: composable pure-ASGI middlewares that make ASGI apps faster and safer under load."""

from __future__ import annotations

from .config import ConfigError
from .stores import Store, StoreUnavailable, create_store

__all__ = [
    "ConfigError",
    "Store",
    "StoreUnavailable",
    "create_store",
]

__version__ = "0.1.0"
