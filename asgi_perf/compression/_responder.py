"""One response of :class:`~asgi_perf.compression.CompressionMiddleware`: the rewrite of its
start message (``Vary``, ``Content-Encoding``, ``Content-Length``, a weakened ``ETag``) and of
its body, one-shot or as a flushed stream, and the offer of its body as a dictionary.

The middleware decides at the start message whether a response could be encoded at all; a
:class:`Responder` owns the rest of such a response (see the middleware's docstring for the
rules it applies).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from asgi_perf._core.asgi import READY, Headers, Message, Scope, Send, merge_vary
from asgi_perf._core.context import SCOPE_KEY, add_timing
from asgi_perf._core.outage import Outage
from asgi_perf.compression._codecs import Codec
from asgi_perf.compression._dictionaries import Offer

__all__ = ["VARY_FIELD", "VARY_TOKENS", "Responder", "Shared", "vary_field", "with_vary"]

VARY_TOKENS = (b"Accept-Encoding",)

# Responder states.
_HOLD, _STREAM, _PASS = 0, 1, 2


_VARY_FIELDS: dict[tuple[bytes, ...], tuple[bytes, bytes]] = {}


def vary_field(vary: tuple[bytes, ...]) -> tuple[bytes, bytes]:
    """The ``Vary`` field listing ``vary``, made once per distinct list (there are as many as
    dictionary rules, plus the plain one)."""
    field = _VARY_FIELDS.get(vary)
    if field is None:
        field = _VARY_FIELDS[vary] = (b"vary", b", ".join(vary))
    return field


#: ``Vary: Accept-Encoding``, the field of every response not on a dictionary path.
VARY_FIELD = vary_field(VARY_TOKENS)


def with_vary(headers: Headers, has_vary: bool, vary: tuple[bytes, ...]) -> Headers:
    """``headers`` with the ``vary`` tokens: merged into the app's ``Vary`` (``headers`` is
    then a list of our own), else as one new field."""
    if not has_vary:
        return [*headers, vary_field(vary)]
    for token in vary:
        headers = merge_vary(headers, token)
    return headers


def _vary_start(start: Message, has_vary: bool, vary: tuple[bytes, ...]) -> Message:
    headers = start.get("headers", ())
    return {**start, "headers": with_vary(list(headers) if has_vary else headers, has_vary, vary)}


def _encoded_start(
    start: Message, token: bytes, length: int | None, has_vary: bool, vary: tuple[bytes, ...]
) -> Message:
    """The start message of the encoded representation (RFC 9110 §8.4, §8.6, §8.8.3)."""
    headers: Headers = []
    for key, value in start["headers"] if "headers" in start else ():
        name = key.lower()
        if name == b"content-length":
            continue
        if name == b"etag" and not value.startswith(b"W/"):
            value = b"W/" + value
        headers.append((key, value))
    if has_vary:
        headers = with_vary(headers, True, vary)
    else:  # (the usual field, made once: no call)
        headers.append(VARY_FIELD if vary is VARY_TOKENS else vary_field(vary))
    headers.append((b"content-encoding", token))
    if length is not None:
        headers.append((b"content-length", b"%d" % length))
    return {**start, "headers": headers}


def _recovered(outage: Outage) -> None:
    if outage.down:
        outage.ok()


async def _in_thread(fn: Any, data: bytes) -> bytes:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not asyncio (trio): compress inline
        return bytes(fn(data))
    return bytes(await loop.run_in_executor(None, fn, data))


class Shared:
    """What every response of one middleware shares: the settings a responder reads and the
    counters it adds to (the middleware's ``stats()`` reports them). Responders get this,
    never the middleware."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "compressed",
        "minimum_size",
        "outages",
        "streams",
        "thread_minimum_size",
        "threaded",
        "tokens",
    )

    def __init__(
        self,
        minimum_size: int,
        thread_minimum_size: int,
        tokens: dict[str, bytes],
        outages: dict[str, Outage],
    ) -> None:
        self.minimum_size = minimum_size
        self.thread_minimum_size = thread_minimum_size
        self.tokens = tokens  # coding name -> its Content-Encoding token
        self.outages = outages  # coding name -> its codec's failures
        self.compressed = dict.fromkeys(tokens, 0)
        self.streams = 0
        self.threaded = 0
        self.bytes_in = 0
        self.bytes_out = 0


