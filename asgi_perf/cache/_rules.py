"""RFC 9111 (HTTP Caching) rules for a shared cache, as pure functions.

Nothing here does I/O or keeps state, so every rule is tested by a table in
``tests/unit/cache/test_cache_rules.py``; :mod:`asgi_perf.cache._decide` and the middleware
apply them.
Sections cited are RFC 9111 unless marked RFC 9110 (HTTP Semantics), RFC 5861
(``stale-while-revalidate`` / ``stale-if-error``) or RFC 9213 (targeted cache control).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import NamedTuple

from asgi_perf._core.asgi import (
    FieldIndex,
    Headers,
    field_index,
    get_header_values,
    header_tokens,
)
from asgi_perf.cache._dates import parse_http_date

__all__ = [
    "DEFAULT_BYPASS_HEADERS",
    "EXPIRED",
    "HEURISTIC_MAX",
    "HEURISTIC_STATUSES",
    "NOT_FRESH",
    "UNDERSTOOD_STATUSES",
    "CacheControl",
    "Freshness",
    "RequestDirectives",
    "age_value",
    "delta_seconds",
    "etag_matches",
    "freshness",
    "initial_age",
    "not_modified",
    "parse_cache_control",
    "parse_http_date",
    "request_directives",
    "response_directives",
    "shareable_with_credentials",
    "stale_windows",
    "storable",
    "strong_etag",
    "vary_names",
]

CacheControl = Mapping[str, "str | None"]

#: RFC 9110 §15.1: statuses a cache may reuse with heuristic freshness (or a default TTL).
HEURISTIC_STATUSES = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})
#: Final statuses whose semantics this cache knows (RFC 9110 §15): a response with
#: ``must-understand`` and one of them is stored despite ``no-store`` (§5.2.2.3).
UNDERSTOOD_STATUSES = frozenset(
    {200, 201, 202, 203, 204, 205, 206, 300, 301, 302, 303, 304, 305, 307, 308}
    | set(range(400, 418))
    | {421, 422, 426, 500, 501, 502, 503, 504, 505}
)
HEURISTIC_FRACTION = 0.1  # §4.2.2: "10% of the time since Last-Modified" is typical
HEURISTIC_MAX = 86_400.0  # … capped at a day

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


def parse_cache_control(
    headers: Iterable[tuple[bytes, bytes]], name: bytes = b"cache-control"
) -> CacheControl:
    """Every ``Cache-Control`` directive (§5.2): lowercase name → argument or ``None``.

    Field lines combine with commas (RFC 9110 §5.3); quoted arguments are unquoted, so
    ``private="set-cookie, x"`` keeps its comma. The first occurrence of a directive wins
    (§4.2.1). Unparseable fragments are skipped rather than failing the request. The result
    is shared between calls: treat it as read-only.
    """
    values = get_header_values(headers, name)
    if not values:
        return _EMPTY
    return _parse_cc(values[0] if len(values) == 1 else b",".join(values))


# RFC 8941 Dictionary, as RFC 9213 requires of a targeted field: key[=bare-item][;params].
_SF_KEY = r"[a-z*][a-z0-9_\-.*]*"
_SF_ITEM = (
    r"-?\d{1,15}(?:\.\d{1,3})?"  # integer, decimal
    r'|"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*"'  # string
    r"|[A-Za-z*][!#$%&'*+\-.^_`|~:/0-9A-Za-z]*"  # token
    r"|:[A-Za-z0-9+/=]*:|\?[01]"  # byte sequence, boolean
)
_SF_MEMBER = re.compile(rf"({_SF_KEY})(?:=({_SF_ITEM}))?((?:;{_SF_KEY}(?:=(?:{_SF_ITEM}))?)*)")


@lru_cache(maxsize=256)
def _parse_targeted(value: bytes) -> CacheControl | None:
    """A targeted field as cache directives; ``None`` when it is not a valid, non-empty
    Structured Field Dictionary (the cache must then ignore it: RFC 9213 §2.1)."""
    text = value.decode("latin-1").strip(" \t")
    if not text:
        return None
    directives: dict[str, str | None] = {}
    for member in re.split(r"[ \t]*,[ \t]*", text):
        match = _SF_MEMBER.fullmatch(member)
        if match is None:
            return None
        item = match.group(2)
        # A string or other non-integer where a number is expected stays unparseable for
        # delta_seconds (the directive then counts as invalid, not as its digits).
        directives.setdefault(match.group(1), None if item is None or item == "?1" else item)
    return directives


def response_directives(
    headers: Headers, targeted: Sequence[bytes], index: FieldIndex | None = None
) -> tuple[CacheControl, bool]:
    """The directives this cache obeys, and whether they come from a targeted field.

    RFC 9213 §2.1: the first of ``targeted`` (most specific first, e.g. this cache's own
    field, then ``CDN-Cache-Control``) with a valid non-empty value is used and
    ``Cache-Control`` is then ignored entirely; otherwise ``Cache-Control`` applies.
    (``index``: ``headers`` by name, when the caller has it: :func:`field_index`.)
    """
    if index is None:
        index = field_index(headers)
    for name in targeted:
        if name in index:
            values = index[name]
            parsed = _parse_targeted(values[0] if len(values) == 1 else b", ".join(values))
            if parsed is not None:
                return parsed, True
    if b"cache-control" not in index:
        return _EMPTY, False
    values = index[b"cache-control"]  # (parse_cache_control's lines, read from the index)
    return _parse_cc(values[0] if len(values) == 1 else b",".join(values)), False


def delta_seconds(value: str | None) -> int | None:
    """A ``delta-seconds`` argument (§1.2.2): digits only, capped at 2**31; else ``None``."""
    if value is None or not value.isdigit() or not value.isascii():
        return None
    return min(int(value), _MAX_DELTA)


def _date(headers: Headers, name: bytes) -> float | None:
    values = get_header_values(headers, name)
    return parse_http_date(values[0]) if values else None


class Freshness(NamedTuple):
    """How long a response is fresh (§4.2.1) and where that came from."""

    lifetime: float
    explicit: bool  # s-maxage, max-age or Expires said so (even "already stale")
    heuristic: bool = False  # §4.2.2 from Last-Modified, or the configured default TTL


#: No freshness at all; and explicitly none (already stale: an invalid argument or Expires).
#: Made once each: returning them costs no call.
NOT_FRESH = Freshness(0.0, False)
EXPIRED = Freshness(0.0, True)


#: The freshness of a ``max-age``/``s-maxage`` argument and of a default TTL, made once each
#: (bounded): the common responses then cost no call here.
_EXPLICIT: dict[str | None, Freshness] = {}
_DEFAULTED: dict[float, Freshness] = {}
_MEMO_MAX = 512


def freshness(
    cc: CacheControl,
    headers: Headers,
    status: int,
    now: float,
    default_ttl: float | None = None,
    index: FieldIndex | None = None,
) -> Freshness:
    """The freshness lifetime of a response for a shared cache (§4.2.1, §4.2.2).

    ``s-maxage`` > ``max-age`` > ``Expires`` - ``Date`` (``now`` without a valid ``Date``);
    an invalid argument or ``Expires`` (several lines, or not an HTTP-date) means already
    stale (§5.3). Without explicit freshness, a heuristically cacheable status (or any
    ``public`` one) gets ``default_ttl`` when the deployment configured one for it, else 10%
    of the time since ``Last-Modified`` (at most a day); otherwise nothing. ``index``: as
    for :func:`response_directives`.
    """
    for directive in ("s-maxage", "max-age"):
        if directive in cc:
            arg = cc[directive]
            if arg in _EXPLICIT:
                return _EXPLICIT[arg]
            seconds = delta_seconds(arg)
            fresh = Freshness(0.0 if seconds is None else float(seconds), True)
            if len(_EXPLICIT) < _MEMO_MAX:
                _EXPLICIT[arg] = fresh
            return fresh
    if index is None:  # (as for response_directives)
        expires = get_header_values(headers, b"expires")
    else:
        expires = index[b"expires"] if b"expires" in index else []
    if expires:
        at = parse_http_date(expires[0]) if len(expires) == 1 else None
        if at is None:
            return EXPIRED
        date = _date(headers, b"date")
        return Freshness(max(0.0, at - (now if date is None else date)), True)
    if status not in HEURISTIC_STATUSES and "public" not in cc:
        return NOT_FRESH
    if default_ttl is not None:
        if default_ttl in _DEFAULTED:  # (a deployment has a few)
            return _DEFAULTED[default_ttl]
        fresh = Freshness(default_ttl, False, True)
        if len(_DEFAULTED) < _MEMO_MAX:
            _DEFAULTED[default_ttl] = fresh
        return fresh
    modified = _date(headers, b"last-modified")
    if modified is None:
        return NOT_FRESH
    date = _date(headers, b"date")
    since = (now if date is None else date) - modified
    return Freshness(min(HEURISTIC_MAX, max(0.0, since * HEURISTIC_FRACTION)), False, True)


def age_value(headers: Headers) -> float:
    """The ``Age`` the response arrived with (§5.1): the first member of the first line;
    anything but digits (negative, decimal, text) is ignored."""
    values = get_header_values(headers, b"age")
    if not values:
        return 0.0
    parsed = delta_seconds(values[0].split(b",", 1)[0].strip().decode("latin-1"))
    return 0.0 if parsed is None else float(parsed)


def initial_age(
    headers: Headers, request_time: float, response_time: float, index: FieldIndex | None = None
) -> float:
    """``corrected_initial_age`` of §4.2.3: the larger of the apparent age
    (``response_time - Date``) and ``Age`` plus the time the app took to answer. (Fields
    are read by ``in`` and the larger values taken without ``max``: a call each; ``index``
    as for :func:`response_directives`.)"""
    if index is None:
        index = field_index(headers)
    date = parse_http_date(index[b"date"][0]) if b"date" in index else None
    apparent = 0.0 if date is None else response_time - date
    took = response_time - request_time
    corrected = (age_value(headers) if b"age" in index else 0.0) + (took if took > 0.0 else 0.0)
    return apparent if apparent > corrected else corrected


def stale_windows(cc: CacheControl, default_swr: float, default_sie: float) -> tuple[float, float]:
    """Seconds past expiry the entry may be served: (while revalidating, on error).

    RFC 5861 §3/§4 response directives override the configured defaults. ``must-revalidate``,
    ``proxy-revalidate``, ``s-maxage`` and ``no-cache`` (§5.2.2.2, .8, .10, .4) forbid serving
    it stale at all (§4.2.4).
    """
    if "must-revalidate" in cc or "proxy-revalidate" in cc or "s-maxage" in cc or "no-cache" in cc:
        return 0.0, 0.0
    # (in before reading: most responses have neither, and then nothing is called)
    swr = delta_seconds(cc["stale-while-revalidate"]) if "stale-while-revalidate" in cc else None
    sie = delta_seconds(cc["stale-if-error"]) if "stale-if-error" in cc else None
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


def shareable_with_credentials(cc: CacheControl) -> bool:
    """§3.5: a response to a request with ``Authorization`` may serve other requests only with
    ``public``, ``s-maxage`` or ``must-revalidate`` (applied to ``Cookie`` here as well)."""
    return "public" in cc or "s-maxage" in cc or "must-revalidate" in cc


def storable(
    status: int,
    cc: CacheControl,
    headers: Headers,
    fresh: Freshness,
    *,
    credentials: bool,
    cache_authenticated: bool,
    index: FieldIndex | None = None,
) -> str | None:
    """Why a shared cache must not (or need not) store this response (§3), or ``None``.

    - a ``206``/``304`` (partial content is not combined here), or a status that is not
      heuristically cacheable, without explicit freshness or ``public``;
    - ``no-store`` (§5.2.2.5) unless ``must-understand`` and the status is understood
      (§5.2.2.3); ``must-understand`` with a status it does not understand;
    - ``private`` (§5.2.2.7; the whole response rather than field-qualified parts);
    - ``Set-Cookie``: one client's session must never reach another (spec choice);
    - ``Vary: *`` (§4.1): it can never be selected;
    - a request with credentials, unless the cache keys by identity or §3.5 allows it;
    - nothing to reuse: no freshness, no validator to revalidate with, no stale window of
      its own (``no-cache`` without a validator: every use would be a full request anyway).
    """
    if status in (206, 304) or status < 200:
        return "status"
    if not fresh.explicit and "public" not in cc and status not in HEURISTIC_STATUSES:
        return "status"
    if "must-understand" in cc:
        if status not in UNDERSTOOD_STATUSES:
            return "status"
    elif "no-store" in cc:
        return "no-store"
    if "private" in cc:
        return "private"
    if index is None:  # (as for response_directives)
        index = field_index(headers)
    if b"set-cookie" in index:
        return "set-cookie"
    if b"vary" in index and vary_names(headers) is None:
        return "vary-star"
    if credentials and not cache_authenticated and not shareable_with_credentials(cc):
        return "credentials"
    validators = b"etag" in index or b"last-modified" in index
    if "no-cache" in cc and not validators:
        return "no-cache"  # every use needs the app, and there is nothing to revalidate with
    if fresh.lifetime > 0:
        return None
    if validators and (fresh.explicit or "no-cache" in cc or "must-revalidate" in cc):
        return None  # kept to be revalidated (§4.3) rather than fetched again in full
    swr, sie = stale_windows(cc, 0.0, 0.0)
    return None if swr or sie else "lifetime"


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
    ``If-Modified-Since`` counts only with a valid date and a ``last_modified`` (the stored
    ``Last-Modified``, else its ``Date``: RFC 9111 §4.3.2) no later than it.
    """
    if if_none_match is not None:
        return etag is not None and etag_matches(if_none_match, etag)
    if if_modified_since is None or last_modified is None:
        return False
    since = parse_http_date(if_modified_since)
    modified = parse_http_date(last_modified)
    return since is not None and modified is not None and modified <= since


def strong_etag(body: bytes) -> bytes:
    """A strong validator for a body the app gave none (RFC 9110 §8.8.3): a content hash."""
    return b'"' + hashlib.blake2b(body, digest_size=12).hexdigest().encode("ascii") + b'"'
