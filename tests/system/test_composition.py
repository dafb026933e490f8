"""The six middlewares stacked in every order stay correct (composition.md).

Every ordered pair, the recommended order and its reverse, and all 720 orders of the six (each
its own test), on small, large, streamed, already-encoded, 304, 429, error and query-heavy
responses, with clients that accept different codings. The invariants checked on every response:

- the body a client decodes (honouring Content-Encoding) equals the app's body;
- Content-Length, when present, equals the bytes sent;
- a client never receives a coding it did not accept (Vary rule, whichever of cache and
  compression is outside);
- a 429 is never cached nor replayed to another client;
- Server-Timing carries the inner layers' entries when Timing is outermost;
- a streamed response still streams: its first chunk leaves before the app sends its last.
"""

from __future__ import annotations

import asyncio
import gzip
import itertools
from collections.abc import Callable
from typing import Any

import brotli
import httpx
import orjson
import pytest
import zstandard

from asgi_perf._core.asgi import ASGIApp
from asgi_perf.queries import record_query
from tests.support import Response, call

LARGE = orjson.dumps([{"id": i, "name": f"item {i}", "tags": ["x", "y"]} for i in range(400)])
SMALL = b"tiny"
STREAM_CHUNKS = [f"chunk {i} ".encode() * 60 for i in range(5)]
ENCODED = gzip.compress(b"already encoded " * 100)
ERROR = b"something broke"


