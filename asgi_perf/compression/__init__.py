"""The compression middleware: see :mod:`asgi_perf.compression._middleware`."""

from asgi_perf.compression._middleware import CompressionMiddleware

__all__ = ["CompressionMiddleware"]
