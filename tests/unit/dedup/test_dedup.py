"""DedupMiddleware: coalescing, window replay, what is (not) merged or shared, Idempotency-Key."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest

from asgi_perf._core.config import ConfigError
from asgi_perf._core.http import fingerprint
from asgi_perf.dedup import DedupMiddleware
from asgi_perf.stores import MemoryStore, StoreUnavailable, create_store
from tests.support import Response, call, free_port, make_scope, reader, wait_until

Scope = dict[str, Any]
WAIT = 10  # seconds: every test that could hang is bounded by this


class CountingApp:
    """Reads the whole body, optionally sleeps, answers JSON naming its call number."""

    def __init__(self, delay: float = 0.0, status: int = 200, size: int = 0) -> None:
        self.delay = delay
        self.status = status
        self.size = size
        self.calls = 0
        self.received: list[list[dict[str, Any]]] = []
        self.extra_headers: list[tuple[bytes, bytes]] = []

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        self.calls += 1
        n = self.calls
        messages = []
        while True:
            message = await receive()
            messages.append(message)
            if not message.get("more_body", False):
                break
        self.received.append(messages)
        if self.delay:
            await asyncio.sleep(self.delay)
        body = b"".join(m.get("body", b"") for m in messages)
        payload = {"call": n, "sha": hashlib.sha256(body).hexdigest(), "pad": "x" * self.size}
        data = orjson.dumps(payload)
        headers = [(b"content-type", b"application/json"), *self.extra_headers]
        headers.append((b"content-length", str(len(data)).encode()))
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": data})


async def many(n: int, fn: Callable[[], Any]) -> list[Response]:
    return list(await asyncio.wait_for(asyncio.gather(*(fn() for _ in range(n))), WAIT))


# -- coalescing and window replay ------------------------------------------------------------
async def test_100_concurrent_identical_posts_run_once() -> None:
    app = CountingApp(delay=0.05)
    mw = DedupMiddleware(app)
    responses = await many(100, lambda: call(mw, "POST", "/orders", body=b'{"item": 1}'))
    assert app.calls == 1
    assert {r.status for r in responses} == {200}
    assert len({r.body for r in responses}) == 1
    assert json.loads(responses[0].body)["call"] == 1
    marks = sorted(str(r.header("x-dedup")) for r in responses)
    assert marks.count("None") == 1  # the first carries nothing new
    assert all(m in ("coalesced", "hit") for m in marks if m != "None")
    for r in responses:  # a replay's Content-Length matches its body
        assert r.header("content-length") == str(len(r.body))
    assert mw.stats()["leaders"] == 1


async def test_identical_gets_fan_out_once_then_hit_within_window() -> None:
    app = CountingApp(delay=0.02)
    mw = DedupMiddleware(app, window=5)
    await many(10, lambda: call(mw, "GET", "/feed"))
    later = await call(mw, "GET", "/feed")
    assert app.calls == 1
    assert later.header("x-dedup") == "hit"


async def test_window_zero_coalesces_in_flight_only() -> None:
    app = CountingApp(delay=0.05)
    mw = DedupMiddleware(app, window=0)
    responses = await many(5, lambda: call(mw, "GET", "/w"))
    assert app.calls == 1
    assert sum(r.header("x-dedup") == "coalesced" for r in responses) == 4
    again = await call(mw, "GET", "/w")
    assert again.header("x-dedup") is None
    assert app.calls == 2


async def test_replays_report_server_timing_entries() -> None:
    app = CountingApp()
    mw = DedupMiddleware(app)
    await call(mw, "GET", "/t")
    read, contexts = reader(mw)
    await call(read, "GET", "/t")
    assert [(t.name, t.desc) for t in contexts[0].timings] == [("dedup", "hit")]


# -- what is merged and what is not ----------------------------------------------------------
def _scope(**kw: Any) -> Scope:
    return make_scope(**kw)


PAIRS = [
    # (first request, second request, merged?)
    ({"query": "a=1&b=2"}, {"query": "b=2&a=1"}, True),
    ({"query": "a=1&a=2"}, {"query": "a=2&a=1"}, False),
    ({"query": "a=1"}, {"query": "a=2"}, False),
    ({"body": b"one"}, {"body": b"two"}, False),
    ({"body": [b"on", b"e"]}, {"body": b"one"}, True),  # chunking is not content
    ({"client": ("10.0.0.1", 1)}, {"client": ("10.0.0.2", 1)}, False),
    ({"client": ("10.0.0.1", 1)}, {"client": ("10.0.0.1", 2)}, True),  # same IP, other port
    ({"user": "alice"}, {"user": "bob"}, False),
    (
        {"headers": [("Authorization", "Bearer a")]},
        {"headers": [("Authorization", "Bearer b")]},
        False,
    ),
    ({"headers": [("Cookie", "s=1")]}, {"headers": [("Cookie", "s=2")]}, False),
    ({"headers": [("Accept", "text/html")]}, {"headers": [("Accept", "application/json")]}, False),
    ({"headers": [("Accept-Encoding", "gzip")]}, {"headers": [("Accept-Encoding", "br")]}, False),
    ({"headers": [("X-Other", "1")]}, {"headers": [("X-Other", "2")]}, True),
    ({"method": "GET"}, {"method": "HEAD"}, False),
    ({"path": "/a"}, {"path": "/b"}, False),
    # what a shared cache keys on: scheme and Host (one site's page is never another's)
    (
        {"headers": [("Host", "tenant-a.example")]},
        {"headers": [("Host", "tenant-b.example")]},
        False,
    ),
    ({"headers": [("Host", "a.example")]}, {"headers": [("Host", "A.Example")]}, True),
    ({"headers": [("Host", "a.example")]}, {"headers": [("Host", "a.example:8443")]}, False),
    ({"headers": [("Host", "a.example")]}, {}, False),
    ({"scheme": "http"}, {"scheme": "https"}, False),
    # the origin a proxy reports, as apps read it for links and redirects
    (
        {"headers": [("X-Forwarded-Proto", "http")]},
        {"headers": [("X-Forwarded-Proto", "https")]},
        False,
    ),
    ({"headers": [("X-Forwarded-Host", "evil.example")]}, {}, False),
    ({"headers": [("Forwarded", "host=evil.example")]}, {}, False),
    # a 206 answers its own range only; a 304 or 412 its own validators only
    ({"headers": [("Range", "bytes=0-99")]}, {"headers": [("Range", "bytes=100-199")]}, False),
    ({"headers": [("Range", "bytes=0-99")]}, {}, False),
    ({"headers": [("Range", "bytes=0-99")]}, {"headers": [("Range", "bytes=0-99")]}, True),
    (
        {"headers": [("Range", "bytes=0-99"), ("If-Range", '"v1"')]},
        {"headers": [("Range", "bytes=0-99"), ("If-Range", '"v2"')]},
        False,
    ),
    ({"headers": [("If-None-Match", '"v1"')]}, {}, False),
    ({"headers": [("If-None-Match", '"v1"')]}, {"headers": [("If-None-Match", '"v1"')]}, True),
    ({"headers": [("If-Modified-Since", "Sun, 01 Nov 2026 00:00:00 GMT")]}, {}, False),
    ({"headers": [("If-Match", '"v1"')]}, {}, False),
    ({"headers": [("If-Unmodified-Since", "Sun, 01 Nov 2026 00:00:00 GMT")]}, {}, False),
    # bytes moved from the last fingerprinted header into the body make another request
    (
        {"headers": [("Cookie", "s=ab")], "body": b"cd"},
        {"headers": [("Cookie", "s=abc")], "body": b"d"},
        False,
    ),
]


@pytest.mark.parametrize(("first", "second", "merged"), PAIRS)
async def test_which_requests_are_merged(
    first: dict[str, Any], second: dict[str, Any], merged: bool
) -> None:
    app = CountingApp()
    mw = DedupMiddleware(app)

    async def send(spec: dict[str, Any]) -> Response:
        spec = dict(spec)
        method = spec.pop("method", "POST")
        path = spec.pop("path", "/p")
        body = spec.pop("body", b"")
        user = spec.pop("user", None)
        scope = make_scope(method, path, spec.pop("query", ""), spec.pop("headers", ()), **spec)
        if user is not None:
            scope["state"]["user_id"] = user
        return await call(mw, method, path, body=body, scope=scope)

    await send(first)
    second_response = await send(second)
    assert app.calls == (1 if merged else 2)
    assert (second_response.header("x-dedup") == "hit") is merged


@pytest.mark.parametrize(
    "hosts",
    [
        [("Host", "evil.example"), ("Host", "victim.example")],
        [("Host", "victim.example"), ("HOST", "victim.example")],
        [("Host", "bad host")],
        [("Host", "victim.example/x")],
        [("Host", "a" * 300)],
    ],
    ids=["two", "repeated", "space", "slash", "long"],
)
@pytest.mark.parametrize("vary", [("accept",), ("accept", "host")], ids=["default", "vary-host"])
async def test_repeated_or_invalid_host_bypasses_dedup(
    hosts: list[tuple[str, str]], vary: tuple[str, ...]
) -> None:
    """Frameworks read the first Host, a naive key the last: a request that two readers could
    see as two sites is never merged, recorded nor replayed; with a key it is refused. Also
    when ``vary_headers`` names the Host."""
    app = CountingApp()
    mw = DedupMiddleware(app, vary_headers=vary)
    for _ in range(2):
        response = await call(mw, "GET", "/", headers=hosts)
        assert response.status == 200 and response.header("x-dedup") is None
    keyed = await call(mw, "POST", "/pay", headers=[*hosts, ("Idempotency-Key", "k")], body=b"a")
    assert keyed.status == 400 and json.loads(keyed.body)["title"] == "Invalid Host"
    assert app.calls == 2
    assert mw.stats()["bypassed"] == 2 and mw.stats()["rejected"] == 1


class AccountApp:
    """An API that answers with the account of the caller's X-API-Key, with ``headers``."""

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.headers = headers
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        self.calls += 1
        await receive()
        await asyncio.sleep(0.02)
        key = dict(scope["headers"]).get(b"x-api-key", b"-")
        body = b"account of " + key
        await send({"type": "http.response.start", "status": 200, "headers": self.headers})
        await send({"type": "http.response.body", "body": body})


