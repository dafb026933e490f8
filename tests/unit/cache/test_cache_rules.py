"""RFC 9111 rules of the cache, one table per rule (asgi_perf.cache._rules, ._keys)."""

from __future__ import annotations

import pytest

from asgi_perf._core.http import canonical_query, fingerprint
from asgi_perf.cache._keys import escape_key_part, key_part, uri_tag
from asgi_perf.cache._rules import (
    HEURISTIC_STATUSES,
    UNDERSTOOD_STATUSES,
    Freshness,
    RequestDirectives,
    age_value,
    delta_seconds,
    etag_matches,
    freshness,
    initial_age,
    not_modified,
    parse_cache_control,
    parse_http_date,
    request_directives,
    response_directives,
    stale_windows,
    storable,
    strong_etag,
    vary_names,
)

NOW = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 GMT
DATE = b"Tue, 14 Nov 2023 22:13:20 GMT"
PLUS_60 = b"Tue, 14 Nov 2023 22:14:20 GMT"


def h(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode(), v.encode()) for k, v in pairs]


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([], {}),
        (["max-age=60"], {"max-age": "60"}),
        (["Max-Age=60, PUBLIC"], {"max-age": "60", "public": None}),
        (["public", "max-age=5"], {"public": None, "max-age": "5"}),  # several lines combine
        (['private="set-cookie, x", max-age=1'], {"private": "set-cookie, x", "max-age": "1"}),
        (["max-age=1, max-age=9"], {"max-age": "1"}),  # §4.2.1: first occurrence
        (["no-cache,,  no-store ,"], {"no-cache": None, "no-store": None}),
        (['x="a\\"b"'], {"x": 'a"b'}),
        (["s-maxage = 30"], {"s-maxage": "30"}),
    ],
)
def test_parse_cache_control(lines: list[str], expected: dict[str, str | None]) -> None:
    assert dict(parse_cache_control(h(*(("Cache-Control", line) for line in lines)))) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", 0), ("60", 60), ("99999999999", 2**31), ("-1", None), ("1.5", None), ("", None),
     (None, None), ("٣", None)],
)  # fmt: skip
def test_delta_seconds(value: str | None, expected: int | None) -> None:
    assert delta_seconds(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (DATE, NOW),
        (b" Tue, 14 Nov 2023 22:13:20 GMT ", NOW),  # surrounding whitespace
        (b"TUE, 14 NOV 2023 22:13:20 gmt", NOW),  # names in any case
        (b"Tuesday, 14-Nov-23 22:13:20 GMT", NOW),  # RFC 850
        (b"Tue Nov 14 22:13:20 2023", NOW),  # asctime
        (b"Tue Nov  8 22:13:20 2023", NOW - 6 * 86400),  # asctime pads the day with a space
        (b"Tue, 14 Nov 2023 22:13:20 UTC", None),  # only GMT
        (b"Tue, 14 Nov 2023 22:13:20 AEST", None),
        (b"Tue, 14 Nov 23 22:13:20 GMT", None),  # a two-digit year needs the RFC 850 form
        (b"Tue 14 Nov 2023 22:13:20 GMT", None),  # no comma
        (b"Tue, 14  Nov  2023 22:13:20 GMT", None),  # double spaces
        (b"Tue, 14-Nov-2023 22:13:20 GMT", None),  # dashes
        (b"Tue, 14 Nov 2023 22.13.20 GMT", None),  # dotted time
        (b"Tue, 14 Nov 2023 2:13:20 GMT", None),  # one-digit hour
        (b"Tue, 14 Nov 2023 25:13:20 GMT", None),
        (b"0", None),
        (b"not a date", None),
        (b"", None),
    ],
)
def test_parse_http_date(value: bytes, expected: float | None) -> None:
    assert parse_http_date(value) == expected


DAY_AGO = b"Mon, 13 Nov 2023 22:13:20 GMT"
LAST = b"Tue, 14 Nov 2023 22:13:20 GMT"


