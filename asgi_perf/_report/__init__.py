"""The report's parts: settings, the stack's entry (report bypass, fleet publishing) and the
Prometheus exposition. The public surface is :mod:`asgi_perf.report`."""

__all__: list[str] = []