PRIVATE = [(b"cache-control", b"private")]
VARY_KEY = [(b"vary", b"X-API-Key")]
DEFAULT_VARY = "accept,accept-encoding,accept-language"
SHARING = [
    # (response fields, (user, X-API-Key) of the two requests, vary_headers, app calls)
    (PRIVATE, [(None, "a"), (None, "b")], DEFAULT_VARY, 2),  # two clients behind one NAT
    (PRIVATE, [(None, "a"), (None, "a")], DEFAULT_VARY, 2),  # an address is no identity
    (PRIVATE, [("alice", "a"), ("alice", "a")], DEFAULT_VARY, 1),  # an authenticated user
    (VARY_KEY, [(None, "a"), (None, "b")], DEFAULT_VARY, 2),
    (VARY_KEY, [(None, "a"), (None, "a")], DEFAULT_VARY, 2),  # Vary names a field not held
    (VARY_KEY, [(None, "a"), (None, "a")], DEFAULT_VARY + ",x-api-key", 1),
    (VARY_KEY, [(None, "a"), (None, "b")], DEFAULT_VARY + ",x-api-key", 2),
    (PRIVATE + VARY_KEY, [("u", "a"), ("u", "a")], DEFAULT_VARY, 2),
    ([(b"vary", b"*")], [("u", "a"), ("u", "a")], DEFAULT_VARY, 2),
    ([(b"vary", b"Accept-Encoding")], [(None, "a"), (None, "a")], DEFAULT_VARY, 1),
]