@pytest.mark.parametrize(
    ("status", "headers", "default_ttl", "expected"),
    [
        (200, h(("Cache-Control", "s-maxage=10, max-age=60")), None, Freshness(10.0, True)),
        (200, h(("Cache-Control", "max-age=60"), ("Expires", "0")), None, Freshness(60.0, True)),
        (200, h(("Date", DATE.decode()), ("Expires", PLUS_60.decode())), None,
         Freshness(60.0, True)),
        (200, h(("Expires", PLUS_60.decode())), None, Freshness(60.0, True)),  # no Date: now
        (200, h(("Expires", "0")), None, Freshness(0.0, True)),  # invalid: expired (§5.3)
        (200, h(("Expires", PLUS_60.decode()), ("Expires", PLUS_60.decode())), None,
         Freshness(0.0, True)),  # several Expires lines: invalid
        (200, h(("Cache-Control", "max-age=abc")), None, Freshness(0.0, True)),
        (200, h(("Cache-Control", "max-age=-1")), None, Freshness(0.0, True)),
        (200, h(), None, Freshness(0.0, False)),  # nothing said, no default: not reusable
        (200, h(), 300.0, Freshness(300.0, False, True)),  # the opt-in default TTL
        (404, h(), 300.0, Freshness(300.0, False, True)),
        (500, h(), 300.0, Freshness(0.0, False)),  # not heuristically cacheable
        (500, h(("Cache-Control", "max-age=5")), None, Freshness(5.0, True)),  # explicit: any
        # §4.2.2: 10% of the time since Last-Modified, from Date (or now), at most a day
        (200, h(("Last-Modified", DAY_AGO.decode()), ("Date", DATE.decode())), None,
         Freshness(8640.0, False, True)),
        (200, h(("Last-Modified", "Mon, 01 Jan 2001 00:00:00 GMT")), None,
         Freshness(86400.0, False, True)),
        (599, h(("Last-Modified", DAY_AGO.decode())), None, Freshness(0.0, False)),
        (599, h(("Last-Modified", DAY_AGO.decode()), ("Cache-Control", "public")), None,
         Freshness(8640.0, False, True)),  # public: heuristics apply to any status
        (200, h(("Last-Modified", DAY_AGO.decode())), 60.0, Freshness(60.0, False, True)),
    ],
)  # fmt: skip
def test_freshness(
    status: int, headers: list[tuple[bytes, bytes]], default_ttl: float | None, expected: Freshness
) -> None:
    cc = parse_cache_control(headers)
    assert freshness(cc, headers, status, NOW, default_ttl) == expected


@pytest.mark.parametrize(
    ("headers", "targeted", "expected", "from_targeted"),
    [
        (h(("Cache-Control", "max-age=1")), [b"cdn-cache-control"], {"max-age": "1"}, False),
        (h(("Cache-Control", "no-store"), ("CDN-Cache-Control", "max-age=60")),
         [b"cdn-cache-control"], {"max-age": "60"}, True),  # Cache-Control ignored (RFC 9213)
        (h(("CDN-Cache-Control", "max-age=60"), ("Edge", "no-store")),
         [b"edge", b"cdn-cache-control"], {"no-store": None}, True),  # most specific first
        (h(("Cache-Control", "no-store"), ("CDN-Cache-Control", "max-age=1, &&&")),
         [b"cdn-cache-control"], {"no-store": None}, False),  # not a Dictionary: ignored
        (h(("Cache-Control", "no-store"), ("CDN-Cache-Control", "max-age =1")),
         [b"cdn-cache-control"], {"no-store": None}, False),
        (h(("Cache-Control", "no-store"), ("CDN-Cache-Control", "MaX-aGe=1")),
         [b"cdn-cache-control"], {"no-store": None}, False),  # keys are lowercase
        (h(("CDN-Cache-Control", 'max-age="60"')), [b"cdn-cache-control"],
         {"max-age": '"60"'}, True),  # a string: no delta-seconds
        (h(("CDN-Cache-Control", "foobar, max-age=60;x=1"), ("CDN-Cache-Control", "private")),
         [b"cdn-cache-control"], {"foobar": None, "max-age": "60", "private": None}, True),
        (h(("CDN-Cache-Control", "max-age=60")), [], {}, False),  # not obeyed
    ],
)  # fmt: skip
def test_response_directives(
    headers: list[tuple[bytes, bytes]], targeted: list[bytes], expected: object, from_targeted: bool
) -> None:
    cc, used = response_directives(headers, targeted)
    assert (dict(cc), used) == (expected, from_targeted)


