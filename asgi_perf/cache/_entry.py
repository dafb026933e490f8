"""A stored response: how it is built from what the app sent, freshened by a ``304``,
encoded for a remote store and decoded again (an in-process store keeps the object).

Building and freshening are pure (they take the clock as an argument), so the rules of
RFC 9111 §3.1 (what is stored), §3.2/§4.3.4 (updating stored fields) and §4.2.3 (age) are
tested here without a store or an app.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import NamedTuple

import orjson

from asgi_perf._core.asgi import (
    LOWER,
    FieldIndex,
    Headers,
    field_index,
    get_header,
    header_tokens,
    lower_name,
)
from asgi_perf._core.http import replayable_headers
from asgi_perf._core.negotiation import IDENTITY
from asgi_perf.cache._rules import (
    EXPIRED,
    NOT_FRESH,
    CacheControl,
    Freshness,
    freshness,
    initial_age,
    response_directives,
    shareable_with_credentials,
    stale_windows,
    storable,
    strong_etag,
)
from asgi_perf.stores import Kept

__all__ = ["Entry", "EntryPolicy", "build_entry", "judge", "merge_not_modified"]

_FRAME_MAGIC = b"AC4"
_FRAME = struct.Struct("!3sI")  # magic, length of the JSON head that precedes the body
_NUL = b"\0"

# Flags of an entry (one int in the stored head).
SHARED = 1  # may serve requests with credentials (public, s-maxage, must-revalidate: §3.5)
NO_CACHE = 2  # must be revalidated before every use (§5.2.2.4)
NO_STALE = 4  # must never be served stale (must-revalidate & co, §4.2.4)
OWN_ETAG = 8  # the ETag came from the app (only then is it sent back to it as a validator)

_NEGOTIATED = frozenset(
    {"gzip", "x-gzip", "deflate", "br", "zstd", "compress", "x-compress", "dcb", "dcz"}
)
_SERVING_FIELDS = frozenset({b"etag", b"last-modified", b"date", b"content-encoding"})
#: Never stored besides the per-exchange fields: the tags are this cache's own, the age is
#: recomputed on every use.
NOT_STORED = frozenset({b"cache-tag", b"age"})
#: What a ``304`` must not change in a stored response (§3.2): its length and coding are
#: those of the stored body; the rest of the 304's fields replace the stored ones.
NOT_UPDATED = frozenset({b"content-length", b"content-encoding", b"content-range"})


class EntryPolicy(NamedTuple):
    """What building an entry needs to know besides the response."""

    targeted: Sequence[bytes] = ()  # targeted cache-control fields obeyed, first wins
    default_ttl: float | None = None  # for this path, when the deployment set one
    stale_while_revalidate: float = 0.0
    stale_if_error: float = 0.0
    credentials: bool = False  # the request carried Authorization / Cookie
    cache_authenticated: bool = False
    drop: frozenset[bytes] = NOT_STORED  # fields never stored (NOT_STORED + own targeted)


class Entry(Kept):
    """A decoded entry with what serving it needs precomputed (an in-process store keeps it
    as it is: :class:`~asgi_perf.stores.Kept`)."""

    __slots__ = (
        "body",
        "born",
        "coding",
        "count",
        "direct",
        "etag",
        "flags",
        "fresh_until",
        "headers",
        "initial",
        "last_modified",
        "lifetime",
        "negotiable",
        "plain",
        "response_time",
        "revalidatable",
        "sie",
        "size",
        "status",
        "swr",
        "whole_lifetime",
    )

    def __init__(
        self,
        status: int,
        headers: Headers,
        body: bytes,
        response_time: float,
        lifetime: float,
        initial: float,
        swr: float,
        sie: float,
        flags: int,
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.response_time = response_time
        self.lifetime = lifetime
        self.whole_lifetime = int(lifetime)  # a hit's Cache-Status ttl: this minus its age
        self.initial = initial
        self.swr = swr
        self.sie = sie
        self.flags = flags
        # The first of each field that serving needs, in one pass (names lowercased once).
        etag = modified = date = coding = None
        count = 0
        for name, value in headers:
            count += 1
            name = LOWER[name] if name in LOWER else lower_name(name)
            if name in _SERVING_FIELDS:
                if name == b"etag":
                    etag = value if etag is None else etag
                elif name == b"last-modified":
                    modified = value if modified is None else modified
                elif name == b"date":
                    date = value if date is None else date
                elif coding is None:
                    coding = value
        self.etag = etag
        # RFC 9111 §4.3.2: without Last-Modified, Date stands for it in If-Modified-Since.
        self.last_modified = modified or date
        self.coding = None if coding is None else coding.strip().lower().decode("latin-1")
        # It can be revalidated with the app: an ETag of the app's own, or a Last-Modified.
        self.revalidatable = bool(flags & OWN_ETAG and etag) or modified is not None
        self.plain = self.coding is None or self.coding == IDENTITY  # any client may have it
        # A coding clients negotiate: served only to those accepting it. (Any other coding
        # the app sends whoever asks; so does the cache.)
        self.negotiable = self.coding in _NEGOTIATED
        # Fresh, it may answer any plain request at once (the fast path's one test).
        self.direct = not flags & NO_CACHE and (self.plain or not self.negotiable)
        self.size = len(body)
        self.count = count  # of fields (what keeping the object costs depends on it)
        self.born = response_time - initial  # current age = now - born (§4.2.3)
        self.fresh_until = self.born + lifetime

    @property
    def shared(self) -> bool:
        return bool(self.flags & SHARED)

    @property
    def no_cache(self) -> bool:
        return bool(self.flags & NO_CACHE)

    @property
    def no_stale(self) -> bool:
        return bool(self.flags & NO_STALE)

    def age(self, now: float) -> float:
        return max(0.0, now - self.born)

    def validators(self) -> Headers:
        """The conditional fields that revalidate this entry with the app (§4.3.1): its own
        ``ETag`` and its ``Last-Modified``, exactly as the app sent them."""
        out: Headers = []
        if self.etag is not None and self.flags & OWN_ETAG:
            out.append((b"if-none-match", self.etag))
        modified = get_header(self.headers, b"last-modified")
        if modified is not None:
            out.append((b"if-modified-since", modified))
        return out

    def storage_ttl(self, now: float, keep_stale: float) -> float:
        """How long the store keeps it: its remaining freshness plus the longest time it may
        still be of use stale (its stale windows; ``keep_stale`` when it can be revalidated)."""
        stale_use = self.swr if self.swr > self.sie else self.sie  # (no call to max)
        if self.revalidatable and keep_stale > stale_use:
            stale_use = keep_stale
        age = now - self.born
        ttl = self.lifetime - (age if age > 0.0 else 0.0) + stale_use
        return ttl if ttl > 1.0 else 1.0

    def encode(self) -> bytes:
        """``AC4`` + JSON head length + JSON head (status, times, flags, headers) + the body.

        The headers are one latin-1 string, names and values joined by NUL (one decode, not
        one per name and value); a field holding a NUL itself (no valid field does) makes them
        a list of ``[name, value]`` pairs instead. Measured against the length-prefixed binary
        layout of :class:`~asgi_perf._core.recording.RecordedResponse`: decoding is cheaper,
        as orjson and ``split`` work in C where the binary layout needs a loop per header.
        """
        headers = self.headers
        joined = _NUL.join(map(_NUL.join, headers))
        if joined.count(_NUL) == 2 * len(headers) - 1:
            fields: str | list[list[str]] = joined.decode("latin-1")
        else:  # a NUL inside a field (or no field at all)
            fields = [[name.decode("latin-1"), value.decode("latin-1")] for name, value in headers]
        head = orjson.dumps(
            [
                self.status,
                self.response_time,
                self.lifetime,
                self.initial,
                self.swr,
                self.sie,
                self.flags,
                fields,
            ]
        )
        return _FRAME.pack(_FRAME_MAGIC, len(head)) + head + self.body

    @classmethod
    def decode(cls, data: bytes) -> Entry | None:
        """The entry in ``data``; ``None`` for anything else (a marker, another format, junk)."""
        try:
            magic, length = _FRAME.unpack_from(data)
            if magic != _FRAME_MAGIC:
                return None
            end = _FRAME.size + length
            status, response_time, lifetime, initial, swr, sie, flags, fields = orjson.loads(
                data[_FRAME.size : end]
            )
            if type(fields) is str:
                parts = fields.encode("latin-1").split(_NUL)
                headers = list(zip(parts[::2], parts[1::2], strict=True))
            else:
                headers = [
                    (name.encode("latin-1"), value.encode("latin-1")) for name, value in fields
                ]
            return cls(
                status,
                headers,
                data[end:],
                response_time,
                lifetime,
                initial,
                swr,
                sie,
                flags,
            )
        except (struct.error, ValueError, TypeError, AttributeError):
            return None


def _not_stored(
    index: dict[bytes, list[bytes]], headers: Headers, drop: frozenset[bytes]
) -> frozenset[bytes]:
    """§3.1: the fields not stored besides the per-exchange and hop-by-hop ones
    (:func:`replayable_headers`): ``drop`` and any field ``Connection`` names (``index``:
    ``headers`` by name)."""
    if b"connection" not in index:
        return drop
    return drop | frozenset(header_tokens(headers, b"connection"))


def _stored_headers(headers: Headers, drop: frozenset[bytes]) -> Headers:
    return replayable_headers(headers, _not_stored(field_index(headers), headers, drop))


def judge(
    status: int,
    headers: Headers,
    response_time: float,
    policy: EntryPolicy,
    index: FieldIndex | None = None,
) -> tuple[CacheControl, Freshness, str | None]:
    """The directives this cache obeys, the freshness they give and why the response is not
    stored (``None``: it is): what a fill decides when the response starts, and what
    :func:`build_entry` is given back instead of deciding it again. The rules read the
    fields from one ``index`` (:func:`field_index`; the caller's, when it has one)."""
    if index is None:
        index = field_index(headers)
    cc, _ = response_directives(headers, policy.targeted, index)
    if "private" in cc or ("no-store" in cc and "must-understand" not in cc):
        # Refused whatever its lifetime: storable() stops at these directives, having read
        # only whether the freshness is explicit (so none is computed; lifetime 0, unused).
        explicit = "s-maxage" in cc or "max-age" in cc or b"expires" in index
        fresh = EXPIRED if explicit else NOT_FRESH
    else:
        fresh = freshness(cc, headers, status, response_time, policy.default_ttl, index)
    reason = storable(
        status,
        cc,
        headers,
        fresh,
        credentials=policy.credentials,
        cache_authenticated=policy.cache_authenticated,
        index=index,
    )
    return cc, fresh, reason


def build_entry(
    status: int,
    headers: Headers,
    body: bytes,
    request_time: float,
    response_time: float,
    policy: EntryPolicy,
    own_etag: bool = True,
    received: Headers | None = None,
    judged: tuple[CacheControl, Freshness] | None = None,
    etag: bytes | None = None,
    index: FieldIndex | None = None,
) -> Entry | str:
    """The entry for a complete response, or why it is not stored (a reason of
    :func:`~asgi_perf.cache._rules.storable`). ``own_etag``: whether an ``ETag`` in
    ``headers`` is the app's; ``received``: the response the age is computed from when it is
    not ``headers`` itself (the ``304`` that freshened stored fields). ``judged``: the
    directives and freshness of a response :func:`judge` found storable; ``etag``: the strong
    ``ETag`` of ``body`` already computed (and sent) for it; ``index``: ``headers`` by name
    (:func:`field_index`), when the caller has it."""
    if index is None:  # (what is stored is read from it too: no lookup in the copy)
        index = field_index(headers)
    if judged is None:
        cc, fresh, reason = judge(status, headers, response_time, policy, index)
        if reason is not None:
            return reason
    else:
        cc, fresh = judged
    # (in first: the usual response has no Connection field, and then no call)
    dropped = _not_stored(index, headers, policy.drop) if b"connection" in index else policy.drop
    stored = replayable_headers(headers, dropped)
    flags = 0
    if b"etag" not in index or b"etag" in dropped:
        stored.append((b"etag", strong_etag(body) if etag is None else etag))
    elif own_etag:
        flags |= OWN_ETAG
    if status not in (204, 304) and (
        b"content-length" not in index or b"content-length" in dropped
    ):
        stored.append((b"content-length", str(len(body)).encode("ascii")))
    swr, sie = stale_windows(cc, policy.stale_while_revalidate, policy.stale_if_error)
    if shareable_with_credentials(cc):
        flags |= SHARED
    if "no-cache" in cc:
        flags |= NO_CACHE
    if "must-revalidate" in cc or "proxy-revalidate" in cc or "s-maxage" in cc or "no-cache" in cc:
        flags |= NO_STALE
    if received is None:
        age = initial_age(headers, request_time, response_time, index)
    else:
        age = initial_age(received, request_time, response_time)
    return Entry(status, stored, body, response_time, fresh.lifetime, age, swr, sie, flags)


def merge_not_modified(stored: Headers, update: Headers, drop: frozenset[bytes]) -> Headers:
    """The stored fields updated by a ``304`` (§3.2, §4.3.4): every field the 304 carries
    replaces all stored lines of that name, but for the length, coding and range of the
    stored body and what is never stored."""
    fresh = [(k, v) for k, v in _stored_headers(update, drop) if k.lower() not in NOT_UPDATED]
    if not fresh:
        return list(stored)
    replaced = {k.lower() for k, _ in fresh}
    return [(k, v) for k, v in stored if k.lower() not in replaced] + fresh