@pytest.mark.parametrize(("fields", "requests", "vary", "calls"), SHARING)
@pytest.mark.parametrize("concurrent", [False, True], ids=["after", "in-flight"])
async def test_private_and_varied_responses_reach_only_their_own_requester(
    fields: list[tuple[bytes, bytes]],
    requests: list[tuple[str | None, str]],
    vary: str,
    calls: int,
    concurrent: bool,
) -> None:
    """``private`` is replayed only to the same user key, never on a shared address; a
    response whose Vary names a field the fingerprint does not hold is not replayed at all."""
    app = AccountApp(fields)
    mw = DedupMiddleware(app, vary_headers=vary)

    async def ask(user: str | None, key: str) -> Response:
        scope = make_scope("GET", "/account", headers=[("X-API-Key", key)])
        if user is not None:
            scope["state"]["user_id"] = user
        return await call(mw, "GET", scope=scope)

    if concurrent:
        responses = list(await asyncio.wait_for(asyncio.gather(*(ask(*r) for r in requests)), WAIT))
    else:
        responses = [await ask(*r) for r in requests]
    assert [r.body for r in responses] == [b"account of " + k.encode() for _, k in requests]
    assert app.calls == calls
    assert sum(r.header("x-dedup") is not None for r in responses) == 2 - calls


async def test_replays_carry_no_per_exchange_fields() -> None:
    """An inner cache's X-Cache, timing, query counts and rate-limit state describe the first
    exchange: a replay (window or Idempotency-Key) carries the response without them."""
    app = CountingApp()
    per_exchange = [
        (b"X-Cache", b"MISS"),
        (b"cache-status", b"asgi-perf; fwd=miss"),
        (b"server-timing", b"app;dur=54.6"),
        (b"x-response-time", b"54.6ms"),
        (b"x-query-count", b"9"),
        (b"x-n-plus-one", b"8"),
        (b"ratelimit", b'"default";r=9;t=60'),
        (b"x-ratelimit-remaining", b"9"),
    ]
    app.extra_headers = [*per_exchange, (b"content-language", b"en")]
    mw = DedupMiddleware(app)
    key = [("Idempotency-Key", "k")]
    for method, headers, mark, value in (
        ("GET", [], "x-dedup", "hit"),
        ("POST", key, "idempotent-replayed", "true"),
    ):
        first = await call(mw, method, "/page", headers=headers, body=b"b")
        replay = await call(mw, method, "/page", headers=headers, body=b"b")
        assert first.header("x-cache") == "MISS"  # the first exchange is passed on as it is
        assert replay.header(mark) == value
        assert replay.body == first.body and replay.header("content-language") == "en"
        for name, _ in per_exchange:
            assert replay.header(name.decode()) is None, name
    assert app.calls == 2


async def test_partial_and_not_modified_answers_reach_only_their_own_request() -> None:
    body = b"0123456789"

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        headers = dict(scope["headers"])
        status, out, fields = 200, body, [(b"etag", b'"v1"')]
        if headers.get(b"if-none-match") == b'"v1"':
            status, out = 304, b""
        elif b"range" in headers:
            first, last = (int(n) for n in headers[b"range"][6:].split(b"-"))
            status, out = 206, body[first : last + 1]
            fields.append((b"content-range", b"bytes %d-%d/10" % (first, last)))
        await send({"type": "http.response.start", "status": status, "headers": fields})
        await send({"type": "http.response.body", "body": out})

    mw = DedupMiddleware(app)
    cases = [
        ([("If-None-Match", '"v1"')], 304, b""),
        ([], 200, body),
        ([("Range", "bytes=0-3")], 206, b"0123"),
        ([("Range", "bytes=4-7")], 206, b"4567"),
        ([("Range", "bytes=0-3")], 206, b"0123"),  # the same range: may be replayed
        ([("If-None-Match", '"v1"')], 304, b""),
    ]
    for headers, status, expected in cases:
        response = await call(mw, "GET", "/file", headers=headers)
        assert (response.status, response.body) == (status, expected), headers
    assert mw.stats()["hits"] == 2


async def test_methods_not_listed_pass_through() -> None:
    app = CountingApp()
    mw = DedupMiddleware(app, methods="GET")
    for _ in range(2):
        await call(mw, "POST", "/x", body=b"b")
        await call(mw, "OPTIONS", "/x")
    assert app.calls == 4


