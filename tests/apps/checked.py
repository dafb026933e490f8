"""Responses for the real-server test apps that let a client verify every byte it decodes:
each carries ``X-Checksum``, the sha256 of its uncompressed body, computed before any
middleware touched it."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import Any


def checksum(body: bytes) -> bytes:
    return hashlib.sha256(body).hexdigest().encode()


async def respond(send: Any, body: bytes, cache_control: bytes, status: int = 200) -> None:
    """One JSON response in two messages, with Content-Length."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", cache_control),
                (b"x-checksum", checksum(body)),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def stream(send: Any, chunks: Sequence[bytes], cache_control: bytes | None = None) -> None:
    """A streamed text response, one body message per chunk with a short pause between."""
    headers = [(b"content-type", b"text/plain"), (b"x-checksum", checksum(b"".join(chunks)))]
    if cache_control is not None:
        headers.append((b"cache-control", cache_control))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for chunk in chunks:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await asyncio.sleep(0.001)
    await send({"type": "http.response.body", "body": b""})
