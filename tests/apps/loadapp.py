"""The app ``tests/system/test_load.py`` puts under load: every middleware on, store from the
environment.

Served as ``tests.apps.loadapp:app`` by ``uvicorn --workers 2``. Environment:

- ``LOADAPP_STORAGE_URL`` (else ``REDIS_URL``, else ``memory://``): the shared store;
- ``LOADAPP_KEY_PREFIX`` (default ``asgi_perf_load:``): every Redis key goes under it.

Routes, one per kind of traffic the middlewares treat differently. Every response the app
makes carries ``X-Checksum``, the sha256 of its *uncompressed* body, computed before any
middleware touched it, so the client can verify every byte it decodes:

- ``GET /cache/<n>``: 2 KB JSON, ``public, max-age=60``: served from the cache after the first;
- ``GET /limited``: limited to 50 per second per client by a rate-limit rule (429s expected);
- ``GET /dedup/<n>``: takes 20 ms, ``no-cache`` (the cache does not keep it), so identical
  requests in flight are collapsed by dedup;
- ``GET /compress``: 12 KB JSON, ``no-store``: compressed on every request;
- ``GET /stream``: five chunks with a pause between them (compressed chunk by chunk);
- ``/__perf__/…``: the report (the fleet's: the workers publish through the Redis store),
  which the stack lets through untouched.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import orjson

import asgi_perf
from asgi_perf._core.asgi import serve_lifespan
from tests.apps.checked import respond, stream

DOCS = {
    n: orjson.dumps({"doc": n, "items": [{"id": i, "name": f"item {n}-{i}"} for i in range(60)]})
    for n in range(50)
}
LARGE = orjson.dumps([{"id": i, "name": f"row {i}", "tags": ["a", "b", "c"]} for i in range(300)])
STREAM = [(f"event {i}: " + "x" * 400 + "\n").encode() for i in range(5)]


async def bare(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await serve_lifespan(receive, send)
        return
    path: str = scope["path"]
    head, _, tail = path[1:].partition("/")
    if head == "__perf__":
        await report({**scope, "root_path": "/__perf__"}, receive, send)
    elif head == "cache" and tail.isdigit() and int(tail) in DOCS:
        await respond(send, DOCS[int(tail)], b"public, max-age=60")
    elif head == "limited":
        await respond(send, b'{"limited": true}', b"no-store")
    elif head == "dedup" and tail.isdigit():
        await asyncio.sleep(0.02)
        await respond(send, DOCS[int(tail) % 50], b"no-cache")
    elif head == "compress":
        await respond(send, LARGE, b"no-store")
    elif head == "stream":
        await stream(send, STREAM, b"no-store")
    else:
        await respond(send, b'{"error": "not found"}', b"no-store", 404)


ENV = {
    "ASGI_PERF_STORAGE_URL": os.environ.get("LOADAPP_STORAGE_URL")
    or os.environ.get("REDIS_URL")
    or "memory://",
    "ASGI_PERF_KEY_PREFIX": os.environ.get("LOADAPP_KEY_PREFIX", "asgi_perf_load:"),
    "ASGI_PERF_RATE_LIMIT_ENABLED": "true",
    "ASGI_PERF_RATE_LIMIT": "100000000/minute",
    "ASGI_PERF_RATE_LIMIT_RULES": "GET /limited=50/second",
    # The load generator saturates this machine's cores itself: a 50 ms store deadline (the
    # production default) would turn CPU starvation into "outages". Real ones still show.
    "ASGI_PERF_RATE_LIMIT_STORAGE_TIMEOUT": "1s",
    "ASGI_PERF_DEDUP_ENABLED": "true",
    "ASGI_PERF_CACHE_ENABLED": "true",
    "ASGI_PERF_QUERIES_ENABLED": "true",
    "ASGI_PERF_SLOW_REQUEST_THRESHOLD": "30",
}
report = asgi_perf.report_app(environ=ENV)
app = asgi_perf.from_env(bare, environ=ENV)
