"""The dedup middleware: see :mod:`asgi_perf.dedup._middleware`."""

from asgi_perf.dedup._middleware import DedupMiddleware

__all__ = ["DedupMiddleware"]
