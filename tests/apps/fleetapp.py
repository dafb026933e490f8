"""The app ``tests/system/test_fleet_multiprocess.py`` serves from several processes: the
client picks the duration each request is recorded with, so the test knows every sample exactly.

Served as ``tests.apps.fleetapp:app`` by uvicorn (several workers, or one per "host").
Environment: ``FLEETAPP_STORAGE_URL`` (default ``memory://``), ``FLEETAPP_KEY_PREFIX``,
``FLEETAPP_STATS_DIR``, ``FLEETAPP_INTERVAL`` (the publishing period, default ``0.25s``).

- ``GET /work?d=<seconds>``: 200 with ``X-Pid``; ``TimingMiddleware`` records exactly ``d``
  (its clock is a context variable the app sets before responding: 0 when the request
  starts, ``d`` once the app has answered);
- ``/__perf__/…``: ``report_app()``, past the stack (the path the stack's entry exempts).

The stack: rate limiting (a huge limit, on the store: its counters add up across the fleet
too) inside a ``TimingMiddleware`` with that clock, behind the entry ``from_env`` would add.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from typing import Any
from urllib.parse import parse_qs

import asgi_perf
from asgi_perf._core.asgi import serve_lifespan
from asgi_perf._report.entry import under, wrap_stack
from asgi_perf._report.settings import ReportSettings

ENV = {
    "ASGI_PERF_STORAGE_URL": os.environ.get("FLEETAPP_STORAGE_URL", "memory://"),
    "ASGI_PERF_KEY_PREFIX": os.environ.get("FLEETAPP_KEY_PREFIX", "asgi_perf_fleet_test:"),
    "ASGI_PERF_STATS_DIR": os.environ.get("FLEETAPP_STATS_DIR", ""),
    "ASGI_PERF_REPORT_PUBLISH_INTERVAL": os.environ.get("FLEETAPP_INTERVAL", "0.25s"),
    "ASGI_PERF_RATE_LIMIT": "100000000/minute",
    "ASGI_PERF_RATE_LIMIT_STORAGE_TIMEOUT": "1s",
}
PID = str(os.getpid()).encode()
_elapsed: ContextVar[float] = ContextVar("elapsed", default=0.0)
report = asgi_perf.report_app(environ=ENV)


async def bare(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await serve_lifespan(receive, send)
        return
    if under(scope, "/__perf__"):
        await report(
            {**scope, "root_path": scope.get("root_path", "") + "/__perf__"}, receive, send
        )
        return
    query = parse_qs(scope["query_string"].decode())
    _elapsed.set(float(query["d"][0]))
    headers = [(b"content-length", b"2"), (b"x-pid", PID)]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


timed = asgi_perf.TimingMiddleware(
    asgi_perf.RateLimitMiddleware.from_env(bare, environ=ENV),
    clock=_elapsed.get,
    slow_threshold=None,
)
app = wrap_stack(timed, bare, ReportSettings.resolve(ENV))