@pytest.mark.parametrize(
    ("lines", "expected"),
    [([], 0.0), (["30"], 30.0), (["7200, 0"], 7200.0), (["0, 7200"], 0.0),
     (["7200", "0"], 7200.0), (["abc"], 0.0), (["-7200"], 0.0), (["7200.0"], 0.0),
     (["2147483648"], 2.0**31), (["99999999999"], 2.0**31)],
)  # fmt: skip
def test_age_value(lines: list[str], expected: float) -> None:
    assert age_value(h(*(("Age", line) for line in lines))) == expected


@pytest.mark.parametrize(
    ("headers", "request_time", "response_time", "expected"),
    [
        (h(), NOW, NOW, 0.0),
        (h(("Age", "30")), NOW, NOW, 30.0),
        (h(("Age", "30")), NOW - 2, NOW, 32.0),  # plus the time the app took (§4.2.3)
        (h(("Date", DATE.decode())), NOW, NOW + 5, 5.0),  # apparent age
        (h(("Date", DATE.decode()), ("Age", "2")), NOW + 5, NOW + 5, 5.0),  # the larger
        (h(("Age", "junk")), NOW, NOW, 0.0),
        (h(("Date", PLUS_60.decode())), NOW, NOW, 0.0),  # clock skew: never negative
    ],
)
def test_initial_age(
    headers: list[tuple[bytes, bytes]], request_time: float, response_time: float, expected: float
) -> None:
    assert initial_age(headers, request_time, response_time) == expected


@pytest.mark.parametrize(
    ("status", "headers", "credentials", "authenticated", "reason"),
    [
        (200, h(("Cache-Control", "max-age=60")), False, False, None),
        (404, h(("Cache-Control", "max-age=60")), False, False, None),
        (500, h(("Cache-Control", "max-age=60")), False, False, None),  # explicit: any status
        (302, h(("Expires", PLUS_60.decode())), False, False, None),
        (599, h(("Cache-Control", "public, max-age=60")), False, False, None),
        (200, h(), False, False, "lifetime"),  # no freshness, nothing to revalidate with
        (500, h(), False, False, "status"),
        (302, h(), False, False, "status"),
        (206, h(("Cache-Control", "max-age=60")), False, False, "status"),  # not combined
        (304, h(("Cache-Control", "max-age=60")), False, False, "status"),
        (200, h(("Cache-Control", "no-store, max-age=60")), False, False, "no-store"),
        (200, h(("Cache-Control", "must-understand, no-store, max-age=60")), False, False, None),
        (599, h(("Cache-Control", "must-understand, no-store, max-age=60")), False, False,
         "status"),  # §5.2.2.3: a status it does not understand
        (200, h(("Cache-Control", "private, max-age=60")), False, False, "private"),
        (200, h(("Cache-Control", 'private="x", max-age=60')), False, False, "private"),
        (200, h(("Cache-Control", "no-cache")), False, False, "no-cache"),
        (200, h(("Cache-Control", "no-cache"), ("ETag", '"a"')), False, False, None),
        (200, h(("Cache-Control", "max-age=0"), ("Last-Modified", LAST.decode())), False, False,
         None),  # stale at once, kept to be revalidated
        (200, h(("Cache-Control", "max-age=0, stale-if-error=60")), False, False, None),
        (200, h(("Cache-Control", "max-age=0")), False, False, "lifetime"),
        (200, h(("Set-Cookie", "s=1"), ("Cache-Control", "public, max-age=60")), False, False,
         "set-cookie"),
        (200, h(("Vary", "Accept, *"), ("Cache-Control", "max-age=60")), False, False,
         "vary-star"),
        (200, h(("Cache-Control", "max-age=60")), True, False, "credentials"),
        (200, h(("Cache-Control", "s-maxage=60")), True, False, None),  # §3.5
        (200, h(("Cache-Control", "max-age=60, must-revalidate")), True, False, None),
        (200, h(("Cache-Control", "public, max-age=60")), True, False, None),
        (200, h(("Cache-Control", "max-age=60")), True, True, None),  # identity is in the key
    ],
)  # fmt: skip
def test_storable(
    status: int,
    headers: list[tuple[bytes, bytes]],
    credentials: bool,
    authenticated: bool,
    reason: str | None,
) -> None:
    cc = parse_cache_control(headers)
    fresh = freshness(cc, headers, status, NOW)
    got = storable(
        status, cc, headers, fresh, credentials=credentials, cache_authenticated=authenticated
    )
    assert got == reason


