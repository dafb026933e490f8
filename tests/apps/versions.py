"""A polled JSON resource in successive versions, for the dictionary (RFC 9842) tests.

``/api/items/<n>`` (and ``/api/items?v=<n>``) answers :func:`version` ``(n)`` with
``Cache-Control: max-age=60`` (Chromium keeps a dictionary only while it is fresh) and
``X-Checksum``; ``/`` is an empty page to run scripts from. Served as
``tests.apps.versions:app``: the ``asgi_perf.from_env`` stack configured by the environment
of the process (the multi-worker test sets the store and the dictionary rules there).
"""

from __future__ import annotations

from typing import Any

import orjson

import asgi_perf
from asgi_perf._core.asgi import send_response, serve_lifespan
from tests.apps.checked import respond

PAGE = b"<!doctype html><html><head><title>versions</title></head><body></body></html>"


def version(n: int, size: int = 300) -> bytes:
    """A JSON listing whose successive versions differ a little (one item in 20 changes)."""
    items = [
        {"id": i, "name": f"user {i}", "score": i * 7 + (n if i % 20 == n % 20 else 0)}
        for i in range(size)
    ]
    return orjson.dumps({"version": n, "items": items})


async def bare(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await serve_lifespan(receive, send)
        return
    path = scope["path"]
    if path.startswith("/api/items"):
        tail = path.rsplit("/", 1)[-1]
        query = scope["query_string"].decode()
        number = tail if tail.isdigit() else query.removeprefix("v=")
        await respond(send, version(int(number) if number.isdigit() else 0), b"max-age=60")
        return
    await send_response(send, 200, PAGE, content_type=b"text/html; charset=utf-8")


app = asgi_perf.from_env(bare)
