"""Hostile input: property-based tests (hypothesis) over every header parser the middlewares
expose, over ASGI message sequences through the full stack, and over what reaches Redis.

- **Parsers** (Accept-Encoding, Cache-Control, If-None-Match, HTTP dates, Forwarded /
  X-Forwarded-For, Idempotency-Key, Server-Timing from inner layers): arbitrary bytes never
  raise, results stay inside their documented domain, and the security-relevant properties
  hold (a spoofed forwarding header from an untrusted peer changes nothing; a ``q=0`` coding
  is never chosen; Server-Timing is valid W3C syntax whatever names and descriptions inner
  layers pass).
- **ASGI sequences** through the whole stack in the recommended order: random request and
  response chunking, empty chunks, a missing ``more_body`` (which means "last"), a missing
  ``body``: no exception escapes, ``Content-Length`` matches what is sent, and the body the
  client decodes (and the body the app reads) is byte-exact.
- **Redis keys**: oversized headers, 100 kB keys and values, control characters and newlines
  in header values, paths and queries never reach a Redis key unescaped: every key written
  under the test's ``key_prefix`` (found with ``SCAN`` on that prefix, index members
  included) is printable and bounded.
"""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import math
import re
import secrets
import socket
from collections.abc import Iterator
from typing import Any

import brotli
import pytest
import redis
import zstandard
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from asgi_perf._core.context import TimingEntry, add_timing, format_server_timing
from asgi_perf._core.identity import ClientIP, parse_forwarded
from asgi_perf._core.negotiation import choose_encoding, parse_accept_encoding
from asgi_perf._stack import from_env
from asgi_perf.cache import CacheMiddleware
from asgi_perf.cache._rules import (
    etag_matches,
    freshness,
    not_modified,
    parse_cache_control,
    parse_http_date,
    request_directives,
    stale_windows,
    storable,
    vary_names,
)
from asgi_perf.compression import CompressionMiddleware
from asgi_perf.dedup import DedupMiddleware
from asgi_perf.dedup._rules import MAX_KEY_LENGTH, InvalidKey, parse_idempotency_key
from asgi_perf.queries import QueryMiddleware
from asgi_perf.ratelimit import RateLimitMiddleware
from asgi_perf.timing import TimingMiddleware
from tests.support import UvicornThread, call, make_scope, unique_prefix

PARSER = settings(max_examples=300, deadline=None)
STACK = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# Bytes a client can put in a header value (anything but what ends a field line), and the
# characters most likely to break a parser.
TRICKY = st.sampled_from(
    [b",", b";", b"=", b'"', b"\\", b" ", b"\t", b"q", b"0", b"1", b".", b"*", b"W/", b"{", b"}"]
)
HEADER_BYTES = st.one_of(
    st.binary(max_size=300),
    st.lists(st.one_of(TRICKY, st.binary(max_size=8)), max_size=40).map(b"".join),
)


# -- Accept-Encoding -----------------------------------------------------------------------------
CODINGS = ("zstd", "br", "gzip")


@PARSER
@given(HEADER_BYTES)
@example(b"gzip;q=0, *;q=1")
@example(b"gzip;q=1.0000000000000000001")
@example(b";q=1")
def test_accept_encoding_never_raises(value: bytes) -> None:
    weights = parse_accept_encoding(value)
    if weights is not None:
        assert all(0.0 <= q <= 1.0 for q in weights.values())
        assert all(name == name.lower() and name for name in weights)
    chosen = choose_encoding(value, CODINGS)
    assert chosen in (*CODINGS, "identity")
    if chosen != "identity":
        assert weights is not None
        assert weights.get(chosen, weights.get("*", 0.0)) > 0  # never a coding refused by q=0
    assert choose_encoding(value * 40, CODINGS) in (*CODINGS, "identity")  # uncached path