def test_status_sets() -> None:
    assert 429 not in HEURISTIC_STATUSES and 200 in HEURISTIC_STATUSES
    assert 599 not in UNDERSTOOD_STATUSES and 404 in UNDERSTOOD_STATUSES


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (h(), ()),
        (h(("Vary", "Accept-Encoding")), ("accept-encoding",)),
        (h(("Vary", "Accept-Language, accept-encoding"), ("Vary", "ACCEPT-ENCODING")),
         ("accept-encoding", "accept-language")),
        (h(("Vary", "*")), None),
    ],
)  # fmt: skip
def test_vary_names(headers: list[tuple[bytes, bytes]], expected: object) -> None:
    assert vary_names(headers) == expected


@pytest.mark.parametrize(
    ("cc", "pragma", "expected"),
    [
        ("", None, RequestDirectives()),
        ("", b"no-cache", RequestDirectives(no_cache=True)),
        ("max-age=5", b"no-cache", RequestDirectives(max_age=5)),  # Pragma only without CC
        ("no-store", None, RequestDirectives(no_store=True)),
        ("no-cache", None, RequestDirectives(no_cache=True)),
        ("max-age=0", None, RequestDirectives(no_cache=True, max_age=0)),
        ("only-if-cached", None, RequestDirectives(only_if_cached=True)),
        ("max-stale", None, RequestDirectives(max_stale=2**31)),
        ("max-stale=10, min-fresh=5", None, RequestDirectives(min_fresh=5, max_stale=10)),
        ("max-age=junk", None, RequestDirectives()),
    ],
)
def test_request_directives(cc: str, pragma: bytes | None, expected: RequestDirectives) -> None:
    headers = h(("Cache-Control", cc)) if cc else h()
    assert request_directives(parse_cache_control(headers), pragma) == expected


@pytest.mark.parametrize(
    ("cc", "expected"),
    [
        ("max-age=60", (30.0, 100.0)),
        ("max-age=60, stale-while-revalidate=5, stale-if-error=7", (5.0, 7.0)),
        ("max-age=60, must-revalidate", (0.0, 0.0)),
        ("max-age=60, proxy-revalidate", (0.0, 0.0)),
        ("s-maxage=60", (0.0, 0.0)),  # §5.2.2.10: implies proxy-revalidate
        ("no-cache", (0.0, 0.0)),
        ("max-age=60, stale-while-revalidate=junk", (30.0, 100.0)),
    ],
)
def test_stale_windows(cc: str, expected: tuple[float, float]) -> None:
    assert stale_windows(parse_cache_control(h(("Cache-Control", cc))), 30.0, 100.0) == expected