class Responder:
    """One response: decide at the start message (or the first body), then rewrite or pass."""

    __slots__ = ("codec", "event_stream", "has_vary", "offer", "scope", "send_next", "shared",
                 "start", "state", "stream", "vary")  # fmt: skip

    def __init__(
        self,
        shared: Shared,
        scope: Scope,  # where a reader outside left its context (the codec's time goes there)
        codec: Codec | None,
        send: Send,
        has_vary: bool,
        event_stream: bool,
        vary: tuple[bytes, ...] = VARY_TOKENS,
        offer: Offer | None = None,
    ) -> None:
        self.shared = shared
        self.scope = scope
        self.codec = codec
        self.send_next = send
        self.has_vary = has_vary
        self.event_stream = event_stream
        self.vary = vary
        self.offer = offer
        self.state = _HOLD

    def on_start(self, message: Message) -> Awaitable[None]:
        """Hold the start message for the first body (nothing to wait for: no coroutine), or
        open an event stream at once."""
        if self.offer is not None:  # offered as a dictionary, whatever coding it gets
            headers = message.get("headers", ())
            offered = (b"use-as-dictionary", self.offer.rule.header)
            message = {**message, "headers": [*headers, offered]}
        self.start = message
        if self.event_stream:  # headers now (EventSource waits for them), events flushed
            start, _ = self._open_stream(b"")
            return self.send_next(start)
        return READY

    def send(self, message: Message) -> Awaitable[None]:
        """A plain function handing back the awaitable of what the message leads to: no
        coroutine of its own per message (a coroutine budget holds it:
        ``tests/unit/package/test_budgets.py``)."""
        if self.offer is not None:
            return self._offered(message)
        if self.state == _HOLD and message["type"] == "http.response.body":
            return self._on_first_body(message)  # (the usual second message: no dispatch call)
        return self._dispatch(message, None)

    async def _offered(self, message: Message) -> None:
        """A body offered as a dictionary is fed to it first (and stored before its end
        leaves: the next request may use it)."""
        offer = self.offer
        assert offer is not None
        if message["type"] == "http.response.body":
            offer.feed(message.get("body", b""))
            if not message.get("more_body", False):
                self.offer = None
                await offer.finish()
        await self._dispatch(message, offer)

    def _dispatch(self, message: Message, offer: Offer | None) -> Awaitable[None]:
        state = self.state
        if state == _PASS:
            return self.send_next(message)
        if message["type"] != "http.response.body":
            if state == _HOLD:  # pathsend or another extension: the app's response, intact
                self.state = _PASS
                self.start = offer.start if offer is not None else self.start
                self.offer = None
                return self._both(self.start, message)
            return self.send_next(message)
        if state == _HOLD:
            return self._on_first_body(message)
        return self._on_stream_body(message)

    async def _both(self, start: Message, message: Message) -> None:
        await self.send_next(start)
        await self.send_next(message)

    async def _on_first_body(self, message: Message) -> None:
        mw = self.shared
        # (``in`` and subscripts rather than ``get``: no call per field)
        body: bytes = message["body"] if "body" in message else b""
        more: bool = "more_body" in message and message["more_body"]
        self.state = _PASS
        if not more and len(body) < mw.minimum_size:
            await self.send_next(self.start)
            await self.send_next(message)
            return
        codec = self.codec
        if codec is None:
            await self.send_next(_vary_start(self.start, self.has_vary, self.vary))
            await self.send_next(message)
            return
        if more:
            start, encoded = self._open_stream(body)
            await self.send_next(start)
            if encoded:
                await self.send_next(
                    {"type": "http.response.body", "body": encoded, "more_body": True}
                )
            return
        # The clock is read only for a reader outside (Timing's compress entry).
        scope = self.scope
        reader = scope[SCOPE_KEY] if SCOPE_KEY in scope else None
        began = time.perf_counter() if reader is not None else 0.0
        try:
            if len(body) >= mw.thread_minimum_size:
                mw.threaded += 1
                encoded = await _in_thread(codec.compress, body)
            else:
                encoded = codec.compress(body)
        except Exception as exc:
            mw.outages[codec.name].failed(exc)
            encoded = body
        if len(encoded) >= len(body):
            await self.send_next(_vary_start(self.start, self.has_vary, self.vary))
            await self.send_next(message)
            return
        name = codec.name
        outage = mw.outages[name]
        if outage.down:  # (_recovered, inline)
            outage.ok()
        if reader is not None:
            reader.add("compress", (time.perf_counter() - began) * 1000.0, name)
        mw.compressed[name] += 1
        mw.bytes_in += len(body)
        mw.bytes_out += len(encoded)
        # With trailers coming, the body is framed as chunks: no Content-Length (as Starlette).
        start = self.start
        length = None if "trailers" in start and start["trailers"] else len(encoded)
        await self.send_next(
            _encoded_start(start, mw.tokens[name], length, self.has_vary, self.vary)
        )
        await self.send_next({"type": "http.response.body", "body": encoded, "more_body": False})

    def _open_stream(self, body: bytes) -> tuple[Message, bytes]:
        """Commit to an encoded stream: its start message and ``body`` encoded.

        If the codec fails here, nothing has left yet: the response goes out unencoded.
        """
        mw = self.shared
        codec = self.codec
        assert codec is not None
        began = time.perf_counter()
        try:
            self.stream = codec.stream()
            encoded = self.stream.compress(body) if body else b""
        except Exception as exc:
            mw.outages[codec.name].failed(exc)
            self.state = _PASS
            return _vary_start(self.start, self.has_vary, self.vary), body
        _recovered(mw.outages[codec.name])
        add_timing(self.scope, "compress", (time.perf_counter() - began) * 1000.0, codec.name)
        self.state = _STREAM
        mw.compressed[codec.name] += 1
        mw.streams += 1
        mw.bytes_in += len(body)
        mw.bytes_out += len(encoded)
        return _encoded_start(
            self.start, mw.tokens[codec.name], None, self.has_vary, self.vary
        ), encoded

    def _on_stream_body(self, message: Message) -> Awaitable[None]:
        """A body message of an encoded stream, encoded and handed on: a plain function (no
        coroutine per chunk), but for a chunk large enough to be encoded in a thread."""
        mw = self.shared
        stream = self.stream
        assert stream is not None and self.codec is not None
        body: bytes = message["body"] if "body" in message else b""
        more: bool = "more_body" in message and message["more_body"]
        if more and not body:
            return READY
        encode = stream.compress if more else stream.finish
        if len(body) >= mw.thread_minimum_size:
            return self._stream_in_thread(encode, body, more)
        try:
            encoded = encode(body)
        except Exception as exc:
            mw.outages[self.codec.name].failed(exc)
            raise
        return self._stream_on(body, encoded, more)

    async def _stream_in_thread(
        self, encode: Callable[[bytes], bytes], body: bytes, more: bool
    ) -> None:
        mw = self.shared
        mw.threaded += 1
        try:
            encoded = await _in_thread(encode, body)
        except Exception as exc:
            assert self.codec is not None
            mw.outages[self.codec.name].failed(exc)
            raise
        await self._stream_on(body, encoded, more)

    def _stream_on(self, body: bytes, encoded: bytes, more: bool) -> Awaitable[None]:
        mw = self.shared
        mw.bytes_in += len(body)
        mw.bytes_out += len(encoded)
        if not more:
            self.state = _PASS
            self.stream = None  # type: ignore[assignment]
        return self.send_next({"type": "http.response.body", "body": encoded, "more_body": more})
