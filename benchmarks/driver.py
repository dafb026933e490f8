"""The in-process ASGI driver: calls an app directly, no network, no server.

Sequential requests on one event loop; what is timed is the whole ``await app(scope, receive,
send)`` including building the scope, so the bare app pays the same driver cost as every
middleware and the difference is the middleware's own cost.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Request", "Response", "count_redis_round_trips", "one", "receiver", "timed"]

ASGIApp = Callable[..., Awaitable[None]]


@dataclass(frozen=True)
class Request:
    """What the driver sends. ``unique`` appends ``n=<counter>`` to the query, ``unique_path`` a
    ``/<counter>`` segment to the path (a REST-style ``/items/{id}``): two ways for no two
    requests to share a key, which caches and dedup treat differently, so both are measured.
    ``headers_for(n)`` adds headers that depend on the request's counter (a polling client)."""

    method: str = "GET"
    path: str = "/r"
    query: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    unique: bool = False
    unique_path: bool = False
    client: tuple[str, int] = ("10.1.2.3", 40000)
    headers_for: Callable[[int], list[tuple[bytes, bytes]]] | None = None

    def scope_factory(self) -> Callable[[int], dict[str, Any]]:
        """A function ``n -> scope`` that does as little as possible per call."""
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers]
        base: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": self.method,
            "scheme": "http",
            "path": self.path,
            "raw_path": self.path.encode(),
            "query_string": self.query.encode(),
            "root_path": "",
            "client": self.client,
            "server": ("bench", 80),
        }
        query = self.query.encode()
        sep = b"&" if query else b""
        unique, unique_path, path = self.unique, self.unique_path, self.path
        extra = self.headers_for

        def make(n: int) -> dict[str, Any]:
            scope = base.copy()
            scope["headers"] = headers.copy() if extra is None else headers + extra(n)
            scope["state"] = {}
            scope["extensions"] = {}
            if unique:
                scope["query_string"] = b"%s%sn=%d" % (query, sep, n)
            if unique_path:
                scope["path"] = f"{path}/{n}"
                scope["raw_path"] = scope["path"].encode()
            return scope

        return make


@dataclass
class Response:
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    chunks: int = 0

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode()
        for k, v in self.headers:
            if k.lower() == wanted:
                return v.decode("latin-1")
        return None


def receiver(body: bytes) -> Callable[[], Awaitable[dict[str, Any]]]:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # a client that stays connected; never returns
        raise AssertionError("unreachable")

    return receive


async def one(app: ASGIApp, request: Request, n: int = 0) -> Response:
    """One request with everything the response held (for checks, not for timing)."""
    response = Response()
    parts: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            response.status = message["status"]
            response.headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            parts.append(bytes(message.get("body", b"")))
            response.chunks += 1

    await app(request.scope_factory()(n), receiver(request.body), send)
    response.body = b"".join(parts)
    return response


async def timed(
    app: ASGIApp,
    request: Request,
    count: int,
    start: int = 0,
    collect: bool = True,
    before: Callable[[], None] | None = None,
) -> float:
    """Seconds per request over ``count`` sequential requests; with ``before``, called ahead
    of each request and not timed (only the requests themselves are)."""
    make = request.scope_factory()
    body = request.body

    async def send(message: dict[str, Any]) -> None:
        return None

    if collect:
        gc.collect()  # garbage of the previous segment is not this one's cost
    if before is None:
        t0 = time.perf_counter()
        for n in range(start, start + count):
            await app(make(n), receiver(body), send)
        return (time.perf_counter() - t0) / count
    total = 0.0
    for n in range(start, start + count):
        scope, receive = make(n), receiver(body)
        before()
        t0 = time.perf_counter()
        await app(scope, receive, send)
        total += time.perf_counter() - t0
    return total / count


class count_redis_round_trips:
    """Counts redis-py asyncio round trips (one per ``send_packed_command``: a pipeline is one)."""

    def __init__(self) -> None:
        self.count = 0
        self._saved: Any = None

    def __enter__(self) -> count_redis_round_trips:
        from redis.asyncio.connection import AbstractConnection

        self._saved = AbstractConnection.send_packed_command
        original = self._saved
        counter = self

        async def send_packed_command(conn: Any, command: Any, check_health: bool = True) -> None:
            counter.count += 1
            await original(conn, command, check_health)

        AbstractConnection.send_packed_command = send_packed_command  # type: ignore[method-assign,assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        from redis.asyncio.connection import AbstractConnection

        AbstractConnection.send_packed_command = self._saved  # type: ignore[method-assign]