@pytest.mark.parametrize(
    ("header", "etag", "expected"),
    [
        (b'"a"', b'"a"', True),
        (b'W/"a"', b'"a"', True),  # weak comparison
        (b'"a"', b'W/"a"', True),
        (b'"b", "a"', b'"a"', True),
        (b'"b"', b'"a"', False),
        (b"*", b'"a"', True),
        (b'"a-gzip"', b'"a"', False),
    ],
)
def test_etag_matches(header: bytes, etag: bytes, expected: bool) -> None:
    assert etag_matches(header, etag) is expected


LATER = b"Tue, 14 Nov 2023 23:00:00 GMT"
EARLIER = b"Tue, 14 Nov 2023 20:00:00 GMT"


@pytest.mark.parametrize(
    ("inm", "ims", "etag", "last_modified", "expected"),
    [
        (b'"x"', None, b'"x"', None, True),
        (b'"y"', None, b'"x"', None, False),
        (b'"y"', LATER, b'"x"', LAST, False),  # If-None-Match takes precedence
        (None, LATER, b'"x"', LAST, True),
        (None, LAST, b'"x"', LAST, True),
        (None, EARLIER, b'"x"', LAST, False),
        (None, LATER, b'"x"', None, False),  # nothing to compare: IMS does not apply
        (None, b"garbage", b'"x"', LAST, False),
        (None, None, b'"x"', LAST, False),
        (b'"x"', None, None, None, False),
    ],
)
def test_not_modified(
    inm: bytes | None,
    ims: bytes | None,
    etag: bytes | None,
    last_modified: bytes | None,
    expected: bool,
) -> None:
    assert not_modified(inm, ims, etag, last_modified) is expected


def test_strong_etag_is_a_quoted_content_hash() -> None:
    tag = strong_etag(b"body")
    assert tag.startswith(b'"') and tag.endswith(b'"') and not tag.startswith(b"W/")
    assert tag == strong_etag(b"body") != strong_etag(b"other")


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (b"", b""),
        (b"a=1", b"a=1"),
        (b"b=2&a=1", b"a=1&b=2"),
        (b"a=2&b=1&a=1", b"a=2&a=1&b=1"),  # repeated names keep their order
        (b"&&b=1&", b"b=1"),
    ],
)
def test_canonical_query(query: bytes, expected: bytes) -> None:
    assert canonical_query(query) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/users/1", "/users/1"),
        ("/a{b}", "/a%7Bb%7D"),
        ("/50%", "/50%25"),
        ("/?", "/%3F"),
        ("/a b\nc\x7f", "/a%20b%0Ac%7F"),
        ("/é", "/%C3%A9"),
        ("/\udc80", "/%ED%B2%80"),  # a lone surrogate (a server's surrogateescape) too
        ("a=1&b=|~;", "a=1&b=|~;"),
    ],
)
def test_escape_key_part(text: str, expected: str) -> None:
    assert escape_key_part(text) == expected


def test_key_part_bounds_long_text_without_collisions() -> None:
    long = "/p" * 1000
    part = key_part(long)
    assert len(part) <= 256 and part.startswith("/p/p") and "?" in part
    assert key_part(long + "x") != part
    shaped_like_it = part  # a short text spelled like the bounded form is escaped apart
    assert key_part(shaped_like_it) != part
    assert key_part("/short") == "/short"


def test_the_uri_tag_is_the_one_stored_entries_carry() -> None:
    """Entries stored by earlier releases (a shared Redis during a rolling upgrade) carry
    ``uri:`` + the fingerprint of the four parts: an unsafe request still voids them."""
    parts = ("https", "example.com:8443", "/items/caf%C3%A9", "a=1&b=2")
    assert uri_tag(*parts) == "uri:" + fingerprint([p.encode() for p in parts])
