"""ASGI types and helpers that work on the raw header list.

Every middleware in the package reads and rewrites headers on the ``[(bytes, bytes)]`` list
that ASGI carries, without building a dict per request: a dict costs more than a linear scan
of the ten-odd headers a typical message has, and it loses duplicates and order.

Header names given to these helpers must be lowercase ``bytes``. Names in the list are
compared case-insensitively, since ASGI only *recommends* lowercase names.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Iterable, MutableMapping
from typing import Any

import orjson

__all__ = [
    "LOWER",
    "READY",
    "ASGIApp",
    "FieldIndex",
    "Fields",
    "Headers",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "append_header",
    "field_index",
    "get_header",
    "get_header_values",
    "header_tokens",
    "lower_name",
    "merge_vary",
    "problem_body",
    "remove_headers",
    "send_response",
    "serve_lifespan",
    "set_header",
    "without",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]
FieldIndex = dict[bytes, list[bytes]]  # every value of a response's fields by lowercase name


def _spent() -> Generator[Any, None, None]:
    return
    yield  # (a generator function)


class _Ready:
    """An awaitable that is already done: what a ``send`` wrapper hands back for a message it
    holds (nothing to wait for), instead of a coroutine made only to return. Awaiting it
    steps a spent generator, which stops at once, however often it is stepped."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return _SPENT


_SPENT = _spent()
next(_SPENT, None)
READY: Awaitable[None] = _Ready()


class Fields(list[tuple[bytes, bytes]]):
    """Header fields that are read by name many times (a response the cache judges: freshness,
    storability, validators, ``Vary``…). The first lookup indexes them in one pass, each name
    lowercased once; :func:`get_header`, :func:`get_header_values` and :func:`header_tokens`
    then answer from the index. Appending drops the index (rebuilt on the next lookup)."""

    _index: dict[bytes, list[bytes]] | None = None

    def by_name(self) -> dict[bytes, list[bytes]]:
        index = self._index
        if index is None:
            index = {}
            lower = LOWER
            for key, value in self:
                name = lower[key] if key in lower else lower_name(key)
                if name in index:
                    index[name].append(value)
                else:
                    index[name] = [value]
            self._index = index
        return index

    def append(self, field: tuple[bytes, bytes], /) -> None:
        self._index = None
        super().append(field)


#: Header names as seen -> lowercased, for loops that test names without a call per field:
#: ``LOWER[k] if k in LOWER else lower_name(k)`` (bounded: names of apps, not of clients).
LOWER: dict[bytes, bytes] = {}
_LOWER_MAX = 512


def lower_name(name: bytes) -> bytes:
    """``name.lower()``, remembered in :data:`LOWER` while it has room."""
    lowered = name.lower()
    if len(LOWER) < _LOWER_MAX:
        LOWER[name] = lowered
    return lowered


def without(headers: Headers, drop: frozenset[bytes]) -> Headers:
    """A copy of ``headers`` without the fields named in ``drop`` (lowercase): on response
    fields (a bounded set of names) no call per field."""
    for name, _ in headers:
        if (LOWER[name] if name in LOWER else lower_name(name)) in drop:
            return [(k, v) for k, v in headers if k.lower() not in drop]
    return list(headers)


def get_header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """Return the first value of ``name``, or ``None``."""
    if type(headers) is Fields:
        values = headers._index
        if values is None:
            values = headers.by_name()
        return values[name][0] if name in values else None
    lower = LOWER  # (a response's names are there; a request's are lowercased as they come)
    for key, value in headers:
        if key == name or (lower[key] if key in lower else key.lower()) == name:
            return value
    return None


def field_index(headers: Iterable[tuple[bytes, bytes]]) -> dict[bytes, list[bytes]]:
    """Every value by lowercase name: the index of :class:`Fields` (made once), else one made
    now, for a reader of several names (one call, then ``in``); read it, never change it."""
    fields = headers if type(headers) is Fields else Fields(headers)
    index = fields._index
    return index if index is not None else fields.by_name()


def get_header_values(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    """Return every value of ``name`` in order (fields that may repeat, like ``Vary``)."""
    if type(headers) is Fields:
        values = headers._index
        if values is None:
            values = headers.by_name()
        return list(values[name]) if name in values else []
    return [value for key, value in headers if key == name or key.lower() == name]


def header_tokens(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    """Split every ``name`` field on commas into lowercase, stripped, non-empty tokens.

    RFC 9110 §5.3: a list-based field may be sent as several field lines; their values
    combine with commas, so ``Vary: a`` + ``Vary: b`` is ``Vary: a, b``.
    """
    tokens: list[bytes] = []
    if type(headers) is Fields:  # get_header_values inline: one call less
        index = headers._index
        if index is None:
            index = headers.by_name()
        values: Iterable[bytes] = index[name] if name in index else ()
    else:
        values = get_header_values(headers, name)
    for value in values:
        for part in value.split(b","):
            token = part.strip().lower()
            if token:
                tokens.append(token)
    return tokens


def remove_headers(headers: Headers, *names: bytes) -> Headers:
    """Return ``headers`` without any field named in ``names``."""
    return [(k, v) for k, v in headers if k.lower() not in names]


def set_header(headers: Headers, name: bytes, value: bytes) -> Headers:
    """Return ``headers`` with every ``name`` field replaced by one ``name: value``."""
    out = [(k, v) for k, v in headers if k != name and k.lower() != name]
    out.append((name, value))
    return out


def append_header(headers: Headers, name: bytes, value: bytes) -> Headers:
    """Return ``headers`` with one more ``name: value`` field (existing ones kept)."""
    return [*headers, (name, value)]


def merge_vary(headers: Headers, token: bytes) -> Headers:
    """Add ``token`` to ``Vary`` unless it is already there (or ``Vary: *``).

    Several ``Vary`` lines are folded into one, so downstream caches see a single list.
    """
    present = header_tokens(headers, b"vary")
    if token.lower() in present or b"*" in present:
        return headers
    others = [(k, v) for k, v in headers if k.lower() != b"vary"]
    values = [v.strip() for v in get_header_values(headers, b"vary") if v.strip()]
    values.append(token)
    others.append((b"vary", b", ".join(values)))
    return others


def problem_body(
    status: int, title: str, detail: str, type_: str = "about:blank", **extra: Any
) -> bytes:
    """An RFC 9457 ``application/problem+json`` document."""
    doc: dict[str, Any] = {"type": type_, "title": title, "status": status, "detail": detail}
    doc.update(extra)
    return orjson.dumps(doc)


async def send_response(
    send: Send,
    status: int,
    body: bytes = b"",
    headers: Iterable[tuple[bytes, bytes]] = (),
    content_type: bytes | None = None,
) -> None:
    """Send a complete response in two messages, with ``Content-Length`` set."""
    out: Headers = list(headers)
    if content_type is not None:
        out.append((b"content-type", content_type))
    out.append((b"content-length", str(len(body)).encode("latin-1")))
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def serve_lifespan(receive: Receive, send: Send) -> None:
    """Answer a ``lifespan`` scope for an app with nothing to start or stop."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