@PARSER
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["gzip", "br", "zstd", "*", "identity", "x-gzip"]),
            st.sampled_from(["", ";q=0", ";q=0.000", ";q=0.5", ";q=1"]),
        ),
        max_size=6,
    )
)
def test_accept_encoding_q_zero_is_never_chosen(items: list[tuple[str, str]]) -> None:
    value = ", ".join(name + q for name, q in items).encode()
    chosen = choose_encoding(value, CODINGS)
    refused = {("gzip" if n == "x-gzip" else n) for n, q in items if q in (";q=0", ";q=0.000")}
    # identity is the documented answer when nothing else is acceptable (RFC 9110 §12.5.3)
    if chosen != "identity" and chosen in refused:
        raise AssertionError(f"{chosen} chosen although the client refused it: {value!r}")


# -- Cache-Control, dates, If-None-Match ---------------------------------------------------------
@PARSER
@given(HEADER_BYTES, st.one_of(st.none(), HEADER_BYTES), HEADER_BYTES, HEADER_BYTES)
@example(b'max-age="99999999999999999999999"', None, b"", b"")
@example(b"max-age=-1, s-maxage=1e9", b"no-cache", b"Mon, 01 Jan 99999 00:00:00 GMT", b"x")
def test_cache_control_never_raises(
    cc_value: bytes, pragma: bytes | None, expires: bytes, date: bytes
) -> None:
    headers = [(b"cache-control", cc_value), (b"expires", expires), (b"date", date)]
    cc = parse_cache_control(headers)
    assert all(re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9a-z]+", name) for name in cc)
    directives = request_directives(cc, pragma)
    for number in (directives.max_age, directives.min_fresh, directives.max_stale):
        assert number is None or 0 <= number <= 2**31
    fresh = freshness(cc, headers, 200, 1_700_000_000.0, 300.0)
    assert math.isfinite(fresh.lifetime) and fresh.lifetime >= 0
    swr, sie = stale_windows(cc, 0.0, 0.0)
    assert swr >= 0 and sie >= 0
    reason = storable(200, cc, headers, fresh, credentials=True, cache_authenticated=False)
    assert reason is not None or "public" in cc or "s-maxage" in cc or "must-revalidate" in cc
    vary_names([(b"vary", cc_value)])
    parsed = parse_http_date(expires)
    assert parsed is None or math.isfinite(parsed)


OPAQUE = st.text(
    alphabet=st.characters(min_codepoint=0x23, max_codepoint=0x7E, exclude_characters='\\",'),
    min_size=1,
    max_size=20,
)


@PARSER
@given(HEADER_BYTES, HEADER_BYTES, st.one_of(st.none(), HEADER_BYTES), HEADER_BYTES)
def test_conditional_headers_never_raise(
    inm: bytes, etag: bytes, ims: bytes | None, last_modified: bytes
) -> None:
    assert isinstance(etag_matches(inm, etag), bool)
    assert isinstance(not_modified(inm, ims, etag, last_modified), bool)
    assert isinstance(not_modified(None, ims, etag, last_modified), bool)


@PARSER
@given(OPAQUE, st.lists(HEADER_BYTES.filter(lambda b: b"," not in b), max_size=4), st.booleans())
def test_if_none_match_finds_its_tag_among_junk(opaque: str, junk: list[bytes], weak: bool) -> None:
    etag = b'"' + opaque.encode() + b'"'
    listed = (b"W/" if weak else b"") + etag
    assert etag_matches(b", ".join([*junk, listed]), etag)


# -- Forwarded / X-Forwarded-For -----------------------------------------------------------------
TRUSTED = ClientIP(["10.0.0.0/8", "fd00::/8"])
ANY_HEADERS = st.lists(
    st.tuples(st.sampled_from([b"x-forwarded-for", b"forwarded", b"x-real-ip"]), HEADER_BYTES),
    max_size=4,
)


