"""An app for the cache-warming tests under ``uvicorn --workers 2``: every run of a path is
counted in Redis (``<WARM_TEST_PREFIX>runs:<path>``), so the test sees how often the app ran.

``/cached`` answers ``Cache-Control: public, max-age=60``; ``/uncached`` answers ``no-store``
(only the warming claim keeps a second worker from running it again).
"""

from __future__ import annotations

import os
from typing import Any

import redis.asyncio

import asgi_perf
from asgi_perf._core.asgi import send_response, serve_lifespan

_clients: dict[int, Any] = {}


def _client() -> Any:
    """One client per process (a worker's single event loop)."""
    if os.getpid() not in _clients:
        _clients[os.getpid()] = redis.asyncio.Redis.from_url(os.environ["ASGI_PERF_STORAGE_URL"])
    return _clients[os.getpid()]


async def bare(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await serve_lifespan(receive, send)
        return
    path = scope["path"]
    await _client().incr(os.environ["WARM_TEST_PREFIX"] + "runs:" + path)
    control = b"public, max-age=60" if path == "/cached" else b"no-store"
    await send_response(send, 200, b"body of " + path.encode(), [(b"cache-control", control)])


app = asgi_perf.from_env(bare)
