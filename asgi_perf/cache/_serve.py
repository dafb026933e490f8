"""Answering from a stored entry, and the fields that say what the cache did.

``X-Cache`` (``HIT``, ``MISS``, ``STALE``, ``REVALIDATED``, ``BYPASS``) is the convenience
most tools read; ``Cache-Status`` (RFC 9211) is the standard one: ``hit``, ``fwd=<why>``,
``fwd-status``, ``ttl``, ``stored``, ``collapsed`` and, when enabled, ``key``.
"""

from __future__ import annotations

import re

from asgi_perf._core.asgi import Headers, Send
from asgi_perf.cache._entry import Entry
from asgi_perf.cache._rules import not_modified

__all__ = [
    "BYPASS",
    "HIT",
    "INTS",
    "MISS",
    "REVALIDATED",
    "STALE",
    "X_CACHE",
    "CacheStatus",
    "age_bytes",
    "byte_range",
    "replay",
]

X_CACHE = b"x-cache"
HIT, MISS, STALE, REVALIDATED, BYPASS = b"HIT", b"MISS", b"STALE", b"REVALIDATED", b"BYPASS"
#: The digits of 0 … 3599, so that the usual Age or ttl of a hit costs no call.
INTS = [str(i).encode("ascii") for i in range(3600)]
# RFC 9110 §15.4.5: what a 304 carries (plus Last-Modified as a validator).
_NOT_MODIFIED_FIELDS = frozenset(
    {b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary", b"last-modified"}
)
#: RFC 9211 §2.2 fwd= reasons as bytes (no encode per response).
_REASONS = {
    r: r.encode("ascii")
    for r in ("bypass", "method", "uri-miss", "vary-miss", "miss", "request", "stale")
}
_FORWARDED_MAX = 1024  # (reason, status, stored) fields remembered, at most
_RANGE = re.compile(rb"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*")


def age_bytes(seconds: float) -> bytes:
    """``Age`` / ``ttl`` as digits (memoised below an hour: the common case costs no call)."""
    whole = int(seconds)
    return INTS[whole] if 0 <= whole < 3600 else str(whole).encode("ascii")


def _sf_string(text: str) -> bytes:
    return b'"' + text.replace("\\", "\\\\").replace('"', '\\"').encode("ascii") + b'"'


class CacheStatus:
    """``Cache-Status`` members of one cache, named ``name`` (RFC 9211 §2)."""

    __slots__ = ("forwarded", "hit_prefix", "name", "with_key")

    def __init__(self, name: str, with_key: bool) -> None:
        token = re.fullmatch(r"[A-Za-z*][!#$%&'*+\-.^_`|~:/0-9A-Za-z]*", name)
        self.name = name.encode("ascii") if token else _sf_string(name)
        self.with_key = with_key
        self.hit_prefix = self.name + b"; hit; ttl="
        #: ``(reason, status, stored)`` -> the field :meth:`forward` made for them, when it
        #: holds nothing else (no key shown): a fill reads it first, without a call.
        self.forwarded: dict[tuple[str, int, bool], tuple[bytes, bytes]] = {}

    def hit(self, ttl: float, key: str = "") -> tuple[bytes, bytes]:
        value = self.hit_prefix + _ttl(ttl)
        if self.with_key and key:
            value += b"; key=" + _sf_string(key)
        return (b"cache-status", value)

    def forward(
        self,
        reason: str,
        status: int = 0,
        *,
        stored: bool = False,
        collapsed: bool = False,
        ttl: float | None = None,
        key: str = "",
    ) -> tuple[bytes, bytes]:
        """``fwd=`` one of ``bypass``, ``method``, ``uri-miss``, ``vary-miss``, ``miss``,
        ``request``, ``stale`` (RFC 9211 §2.2), with what the app answered."""
        value = (
            self.name
            + b"; fwd="
            + (_REASONS[reason] if reason in _REASONS else reason.encode("ascii"))
        )
        if status:
            value += b"; fwd-status=" + (INTS[status] if status < 3600 else str(status).encode())
        if ttl is not None:
            value += b"; ttl=" + _ttl(ttl)
        if stored:
            value += b"; stored"
        if collapsed:
            value += b"; collapsed"
        if self.with_key:
            if key:
                value += b"; key=" + _sf_string(key)
        elif ttl is None and not collapsed and len(self.forwarded) < _FORWARDED_MAX:
            self.forwarded[reason, status, stored] = (b"cache-status", value)
        return (b"cache-status", value)


def _ttl(seconds: float) -> bytes:
    return age_bytes(seconds) if seconds >= 0 else str(int(seconds)).encode("ascii")


def byte_range(value: bytes, size: int) -> tuple[int, int] | None:
    """One satisfiable ``bytes=`` range of a ``size``-byte body as (first, last); ``None``
    for anything else (several ranges, other units, unsatisfiable: the app's business)."""
    match = _RANGE.fullmatch(value)
    if match is None or size == 0:
        return None
    first, last = match.groups()
    if not first:
        if not last or int(last) == 0:
            return None
        return max(0, size - int(last)), size - 1  # suffix: the last N bytes
    start = int(first)
    end = size - 1 if not last else min(int(last), size - 1)
    return (start, end) if start <= end else None


async def replay(
    entry: Entry,
    send: Send,
    extra: Headers,
    *,
    age: float,
    head: bool = False,
    if_none_match: bytes | None = None,
    if_modified_since: bytes | None = None,
    span: tuple[int, int] | None = None,
) -> int:
    """Send ``entry`` (``extra`` fields appended, ``Age`` set); ``304`` when the request's own
    validators match it (RFC 9110 §13.2), ``206`` for a byte ``span``. Returns the status."""
    if (
        (if_none_match is not None or if_modified_since is not None)
        and 200 <= entry.status < 300
        and not_modified(if_none_match, if_modified_since, entry.etag, entry.last_modified)
    ):
        headers = [(k, v) for k, v in entry.headers if k.lower() in _NOT_MODIFIED_FIELDS]
        headers.append((b"age", age_bytes(age)))
        headers.extend(extra)
        await send({"type": "http.response.start", "status": 304, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return 304
    status, body = entry.status, entry.body
    headers = [*entry.headers, (b"age", age_bytes(age)), *extra]
    if span is not None:
        first, last = span
        status, body = 206, body[first : last + 1]
        headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
        total = str(entry.size).encode("ascii")
        content_range = b"bytes %d-%d/%s" % (first, last, total)
        headers += [(b"content-range", content_range), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})
    return status
