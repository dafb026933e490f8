"""The timing middleware: see :mod:`asgi_perf.timing._middleware`."""

from asgi_perf.timing._middleware import TimingMiddleware

__all__ = ["TimingMiddleware"]
