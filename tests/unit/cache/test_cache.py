"""CacheMiddleware behaviour: serving, validation, directives, safety, stampedes, stores."""

from __future__ import annotations

import asyncio
import gc
import gzip
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi import Response as FastAPIResponse

from asgi_perf._core.config import ConfigError
from asgi_perf.cache import CacheMiddleware, purge
from asgi_perf.cache._entry import Entry
from asgi_perf.cache._keys import entry_key
from asgi_perf.stores import MemoryStore, StoreUnavailable, create_store
from asgi_perf.stores._redis import RedisStore
from tests.support import RedisServer, Response, call, make_scope, reader, redis_server_available

Headers = list[tuple[bytes, bytes]]


class App:
    """Answers ``routes[path]`` = (status, headers, body or list of chunks); counts calls."""

    def __init__(self, routes: dict[str, tuple[int, list[tuple[str, str]], Any]] | None = None):
        self.routes = routes or {}
        self.calls = 0
        self.seen: list[dict[str, Any]] = []
        self.delay = 0.0
        self.gate: asyncio.Event | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        self.calls += 1
        self.seen.append(scope)
        if self.delay:
            await asyncio.sleep(self.delay)
        status, headers, body = self.routes.get(scope["path"], (200, [], b"default body"))
        if callable(body):
            body = body(scope)
        raw = [(k.lower().encode(), v.encode()) for k, v in headers]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        if isinstance(body, list):
            for i, chunk in enumerate(body):
                await send(
                    {"type": "http.response.body", "body": chunk, "more_body": i < len(body) - 1}
                )
                if self.gate is not None and i == 0:
                    await self.gate.wait()
        else:
            await send({"type": "http.response.body", "body": body})


def cached(app: Any, **options: Any) -> CacheMiddleware:
    """A cache that gives responses stating no freshness 300 s (the opt-in default TTL), for
    tests of behaviour that does not depend on where freshness comes from."""
    return CacheMiddleware(app, **{"default_ttl": 300, **options})


def x_cache(response: Response) -> str | None:
    return response.header("x-cache")


def content_etag(body: bytes) -> str:
    """The strong ETag the cache gives a body the app gave none: a 12-byte BLAKE2b hash."""
    return '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'


async def test_miss_then_hit_without_calling_the_app() -> None:
    app = App({"/a": (200, [("content-type", "text/plain")], b"hello")})
    mw = cached(app)
    first = await call(mw, "GET", "/a")
    second = await call(mw, "GET", "/a")
    assert (first.status, first.body, x_cache(first)) == (200, b"hello", "MISS")
    assert (second.status, second.body, x_cache(second)) == (200, b"hello", "HIT")
    assert app.calls == 1
    assert second.header("age") == "0"
    # one-message body: the ETag is on the miss already
    assert second.header("etag") == first.header("etag") == content_etag(b"hello")
    stats = mw.stats()
    assert (stats["hits"], stats["misses"], stats["stores"]) == (1, 1, 1)
    assert stats["hit_ratio"] == 0.5


async def test_app_etag_is_kept_and_streamed_body_gets_a_hash_etag() -> None:
    app = App(
        {
            "/own": (200, [("etag", '"v1"')], b"x"),
            "/stream": (200, [], [b"a", b"b"]),
        }
    )
    mw = cached(app)
    await call(mw, "GET", "/own")
    assert (await call(mw, "GET", "/own")).header("etag") == '"v1"'
    first = await call(mw, "GET", "/stream")
    assert first.chunks == [b"a", b"b"] and first.header("etag") is None
    hit = await call(mw, "GET", "/stream")
    assert hit.body == b"ab" and x_cache(hit) == "HIT" and hit.header("etag") == content_etag(b"ab")
    assert hit.header("content-length") == "2"  # the stored body is complete: its length is known


async def test_head_is_answered_from_the_get_entry_and_fills_it() -> None:
    app = App({"/h": (200, [("content-length", "4")], b"body")})
    mw = cached(app)
    head = await call(mw, "HEAD", "/h")
    assert (head.status, head.body, head.header("content-length")) == (200, b"", "4")
    assert app.seen[0]["method"] == "GET"  # the fill asks for the full response
    get = await call(mw, "GET", "/h")
    assert (get.body, x_cache(get)) == (b"body", "HIT")
    head2 = await call(mw, "HEAD", "/h")
    assert (head2.body, x_cache(head2), head2.header("content-length")) == (b"", "HIT", "4")
    assert app.calls == 1


async def test_if_none_match_and_if_modified_since_answer_304() -> None:
    last = "Tue, 14 Nov 2023 22:13:20 GMT"
    app = App({"/c": (200, [("last-modified", last), ("cache-control", "max-age=60")], b"c")})
    mw = cached(app)
    etag = (await call(mw, "GET", "/c")).header("etag")
    assert etag == content_etag(b"c")
    for headers in (
        [("if-none-match", etag)],
        [("if-none-match", f'"other", W/{etag}')],
        [("if-modified-since", last)],
        [("if-modified-since", "Wed, 15 Nov 2023 00:00:00 GMT")],
    ):
        r = await call(mw, "GET", "/c", headers=headers)
        assert (r.status, r.body, x_cache(r)) == (304, b"", "HIT"), headers
        assert r.header("etag") == etag and r.header("content-length") is None
        assert r.header("cache-control") == "max-age=60"
    changed = await call(mw, "GET", "/c", headers=[("if-none-match", '"nope"')])
    older = await call(
        mw, "GET", "/c", headers=[("if-modified-since", "Mon, 13 Nov 2023 0:0:0 GMT")]
    )
    assert (changed.status, older.status) == (200, 200)
    assert app.calls == 1
    assert mw.stats()["not_modified"] == 4


async def test_conditional_miss_hides_the_condition_from_the_app_and_answers_304() -> None:
    app = App({"/m": (200, [("etag", '"e1"')], b"m")})
    mw = cached(app)
    r = await call(mw, "GET", "/m", headers=[("if-none-match", '"e1"')])
    assert (r.status, r.body, x_cache(r)) == (304, b"", "MISS")
    assert all(k != b"if-none-match" for k, _ in app.seen[0]["headers"])
    full = await call(mw, "GET", "/m")
    assert (full.status, full.body, x_cache(full)) == (200, b"m", "HIT")


