"""RFC 9111 rules of the cache, one table per rule (asgi_perf.cache_rules)."""

from __future__ import annotations

import pytest

from asgi_perf._core.http import canonical_query
from asgi_perf.cache._rules import (
    CACHEABLE_STATUSES,
    RequestDirectives,
    current_age,
    delta_seconds,
    escape_key_part,
    etag_matches,
    freshness_lifetime,
    initial_age,
    key_part,
    not_modified,
    parse_cache_control,
    parse_http_date,
    request_directives,
    satisfies,
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
        (b"Tuesday, 14-Nov-23 22:13:20 GMT", NOW),  # RFC 850
        (b"Tue Nov 14 22:13:20 2023", NOW),  # asctime
        (b"not a date", None),
        (b"", None),
    ],
)
def test_parse_http_date(value: bytes, expected: float | None) -> None:
    assert parse_http_date(value) == expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (h(("Cache-Control", "s-maxage=10, max-age=60")), 10.0),  # s-maxage wins
        (h(("Cache-Control", "max-age=60"), ("Expires", PLUS_60.decode())), 60.0),
        (h(("Date", DATE.decode()), ("Expires", PLUS_60.decode())), 60.0),  # Expires - Date
        (h(("Expires", PLUS_60.decode())), 60.0),  # no Date: now
        (h(("Expires", "0")), 0.0),  # invalid Expires: already expired (§5.3)
        (h(("Cache-Control", "max-age=abc")), 0.0),  # invalid max-age: stale
        (h(("Cache-Control", "public")), 300.0),  # nothing said: the configured ttl
        (h(), 300.0),
    ],
)
def test_freshness_lifetime(headers: list[tuple[bytes, bytes]], expected: float) -> None:
    cc = parse_cache_control(headers)
    assert freshness_lifetime(cc, headers, 300.0, NOW) == expected


@pytest.mark.parametrize(
    ("headers", "response_time", "expected"),
    [
        (h(), NOW, 0.0),
        (h(("Age", "30")), NOW, 30.0),
        (h(("Date", DATE.decode())), NOW + 5, 5.0),  # apparent age
        (h(("Date", DATE.decode()), ("Age", "2")), NOW + 5, 5.0),  # the larger
        (h(("Age", "junk")), NOW, 0.0),
        (h(("Date", PLUS_60.decode())), NOW, 0.0),  # clock skew: never negative
    ],
)
def test_initial_age(
    headers: list[tuple[bytes, bytes]], response_time: float, expected: float
) -> None:
    assert initial_age(headers, response_time) == expected


def test_current_age_adds_resident_time() -> None:
    assert current_age(5.0, NOW, NOW + 10) == 15.0
    assert current_age(5.0, NOW, NOW - 10) == 5.0


@pytest.mark.parametrize(
    ("status", "headers", "credentials", "authenticated", "reason"),
    [
        (200, h(), False, False, None),
        (404, h(), False, False, None),
        (301, h(), False, False, None),
        (204, h(), False, False, None),
        (410, h(), False, False, None),
        (501, h(), False, False, None),
        (429, h(), False, False, "status"),
        (500, h(), False, False, "status"),
        (206, h(), False, False, "status"),
        (302, h(), False, False, "status"),
        (304, h(), False, False, "status"),
        (200, h(("Cache-Control", "no-store")), False, False, "no-store"),
        (200, h(("Cache-Control", "private, max-age=60")), False, False, "private"),
        (200, h(("Cache-Control", 'private="x"')), False, False, "private"),
        (200, h(("Cache-Control", "no-cache")), False, False, "no-cache"),
        (200, h(("Set-Cookie", "s=1")), False, False, "set-cookie"),
        (200, h(("Set-Cookie", "s=1"), ("Cache-Control", "public")), False, False, "set-cookie"),
        (200, h(("Vary", "Accept, *")), False, False, "vary-star"),
        (200, h(("Vary", "Accept-Encoding")), False, False, None),
        (200, h(), True, False, "credentials"),
        (200, h(("Cache-Control", "s-maxage=60")), True, False, "credentials"),
        (200, h(("Cache-Control", "public, max-age=60")), True, False, None),
        (200, h(), True, True, None),  # identity is in the key
    ],
)
def test_storable(
    status: int,
    headers: list[tuple[bytes, bytes]],
    credentials: bool,
    authenticated: bool,
    reason: str | None,
) -> None:
    cc = parse_cache_control(headers)
    got = storable(status, cc, headers, credentials=credentials, cache_authenticated=authenticated)
    assert got == reason


def test_cacheable_statuses_never_include_429() -> None:
    assert 429 not in CACHEABLE_STATUSES and 200 in CACHEABLE_STATUSES


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
    ("age", "lifetime", "directives", "expected"),
    [
        (10, 60, RequestDirectives(), True),
        (60, 60, RequestDirectives(), False),  # fresh means age < lifetime
        (70, 60, RequestDirectives(), False),
        (10, 60, RequestDirectives(no_cache=True), False),
        (10, 60, RequestDirectives(max_age=5), False),
        (10, 60, RequestDirectives(max_age=10), True),
        (50, 60, RequestDirectives(min_fresh=20), False),
        (70, 60, RequestDirectives(max_stale=20), True),
        (90, 60, RequestDirectives(max_stale=20), False),
    ],
)
def test_satisfies(
    age: float, lifetime: float, directives: RequestDirectives, expected: bool
) -> None:
    assert satisfies(age, lifetime, directives) is expected


@pytest.mark.parametrize(
    ("cc", "expected"),
    [
        ("max-age=60", (30.0, 100.0)),
        ("max-age=60, stale-while-revalidate=5, stale-if-error=7", (5.0, 7.0)),
        ("max-age=60, must-revalidate", (0.0, 0.0)),
        ("max-age=60, proxy-revalidate", (0.0, 0.0)),
        ("s-maxage=60", (0.0, 0.0)),  # §5.2.2.10: implies proxy-revalidate
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


LAST = b"Tue, 14 Nov 2023 22:13:20 GMT"
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
        (None, LATER, b'"x"', None, False),  # no Last-Modified: IMS does not apply
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
