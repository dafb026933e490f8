"""The cache's pure parts by tables: the decision per request (asgi_perf.cache._decide), how
an entry is built and freshened (._entry), and the keys, ranges and Cache-Status fields."""

from __future__ import annotations

import pytest

from asgi_perf.cache._decide import Action, decide, stale_on_error
from asgi_perf.cache._entry import (
    NO_CACHE,
    NO_STALE,
    OWN_ETAG,
    SHARED,
    Entry,
    EntryPolicy,
    build_entry,
    merge_not_modified,
)
from asgi_perf.cache._keys import path_matcher, same_origin_target, vary_value
from asgi_perf.cache._rules import RequestDirectives as R
from asgi_perf.cache._serve import CacheStatus, byte_range

NOW = 1_700_000_000.0
DATE = b"Tue, 14 Nov 2023 22:13:20 GMT"
LM = b"Mon, 13 Nov 2023 22:13:20 GMT"


def entry(
    age: float = 0.0,
    lifetime: float = 60.0,
    swr: float = 0.0,
    sie: float = 0.0,
    flags: int = 0,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> Entry:
    """An entry ``age`` seconds old now (it arrived with that age at NOW)."""
    headers = [(b"etag", b'"a"')] if headers is None else headers
    return Entry(200, headers, b"body", NOW, lifetime, age, swr, sie, flags)


VALIDATED = OWN_ETAG  # an entry that can be revalidated with the app


@pytest.mark.parametrize(
    ("stored", "directives", "expected"),
    [
        (None, R(), Action.FILL),
        (None, R(only_if_cached=True), Action.UNAVAILABLE),
        (entry(10), R(), Action.SERVE),
        (entry(60), R(), Action.FILL),  # fresh means age < lifetime; nothing to validate with
        (entry(60, flags=VALIDATED), R(), Action.REVALIDATE),
        (entry(10, flags=VALIDATED | NO_CACHE), R(), Action.REVALIDATE),  # §5.2.2.4
        (entry(10, flags=NO_CACHE), R(), Action.FILL),
        (entry(10, flags=VALIDATED), R(no_cache=True), Action.REVALIDATE),  # §5.2.1.4
        (entry(10), R(max_age=5), Action.FILL),
        (entry(10), R(max_age=10), Action.SERVE),
        (entry(50), R(min_fresh=20), Action.FILL),
        (entry(30), R(min_fresh=20), Action.SERVE),
        (entry(70), R(max_stale=20), Action.SERVE_STALE),
        (entry(70), R(max_stale=5), Action.FILL),
        (entry(70, flags=NO_STALE), R(max_stale=20), Action.FILL),  # must-revalidate
        (entry(70), R(max_stale=20, min_fresh=1), Action.FILL),
        (entry(70, swr=30), R(), Action.REFRESH),
        (entry(100, swr=30, flags=VALIDATED), R(), Action.REVALIDATE),  # past the window
        (entry(70, swr=30), R(max_age=100), Action.FILL),  # the client set its own bounds
        (entry(70, swr=30), R(only_if_cached=True), Action.REFRESH),
        (entry(70), R(only_if_cached=True), Action.UNAVAILABLE),
        (entry(10), R(only_if_cached=True), Action.SERVE),
        (entry(10, flags=VALIDATED), R(no_cache=True, only_if_cached=True), Action.UNAVAILABLE),
        (entry(10, headers=[(b"last-modified", LM)]), R(no_cache=True), Action.REVALIDATE),
    ],
)
def test_decide(stored: Entry | None, directives: R, expected: Action) -> None:
    assert decide(stored, directives, NOW) is expected


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        (None, False),
        (entry(70, sie=30), True),
        (entry(100, sie=30), False),
        (entry(70, sie=30, flags=NO_STALE), False),
        (entry(10), True),  # still fresh: better than an error
    ],
)
def test_stale_on_error(stored: Entry | None, expected: bool) -> None:
    assert stale_on_error(stored, NOW) is expected


POLICY = EntryPolicy(targeted=(b"cdn-cache-control",), stale_if_error=300.0)


