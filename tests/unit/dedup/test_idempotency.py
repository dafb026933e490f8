"""The pure rules behind DedupMiddleware: Idempotency-Key syntax, canonical query, fingerprints,
which responses are replayed and with which fields."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asgi_perf._core.http import PER_EXCHANGE
from asgi_perf.dedup._rules import (
    InvalidKey,
    canonical_query,
    decode_record,
    encode_record,
    fingerprint,
    parse_idempotency_key,
    path_matches,
    replayable,
)

VALID_KEYS = [
    # (field value, key) -- RFC 8941 sf-string (draft §2) or a bare token
    (b'"8e03978e-40d5-43e8-bc93-6894a57f9324"', "8e03978e-40d5-43e8-bc93-6894a57f9324"),
    (b"8e03978e-40d5-43e8-bc93-6894a57f9324", "8e03978e-40d5-43e8-bc93-6894a57f9324"),
    (b'"with space"', "with space"),
    (b'"esc \\"q\\" \\\\ b"', 'esc "q" \\ b'),
    (b'  "padded"  ', "padded"),
    (b"\tbare\t", "bare"),
    (b'"' + b"k" * 255 + b'"', "k" * 255),
    (b"k" * 255, "k" * 255),
    (b"a:b/c*d", "a:b/c*d"),
]

INVALID_KEYS = [
    (b'""', "empty"),
    (b"", "empty bare"),
    (b'"' + b"k" * 256 + b'"', "256 chars quoted"),
    (b"k" * 256, "256 chars bare"),
    (b'"unterminated', "unterminated"),
    (b'"a" trailing', "trailing after quote"),
    (b'"a", "b"', "a list"),
    (b'"bad \\n escape"', 'escape other than \\" and \\\\'),
    (b'"tab\tinside"', "control char"),
    (b"bare space", "space in bare"),
    (b"a,b", "comma in bare"),
    (b"a;p=1", "parameters"),
    (b'"caf\xc3\xa9"', "non-ascii"),
    (b"\x00", "NUL"),
]


@pytest.mark.parametrize(("raw", "key"), VALID_KEYS)
def test_valid_keys(raw: bytes, key: str) -> None:
    assert parse_idempotency_key([raw]) == key


@pytest.mark.parametrize(("raw", "why"), INVALID_KEYS)
def test_invalid_keys(raw: bytes, why: str) -> None:
    with pytest.raises(InvalidKey):
        parse_idempotency_key([raw])


def test_several_fields_are_rejected() -> None:
    with pytest.raises(InvalidKey):
        parse_idempotency_key([b'"a"', b'"a"'])


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        (b"a=1&b=2", b"b=2&a=1", True),
        (b"a=1&b=2&c=3", b"c=3&a=1&b=2", True),
        (b"a=1&&b=2", b"b=2&a=1", True),  # empty parameters carry nothing
        (b"a=1&a=2", b"a=2&a=1", False),  # a list: its order may matter to the app
        (b"a=1&b=2", b"a=1&b=3", False),
        (b"a=%41", b"a=A", False),  # bytes as sent: never merged on a guess
        (b"", b"", True),
        (b"x", b"x", True),
        (b"flag&a=1", b"a=1&flag", True),
    ],
)
def test_canonical_query(a: bytes, b: bytes, same: bool) -> None:
    assert (canonical_query(a) == canonical_query(b)) is same


@given(st.lists(st.sampled_from([b"a=1", b"b=2", b"c=", b"d", b"e=x%20y"]), unique=True))
def test_canonical_query_ignores_order_of_distinct_names(params: list[bytes]) -> None:
    expected = canonical_query(b"&".join(params))
    for perm in itertools.islice(itertools.permutations(params), 24):
        assert canonical_query(b"&".join(perm)) == expected


def test_fingerprint_parts_cannot_collide_by_concatenation() -> None:
    assert fingerprint([b"ab", b"c"]) != fingerprint([b"a", b"bc"])
    assert fingerprint([b"a", b""]) != fingerprint([b"a"])
    assert fingerprint([b"x"]) == fingerprint([b"x"])
    assert fingerprint([b'a"', b"b"]) != fingerprint([b"a", b'"b'])
    assert fingerprint([b"a"], b"body") != fingerprint([b"a", b"body"])
    assert fingerprint([b"a"], b"") == fingerprint([b"a"])
    # a NUL inside a part cannot move a boundary: ("a\0b", "c") vs ("a", "b\0c")
    assert fingerprint([b"a\0b", b"c"]) != fingerprint([b"a", b"b\0c"])
    assert fingerprint([b"a\0", b"b"]) != fingerprint([b"a", b"\0b"])
    assert fingerprint([b"a", b"b"]) != fingerprint([b"a\0b"])
    assert len(fingerprint([b"x"])) == 32


# Requests that a concatenating encoding merges: bytes moved across the boundary between
# two parts, or between the last part and the body (the dedup fingerprint's last header and
# the body; the Idempotency-Key payload's "truncated" marker and the body).
COLLIDING = [
    (([b"POST", b"/p", b"s=ab"], b"cd"), ([b"POST", b"/p", b"s=abc"], b"d")),
    (([b"POST", b"/p", b"truncated"], b"x"), ([b"POST", b"/p", b""], b"truncatedx")),
    (([b"a"], b"\0b"), ([b"a", b"b"], b"")),
    (([b"a", b""], b"b"), ([b"a"], b"\0b")),
    (([b"ab", b"c"], b""), ([b"a", b"bc"], b"")),
    (([b"a\0b"], b"c"), ([b"a", b"b"], b"c")),
    (([b"a"], b"bc"), ([b"ab"], b"c")),
    (([], b"a"), ([b"a"], b"")),
]


@pytest.mark.parametrize(("one", "other"), COLLIDING)
def test_fingerprint_is_injective_across_every_boundary(
    one: tuple[list[bytes], bytes], other: tuple[list[bytes], bytes]
) -> None:
    assert fingerprint(*one) != fingerprint(*other)
    assert fingerprint(*one) == fingerprint(list(one[0]), bytes(one[1]))


RAW_PAIRS = [
    ([b"ab", b"c"], [b"a", b"bc"]),
    ([b"a", b""], [b"a"]),
    ([b"a\0b", b"c"], [b"a", b"b\0c"]),
    ([b"a\0", b"b"], [b"a", b"\0b"]),
    ([b"\xff", b"x"], [b"\xc3\xbf", b"x"]),  # latin-1 text keeps every byte distinct
]


@pytest.mark.parametrize(("one", "other"), RAW_PAIRS)
def test_raw_keys_are_injective(one: list[bytes], other: list[bytes]) -> None:
    assert fingerprint(one, raw=True) != fingerprint(other, raw=True)
    assert fingerprint(one, raw=True) == fingerprint(list(one), raw=True)


@given(st.lists(st.binary(max_size=6), max_size=4), st.binary(max_size=4))
def test_raw_key_never_equals_a_digest(parts: list[bytes], body: bytes) -> None:
    raw = fingerprint(parts, body, raw=True)
    digest = fingerprint(parts, body)
    if body:  # a body is always hashed: the key stays small whatever the body's size
        assert raw == digest
    else:
        assert raw != digest and raw[0] in "jr" and len(digest) == 32
        assert all(c in "0123456789abcdef" for c in digest)


@pytest.mark.parametrize(
    ("path", "patterns", "matches"),
    [
        ("/payments", ["/payments"], True),
        ("/payments/1", ["/payments"], False),
        ("/payments/1", ["/payments/*"], True),
        ("/pay", ["/payments*"], False),
        ("/orders", ["/payments/*", "/orders"], True),
        ("/orders", [], False),
    ],
)
def test_path_matches(path: str, patterns: list[str], matches: bool) -> None:
    assert path_matches(path, patterns) is matches


def test_record_round_trip() -> None:
    payload = fingerprint([b"p"])
    assert decode_record(encode_record(payload, b"resp")) == (payload, b"resp")
    assert decode_record(encode_record(payload, None)) == (payload, None)
    assert decode_record(encode_record(payload, b"")) == (payload, b"")
    assert decode_record(b"garbage") is None


HELD = frozenset({b"accept", b"accept-encoding", b"authorization", b"cookie", b"host"})
CT = (b"content-type", b"text/plain")

REPLAYABLE = [
    # (response fields, the identity is a user key, fields a replay carries or None)
    ([CT], False, [CT]),
    ([CT, (b"Set-Cookie", b"s=1")], True, None),
    ([CT, (b"cache-control", b"no-store")], True, None),
    ([CT, (b"Cache-Control", b"max-age=0, No-Store")], True, None),
    ([CT, (b"cache-control", b"private")], False, None),  # an address is no identity
    (
        [CT, (b"cache-control", b"private, max-age=60")],
        True,
        [CT, (b"cache-control", b"private, max-age=60")],
    ),
    ([CT, (b"cache-control", b'private="x-account"')], False, None),
    (
        [CT, (b"cache-control", b"public, max-age=60")],
        False,
        [CT, (b"cache-control", b"public, max-age=60")],
    ),
    ([CT, (b"vary", b"Accept-Encoding")], False, [CT, (b"vary", b"Accept-Encoding")]),
    (
        [CT, (b"vary", b"accept, Cookie"), (b"Vary", b"host")],
        False,
        [CT, (b"vary", b"accept, Cookie"), (b"Vary", b"host")],
    ),
    ([CT, (b"vary", b"X-API-Key")], True, None),  # a field the fingerprint does not hold
    ([CT, (b"vary", b"accept"), (b"vary", b"origin")], False, None),
    ([CT, (b"vary", b"*")], True, None),
    ([CT, (b"vary", b"")], False, [CT, (b"vary", b"")]),
    # per-exchange fields of other layers are dropped, whatever their spelling
    (
        [CT, (b"X-Cache", b"MISS"), (b"server-timing", b"db;dur=5"), (b"x-query-count", b"9")],
        False,
        [CT],
    ),
    ([(b"ratelimit", b"x"), (b"x-dedup", b"hit"), (b"connection", b"close"), CT], False, [CT]),
    # kept fields on both sides of a dropped one, in their order
    (
        [CT, (b"x-cache", b"MISS"), (b"etag", b'"1"'), (b"Server-Timing", b"x"), (b"x-a", b"1")],
        False,
        [CT, (b"etag", b'"1"'), (b"x-a", b"1")],
    ),
    # refused after a dropped field, and a tuple of fields (a new list back)
    ([CT, (b"x-cache", b"MISS"), (b"cache-control", b"no-store")], False, None),
    (
        ((b"x-a", b"1"), CT, (b"x-dedup", b"hit"), (b"x-b", b"2")),
        False,
        [(b"x-a", b"1"), CT, (b"x-b", b"2")],
    ),
    (((b"x-a", b"1"), CT), False, [(b"x-a", b"1"), CT]),
]


@pytest.mark.parametrize(("headers", "user", "expected"), REPLAYABLE)
def test_replayable(
    headers: list[tuple[bytes, bytes]], user: bool, expected: list[tuple[bytes, bytes]] | None
) -> None:
    for _ in range(2):  # the second time from the remembered names and Cache-Control verdicts
        kept = replayable(headers, HELD, user)
        assert kept == expected
        assert kept is None or (type(kept) is list and kept is not headers)
        assert replayable(iter(headers), HELD, user) == expected  # any iterable of fields


def test_replayable_drops_every_per_exchange_field() -> None:
    fields = [(name, b"1") for name in sorted(PER_EXCHANGE)]
    assert replayable([*fields, CT], HELD, False) == [CT]
    assert replayable([*((n.upper(), v) for n, v in fields), CT], HELD, False) == [CT]