async def test_request_directives() -> None:
    app = App({"/d": (200, [], lambda scope: f"v{app.calls}".encode())})
    mw = cached(app)
    only = await call(mw, "GET", "/d", headers=[("cache-control", "only-if-cached")])
    assert (only.status, x_cache(only)) == (504, "MISS") and app.calls == 0
    assert (await call(mw, "GET", "/d")).body == b"v1"
    # no-store: straight to the app, not stored, entry untouched
    nostore = await call(mw, "GET", "/d", headers=[("cache-control", "no-store")])
    assert (nostore.body, x_cache(nostore)) == (b"v2", "BYPASS")
    assert (await call(mw, "GET", "/d")).body == b"v1"
    # no-cache / max-age=0 / Pragma: revalidate with the app and refresh the entry
    for headers in ([("cache-control", "no-cache")], [("cache-control", "max-age=0")],
                    [("pragma", "no-cache")]):  # fmt: skip
        calls = app.calls
        r = await call(mw, "GET", "/d", headers=headers)
        assert (r.body, x_cache(r)) == (f"v{calls + 1}".encode(), "MISS")
        assert (await call(mw, "GET", "/d")).body == f"v{calls + 1}".encode()
    warm = await call(mw, "GET", "/d", headers=[("cache-control", "only-if-cached")])
    assert (warm.status, x_cache(warm)) == (200, "HIT")


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        (200, [("set-cookie", "session=abc")]),
        (200, [("cache-control", "private")]),
        (200, [("cache-control", "no-store")]),
        (200, [("cache-control", "no-cache")]),  # nothing to revalidate it with
        (200, [("vary", "*")]),
        (200, [("cache-control", "max-age=0")]),
        (429, [("retry-after", "1")]),
        (500, []),
        (302, [("location", "/x")]),
    ],
)
async def test_never_stored(status: int, headers: list[tuple[str, str]]) -> None:
    app = App({"/n": (status, [*headers, ("x-generated-by", "app")], b"n")})
    mw = cached(app)
    for _ in range(3):
        r = await call(mw, "GET", "/n")
        assert r.status == status and x_cache(r) == "MISS"
    assert app.calls == 3
    assert mw.stats()["stores"] == 0


async def test_hit_for_miss_lets_requests_skip_the_queue() -> None:
    app = App({"/p": (200, [("cache-control", "private"), ("cache-tag", "secret")], b"p")})
    app.delay = 0.05
    mw = cached(app)
    await call(mw, "GET", "/p")  # the fill learns it is uncacheable
    results = await asyncio.gather(*(call(mw, "GET", "/p") for _ in range(20)))
    assert all(r.body == b"p" and r.header("cache-tag") is None for r in results)
    assert mw.stats()["hit_for_miss"] == 20
    assert mw.stats()["coalesced"] == 0
    assert app.calls == 21


async def test_a_path_that_never_caches_passes_through_for_any_query() -> None:
    app = App(
        {
            "/nostore": (200, [("cache-control", "no-store")], b"n"),
            "/ok": (200, [], lambda scope: scope["query_string"]),
        }
    )
    mw = cached(app)
    for i in range(10):
        r = await call(mw, "GET", "/nostore", query=f"n={i}")
        assert (r.body, x_cache(r)) == (b"n", "MISS")
    stats = mw.stats()
    assert stats["uncacheable"] == {"no-store": 3}  # three fills, then the path is known
    assert stats["hit_for_miss"] == 7
    assert stats["entries"] == 3  # three hit-for-miss markers, no more
    for i in range(3):  # other paths are unaffected
        assert x_cache(await call(mw, "GET", "/ok", query=f"q={i}")) == "MISS"
        assert x_cache(await call(mw, "GET", "/ok", query=f"q={i}")) == "HIT"


async def test_a_private_answer_to_a_credentialed_request_keeps_other_paths_hints() -> None:
    """A logged-in user's private answer is remembered for its own resource; it does not
    wipe what this process learned of other paths (it did: every such answer emptied the
    path hints, so on an app with logged-in users an uncacheable path never stayed known)."""
    app = App(
        {
            "/nostore": (200, [("cache-control", "no-store")], b"n"),
            "/me": (200, [("cache-control", "private")], b"me"),
        }
    )
    mw = cached(app)
    for i in range(3):  # three fills: /nostore is known to be uncacheable
        await call(mw, "GET", "/nostore", query=f"n={i}")
    await call(mw, "GET", "/me", headers=[("authorization", "Bearer u1")])
    for i in range(3, 6):
        assert (await call(mw, "GET", "/nostore", query=f"n={i}")).body == b"n"
    stats = mw.stats()
    assert stats["uncacheable"] == {"no-store": 3, "private": 1}  # no /nostore fill again
    assert stats["hit_for_miss"] == 3


async def test_what_the_cache_keeps_per_new_path_is_not_walked_by_the_garbage_collector() -> None:
    """A REST app's never-repeated paths leave a record (a hit-for-miss marker) and a streak
    each, thousands at once: as plain tuples the collector stops tracking them, where
    objects made every collection walk the whole store (25 ms pauses in the benchmark)."""
    app = App({f"/items/{i}": (200, [("cache-control", "no-store")], b"n") for i in range(50)})
    mw = cached(app)
    for i in range(50):
        assert (await call(mw, "GET", f"/items/{i}")).body == b"n"
    store = mw.store
    assert isinstance(store, MemoryStore)
    gc.collect()
    records = list(store._data.values())
    streaks = list(mw.entries.uncacheable_paths.values())
    assert records and streaks
    assert not [r for r in records if gc.is_tracked(r)]
    assert not [s for s in streaks if gc.is_tracked(s)]


async def test_uncacheable_siblings_do_not_stop_a_path_being_cached() -> None:
    """The hint is per path, never per shape: paths that differ only by an id (the public
    conformance suite's ``/test/{uuid}``, a REST ``/items/{id}``) each get their own chance,
    so a cacheable one after any number of uncacheable siblings is stored and served."""
    app = App({f"/items/{i}": (200, [("cache-control", "no-store")], b"n") for i in range(6)})
    app.routes["/items/77"] = (200, [("cache-control", "max-age=60")], b"ok")
    mw = CacheMiddleware(app)
    for i in range(6):
        await call(mw, "GET", f"/items/{i}")
    assert x_cache(await call(mw, "GET", "/items/77", headers=[("pragma", "foo")])) == "MISS"
    assert x_cache(await call(mw, "GET", "/items/77", headers=[("pragma", "foo")])) == "HIT"


async def test_two_hundred_concurrent_cold_requests_run_the_app_once() -> None:
    app = App({"/hot": (200, [], b"hot")})
    app.delay = 0.05
    mw = cached(app)
    results = await asyncio.gather(*(call(mw, "GET", "/hot") for _ in range(200)))
    assert app.calls == 1
    assert all(r.status == 200 and r.body == b"hot" for r in results)
    assert sorted(x_cache(r) for r in results).count("MISS") == 1
    assert mw.stats()["coalesced"] == 199


@pytest.mark.parametrize(
    ("response", "request_cc"),
    [
        ([("cache-control", "max-age=50")], "min-fresh=100"),
        ([("cache-control", "max-age=60"), ("age", "30")], "max-age=10"),
    ],
)
async def test_a_waiter_honours_its_own_min_fresh_and_max_age(
    response: list[tuple[str, str]], request_cc: str
) -> None:
    app = App({"/w": (200, response, lambda scope: f"v{app.calls}".encode())})
    app.delay = 0.05
    mw = cached(app)
    plain, strict = await asyncio.gather(
        call(mw, "GET", "/w"), call(mw, "GET", "/w", headers=[("cache-control", request_cc)])
    )
    assert (plain.body, x_cache(plain)) == (b"v1", "MISS")
    assert (strict.body, x_cache(strict)) == (b"v2", "MISS")  # not the fill it waited for
    assert app.calls == 2