def _scope(peer: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    scope = make_scope(client=(peer, 1234))
    scope["headers"] = headers
    return scope


@PARSER
@given(ANY_HEADERS, st.sampled_from(["198.51.100.7", "2001:db8::1", "10.1.2.3", "not an ip"]))
def test_client_ip_never_raises_and_is_clean(headers: list[tuple[bytes, bytes]], peer: str) -> None:
    ip = TRUSTED(_scope(peer, headers))
    assert ip and ip.isprintable() and len(ip) <= 256
    for value in (v for _, v in headers):
        parse_forwarded(value.decode("latin-1"))


@PARSER
@given(ANY_HEADERS, st.sampled_from(["198.51.100.7", "2001:db8::1:2", "203.0.113.9"]))
def test_untrusted_peer_cannot_spoof_its_address(
    headers: list[tuple[bytes, bytes]], peer: str
) -> None:
    """Forwarding headers from a peer that is not a trusted proxy change nothing."""
    assert TRUSTED(_scope(peer, headers)) == TRUSTED(_scope(peer, []))
    assert ClientIP()(_scope(peer, headers)) == ClientIP()(_scope(peer, []))


IPV4 = st.ip_addresses(v=4).filter(lambda ip: not ip.is_private and not ip.is_loopback)


@PARSER
@given(
    st.lists(st.text(st.characters(exclude_characters=","), max_size=30), max_size=20),
    IPV4,
)
@example(["6.6.6.6"] * 64, ipaddress.ip_address("203.0.113.7"))
@example(["10.0.0.9"] * 10_000, ipaddress.ip_address("203.0.113.7"))
def test_trusted_proxy_chain_yields_the_address_it_appended(junk: list[str], client: Any) -> None:
    """Whatever the client wrote into X-Forwarded-For — however many hops, trusted-looking
    ones included — the rightmost untrusted hop, the one our trusted proxy appended, is the
    address counted (never the proxy's own)."""
    chain = ", ".join([*junk, str(client)]).encode("utf-8", "surrogatepass")
    assume(b"\r" not in chain and b"\n" not in chain)
    ip = TRUSTED(_scope("10.0.0.1", [(b"x-forwarded-for", chain)]))
    assert ip == str(client)


def test_forwarded_header_cannot_override_proxy_xff() -> None:
    """The usual proxy (nginx ``$proxy_add_x_forwarded_for``, AWS ALB, Cloudflare) appends to
    ``X-Forwarded-For`` and passes a client's own ``Forwarded`` header through untouched.
    The client's ``Forwarded`` must not then decide who it is (rate-limit evasion by
    spoofing): only the header the proxy writes (``proxy_header``) is read."""
    headers = [
        (b"forwarded", b"for=6.6.6.6"),  # written by the client
        (b"x-forwarded-for", b"203.0.113.7"),  # appended by the trusted proxy
    ]
    assert TRUSTED(_scope("10.0.0.1", headers)) == "203.0.113.7"


async def test_padded_forwarding_header_is_not_counted_under_the_proxy() -> None:
    """A client that pads its X-Forwarded-For past 64 hops is counted under the address our
    proxy appended: it neither shares nor exhausts a bucket with everyone else who pads."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    mw = RateLimitMiddleware(app, limit="2/minute", trusted_proxies="10.0.0.0/8")

    async def status(client: str, pad: int) -> int:
        xff = "6.6.6.6, " * pad + client  # the client wrote the padding; the proxy appended
        response = await call(
            mw, "GET", "/", headers=[("x-forwarded-for", xff)], client=("10.0.0.1", 1)
        )
        return response.status

    assert [await status("203.0.113.1", 100) for _ in range(3)] == [200, 200, 429]
    assert [await status("203.0.113.2", 5_000) for _ in range(2)] == [200, 200]
    assert await status("203.0.113.3", 0) == 200


def test_xff_cannot_override_a_forwarded_proxy() -> None:
    """The mirror case: a proxy that writes ``Forwarded`` leaves ``X-Forwarded-For`` alone."""
    client_ip = ClientIP(["10.0.0.0/8"], proxy_header="forwarded")
    headers = [
        (b"x-forwarded-for", b"6.6.6.6"),  # written by the client
        (b"forwarded", b'for=6.6.6.5, for="203.0.113.7:4711"'),  # the proxy appended the last
    ]
    assert client_ip(_scope("10.0.0.1", headers)) == "203.0.113.7"


# -- Idempotency-Key -----------------------------------------------------------------------------
@PARSER
@given(st.lists(HEADER_BYTES, min_size=1, max_size=2))
@example([b'"' + b"a" * 255 + b'"'])
@example([b"k" * 100_000])
@example([b'"line\nbreak"'])
def test_idempotency_key_parser(values: list[bytes]) -> None:
    try:
        key = parse_idempotency_key(values)
    except InvalidKey:
        return
    assert 1 <= len(key) <= MAX_KEY_LENGTH
    assert all(" " <= c <= "~" for c in key)


PRINTABLE_KEY = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=255
)


@PARSER
@given(PRINTABLE_KEY)
def test_idempotency_key_sf_string_round_trip(key: str) -> None:
    quoted = '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
    assert parse_idempotency_key([quoted.encode()]) == key


# -- Host: one valid line or no dedup ------------------------------------------------------------
HOSTS = st.lists(
    st.one_of(
        st.sampled_from([b"a.example", b"A.EXAMPLE:8080", b"[::1]:443", b"b.example", b""]),
        HEADER_BYTES,
    ),
    max_size=3,
)


@STACK
@given(HOSTS, st.sampled_from(["GET", "POST"]))
@example([b"evil.example", b"victim.example"], "GET")
@example([b"evil.example, victim.example"], "GET")
async def test_hostile_host_lines_never_merge_two_sites(hosts: list[bytes], method: str) -> None:
    """Whatever Host lines a client sends, dedup never raises; a request whose Host lines two
    readers could see as two sites (repeated or invalid: :func:`single_host` is ``None``) is
    never recorded nor replayed, and a replay only ever answers the same single host."""
    from asgi_perf._core.http import single_host

    seen: list[bytes | None] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        seen.append(single_host(scope["headers"]))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"%d" % len(seen)})

    mw = DedupMiddleware(app)
    scope = make_scope(method, "/")
    scope["headers"] = [(b"host", h) for h in hosts]
    replies = [await call(mw, method, scope=dict(scope, headers=list(scope["headers"])))]
    replies.append(await call(mw, method, scope=dict(scope, headers=list(scope["headers"]))))
    host = single_host(scope["headers"])
    assert [r.status for r in replies] == [200, 200]
    assert (replies[1].header("x-dedup") == "hit") is (host is not None)
    assert len(seen) == (1 if host is not None else 2)


# -- Server-Timing from inner layers -------------------------------------------------------------
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = r'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_PARAM = rf"{_TOKEN}[ \t]*=[ \t]*(?:{_TOKEN}|{_QUOTED})"
_METRIC = rf"{_TOKEN}(?:[ \t]*;[ \t]*{_PARAM})*"
SERVER_TIMING = re.compile(rf"{_METRIC}(?:[ \t]*,[ \t]*{_METRIC})*")
_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")

ENTRIES = st.lists(
    st.builds(
        TimingEntry,
        st.text(max_size=40),
        st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False)),
        st.one_of(st.none(), st.text(max_size=60)),
    ),
    min_size=1,
    max_size=5,
)


@PARSER
@given(ENTRIES)
@example([TimingEntry("", None, "")])
@example([TimingEntry("a b,c;d", 1e300, 'x"\\\r\n\x00\u20ac\ud800')])
def test_format_server_timing_is_valid_w3c_syntax(entries: list[TimingEntry]) -> None:
    value = format_server_timing(entries).decode("latin-1")
    assert SERVER_TIMING.fullmatch(value), value
    for metric, entry in zip(value.split(", "), entries, strict=False):
        if entry.dur is not None and entry.desc is None:
            assert _NUMBER.fullmatch(metric.split(";dur=")[1]), metric


@STACK
@given(ENTRIES)
async def test_server_timing_header_from_hostile_inner_layer(entries: list[TimingEntry]) -> None:
    """An inner layer's entries reach the client as one valid Server-Timing field value."""

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        for entry in entries:
            add_timing(scope, entry.name, entry.dur, entry.desc)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    await TimingMiddleware(inner, slow_threshold=None)(make_scope(), receive, send)
    values = [v for k, v in sent[0]["headers"] if k == b"server-timing"]
    assert len(values) == 1
    assert SERVER_TIMING.fullmatch(values[0].decode("latin-1"))
    assert not re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", values[0])


# -- ASGI message sequences through the full stack -----------------------------------------------
def _decode(body: bytes, coding: str | None) -> bytes:
    if coding is None:
        return body
    if coding == "gzip":
        return gzip.decompress(body)
    if coding == "br":
        return bytes(brotli.decompress(body))
    if coding == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(body)
    raise AssertionError(f"unexpected coding {coding}")


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted(min(c, len(data)) for c in cuts)
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@st.composite
def body_messages(draw: Any, kind: str, data: bytes) -> list[dict[str, Any]]:
    """``data`` as ``kind`` messages in random chunks (empty ones included); the last one
    says ``more_body: False``, leaves ``more_body`` out, or is an extra empty message that may
    also leave out ``body``."""
    pieces = _split(data, draw(st.lists(st.integers(0, len(data)), max_size=6)))
    ending = draw(st.sampled_from(["false", "missing", "extra-empty", "extra-no-body"]))
    messages: list[dict[str, Any]] = [
        {"type": kind, "body": piece, "more_body": True} for piece in pieces
    ]
    if ending == "false":
        messages[-1]["more_body"] = False
    elif ending == "missing":
        del messages[-1]["more_body"]
    elif ending == "extra-empty":
        messages.append({"type": kind, "body": b"", "more_body": False})
    else:
        messages.append({"type": kind})
    return messages


class PlanApp:
    """Echoes a POST body; answers a GET with a body fixed by its query. Either response goes
    out in the chunks of the current ``plan`` (set per example)."""

    def __init__(self) -> None:
        self.plan: list[int] = []
        self.ending = "false"
        self.received: list[bytes] = []

    @staticmethod
    def get_body(query: bytes) -> bytes:
        size = int(query.split(b"=")[1])
        return (b"line %d of the document; " % size * (size // 20 + 1))[:size]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        chunks = []
        while True:
            message = await receive()
            assert message["type"] == "http.request"
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        if scope["method"] == "POST":
            body = b"".join(chunks)
            self.received.append(body)
        else:
            body = self.get_body(scope["query_string"])
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")],
            }
        )
        messages = [
            {"type": "http.response.body", "body": piece, "more_body": True}
            for piece in _split(body, self.plan)
        ]
        if self.ending == "missing":
            del messages[-1]["more_body"]
        elif self.ending == "false":
            messages[-1]["more_body"] = False
        else:
            messages.append({"type": "http.response.body"})
        for message in messages:
            await send(message)


async def _drive(app: Any, scope: dict[str, Any], request: list[dict[str, Any]]) -> Any:
    pending = list(request)
    sent: list[dict[str, Any]] = []
    done = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            done.set()

    await asyncio.wait_for(app(scope, receive, send), 30)
    return sent


def _check_response(sent: list[dict[str, Any]], expected: bytes) -> None:
    assert sent[0]["type"] == "http.response.start"
    assert all(m["type"] == "http.response.body" for m in sent[1:])
    assert not sent[-1].get("more_body", False)
    assert not any(m.get("more_body", False) is False for m in sent[1:-1])  # ends once
    headers = {k.lower(): v for k, v in sent[0]["headers"]}
    body = b"".join(m.get("body", b"") for m in sent[1:])
    if b"content-length" in headers:
        assert int(headers[b"content-length"]) == len(body)
    coding = headers.get(b"content-encoding")
    assert _decode(body, None if coding is None else coding.decode()) == expected


STACK_ENV = {
    "ASGI_PERF_RATE_LIMIT_ENABLED": "true",
    "ASGI_PERF_RATE_LIMIT": "1000000/minute",
    "ASGI_PERF_DEDUP_ENABLED": "true",
    "ASGI_PERF_CACHE_ENABLED": "true",
    "ASGI_PERF_QUERIES_ENABLED": "true",
}
ACCEPT = st.sampled_from(["", "gzip", "br", "zstd", "gzip, br, zstd", "*;q=0", "identity"])


@pytest.fixture(scope="module")
def plan_stack() -> tuple[PlanApp, Any]:
    app = PlanApp()
    return app, from_env(app, environ={"ASGI_PERF_STORAGE_URL": "memory://", **STACK_ENV})


@STACK
@given(st.data(), st.binary(max_size=5000), ACCEPT)
async def test_post_chunking_through_full_stack(
    plan_stack: tuple[PlanApp, Any], data: Any, body: bytes, accept: str
) -> None:
    app, stack = plan_stack
    request = data.draw(body_messages("http.request", body))
    app.plan = data.draw(st.lists(st.integers(0, len(body)), max_size=6))
    app.ending = data.draw(st.sampled_from(["false", "missing", "extra"]))
    app.received.clear()
    scope = make_scope("POST", "/echo", headers=[("accept-encoding", accept)])
    sent = await _drive(stack, scope, request)
    _check_response(sent, body)
    assert app.received in ([], [body])  # the app read the body byte-exact (or was replayed)


@STACK
@given(st.data(), st.integers(0, 6000), ACCEPT)
async def test_get_chunking_through_full_stack(
    plan_stack: tuple[PlanApp, Any], data: Any, size: int, accept: str
) -> None:
    app, stack = plan_stack
    request = data.draw(body_messages("http.request", b""))
    app.plan = data.draw(st.lists(st.integers(0, size), max_size=6))
    app.ending = data.draw(st.sampled_from(["false", "missing", "extra"]))
    scope = make_scope("GET", "/doc", query=f"n={size}", headers=[("accept-encoding", accept)])
    sent = await _drive(stack, scope, request)
    _check_response(sent, PlanApp.get_body(b"n=%d" % size))


# -- what reaches Redis --------------------------------------------------------------------------
KEY_BOUND = 1024  # bytes; no key derived from client input may be longer
_UNSAFE = re.compile(rb"[\x00-\x20\x7f]")  # control characters, newlines, spaces


def _written(client: redis.Redis, prefix: str) -> Iterator[tuple[bool, bytes]]:
    """Every key under ``prefix`` (``True``), and every member of its sorted sets (the cache's
    key indexes, the rate limiter's windows: ``False``)."""
    pattern = prefix.replace("*", r"\*").replace("?", r"\?").replace("[", r"\[") + "*"
    for key in client.scan_iter(match=pattern, count=1000):
        yield True, key
        if client.type(key) == b"zset":
            for member in client.zrange(key, 0, -1):
                yield False, member


def _assert_clean(client: redis.Redis, prefix: str) -> int:
    count = 0
    for is_key, key in _written(client, prefix):
        count += 1
        assert not is_key or key.startswith(prefix.encode()), key[:200]
        assert not _UNSAFE.search(key), f"unescaped byte in Redis key {key[:300]!r}"
        assert len(key) <= KEY_BOUND, f"Redis key of {len(key)} bytes: {key[:200]!r}..."
    return count


def _explicit_stack(app: Any, url: str, prefix: str) -> Any:
    """The recommended order, each store-backed layer on Redis under ``prefix``."""
    inner = QueryMiddleware(app)
    inner = CompressionMiddleware(inner)
    inner = CacheMiddleware(inner, storage=url, key_prefix=prefix)
    inner = DedupMiddleware(inner, storage=url, key_prefix=prefix)
    inner = RateLimitMiddleware(
        inner,
        limit="1000000/minute",
        storage=url,
        key_prefix=prefix,
        user_key="x-api-key",
        trusted_proxies="127.0.0.0/8",
    )
    return TimingMiddleware(inner, slow_threshold=None)


async def _close_stack(stack: Any) -> None:
    layer = stack
    while hasattr(layer, "app"):
        publisher = getattr(layer, "publisher", None)  # the fleet publisher of from_env's stack
        if publisher is not None:
            await publisher.stop()
        for store in (getattr(layer, "store", None), getattr(layer, "limiter", None)):
            if store is not None:
                await store.close()
        layer = layer.app


async def _hostile_app(scope: Any, receive: Any, send: Any) -> None:
    while (await receive()).get("more_body", False):
        pass
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"cache-control", b"public, max-age=60"),
                (b"vary", b"accept-language, x-tenant"),
                (b"cache-tag", b"tag:" + scope["path"].encode("utf-8", "surrogateescape")[:50]),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"hello"})


