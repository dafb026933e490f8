"""CacheMiddleware against RFC 9111 behaviour by behaviour, offline: what the public HTTP caching
conformance suite (cache-tests.fyi) checks, kept here so CI needs no network and no Node.

Defaults, Expires/Age parsing, status codes, revalidation and 304 freshening, no-cache and
must-revalidate, max-stale, invalidation by unsafe methods, CDN-Cache-Control and the own
targeted field, Cache-Status, stale-if-error, Vary normalisation, content codings, shared
responses to credentialed requests.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from asgi_perf.cache import CacheMiddleware
from tests.support import Response, call

Pairs = list[tuple[str, str]]


class Origin:
    """An app answering ``routes[path]`` = (status, headers, body); counts its calls, keeps
    the requests it saw, and answers a conditional request ``304`` (with ``not_modified``
    headers) when its ``If-None-Match`` / ``If-Modified-Since`` matches the route's
    validators and ``not_modified`` is set."""

    def __init__(self, routes: dict[str, tuple[int, Pairs, bytes]] | None = None) -> None:
        self.routes = routes or {}
        self.seen: list[dict[str, Any]] = []
        self.not_modified: Pairs | None = None
        self.delay = 0.0

    @property
    def calls(self) -> int:
        return len(self.seen)

    def request(self, n: int) -> dict[bytes, bytes]:
        return dict(self.seen[n]["headers"])

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.seen.append(scope)
        await asyncio.sleep(self.delay)
        status, headers, body = self.routes.get(scope["path"], (200, [], b"default"))
        asked = dict(scope["headers"])
        have = {k.lower(): v for k, v in headers}
        conditional = asked.get(b"if-none-match") == have.get("etag", "").encode() or (
            b"if-none-match" not in asked
            and asked.get(b"if-modified-since") == have.get("last-modified", "").encode()
        )
        if (
            self.not_modified is not None
            and conditional
            and have.keys() & {"etag", "last-modified"}
        ):
            status, headers, body = 304, self.not_modified, b""
        raw = [(k.lower().encode(), v.encode()) for k, v in headers]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})


def x_cache(response: Response) -> str | None:
    return response.header("x-cache")


async def twice(mw: Any, path: str = "/r", **kwargs: Any) -> tuple[Response, Response]:
    return await call(mw, "GET", path, **kwargs), await call(mw, "GET", path, **kwargs)


# -- what is reused by default ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "reused"),
    [
        ([], False),  # states no freshness: not reused without an opt-in default TTL
        ([("cache-control", "max-age=60")], True),
        ([("expires", "Thu, 01 Jan 2099 00:00:00 GMT")], True),
        ([("expires", "Thu, 01 Jan 2099 00:00:00 UTC")], False),  # invalid: expired
        ([("expires", "Thu, 01 Jan 99 00:00:00 GMT")], False),
        ([("expires", "Thu, 01 Jan 2099 00:00:00 GMT")] * 2, False),  # several lines: invalid
        ([("last-modified", "Mon, 01 Jan 2001 00:00:00 GMT")], True),  # §4.2.2 heuristic
        ([("cache-control", "max-age=3600"), ("age", "7200, 0")], False),  # Age: the first
        ([("cache-control", "max-age=3600"), ("age", "0, 7200")], True),
        ([("cache-control", "max-age=3600"), ("age", "abc")], True),  # invalid Age: ignored
    ],
)
async def test_what_is_reused_by_default(headers: Pairs, reused: bool) -> None:
    origin = Origin({"/r": (200, headers, b"r")})
    mw = CacheMiddleware(origin)
    _, second = await twice(mw)
    assert (x_cache(second) == "HIT", origin.calls) == (reused, 1 if reused else 2)


async def test_an_updated_resource_is_never_served_stale_by_default() -> None:
    """Issue 16: GET → 404, PUT → 200, GET must not be the stored 404 — with the defaults,
    and with an opt-in default TTL (the PUT invalidates it)."""
    for options in ({}, {"default_ttl": 300}):
        origin = Origin({"/things/1": (404, [], b"none")})
        mw = CacheMiddleware(origin, **options)
        assert (await call(mw, "GET", "/things/1")).status == 404
        origin.routes["/things/1"] = (200, [], b"thing")
        assert (await call(mw, "PUT", "/things/1", body=b"thing")).status == 200
        again = await call(mw, "GET", "/things/1")
        assert (again.status, again.body) == (200, b"thing"), options


async def test_default_ttl_on_listed_paths_only() -> None:
    origin = Origin()
    mw = CacheMiddleware(origin, default_ttl=60, paths=["/items/{item_id}", "/static/*"])
    for path, reused in [("/items/1", True), ("/items/1/edit", False), ("/static/a.css", True),
                         ("/other", False)]:  # fmt: skip
        _, second = await twice(mw, path)
        assert (x_cache(second) == "HIT") is reused, path
    # explicit freshness still wins where the default TTL applies
    origin.routes["/items/2"] = (200, [("cache-control", "no-store")], b"x")
    _, second = await twice(mw, "/items/2")
    assert x_cache(second) == "MISS"


@pytest.mark.parametrize(
    ("status", "headers", "reused"),
    [
        (500, [("cache-control", "max-age=60")], True),  # explicit freshness: any status
        (302, [("cache-control", "max-age=60"), ("location", "/x")], True),
        (599, [("cache-control", "max-age=60")], True),
        (599, [("last-modified", "Mon, 01 Jan 2001 00:00:00 GMT")], False),
        (599, [("last-modified", "Mon, 01 Jan 2001 00:00:00 GMT"), ("cache-control", "public")],
         True),
        (404, [("last-modified", "Mon, 01 Jan 2001 00:00:00 GMT")], True),
        (200, [("cache-control", "must-understand, no-store, max-age=60")], True),
        (599, [("cache-control", "must-understand, no-store, max-age=60")], False),
        (206, [("cache-control", "max-age=60"), ("content-range", "bytes 0-1/10")], False),
    ],
)  # fmt: skip
async def test_status_codes(status: int, headers: Pairs, reused: bool) -> None:
    origin = Origin({"/r": (status, headers, b"r")})
    _, second = await twice(CacheMiddleware(origin))
    assert (second.status, x_cache(second) == "HIT") == (status, reused)


# -- validation -----------------------------------------------------------------------------
STALE = [("cache-control", "max-age=60"), ("age", "61")]  # stored already stale


@pytest.mark.parametrize(
    ("validators", "sent"),
    [
        ([("etag", '"v1"')], {b"if-none-match": b'"v1"'}),
        ([("etag", 'W/"v1"')], {b"if-none-match": b'W/"v1"'}),
        ([("last-modified", "Mon, 01 Jan 2001 00:00:00 GMT")],
         {b"if-modified-since": b"Mon, 01 Jan 2001 00:00:00 GMT"}),
    ],
)  # fmt: skip
async def test_a_stale_entry_is_revalidated_and_freshened_by_a_304(
    validators: Pairs, sent: dict[bytes, bytes]
) -> None:
    origin = Origin({"/r": (200, [*STALE, *validators, ("x-test", "a")], b"stored body")})
    origin.not_modified = [("cache-control", "max-age=3600"), ("x-test", "b"),
                           ("content-length", "0")]  # fmt: skip
    mw = CacheMiddleware(origin)
    assert (await call(mw, "GET", "/r")).body == b"stored body"
    revalidated = await call(mw, "GET", "/r")
    for name, value in sent.items():
        assert origin.request(1)[name] == value  # the stored validators, exactly
    assert (revalidated.status, revalidated.body, x_cache(revalidated)) == (
        200, b"stored body", "REVALIDATED"
    )  # fmt: skip
    assert revalidated.header("x-test") == "b"  # §4.3.4: fields of the 304 replace the stored
    assert revalidated.header("content-length") == "11"  # … but not the stored body's length
    status = revalidated.header("cache-status") or ""
    assert "; fwd=stale; fwd-status=304; " in status and status.endswith("; stored")
    hit = await call(mw, "GET", "/r")
    assert (hit.body, hit.header("x-test"), x_cache(hit), origin.calls) == (
        b"stored body", "b", "HIT", 2
    )  # fmt: skip
    assert mw.stats()["revalidated"] == 1


async def test_a_revalidation_answered_200_replaces_the_entry_and_own_etags_stay_home() -> None:
    origin = Origin({"/r": (200, STALE, b"old")})
    mw = CacheMiddleware(origin)
    first = await call(mw, "GET", "/r")
    assert first.header("etag") is not None  # the cache's content hash …
    origin.routes["/r"] = (200, [("cache-control", "max-age=60")], b"new")
    again = await call(mw, "GET", "/r")
    assert b"if-none-match" not in origin.request(1)  # … is never sent to the app
    assert (again.body, x_cache(again)) == (b"new", "MISS")
    assert x_cache(await call(mw, "GET", "/r")) == "HIT"


async def test_the_clients_own_conditionals_after_a_revalidation() -> None:
    origin = Origin({"/r": (200, [*STALE, ("etag", '"v1"')], b"body")})
    origin.not_modified = [("cache-control", "max-age=60")]
    mw = CacheMiddleware(origin)
    await call(mw, "GET", "/r")
    r = await call(mw, "GET", "/r", headers=[("if-none-match", '"v1"')])
    assert (r.status, r.body, x_cache(r)) == (304, b"", "REVALIDATED")
    assert origin.request(1)[b"if-none-match"] == b'"v1"'


@pytest.mark.parametrize("cc", ["no-cache", "max-age=3600, no-cache"])
async def test_no_cache_responses_are_stored_and_revalidated_on_every_use(cc: str) -> None:
    origin = Origin({"/r": (200, [("cache-control", cc), ("etag", '"e"')], b"body")})
    origin.not_modified = [("cache-control", cc)]
    mw = CacheMiddleware(origin)
    await call(mw, "GET", "/r")
    for n in (1, 2):
        r = await call(mw, "GET", "/r")
        assert (r.body, x_cache(r), origin.request(n)[b"if-none-match"]) == (
            b"body", "REVALIDATED", b'"e"'
        )  # fmt: skip


@pytest.mark.parametrize("cc", ["must-revalidate", "proxy-revalidate", "s-maxage=60"])
async def test_must_revalidate_entries_are_never_served_stale(cc: str) -> None:
    origin = Origin({"/r": (200, [("cache-control", f"max-age=60, {cc}"), ("age", "61"),
                                  ("etag", '"e"')], b"body")})  # fmt: skip
    mw = CacheMiddleware(origin)
    await call(mw, "GET", "/r")
    origin.routes["/r"] = (503, [], b"down")
    for headers in ([], [("cache-control", "max-stale=600")]):
        r = await call(mw, "GET", "/r", headers=headers)
        assert (r.status, r.body) == (503, b"down")  # neither max-stale nor stale-if-error


async def test_max_stale_min_fresh_and_request_no_cache() -> None:
    origin = Origin({"/r": (200, [*STALE, ("etag", '"e"')], b"body")})
    mw = CacheMiddleware(origin)
    await call(mw, "GET", "/r")
    stale = await call(mw, "GET", "/r", headers=[("cache-control", "max-stale=10")])
    assert (stale.body, x_cache(stale), origin.calls) == (b"body", "STALE", 1)
    origin.routes["/r"] = (200, [("cache-control", "max-age=100"), ("etag", '"f"')], b"new")
    assert (await call(mw, "GET", "/r", headers=[("cache-control", "max-stale=0")])).body == b"new"
    fresh_enough = await call(mw, "GET", "/r", headers=[("cache-control", "min-fresh=50")])
    assert x_cache(fresh_enough) == "HIT"
    too_old = await call(mw, "GET", "/r", headers=[("cache-control", "min-fresh=500")])
    assert (x_cache(too_old), origin.calls) == ("MISS", 3)
    forced = await call(mw, "GET", "/r", headers=[("cache-control", "no-cache")])
    assert origin.request(3)[b"if-none-match"] == b'"f"'  # request no-cache revalidates
    assert "fwd=request" in (forced.header("cache-status") or "")


async def test_stale_if_error_by_default_and_not_past_its_window() -> None:
    origin = Origin({"/r": (200, [("cache-control", "max-age=60"), ("age", "61")], b"good")})
    mw = CacheMiddleware(origin)  # stale_if_error=300 by default
    await call(mw, "GET", "/r")
    origin.routes["/r"] = (502, [], b"bad gateway")
    r = await call(mw, "GET", "/r")
    assert (r.status, r.body, x_cache(r)) == (200, b"good", "STALE")
    assert "fwd=stale; fwd-status=502" in (r.header("cache-status") or "")
    old = Origin({"/r": (200, [("cache-control", "max-age=60"), ("age", "400")], b"old")})
    mw = CacheMiddleware(old)
    await call(mw, "GET", "/r")
    old.routes["/r"] = (502, [], b"bad gateway")
    assert (await call(mw, "GET", "/r")).status == 502  # 340 s past its lifetime


# -- invalidation (§4.4) ----------------------------------------------------------------------
FRESH = [("cache-control", "max-age=3600")]


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "M-SEARCH"])
async def test_unsafe_methods_invalidate_the_target_and_its_locations(method: str) -> None:
    origin = Origin({p: (200, [*FRESH, ("vary", "accept-language")], p.encode())
                     for p in ("/a", "/b", "/c", "/d")})  # fmt: skip
    mw = CacheMiddleware(origin)
    host = ("host", "testserver")
    for path in ("/a", "/b", "/c", "/d"):
        for lang in ("en", "fr"):  # two variants each
            await call(mw, "GET", path, headers=[host, ("accept-language", lang)])
    origin.routes["/a"] = (201, [("location", "/b"), ("content-location", "http://testserver/c")],
                           b"done")  # fmt: skip
    r = await call(mw, method, "/a", headers=[host])
    assert (r.status, r.header("cache-status")) == (201, "asgi-perf; fwd=method")
    origin.routes["/a"] = (200, [*FRESH, ("vary", "accept-language")], b"/a")
    calls = origin.calls
    for path, reused in [("/a", False), ("/b", False), ("/c", False), ("/d", True)]:
        for lang in ("en", "fr"):
            again = await call(mw, "GET", path, headers=[host, ("accept-language", lang)])
            assert (x_cache(again) == "HIT") is reused, (path, lang)
    assert origin.calls == calls + 6


@pytest.mark.parametrize(
    ("status", "location"),
    [(500, "/b"), (404, "/b"), (200, "http://elsewhere.example/b"), (200, "https://testserver/b")],
)
async def test_what_unsafe_methods_leave_alone(status: int, location: str) -> None:
    origin = Origin({"/a": (200, FRESH, b"a"), "/b": (200, FRESH, b"b")})
    mw = CacheMiddleware(origin)
    for path in ("/a", "/b"):
        await call(mw, "GET", path, headers=[("host", "testserver")])
    origin.routes["/a"] = (status, [("location", location)], b"")
    await call(mw, "POST", "/a", headers=[("host", "testserver")])
    b = await call(mw, "GET", "/b", headers=[("host", "testserver")])
    assert x_cache(b) == "HIT"  # another origin's, or a failed request's, target stays
    a = await call(mw, "GET", "/a", headers=[("host", "testserver")])
    assert (x_cache(a) == "HIT") is (status >= 400)


# -- targeted fields (RFC 9213) ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "reused"),
    [
        ([("cdn-cache-control", "max-age=60"), ("cache-control", "no-store")], True),
        ([("cdn-cache-control", "private"), ("cache-control", "max-age=60")], False),
        ([("cdn-cache-control", "no-store"), ("cache-control", "max-age=60")], False),
        ([("cdn-cache-control", "max-age=0"), ("cache-control", "max-age=60")], False),
        ([("cdn-cache-control", "max-age=60, &&&"), ("cache-control", "no-store")], False),
        ([("asgi-perf-cache-control", "max-age=60"), ("cdn-cache-control", "no-store")], True),
        ([("asgi-perf-cache-control", "no-store"), ("cache-control", "max-age=60")], False),
    ],
)
async def test_targeted_fields_take_precedence(headers: Pairs, reused: bool) -> None:
    origin = Origin({"/r": (200, headers, b"r")})
    first, second = await twice(CacheMiddleware(origin))
    assert (x_cache(second) == "HIT") is reused
    for r in (first, second):
        assert r.header("asgi-perf-cache-control") is None  # this cache's own: never forwarded
        cdn = dict(headers).get("cdn-cache-control")
        assert r.header("cdn-cache-control") == cdn  # a CDN in front still needs it


async def test_targeted_fields_are_configurable() -> None:
    headers = [("edge-control", "max-age=60"), ("cdn-cache-control", "no-store")]
    origin = Origin({"/r": (200, headers, b"r")})
    mw = CacheMiddleware(origin, targeted_field="Edge-Control", cdn_cache_control=False)
    first, second = await twice(mw)
    assert (x_cache(second), first.header("edge-control")) == ("HIT", None)
    ignored = Origin({"/r": (200, [("cdn-cache-control", "max-age=60")], b"r")})
    _, again = await twice(CacheMiddleware(ignored, cdn_cache_control=False))
    assert x_cache(again) == "MISS"


# -- Cache-Status (RFC 9211) ------------------------------------------------------------------
async def test_cache_status_on_every_response(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.25)  # the hit in the fill's second
    origin = Origin({"/r": (200, [("cache-control", "max-age=60")], b"r")})
    origin.routes["/gone"] = (410, [("cache-control", "no-store")], b"")
    mw = CacheMiddleware(origin)
    miss, hit = await twice(mw)
    assert miss.header("cache-status") == "asgi-perf; fwd=uri-miss; fwd-status=200; stored"
    assert hit.header("cache-status") == "asgi-perf; hit; ttl=60"
    uncached = await call(mw, "GET", "/gone")
    assert uncached.header("cache-status") == "asgi-perf; fwd=uri-miss; fwd-status=410"
    bypass = await call(mw, "GET", "/r", headers=[("x-forwarded-host", "evil")])
    assert bypass.header("cache-status") == "asgi-perf; fwd=bypass"
    named = CacheMiddleware(origin, cache_name="edge", cache_status_key=True)
    _, keyed = await twice(named)
    status = keyed.header("cache-status") or ""
    assert status.startswith("edge; hit; ttl=") and '; key="e:{/r}http|' in status


async def test_collapsed_requests_say_so() -> None:
    origin = Origin({"/r": (200, [("cache-control", "max-age=60")], b"r")})
    origin.delay = 0.05
    mw = CacheMiddleware(origin)
    results = await asyncio.gather(*(call(mw, "GET", "/r") for _ in range(5)))
    statuses = sorted(r.header("cache-status") or "" for r in results)
    assert sum("; collapsed" in s for s in statuses) == 4 and origin.calls == 1


# -- keys and representations -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "first", "second"),
    [("accept-language", "en, de", "de,EN"), ("accept-language", "en, de", " en ,   de"),
     ("foo", "1,2", " 1, 2 "), ("foo", "1, 2", "1,2")],
)  # fmt: skip
async def test_vary_values_are_normalised(name: str, first: str, second: str) -> None:
    origin = Origin({"/r": (200, [*FRESH, ("vary", name)], b"r")})
    mw = CacheMiddleware(origin)
    await call(mw, "GET", "/r", headers=[(name, first)])
    assert x_cache(await call(mw, "GET", "/r", headers=[(name, second)])) == "HIT"
    assert x_cache(await call(mw, "GET", "/r", headers=[(name, "fr")])) == "MISS"


async def test_content_codings_without_vary() -> None:
    """A coding the app sends whoever asks is served by the cache the same way; a coding
    clients negotiate (gzip …) only to those accepting it."""
    origin = Origin({"/custom": (200, [*FRESH, ("content-encoding", "x-custom")], b"c"),
                     "/gzip": (200, [*FRESH, ("content-encoding", "gzip")], b"g")})  # fmt: skip
    mw = CacheMiddleware(origin)
    await call(mw, "GET", "/custom")
    assert x_cache(await call(mw, "GET", "/custom", headers=[("accept-encoding", "br")])) == "HIT"
    await call(mw, "GET", "/gzip", headers=[("accept-encoding", "gzip")])
    plain = await call(mw, "GET", "/gzip", headers=[("accept-encoding", "identity")])
    assert x_cache(plain) == "MISS"  # to the app, which decides what this client gets


@pytest.mark.parametrize(
    ("cc", "shared"),
    [("max-age=60", False), ("public, max-age=60", True), ("s-maxage=60", True),
     ("max-age=60, must-revalidate", True)],
)  # fmt: skip
async def test_responses_to_credentialed_requests(cc: str, shared: bool) -> None:
    origin = Origin({"/r": (200, [("cache-control", cc)], b"r")})
    mw = CacheMiddleware(origin)
    first = await call(mw, "GET", "/r", headers=[("authorization", "Bearer a")])
    assert x_cache(first) == "BYPASS"
    assert (x_cache(await call(mw, "GET", "/r")) == "HIT") is shared  # §3.5