async def test_lifespan_and_websocket_pass_through_untouched() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    mw = DedupMiddleware(app)
    await mw({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    await mw({"type": "websocket"}, None, None)  # type: ignore[arg-type]
    assert seen == ["lifespan", "websocket"]


async def test_odd_client_input_never_crashes() -> None:
    app = CountingApp()
    mw = DedupMiddleware(app)
    scope = make_scope("POST", "/a\x00b", headers=[("Accept", "\xff\xfe")])
    del scope["raw_path"]
    scope["state"]["user_id"] = "\ud800"
    assert (await call(mw, "POST", scope=scope, body=b"\x00")).status == 200
    raw = make_scope("POST", "/k", client=None)
    raw["headers"] = [(b"idempotency-key", b"\xff\xfe")]
    assert (await call(mw, "POST", scope=raw)).status == 400


@pytest.mark.parametrize("path", ["/plain", "/a\x00b"])
async def test_memory_keys_of_a_bodiless_request_are_its_raw_fingerprint(path: str) -> None:
    mw = DedupMiddleware(CountingApp())
    scope = make_scope("GET", path)
    scope["raw_path"] = path.encode("latin-1")
    parts, bodiless = mw.parts(scope)
    assert parts is not None and bodiless
    assert (await call(mw, "GET", scope=scope)).status == 200
    store = mw.store
    assert isinstance(store, MemoryStore)
    assert list(store._data) == ["{" + fingerprint(parts, b"", True) + "}r"]


# -- the request body ------------------------------------------------------------------------
async def test_chunked_body_and_disconnect_reach_the_app_unchanged() -> None:
    got: list[dict[str, Any]] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            got.append(message)
            if message["type"] == "http.disconnect":
                break
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    mw = DedupMiddleware(app)
    await call(mw, "POST", "/c", body=[b"ab", b"", b"cd"], disconnect_after_body=True)
    assert got == [
        {"type": "http.request", "body": b"ab", "more_body": True},
        {"type": "http.request", "body": b"", "more_body": True},
        {"type": "http.request", "body": b"cd", "more_body": False},
        {"type": "http.disconnect"},
    ]


async def test_http1_get_without_framing_headers_is_not_read_before_the_app() -> None:
    """RFC 9112 §6.3: no Content-Length nor Transfer-Encoding on HTTP/1.x means no body, so
    the app gets the server's own ``receive``; otherwise the body is read and fingerprinted."""
    app = CountingApp()
    mw = DedupMiddleware(app)
    pulled_before_app: list[int] = []
    pulled = 0

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b"", "more_body": False}

    async def start(message: dict[str, Any]) -> None:
        pass

    original = app.__call__

    async def counting(scope: Scope, receive_: Any, send: Any) -> None:
        pulled_before_app.append(pulled)
        await original(scope, receive_, send)

    mw.app = counting
    await mw(make_scope("GET", "/plain", query="a=1"), receive, start)
    await mw(
        make_scope("GET", "/plain", query="a=2", headers=[("Content-Length", "0")]), receive, start
    )
    h2 = make_scope("GET", "/plain", query="a=3", http_version="2")
    await mw(h2, receive, start)
    # the 1st: the app read it itself; the 2nd and 3rd: read by the middleware first
    assert pulled_before_app == [0, 2, 3]
    assert app.calls == 3


@pytest.mark.parametrize(
    ("headers", "http_version"),
    [([("Content-Length", "3")], "1.1"), ([("Transfer-Encoding", "chunked")], "1.1"), ([], "2")],
)
async def test_get_bodies_are_fingerprinted_when_the_request_has_one(
    headers: list[tuple[str, str]], http_version: str
) -> None:
    app = CountingApp()
    mw = DedupMiddleware(app)
    for body in (b"one", b"two", b"one"):
        scope = make_scope("GET", "/g", headers=headers, http_version=http_version)
        await call(mw, "GET", body=body, scope=scope)
    assert app.calls == 2


async def test_body_larger_than_limit_reaches_the_app_intact_and_is_not_buffered() -> None:
    chunks = [bytes([i]) * 400 for i in range(10)]
    seen: list[list[bytes]] = []
    pulled = app_got = max_ahead = 0

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        nonlocal app_got
        got = []
        while True:
            message = await receive()
            app_got += 1
            got.append(message["body"])
            if not message.get("more_body", False):
                break
        seen.append(got)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    pending: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal pulled, max_ahead
        pulled += 1
        max_ahead = max(max_ahead, pulled - app_got)  # messages held by the middleware
        return pending.pop(0)

    mw = DedupMiddleware(app, max_body_size=1000)
    for _ in range(2):
        pending[:] = [
            {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
            for i, c in enumerate(chunks)
        ]
        pulled = app_got = 0
        await mw(make_scope("POST", "/big"), receive, _discard)
    assert seen == [chunks, chunks]  # both ran (never merged), each body intact
    assert max_ahead == 3  # 1200 B: the first chunk past the 1000 B limit stops the read
    assert mw.stats()["passed_through"] == 2


async def _discard(message: dict[str, Any]) -> None:
    pass


# -- the leader fails or does not produce a shareable response -------------------------------
async def _leader_and_waiters(mw: DedupMiddleware, n: int = 10, **kw: Any) -> list[Any]:
    leader = asyncio.create_task(call(mw, "POST", "/f", body=b"same", **kw))
    # the leader holds the claim (a cluster's first call takes a while: no fixed sleep is
    # long enough)
    await wait_until(lambda: mw.stats()["leaders"] >= 1, WAIT)
    waiters = [asyncio.create_task(call(mw, "POST", "/f", body=b"same")) for _ in range(n)]
    done = await asyncio.wait_for(asyncio.gather(leader, *waiters, return_exceptions=True), WAIT)
    return list(done)


async def test_leader_raises_waiters_run_their_own() -> None:
    calls = 0

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        nonlocal calls
        calls += 1
        await receive()
        if calls == 1:
            await asyncio.sleep(0.1)
            raise RuntimeError("boom")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"own"})

    mw = DedupMiddleware(app)
    results = await _leader_and_waiters(mw)
    assert isinstance(results[0], RuntimeError)
    assert [r.body for r in results[1:]] == [b"own"] * 10
    assert all(r.header("x-dedup") is None for r in results[1:])
    assert calls == 11


async def test_leader_raising_after_its_complete_response_still_serves_the_waiters() -> None:
    """The record is published when the last byte leaves the app (before the client has it),
    so an app that fails afterwards (a failing background task) does not make every waiter
    run the request again: they get the response its own client got."""
    calls = 0

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        nonlocal calls
        calls += 1
        await receive()
        await asyncio.sleep(0.1)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})
        raise RuntimeError("after the response")

    mw = DedupMiddleware(app)
    results = await _leader_and_waiters(mw)
    assert isinstance(results[0], RuntimeError)
    assert [(r.body, r.header("x-dedup")) for r in results[1:]] == [(b"done", "coalesced")] * 10
    assert calls == 1


async def test_leader_client_disconnects_mid_response_waiters_get_full_responses() -> None:
    calls = 0

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        nonlocal calls
        calls += 1
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        if calls == 1:
            await asyncio.sleep(0.1)  # headers sent, body not yet: the client goes away
            message = await receive()
            assert message["type"] == "http.disconnect"
            return  # the app stops: the response is never completed
        await send({"type": "http.response.body", "body": b"whole"})

    mw = DedupMiddleware(app)

    async def disconnected_leader() -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []
        msgs = [{"type": "http.request", "body": b"same"}, {"type": "http.disconnect"}]

        async def receive() -> dict[str, Any]:
            return msgs.pop(0)

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await mw(make_scope("POST", "/f"), receive, send)
        return sent

    leader = asyncio.create_task(disconnected_leader())
    await asyncio.sleep(0.02)
    waiters = [asyncio.create_task(call(mw, "POST", "/f", body=b"same")) for _ in range(5)]
    results = await asyncio.wait_for(asyncio.gather(*waiters), WAIT)
    await asyncio.wait_for(leader, WAIT)
    assert [r.body for r in results] == [b"whole"] * 5
    assert calls == 6


