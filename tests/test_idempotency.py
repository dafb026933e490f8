"""The pure rules behind DedupMiddleware: Idempotency-Key syntax, canonical query, fingerprints."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asgi_perf.dedup._rules import (
    InvalidKey,
    canonical_query,
    decode_record,
    encode_record,
    fingerprint,
    parse_idempotency_key,
    path_matches,
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
