"""CompressionMiddleware: every rule of spec/compression.md, in process."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import logging
import os
import threading
import zlib
from collections.abc import Callable
from typing import Any

import brotli
import orjson
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asgi_perf._core.config import ConfigError
from asgi_perf.compression import CompressionMiddleware
from asgi_perf.compression._codecs import (
    BrotliCodec,
    GzipCodec,
    ZstdCodec,
    available_gzip_backends,
    make_codec,
)
from tests.support import call, make_scope, reader

BODY = orjson.dumps([{"id": i, "name": f"user {i}", "tags": ["a", "b", "c"]} for i in range(300)])
AE_ALL = ("accept-encoding", "gzip, deflate, br, zstd")


def decode(coding: str | None, data: bytes) -> bytes:
    if coding is None:
        return data
    if coding == "gzip":
        return gzip.decompress(data)
    if coding == "br":
        return bytes(brotli.decompress(data))
    if coding == "zstd":
        return bytes(zstandard.ZstdDecompressor().decompressobj().decompress(data))
    raise AssertionError(coding)


def incremental_decoder(coding: str) -> Callable[[bytes], bytes]:
    """A decoder fed chunk by chunk: each call returns what that chunk makes decodable."""
    if coding == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress
    if coding == "br":
        return brotli.Decompressor().process  # type: ignore[no-any-return]
    return zstandard.ZstdDecompressor().decompressobj().decompress  # type: ignore[no-any-return]


def make_app(
    body: bytes | list[bytes] = BODY,
    *,
    status: int = 200,
    headers: list[tuple[bytes, bytes]] | None = None,
    content_type: bytes | None = b"application/json",
    content_length: bool = True,
) -> Any:
    chunks = [body] if isinstance(body, bytes) else body
    start_headers = list(headers or [])
    if content_type is not None:
        start_headers.append((b"content-type", content_type))
    if content_length:
        start_headers.append((b"content-length", str(sum(map(len, chunks))).encode()))

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": start_headers})
        for i, chunk in enumerate(chunks):
            await send(
                {"type": "http.response.body", "body": chunk, "more_body": i < len(chunks) - 1}
            )

    return app


async def get(mw: Any, *headers: tuple[str, str], method: str = "GET", path: str = "/") -> Any:
    return await call(mw, method, path, headers=list(headers))


# -- the compressed response ------------------------------------------------------------------
@pytest.mark.parametrize("coding", ["zstd", "br", "gzip"])
async def test_each_coding_one_shot(coding: str) -> None:
    mw = CompressionMiddleware(make_app())
    res = await get(mw, ("accept-encoding", coding))
    assert res.header("content-encoding") == coding
    assert decode(coding, res.body) == BODY
    assert res.header("content-length") == str(len(res.body))
    assert len(res.body) < len(BODY)
    assert res.header("vary") == "Accept-Encoding"
    assert len(res.chunks) == 1
    assert mw.stats()["compressed"][coding] == 1


async def test_preference_and_x_gzip() -> None:
    mw = CompressionMiddleware(make_app(), encodings="gzip,br")
    assert (await get(mw, AE_ALL)).header("content-encoding") == "gzip"
    res = await get(mw, ("accept-encoding", "x-gzip"))
    assert res.header("content-encoding") == "gzip"
    assert decode("gzip", res.body) == BODY


async def test_repeated_accept_encoding_lines_are_combined() -> None:
    mw = CompressionMiddleware(make_app())
    res = await get(mw, ("accept-encoding", "gzip;q=0.5"), ("Accept-Encoding", "br;q=0.9"))
    assert res.header("content-encoding") == "br"


async def test_vary_is_merged_and_etag_weakened() -> None:
    app = make_app(headers=[(b"vary", b"Origin"), (b"etag", b'"v1"'), (b"Vary", b"Cookie")])
    res = await get(CompressionMiddleware(app), ("accept-encoding", "gzip"))
    assert res.header_list("vary") == ["Origin, Cookie, Accept-Encoding"]
    assert res.header("etag") == 'W/"v1"'
    weak = make_app(headers=[(b"etag", b'W/"v1"'), (b"vary", b"accept-encoding")])
    res = await get(CompressionMiddleware(weak), ("accept-encoding", "gzip"))
    assert res.header("etag") == 'W/"v1"'
    assert res.header_list("vary") == ["accept-encoding"]


async def test_vary_star_is_left_alone() -> None:
    res = await get(
        CompressionMiddleware(make_app(headers=[(b"vary", b"*")])), ("accept-encoding", "br")
    )
    assert res.header("content-encoding") == "br"
    assert res.header_list("vary") == ["*"]


async def test_uppercase_response_field_names() -> None:
    app = make_app(headers=[(b"Content-Type", b"Text/HTML; charset=utf-8")], content_type=None)
    res = await get(CompressionMiddleware(app), ("accept-encoding", "gzip"))
    assert res.header("content-encoding") == "gzip"
    assert decode("gzip", res.body) == BODY
    assert res.header_list("content-length") == [str(len(res.body))]


# -- when the response goes out unchanged -----------------------------------------------------
@pytest.mark.parametrize(
    ("case", "app"),
    [
        ("small, Content-Length", make_app(b"x" * 499)),
        ("small, single chunk", make_app(b"x" * 499, content_length=False)),
        ("encoded", make_app(headers=[(b"content-encoding", b"gzip")])),
        ("encoded identity", make_app(headers=[(b"content-encoding", b"identity")])),
        ("no-transform", make_app(headers=[(b"cache-control", b"public, No-Transform")])),
        ("206", make_app(status=206, headers=[(b"content-range", b"bytes 0-9/100")])),
        ("Content-Range on 200", make_app(headers=[(b"content-range", b"bytes 0-9/100")])),
        ("204", make_app(b"", status=204)),
        ("205", make_app(b"", status=205)),
        ("304", make_app(b"", status=304)),
        ("image/png", make_app(content_type=b"image/png")),
        ("no content type", make_app(content_type=None)),
        ("octet-stream", make_app(content_type=b"application/octet-stream")),
    ],
)
async def test_unchanged(case: str, app: Any) -> None:
    direct = await call(app, headers=[AE_ALL])
    res = await get(CompressionMiddleware(app), AE_ALL)
    assert res.headers == direct.headers, case  # Content-Encoding included: none added
    assert res.body == direct.body


async def test_minimum_size_boundary() -> None:
    mw = CompressionMiddleware(make_app(b"a" * 500), minimum_size=500)
    assert (await get(mw, ("accept-encoding", "gzip"))).header("content-encoding") == "gzip"
    mw = CompressionMiddleware(make_app(b"a" * 99), minimum_size="100")
    assert (await get(mw, ("accept-encoding", "gzip"))).header("content-encoding") is None


@pytest.mark.parametrize(
    "accept",
    [None, "gzip;q=0", "deflate", "identity", "gzip;q=2", "*;q=0", "identity;q=1, br;q=0.5"],
)
async def test_identity_for_the_client_still_says_vary(accept: str | None) -> None:
    headers = [] if accept is None else [("accept-encoding", accept)]
    res = await call(CompressionMiddleware(make_app()), headers=headers)
    assert res.header("content-encoding") is None
    assert res.body == BODY
    assert res.header("vary") == "Accept-Encoding"
    assert res.header("content-length") == str(len(BODY))


async def test_identity_stream_says_vary_but_small_body_does_not() -> None:
    stream = make_app([b"a" * 10, b"b" * 10], content_length=False)
    res = await call(CompressionMiddleware(stream))
    assert res.header("vary") == "Accept-Encoding"
    assert res.chunks == [b"a" * 10, b"b" * 10]
    small = make_app(b"tiny", content_length=False)
    assert (await call(CompressionMiddleware(small))).header("vary") is None


async def test_head_gets_vary_not_encoding() -> None:
    mw = CompressionMiddleware(make_app(b""), minimum_size=0)
    res = await get(mw, AE_ALL, method="HEAD")
    assert res.header("content-encoding") is None
    assert res.header("vary") == "Accept-Encoding"
    assert res.header("content-length") == "0"
    big = make_app(b"", headers=[(b"content-length", b"100000")], content_length=False)
    res = await get(CompressionMiddleware(big), AE_ALL, method="HEAD")
    assert (res.header("content-length"), res.header("vary")) == ("100000", "Accept-Encoding")


async def test_incompressible_body_goes_out_unencoded() -> None:
    noise = os.urandom(4000)
    res = await get(CompressionMiddleware(make_app(noise)), ("accept-encoding", "gzip"))
    assert res.header("content-encoding") is None
    assert res.body == noise
    assert res.header("vary") == "Accept-Encoding"


async def test_compressible_types_patterns() -> None:
    mw_types = ["text/*", "*+json", "application/custom"]
    for content_type, compressed in [
        (b"text/csv", True),
        (b"application/problem+json", True),
        (b"application/custom; charset=utf-8", True),
        (b"APPLICATION/Custom", True),
        (b"application/json", False),
        (b"image/svg+xml", False),
    ]:
        mw = CompressionMiddleware(make_app(content_type=content_type), compressible_types=mw_types)
        res = await get(mw, ("accept-encoding", "gzip"))
        assert (res.header("content-encoding") == "gzip") is compressed, content_type


@pytest.mark.parametrize(
    "content_type",
    [
        b"image/svg+xml",
        b"application/wasm",
        b"application/x-ndjson",
        b"application/ld+json",
        b"application/atom+xml",
        b"application/graphql-response+json",
        b"text/plain",
    ],
)
async def test_default_compressible_types(content_type: bytes) -> None:
    res = await get(CompressionMiddleware(make_app(content_type=content_type)), AE_ALL)
    assert res.header("content-encoding") == "zstd"


async def test_exclude_paths() -> None:
    mw = CompressionMiddleware(make_app(), exclude_paths=["/metrics", "/static/"])
    for path, excluded in [
        ("/metrics", True),
        ("/metrics/x", True),
        ("/metricsx", False),
        ("/static/a.js", True),
        ("/api", False),
    ]:
        res = await get(mw, AE_ALL, path=path)
        assert (res.header("content-encoding") is None) is excluded, path
        assert (res.header("vary") is None) is excluded, path


# -- streams ----------------------------------------------------------------------------------
@pytest.mark.parametrize("coding", ["zstd", "br", "gzip"])
async def test_stream_is_flushed_chunk_by_chunk(coding: str) -> None:
    parts = [b'{"event": %d, "pad": "%s"}\n' % (i, b"x" * i) for i in range(20)]
    app = make_app(parts, content_type=b"application/x-ndjson")
    res = await get(CompressionMiddleware(app), ("accept-encoding", coding))
    assert res.header("content-encoding") == coding
    assert res.header("content-length") is None  # removed: the app's was the identity length
    assert res.header("vary") == "Accept-Encoding"
    assert len(res.chunks) == len(parts)
    feed = incremental_decoder(coding)
    for part, chunk in zip(parts, res.chunks, strict=True):
        assert feed(chunk) == part  # each chunk is decodable on arrival: nothing held back
    assert all(m.get("more_body") for m in res.messages[1:-1])
    assert not res.messages[-1].get("more_body")


async def test_small_first_chunk_of_a_stream_is_still_compressed() -> None:
    app = make_app([b"[", b"1," * 600, b"2]"], content_length=False)
    res = await get(CompressionMiddleware(app), ("accept-encoding", "gzip"))
    assert res.header("content-encoding") == "gzip"
    assert decode("gzip", res.body) == b"[" + b"1," * 600 + b"2]"


async def test_empty_chunks_in_a_stream_are_skipped() -> None:
    app = make_app([b"a" * 600, b"", b"b" * 600, b""], content_length=False)
    res = await get(CompressionMiddleware(app), ("accept-encoding", "br"))
    assert decode("br", res.body) == b"a" * 600 + b"b" * 600
    assert len(res.chunks) == 3  # first, second, and the final (end of stream) message


async def test_event_stream_headers_go_out_before_the_first_event() -> None:
    seen: list[dict[str, Any]] = []
    first_sent = asyncio.Event()

    async def sse(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        assert [m["type"] for m in seen] == ["http.response.start"]
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        first_sent.set()
        await send({"type": "http.response.body", "body": b"data: 2\n\n", "more_body": False})

    async def send(message: dict[str, Any]) -> None:
        seen.append(message)

    mw = CompressionMiddleware(sse)
    scope = make_scope(headers=[("accept-encoding", "gzip")])
    await mw(scope, _never_called, send)
    assert seen[0]["headers"][-1] == (b"content-encoding", b"gzip")
    feed = incremental_decoder("gzip")
    assert feed(seen[1]["body"]) == b"data: 1\n\n"  # the small first event, flushed
    assert feed(seen[2]["body"]) == b"data: 2\n\n"
    assert mw.stats()["streams"] == 1


async def test_event_stream_opt_out_and_identity() -> None:
    app = make_app(
        [b"data: 1\n\n", b"data: 2\n\n"], content_type=b"text/event-stream", content_length=False
    )
    res = await get(CompressionMiddleware(app, compress_event_stream=False), AE_ALL)
    assert res.header("content-encoding") is None
    assert res.header("vary") is None
    assert res.chunks == [b"data: 1\n\n", b"data: 2\n\n"]
    res = await call(CompressionMiddleware(app))
    assert (res.header("content-encoding"), res.header("vary")) == (None, "Accept-Encoding")


# -- hypothesis round trips -------------------------------------------------------------------
_texts = st.lists(
    st.sampled_from([b"alpha ", b"beta", b'{"k": 1}', b"\n", b"zzzz" * 50, b"\x00\xff"]),
    max_size=300,
).map(b"".join)


@st.composite
def bodies_and_cuts(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    body = draw(st.one_of(_texts, st.binary(max_size=5000)))
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=12)))
    edges = [0, *cuts, len(body)]
    return body, [body[a:b] for a, b in itertools.pairwise(edges)]


@pytest.mark.parametrize("coding", ["zstd", "br", "gzip"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=bodies_and_cuts())
def test_round_trip_through_the_middleware(coding: str, case: tuple[bytes, list[bytes]]) -> None:
    body, chunks = case
    app = make_app(chunks, content_length=False, content_type=b"text/plain")
    mw = CompressionMiddleware(app, minimum_size=0, encodings=coding)
    res = asyncio.run(call(mw, headers=[("accept-encoding", coding)]))
    assert decode(res.header("content-encoding"), res.body) == body


@pytest.mark.parametrize("codec", [GzipCodec(6), BrotliCodec(4), ZstdCodec(3)], ids=str)
@settings(max_examples=40, deadline=None)
@given(case=bodies_and_cuts())
def test_stream_compressor_flushes_every_chunk(codec: Any, case: tuple[bytes, list[bytes]]) -> None:
    body, chunks = case
    stream = codec.stream()
    feed = incremental_decoder(codec.name)
    for chunk in chunks:
        assert feed(stream.compress(chunk)) == chunk
    assert feed(stream.finish(b"end")) == b"end"
    assert decode(codec.name, codec.compress(body)) == body


# -- gzip backends ----------------------------------------------------------------------------
@pytest.mark.parametrize("backend", available_gzip_backends())
def test_gzip_backends(backend: str) -> None:
    codec = GzipCodec(6, backend)
    encoded = codec.compress(BODY)
    assert gzip.decompress(encoded) == BODY
    stream = codec.stream()
    assert gzip.decompress(stream.compress(BODY[:100]) + stream.finish(BODY[100:])) == BODY
    if backend != "isal":  # ISA-L trades size for speed; the others stay within 3% of zlib
        assert len(encoded) <= len(zlib.compress(BODY, 6)) * 1.03 + 18


def test_gzip_backend_choice() -> None:
    backends = available_gzip_backends()
    assert backends[-1] == "zlib"
    auto = "zlib-ng" if "zlib-ng" in backends else "zlib"
    assert GzipCodec(6).backend == auto
    assert GzipCodec(1, "zlib").description == "gzip zlib level 1"
    mw = CompressionMiddleware(make_app(), gzip_backend="ZLIB")
    assert mw.stats()["codecs"]["gzip"] == "gzip zlib level 6"
    if "isal" in backends:  # ISA-L levels are 0-3
        assert [GzipCodec(level, "isal").level for level in (0, 1, 3, 6, 9)] == [0, 0, 1, 2, 3]


# -- ASGI extensions and message kinds ---------------------------------------------------------
async def test_pathsend_passes_through_intact() -> None:
    start = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"text/html"), (b"content-length", b"100000")],
    }
    pathsend = {"type": "http.response.pathsend", "path": "/srv/index.html"}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert "http.response.pathsend" in scope["extensions"]
        await send(start)
        await send(pathsend)

    scope = make_scope(headers=[AE_ALL], extensions={"http.response.pathsend": {}})
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    await CompressionMiddleware(app)(scope, _never_called, send)
    assert sent == [start, pathsend]


@pytest.mark.parametrize(
    ("accept", "removed"), [("gzip", True), ("gzip;q=0", False), (None, False)]
)
async def test_zerocopysend_is_hidden_when_the_response_may_be_encoded(
    accept: str | None, removed: bool
) -> None:
    extensions = {"http.response.zerocopysend": {}, "http.response.pathsend": {}}
    scope = make_scope(
        headers=[] if accept is None else [("accept-encoding", accept)], extensions=extensions
    )
    seen: list[Any] = []

    async def app(inner: Any, receive: Any, send: Any) -> None:
        seen.append(inner["extensions"])
        await make_app()(inner, receive, send)

    res = await call(CompressionMiddleware(app), scope=scope)
    assert ("http.response.zerocopysend" not in seen[0]) is removed
    assert "http.response.pathsend" in seen[0]
    assert "http.response.zerocopysend" in scope["extensions"]  # the caller's scope untouched
    assert (res.header("content-encoding") == "gzip") is removed


async def test_early_hints_and_trailers_are_forwarded() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.early_hint", "links": [b"</a.css>; rel=preload"]})
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "trailers": True,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send({"type": "http.response.body", "body": BODY, "more_body": True})
        await send({"type": "http.response.body", "body": BODY, "more_body": False})
        await send({"type": "http.response.trailers", "headers": [(b"x-sum", b"1")]})

    res = await get(CompressionMiddleware(app), ("accept-encoding", "zstd"))
    kinds = [m["type"] for m in res.messages]
    assert kinds[0] == "http.response.early_hint"
    assert kinds[-1] == "http.response.trailers"
    assert res.messages[1]["trailers"] is True
    assert decode("zstd", res.body) == BODY * 2


async def test_one_shot_with_trailers_has_no_content_length() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "trailers": True,
                "headers": [
                    (b"content-type", b"text/plain"),
                    (b"content-length", b"%d" % len(BODY)),
                ],
            }
        )
        await send({"type": "http.response.body", "body": BODY})
        await send({"type": "http.response.trailers", "headers": []})

    res = await get(CompressionMiddleware(app), ("accept-encoding", "gzip"))
    assert res.header("content-encoding") == "gzip"
    assert res.header("content-length") is None
    assert decode("gzip", res.body) == BODY


@pytest.mark.parametrize("scope_type", ["lifespan", "websocket"])
async def test_other_scopes_pass_straight_through(scope_type: str) -> None:
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope, receive, send))

    scope = {"type": scope_type, "headers": [(b"accept-encoding", b"gzip")]}

    async def receive() -> Any:
        return {}

    async def send(message: Any) -> None:
        return None

    await CompressionMiddleware(app)(scope, receive, send)
    assert seen == [(scope, receive, send)]


# -- threads, failures, timing ----------------------------------------------------------------
class _Recording:
    """A codec wrapper that records the thread each call runs on (and can fail)."""

    def __init__(self, codec: Any, fail: bool = False) -> None:
        self.codec = codec
        self.name = codec.name
        self.description = codec.description
        self.fail = fail
        self.threads: list[int] = []

    def compress(self, data: bytes) -> bytes:
        self.threads.append(threading.get_ident())
        if self.fail:
            raise MemoryError("codec failed")
        return bytes(self.codec.compress(data))

    def stream(self) -> Any:
        if self.fail:
            raise MemoryError("codec failed")
        return self.codec.stream()


async def test_large_body_is_compressed_off_the_event_loop() -> None:
    big = BODY * 20
    mw = CompressionMiddleware(make_app(big), thread_minimum_size="64KiB")
    recording = _Recording(mw.codecs["gzip"])
    mw.codecs["gzip"] = recording  # type: ignore[assignment]
    res = await get(mw, ("accept-encoding", "gzip"))
    assert decode("gzip", res.body) == big
    assert recording.threads and recording.threads[0] != threading.get_ident()
    assert mw.stats()["threaded"] == 1
    small = await get(mw, ("accept-encoding", "gzip"), path="/again")
    assert small.header("content-encoding") == "gzip"


async def test_large_stream_chunks_are_compressed_off_the_event_loop() -> None:
    big = [BODY * 20, BODY * 20]
    mw = CompressionMiddleware(make_app(big, content_length=False), thread_minimum_size=65536)
    res = await get(mw, ("accept-encoding", "br"))
    assert decode("br", res.body) == BODY * 40
    assert mw.stats()["threaded"] == 1  # the second (last) chunk; the first opened the stream


async def test_codec_failure_sends_the_response_unencoded(caplog: pytest.LogCaptureFixture) -> None:
    mw = CompressionMiddleware(make_app())
    mw.codecs["gzip"] = _Recording(mw.codecs["gzip"], fail=True)  # type: ignore[assignment]
    with caplog.at_level(logging.WARNING, logger="asgi_perf.compression"):
        for _ in range(3):
            res = await get(mw, ("accept-encoding", "gzip"))
            assert res.header("content-encoding") is None
            assert res.body == BODY
            assert res.header("vary") == "Accept-Encoding"
    gzip_errors = mw.stats()["codec_errors"]["gzip"]
    assert (gzip_errors["down"], gzip_errors["failures"], gzip_errors["incidents"]) == (True, 3, 1)
    assert len([r for r in caplog.records if "gzip codec" in r.getMessage()]) == 1
    mw.codecs["gzip"] = mw.codecs["gzip"].codec  # type: ignore[attr-defined]
    assert (await get(mw, ("accept-encoding", "gzip"))).header("content-encoding") == "gzip"
    assert mw.stats()["codec_errors"]["gzip"]["down"] is False


async def test_codec_failure_before_a_stream_starts_sends_it_unencoded() -> None:
    mw = CompressionMiddleware(make_app([b"a" * 600, b"b" * 600], content_length=False))
    mw.codecs["br"] = _Recording(mw.codecs["br"], fail=True)  # type: ignore[assignment]
    res = await get(mw, ("accept-encoding", "br"))
    assert res.header("content-encoding") is None
    assert res.chunks == [b"a" * 600, b"b" * 600]


async def test_codec_failure_mid_stream_propagates_and_is_counted() -> None:
    class Breaking:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def compress(self, data: bytes) -> bytes:
            if data.startswith(b"boom"):
                raise MemoryError("mid-stream")
            return bytes(self.inner.compress(data))

        def finish(self, data: bytes) -> bytes:
            return bytes(self.inner.finish(data))

    mw = CompressionMiddleware(make_app([b"a" * 600, b"boom", b"c"], content_length=False))
    codec = mw.codecs["gzip"]
    wrapper = _Recording(codec)
    wrapper.stream = lambda: Breaking(codec.stream())  # type: ignore[method-assign]
    mw.codecs["gzip"] = wrapper  # type: ignore[assignment]
    with pytest.raises(MemoryError):
        await get(mw, ("accept-encoding", "gzip"))
    assert mw.stats()["codec_errors"]["gzip"]["failures"] == 1


async def test_server_timing_entry_for_an_outer_reader() -> None:
    app, contexts = reader(CompressionMiddleware(make_app()))
    await get(app, ("accept-encoding", "zstd"))
    ctx = contexts[0]
    assert [(t.name, t.desc) for t in ctx.timings] == [("compress", "zstd")]
    assert ctx.timings[0].dur is not None and ctx.timings[0].dur >= 0


async def test_passthrough_creates_no_codec_object() -> None:
    made: list[str] = []
    mw = CompressionMiddleware(make_app(b"tiny"))
    for name, codec in list(mw.codecs.items()):
        original = codec.stream
        codec.stream = lambda original=original, name=name: made.append(name) or original()  # type: ignore[method-assign]
    await get(mw, AE_ALL)
    await call(mw)
    assert made == []
    assert mw.stats()["compressed"] == {"zstd": 0, "br": 0, "gzip": 0}


def test_stats_shape() -> None:
    stats = CompressionMiddleware(make_app()).stats()
    assert stats["encodings"] == ["zstd", "br", "gzip"]
    assert set(stats) >= {"compressed", "streams", "threaded", "bytes_in", "bytes_out"}
    orjson.dumps(stats)


# -- configuration ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("encodings", "gzip,deflate"),
        ("encodings", ""),
        ("encodings", 5),
        ("minimum_size", -1),
        ("minimum_size", "lots"),
        ("gzip_level", 10),
        ("gzip_level", "6.5"),
        ("brotli_quality", 12),
        ("zstd_level", 23),
        ("compressible_types", ["text"]),
        ("compressible_types", "*/json"),
        ("compressible_types", "*+"),
        ("exclude_paths", "metrics"),
        ("gzip_backend", "fast"),
        ("compress_event_stream", "maybe"),
        ("thread_minimum_size", "1 potato"),
    ],
)
def test_bad_options_raise_config_error(option: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        CompressionMiddleware(make_app(), **{option: value})
    assert info.value.name == option
    assert repr(value) in str(info.value)


def test_env_codecs_and_defaults() -> None:
    """The codecs the variables make (that each one arrives: test_options_contract)."""
    environ = {
        "ASGI_PERF_COMPRESSION_ENCODINGS": "gzip, br",
        "ASGI_PERF_GZIP_LEVEL": "9",
        "ASGI_PERF_BROTLI_QUALITY": "5",
        "ASGI_PERF_GZIP_BACKEND": "zlib",
    }
    mw = CompressionMiddleware.from_env(make_app(), environ)
    assert mw.stats()["codecs"] == {"gzip": "gzip zlib level 9", "br": "br quality 5"}
    defaults = CompressionMiddleware.from_env(make_app(), {})
    assert (defaults.encodings, defaults.minimum_size) == (("zstd", "br", "gzip"), 500)
    assert defaults.stats()["codecs"]["zstd"] == "zstd level 3"
    assert defaults.stats()["codecs"]["br"] == "br quality 4"
    assert defaults.stats()["codecs"]["gzip"] == f"gzip {GzipCodec().backend} level 6"


def test_enabled_by_default() -> None:
    assert CompressionMiddleware.enabled_in_env({}) is True
    assert CompressionMiddleware.enabled_in_env({"ASGI_PERF_COMPRESSION_ENABLED": "no"}) is False
    with pytest.raises(ConfigError):
        CompressionMiddleware.enabled_in_env({"ASGI_PERF_COMPRESSION_ENABLED": "perhaps"})


def test_make_codec_names() -> None:
    assert make_codec("br", brotli_quality=1).description == "br quality 1"
    with pytest.raises(ConfigError):
        make_codec("deflate")


async def _never_called() -> Any:
    raise AssertionError("receive should not be called")


async def test_field_name_and_length_memos_stay_bounded_and_exact() -> None:
    """The start-message scan memoises field names and Content-Length values: many distinct
    ones (an app sending every size, odd header names) neither grow it nor confuse it."""
    sizes = iter(range(10, 5000, 3))

    async def app(scope: Any, receive: Any, send: Any) -> None:
        size = next(sizes)
        headers = [
            (f"X-Custom-{size}".encode(), b"1"),
            (b"Content-Type", b"application/json"),
            (b"Content-LENGTH", str(size).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"{" + b" " * (size - 2) + b"}"})

    mw = CompressionMiddleware(app, minimum_size=500)
    for _ in range(1600):
        res = await get(mw, ("accept-encoding", "gzip"))
        size = len(decode(res.header("content-encoding"), res.body))
        # below minimum_size: byte-for-byte unchanged; from it on: encoded
        assert (res.header("content-encoding") == "gzip") is (size >= 500), size
    assert len(mw._names) <= 256 and len(mw._lengths) <= 1024