async def test_cancelled_leader_releases_waiters() -> None:
    app = CountingApp(delay=0.2)
    mw = DedupMiddleware(app)
    leader = asyncio.create_task(call(mw, "GET", "/c"))
    await asyncio.sleep(0.02)
    waiters = [asyncio.create_task(call(mw, "GET", "/c")) for _ in range(3)]
    await asyncio.sleep(0.02)
    leader.cancel()  # what a server may do when the client goes away
    results = await asyncio.wait_for(asyncio.gather(*waiters), WAIT)
    assert [r.status for r in results] == [200] * 3
    assert all(r.header("x-dedup") is None for r in results)
    assert app.calls == 4 and mw.stats()["released"] == 3


async def test_streaming_leader_releases_waiters_before_its_stream_ends() -> None:
    stream_may_end = asyncio.Event()
    calls = 0

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        nonlocal calls
        calls += 1
        first = calls == 1
        await receive()
        await asyncio.sleep(0.05)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        if first:  # the leader's stream only ends after every waiter has its own answer
            await asyncio.wait_for(stream_may_end.wait(), WAIT)
        await send({"type": "http.response.body", "body": b"b"})

    mw = DedupMiddleware(app)
    leader = asyncio.create_task(call(mw, "GET", "/s"))
    await asyncio.sleep(0.01)
    waiters = await many(5, lambda: call(mw, "GET", "/s"))
    stream_may_end.set()
    first = await asyncio.wait_for(leader, WAIT)
    assert first.chunks == [b"a", b"b"]
    assert [r.body for r in waiters] == [b"ab"] * 5
    assert all(r.header("x-dedup") is None for r in waiters)
    assert calls == 6


async def test_response_larger_than_limit_is_not_shared() -> None:
    app = CountingApp(delay=0.05, size=5000)
    mw = DedupMiddleware(app, max_body_size=1000)
    results = await many(5, lambda: call(mw, "GET", "/big"))
    assert app.calls == 5
    assert all(len(r.body) > 5000 for r in results)
    assert len({r.body for r in results}) == 5  # each its own, none truncated


@pytest.mark.parametrize("status", [429, 500, 503, 408])
async def test_refusals_and_server_errors_are_not_shared(status: int) -> None:
    app = CountingApp(delay=0.05, status=status)
    mw = DedupMiddleware(app)
    results = await many(4, lambda: call(mw, "GET", "/e"))
    await call(mw, "GET", "/e")
    assert app.calls == 5
    assert all(r.header("x-dedup") is None for r in results)
    # one leader gave up (its waiters released), the next duplicate found the pass marker
    stats = mw.stats()
    assert (stats["leaders"], stats["not_shared"], stats["released"], stats["passes"]) == (
        1, 1, 3, 1,
    )  # fmt: skip


async def test_client_errors_are_shared() -> None:
    app = CountingApp(status=404)
    mw = DedupMiddleware(app)
    await call(mw, "GET", "/missing")
    again = await call(mw, "GET", "/missing")
    assert app.calls == 1 and again.status == 404 and again.header("x-dedup") == "hit"


@pytest.mark.parametrize(
    "header",
    [(b"set-cookie", b"session=abc"), (b"Cache-Control", b"private, No-Store")],
)
async def test_private_responses_are_not_shared(header: tuple[bytes, bytes]) -> None:
    app = CountingApp()
    app.extra_headers = [header]
    mw = DedupMiddleware(app)
    await call(mw, "GET", "/login")
    await call(mw, "GET", "/login")
    assert app.calls == 2


