"""RFC 9842 dictionaries in CompressionMiddleware, in process: the pure rules by tables, every
``dcz`` body decoded independently (the ``zstandard`` library with the raw dictionary), the
protocol rules of spec/dictionary.md, and everything of compression.md that still holds."""

from __future__ import annotations

import base64
import hashlib
import itertools
import logging
from collections.abc import Sequence
from typing import Any

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asgi_perf._core.config import ConfigError
from asgi_perf.compression import CompressionMiddleware
from asgi_perf.compression._codecs import (
    DCZ_HEADER_MAGIC,
    ZstdDictionary,
    dictionary_encodings,
)
from asgi_perf.compression._dictionary_rules import (
    compile_match,
    parse_available_dictionary,
    parse_rules,
    parse_sf_string,
    sf_string,
)
from asgi_perf.stores import MemoryStore, StoreUnavailable
from tests.apps.versions import version
from tests.support import Response, call

AE = "gzip, deflate, br, zstd, dcb, dcz"


def available(content: bytes) -> str:
    return ":" + base64.b64encode(hashlib.sha256(content).digest()).decode() + ":"


def undcz(body: bytes, dictionary: bytes) -> bytes:
    """Decode a dcz body independently: check the 40-byte header, then zstd with the raw
    dictionary, the window within RFC 9842's limit."""
    assert body[:8] == DCZ_HEADER_MAGIC, body[:8]
    assert body[8:40] == hashlib.sha256(dictionary).digest()
    frame = body[40:]
    window = zstandard.get_frame_parameters(frame).window_size
    assert window <= max(8 * 1024 * 1024, len(dictionary) * 5 // 4), window
    raw = zstandard.ZstdCompressionDict(dictionary, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    out = zstandard.ZstdDecompressor(dict_data=raw).decompressobj().decompress(frame)
    return bytes(out)


def make_app(
    bodies: dict[str, bytes | Sequence[bytes]] | None = None,
    headers: Sequence[tuple[bytes, bytes]] = ((b"cache-control", b"max-age=60"),),
    content_type: bytes = b"application/json",
    status: int = 200,
) -> Any:
    """``/api/items/<n>`` answers ``version(n)``; ``bodies`` overrides by path (list: streamed)."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        path = scope["path"]
        body = bodies[path] if bodies and path in bodies else version(int(path.rsplit("/")[-1]))
        out = [(b"content-type", content_type), *headers]
        if isinstance(body, bytes):
            out.append((b"content-length", b"%d" % len(body)))
            await send({"type": "http.response.start", "status": status, "headers": out})
            await send({"type": "http.response.body", "body": body})
            return
        await send({"type": "http.response.start", "status": status, "headers": out})
        for chunk in body:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return app


def middleware(app: Any = None, **options: Any) -> CompressionMiddleware:
    options.setdefault("dictionaries", "/api/items/*")
    return CompressionMiddleware(app or make_app(), **options)


async def get(
    mw: Any, path: str, dictionary: bytes | None = None, *extra: tuple[str, str], ae: str = AE
) -> Response:
    headers = [("accept-encoding", ae), *extra]
    if dictionary is not None:
        headers.append(("available-dictionary", available(dictionary)))
    return await call(mw, "GET", path, headers=headers)


# -- pure rules --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("/api/items*", "/api/items", True),
        ("/api/items*", "/api/items/3/x", True),
        ("/api/items*", "/api/item", False),
        ("/api/items/*", "/api/items", False),
        ("/app/*/main.js", "/app/v2/main.js", True),
        ("/app/*/main.js", "/app/v2/x/main.js", True),
        ("/app/*/main.js", "/app/v2/main.jsx", False),
        ("/u/:id/feed", "/u/42/feed", True),
        ("/u/:id/feed", "/u/4/2/feed", False),
        ("/a.b", "/aXb", False),
        ("/exact", "/exact", True),
        ("/exact", "/exact/", False),
    ],
)
def test_match_patterns(pattern: str, path: str, matches: bool) -> None:
    regex = compile_match(pattern)
    assert regex is not None
    assert (regex.fullmatch(path) is not None) == matches


@pytest.mark.parametrize(
    "pattern",
    ["api/x", "/x(\\d+)", "/x?y=1", "/x#h", "/:id*", "/a**", "/{a}", "/x+", "/:", "/a b",
     "https://other.example/x", '/q"', "/é"],
)  # fmt: skip
def test_unsupported_patterns_are_refused(pattern: str) -> None:
    assert compile_match(pattern) is None
    with pytest.raises(ConfigError, match="dictionaries"):
        parse_rules(pattern, "dictionaries")


@pytest.mark.parametrize(
    ("value", "digest"),
    [
        (b":" + base64.b64encode(b"\x01" * 32) + b":", b"\x01" * 32),
        (b"  :" + base64.b64encode(b"\x02" * 32).rstrip(b"=") + b":  ", b"\x02" * 32),  # no pad
        (b":" + base64.b64encode(b"\x01" * 31) + b":", None),  # not a SHA-256
        (base64.b64encode(b"\x01" * 32), None),  # not a Byte Sequence
        (b":not base64!:", None),
        (b"::", None),
        (b":", None),
        (b"", None),
        (b'"' + base64.b64encode(b"\x01" * 32) + b'"', None),
    ],
)
def test_available_dictionary_parsing(value: bytes, digest: bytes | None) -> None:
    assert parse_available_dictionary(value) == digest


@pytest.mark.parametrize(
    ("value", "text"),
    [(b'"abc"', "abc"), (b'"a\\"b\\\\c"', 'a"b\\c'), (b'"a\\nb"', None), (b"abc", None),
     (b'"a', None), (b'"\x01"', None), (b'"\\"', None), (b'""', "")],
)  # fmt: skip
def test_sf_string_parsing(value: bytes, text: str | None) -> None:
    assert parse_sf_string(value) == text
    if text is not None:
        assert parse_sf_string(sf_string(text)) == text


def test_rules_from_strings_and_mappings() -> None:
    rules = parse_rules(
        "/api/items*, /app/*/main.js;id=main v1;match-dest=script|worker", "dictionaries"
    )
    assert [r.match for r in rules] == ["/api/items*", "/app/*/main.js"]
    assert rules[0].header == b'match="/api/items*"'
    assert (
        rules[1].header == b'match="/app/*/main.js", match-dest=("script" "worker"), id="main v1"'
    )
    assert rules[0].vary == (b"Accept-Encoding", b"Available-Dictionary")
    assert rules[1].vary == (b"Accept-Encoding", b"Available-Dictionary", b"Dictionary-ID")
    mapped = parse_rules([{"match": "/x/*", "match_dest": ["document"], "id": 'q"'}], "d")
    assert mapped[0].header == b'match="/x/*", match-dest=("document"), id="q\\""'
    assert parse_rules("", "d") == () and parse_rules([], "d") == ()


@pytest.mark.parametrize(
    "value",
    ["/x;idd=1", "/x;match-dest=Doc", "/x;id=" + "a" * 1025, [{"match": "/x", "color": 1}], [3],
     [{"match": 3}], 42, "/x;id=caf\u00e9"],
)  # fmt: skip
def test_bad_rules_name_the_option(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        CompressionMiddleware(make_app(), dictionaries=value)
    assert info.value.name == "dictionaries"


@pytest.mark.parametrize(
    ("option", "value"),
    [("dictionary_max_count", 0), ("dictionary_ttl", "0s"), ("dictionary_ttl", "soon"),
     ("dictionary_max_size", "big"), ("storage", "ftp://x"), ("key_prefix", 3)],
)  # fmt: skip
def test_bad_dictionary_options_name_the_option(option: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        middleware(**{option: value})
    assert info.value.name == option


def test_env_configures_dictionaries() -> None:
    env = {
        "ASGI_PERF_COMPRESSION_DICTIONARIES": "/api/items/*;id=items",
        "ASGI_PERF_COMPRESSION_DICTIONARY_MAX_COUNT": "7",
        "ASGI_PERF_COMPRESSION_DICTIONARY_MAX_SIZE": "64KiB",
        "ASGI_PERF_COMPRESSION_DICTIONARY_TTL": "10m",
    }
    mw = CompressionMiddleware.from_env(make_app(), environ=env)
    assert mw.dictionaries is not None
    assert mw.dictionaries.rules[0].id == "items"
    assert (mw.dictionaries.max_size, mw.dictionaries.ttl) == (64 * 1024, 600.0)
    assert isinstance(mw.dictionaries.store, MemoryStore)
    assert mw.dictionaries.store.max_entries == 7


def test_without_rules_no_store_is_made() -> None:
    assert CompressionMiddleware(make_app()).dictionaries is None


def test_dcb_is_never_offered() -> None:
    """No installed brotli binding compresses with a custom dictionary (see _codecs)."""
    assert dictionary_encodings() == ("dcz",)


# -- the protocol ------------------------------------------------------------------------------
async def test_offer_then_use_round_trip() -> None:
    mw = middleware()
    first = await get(mw, "/api/items/1")
    assert first.header("use-as-dictionary") == 'match="/api/items/*"'
    assert first.header("content-encoding") == "zstd"
    assert first.header("vary") == "Accept-Encoding, Available-Dictionary"
    second = await get(mw, "/api/items/2", version(1))
    assert second.header("content-encoding") == "dcz"
    assert second.header("vary") == "Accept-Encoding, Available-Dictionary"
    assert second.header("use-as-dictionary") == 'match="/api/items/*"'  # the next dictionary
    assert second.header("content-length") == str(len(second.body))
    assert undcz(second.body, version(1)) == version(2)
    plain = zstandard.ZstdCompressor(level=3).compress(version(2))
    assert len(second.body) < len(plain) / 4, (len(second.body), len(plain))
    third = await get(mw, "/api/items/3", version(2))  # the dictionary the second one offered
    assert undcz(third.body, version(2)) == version(3)
    stats = mw.stats()
    assert stats["compressed"]["dcz"] == 2
    assert stats["dictionaries"]["used"] == 2


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ([("available-dictionary", ":bm90IGEgaGFzaA==:")], "not a SHA-256"),
        ([("available-dictionary", "garbage")], "not a Byte Sequence"),
        ([("available-dictionary", available(b"never offered"))], "unknown hash"),
        ([("available-dictionary", available(version(1)))] * 2, "two fields"),
    ],
)
async def test_unusable_available_dictionary_is_the_normal_negotiation(
    headers: list[tuple[str, str]], reason: str
) -> None:
    mw = middleware()
    await get(mw, "/api/items/1")
    response = await call(mw, "GET", "/api/items/2", headers=[("accept-encoding", AE), *headers])
    assert response.status == 200, reason
    assert response.header("content-encoding") == "zstd", reason
    assert zstandard.ZstdDecompressor().decompressobj().decompress(response.body) == version(2)


async def test_dcz_only_when_accepted() -> None:
    mw = middleware()
    await get(mw, "/api/items/1")
    for ae, expected in [("gzip, br, zstd", "zstd"), ("zstd, dcz;q=0", "zstd"), ("dcz", "dcz"),
                         ("identity;q=1, dcz;q=0.5", None), ("*", "dcz")]:  # fmt: skip
        response = await get(mw, "/api/items/2", version(1), ae=ae)
        assert response.header("content-encoding") == expected, ae


async def test_non_matching_path_ignores_the_dictionary() -> None:
    mw = middleware(make_app(bodies={"/other/2": version(2)}))
    await get(mw, "/api/items/1")
    response = await get(mw, "/other/2", version(1))
    assert response.header("content-encoding") == "zstd"
    assert response.header("vary") == "Accept-Encoding"
    assert response.header("use-as-dictionary") is None


async def test_dictionary_is_used_only_within_its_own_pattern() -> None:
    """Two rules: a dictionary offered under one is not used for the other's paths."""
    app = make_app(bodies={"/feed/2": version(2)})
    mw = middleware(app, dictionaries="/api/items/*, /feed/*")
    await get(mw, "/api/items/1")
    response = await get(mw, "/feed/2", version(1))
    assert response.header("content-encoding") == "zstd"
    assert mw.stats()["dictionaries"]["refused"] == 1


async def test_dictionary_id_and_match_dest() -> None:
    mw = middleware(dictionaries="/api/items/*;id=items-v1;match-dest=document|script")
    first = await get(mw, "/api/items/1")
    assert first.header("use-as-dictionary") == (
        'match="/api/items/*", match-dest=("document" "script"), id="items-v1"'
    )
    assert first.header("vary") == "Accept-Encoding, Available-Dictionary, Dictionary-ID"
    cases = [
        ([("dictionary-id", '"items-v1"')], "dcz"),
        ([("dictionary-id", '"items-v1"'), ("sec-fetch-dest", "script")], "dcz"),
        ([("dictionary-id", '"items-v1"'), ("sec-fetch-dest", "image")], "zstd"),
        ([("dictionary-id", '"items-v1"'), ("sec-fetch-dest", "empty")], "zstd"),
        ([("dictionary-id", '"other"')], "zstd"),
        ([("dictionary-id", "items-v1")], "zstd"),  # not a String
        ([], "zstd"),
    ]
    for extra, expected in cases:
        response = await get(mw, "/api/items/2", version(1), *extra)
        assert response.header("content-encoding") == expected, extra


async def test_fetch_destination_is_the_empty_string() -> None:
    """fetch() has the destination "" (RFC 9842 match-dest), sent as Sec-Fetch-Dest: empty."""
    mw = middleware(dictionaries=[{"match": "/api/items/*", "match_dest": [""]}])
    first = await get(mw, "/api/items/1")
    assert first.header("use-as-dictionary") == 'match="/api/items/*", match-dest=("")'
    for dest, expected in [("empty", "dcz"), ("document", "zstd")]:
        response = await get(mw, "/api/items/2", version(1), ("sec-fetch-dest", dest))
        assert response.header("content-encoding") == expected, dest


@pytest.mark.parametrize(
    ("response_headers", "request_headers", "offered"),
    [
        ([(b"cache-control", b"no-store")], [], False),
        ([(b"cache-control", b"max-age=60, private")], [], False),  # private to nobody known
        ([(b"cache-control", b"max-age=60, private")], [("authorization", "Bearer a")], True),
        ([(b"set-cookie", b"s=1")], [("cookie", "s=0")], True),
        ([(b"set-cookie", b"s=1")], [], False),
        ([(b"cache-control", b"max-age=60")], [("authorization", "Bearer a")], True),
        ([(b"cache-control", b"public, max-age=60")], [("authorization", "Bearer a")], True),
        ([(b"use-as-dictionary", b'match="/mine"')], [], False),  # the app's own offer
    ],
)
async def test_which_responses_are_offered(
    response_headers: list[tuple[bytes, bytes]],
    request_headers: list[tuple[str, str]],
    offered: bool,
) -> None:
    mw = middleware(make_app(headers=response_headers))
    first = await get(mw, "/api/items/1", None, *request_headers)
    ours = 'match="/api/items/*"' in first.header_list("use-as-dictionary")
    assert ours == offered
    assert mw.stats()["dictionaries"]["stored"] == (1 if offered else 0)


async def test_private_dictionary_serves_only_its_identity() -> None:
    mw = middleware(make_app(headers=[(b"cache-control", b"private, max-age=60")]))
    alice, bob = ("authorization", "Bearer alice"), ("authorization", "Bearer bob")
    await get(mw, "/api/items/1", None, alice)
    as_alice = await get(mw, "/api/items/2", version(1), alice)
    assert as_alice.header("content-encoding") == "dcz"
    assert undcz(as_alice.body, version(1)) == version(2)
    as_bob = await get(mw, "/api/items/2", version(1), bob)
    assert as_bob.header("content-encoding") == "zstd"
    anonymous = await get(mw, "/api/items/2", version(1))
    assert anonymous.header("content-encoding") == "zstd"


async def test_public_response_to_credentialed_request_is_shared() -> None:
    mw = middleware(make_app(headers=[(b"cache-control", b"public, max-age=60")]))
    await get(mw, "/api/items/1", None, ("cookie", "session=alice"))
    response = await get(mw, "/api/items/2", version(1), ("cookie", "session=bob"))
    assert response.header("content-encoding") == "dcz"


@pytest.mark.parametrize(
    ("method", "status", "path"), [("POST", 200, "/api/items/1"), ("GET", 404, "/api/items/1"),
                                   ("GET", 201, "/api/items/1")]
)  # fmt: skip
async def test_only_get_200_is_offered(method: str, status: int, path: str) -> None:
    mw = middleware(make_app(status=status))
    response = await call(mw, method, path, headers=[("accept-encoding", AE)])
    assert response.header("use-as-dictionary") is None


async def test_head_says_vary_and_never_uses_a_dictionary() -> None:
    mw = middleware()
    await get(mw, "/api/items/1")
    head = await call(
        mw, "HEAD", "/api/items/2",
        headers=[("accept-encoding", AE), ("available-dictionary", available(version(1)))],
    )  # fmt: skip
    assert head.header("content-encoding") is None
    assert head.header("vary") == "Accept-Encoding, Available-Dictionary"
    assert head.header("content-length") == str(len(version(2)))


async def test_vary_is_merged_into_the_apps() -> None:
    mw = middleware(make_app(headers=[(b"vary", b"Origin"), (b"cache-control", b"max-age=9")]))
    await get(mw, "/api/items/1")
    response = await get(mw, "/api/items/2", version(1))
    assert response.header_list("vary") == ["Origin, Accept-Encoding, Available-Dictionary"]
    plain = await get(mw, "/api/items/2", ae="identity")
    assert plain.header_list("vary") == ["Origin, Accept-Encoding, Available-Dictionary"]


async def test_strong_etag_is_weakened_and_206_no_transform_encoded_untouched() -> None:
    app = make_app(headers=[(b"etag", b'"v2"'), (b"cache-control", b"max-age=60")])
    mw = middleware(app)
    await get(mw, "/api/items/1")
    response = await get(mw, "/api/items/2", version(1))
    assert response.header("content-encoding") == "dcz"
    assert response.header("etag") == 'W/"v2"'
    for extra in ([(b"cache-control", b"no-transform")], [(b"content-encoding", b"br")]):
        untouched = middleware(make_app(headers=extra))
        await get(untouched, "/api/items/1")
        response = await get(untouched, "/api/items/2", version(1))
        assert response.body == version(2) and response.header("use-as-dictionary") is None
    partial = middleware(make_app(status=206))
    await get(partial, "/api/items/1")
    assert (await get(partial, "/api/items/2", version(1))).body == version(2)


async def test_streamed_response_is_flushed_per_chunk_and_offered() -> None:
    body = version(7)
    chunks = [body[i : i + 1000] for i in range(0, len(body), 1000)]
    mw = middleware(make_app(bodies={"/api/items/s": chunks, "/api/items/t": chunks}))
    await get(mw, "/api/items/1")
    response = await get(mw, "/api/items/s", version(1))
    assert response.header("content-encoding") == "dcz"
    assert response.header("content-length") is None
    decoder: Any = None
    seen = b""
    raw = zstandard.ZstdCompressionDict(version(1), dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    for sent, received in zip(chunks, response.chunks[: len(chunks)], strict=True):
        if decoder is None:
            assert received[:8] == DCZ_HEADER_MAGIC
            decoder = zstandard.ZstdDecompressor(dict_data=raw).decompressobj()
            received = received[40:]
        seen += decoder.decompress(received)
        assert seen.endswith(sent)  # each chunk decodes as soon as it arrives
    assert undcz(response.body, version(1)) == body
    # the streamed body was recorded: it is a dictionary for the next request
    following = await get(mw, "/api/items/t", body)
    assert undcz(following.body, body) == body


async def test_too_large_body_is_offered_but_not_kept() -> None:
    mw = middleware(dictionary_max_size=1000)
    first = await get(mw, "/api/items/1")
    assert first.header("use-as-dictionary") == 'match="/api/items/*"'
    assert mw.stats()["dictionaries"]["stored"] == 0
    assert (await get(mw, "/api/items/2", version(1))).header("content-encoding") == "zstd"


async def test_a_polled_body_that_repeats_is_written_once() -> None:
    writes: list[str] = []

    class Counting(MemoryStore):
        async def set(self, key: str, value: bytes, *args: Any, **kwargs: Any) -> None:
            writes.append(key)
            await super().set(key, value, *args, **kwargs)

    mw = middleware(storage=Counting())
    for _ in range(5):
        await get(mw, "/api/items/1")
    assert len(writes) == 1


async def test_a_body_offered_again_is_not_hashed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A repeated body (a new bytes object each time, as a framework makes) is recognised by
    its string hash and a comparison; SHA-256 runs once per distinct body."""
    hashed: list[int] = []
    sha256 = hashlib.sha256

    def counting(data: bytes) -> Any:
        hashed.append(len(data))
        return sha256(data)

    monkeypatch.setattr("asgi_perf.compression._dictionaries.hashlib.sha256", counting)
    mw = middleware()
    for _ in range(4):
        await get(mw, "/api/items/1")
    assert len(hashed) == 1
    assert mw.dictionaries is not None
    # a stale or colliding shortcut is never trusted: the content is compared first
    await get(mw, "/api/items/3")
    assert len(hashed) == 2
    one, three = version(1), version(3)
    mw.dictionaries._digests[len(one), hash(one)] = sha256(three).digest()
    await get(mw, "/api/items/1")
    assert len(hashed) == 3
    response = await get(mw, "/api/items/2", one)
    assert undcz(response.body, one) == version(2)


async def test_dictionary_store_is_bounded() -> None:
    mw = middleware(dictionary_max_count=3)
    for n in range(10):
        await get(mw, f"/api/items/{n}")
    assert mw.dictionaries is not None
    store = mw.dictionaries.store
    assert isinstance(store, MemoryStore)
    assert store.stats()["entries"] <= 3


async def test_tampered_store_entry_is_not_used() -> None:
    store = MemoryStore()
    mw = middleware(storage=store)
    other = middleware(storage=store)  # a second worker: no local copy, reads the store
    await get(mw, "/api/items/1")
    (key,) = list(store._data)
    raw = await store.get(key)
    assert raw is not None
    await store.set(key, raw[:-1] + b"X")  # the content no longer has that hash
    response = await get(other, "/api/items/2", version(1))
    assert response.header("content-encoding") == "zstd"


async def test_store_failure_costs_only_the_saving(caplog: pytest.LogCaptureFixture) -> None:
    class Down(MemoryStore):
        kind = "down"

        async def get(self, key: str) -> bytes | None:
            raise StoreUnavailable("down")

        async def set(self, *args: Any, **kwargs: Any) -> None:
            raise StoreUnavailable("down")

    mw = middleware(storage=Down())
    with caplog.at_level(logging.WARNING, logger="asgi_perf.compression"):
        for n in range(1, 4):
            other = await get(mw, f"/api/items/{n}")
            assert other.status == 200 and other.header("content-encoding") == "zstd"
        fresh = middleware(storage=Down())
        response = await get(fresh, "/api/items/2", version(1))
    assert response.header("content-encoding") == "zstd"
    assert zstandard.ZstdDecompressor().decompressobj().decompress(response.body) == version(2)
    warnings = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(warnings) == 2  # once per incident, per middleware
    assert mw.stats()["dictionaries"]["store"]["failures"] >= 3


async def test_codec_failure_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    mw = middleware()
    await get(mw, "/api/items/1")

    def broken(*args: Any, **kwargs: Any) -> None:
        raise zstandard.ZstdError("boom")

    monkeypatch.setattr("asgi_perf.compression._dictionaries.ZstdDictionary", broken)
    response = await get(mw, "/api/items/2", version(1))
    assert response.header("content-encoding") == "zstd"
    assert mw.stats()["codec_errors"]["dcz"]["failures"] == 1


def test_window_stays_within_rfc_limits_at_any_level() -> None:
    dictionary = version(1, 3000)
    for level in (1, 3, 19, 22):
        codec = ZstdDictionary(dictionary, hashlib.sha256(dictionary).digest(), level)
        body = version(2, 3000) * 40  # larger than the dictionary: the window matters
        assert undcz(codec.compress(body), dictionary) == body
        stream = codec.stream()
        encoded = stream.compress(body[:50_000]) + stream.finish(body[50_000:])
        assert undcz(encoded, dictionary) == body


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    dictionary=st.binary(min_size=1, max_size=4000),
    body=st.binary(min_size=0, max_size=6000),
    cuts=st.lists(st.integers(min_value=0, max_value=6000), max_size=6),
    mutate=st.booleans(),
)
def test_dcz_round_trips_any_body_dictionary_and_chunking(
    dictionary: bytes, body: bytes, cuts: list[int], mutate: bool
) -> None:
    if mutate:  # the realistic case: a body that is mostly the dictionary
        body = dictionary[: len(dictionary) // 2] + body + dictionary[len(dictionary) // 2 :]
    codec = ZstdDictionary(dictionary, hashlib.sha256(dictionary).digest(), 3)
    assert undcz(codec.compress(body), dictionary) == body
    edges = sorted({0, len(body), *(c for c in cuts if c < len(body))})
    pieces = [body[a:b] for a, b in itertools.pairwise(edges)] or [b""]
    stream = codec.stream()
    encoded = b"".join(stream.compress(p) for p in pieces[:-1]) + stream.finish(pieces[-1])
    assert undcz(encoded, dictionary) == body


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    first=st.binary(min_size=600, max_size=5000),
    second=st.binary(min_size=600, max_size=5000),
    chunk=st.integers(min_value=1, max_value=5000),
)
async def test_middleware_round_trips_any_bodies(first: bytes, second: bytes, chunk: int) -> None:
    streamed = [second[i : i + chunk] for i in range(0, len(second), chunk)]
    mw = middleware(make_app(bodies={"/api/items/a": first, "/api/items/b": streamed}))
    offered = await get(mw, "/api/items/a")
    assert offered.header("use-as-dictionary") == 'match="/api/items/*"'
    response = await get(mw, "/api/items/b", first)
    assert response.header("content-encoding") == "dcz"  # a stream is always encoded
    assert undcz(response.body, first) == second


async def test_unreachable_redis_costs_only_sharing(caplog: pytest.LogCaptureFixture) -> None:
    """A real Redis client pointed at a port nobody listens on: every response completes and
    decodes; this worker still uses the dictionaries it offered itself (its local copies)."""
    from tests.support import free_port

    mw = middleware(storage=f"redis://127.0.0.1:{free_port()}/0")
    codings = []
    with caplog.at_level(logging.WARNING, logger="asgi_perf.compression"):
        for n in range(1, 8):
            response = await get(mw, f"/api/items/{n}", version(n - 1))
            assert response.status == 200
            coding = response.header("content-encoding")
            codings.append(coding)
            if coding == "dcz":
                assert undcz(response.body, version(n - 1)) == version(n)
            else:
                decoder = zstandard.ZstdDecompressor().decompressobj()
                assert decoder.decompress(response.body) == version(n)
    assert codings == ["zstd"] + ["dcz"] * 6
    assert len([r for r in caplog.records if "unavailable" in r.getMessage()]) == 1
    assert mw.dictionaries is not None
    assert mw.dictionaries.stats()["store"]["down"] is True
    await mw.dictionaries.store.close()


async def test_pathsend_on_a_dictionary_path_passes_through_intact() -> None:
    """A file response cannot be recorded: it goes out as the app sent it, not offered."""
    start = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"100000")],
    }
    pathsend = {"type": "http.response.pathsend", "path": "/srv/items.json"}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(start)
        await send(pathsend)

    response = await get(middleware(app), "/api/items/1")
    assert response.messages == [start, pathsend]