# Named so that a failing example prints a label, not 100 kB.
BIG = {
    "@100k": b"k" * 100_000,
    "@100k-path": "/" + "p" * 100_000,
    "@100k-query": b"q=" + b"v" * 100_000,
}
NASTY = st.one_of(
    st.binary(max_size=200),
    st.sampled_from(
        [b"a\x00b", b"x\r\ny", b"\x1b[31mred", b"@100k", b"{tag}", b"\xff\xfe", b"*", b"?a=1", b"|"]
    ),
)
HEADER_NAMES = st.sampled_from(
    [
        "host",
        "accept-encoding",
        "accept-language",
        "x-tenant",
        "authorization",
        "cookie",
        "x-api-key",
        "x-forwarded-for",
        "forwarded",
        "idempotency-key",
        "if-none-match",
        "cache-control",
    ]
)
PATHS = st.one_of(
    st.text(max_size=60).map(lambda t: "/" + t),
    st.sampled_from(["/a\nb", "/\x00", "/{x}", "/%", "@100k-path", "/a?b", "/ s p"]),
)


@pytest.fixture(scope="module")
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


REDIS_EXAMPLES = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


async def _hostile_round(
    redis_url: str,
    redis_client: redis.Redis,
    method: str,
    path: str,
    query: bytes,
    headers: list[tuple[str, bytes]],
) -> None:
    """Send the request twice (a miss that stores, then a hit or replay) through the whole
    stack on Redis, then check every key it wrote."""
    prefix = unique_prefix("hostile")
    stack = _explicit_stack(_hostile_app, redis_url, prefix)
    path = str(BIG.get(path, path))
    query = bytes(BIG.get(query.decode("latin-1"), query))
    scope = make_scope(method, path, client=("127.0.0.1", 5000))
    scope["query_string"] = query
    scope["raw_path"] = path.encode("utf-8", "surrogateescape")
    scope["headers"] = [
        (name.encode(), BIG.get(value.decode("latin-1"), value)) for name, value in headers
    ]
    try:
        for _ in range(2):
            sent = await _drive(stack, dict(scope), [{"type": "http.request", "body": b"{}"}])
            assert sent[0]["status"] in (200, 304, 400, 409, 422)
        assert _assert_clean(redis_client, prefix) > 0
    finally:
        await _close_stack(stack)