async def test_store_outage_fails_open_for_duplicates_and_closed_for_keys(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Duplicates run un-deduplicated; a keyed request is refused (503 + Retry-After), never
    run without the protection its key asks for."""
    caplog.set_level("WARNING", logger="asgi_perf.dedup")
    app = CountingApp()
    dead = create_store(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2)
    mw = DedupMiddleware(app, storage=dead)
    for _ in range(3):
        r = await call(mw, "POST", "/o", body=b"x")
        assert r.status == 200
    r = await call(mw, "POST", "/o", body=b"x", headers=[("Idempotency-Key", "k1")])
    assert r.status == 503 and r.header("retry-after") == "1"
    assert r.header("content-type") == "application/problem+json"
    assert app.calls == 3
    stats = mw.stats()
    assert stats["unavailable"] == 1
    assert stats["outage"]["incidents"] == 1 and stats["outage"]["failures"] == 4
    assert len([r for r in caplog.records if r.name == "asgi_perf.dedup"]) == 1  # logged once


class UnreachableStore(MemoryStore):
    """A store whose every call fails (a subclass of the memory store: the in-process fast
    path must not bypass its overrides)."""

    async def get_or_claim(
        self, record_key: str, claim_key: str, token: str, ttl: float
    ) -> tuple[bytes | None, bool]:
        raise StoreUnavailable("down")

    async def get(self, key: str) -> bytes | None:
        raise StoreUnavailable("down")


async def test_failing_memory_store_subclass_fails_open() -> None:
    app = CountingApp()
    mw = DedupMiddleware(app, storage=UnreachableStore(), idempotency_storage=UnreachableStore())
    for _ in range(2):
        assert (await call(mw, "GET", "/u")).status == 200
        r = await call(mw, "POST", "/u", body=b"x", headers=[("Idempotency-Key", "k")])
        assert r.status == 503  # a keyed request fails closed
    assert app.calls == 2
    stats = mw.stats()
    assert stats["outage"]["failures"] == 2 and stats["idempotency_outage"]["failures"] == 2


async def test_header_names_in_any_case_are_fingerprinted() -> None:
    app = CountingApp()
    mw = DedupMiddleware(app)
    for name in (b"Accept", b"ACCEPT", b"accept"):
        for value in (b"text/html", b"application/json"):
            scope = make_scope("GET", "/h")
            scope["headers"] = [(name, value), (b"X-Other", b"1")]
            await call(mw, "GET", scope=scope)
    assert app.calls == 2  # one per Accept value, whatever the spelling of the name


async def test_client_behind_trusted_proxy_is_told_apart() -> None:
    app = CountingApp()
    mw = DedupMiddleware(app, trusted_proxies="10.0.0.0/8")
    direct = DedupMiddleware(CountingApp())
    for who in ("192.0.2.1", "192.0.2.2", "192.0.2.1"):
        headers = [("X-Forwarded-For", who)]
        await call(mw, "GET", "/p", headers=headers, client=("10.0.0.1", 1))
        await call(direct, "GET", "/p", headers=headers, client=("10.0.0.1", 1))
    assert app.calls == 2  # the two clients behind the proxy
    assert direct.app.calls == 1  # type: ignore[attr-defined]  # untrusted: the proxy's IP


async def test_remembered_peer_identities_are_bounded() -> None:
    app = CountingApp()
    mw = DedupMiddleware(app, window=0)
    for i in range(4200):
        await call(mw, "GET", "/b", client=(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 1))
    assert app.calls == 4200
    assert len(mw.parts._peers) <= 4096


async def test_redis_round_trips(redis_url: str, key_prefix: str) -> None:
    app = CountingApp()
    mw = DedupMiddleware(app, storage=redis_url, key_prefix=key_prefix)
    store: Any = mw.store
    try:
        counts = []
        for method, headers in (("GET", []), ("POST", [("Idempotency-Key", "rt-1")])):
            for _ in range(2):
                before = store.round_trips
                await call(mw, method, "/rt", headers=headers, body=b"b")
                counts.append(store.round_trips - before)
    finally:
        await store.clear()
        await store.close()
    # non-duplicate: read-or-claim, fulfil; a hit: one read; the same with a key (the first
    # keyed request of the middleware also asks Redis, once, whether it may evict records)
    assert counts == [2, 1, 3, 1]
    assert app.calls == 2


# -- across stores (memory, Redis, Redis Cluster) --------------------------------------------
@pytest.fixture
async def store_mw(store_url: str, key_prefix: str) -> AsyncIterator[tuple[DedupMiddleware, Any]]:
    app = CountingApp(delay=0.1)
    mw = DedupMiddleware(app, storage=store_url, key_prefix=key_prefix)
    yield mw, app
    await mw.store.clear()
    await mw.store.close()


async def test_coalescing_on_every_store(store_mw: tuple[DedupMiddleware, CountingApp]) -> None:
    mw, app = store_mw
    responses = await many(20, lambda: call(mw, "POST", "/s", body=b"same"))
    assert app.calls == 1
    assert len({r.body for r in responses}) == 1
    again = await call(mw, "POST", "/s", body=b"same")
    assert again.header("x-dedup") == "hit"
    key = [("Idempotency-Key", '"k-1"')]
    first = await call(mw, "POST", "/k", body=b"p", headers=key)
    replay = await call(mw, "POST", "/k", body=b"p", headers=key)
    mismatch = await call(mw, "POST", "/k", body=b"q", headers=key)
    assert (first.status, replay.status, mismatch.status) == (200, 200, 422)
    assert replay.body == first.body and replay.header("idempotent-replayed") == "true"
    assert app.calls == 2


async def test_failed_leader_releases_waiters_on_every_store(
    store_url: str, key_prefix: str
) -> None:
    calls = 0

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        nonlocal calls
        calls += 1
        await receive()
        if calls == 1:
            await asyncio.sleep(0.2)
            raise RuntimeError("boom")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"own"})

    mw = DedupMiddleware(app, storage=store_url, key_prefix=key_prefix, window=0)
    try:
        results = await _leader_and_waiters(mw, n=5)
    finally:
        await mw.store.clear()
        await mw.store.close()
    assert isinstance(results[0], RuntimeError)
    assert all(r.body == b"own" for r in results[1:])  # each a whole response
    assert calls == 6  # released: each waiter ran its own request


# -- Idempotency-Key -------------------------------------------------------------------------
def keyed(key: str = '"key-1"', user: str | None = None, **kw: Any) -> dict[str, Any]:
    scope = make_scope("POST", kw.pop("path", "/pay"), headers=[("Idempotency-Key", key)])
    if user is not None:
        scope["state"]["user_id"] = user
    return {"scope": scope, **kw}


async def test_idempotency_semantics_table() -> None:
    app = CountingApp()
    mw = DedupMiddleware(app, require_idempotency_key=["/pay", "/v1/*"])

    first = await call(mw, "POST", body=b"amount=1", **keyed())
    assert first.status == 200 and first.header("idempotent-replayed") is None

    replay = await call(mw, "POST", body=b"amount=1", **keyed())
    assert replay.status == 200 and replay.body == first.body
    assert replay.header("idempotent-replayed") == "true"

    bare = await call(mw, "POST", body=b"amount=1", **keyed("key-1"))  # bare token == sf-string
    assert bare.header("idempotent-replayed") == "true"

    mismatch = await call(mw, "POST", body=b"amount=2", **keyed())
    assert mismatch.status == 422
    assert mismatch.header("content-type") == "application/problem+json"
    assert json.loads(mismatch.body)["status"] == 422

    other_user = await call(mw, "POST", body=b"amount=1", **keyed(user="mallory"))
    assert other_user.status == 200 and other_user.header("idempotent-replayed") is None

    missing = await call(mw, "POST", "/pay", body=b"amount=1")
    assert missing.status == 400
    assert "Idempotency-Key header is required" in json.loads(missing.body)["detail"]
    missing_prefix = await call(mw, "POST", "/v1/charges", body=b"amount=1")
    assert missing_prefix.status == 400

    malformed = await call(mw, "POST", body=b"amount=1", **keyed('"unterminated'))
    too_long = await call(mw, "POST", body=b"amount=1", **keyed("k" * 256))
    assert malformed.status == too_long.status == 400
    assert malformed.header("content-type") == "application/problem+json"

    not_required = await call(mw, "POST", "/other", body=b"amount=1")
    assert not_required.status == 200

    safe = await call(mw, "GET", "/pay")  # GET is never required to carry a key
    assert safe.status == 200
    assert app.calls == 4  # first, other user, /other, GET
    stats = mw.stats()
    assert (stats["idempotent_replays"], stats["mismatches"], stats["rejected"]) == (2, 1, 4)


async def test_same_key_in_flight_is_409_or_422() -> None:
    app = CountingApp(delay=0.2)
    mw = DedupMiddleware(app)
    first = asyncio.create_task(call(mw, "POST", body=b"a", **keyed()))
    await asyncio.sleep(0.05)
    conflict = await call(mw, "POST", body=b"a", **keyed())
    other_payload = await call(mw, "POST", body=b"b", **keyed())
    assert (await asyncio.wait_for(first, WAIT)).status == 200
    assert conflict.status == 409
    assert json.loads(conflict.body)["title"] == "Request in progress"
    assert other_payload.status == 422
    assert app.calls == 1


@pytest.mark.parametrize("status", [400, 500])
async def test_error_outcomes_are_replayed(status: int) -> None:
    app = CountingApp(status=status)
    mw = DedupMiddleware(app)
    await call(mw, "POST", body=b"a", **keyed())
    replay = await call(mw, "POST", body=b"a", **keyed())
    assert replay.status == status and replay.header("idempotent-replayed") == "true"
    assert app.calls == 1


@pytest.mark.parametrize("status", [429, 503])
async def test_unprocessed_refusals_leave_the_key_free(status: int) -> None:
    app = CountingApp(status=status)
    mw = DedupMiddleware(app)
    await call(mw, "POST", body=b"a", **keyed())
    again = await call(mw, "POST", body=b"a", **keyed())
    assert again.header("idempotent-replayed") is None
    assert app.calls == 2


async def test_failure_before_a_response_leaves_the_key_free() -> None:
    calls = 0

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        nonlocal calls
        calls += 1
        await receive()
        if calls == 1:
            raise RuntimeError("db down")
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"created"})

    mw = DedupMiddleware(app)
    with pytest.raises(RuntimeError):
        await call(mw, "POST", body=b"a", **keyed())
    retry = await call(mw, "POST", body=b"a", **keyed())
    assert retry.status == 201 and retry.header("idempotent-replayed") is None
    replay = await call(mw, "POST", body=b"a", **keyed())
    assert replay.status == 201 and replay.header("idempotent-replayed") == "true"


async def test_too_large_response_marks_the_key_used() -> None:
    app = CountingApp(size=5000)
    mw = DedupMiddleware(app, max_body_size=1000)
    first = await call(mw, "POST", body=b"a", **keyed())
    assert first.status == 200 and len(first.body) > 5000
    retry = await call(mw, "POST", body=b"a", **keyed())
    assert retry.status == 409
    assert app.calls == 1


async def test_large_body_with_key_is_still_protected_and_reaches_app_intact() -> None:
    app = CountingApp()
    mw = DedupMiddleware(app, max_body_size=100)
    chunks = [b"x" * 80, b"y" * 80, b"z" * 80]
    first = await call(mw, "POST", body=chunks, **keyed())
    replay = await call(mw, "POST", body=chunks, **keyed())
    assert [m["body"] for m in app.received[0]] == chunks
    assert replay.header("idempotent-replayed") == "true" and replay.body == first.body
    assert app.calls == 1


async def test_idempotency_record_outlives_ordinary_traffic() -> None:
    """Window records churn through their bounded LRU area; a key's record lives apart and is
    never pushed out by them (ordinary GETs used to evict a payment's record)."""
    app = CountingApp()
    mw = DedupMiddleware(app, storage="memory://?max_entries=50")
    first = await call(mw, "POST", body=b"amount=1", **keyed())
    for page in range(200):
        await call(mw, "GET", "/list", query=f"page={page}")
    retry = await call(mw, "POST", body=b"amount=1", **keyed())
    assert retry.header("idempotent-replayed") == "true" and retry.body == first.body
    assert app.calls == 201
    assert mw.stats()["store"]["evictions"] > 0  # the window area did churn


async def test_full_idempotency_area_refuses_new_keys_and_keeps_the_old_ones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = CountingApp()
    mw = DedupMiddleware(app, idempotency_storage="memory://?max_entries=2")
    for key in ("k1", "k2"):
        assert (await call(mw, "POST", body=b"a", **keyed(key))).status == 200
    refused = await call(mw, "POST", body=b"a", **keyed("k3"))
    assert refused.status == 503 and refused.header("retry-after") == "60"
    assert json.loads(refused.body)["title"] == "Idempotency records full"
    for key in ("k1", "k2"):  # never dropped to make room
        replay = await call(mw, "POST", body=b"a", **keyed(key))
        assert replay.header("idempotent-replayed") == "true"
    assert app.calls == 2
    stats = mw.stats()
    assert stats["full"] == 1 and stats["outage"]["failures"] == 0  # full is not an outage
    assert (await call(mw, "POST", body=b"a", **keyed("k4"))).status == 503
    assert caplog.text.count("no room for a new Idempotency-Key record") == 1  # logged once


async def test_an_idempotency_store_that_may_evict_is_named_in_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("WARNING", logger="asgi_perf.dedup")
    for store, warned in ((MemoryStore(), True), (None, False)):
        caplog.clear()
        mw = DedupMiddleware(CountingApp(), idempotency_storage=store)
        for key in ("k1", "k2", "k3"):
            await call(mw, "POST", body=b"a", **keyed(key))
        warnings = [r.message for r in caplog.records if r.name == "asgi_perf.dedup"]
        assert len(warnings) == int(warned), warnings
        assert all("least recently used" in w for w in warnings)


@pytest.mark.parametrize("status", [200, 201, 422])
async def test_a_sent_response_keeps_its_record_when_the_app_raises_after_it(
    store_url: str, key_prefix: str, status: int
) -> None:
    """A background task fails after the response went out: the client saw a result, so the
    retry gets the same one and the operation does not run twice."""
    calls = 0

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        nonlocal calls
        calls += 1
        await receive()
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"charged %d" % calls})
        raise RuntimeError("background task failed")

    mw = DedupMiddleware(app, storage=store_url, key_prefix=key_prefix)
    try:
        with pytest.raises(RuntimeError):
            await call(mw, "POST", body=b"amount=1", **keyed())
        retry = await call(mw, "POST", body=b"amount=1", **keyed())
    finally:
        await mw.store.clear()
        await mw.store.close()
    assert (retry.status, retry.body) == (status, b"charged 1")
    assert retry.header("idempotent-replayed") == "true" and calls == 1


