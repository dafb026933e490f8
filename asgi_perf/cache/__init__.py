"""The HTTP cache: :class:`CacheMiddleware`, and :func:`purge` to empty it from anywhere."""

from asgi_perf.cache._middleware import CacheMiddleware
from asgi_perf.cache._purge import purge

__all__ = ["CacheMiddleware", "purge"]
