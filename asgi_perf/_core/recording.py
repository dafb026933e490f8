"""Record a response as it passes and replay it later: deduplication's copies of responses.

:class:`ResponseRecorder` wraps ``send``: every message goes on to the client unchanged and at
once (nothing is held back), while a copy of the status, headers and body is kept up to
``max_body`` bytes. Past that, or for a ``pathsend``/``zerocopysend`` response, the copy is
dropped and the response is simply not recordable.

:class:`RecordedResponse` is the stored form: a plain length-prefixed binary layout, which
encodes and decodes several times faster than JSON with base64 bodies (measured in
``benchmarks``), and keeps header bytes, order and duplicates exactly.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable

from asgi_perf._core.asgi import Headers, Message, Send

__all__ = ["RecordedResponse", "ResponseRecorder", "encode_response"]

_MAGIC = b"AP1"
_HEAD = struct.Struct("!3sHdH")  # magic, status, created (unix time), header count
_FIELD = struct.Struct("!HI")  # name length, value length


#: Encoded fields seen lately: an app sends the same fields response after response, so
#: most fields are encoded once. Bounded: ``_KNOWN_MAX`` fields (then emptied) of at most
#: ``_KNOWN_SIZE`` bytes each.
_KNOWN: dict[tuple[bytes, bytes], bytes] = {}
_KNOWN_MAX = 1024
_KNOWN_SIZE = 256


def _encode_field(name: bytes, value: bytes) -> bytes:
    name_size, value_size = len(name), len(value)
    encoded = _FIELD.pack(name_size, value_size) + name + value
    if (
        name_size + value_size <= _KNOWN_SIZE
        and type(name) is bytes
        and type(value) is bytes  # hashable
    ):
        if len(_KNOWN) >= _KNOWN_MAX:
            _KNOWN.clear()
        _KNOWN[name, value] = encoded
    return encoded


def encode_response(status: int, headers: Headers, body: bytes, created: float) -> bytes:
    """``RecordedResponse(status, headers, body, created).encode()`` without making the
    object first (a hot path that records every response it passes on): the fields counted
    as they go (no ``len``), the head packed last, one join with the body (one copy)."""
    parts = [b""]
    known = _KNOWN
    count = 0
    for name, value in headers:
        count += 1
        try:
            parts += (known[name, value],)  # no call for a field seen lately
        except (KeyError, TypeError):  # new, or not hashable (a bytearray value)
            parts += (_encode_field(name, value),)
    parts[0] = _HEAD.pack(_MAGIC, status, created, count)
    parts += (body,)
    return b"".join(parts)


class RecordedResponse:
    """A complete response: status, headers (raw list), body, and when it was made."""

    __slots__ = ("body", "created", "headers", "status")

    def __init__(self, status: int, headers: Headers, body: bytes, created: float | None = None):
        self.status = status
        self.headers = headers
        self.body = body
        self.created = time.time() if created is None else created

    def encode(self) -> bytes:
        return encode_response(self.status, self.headers, self.body, self.created)

    @classmethod
    def decode(cls, data: bytes) -> RecordedResponse | None:
        """The response in ``data``, or ``None`` if it is not one (corrupt, other format)."""
        try:
            magic, status, created, count = _HEAD.unpack_from(data, 0)
            if magic != _MAGIC:
                return None
            offset = _HEAD.size
            headers: Headers = []
            for _ in range(count):
                name_len, value_len = _FIELD.unpack_from(data, offset)
                offset += _FIELD.size
                name = data[offset : offset + name_len]
                offset += name_len
                value = data[offset : offset + value_len]
                offset += value_len
                if len(value) != value_len:
                    return None
                headers.append((name, value))
            return cls(status, headers, data[offset:], created)
        except struct.error:
            return None

    async def replay(
        self,
        send: Send,
        extra_headers: Iterable[tuple[bytes, bytes]] = (),
        body: bool = True,
    ) -> None:
        """Send it as one start and one body message (no body for HEAD when ``body=False``)."""
        headers = [*self.headers, *extra_headers]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body if body else b""})


class ResponseRecorder:
    """``send`` wrapper that forwards everything and keeps a bounded copy.

    After the app returns: ``complete`` says the last body message passed; ``recordable``
    says the copy is whole (complete, within ``max_body``, no file-sending extension).
    """

    __slots__ = (
        "_parts",
        "_size",
        "complete",
        "headers",
        "max_body",
        "overflow",
        "send",
        "started",
        "status",
    )

    def __init__(self, send: Send, max_body: int) -> None:
        self.send = send
        self.max_body = max_body
        self.status = 0
        self.headers: Headers = []
        self._parts: list[bytes] = []
        self._size = 0
        self.started = False
        self.complete = False
        self.overflow = False

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.started = True
            self.status = message["status"]
            self.headers = list(message["headers"] if "headers" in message else ())
        elif kind == "http.response.body":  # (in, not get: no call per message)
            if not self.overflow:
                chunk = message["body"] if "body" in message else b""
                self._size += len(chunk)
                if self._size > self.max_body:
                    self.overflow = True
                    self._parts = []
                elif chunk:
                    self._parts.append(chunk)
            if not ("more_body" in message and message["more_body"]):
                self.complete = True
        else:  # http.response.pathsend / zerocopysend / trailers: not replayable by us
            self.overflow = True
            self._parts = []
            if kind in ("http.response.pathsend", "http.response.zerocopysend"):
                self.complete = True
        await self.send(message)

    @property
    def recordable(self) -> bool:
        return self.started and self.complete and not self.overflow

    def result(self) -> RecordedResponse | None:
        """The recorded response, or ``None`` when it is not :attr:`recordable`."""
        if not (self.started and self.complete and not self.overflow):  # recordable, inline
            return None
        return RecordedResponse(self.status, self.headers, b"".join(self._parts))