class CountingUnreachableStore(UnreachableStore):
    """Counts the calls that reach it."""

    calls = 0

    async def get_or_claim(
        self, record_key: str, claim_key: str, token: str, ttl: float
    ) -> tuple[bytes | None, bool]:
        self.calls += 1
        return await super().get_or_claim(record_key, claim_key, token, ttl)


async def test_open_circuit_skips_the_store_duplicates_pass_keys_are_refused() -> None:
    """Five failures in a row open the circuit; then only one call in 20 reaches the store
    (a probe): duplicates run un-deduplicated, keyed requests get 503 without a store call."""
    app = CountingApp()
    store = CountingUnreachableStore()
    mw = DedupMiddleware(app, storage=store, idempotency_storage=store)
    mw.outage.probe_interval = 3600  # probes by count only: a deterministic number of calls
    for n in range(25):
        assert (await call(mw, "GET", "/c", query=f"n={n}")).status == 200
    assert store.calls == 6  # five to open the circuit, then the 20th skipped one probes
    refused = await call(mw, "POST", body=b"a", **keyed())
    assert refused.status == 503 and store.calls == 6
    assert app.calls == 25
    assert mw.stats()["unavailable"] == 1


async def test_keyed_requests_skip_the_dedup_window() -> None:
    app = CountingApp()
    mw = DedupMiddleware(app)
    await call(mw, "POST", body=b"a", **keyed("k1"))
    second = await call(mw, "POST", body=b"a", **keyed("k2"))  # a new key is a new operation
    assert second.header("x-dedup") is None and app.calls == 2


