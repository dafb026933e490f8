"""The full asgi-perf stack (every middleware on, memory store) around a bare ASGI app whose
responses carry ``X-Checksum`` (sha256 of the uncompressed body), for real-server tests.

Served as ``tests.apps.fullstack:app`` by uvicorn, hypercorn and granian subprocesses.
"""

from __future__ import annotations

import os
from typing import Any

import orjson

import asgi_perf
from asgi_perf._core.asgi import serve_lifespan
from tests.apps.checked import respond, stream

BODIES = {
    "/small": b"small body",
    "/large": orjson.dumps([{"id": i, "name": f"item {i}"} for i in range(600)]),
    "/private": b"per user " * 80,
}
STREAM = [f"event {i}\n".encode() * 50 for i in range(4)]


async def bare(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await serve_lifespan(receive, send)
        return
    path = scope["path"]
    if path == "/stream":
        await stream(send, STREAM)
        return
    body = BODIES.get(path, b"not found")
    cache = b"private" if path == "/private" else b"public, max-age=30"
    await respond(send, body, cache, 200 if path in BODIES else 404)


ENV = {
    "ASGI_PERF_STORAGE_URL": os.environ.get("FULLSTACK_STORAGE_URL", "memory://"),
    "ASGI_PERF_RATE_LIMIT_ENABLED": "true",
    "ASGI_PERF_RATE_LIMIT": "1000000/minute",
    "ASGI_PERF_DEDUP_ENABLED": "true",
    "ASGI_PERF_CACHE_ENABLED": "true",
    "ASGI_PERF_QUERIES_ENABLED": "true",
}
app = asgi_perf.from_env(bare, environ=ENV)