class App:
    """A bare ASGI app with one route per kind of response; counts its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.stream_log: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        self.calls += 1
        path = scope["path"]
        start: Callable[..., Any] = lambda status, headers: send(  # noqa: E731
            {"type": "http.response.start", "status": status, "headers": headers}
        )
        if path == "/large":
            await start(
                200,
                [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(LARGE)).encode()),
                    (b"cache-control", b"public, max-age=60"),
                ],
            )
            await send({"type": "http.response.body", "body": LARGE})
        elif path == "/small":
            await start(200, [(b"content-type", b"text/plain"), (b"content-length", b"4")])
            await send({"type": "http.response.body", "body": SMALL})
        elif path == "/stream":
            await start(200, [(b"content-type", b"text/plain")])
            for i, chunk in enumerate(STREAM_CHUNKS):
                self.stream_log.append(f"app sent {i}")
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await asyncio.sleep(0)
            self.stream_log.append("app sent last")
            await send({"type": "http.response.body", "body": b""})
        elif path == "/encoded":
            await start(
                200,
                [
                    (b"content-type", b"text/plain"),
                    (b"content-encoding", b"gzip"),
                    (b"content-length", str(len(ENCODED)).encode()),
                ],
            )
            await send({"type": "http.response.body", "body": ENCODED})
        elif path == "/etag":
            headers = dict(scope["headers"])
            # weak comparison, as RFC 9110 13.1.2 requires of If-None-Match: a compressed
            # representation's W/"v1" matches too
            if headers.get(b"if-none-match", b"").removeprefix(b"W/") == b'"v1"':
                await start(304, [(b"etag", b'"v1"')])
                await send({"type": "http.response.body", "body": b""})
            else:
                await start(
                    200,
                    [
                        (b"content-type", b"application/json"),
                        (b"etag", b'"v1"'),
                        (b"cache-control", b"max-age=60"),
                    ],
                )
                await send({"type": "http.response.body", "body": LARGE})
        elif path == "/limited":
            await start(200, [(b"content-type", b"text/plain"), (b"cache-control", b"max-age=60")])
            await send({"type": "http.response.body", "body": b"allowed " * 100})
        elif path == "/db":
            for i in range(6):
                record_query("SELECT * FROM books WHERE author_id = ?", 0.001, (i,))
            await start(200, [(b"content-type", b"text/plain")])
            await send({"type": "http.response.body", "body": b"queried"})
        else:
            await start(500, [(b"content-type", b"text/plain")])
            await send({"type": "http.response.body", "body": ERROR})


def builders() -> dict[str, Callable[[ASGIApp], ASGIApp]]:
    from asgi_perf.cache import CacheMiddleware
    from asgi_perf.compression import CompressionMiddleware
    from asgi_perf.dedup import DedupMiddleware
    from asgi_perf.queries import QueryMiddleware
    from asgi_perf.ratelimit import RateLimitMiddleware
    from asgi_perf.timing import TimingMiddleware

    return {
        "timing": lambda app: TimingMiddleware(app),
        "ratelimit": lambda app: RateLimitMiddleware(
            app, limit="1000/minute", rules={"GET /limited": "2/minute"}
        ),
        "dedup": lambda app: DedupMiddleware(app, window=0.5),
        "cache": lambda app: CacheMiddleware(app, default_ttl=60),
        "compression": lambda app: CompressionMiddleware(app, minimum_size=100),
        "queries": lambda app: QueryMiddleware(app, action="header"),
    }


NAMES = ("timing", "ratelimit", "dedup", "cache", "compression", "queries")
RECOMMENDED = NAMES  # outermost first, as asgi_perf.from_env builds it


def build(order: tuple[str, ...]) -> tuple[ASGIApp, App]:
    inner = App()
    app: ASGIApp = inner
    made = builders()
    for name in reversed(order):  # order is outermost first
        app = made[name](app)
    return app, inner


def decode(response: Response) -> bytes:
    coding = (response.header("content-encoding") or "identity").strip().lower()
    body = response.body
    if coding == "gzip":
        return gzip.decompress(body)
    if coding == "br":
        return bytes(brotli.decompress(body))
    if coding == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(body)
    assert coding == "identity", coding
    return body


def check_framing(response: Response) -> None:
    length = response.header_list("content-length")
    assert len(length) <= 1, f"several Content-Length fields: {length}"
    if length:
        assert int(length[0]) == len(response.body), "Content-Length does not match the body"


def strong(etag: str | None) -> str | None:
    """The opaque tag without ``W/``: If-None-Match compares weakly (RFC 9110 8.8.3.2)."""
    return etag.removeprefix("W/") if etag else etag


ACCEPTS = {
    "gzip-client": ("gzip", {"gzip", "identity"}),
    "plain-client": ("", {"identity"}),
    "br-client": ("br;q=1, gzip;q=0", {"br", "identity"}),
    "zstd-client": ("zstd, br, gzip", {"zstd", "br", "gzip", "identity"}),
}


async def get(app: ASGIApp, path: str, client: str, accept: str = "", **kw: Any) -> Response:
    headers = [("accept-encoding", accept)] if accept else []
    headers += kw.pop("headers", [])
    return await call(app, "GET", path, headers=headers, client=(client, 40000), **kw)


async def exercise(order: tuple[str, ...]) -> None:
    app, inner = build(order)
    label = " > ".join(order)

    # Large cacheable body, requested by clients that accept different codings, twice each.
    for _ in range(2):
        for n, (client, (accept, allowed)) in enumerate(ACCEPTS.items()):
            r = await get(app, "/large", f"10.0.0.{n + 1}", accept)
            assert r.status == 200, label
            coding = (r.header("content-encoding") or "identity").lower()
            assert coding in allowed, f"{label}: {client} got {coding}"
            check_framing(r)
            assert decode(r) == LARGE, f"{label}: {client} decoded a different body"
            if "compression" in order:
                vary = ",".join(r.header_list("vary")).lower()
                assert "accept-encoding" in vary, f"{label}: {client} got no Vary: Accept-Encoding"

    r = await get(app, "/small", "10.0.1.1", "gzip")
    check_framing(r)
    assert decode(r) == SMALL

    # Already encoded by the app: never encoded twice.
    r = await get(app, "/encoded", "10.0.1.2", "gzip, br, zstd")
    check_framing(r)
    assert r.header("content-encoding") == "gzip"
    assert r.body == ENCODED, f"{label}: an already-encoded body was changed"

    # Conditional request answered 304 with no body (by the app or by the cache).
    first = await get(app, "/etag", "10.0.1.3", "gzip")
    assert first.status == 200 and decode(first) == LARGE
    etag = first.header("etag")
    assert etag is not None
    r = await get(app, "/etag", "10.0.1.3", "gzip", headers=[("if-none-match", etag)])
    # The client holds the current representation: 304 (RFC 9110 13.1.2), from the cache
    # when there is one, else from the app (compression matches its own weak ETag).
    assert (r.status, r.body) == (304, b""), label
    assert strong(r.header("etag")) == strong(etag), label

    # Errors pass through intact.
    r = await get(app, "/boom", "10.0.1.4", "gzip")
    assert r.status == 500 and decode(r) == ERROR, label

    # Streaming: the first chunk reaches the client before the app sends its last one.
    inner.stream_log.clear()
    seen: list[str] = []
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)
        if message["type"] == "http.response.body" and message.get("body"):
            seen.append(f"client got body after: {inner.stream_log[-1]}")

    from tests.support import make_scope

    scope = make_scope(
        "GET", "/stream", headers=[("accept-encoding", "gzip")], client=("10.0.1.5", 1)
    )
    receive_first = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive_once() -> dict[str, Any]:
        return receive_first.pop() if receive_first else await receive()

    await app(scope, receive_once, send)
    assert seen, f"{label}: no body reached the client"
    assert seen[0] != "client got body after: app sent last", f"{label}: the stream was buffered"
    start = next(m for m in messages if m["type"] == "http.response.start")
    streamed = Response(
        start["status"],
        start["headers"],
        b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body"),
    )
    assert decode(streamed) == b"".join(STREAM_CHUNKS)

    # Rate limit: the third request from one client is refused; the refusal is never served
    # to anyone else, from a cache or a dedup record.
    # (Distinct query strings: a cache or dedup layer outside the limiter would rightly answer
    # repeats of one URL itself.)
    if "ratelimit" in order:
        statuses = [
            (await get(app, "/limited", "10.0.2.1", "gzip", query=f"n={n}")).status
            for n in range(3)
        ]
        assert statuses == [200, 200, 429], f"{label}: {statuses}"
        other = await get(app, "/limited", "10.0.2.2", "gzip", query="n=2")
        assert other.status == 200, f"{label}: a 429 reached another client"
        assert decode(other) == b"allowed " * 100

    # Server-Timing from inner layers reaches the client when Timing is outermost.
    r = await get(app, "/db", "10.0.3.1", "gzip")
    assert decode(r) == b"queried"
    if order[0] == "timing":
        timing = ", ".join(r.header_list("server-timing"))
        assert "total;dur=" in timing, label
        if "queries" in order:
            assert 'db;dur=6;desc="6 queries, 6 of them N+1"' in timing, f"{label}: {timing}"
    if "queries" in order:
        assert r.header("x-n-plus-one") == "6", label  # six queries of one N+1 statement


PAIRS = list(itertools.permutations(NAMES, 2))


@pytest.mark.parametrize("order", PAIRS, ids=["-".join(p) for p in PAIRS])
async def test_every_ordered_pair(order: tuple[str, ...]) -> None:
    await exercise(order)


@pytest.mark.parametrize(
    "order", [RECOMMENDED, tuple(reversed(RECOMMENDED))], ids=["recommended", "reversed"]
)
async def test_full_stack(order: tuple[str, ...]) -> None:
    await exercise(order)


ALL_ORDERS = list(itertools.permutations(NAMES))


@pytest.mark.parametrize("order", ALL_ORDERS, ids=["-".join(o) for o in ALL_ORDERS])
async def test_every_one_of_the_720_orders(order: tuple[str, ...]) -> None:
    await exercise(order)


CACHE_OUTSIDE_EXCHANGE = [
    ("cache", "queries"),
    ("cache", "timing", "queries"),
    ("timing", "cache", "queries"),
    ("timing", "ratelimit", "cache", "queries"),
]


@pytest.mark.parametrize(
    "order", CACHE_OUTSIDE_EXCHANGE, ids=["-".join(o) for o in CACHE_OUTSIDE_EXCHANGE]
)
async def test_a_cache_hit_shows_its_own_exchange_not_the_fill(order: tuple[str, ...]) -> None:
    """Query counts, timings and rate-limit state of the filling request are never replayed:
    a hit ran no query, and its timing (when Timing is outside) is its own."""
    app, inner = build(order)
    fill = await get(app, "/db", "10.0.4.1")
    assert fill.header("x-query-count") == "6" and fill.header("x-cache") == "MISS"
    hit = await get(app, "/db", "10.0.4.1")
    assert (decode(hit), hit.header_list("x-cache"), inner.calls) == (b"queried", ["HIT"], 1)
    inside = order[order.index("cache") + 1 :]
    for layer, name in [("queries", "x-query-count"), ("queries", "x-n-plus-one"),
                        ("timing", "x-response-time"), ("ratelimit", "ratelimit")]:  # fmt: skip
        if layer in inside:
            assert hit.header(name) is None, f"{order}: {name} of the fill replayed"
    timing = ", ".join(hit.header_list("server-timing"))
    assert "db;" not in timing, f"{order}: the fill's query timing replayed: {timing}"
    if order[0] == "timing":
        assert "cache;" in timing and "hit" in timing, timing
    if "ratelimit" in order:  # this request's own rate-limit state, not the fill's
        assert hit.header_list("ratelimit") != fill.header_list("ratelimit")


async def test_lifespan_and_websocket_pass_through_the_full_stack() -> None:
    events: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            message = await receive()
            events.append(message["type"])
            await send({"type": "lifespan.startup.complete"})
        elif scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.accept"})
            message = await receive()
            await send({"type": "websocket.send", "text": message["text"]})
            await send({"type": "websocket.close", "code": 1000})

    stack: ASGIApp = app
    for name in reversed(RECOMMENDED):
        stack = builders()[name](stack)

    sent: list[dict[str, Any]] = []
    lifespan_in = [{"type": "lifespan.startup"}]

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await stack(
        {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
        lambda: _pop(lifespan_in),
        send,
    )
    assert events == ["lifespan.startup"]
    assert sent == [{"type": "lifespan.startup.complete"}]

    sent.clear()
    ws_in = [{"type": "websocket.connect"}, {"type": "websocket.receive", "text": "echo me"}]
    scope = {
        "type": "websocket",
        "path": "/ws",
        "headers": [],
        "client": ("1.2.3.4", 1),
        "query_string": b"",
        "asgi": {"version": "3.0"},
    }
    await stack(scope, lambda: _pop(ws_in), send)
    assert sent == [
        {"type": "websocket.accept"},
        {"type": "websocket.send", "text": "echo me"},
        {"type": "websocket.close", "code": 1000},
    ]


async def _pop(queue: list[dict[str, Any]]) -> dict[str, Any]:
    return queue.pop(0)


# -- from_env: no replay across requests that HTTP tells apart --------------------------------
class EchoApp:
    """Answers from the request fields a page can depend on, so a replay to the wrong request
    shows in its body: ``<scheme>://<host><path> key=<X-API-Key>``, a 206 slice of it for a
    Range, a 304 for ``If-None-Match: "v1"``; private and varied when an API key is sent."""

    def __init__(self) -> None:
        self.calls = 0

    @staticmethod
    def page(scope: dict[str, Any]) -> tuple[int, bytes]:
        headers = dict(scope["headers"])
        host = headers.get(b"host", b"-").decode()
        key = headers.get(b"x-api-key", b"-").decode()
        body = f"{scope['scheme']}://{host}{scope['path']} key={key}".encode()
        if headers.get(b"if-none-match") == b'"v1"':
            return 304, b""
        if b"range" in headers:
            first, last = (int(n) for n in headers[b"range"][6:].split(b"-"))
            return 206, body[first : last + 1]
        return 200, body

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.calls += 1
        status, body = self.page(scope)
        headers = [(b"etag", b'"v1"'), (b"content-type", b"text/plain")]
        if b"x-api-key" in dict(scope["headers"]):
            headers += [(b"cache-control", b"private"), (b"vary", b"X-API-Key")]
        else:
            headers.append((b"cache-control", b"public, max-age=60"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


TOLD_APART = [
    # (first request, second request): same client address, within the dedup window
    ({"headers": [("host", "tenant-a.example")]}, {"headers": [("host", "tenant-b.example")]}),
    ({"scheme": "http"}, {"scheme": "https"}),
    ({"headers": [("range", "bytes=0-3")]}, {"headers": [("range", "bytes=4-7")]}),
    ({"headers": [("if-none-match", '"v1"')]}, {"headers": []}),
    ({"headers": [("x-api-key", "alice")]}, {"headers": [("x-api-key", "bob")]}),
]


@pytest.mark.parametrize(("first", "second"), TOLD_APART)
async def test_from_env_never_replays_one_request_s_answer_to_another(
    first: dict[str, Any], second: dict[str, Any]
) -> None:
    """Dedup outside the cache (the recommended order): the answer the second request gets
    is the one the app gives that request, whatever the first got."""
    from asgi_perf import from_env
    from tests.support import make_scope

    app = EchoApp()
    env = {"ASGI_PERF_DEDUP_ENABLED": "true", "ASGI_PERF_CACHE_ENABLED": "true"}
    stack = from_env(app, environ={"ASGI_PERF_STORAGE_URL": "memory://", **env})
    for spec in (first, second):
        headers = [("host", "site.example"), *spec.get("headers", [])]
        scope = make_scope("GET", "/page", headers=headers, scheme=spec.get("scheme", "https"))
        response = await call(stack, "GET", scope=scope)
        assert (response.status, response.body) == EchoApp.page(scope), spec
        assert response.header("x-dedup") is None


async def test_from_env_replays_carry_no_per_exchange_fields_of_inner_layers() -> None:
    """The second of two identical requests is a dedup replay: it carries neither the inner
    cache's ``X-Cache: MISS`` of the first nor the first's Server-Timing entries."""
    from asgi_perf import from_env

    app = EchoApp()
    env = {"ASGI_PERF_DEDUP_ENABLED": "true", "ASGI_PERF_CACHE_ENABLED": "true"}
    stack = from_env(app, environ={"ASGI_PERF_STORAGE_URL": "memory://", **env})
    first = await call(stack, "GET", "/page", headers=[("host", "site.example")])
    second = await call(stack, "GET", "/page", headers=[("host", "site.example")])
    assert first.header("x-cache") == "MISS" and second.header("x-dedup") == "hit"
    assert second.header("x-cache") is None and second.body == first.body
    timing = ",".join(second.header_list("server-timing"))
    assert "cache" not in timing and "dedup" in timing, timing  # this exchange's own entries
    assert app.calls == 1


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_timing_outside_the_cache_sees_the_framework_route(method: str) -> None:
    """The app runs a cache fill on the request's own scope (or, for a HEAD, hands back what
    the framework wrote into its copy): Timing outside still reads the route template."""
    from fastapi import FastAPI

    from asgi_perf import CacheMiddleware, TimingMiddleware

    app = FastAPI()

    @app.api_route("/users/{user_id}", methods=["GET", "HEAD"])
    async def user(user_id: int) -> dict[str, int]:
        return {"user_id": user_id}

    timing = TimingMiddleware(CacheMiddleware(app), otel="off")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=timing), base_url="http://t"
    ) as client:
        assert (await client.request(method, "/users/7")).status_code == 200
    routes = [route["route"] for route in timing.stats()["routes"]]
    assert routes == ["/users/{user_id}"]