@pytest.mark.redis
@REDIS_EXAMPLES
@given(
    method=st.sampled_from(["GET", "POST", "PUT"]),
    headers=st.lists(st.tuples(HEADER_NAMES, NASTY), min_size=1, max_size=6),
)
async def test_hostile_header_values_never_reach_redis_keys_unescaped(
    redis_url: str, redis_client: redis.Redis, method: str, headers: list[tuple[str, bytes]]
) -> None:
    """Host, Accept-Encoding, Vary-named headers, credentials, API keys, forwarding headers,
    Idempotency-Key: oversized, binary, with NUL/CR/LF/ESC — keys stay printable, bounded."""
    await _hostile_round(redis_url, redis_client, method, "/h", b"a=1", headers)


@pytest.mark.redis
@REDIS_EXAMPLES
@given(
    path=PATHS,
    query=st.one_of(st.binary(max_size=80), st.just(b"@100k-query"), st.just(b"a=\n")),
)
@example(path="/a\nb", query=b"")  # what a server makes of GET /a%0Ab
@example(path="@100k-path", query=b"")
async def test_hostile_paths_and_queries_never_reach_redis_keys_unescaped(
    redis_url: str, redis_client: redis.Redis, path: str, query: bytes
) -> None:
    """The decoded path (``%0A`` arrives as a newline) and the raw query, up to 100 kB:
    the cache percent-escapes both and cuts long ones with a hash (``cache._keys.key_part``)."""
    await _hostile_round(redis_url, redis_client, "GET", path, query, [])


