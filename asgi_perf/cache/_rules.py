"""RFC 9111 (HTTP Caching) rules for a shared cache, as pure functions.

Nothing here does I/O or keeps state, so every rule is tested by a table in
``tests/test_cache_rules.py``. :mod:`asgi_perf.cache` applies them per request.

Sections cited are RFC 9111 unless marked RFC 9110 (HTTP Semantics) or RFC 5861 (the
``stale-while-revalidate`` / ``stale-if-error`` extensions).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from email.utils import parsedate_to_datetime
from functools import lru_cache
from typing import NamedTuple
from urllib.parse import quote

from asgi_perf._core.asgi import Headers, get_header_values, header_tokens

__all__ = [
    "CACHEABLE_STATUSES",
    "DEFAULT_BYPASS_HEADERS",
    "CacheControl",
    "RequestDirectives",
    "current_age",
    "delta_seconds",
    "escape_key_part",
    "etag_matches",
    "freshness_lifetime",
    "initial_age",
    "key_part",
    "not_modified",
    "parse_cache_control",
    "parse_http_date",
    "request_directives",
    "satisfies",
    "stale_windows",
    "storable",
    "strong_etag",
    "vary_names",
]

CacheControl = Mapping[str, "str | None"]

#: Statuses a shared cache may store here: the heuristically cacheable ones of RFC 9110
#: §15.1 minus 206 (no range support), which includes 404/405/410/414/501 but never 429.
CACHEABLE_STATUSES = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})

#: Request headers that change what some frameworks and proxies render (absolute URLs,
#: routing, method) yet are not in the key: a request carrying one bypasses the cache, so
#: it cannot plant an entry other clients receive (web cache poisoning). A header the
#: deployment legitimately sets on every request belongs in ``key_headers`` instead.
DEFAULT_BYPASS_HEADERS = (
    "forwarded",  # RFC 7239: host=, proto= change absolute URLs and redirects
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-server",
    "x-forwarded-scheme",
    "x-forwarded-prefix",
    "x-forwarded-port",
    "x-host",
    "x-original-host",
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
)

_DIRECTIVE = re.compile(
    r"""\s*([!#$%&'*+\-.^_`|~0-9A-Za-z]+)\s*(?:=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s"]*)))?\s*(?:,|$)"""
)
_EMPTY: CacheControl = {}
_MAX_DELTA = 2**31  # §1.2.2: larger delta-seconds are taken as this


@lru_cache(maxsize=512)
def _parse_cc(value: bytes) -> CacheControl:
    directives: dict[str, str | None] = {}
    for match in _DIRECTIVE.finditer(value.decode("latin-1")):
        name = match.group(1).lower()
        quoted, token = match.group(2), match.group(3)
        arg = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else token
        directives.setdefault(name, arg)  # §4.2.1: the first occurrence is used
    return directives


def parse_cache_control(headers: Iterable[tuple[bytes, bytes]]) -> CacheControl:
    """Every ``Cache-Control`` directive (§5.2): lowercase name → argument or ``None``.

    Field lines combine with commas (RFC 9110 §5.3); quoted arguments are unquoted, so
    ``private="set-cookie, x"`` keeps its comma. The first occurrence of a directive wins
    (§4.2.1). Unparseable fragments are skipped rather than failing the request. The result
    is shared between calls: treat it as read-only.
    """
    values = get_header_values(headers, b"cache-control")
    if not values:
        return _EMPTY
    return _parse_cc(values[0] if len(values) == 1 else b",".join(values))


def delta_seconds(value: str | None) -> int | None:
    """A ``delta-seconds`` argument (§1.2.2): digits only, capped at 2**31; else ``None``."""
    if value is None or not value.isdigit() or not value.isascii():
        return None
    return min(int(value), _MAX_DELTA)


@lru_cache(maxsize=256)
def parse_http_date(value: bytes) -> float | None:
    """An HTTP-date (RFC 9110 §5.6.7, all three formats) as a Unix time; ``None`` if invalid."""
    try:
        parsed = parsedate_to_datetime(value.decode("latin-1"))
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:  # RFC 850 / asctime forms carry no zone: they are GMT
        from datetime import timezone

        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def _date(headers: Headers, name: bytes) -> float | None:
    values = get_header_values(headers, name)
    return parse_http_date(values[0].strip()) if values else None


def freshness_lifetime(cc: CacheControl, headers: Headers, default_ttl: float, now: float) -> float:
    """Seconds the response is fresh for (§4.2.1), for a shared cache.

    ``s-maxage`` wins, then ``max-age``, then ``Expires`` minus ``Date`` (``now`` when the
    response has no valid ``Date``); a present but invalid ``Expires`` means already expired
    (§5.3). Only when the response names no freshness does ``default_ttl`` apply: it is this
    cache's configured policy, used in place of a heuristic (§4.2.2). An invalid ``max-age``
    or ``s-maxage`` argument is taken as 0 (stale), the conservative reading.
    """
    for directive in ("s-maxage", "max-age"):
        if directive in cc:
            seconds = delta_seconds(cc[directive])
            return 0.0 if seconds is None else float(seconds)
    expires_values = get_header_values(headers, b"expires")
    if expires_values:
        expires = parse_http_date(expires_values[0].strip())
        if expires is None:
            return 0.0
        date = _date(headers, b"date")
        return max(0.0, expires - (now if date is None else date))
    return default_ttl


def initial_age(headers: Headers, response_time: float) -> float:
    """``corrected_initial_age`` of §4.2.3, taking the response delay as zero (in-process).

    The larger of the ``Age`` the app sent and the apparent age ``response_time - Date``.
    """
    age = 0.0
    values = get_header_values(headers, b"age")
    if values:
        parsed = delta_seconds(values[0].strip().decode("latin-1"))
        if parsed is not None:
            age = float(parsed)
    date = _date(headers, b"date")
    apparent = 0.0 if date is None else max(0.0, response_time - date)
    return max(age, apparent)


def current_age(initial: float, response_time: float, now: float) -> float:
    """``current_age`` of §4.2.3: the initial age plus the time the entry has been resident."""
    return initial + max(0.0, now - response_time)


def stale_windows(cc: CacheControl, default_swr: float, default_sie: float) -> tuple[float, float]:
    """Seconds past expiry the entry may be served: (while revalidating, on error).

    RFC 5861 §3/§4 response directives override the configured defaults. ``must-revalidate``,
    ``proxy-revalidate`` and ``s-maxage`` (§5.2.2.2, §5.2.2.8, §5.2.2.10) and a response
    ``no-cache`` (§5.2.2.4) forbid serving it stale at all (§4.2.4).
    """
    if "must-revalidate" in cc or "proxy-revalidate" in cc or "s-maxage" in cc or "no-cache" in cc:
        return 0.0, 0.0
    swr = delta_seconds(cc.get("stale-while-revalidate"))
    sie = delta_seconds(cc.get("stale-if-error"))
    return (
        default_swr if swr is None else float(swr),
        default_sie if sie is None else float(sie),
    )


def vary_names(headers: Headers) -> tuple[str, ...] | None:
    """The request header names a response varies on (§4.1), sorted; ``None`` for ``Vary: *``."""
    tokens = header_tokens(headers, b"vary")
    if not tokens:
        return ()
    if b"*" in tokens:
        return None
    return tuple(sorted({token.decode("latin-1") for token in tokens}))


def storable(
    status: int,
    cc: CacheControl,
    headers: Headers,
    *,
    credentials: bool,
    cache_authenticated: bool,
) -> str | None:
    """Why a shared cache must not store this response (§3), or ``None`` when it may.

    - the status is not in :data:`CACHEABLE_STATUSES` (§3, final and understood);
    - ``no-store`` (§5.2.2.5) or ``private`` (§5.2.2.7; a shared cache drops the whole
      response rather than field-qualified parts);
    - ``no-cache`` (§5.2.2.4): it could only be reused after revalidation with the app,
      which this cache does by asking the app again, so storing gains nothing;
    - ``Set-Cookie``: one client's session must never reach another (RFC 6265 §8.6 advice);
    - ``Vary: *`` (§4.1): it can never be selected;
    - the request carried credentials (``Authorization`` or ``Cookie``) and the cache does
      not key by identity: only an explicit ``public`` makes it shareable (stricter than
      §3.5, which also admits ``s-maxage`` and ``must-revalidate``; cookies included
      because personalisation by cookie is the common case).
    """
    if status not in CACHEABLE_STATUSES:
        return "status"
    if "no-store" in cc:
        return "no-store"
    if "private" in cc:
        return "private"
    if "no-cache" in cc:
        return "no-cache"
    if get_header_values(headers, b"set-cookie"):
        return "set-cookie"
    if vary_names(headers) is None:
        return "vary-star"
    if credentials and not cache_authenticated and "public" not in cc:
        return "credentials"
    return None


class RequestDirectives(NamedTuple):
    """The request ``Cache-Control`` directives that govern reuse (§5.2.1)."""

    no_store: bool = False
    no_cache: bool = False
    only_if_cached: bool = False
    max_age: int | None = None
    min_fresh: int | None = None
    max_stale: int | None = None


_PLAIN = RequestDirectives()


def request_directives(cc: CacheControl, pragma: bytes | None = None) -> RequestDirectives:
    """Read §5.2.1 request directives; ``max-age=0`` is taken as ``no-cache``.

    ``Pragma: no-cache`` counts only when the request has no ``Cache-Control`` (§5.4).
    ``max-stale`` without a value means any staleness (§5.2.1.2). Invalid arguments are
    ignored (a malformed client header never fails the request).
    """
    if not cc:
        if pragma is not None and b"no-cache" in pragma.lower():
            return RequestDirectives(no_cache=True)
        return _PLAIN
    max_age = delta_seconds(cc.get("max-age"))
    max_stale: int | None = None
    if "max-stale" in cc:
        raw = cc["max-stale"]
        max_stale = _MAX_DELTA if raw is None else delta_seconds(raw)
    return RequestDirectives(
        no_store="no-store" in cc,
        no_cache="no-cache" in cc or max_age == 0,
        only_if_cached="only-if-cached" in cc,
        max_age=max_age,
        min_fresh=delta_seconds(cc.get("min-fresh")),
        max_stale=max_stale,
    )


def satisfies(age: float, lifetime: float, request: RequestDirectives) -> bool:
    """Whether a stored response may be served without going to the app (§4.2, §5.2.1).

    Fresh (``age < lifetime``), within the request's ``max-age`` and ``min-fresh``; or stale
    by no more than the request's ``max-stale``.
    """
    if request.no_cache:
        return False
    if request.max_age is not None and age > request.max_age:
        return False
    remaining = lifetime - age
    if request.min_fresh is not None and remaining < request.min_fresh:
        return False
    if remaining > 0:
        return True
    return request.max_stale is not None and -remaining <= request.max_stale


def _opaque(tag: bytes) -> bytes:
    tag = tag.strip()
    return tag[2:] if tag[:2] == b"W/" else tag


def etag_matches(if_none_match: bytes, etag: bytes) -> bool:
    """``If-None-Match`` against an entity tag by weak comparison (RFC 9110 §13.1.2, §8.8.3.2).

    ``*`` matches any current representation; otherwise any listed tag whose opaque part
    equals the ETag's, ignoring ``W/`` on either side.
    """
    value = if_none_match.strip()
    if value == b"*":
        return True
    wanted = _opaque(etag)
    return any(_opaque(candidate) == wanted for candidate in value.split(b","))


def not_modified(
    if_none_match: bytes | None,
    if_modified_since: bytes | None,
    etag: bytes | None,
    last_modified: bytes | None,
) -> bool:
    """Whether a ``GET``/``HEAD`` should be answered ``304 Not Modified`` (RFC 9110 §13.2.2).

    ``If-None-Match`` takes precedence: when present, ``If-Modified-Since`` is ignored. An
    ``If-Modified-Since`` counts only with a valid date and a stored ``Last-Modified`` no later
    than it (RFC 9110 §13.1.3); a malformed date is ignored.
    """
    if if_none_match is not None:
        return etag is not None and etag_matches(if_none_match, etag)
    if if_modified_since is None or last_modified is None:
        return False
    since = parse_http_date(if_modified_since.strip())
    modified = parse_http_date(last_modified.strip())
    return since is not None and modified is not None and modified <= since


def strong_etag(body: bytes) -> bytes:
    """A strong validator for a body the app gave none (RFC 9110 §8.8.3): a content hash."""
    return b'"' + hashlib.blake2b(body, digest_size=12).hexdigest().encode("ascii") + b'"'


_KEY_UNSAFE = re.compile(r"[^\x21-\x24\x26-\x3e\x40-\x7a\x7c\x7e]")
# Printable ASCII but % ? { } (see escape_key_part); quote() keeps letters, digits, "_.-~".
_KEY_SAFE = "".join(
    chr(c) for c in range(0x21, 0x7F) if chr(c) not in "%?{}" and not chr(c).isalnum()
)


def escape_key_part(text: str) -> str:
    """Make client-controlled ``text`` (a path, a query) safe inside a store key.

    Everything but printable ASCII is percent-encoded (UTF-8, lone surrogates included), and
    so are ``{``/``}`` (Redis Cluster hash tags), ``?`` (the separator before the query) and
    ``%`` itself, so the mapping is reversible: two different texts never share a key.
    """
    if _KEY_UNSAFE.search(text) is None:
        return text
    return quote(text.encode("utf-8", "surrogatepass"), safe=_KEY_SAFE)


def key_part(text: str, limit: int = 256) -> str:
    """:func:`escape_key_part`, kept within ``limit`` characters: a longer result becomes its
    first characters, ``?`` (which an escaped text never holds) and a hash of the whole."""
    escaped = escape_key_part(text)
    if len(escaped) <= limit:
        return escaped
    digest = hashlib.blake2b(escaped.encode("ascii"), digest_size=16).hexdigest()
    return escaped[: limit - 33] + "?" + digest
