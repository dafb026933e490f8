"""The ratelimit middleware: see :mod:`asgi_perf.ratelimit._middleware`."""

from asgi_perf.ratelimit._middleware import RateLimitMiddleware

__all__ = ["RateLimitMiddleware"]