@pytest.mark.redis
async def test_from_env_keeps_every_key_under_the_configured_prefix(
    redis_url: str, redis_client: redis.Redis, key_prefix: str
) -> None:
    """``ASGI_PERF_KEY_PREFIX`` namespaces every store-backed layer built by ``from_env``
    (the rate limiter's counters included, found by this client's unique address)."""
    stack = from_env(
        _hostile_app,
        environ={
            "ASGI_PERF_STORAGE_URL": redis_url,
            "ASGI_PERF_KEY_PREFIX": key_prefix,
            **STACK_ENV,
        },
    )
    peer = f"198.18.{secrets.randbelow(250)}.{secrets.randbelow(250)}"  # in no other test's keys
    try:
        sent = await _drive(
            stack, make_scope("GET", "/p", client=(peer, 4000)), [{"type": "http.request"}]
        )
        assert sent[0]["status"] == 200
        assert _assert_clean(redis_client, key_prefix) > 0
        mine = list(redis_client.scan_iter(match=f"*{peer}*", count=1000))
        assert mine, "the rate limiter wrote no key for this client"
        escaped = [k for k in mine if not k.startswith(key_prefix.encode())]
        assert not escaped, f"keys written outside ASGI_PERF_KEY_PREFIX: {escaped}"
    finally:
        stray = list(redis_client.scan_iter(match=f"asgi_perf:*{peer}*", count=1000))
        if stray:
            redis_client.delete(*stray)
        await _close_stack(stack)


# -- a real server that passes duplicate Host lines on ----------------------------------------
def _raw_get(port: int, head: bytes) -> bytes:
    """One HTTP/1.1 request written byte for byte (a client can send what httpx would not)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /page HTTP/1.1\r\n" + head + b"Connection: close\r\n\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_duplicate_host_lines_through_uvicorn_never_poison_the_cache() -> None:
    """uvicorn with httptools passes both ``Host`` lines on; Starlette builds ``request.url``
    from the first. The request bypasses the cache, so the next visitor gets their own page."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse
    from starlette.routing import Route

    async def page(request: Request) -> HTMLResponse:
        link = f'<a href="{request.url_for("page")}">home</a>'
        return HTMLResponse(link, headers={"Cache-Control": "max-age=60"})

    app = CacheMiddleware(Starlette(routes=[Route("/page", page, name="page")]))
    with UvicornThread(app, http="httptools") as server:
        evil = _raw_get(server.port, b"Host: evil.example\r\nHost: victim.example\r\n")
        assert b"evil.example" in evil and b"x-cache: BYPASS" in evil
        victim = _raw_get(server.port, b"Host: victim.example\r\n")
    assert b"evil.example" not in victim
    assert b"http://victim.example/page" in victim and b"x-cache: MISS" in victim
