"""HTTP semantics shared by every layer that keys, stores or replays a response.

One place for what the cache and dedup must agree on: the response fields that describe one
exchange (never stored nor replayed, whoever added them: composition.md), the request's one
valid ``Host``, the canonical query and the injective fingerprint of a request's parts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from hashlib import blake2b as _blake2b

from asgi_perf._core.asgi import LOWER

__all__ = [
    "AMPERSAND",
    "HOP_BY_HOP",
    "PER_EXCHANGE",
    "QUESTION_MARK",
    "canonical_query",
    "fingerprint",
    "replayable_headers",
    "single_host",
    "text_fingerprint",
    "valid_host",
]

#: RFC 9110 §7.6.1 connection-specific fields (and the obsolete ones proxies still see).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authentication-info",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
#: Response fields that describe one exchange, not the resource: timing, query counts, the
#: rate-limit state and the cache/dedup verdicts of the request that produced the response.
#: A layer that stores or replays a response drops them; the replay gets its own.
PER_EXCHANGE = HOP_BY_HOP | frozenset(
    {
        b"server-timing",
        b"x-response-time",
        b"x-query-count",
        b"x-n-plus-one",
        b"x-cache",
        b"cache-status",
        b"x-dedup",
        b"idempotent-replayed",
        b"ratelimit",
        b"ratelimit-policy",
        b"x-ratelimit-limit",
        b"x-ratelimit-remaining",
        b"x-ratelimit-reset",
        b"x-asgi-perf-profile-id",
    }
)


def replayable_headers(
    headers: Iterable[tuple[bytes, bytes]], also: frozenset[bytes] = frozenset()
) -> list[tuple[bytes, bytes]]:
    """``headers`` without the per-exchange fields (and without ``also``), names lowercased
    only for the comparison: what a stored or replayed response may carry."""
    drop = PER_EXCHANGE | also if also else PER_EXCHANGE
    lower = LOWER  # response names, lowercased without a call once seen
    return [(n, v) for n, v in headers if (lower[n] if n in lower else n.lower()) not in drop]


# RFC 3986 §3.2.2 host (reg-name, IPv4, IP-literal) and optional port; no userinfo.
_HOST_RE = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-_~!$&'()*+,;=%]*)(?::[0-9]*)?")


def single_host(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The request's one valid ``Host`` value, lowercased; ``b""`` when it sent none (HTTP/1.0);
    ``None`` when it sent several or an invalid one.

    RFC 9112 §3.2: a request with more than one ``Host`` or an invalid one is answered 400 by a
    server, but some (uvicorn with httptools) pass both lines on, and frameworks then read the
    first while a naive key reads the last. Every layer that keys on the host uses this, so a
    request that two readers could see differently is never stored, keyed or replayed.
    """
    found: bytes | None = None
    for name, value in headers:
        if len(name) == 4 and name.lower() == b"host":
            if found is not None:
                return None
            found = value
    return b"" if found is None else valid_host(found)


def valid_host(value: bytes) -> bytes | None:
    """``value`` lowercased when it is a valid ``Host`` (at most 255 bytes), else ``None``."""
    if len(value) > 255 or _HOST_RE.fullmatch(value) is None:
        return None
    return value.lower()


#: ``&`` as an int, to test a query for it: ``AMPERSAND in query`` is a plain byte search,
#: where a ``bytes`` needle first has CPython's ``bytes.__contains__`` raise and clear a
#: TypeError (it tries the needle as an int first): some 1,800 CPU instructions per test.
AMPERSAND = ord("&")
QUESTION_MARK = ord("?")  # the same, for a raw path that holds its query


def canonical_query(query: bytes) -> bytes:
    """The query string with its parameters in a canonical order (stable sort by name)."""
    if AMPERSAND not in query:
        return query
    parts = [p for p in query.split(b"&") if p]
    parts.sort(key=lambda p: p.partition(b"=")[0])
    return b"&".join(parts)


def fingerprint(parts: Sequence[bytes], body: bytes = b"", raw: bool = False) -> str:
    """A 32-hex-digit digest identifying the request made of ``parts`` and ``body``.

    Injective, so no request can shift a boundary (say, move bytes from a header into the body,
    or craft a path that ends with another client's identity) to take on another request's
    fingerprint: the parts are joined by NUL when none holds one (HTTP fields, raw paths and
    queries cannot), else encoded as their ``repr``; either form determines the parts. The
    body's length, as 8 bytes, comes first, so where the parts end and the body starts is
    fixed too (``Cookie: s=ab`` + body ``cd`` is not ``Cookie: s=abc`` + body ``d``).

    ``raw``: for a request without a body, the injective encoding of the parts itself (as
    latin-1 text, starting with ``j`` or ``r``, so never equal to a digest) instead of its
    digest: a key for an in-process store, where hashing would only cost time.
    """
    data = b"\0".join(parts)
    if data.count(b"\0") == len(parts) - 1:
        data = b"j" + data  # no part holds a NUL: the separators alone delimit the parts
    else:
        data = b"r" + repr(tuple(parts)).encode("ascii")  # self-delimiting, slower
    if raw and not body:
        return data.decode("latin-1")
    digest = _blake2b(len(body).to_bytes(8, "big") + data, digest_size=16)
    if body:
        digest.update(body)
    return digest.hexdigest()


_NO_BODY = (0).to_bytes(8, "big")


def text_fingerprint(joined: str) -> str:
    """The digest of texts a key is made of, ``joined`` by NUL: :func:`fingerprint` of their
    UTF-8 encodings when none holds a NUL (key parts are escaped; tags stored before this form
    stay valid), in one encode and no check. A NUL inside a part would let two part lists
    share a digest: for a tag (its only use) that means an invalidation deleting more, never
    less."""
    return _blake2b(_NO_BODY + b"j" + joined.encode(), digest_size=16).hexdigest()
