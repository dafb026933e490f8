"""The store keys of the cache, spelled in one place.

``e:{path}scheme|host|identity|keyed|variant?query``  an entry (a response)
``v:{path}scheme|host|identity|keyed?query``          the ``Vary`` names learned for it
``c:{path}…``                                          the claim of the fill of an entry

The path comes first, inside ``{}``: it is the Redis Cluster hash tag (all keys of a
resource on one node, as the claim and the record of one fill must be) and a path prefix
selects keys for invalidation. Every client-controlled part is escaped and bounded, so a
key is printable ASCII of at most ~900 bytes and two different requests never share one.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, urlsplit

from asgi_perf._core.asgi import Headers, Scope
from asgi_perf._core.http import (
    AMPERSAND,
    QUESTION_MARK,
    canonical_query,
    fingerprint,
    text_fingerprint,
)

__all__ = [
    "PRINTABLE",
    "entry_key",
    "escape_key_part",
    "key_part",
    "path_matcher",
    "raw_path",
    "same_origin_target",
    "stem",
    "stem_tail",
    "target_parts",
    "uri_tag",
    "vary_value",
]

_KEY_CHARS = r"\x21-\x24\x26-\x3e\x40-\x7a\x7c\x7e"
_KEY_UNSAFE = re.compile(f"[^{_KEY_CHARS}]")
_PART_LIMIT = 256
_KEY_PLAIN = re.compile(f"[{_KEY_CHARS}]{{0,{_PART_LIMIT}}}")  # needs no escaping nor bound
# Printable ASCII but % ? { } (see escape_key_part); quote() keeps letters, digits, "_.-~".
_KEY_SAFE = "".join(
    chr(c) for c in range(0x21, 0x7F) if chr(c) not in "%?{}" and not chr(c).isalnum()
)
#: Printable ASCII: what stays as it is when a decoded path is written as it would be sent.
PRINTABLE = "".join(chr(c) for c in range(0x21, 0x7F))


def escape_key_part(text: str) -> str:
    """Make client-controlled ``text`` (a path, a query) safe inside a store key.

    Everything but printable ASCII is percent-encoded (UTF-8, lone surrogates included), and
    so are ``{``/``}`` (Redis Cluster hash tags), ``?`` (the separator before the query) and
    ``%`` itself, so the mapping is reversible: two different texts never share a key.
    """
    if _KEY_UNSAFE.search(text) is None:
        return text
    return quote(text.encode("utf-8", "surrogatepass"), safe=_KEY_SAFE)


def key_part(text: str, limit: int = _PART_LIMIT) -> str:
    """:func:`escape_key_part`, kept within ``limit`` characters: a longer result becomes its
    first characters, ``?`` (which an escaped text never holds) and a hash of the whole."""
    if limit == _PART_LIMIT and _KEY_PLAIN.fullmatch(text) is not None:
        return text  # the usual path or query: one test, no escaping, short enough
    return _escaped_within(text, limit)


def _escaped_within(text: str, limit: int) -> str:
    """:func:`key_part` of a text known not to be a plain part (its test already made)."""
    escaped = escape_key_part(text)
    if len(escaped) <= limit:
        return escaped
    digest = hashlib.blake2b(escaped.encode("ascii"), digest_size=16).hexdigest()
    return escaped[: limit - 33] + "?" + digest


def raw_path(scope: Scope) -> str:
    """The path as the client sent it (``raw_path`` where the server gives it), so that
    ``/a%2Fb`` and ``/a/b`` are two resources, as they are to the app and to dedup."""
    raw = scope.get("raw_path")
    if not raw:
        return scope["path"]  # type: ignore[no-any-return]
    path: str = raw.partition(b"?")[0].decode("latin-1")  # some servers leave the query in
    return path


def stem(path: str, scheme: str | None, host: str, identity: str = "", keyed: str = "") -> str:
    """``{path}scheme|host|identity|keyed``: everything of an entry key but variant and query
    (``path`` as :func:`key_part` made it)."""
    return "{" + path + stem_tail(scheme, host, identity, keyed)


def stem_tail(scheme: str | None, host: str, identity: str = "", keyed: str = "") -> str:
    """What follows the path in :func:`stem` (the same for every path of an origin: the
    middleware remembers it per ``Host`` and scheme)."""
    if not scheme:
        scheme = "http"
    elif scheme != "http" and scheme != "https":  # two compares: no call
        scheme = key_part(scheme, 16)
    return "}" + scheme + "|" + host + "|" + identity + "|" + keyed


def target_parts(raw: Any, query: bytes) -> tuple[str, str]:
    """The path and query parts of a key for a request target: ``raw`` the path as the client
    sent it (``raw_path`` bytes, a query the server left in them dropped; else ``path``, a
    str: Any, so a type test narrows it without a call), ``query`` in canonical order; both
    escaped and bounded, in one frame (a clean part is one regex test)."""
    text = (
        raw
        if type(raw) is str
        else (raw.partition(b"?")[0] if QUESTION_MARK in raw else raw).decode("latin-1")
    )
    path = text if _KEY_PLAIN.fullmatch(text) is not None else _escaped_within(text, _PART_LIMIT)
    if not query:
        return path, ""
    # (one parameter needs no canonical order: no call)
    text = (canonical_query(query) if AMPERSAND in query else query).decode("latin-1")
    plain = _KEY_PLAIN.fullmatch(text) is not None
    return path, text if plain else _escaped_within(text, _PART_LIMIT)


def entry_key(stem_: str, variant: str, query: str) -> str:
    return "e:" + stem_ + "|" + variant + "?" + query


def uri_tag(scheme: str, host: str, path: str, query: str) -> str:
    """The store tag every variant of one target URI carries (RFC 9111 §4.4 invalidates them
    all at once); ``path`` and ``query`` as in the key (raw, escaped)."""
    return "uri:" + text_fingerprint(scheme + "\0" + host + "\0" + path + "\0" + query)


def vary_value(name: str, values: Iterable[bytes]) -> bytes:
    """A request field as the cache compares it for ``Vary`` (§4.1): lines combined, members
    stripped of whitespace; ``Accept-Language`` also case- and order-insensitive."""
    members = [m.strip() for value in values for m in value.split(b",")]
    members = [m for m in members if m]
    if name == "accept-language":
        members = sorted({m.lower().replace(b" ", b"") for m in members})
    return b",".join(members)


def path_matcher(patterns: Iterable[str]) -> re.Pattern[str] | None:
    """One regex for the ``paths`` option: ``/about`` (exact), ``/items/{id}`` (a route
    template: one segment per ``{…}``), ``/static/*`` (a prefix); ``None`` matches all."""
    parts: list[str] = []
    for pattern in patterns:
        prefix = pattern.endswith("*")
        body = pattern[:-1] if prefix else pattern
        regex = "".join(
            "[^/]+" if re.fullmatch(r"\{[^{}/]*\}", piece) else re.escape(piece)
            for piece in re.split(r"(\{[^{}/]*\})", body)
        )
        parts.append(regex + (".*" if prefix else ""))
    return re.compile("|".join(f"(?:{p})" for p in parts)) if parts else None


def same_origin_target(
    value: bytes, scheme: str, host: str, base_path: str
) -> tuple[str, str] | None:
    """The (raw path, query) of a ``Location``/``Content-Location`` value that names a
    resource of the same origin as the request (RFC 9111 §4.4); ``None`` otherwise."""
    try:
        parts = urlsplit(value.decode("latin-1").strip())
    except ValueError:
        return None
    if parts.scheme and parts.scheme.lower() != scheme:
        return None
    if parts.netloc and parts.netloc.lower() != host:
        return None
    path = parts.path
    if not path:
        path = base_path
    elif not path.startswith("/"):
        path = base_path.rsplit("/", 1)[0] + "/" + path
    return path, parts.query  # as sent, like raw_path: the same bytes give the same key


def headers_variant(names: tuple[str, ...], headers: Headers, coding: str | None) -> str:
    """The part of the key chosen by the learned ``Vary`` names (``coding``: the one a
    CompressionMiddleware would choose, standing in for ``Accept-Encoding``)."""
    parts: list[bytes] = []
    for name in names:
        if name == "accept-encoding":
            value = (coding or "identity").encode("ascii")
        else:
            wanted = name.encode("latin-1")
            value = vary_value(name, (v for k, v in headers if k == wanted or k.lower() == wanted))
        parts.append(name.encode("latin-1"))
        parts.append(value)
    return fingerprint(parts)[:16]