def test_build_entry_keeps_what_a_shared_cache_may_store() -> None:
    headers = [
        (b"cache-control", b"max-age=60"),
        (b"connection", b"close, x-secret"),
        (b"x-secret", b"hop"),
        (b"server-timing", b"db;dur=3"),
        (b"cache-tag", b"t"),
        (b"age", b"5"),
        (b"content-type", b"text/plain"),
    ]
    made = build_entry(200, headers, b"hello", NOW - 1, NOW, POLICY)
    assert isinstance(made, Entry)
    names = [name for name, _ in made.headers]
    assert names == [b"cache-control", b"content-type", b"etag", b"content-length"]
    assert (made.lifetime, made.initial, made.sie, made.flags) == (60.0, 6.0, 300.0, 0)
    assert made.etag is not None and not made.revalidatable  # its own hash is no validator
    decoded = Entry.decode(made.encode())
    assert decoded is not None and decoded.headers == made.headers and decoded.body == b"hello"
    assert Entry.decode(b"junk") is None


@pytest.mark.parametrize(
    ("cc", "flags"),
    [
        (b"max-age=60", 0),
        (b"public, max-age=60", SHARED),
        (b"s-maxage=60", SHARED | NO_STALE),
        (b"max-age=60, must-revalidate", SHARED | NO_STALE),
        (b"max-age=60, proxy-revalidate", NO_STALE),
        (b"no-cache", NO_CACHE | NO_STALE),
    ],
)
def test_build_entry_flags(cc: bytes, flags: int) -> None:
    made = build_entry(200, [(b"cache-control", cc), (b"etag", b'"v"')], b"", NOW, NOW, POLICY)
    assert isinstance(made, Entry) and made.flags == flags | OWN_ETAG and made.revalidatable


def test_build_entry_reasons() -> None:
    assert build_entry(200, [], b"", NOW, NOW, POLICY) == "lifetime"
    private = [(b"cache-control", b"private, max-age=60")]
    assert build_entry(200, private, b"", NOW, NOW, POLICY) == "private"
    cdn = [(b"cache-control", b"no-store"), (b"cdn-cache-control", b"max-age=60")]
    assert isinstance(build_entry(200, cdn, b"", NOW, NOW, POLICY), Entry)
    opted_in = POLICY._replace(default_ttl=30.0)
    made = build_entry(404, [], b"", NOW, NOW, opted_in)
    assert isinstance(made, Entry) and made.lifetime == 30.0


def test_merge_not_modified_updates_all_but_length_and_coding() -> None:
    stored = [
        (b"content-type", b"text/plain"),
        (b"x-a", b"1"),
        (b"x-a", b"2"),
        (b"content-length", b"4"),
        (b"content-encoding", b"gzip"),
        (b"cache-control", b"max-age=1"),
    ]
    update = [
        (b"x-a", b"3"),
        (b"cache-control", b"max-age=3600"),
        (b"content-length", b"0"),
        (b"content-encoding", b"br"),
        (b"server-timing", b"app;dur=1"),
        (b"date", DATE),
    ]
    merged = merge_not_modified(stored, update, frozenset({b"age"}))
    assert merged == [
        (b"content-type", b"text/plain"),
        (b"content-length", b"4"),
        (b"content-encoding", b"gzip"),
        (b"x-a", b"3"),
        (b"cache-control", b"max-age=3600"),
        (b"date", DATE),
    ]


@pytest.mark.parametrize(
    ("name", "values", "expected"),
    [
        ("foo", [b"1,2"], b"1,2"),
        ("foo", [b" 1, 2 "], b"1,2"),
        ("foo", [b"1", b"2"], b"1,2"),  # lines combine
        ("foo", [b"1, 2"], b"1,2"),
        ("foo", [b"B, a"], b"B,a"),  # order and case matter in general
        ("accept-language", [b"en, de"], b"de,en"),
        ("accept-language", [b"De,eN"], b"de,en"),
        ("accept-language", [b" en ,   de"], b"de,en"),
        ("foo", [], b""),
    ],
)
def test_vary_value(name: str, values: list[bytes], expected: bytes) -> None:
    assert vary_value(name, values) == expected


