"""The applications the benchmark measures: bare ASGI apps, a Starlette app and a FastAPI app.

Every app builds fresh response messages per request (a middleware may edit the header list in
place), the way a real framework does; the bodies are built once at import time so that building
them never counts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from asgi_perf._core.asgi import serve_lifespan

__all__ = [
    "BODIES",
    "STREAM_CHUNKS",
    "ASGIApp",
    "bytes_app",
    "encoded_app",
    "fastapi_app",
    "json_payload",
    "starlette_app",
    "stream_app",
]

ASGIApp = Callable[..., Any]


def json_payload(size: int) -> Any:
    """A JSON document of about ``size`` bytes that compresses like a real API listing."""
    if size <= 256:
        doc: dict[str, Any] = {"id": 1, "status": "ok", "message": ""}
        doc["message"] = "x" * (size - len(orjson.dumps(doc)))
        return doc
    items: list[dict[str, Any]] = []
    doc = {"count": 0, "next": "/api/v1/users?page=2", "results": items}
    n = 0
    total = len(orjson.dumps(doc))
    while total < size:
        n += 1
        item = {
            "id": n,
            "username": f"user{n * 7919 % 100003}",
            "email": f"user{n * 7919 % 100003}@example{n % 13}.com",
            "active": n % 3 != 0,
            "score": round((n * 37 % 1000) / 7, 3),
            "created": f"2025-{1 + n % 12:02d}-{1 + n % 28:02d}T{n % 24:02d}:{n % 60:02d}:00Z",
            "tags": ["alpha", "beta", "gamma", "delta"][: 1 + n % 4],
            "bio": "Lorem ipsum dolor sit amet " * (1 + n % 3),
        }
        items.append(item)
        total += len(orjson.dumps(item)) + 1
    doc["count"] = n
    return doc


BODIES: dict[str, bytes] = {
    "200B": orjson.dumps(json_payload(200)),
    "12KB": orjson.dumps(json_payload(12 * 1024)),
    "1MB": orjson.dumps(json_payload(1024 * 1024)),
}
STREAM_CHUNKS: list[bytes] = [
    b"".join(orjson.dumps(item) + b"\n" for item in json_payload(4096)["results"])
] * 16


def bytes_app(
    body: bytes,
    content_type: bytes = b"application/json",
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> ASGIApp:
    """A bare ASGI app answering ``body`` with a Content-Length."""
    length = str(len(body)).encode()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", content_type), (b"content-length", length), *extra],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


def encoded_app(
    body: bytes,
    encode: Callable[[bytes], bytes],
    coding: bytes,
    content_type: bytes = b"application/json",
) -> ASGIApp:
    """:func:`bytes_app` calling ``encode`` on its body for every request and sending what it
    returns, labelled with ``coding``: what the codec alone costs on these bytes, beside the
    middleware that calls it. The output of a codec on the same bytes has the same length
    every time, so the fields are made once, as the bare app's are."""
    length = str(len(encode(body))).encode()
    coding_field = (b"content-encoding", coding)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        data = encode(body)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", content_type),
                    (b"content-length", length),
                    coding_field,
                ],
            }
        )
        await send({"type": "http.response.body", "body": data})

    return app


def stream_app(chunks: list[bytes] = STREAM_CHUNKS) -> ASGIApp:
    """A bare ASGI app streaming NDJSON chunks with no Content-Length."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/x-ndjson")],
            }
        )
        for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return app


def starlette_app(body: bytes = BODIES["200B"]) -> Any:
    """A one-route Starlette app (``GET /r``); slowapi needs a Starlette app to run."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def endpoint(request: Request) -> Response:
        return Response(body, media_type="application/json")

    return Starlette(routes=[Route("/r", endpoint)])


def fastapi_app(decorator: Callable[[Any], Any] | None = None) -> Any:
    """A one-route FastAPI app (``GET /r``) returning the 200 B document as a dict.

    ``decorator`` wraps the endpoint (``fastapi_cache.decorator.cache(...)``).
    """
    from fastapi import FastAPI

    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    payload = orjson.loads(BODIES["200B"])

    async def endpoint() -> dict[str, Any]:
        return dict(payload)

    if decorator is not None:
        endpoint = decorator(endpoint)
    app.get("/r")(endpoint)
    return app