async def test_a_cancelled_fill_frees_its_key_at_once() -> None:
    app = App({"/c": (200, [], b"done")})
    app.gate = asyncio.Event()
    blocked = asyncio.Event()

    async def hanging(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if app.gate is not None and not app.gate.is_set():
            blocked.set()
            await app.gate.wait()
        await app(scope, receive, send)

    mw = cached(hanging, lock_timeout=60)
    first = asyncio.create_task(call(mw, "GET", "/c"))
    await asyncio.wait_for(blocked.wait(), 5)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    app.gate = None  # the app answers from now on
    r = await asyncio.wait_for(call(mw, "GET", "/c"), 5)  # would wait 60 s behind a stale claim
    assert (r.body, x_cache(r)) == (b"done", "MISS")


def personal(scope: dict[str, Any]) -> bytes:
    headers = dict(scope["headers"])
    return b"hello " + (headers.get(b"cookie") or headers.get(b"authorization") or b"anonymous")


@pytest.mark.parametrize("authenticated", [False, True])
@pytest.mark.parametrize("credential", ["cookie", "authorization"])
async def test_two_users_never_see_each_others_response(
    authenticated: bool, credential: str
) -> None:
    app = App({"/me": (200, [("cache-control", "max-age=60")], personal)})
    mw = cached(app, cache_authenticated=authenticated)
    for _ in range(3):
        for user in ("alice", "bob"):
            r = await call(mw, "GET", "/me", headers=[(credential, user)])
            assert r.body == b"hello " + user.encode()
        anon = await call(mw, "GET", "/me")
        assert anon.body == b"hello anonymous"
    if authenticated:
        assert app.calls == 3  # one entry per identity, one shared
    else:
        assert app.calls == 7  # users always reach the app; anonymous is cached
        assert mw.stats()["bypasses"] == 6


async def test_public_responses_are_shared_with_credentialed_requests() -> None:
    app = App({"/pub": (200, [("cache-control", "public, max-age=60")], b"same for all")})
    mw = cached(app)
    first = await call(mw, "GET", "/pub", headers=[("cookie", "a=1")])
    assert x_cache(first) == "BYPASS"
    for headers in ([("cookie", "b=2")], [("authorization", "Bearer x")], []):
        r = await call(mw, "GET", "/pub", headers=headers)
        assert (r.body, x_cache(r)) == (b"same for all", "HIT")
    assert app.calls == 1


async def test_anonymous_entry_is_not_served_to_credentialed_requests() -> None:
    app = App({"/a": (200, [], personal)})
    mw = cached(app)
    await call(mw, "GET", "/a")
    r = await call(mw, "GET", "/a", headers=[("cookie", "s=1")])
    assert (r.body, x_cache(r)) == (b"hello s=1", "BYPASS")


@pytest.mark.parametrize(
    "header",
    [
        "X-Forwarded-Host",
        "X-Original-URL",
        "X-Rewrite-URL",
        "X-Forwarded-Scheme",
        "X-HTTP-Method-Override",
        "X-Forwarded-Proto",
        "X-Forwarded-Port",
        "Forwarded",
    ],
)
async def test_poisoning_headers_bypass_the_cache(header: str) -> None:
    def render(scope: dict[str, Any]) -> bytes:
        headers = {k.decode(): v for k, v in scope["headers"]}
        return b"link to " + headers.get(header.lower(), b"good")

    app = App({"/page": (200, [("cache-tag", "page")], render)})
    mw = cached(app)
    evil = await call(mw, "GET", "/page", headers=[(header, "evil")])
    assert (evil.body, x_cache(evil)) == (b"link to evil", "BYPASS")
    assert evil.header("cache-tag") is None
    for _ in range(2):
        assert (await call(mw, "GET", "/page")).body == b"link to good"
    assert app.calls == 2
    assert mw.stats()["stores"] == 1


@pytest.mark.parametrize(
    "header",
    [("if-range", '"x"'), ("if-match", '"x"'), ("if-unmodified-since", "Tue, 14 Nov 2023 0:0 GMT"),
     ("range", "bytes=0-1, 3-4"), ("range", "bytes=9-"), ("range", "items=0-1")],
)  # fmt: skip
async def test_preconditions_and_ranges_the_cache_cannot_serve_go_to_the_app(
    header: tuple[str, str],
) -> None:
    app = App({"/r": (200, [], b"full")})
    mw = cached(app)
    await call(mw, "GET", "/r")
    r = await call(mw, "GET", "/r", headers=[header])
    assert x_cache(r) == "BYPASS" and app.calls == 2
    assert x_cache(await call(mw, "GET", "/r")) == "HIT"


@pytest.mark.parametrize(
    ("spec", "status", "body", "content_range"),
    [("bytes=0-1", 206, b"01", "bytes 0-1/10"), ("bytes=7-", 206, b"789", "bytes 7-9/10"),
     ("bytes=-2", 206, b"89", "bytes 8-9/10"), ("bytes=8-100", 206, b"89", "bytes 8-9/10")],
)  # fmt: skip
async def test_a_byte_range_is_served_from_a_fresh_complete_entry(
    spec: str, status: int, body: bytes, content_range: str
) -> None:
    app = App({"/r": (200, [("cache-control", "max-age=60")], b"0123456789")})
    mw = CacheMiddleware(app)
    await call(mw, "GET", "/r")
    r = await call(mw, "GET", "/r", headers=[("range", spec)])
    assert (r.status, r.body, x_cache(r), app.calls) == (status, body, "HIT", 1)
    assert (r.header("content-range"), r.header("content-length")) == (
        content_range,
        str(len(body)),
    )
    cold = App({"/r": (206, [("content-range", "bytes 0-1/10")], b"01")})
    miss = await call(CacheMiddleware(cold), "GET", "/r", headers=[("range", spec)])
    assert (miss.status, x_cache(miss), cold.seen[0]["method"]) == (206, "BYPASS", "GET")
    assert dict(cold.seen[0]["headers"])[b"range"] == spec.encode()  # the app's business


async def test_a_host_that_could_fake_key_separators_bypasses() -> None:
    app = App({"/h": (200, [], lambda s: dict(s["headers"]).get(b"host", b"-"))})
    mw = cached(app)
    # "example.com?a" + query "b" must not share a key with "example.com" + query "a?b"
    evil = await call(mw, "GET", "/h", query="b", headers=[("host", "example.com?a")])
    assert (evil.body, x_cache(evil)) == (b"example.com?a", "BYPASS")
    good = await call(mw, "GET", "/h", query="a?b", headers=[("host", "example.com")])
    assert (good.body, x_cache(good)) == (b"example.com", "MISS")
    upper = await call(mw, "GET", "/h", query="a?b", headers=[("host", "EXAMPLE.com")])
    assert (upper.body, x_cache(upper)) == (b"example.com", "HIT")  # host is case-insensitive


@pytest.mark.parametrize(
    ("header", "values"),
    [
        ("X-Forwarded-Host", ("a.example", "b.example")),
        ("X-Forwarded-Proto", ("http", "https")),
        ("Forwarded", ("host=a.example;proto=https", "host=b.example;proto=https")),
    ],
)
async def test_a_keyed_header_is_not_a_bypass_header(header: str, values: tuple[str, str]) -> None:
    name = header.lower().encode()
    app = App({"/k": (200, [], lambda s: dict(s["headers"]).get(name, b"-"))})
    mw = cached(app, key_headers=[header])
    for value in (*values, values[0]):
        r = await call(mw, "GET", "/k", headers=[(header, value)])
        assert r.body == value.encode()
    assert app.calls == 2


def first_host(scope: dict[str, Any]) -> bytes:
    """What Starlette's ``request.url`` uses: the first ``Host`` line."""
    return b"link to " + next((v for k, v in scope["headers"] if k == b"host"), b"-")


@pytest.mark.parametrize(
    "hosts",
    [
        ["evil.example", "victim.example"],
        ["victim.example", "victim.example"],
        ["evil example"],
        ["victim.example/evil"],
        ["x" * 300],
    ],
)
async def test_several_or_invalid_host_lines_bypass(hosts: list[str]) -> None:
    app = App({"/page": (200, [("cache-control", "max-age=60")], first_host)})
    mw = cached(app)
    headers = [("host", host) for host in hosts]
    for _ in range(2):  # the fast path and the slow one (after the path is known)
        evil = await call(mw, "GET", "/page", headers=headers)
        assert (evil.body, x_cache(evil)) == (b"link to " + hosts[0].encode(), "BYPASS")
    good = await call(mw, "GET", "/page", headers=[("host", "victim.example")])
    assert (good.body, x_cache(good)) == (b"link to victim.example", "MISS")
    assert mw.stats()["stores"] == 1


async def test_the_raw_path_is_the_key() -> None:
    app = App({"/a/b": (200, [], lambda scope: scope["raw_path"])})
    mw = cached(app)
    encoded = make_scope("GET", "/a/b", raw_path=b"/a%2Fb")
    for _ in range(2):
        assert (await call(mw, scope=make_scope("GET", "/a/b"))).body == b"/a/b"
        assert (await call(mw, scope=dict(encoded))).body == b"/a%2Fb"
    assert app.calls == 2
    no_raw = make_scope("GET", "/a/b", raw_path=None)  # a server that gives none: the path
    assert x_cache(await call(mw, scope=no_raw)) == "HIT"
    assert await mw.invalidate(path_prefix="/a%2F") == 1
    assert x_cache(await call(mw, scope=dict(encoded))) == "MISS"
    assert x_cache(await call(mw, scope=make_scope("GET", "/a/b"))) == "HIT"


async def test_per_exchange_fields_are_never_stored_nor_replayed() -> None:
    exchange = [
        ("x-query-count", "9"),
        ("x-n-plus-one", "8"),
        ("server-timing", "total;dur=54.6"),
        ("x-response-time", "54.6ms"),
        ("ratelimit", '"default";r=9;t=60'),
        ("ratelimit-policy", '"default";q=10;w=60'),
        ("x-ratelimit-remaining", "9"),
        ("x-cache", "MISS"),
        ("x-dedup", "miss"),
    ]
    app = App({"/x": (200, [("content-type", "text/plain"), *exchange], b"x")})
    mw = cached(app)
    miss = await call(mw, "GET", "/x")
    assert miss.header("x-query-count") == "9"  # the filling request's own exchange
    for headers in ([], [("if-none-match", miss.header("etag") or "")]):
        hit = await call(mw, "GET", "/x", headers=headers)
        assert hit.header_list("x-cache") == ["HIT"]
        for name, _ in exchange:
            if name != "x-cache":
                assert hit.header(name) is None, name
    assert app.calls == 1


async def test_key_uses_host_canonical_query_and_learned_vary() -> None:
    def lang(scope: dict[str, Any]) -> bytes:
        return dict(scope["headers"])[b"accept-language"]

    app = App(
        {
            "/q": (200, [], lambda s: s["query_string"]),
            "/lang": (200, [("vary", "Accept-Language")], lang),
        }
    )
    mw = cached(app)
    assert (await call(mw, "GET", "/q", query="a=1&b=2")).body == b"a=1&b=2"
    r = await call(mw, "GET", "/q", query="b=2&a=1")
    assert (r.body, x_cache(r)) == (b"a=1&b=2", "HIT")
    other_host = await call(mw, "GET", "/q", query="a=1&b=2", headers=[("host", "other")])
    assert x_cache(other_host) == "MISS"
    for lang in ("en", "fr", "en", "fr"):
        r = await call(mw, "GET", "/lang", headers=[("accept-language", lang)])
        assert r.body == lang.encode()
    assert app.calls == 2 + 2


async def test_a_resource_new_to_this_cache_learns_its_vary_from_a_shared_memory_store() -> None:
    """Two caches on one in-process store: the second has never seen the resource, and reads
    its Vary names from the store's record (not "none"), so it finds the first one's
    variant."""

    def lang(scope: dict[str, Any]) -> bytes:
        return dict(scope["headers"])[b"accept-language"]

    app = App({"/lang": (200, [("vary", "Accept-Language")], lang)})
    store = MemoryStore()
    first, second = cached(app, storage=store), cached(app, storage=store)
    assert x_cache(await call(first, "GET", "/lang", headers=[("accept-language", "en")])) == "MISS"
    r = await call(second, "GET", "/lang", headers=[("accept-language", "en")])
    assert (r.body, x_cache(r)) == (b"en", "HIT")
    r = await call(second, "GET", "/lang", headers=[("accept-language", "fr")])
    assert (r.body, x_cache(r)) == (b"fr", "MISS")
    assert app.calls == 2


async def test_the_caches_local_memos_stay_within_their_bounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Memoised keys, Vary cells and path streaks are emptied when full, however many new
    resources come (each counted as it is added)."""
    monkeypatch.setattr("asgi_perf.cache._entries._LOCAL_MAX", 20)
    monkeypatch.setattr("asgi_perf.cache._middleware._RESOURCES_MAX", 15)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        stored = scope["path"].endswith("0")  # one path in ten is cacheable
        headers = [(b"cache-control", b"max-age=60" if stored else b"no-store")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"x"})

    mw = cached(app)
    sizes = []
    for n in range(200):
        assert (await call(mw, "GET", f"/items/{n}")).status == 200
        sizes.append((len(mw._resources), len(mw.entries.vary), len(mw.entries.uncacheable_paths)))
        assert sizes[-1][0] <= 15 and sizes[-1][1] <= 20 and sizes[-1][2] <= 20
    assert max(s[2] for s in sizes) > 10  # the streaks did fill up before being emptied
    assert x_cache(await call(mw, "GET", "/items/190")) == "HIT"  # still a working cache


async def test_a_plain_requests_key_is_the_one_the_slow_path_makes() -> None:
    """The fast path writes a new resource's entry key out; the reader's entry_key (every
    other request of that resource) must make the same one, or they would not share it."""
    mw = cached(App())
    for path, query in (("/a", ""), ("/items/7", "b=2&a=1"), ("/%7Eu/x%2Fy", "q=%20")):
        await call(mw, "GET", path, query=query)
        [resource] = mw._resources.values()  # (emptied after each path below)
        req = mw.reader.read(make_scope("GET", path, query))
        assert req is not None
        assert resource.key == entry_key(resource.stem, "", resource.query)
        assert resource.key == mw.reader.entry_key(req, ())
        mw._forget_resources()


async def test_cache_tag_is_stripped_and_invalidation_works() -> None:
    app = App(
        {
            "/users/1": (200, [("cache-tag", "user:1, users")], b"u1"),
            "/users/2": (200, [("cache-tag", "user:2 users")], b"u2"),
            "/other": (200, [], b"o"),
        }
    )
    mw = cached(app)
    for path in ("/users/1", "/users/2", "/other"):
        r = await call(mw, "GET", path)
        assert r.header("cache-tag") is None
        assert (await call(mw, "GET", path)).header("cache-tag") is None
    assert app.calls == 3
    assert await mw.invalidate(tags=["user:1"]) == 1
    assert x_cache(await call(mw, "GET", "/users/1")) == "MISS"
    assert x_cache(await call(mw, "GET", "/users/2")) == "HIT"
    assert await mw.invalidate(path_prefix="/users/") == 2
    assert x_cache(await call(mw, "GET", "/users/2")) == "MISS"
    assert x_cache(await call(mw, "GET", "/other")) == "HIT"
    await mw.clear()
    assert x_cache(await call(mw, "GET", "/other")) == "MISS"


async def test_purge_from_a_route_handler_without_holding_the_middleware() -> None:
    # purge() reaches every cache of the process that is not yet collected: earlier tests'
    # caches (in reference cycles) with the same tags would count too
    gc.collect()
    api, calls = items_api("max-age=300")

    @api.get("/admin/purge")
    async def admin(tag: str = "", prefix: str = "", everything: bool = False) -> dict[str, int]:
        if everything:
            return {"deleted": await purge(everything=True)}
        if prefix:
            return {"deleted": await purge(path_prefix=prefix)}
        return {"deleted": await purge(tags=[tag])}

    api.add_middleware(CacheMiddleware)
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:

        async def labels() -> list[str]:
            return [(await client.get(f"/items/{i}")).headers["x-cache"] for i in (1, 2, 3)]

        assert await labels() == ["MISS"] * 3
        assert await labels() == ["HIT"] * 3
        assert (await client.get("/admin/purge?tag=item:2")).json() == {"deleted": 1}
        assert await labels() == ["HIT", "MISS", "HIT"]
        assert (await client.get("/admin/purge?prefix=/items/3")).json() == {"deleted": 1}
        assert await labels() == ["HIT", "HIT", "MISS"]
        assert (await client.get("/admin/purge?everything=true")).json()["deleted"] >= 3
        assert await labels() == ["MISS"] * 3
    assert len(calls) == 8
    with pytest.raises(ConfigError, match="purge"):
        await purge()


@pytest.mark.redis
async def test_purge_from_another_process_with_redis(redis_url: str, key_prefix: str) -> None:
    import subprocess
    import sys

    app = App({"/t": (200, [("cache-control", "max-age=300"), ("cache-tag", "t")], b"t")})
    mw = CacheMiddleware(app, storage=redis_url, key_prefix=key_prefix)
    try:
        await call(mw, "GET", "/t")
        assert x_cache(await call(mw, "GET", "/t")) == "HIT"
        code = (
            "import asyncio, sys; from asgi_perf.cache import purge; "
            "print(asyncio.run(purge(tags='t', storage=sys.argv[1], key_prefix=sys.argv[2])))"
        )
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", code, redis_url, key_prefix],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=Path(__file__).resolve().parents[3],  # this checkout's asgi_perf
        )
        assert (done.returncode, done.stdout.strip()) == (0, "1"), done.stderr
        assert x_cache(await call(mw, "GET", "/t")) == "MISS"  # the fleet's entry is gone
    finally:
        await mw.clear()
        await mw.store.close()


async def test_memory_store_keeps_the_entry_itself_and_no_decoded_copy() -> None:
    """In one process nothing is encoded: the store holds the entry object (one copy of the
    body, not the encoded bytes plus a decoded one), charged about what it takes."""
    body = bytes(range(256)) * 8
    app = App({"/a": (200, [("content-type", "application/octet-stream")], body)})
    mw = cached(app)
    assert isinstance(mw.store, MemoryStore)
    await call(mw, "GET", "/a")
    keys = [k for k in mw.store._data if k.startswith("e:")]
    assert len(keys) == 1
    kept = mw.store.get_nowait(keys[0])
    assert isinstance(kept, Entry) and kept.body is app.routes["/a"][2]
    assert mw.entries.decoded == {} and mw.entries.decoded_bytes == 0
    charged = mw.store._data[keys[0]][3]
    assert len(body) + 700 < charged < len(body) + 2_000  # body, fields and the objects
    hit = await call(mw, "GET", "/a")
    assert (x_cache(hit), hit.body, app.calls) == ("HIT", body, 1)
    assert mw.store.get_nowait(keys[0]) is kept and mw.entries.decoded == {}


async def test_memory_store_stays_within_max_bytes() -> None:
    max_bytes = 64 * 1024
    app = App({})
    app.routes = {f"/{i}": (200, [], bytes(1024)) for i in range(640)}  # 10x max_bytes
    mw = cached(app, max_bytes=max_bytes, max_entries=100_000)
    assert isinstance(mw.store, MemoryStore)
    for i in range(640):
        await call(mw, "GET", f"/{i}")
        assert mw.store.bytes <= max_bytes
        assert mw.entries.decoded_bytes <= max_bytes // 4  # decoded copies kept in process
    stats = mw.stats()
    assert stats["bytes"] <= max_bytes and stats["evictions"] > 500
    assert x_cache(await call(mw, "GET", "/639")) == "HIT"  # recent entries survive (LRU)


async def test_large_and_streaming_responses_pass_through_unstored() -> None:
    app = App({"/big": (200, [], [b"x" * 600, b"y" * 600]), "/live": (200, [], [b"1", b"2"])})
    mw = cached(app, max_body_size=1000)
    for _ in range(2):
        r = await call(mw, "GET", "/big")
        assert r.chunks == [b"x" * 600, b"y" * 600] and x_cache(r) == "MISS"
    stats = mw.stats()
    assert (stats["uncacheable"], stats["hit_for_miss"], stats["stores"]) == (
        {"too-large": 1},
        1,
        0,
    )
    # a stream reaches the client chunk by chunk, before the app finishes
    app.gate = asyncio.Event()
    received: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            received.append(message["body"])
            app.gate.set() if message["body"] == b"1" else None  # type: ignore[union-attr]

    from tests.support import make_scope

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    await asyncio.wait_for(mw(make_scope("GET", "/live"), receive, send), 5)
    assert received == [b"1", b"2"]


async def test_a_body_in_several_messages_is_stored_whole_and_by_its_declared_length() -> None:
    """The fill keeps the copy itself: chunks joined; an entry whose declared Content-Length
    has passed is stored before the app's last (empty) message; a file sent by path is not
    kept (not replayable) and counted too large."""
    done = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        path, length = scope["path"], [(b"content-length", b"6")]
        if path == "/file":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.pathsend", "path": "/dev/null"})
            return
        start = {"type": "http.response.start", "status": 200, "headers": []}
        await send({**start, "headers": length} if path == "/sized" else start)
        for chunk in (b"abc", b"def"):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if path == "/sized":
            await done.wait()  # the entry is there already
        await send({"type": "http.response.body", "body": b""})

    mw = cached(app)
    for path in ("/chunks", "/chunks"):
        assert (await call(mw, "GET", path)).body == b"abcdef"
    assert x_cache(await call(mw, "GET", "/chunks")) == "HIT"
    sized = asyncio.create_task(call(mw, "GET", "/sized"))
    while mw.counters.stores < 2:
        await asyncio.sleep(0.001)
    hit = await call(mw, "GET", "/sized")
    assert (hit.body, x_cache(hit)) == (b"abcdef", "HIT")
    done.set()
    assert (await sized).body == b"abcdef"
    await call(mw, "GET", "/file")
    assert mw.stats()["uncacheable"] == {"too-large": 1}


@pytest.mark.parametrize(
    "headers",
    [[("content-type", "text/event-stream")], [("cache-control", "no-store")], []],
)
async def test_waiters_are_freed_while_an_unstorable_stream_still_runs(
    headers: list[tuple[str, str]],
) -> None:
    release = asyncio.Event()
    first_chunk_sent = asyncio.Event()
    calls = 0

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal calls
        calls += 1
        raw = [(k.encode(), v.encode()) for k, v in headers]
        await send({"type": "http.response.start", "status": 200, "headers": raw})
        await send({"type": "http.response.body", "body": b"x" * 600, "more_body": True})
        if calls == 1:  # the first stream lasts until the test ends it
            first_chunk_sent.set()
            await release.wait()
        await send({"type": "http.response.body", "body": b"end"})

    mw = cached(app, lock_timeout=60, max_body_size=500)
    stream = asyncio.create_task(call(mw, "GET", "/live"))
    await asyncio.wait_for(first_chunk_sent.wait(), 5)
    others = await asyncio.wait_for(
        asyncio.gather(*(call(mw, "GET", "/live") for _ in range(3))), 5
    )  # would wait 60 s behind the stream's claim
    assert all(r.body == b"x" * 600 + b"end" and x_cache(r) == "MISS" for r in others)
    release.set()
    assert (await stream).body == b"x" * 600 + b"end"
    assert calls == 4


async def test_stale_while_revalidate_serves_stale_and_refreshes_once() -> None:
    cc = "max-age=0, stale-while-revalidate=60"
    app = App({"/s": (200, [("cache-control", cc)], lambda s: f"v{app.calls}".encode())})
    mw = cached(app)
    assert (await call(mw, "GET", "/s")).body == b"v1"
    results = await asyncio.gather(*(call(mw, "GET", "/s") for _ in range(10)))
    assert {(r.body, x_cache(r)) for r in results} == {(b"v1", "STALE")}
    await asyncio.gather(*mw.actions.tasks)
    assert app.calls == 2  # one background refresh for ten stale hits
    r = await call(mw, "GET", "/s")
    assert (r.body, x_cache(r)) == (b"v2", "STALE")
    assert mw.stats()["stale_hits"] == 11


@pytest.mark.parametrize("failure", ["status", "exception"])
async def test_stale_if_error_serves_the_stale_entry(failure: str) -> None:
    app = App({"/e": (200, [("cache-control", "max-age=0, stale-if-error=60")], b"good")})
    mw = cached(app)
    assert (await call(mw, "GET", "/e")).body == b"good"
    if failure == "status":
        app.routes["/e"] = (503, [], b"down")
    else:

        def boom(scope: dict[str, Any]) -> bytes:
            raise RuntimeError("app crashed")

        app.routes["/e"] = (200, [], boom)
    r = await call(mw, "GET", "/e")
    assert (r.status, r.body, x_cache(r)) == (200, b"good", "STALE")
    assert mw.stats()["stale_if_error"] == 1
    # without stale-if-error the failure reaches the client
    plain = App({"/f": (200, [("cache-control", "max-age=0, stale-while-revalidate=5")], b"ok")})
    mw2 = cached(plain, stale_if_error=0)
    await call(mw2, "GET", "/f")
    plain.routes["/f"] = (503, [], b"down")
    await asyncio.gather(*mw2.actions.tasks)  # the stale hit's background refresh
    r = await call(mw2, "GET", "/f", headers=[("cache-control", "no-cache")])
    assert (r.status, r.body) == (503, b"down")


async def test_server_timing_entry_before_the_start_message() -> None:
    app = App({"/t": (200, [], b"t")})
    mw, contexts = reader(cached(app))
    for _ in range(2):
        await call(mw, "GET", "/t")
    descs = [[(t.name, t.desc) for t in ctx.timings] for ctx in contexts]
    assert descs == [[("cache", "miss")], [("cache", "hit")]]


async def test_other_methods_and_scopes_pass_through_untouched() -> None:
    app = App({"/x": (200, [], b"x")})
    mw = cached(app)
    r = await call(mw, "POST", "/x")
    assert x_cache(r) is None
    seen: list[str] = []

    async def inner(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    wrapped = cached(inner)
    for kind in ("lifespan", "websocket"):
        await wrapped({"type": kind}, None, None)  # type: ignore[arg-type]
    assert seen == ["lifespan", "websocket"]


class FailingStore(MemoryStore):
    async def get(self, key: str) -> bytes | None:
        raise StoreUnavailable("down")


async def test_store_outage_bypasses_and_serves_the_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = App({"/o": (200, [], b"o")})
    mw = cached(app, storage=FailingStore())
    for _ in range(3):
        r = await call(mw, "GET", "/o")
        assert (r.status, r.body, x_cache(r)) == (200, b"o", "BYPASS")
    outage = mw.stats()["outage"]
    assert (outage["down"], outage["failures"], outage["incidents"]) == (True, 3, 1)
    assert sum("unavailable" in rec.message for rec in caplog.records) == 1


def test_env_paths_targeted_field_and_cache_status() -> None:
    """What the cache makes of its variables (that each one arrives: test_options_contract)."""
    env = {
        "ASGI_PERF_CACHE_PATHS": "/items/{id}, /static/*",
        "ASGI_PERF_CACHE_CDN_CACHE_CONTROL": "off",
        "ASGI_PERF_CACHE_TARGETED_FIELD": "Edge-Control",
        "ASGI_PERF_CACHE_NAME": "edge-1",
        "ASGI_PERF_CACHE_STATUS_KEY": "on",
    }
    settings = CacheMiddleware.from_env(App(), environ=env, default_ttl=5).settings
    assert [settings.ttl_for(p) for p in ("/items/7", "/items/7/x", "/static/a/b", "/")] == [
        5,
        None,
        5,
        None,
    ]
    assert settings.targeted == (b"edge-control",)
    assert settings.status.hit(5, "k") == (b"cache-status", b'edge-1; hit; ttl=5; key="k"')
    defaults = CacheMiddleware(App()).settings
    assert (defaults.default_ttl, defaults.stale_if_error, defaults.targeted) == (
        None, 300.0, (b"asgi-perf-cache-control", b"cdn-cache-control")
    )  # fmt: skip
    sized = CacheMiddleware.from_env(App(), environ={"ASGI_PERF_CACHE_MAX_BYTES": "1MiB"})
    assert isinstance(sized.store, MemoryStore) and sized.store.max_bytes == 1024 * 1024
    assert CacheMiddleware.enabled_in_env({}) is False
    assert CacheMiddleware.enabled_in_env({"ASGI_PERF_CACHE_ENABLED": "on"}) is True
    for option, value in [
        ("methods", ["POST"]),
        ("max_entries", 0),
        ("key_headers", ["bad header"]),
        ("lock_timeout", 0),
        ("storage", "ftp://x"),
        ("max_bytes", "lots"),
        ("default_ttl", "-1"),
        ("paths", ["items/{id}"]),
        ("targeted_field", "bad field"),
        ("cache_name", ""),
    ]:
        with pytest.raises(ConfigError, match=option if option != "storage" else "storage"):
            CacheMiddleware(App(), **{option: value})


# -- composition with CompressionMiddleware ------------------------------------------------
BODY = b'{"items": "' + b"abcdefghij" * 300 + b'"}'


def decode(response: Response) -> bytes:
    coding = response.header("content-encoding")
    if coding is None:
        return response.body
    if coding == "gzip":
        return gzip.decompress(response.body)
    if coding == "br":
        import brotli

        return bytes(brotli.decompress(response.body))
    if coding == "zstd":
        import zstandard

        return bytes(zstandard.ZstdDecompressor().decompressobj().decompress(response.body))
    raise AssertionError(coding)


@pytest.mark.parametrize("cache_outside", [True, False])
async def test_composition_with_compression_both_orders(cache_outside: bool) -> None:
    compression = pytest.importorskip("asgi_perf.compression")
    app = App({"/j": (200, [("content-type", "application/json")], BODY)})
    if cache_outside:
        mw: Any = cached(compression.CompressionMiddleware(app))
    else:
        mw = compression.CompressionMiddleware(cached(app))
    clients = [
        ("gzip", "gzip"),
        ("br", "br"),
        ("zstd", "zstd"),
        ("identity", None),
        (None, None),
        ("gzip;q=0, br", "br"),
        ("gzip, deflate, br, zstd", "zstd"),
        ("*;q=0, identity", None),
    ]
    for _ in range(2):
        for accept, expected in clients:
            headers = [] if accept is None else [("accept-encoding", accept)]
            r = await call(mw, "GET", "/j", headers=headers)
            assert r.header("content-encoding") == expected, (accept, r.headers)
            assert decode(r) == BODY
            length = r.header("content-length")
            assert length is None or int(length) == len(r.body)
            assert "accept-encoding" in (r.header("vary") or "").lower()
    # cache outside: one entry per negotiated coding; inside: one entry for all
    assert app.calls == (4 if cache_outside else 1)


# -- Redis -----------------------------------------------------------------------------------
@pytest.fixture
async def redis_mw(redis_url: str, key_prefix: str) -> AsyncIterator[tuple[CacheMiddleware, App]]:
    app = App({"/r": (200, [("cache-tag", "r")], b"from redis")})
    mw = cached(
        app,
        storage=create_store(redis_url, prefix=key_prefix + "cache:", timeout=2.0),
        key_prefix=key_prefix,
    )
    yield mw, app
    await mw.clear()
    await mw.store.close()


@pytest.mark.redis
async def test_redis_hit_costs_one_round_trip(redis_mw: tuple[CacheMiddleware, App]) -> None:
    mw, app = redis_mw
    assert x_cache(await call(mw, "GET", "/r")) == "MISS"
    store: Any = mw.store
    for _ in range(3):
        before = store.round_trips
        r = await call(mw, "GET", "/r")
        assert (r.body, x_cache(r)) == (b"from redis", "HIT")
        assert store.round_trips - before == 1
    assert app.calls == 1


@pytest.mark.redis
async def test_redis_stampede_and_invalidation(redis_mw: tuple[CacheMiddleware, App]) -> None:
    mw, app = redis_mw
    app.delay = 0.1
    results = await asyncio.gather(*(call(mw, "GET", "/r") for _ in range(50)))
    assert all(r.body == b"from redis" for r in results)
    assert app.calls == 1
    assert await mw.invalidate(tags=["r"]) == 1
    assert x_cache(await call(mw, "GET", "/r")) == "MISS"
    assert await mw.invalidate(path_prefix="/") == 1
    assert x_cache(await call(mw, "GET", "/r")) == "MISS"


class LateClaims(RedisStore):
    """A process that is slow at the worst moment: after its lookup missed, it claims the key
    only once ``go`` is set (another process's fill completed meanwhile)."""

    def __init__(self, url: str, prefix: str) -> None:
        super().__init__(url, prefix=prefix, timeout=2.0)
        self.go = asyncio.Event()

    async def claim(self, key: str, token: str, ttl: float) -> bool:
        await self.go.wait()
        return await super().claim(key, token, ttl)

    async def get_or_claim(
        self, record_key: str, claim_key: str, token: str, ttl: float
    ) -> tuple[bytes | None, bool]:
        await self.go.wait()
        return await super().get_or_claim(record_key, claim_key, token, ttl)

    async def get_or_claim_if(
        self,
        guard_key: str,
        expected: bytes,
        record_key: str,
        claim_key: str | None,
        token: str,
        ttl: float,
    ) -> tuple[bytes | None, bytes | None, bool]:
        # A miss is looked up and claimed in one step: the process is slow just before it.
        await self.go.wait()
        return await super().get_or_claim_if(guard_key, expected, record_key, claim_key, token, ttl)


@pytest.mark.redis
@pytest.mark.parametrize("stored", ["nothing", "a stale entry"])
async def test_a_claim_won_after_another_process_filled_uses_its_entry(
    redis_url: str, key_prefix: str, stored: str
) -> None:
    app = App({"/f": (200, [("cache-control", "max-age=60")], lambda s: f"v{app.calls}".encode())})
    fast = cached(app, storage=create_store(redis_url, prefix=key_prefix, timeout=2.0))
    late_store = LateClaims(redis_url, key_prefix)
    slow = cached(app, storage=late_store)
    try:
        if stored != "nothing":  # stale at once, kept for stale-if-error
            app.routes["/f"] = (200, [("cache-control", "max-age=1, stale-if-error=60"),
                                      ("age", "5")], b"old")  # fmt: skip
            assert x_cache(await call(fast, "GET", "/f")) == "MISS"
            app.routes["/f"] = (200, [("cache-control", "max-age=60")], b"new")
        calls = app.calls
        late = asyncio.create_task(call(slow, "GET", "/f"))
        await asyncio.sleep(0.1)  # the slow process is about to look the key up (and claim)
        filled = await call(fast, "GET", "/f")
        assert x_cache(filled) == "MISS"
        late_store.go.set()
        r = await asyncio.wait_for(late, 5)
        assert (r.body, x_cache(r)) == (filled.body, "HIT")
        assert app.calls == calls + 1
    finally:
        await fast.clear()
        await fast.store.close()
        await late_store.close()


@pytest.mark.redis
async def test_redis_miss_is_two_round_trips_and_vary_is_learned_with_the_lookup(
    redis_url: str, key_prefix: str
) -> None:
    """A miss is looked up and claimed in one round trip and stored (entry, Vary record,
    indexes, release of the claim) in one more; a process that has not seen the resource
    learns its Vary names from the lookup script and serves the right variant."""

    def language(scope: dict[str, Any]) -> bytes:
        return dict(scope["headers"]).get(b"accept-language", b"-")  # type: ignore[no-any-return]

    headers = [("cache-control", "max-age=60"), ("vary", "accept-language")]
    app = App({"/v": (200, headers, language)})
    one = cached(app, storage=create_store(redis_url, prefix=key_prefix, timeout=2.0))
    two = cached(app, storage=create_store(redis_url, prefix=key_prefix, timeout=2.0))
    en, fr = [("accept-language", "en")], [("accept-language", "fr")]
    try:
        trips = one.store.round_trips  # type: ignore[attr-defined]
        r = await call(one, "GET", "/v", headers=en)
        assert (x_cache(r), r.body) == ("MISS", b"en")
        assert one.store.round_trips - trips == 2  # type: ignore[attr-defined]
        trips = two.store.round_trips  # type: ignore[attr-defined]
        r = await call(two, "GET", "/v", headers=en)
        assert (x_cache(r), r.body) == ("HIT", b"en")
        assert two.store.round_trips - trips == 2, "names changed: one lookup more"  # type: ignore[attr-defined]
        r = await call(two, "GET", "/v", headers=fr)
        assert (x_cache(r), r.body) == ("MISS", b"fr")
        r = await call(one, "GET", "/v", headers=fr)
        assert (x_cache(r), r.body) == ("HIT", b"fr")
        assert app.calls == 2
    finally:
        await one.clear()
        await one.store.close()
        await two.store.close()


@pytest.mark.cluster
async def test_redis_cluster_hit_stampede_and_invalidation(
    redis_cluster_url: str, key_prefix: str
) -> None:
    app = App({"/c/{x}": (200, [("cache-tag", "t")], b"cluster"), "/d": (200, [], b"d")})
    app.delay = 0.05
    mw = cached(app, storage=redis_cluster_url, key_prefix=key_prefix)
    try:
        for path in ("/c/{x}", "/d"):
            results = await asyncio.gather(*(call(mw, "GET", path) for _ in range(20)))
            assert all(r.status == 200 for r in results)
        assert app.calls == 2
        assert x_cache(await call(mw, "GET", "/c/{x}")) == "HIT"
        assert await mw.invalidate(tags=["t"]) == 1
        assert await mw.invalidate(path_prefix="/d") == 1
        assert x_cache(await call(mw, "GET", "/c/{x}")) == "MISS"
    finally:
        await mw.clear()
        await mw.store.close()


@pytest.mark.redis
async def test_redis_local_ttl_serves_without_a_round_trip(redis_url: str, key_prefix: str) -> None:
    app = App({"/l": (200, [], b"l")})
    mw = cached(app, storage=redis_url, key_prefix=key_prefix, local_ttl=60)
    try:
        await call(mw, "GET", "/l")
        store: Any = mw.store
        before = store.round_trips
        assert x_cache(await call(mw, "GET", "/l")) == "HIT"
        assert store.round_trips == before
    finally:
        await mw.clear()
        await mw.store.close()


def items_api(cache_control: str | None = None) -> tuple[FastAPI, list[int]]:
    """A FastAPI app whose ``/items/{item_id}`` tags its responses and counts its calls."""
    api = FastAPI()
    calls: list[int] = []

    @api.get("/items/{item_id}")
    async def item(item_id: int, response: FastAPIResponse) -> dict[str, int]:
        calls.append(item_id)
        if cache_control is not None:
            response.headers["Cache-Control"] = cache_control
        response.headers["Cache-Tag"] = f"item:{item_id}, items"
        return {"id": item_id}

    return api, calls


async def test_fastapi_app_with_add_middleware() -> None:
    api, calls = items_api()
    api.add_middleware(CacheMiddleware, default_ttl=60)
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        first = await client.get("/items/1?b=2&a=1")
        second = await client.get("/items/1?a=1&b=2")
        assert first.json() == second.json() == {"id": 1}
        assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
        assert "cache-tag" not in second.headers
        etag = second.headers["etag"]
        revalidated = await client.get("/items/1?a=1&b=2", headers={"If-None-Match": etag})
        assert revalidated.status_code == 304
    assert calls == [1]


@pytest.mark.redis
async def test_redis_outage_bypasses_then_recovers(key_prefix: str) -> None:
    if not redis_server_available():
        pytest.skip("no redis-server to stop and restart")
    server = RedisServer().start()
    try:
        app = App({"/o": (200, [], b"o")})
        mw = cached(app, storage=server.url, key_prefix=key_prefix)
        assert x_cache(await call(mw, "GET", "/o")) == "MISS"
        assert x_cache(await call(mw, "GET", "/o")) == "HIT"
        server.stop()
        for _ in range(3):
            r = await call(mw, "GET", "/o")
            assert (r.status, r.body, x_cache(r)) == (200, b"o", "BYPASS")
        assert mw.stats()["outage"]["down"] is True
        server.start()
        r = await call(mw, "GET", "/o")
        assert (r.status, r.body) == (200, b"o")
        assert x_cache(await call(mw, "GET", "/o")) == "HIT"
        outage = mw.stats()["outage"]
        assert (outage["down"], outage["failures"], outage["incidents"]) == (False, 3, 1)
        await mw.store.close()
    finally:
        server.cleanup()


async def test_store_keys_are_escaped_and_bounded() -> None:
    app = App()
    mw = cached(app)
    assert isinstance(mw.store, MemoryStore)
    hostile = [("/a\nb c", b"x=\r\n"), ("/é/{tag}?", b"q=%00&\xff=1"), ("/" + "p" * 100_000, b"")]
    for path, query in hostile:
        for _ in range(2):
            scope_query = query.decode("latin-1")
            r = await call(mw, "GET", path, query=scope_query)
            assert r.status == 200
        assert x_cache(r) == "HIT"
    keys = list(mw.store._data)
    assert len(keys) == len(hostile)  # one entry each (in one process no Vary record is needed)
    for key in keys:
        assert key.isascii() and key.isprintable() and " " not in key and len(key) <= 1024, key
