"""The cache middleware: see :mod:`asgi_perf.cache._middleware`."""

from asgi_perf.cache._middleware import CacheMiddleware

__all__ = ["CacheMiddleware"]