async def test_idempotency_can_be_switched_off() -> None:
    app = CountingApp()
    mw = DedupMiddleware(app, idempotency_header=None, window=0)
    await call(mw, "POST", body=b"a", **keyed())
    await call(mw, "POST", body=b"a", **keyed())
    assert app.calls == 2


# -- configuration ---------------------------------------------------------------------------
def test_env_idempotency_store_and_enabled() -> None:
    """The separate Idempotency-Key store the variable makes (each variable arriving at its
    option: test_options_contract)."""
    env = {"ASGI_PERF_IDEMPOTENCY_STORAGE": "memory://?max_entries=7"}
    mw = DedupMiddleware.from_env(CountingApp(), environ=env)
    assert mw.keys is not None and mw.keys.store.stats()["max_entries"] == 7
    assert mw.store.kind == "memory"
    assert not DedupMiddleware.enabled_in_env({})
    assert DedupMiddleware.enabled_in_env({"ASGI_PERF_DEDUP_ENABLED": "yes"})


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("window", -1),
        ("methods", 5),
        ("identity", "user"),
        ("max_body_size", -5),
        ("vary_headers", 3),
        ("key_prefix", 3),
        ("idempotency_storage", 5),
        ("idempotency_storage", "mysql://db"),
    ],
)
def test_bad_options_name_the_option(option: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=option):
        DedupMiddleware(CountingApp(), **{option: value})


async def test_waiters_give_up_after_wait_timeout_and_run_their_own() -> None:
    app = CountingApp(delay=0.3)
    mw = DedupMiddleware(app, wait_timeout=0.05)
    results = await many(3, lambda: call(mw, "GET", "/slow"))
    assert app.calls == 3
    assert all(r.status == 200 and r.header("x-dedup") is None for r in results)
    assert mw.stats()["timeouts"] == 2


async def test_works_as_starlette_middleware() -> None:
    import httpx
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    calls = 0

    async def create(request: Request) -> JSONResponse:
        nonlocal calls
        calls += 1
        payload = await request.json()
        await asyncio.sleep(0.05)
        return JSONResponse({"created": payload, "n": calls}, status_code=201)

    app = Starlette(
        routes=[Route("/orders", create, methods=["POST"])],
        middleware=[Middleware(DedupMiddleware)],
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        responses = await asyncio.wait_for(
            asyncio.gather(*(client.post("/orders", json={"item": 1}) for _ in range(10))), WAIT
        )
        keyed_first = await client.post(
            "/orders", json={"item": 2}, headers={"Idempotency-Key": '"abc"'}
        )
        keyed_retry = await client.post(
            "/orders", json={"item": 2}, headers={"Idempotency-Key": '"abc"'}
        )
    assert calls == 2
    assert {r.json()["n"] for r in responses} == {1}
    assert keyed_retry.json() == keyed_first.json()
    assert keyed_retry.headers["idempotent-replayed"] == "true"


async def test_unshareable_fingerprint_is_remembered_so_duplicates_do_not_queue() -> None:
    """Hit-for-pass: once a leader's response is known not to be shared (no-store here), the
    waiters run at once and, within the window, later identical requests skip the queue."""
    running = 0
    peak = 0
    calls = 0
    gate = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal running, peak, calls
        calls += 1
        running += 1
        peak = max(peak, running)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"cache-control", b"no-store")],
            }
        )
        await gate.wait()
        await send({"type": "http.response.body", "body": b"fresh"})
        running -= 1

    mw = DedupMiddleware(app, window=30)
    first = [asyncio.create_task(call(mw, "GET", "/poll")) for _ in range(10)]
    await asyncio.sleep(0.05)
    assert peak == 10, "waiters were released as soon as the start message said no-store"
    gate.set()
    assert [r.body for r in await asyncio.gather(*first)] == [b"fresh"] * 10

    passes_before = mw.stats()["passes"]
    gate.clear()
    peak = 0
    second = [asyncio.create_task(call(mw, "GET", "/poll")) for _ in range(10)]
    await asyncio.sleep(0.05)
    assert peak == 10
    gate.set()
    responses = await asyncio.gather(*second)
    assert all(r.header("x-dedup") is None and r.body == b"fresh" for r in responses)
    assert calls == 20
    assert mw.stats()["passes"] - passes_before == 10, "the second burst skipped the queue"
