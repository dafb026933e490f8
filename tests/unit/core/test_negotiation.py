"""Accept-Encoding negotiation (RFC 9110 §12.5.3): a table of real and hostile header values."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asgi_perf._core.negotiation import choose_encoding, parse_accept_encoding
from asgi_perf.compression._codecs import available_encodings

ALL = ("zstd", "br", "gzip")

# (Accept-Encoding value, expected coding with server preference zstd > br > gzip)
TABLE: list[tuple[bytes | None, str]] = [
    # absent / empty
    (None, "identity"),
    (b"", "identity"),
    (b"   ", "identity"),
    (b",,,", "identity"),
    # real browsers and tools
    (b"gzip, deflate, br, zstd", "zstd"),  # Chromium >= 123 over HTTPS
    (b"gzip, deflate, br", "br"),  # Firefox, Safari
    (b"gzip, deflate", "gzip"),  # curl --compressed without brotli, Python requests
    (b"gzip", "gzip"),
    (b"deflate", "identity"),  # not offered by the server
    (b"compress", "identity"),
    # q-values decide; ties go to the server's order
    (b"gzip;q=1.0, br;q=0.5", "gzip"),
    (b"br;q=0.9, gzip;q=0.9", "br"),
    (b"gzip;q=0.8, zstd;q=0.8, br;q=0.8", "zstd"),
    (b"zstd;q=0.1, gzip;q=0.2", "gzip"),
    (b"gzip;q=0.001", "gzip"),
    (b"gzip;q=1.000", "gzip"),
    # q=0 excludes (the bug peers had: gzip;q=0 still got gzip)
    (b"gzip;q=0", "identity"),
    (b"gzip;q=0.0, br", "br"),
    (b"zstd;q=0, br;q=0, gzip", "gzip"),
    (b"gzip;q=0.000", "identity"),
    # wildcard
    (b"*", "zstd"),
    (b"*;q=0.5", "zstd"),
    (b"*, zstd;q=0", "br"),
    (b"*;q=0.1, gzip", "gzip"),
    (b"*;q=0", "identity"),
    (b"*;q=0, gzip;q=0.5", "gzip"),
    # identity weighted by the client
    (b"identity", "identity"),
    (b"identity;q=0", "identity"),  # nothing else acceptable: identity anyway
    (b"identity;q=0, gzip", "gzip"),
    (b"identity, gzip", "gzip"),  # a tie: the server may compress
    (b"identity;q=1, gzip;q=0.5", "identity"),  # identity strictly preferred
    (b"gzip;q=0.5, *", "zstd"),
    # case, whitespace, aliases, duplicates
    (b"GZIP", "gzip"),
    (b"Br, GZip", "br"),
    (b"ZSTD;Q=0.5, gzip;q=0.4", "zstd"),
    (b"  gzip ;  q=0.5  ,  br ; q=0.6 ", "br"),
    (b"\tgzip\t", "gzip"),
    (b"x-gzip", "gzip"),
    (b"X-GZIP;q=0.7, br;q=0.6", "gzip"),
    (b"gzip, gzip;q=0", "identity"),  # duplicates keep the lowest weight
    (b"gzip;q=0.2, gzip;q=0.9, br;q=0.5", "br"),
    (b"br,,gzip,", "br"),  # empty list elements are allowed
    # other parameters are ignored
    (b"gzip;level=9", "gzip"),
    (b"br;foo=bar;q=0.3, gzip;q=0.2", "br"),
    # malformed: treated as absent, never an error
    (b"gzip;q=2", "identity"),
    (b"gzip;q=-1", "identity"),
    (b"gzip;q=abc", "identity"),
    (b"gzip;q=", "identity"),
    (b"gzip;q=1.5, br", "identity"),
    (b"gzip;q=nan", "identity"),
    (b"gzip;q", "identity"),
    (b"gz ip", "identity"),
    (b"gzip/1.0", "identity"),
    (b"br;=1", "identity"),
    (b";q=1, gzip", "identity"),
    (b"\xff\xfe", "identity"),
    (b"gzip\x00", "identity"),
    (b'"gzip"', "identity"),
]


def test_table_is_large_enough() -> None:
    assert len(TABLE) >= 30
    assert len({value for value, _ in TABLE}) == len(TABLE)


@pytest.mark.parametrize(("value", "expected"), TABLE)
def test_negotiation_table(value: bytes | None, expected: str) -> None:
    assert choose_encoding(value, ALL) == expected


@pytest.mark.parametrize(
    ("value", "preference", "expected"),
    [
        (b"gzip, deflate, br, zstd", ("gzip",), "gzip"),
        (b"gzip, deflate, br, zstd", ("br", "gzip"), "br"),
        (b"gzip, deflate, br, zstd", ["gzip", "br"], "gzip"),  # any sequence works
        (b"zstd", ("br", "gzip"), "identity"),  # a coding the server lacks is never chosen
        (b"*", ("gzip",), "gzip"),
        (b"br;q=0.9, gzip;q=0.8", ("gzip", "br"), "br"),  # client weight beats server order
        (b"gzip", (), "identity"),
    ],
)
def test_preference_order(value: bytes, preference: tuple[str, ...], expected: str) -> None:
    assert choose_encoding(value, preference) == expected


def test_cache_is_keyed_by_preference() -> None:
    assert choose_encoding(b"br, gzip", ("gzip", "br")) == "gzip"
    assert choose_encoding(b"br, gzip", ("br", "gzip")) == "br"


def test_long_header_is_parsed_not_cached() -> None:
    value = b", ".join([b"deflate"] * 100 + [b"gzip;q=0.5"])
    assert len(value) > 256
    assert choose_encoding(value, ALL) == "gzip"


def test_parse_weights() -> None:
    assert parse_accept_encoding(b"gzip;q=0.5, X-Gzip;q=0.7, *;q=0, br") == {
        "gzip": 0.5,
        "*": 0.0,
        "br": 1.0,
    }
    assert parse_accept_encoding(b"gzip;q=7") is None
    assert parse_accept_encoding(b"") == {}


def test_available_encodings_in_preference_order() -> None:
    found = available_encodings()
    assert found[-1] == "gzip"
    assert list(found) == [c for c in ALL if c in found]
    # brotli and zstandard are installed in the test environment
    assert found == ALL


@given(st.binary(max_size=80))
def test_never_raises_on_arbitrary_bytes(value: bytes) -> None:
    assert choose_encoding(value, ALL) in (*ALL, "identity")


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["gzip", "br", "zstd", "identity", "*", "deflate", "x-gzip"]),
            st.one_of(st.none(), st.integers(0, 1000)),
        ),
        max_size=6,
    )
)
def test_choice_matches_a_reference_model(items: list[tuple[str, int | None]]) -> None:
    """Against a plain restatement of the rules, over generated well-formed headers."""
    parts = [name if q is None else f"{name};q={q / 1000:.3f}" for name, q in items]
    weights: dict[str, float] = {}
    for name, q in items:
        name = "gzip" if name == "x-gzip" else name
        weight = 1.0 if q is None else q / 1000
        weights[name] = min(weights.get(name, weight), weight)
    star = weights.get("*")
    scored = [(weights.get(c, star), -i, c) for i, c in enumerate(ALL)]
    candidates = [(q, order, c) for q, order, c in scored if q is not None and q > 0]
    expected = "identity"
    if candidates:
        best_q, _, best = max(candidates)
        identity_q = weights.get("identity", star)
        expected = best if identity_q is None or identity_q <= best_q else "identity"
    assert choose_encoding(", ".join(parts).encode(), ALL) == expected