@pytest.mark.parametrize(
    ("patterns", "path", "expected"),
    [
        (["/about"], "/about", True),
        (["/about"], "/about/x", False),
        (["/items/{id}"], "/items/7", True),
        (["/items/{id}"], "/items/7/edit", False),
        (["/items/{id}/edit"], "/items/7/edit", True),
        (["/static/*"], "/static/css/a.css", True),
        (["/static/*"], "/stat", False),
        (["/a.b"], "/axb", False),  # literal dots
        (["/x", "/y/{n}"], "/y/1", True),
    ],
)
def test_path_matcher(patterns: list[str], path: str, expected: bool) -> None:
    matcher = path_matcher(patterns)
    assert matcher is not None and bool(matcher.fullmatch(path)) is expected
    assert path_matcher([]) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"/things/2", ("/things/2", "")),
        (b"/things/2?x=1", ("/things/2", "x=1")),
        (b"http://example.com/things/2", ("/things/2", "")),
        (b"HTTP://EXAMPLE.COM/t", ("/t", "")),
        (b"https://example.com/things/2", None),  # another scheme: another origin
        (b"http://evil.example/things/2", None),
        (b"other", ("/things/other", "")),  # relative to the request
        (b"/caf\xc3\xa9", ("/caf\xc3\xa9", "")),  # the bytes as sent, like raw_path
        (b"", ("/things/1", "")),
    ],
)
def test_same_origin_target(value: bytes, expected: tuple[str, str] | None) -> None:
    assert same_origin_target(value, "http", "example.com", "/things/1") == expected


@pytest.mark.parametrize(
    ("spec", "size", "expected"),
    [
        (b"bytes=0-1", 10, (0, 1)),
        (b"bytes=5-", 10, (5, 9)),
        (b"bytes=-3", 10, (7, 9)),
        (b"bytes=-30", 10, (0, 9)),
        (b"bytes=8-100", 10, (8, 9)),
        (b"bytes=10-", 10, None),  # unsatisfiable: the app answers 416
        (b"bytes=-0", 10, None),
        (b"bytes=3-1", 10, None),
        (b"bytes=0-1,3-4", 10, None),  # several ranges: the app's business
        (b"items=0-1", 10, None),
        (b"bytes=0-1", 0, None),
    ],
)
def test_byte_range(spec: bytes, size: int, expected: tuple[int, int] | None) -> None:
    assert byte_range(spec, size) == expected


def test_cache_status_fields() -> None:
    status = CacheStatus("asgi-perf", with_key=False)
    assert status.hit(12.7) == (b"cache-status", b"asgi-perf; hit; ttl=12")
    assert status.forward("uri-miss", 200, stored=True) == (
        b"cache-status",
        b"asgi-perf; fwd=uri-miss; fwd-status=200; stored",
    )
    assert (
        status.forward("stale", 503, ttl=-5.2)[1] == b"asgi-perf; fwd=stale; fwd-status=503; ttl=-5"
    )
    assert status.forward("uri-miss", 200, collapsed=True)[1].endswith(b"; collapsed")
    # what a fill reads first: the fields made for (reason, status, stored) alone
    assert status.forwarded == {
        ("uri-miss", 200, True): (
            b"cache-status",
            b"asgi-perf; fwd=uri-miss; fwd-status=200; stored",
        )
    }
    keyed = CacheStatus('edge "1"', with_key=True)
    assert keyed.forward("uri-miss", 200, key="e:a")[1].endswith(b'; key="e:a"')
    assert keyed.forward("uri-miss", 200, key="e:b")[1].endswith(b'; key="e:b"')
    assert keyed.forward("uri-miss", 200)[1].endswith(b"fwd-status=200")
    assert keyed.forwarded == {}  # a field with a key is this request's own
    assert keyed.hit(1, 'e:{/a}"b') == (
        b"cache-status",
        b'"edge \\"1\\""; hit; ttl=1; key="e:{/a}\\"b"',
    )
