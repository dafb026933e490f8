"""CacheMiddleware: a shared server-side HTTP cache by the rules of RFC 9111.

The protocol rules live in :mod:`asgi_perf.cache_rules` (pure, table-tested); this module
applies them per request, on a store from :mod:`asgi_perf.stores` (``memory://`` or Redis),
with :class:`~asgi_perf.singleflight.SingleFlight` for stampede protection and
:class:`~asgi_perf.recording.ResponseRecorder` for the bounded copy a fill keeps.

Per ``GET``/``HEAD`` request (other methods, lifespan and websocket pass straight through):

1. A request carrying a header from ``bypass_headers`` (``X-Forwarded-Host``,
   ``X-Original-URL``, … :data:`~asgi_perf.cache_rules.DEFAULT_BYPASS_HEADERS`), a
   ``Range``, ``If-Range``, ``If-Match`` or ``If-Unmodified-Since``, or
   ``Cache-Control: no-store`` goes to the app untouched except for ``X-Cache: BYPASS``.
2. The key: scheme, ``Host``, path, the query in canonical order, the ``key_headers``, the
   identity (a hash of ``Authorization`` and ``Cookie``) when ``cache_authenticated`` and the
   request has them; then the request headers named by the ``Vary`` learned for that resource
   (a small per-resource record, as Django does), ``Accept-Encoding`` reduced to the coding
   :func:`~asgi_perf.negotiation.choose_encoding` picks among the installed ones. ``GET`` and
   ``HEAD`` share entries: a ``HEAD`` miss asks the app for a ``GET`` and sends only headers.
3. A fresh entry (RFC 9111 §4.2, and the request's ``max-age``/``min-fresh``/``max-stale``)
   is served without calling the app, with ``Age`` and ``X-Cache: HIT``, or ``304`` when
   ``If-None-Match`` / ``If-Modified-Since`` match (RFC 9110 §13.2). An entry past its
   lifetime but within ``stale-while-revalidate`` is served (``X-Cache: STALE``) while one
   background request refreshes it.
4. Otherwise exactly one request per key (per process on memory, across processes on Redis)
   runs the app while the others wait for its entry (bounded by ``lock_timeout``, then they
   run the app themselves). A fill that turns out not storable leaves a *hit-for-miss* marker
   for ``hit_for_miss_ttl`` seconds: meanwhile requests for the key go straight to the app
   (``X-Cache: MISS``), neither queued nor recorded; the first one after it expires fills
   and learns again. A path whose answers were uncacheable by their headers three times in a
   row (``no-store``, ``private``, ``Set-Cookie``, a status not stored …; any queries) is
   passed straight through the same way, whatever the query, for ``hit_for_miss_ttl``
   seconds in this process, so an API of unique URLs that never caches costs almost nothing.
   When the app fails with a 5xx (or raises before responding) and a stale entry is within
   ``stale-if-error``, the stale entry is served instead.

Choices where the spec is silent (for the README):

- Requests with ``Authorization`` or ``Cookie`` and ``cache_authenticated=False`` are served
  only entries whose response said ``Cache-Control: public``; they never wait behind a fill
  and their own response is stored (shared) only when it is ``public`` (``X-Cache: BYPASS``
  otherwise). After a non-public answer to such a request, this process passes that
  resource's credentialed requests straight through for ``hit_for_miss_ttl`` seconds.
  With ``cache_authenticated=True`` the key holds a hash of both headers (so a changing
  analytics cookie fragments the entries: use ``key_headers`` and ``Vary`` instead if that
  matters).
- Request ``no-cache`` / ``max-age=0`` / ``Pragma: no-cache`` goes to the app without
  waiting behind other fills and stores the fresh response. ``only-if-cached`` with no usable
  entry answers ``504`` (RFC 9111 §5.2.1.7).
- A response ``no-cache`` is not stored (reuse would need revalidation, which is a full call
  here). ``s-maxage``/``must-revalidate``/``proxy-revalidate`` forbid serving stale.
- The app never sees the client's ``If-None-Match``/``If-Modified-Since`` on a fill (it must
  return a storable 200, not a 304); the cache answers the condition itself. A response the
  app sends in one body message gets its content-hash ``ETag`` already on the miss; a
  streamed one gets it (and a ``Content-Length``) from the first hit on.
- ``Cache-Tag`` values (comma- or space-separated) become store tags for
  ``invalidate(tags=…)``; the header never reaches the client, whatever path the response
  took. ``invalidate(path_prefix=…)`` matches the path as a string prefix, across hosts; the
  path is the one the client sent (``raw_path``, percent-encoded: ``/a%2Fb`` is not ``/a/b``),
  and a prefix with characters beyond printable ASCII is percent-encoded (UTF-8) first.
- Keys are printable ASCII of at most ~900 bytes: path and query are percent-escaped and,
  past 256 characters, cut and completed by a hash (so ``invalidate(path_prefix=…)`` matches
  prefixes of up to 223 escaped characters). A ``Host`` longer than 255 bytes or with
  characters no host name has (``?``, ``|``, ``{`` …) bypasses the cache, so it cannot fake
  the key's separators. ``Range``/``If-Range``/``If-Match``/``If-Unmodified-Since`` requests
  bypass it too (206 and 412 are the app's business). A header in both ``key_headers`` and
  ``bypass_headers`` is keyed (behind a proxy that always sends ``X-Forwarded-Host``, key it).
- The hop-by-hop fields of RFC 9111 §3.1 and any ``Age``/``X-Cache`` are not stored.
- Unsafe methods do not invalidate the target URI (RFC 9111 §4.4 is a SHOULD): use
  ``invalidate``; a prefix delete per ``POST`` would cost an index scan each.
- Store failures (``StoreUnavailable``) bypass the cache (``X-Cache: BYPASS``), logged once per
  outage and counted; the request is still served.
- Entries are stored as ``AC2`` + a JSON head (orjson) + the raw body (:meth:`_Entry.encode`
  says why not the binary layout of :mod:`asgi_perf.recording`). Decoded entries are kept
  in process (at most 1024 and a quarter of ``max_bytes``, 16 MiB cap) and reused while the
  store returns the same bytes, so a hit does not decode again. With Redis, ``local_ttl`` > 0
  serves them for that many seconds without asking Redis (an L1; ``invalidate`` clears only
  this process's L1 at once).
- The ``Vary`` names of a resource are kept in process: for ``memory://`` for good (only this
  process writes), for Redis for 10 s, re-read from Redis on any miss. A Redis hit therefore
  costs one round trip, two on the first request for a resource in a process.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
import uuid
from collections.abc import Iterable
from typing import Any, ClassVar
from urllib.parse import quote

import orjson

from asgi_perf._core import stats as _stats
from asgi_perf._core.asgi import (
    ASGIApp,
    Headers,
    Message,
    Receive,
    Scope,
    Send,
    get_header,
    get_header_values,
    problem_body,
    send_response,
)
from asgi_perf._core.config import (
    KEY_PREFIX_ENV,
    ConfigError,
    EnvConfigurable,
    EnvVar,
    to_bool,
    to_duration,
    to_int,
    to_list,
    to_size,
)
from asgi_perf._core.context import add_timing
from asgi_perf._core.http import canonical_query, fingerprint, replayable_headers, single_host
from asgi_perf._core.identity import hash_secret
from asgi_perf._core.negotiation import IDENTITY, choose_encoding
from asgi_perf._core.outage import Outage
from asgi_perf._core.recording import RecordedResponse, ResponseRecorder
from asgi_perf.cache._rules import (
    DEFAULT_BYPASS_HEADERS,
    CacheControl,
    RequestDirectives,
    current_age,
    escape_key_part,
    freshness_lifetime,
    initial_age,
    key_part,
    not_modified,
    parse_cache_control,
    request_directives,
    satisfies,
    stale_windows,
    storable,
    strong_etag,
    vary_names,
)
from asgi_perf.stores import MemoryStore, Store, StoreUnavailable, create_store
from asgi_perf.stores._singleflight import Lease, SingleFlight

__all__ = ["CacheMiddleware"]

logger = logging.getLogger("asgi_perf.cache")

LEASE_TTL = 10.0  # seconds a fill's claim lives without renewal (renewed while the app runs)
VARY_LOCAL_TTL = 10.0  # seconds this process trusts its copy of a resource's Vary names
_VARY_LOCAL_MAX = 10_000
_DECODED_MAX = 1024  # decoded entries kept in process …
_DECODED_MAX_BYTES = 16 * 1024 * 1024  # … and their bodies' total size (or max_bytes / 4)
_REFRESH_MAX = 100  # concurrent background revalidations per middleware

_FOREVER = float("inf")
_KINDS_MAX = 1024  # distinct header spellings / hosts memoised
_RESOURCES_MAX = 4096  # plain requests' keys memoised
_PATH_STREAK = 3  # uncacheable answers in a row that make a path pass straight through
# Reasons that come from how the app answers a path, not from one request or one body.
_PATH_REASONS = frozenset(
    {
        "status",
        "no-store",
        "private",
        "no-cache",
        "set-cookie",
        "vary-star",
        "event-stream",
        "lifetime",
    }
)
_AE_ONLY = ("accept-encoding",)
_NO_DIRECTIVES = RequestDirectives()
_PRINTABLE = "".join(chr(c) for c in range(0x21, 0x7F))  # kept as they are in a raw path
_AGES = [str(i).encode("ascii") for i in range(3600)]

_HIT_FOR_MISS = b"\x00hit-for-miss"
_FRAME_MAGIC = b"AC2"
_FRAME = struct.Struct("!3sI")  # magic, length of the JSON head that precedes the body

_X_CACHE = b"x-cache"
_HIT, _MISS, _STALE, _BYPASS = b"HIT", b"MISS", b"STALE", b"BYPASS"
_HIT_HEADER = (_X_CACHE, _HIT)
# Never stored besides the per-exchange fields (_core.http.PER_EXCHANGE): the tags are this
# cache's own, the age is recomputed on every hit.
_NOT_STORED = frozenset({b"cache-tag", b"age"})
# RFC 9110 §15.4.5: what a 304 carries (plus Last-Modified as a validator).
_NOT_MODIFIED_FIELDS = frozenset(
    {
        b"cache-control",
        b"content-location",
        b"date",
        b"etag",
        b"expires",
        b"vary",
        b"last-modified",
    }
)
_CONDITIONAL = frozenset({b"if-none-match", b"if-modified-since"})
# Ranges and preconditions are the app's business (RFC 9110 §13.1.1, §14.2): such requests
# go straight to it, so a 206 or a 412 never reaches the cache.
_RANGE_AND_PRECONDITIONS = (b"range", b"if-range", b"if-match", b"if-unmodified-since")

# Request header kinds read in one pass (0: of no interest).
_HOST, _AE, _CC, _PRAGMA, _INM, _IMS, _CRED, _KEYED, _BYPASS_HDR = range(1, 10)


def _methods(value: object, name: str) -> frozenset[str]:
    methods = frozenset(m.upper() for m in to_list(value, name))
    if not methods or not methods <= {"GET", "HEAD"}:
        raise ConfigError(name, value, "GET and/or HEAD (the methods a shared cache serves)")
    return methods


def _header_names(value: object, name: str) -> tuple[bytes, ...]:
    names = to_list(value, name)
    for item in names:
        if not item.isascii() or any(c in item for c in " \t:,"):
            raise ConfigError(name, value, "HTTP header names, comma-separated")
    return tuple(dict.fromkeys(item.lower().encode("ascii") for item in names))


def _positive(value: object, name: str) -> float:
    seconds = to_duration(value, name)
    if seconds <= 0:
        raise ConfigError(name, value, "a duration > 0: 5, 500ms, 2m")
    return seconds


def _age(age: float) -> bytes:
    seconds = max(0, int(age))  # a negative age (clocks of two machines) reads as 0
    return _AGES[seconds] if seconds < 3600 else str(seconds).encode("ascii")


def _raw_path(scope: Scope) -> str:
    """The path as the client sent it (``raw_path`` where the server gives it), so that
    ``/a%2Fb`` and ``/a/b`` are two resources, as they are to the app and to dedup."""
    raw = scope.get("raw_path")
    if not raw:
        return scope["path"]  # type: ignore[no-any-return]
    path: str = raw.partition(b"?")[0].decode("latin-1")  # some servers leave the query in
    return path


def _stem(scope: Scope, host: str, identity: str, keyed: str) -> str:
    """``{path}scheme|host|identity|keyed``: the path is the Redis Cluster hash tag (all keys of
    a resource on one node) and comes first, so a path prefix selects keys for invalidation.
    Every part is escaped and bounded: a key is printable ASCII of at most ~900 bytes."""
    scheme: str = scope.get("scheme") or "http"
    return (
        "{"
        + key_part(_raw_path(scope))
        + "}"
        + key_part(scheme, 16)
        + "|"
        + host
        + "|"
        + identity
        + "|"
        + keyed
    )


def _query(query: bytes) -> str:
    return key_part(canonical_query(query).decode("latin-1")) if query else ""


def _fresh_headers(headers: Headers) -> Headers:
    """What an entry keeps of a response: never a field that describes one exchange."""
    return replayable_headers(headers, _NOT_STORED)


def _tags(headers: Headers) -> list[str]:
    """``Cache-Tag`` values; a tag that is not printable ASCII of at most 256 characters is
    ignored (it becomes part of a store key)."""
    tags: list[str] = []
    for value in get_header_values(headers, b"cache-tag"):
        for tag in value.decode("latin-1").replace(",", " ").split():
            if len(tag) <= 256 and tag.isascii() and tag.isprintable():
                tags.append(tag)
    return tags


class _Entry:
    """A decoded cache entry with what serving it needs precomputed."""

    __slots__ = (
        "body",
        "born",
        "coding",
        "created",
        "etag",
        "fresh_until",
        "headers",
        "initial",
        "last_modified",
        "lifetime",
        "plain",
        "public",
        "sie",
        "size",
        "status",
        "swr",
    )

    def __init__(
        self,
        status: int,
        headers: Headers,
        body: bytes,
        created: float,
        lifetime: float,
        initial: float,
        swr: float,
        sie: float,
        public: bool,
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.created = created
        self.lifetime = lifetime
        self.initial = initial
        self.swr = swr
        self.sie = sie
        self.public = public
        self.etag = get_header(headers, b"etag")
        self.last_modified = get_header(headers, b"last-modified")
        coding = get_header(headers, b"content-encoding")
        self.coding = None if coding is None else coding.strip().lower().decode("latin-1")
        self.plain = self.coding is None or self.coding == IDENTITY  # any client may have it
        self.size = len(body)
        self.born = created - initial  # current age = now - born (§4.2.3)
        self.fresh_until = self.born + lifetime

    def encode(self) -> bytes:
        """``AC2`` + JSON head length + JSON head (status, times, headers) + the raw body.

        Measured against the length-prefixed binary layout of
        :class:`~asgi_perf.recording.RecordedResponse`: encoding costs the same, decoding a
        typical entry (8 headers) about 1 µs less (4.0 vs 4.9), as orjson parses the headers in C
        where the binary layout needs a Python loop per header.
        """
        head = orjson.dumps(
            [
                self.status,
                self.created,
                self.lifetime,
                self.initial,
                self.swr,
                self.sie,
                self.public,
                [[name.decode("latin-1"), value.decode("latin-1")] for name, value in self.headers],
            ]
        )
        return _FRAME.pack(_FRAME_MAGIC, len(head)) + head + self.body

    @classmethod
    def decode(cls, data: bytes) -> _Entry | None:
        """The entry in ``data``; ``None`` for anything else (a marker, another format, junk)."""
        try:
            magic, length = _FRAME.unpack_from(data)
            if magic != _FRAME_MAGIC:
                return None
            end = _FRAME.size + length
            status, created, lifetime, initial, swr, sie, public, headers = orjson.loads(
                data[_FRAME.size : end]
            )
            return cls(
                status,
                [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers],
                data[end:],
                created,
                lifetime,
                initial,
                swr,
                sie,
                public,
            )
        except (struct.error, ValueError, TypeError, AttributeError):
            return None

    def age(self, now: float) -> float:
        return current_age(self.initial, self.created, now)

    def storage_ttl(self, now: float) -> float:
        """How long the store keeps it: its remaining freshness plus the longest stale window."""
        return max(1.0, self.lifetime - self.age(now) + max(self.swr, self.sie))


class _Resource:
    """A plain request's keys, memoised by (path, query, host, scheme), with a reference to
    its resource's Vary cell."""

    __slots__ = ("base", "key", "query", "stem", "variants", "vary")

    def __init__(self, stem: str, query: str, vary: list[Any]) -> None:
        self.stem = stem
        self.query = query
        self.base = stem + "?" + query
        self.key = "e:" + stem + "|?" + query  # the entry key when nothing varies
        self.vary = vary  # [names or None, expiry]: shared with CacheMiddleware._vary
        self.variants: dict[str, str] = {}  # negotiated coding -> entry key (Vary: A-E)

    def variant(self, coding: str) -> str:
        key = self.variants[coding] = "e:" + self.stem + "|ae=" + coding + "?" + self.query
        return key


class _Request:
    """What the cache needs from one request, read in a single pass over its headers."""

    __slots__ = (
        "accept_encoding",
        "base",
        "credentials",
        "directives",
        "head",
        "headers",
        "if_modified_since",
        "if_none_match",
        "prefetched",
        "query",
        "scope",
        "stem",
    )

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self.headers: Headers = scope["headers"]
        self.head = scope["method"] == "HEAD"
        self.stem = ""  # "{path}scheme|host|identity|keyed headers": no "?" in it
        self.query = ""  # canonical query string, always last in a key
        self.base = ""  # stem + "?" + query: the resource (its Vary record)
        self.credentials = False
        self.directives = _NO_DIRECTIVES
        self.if_none_match: bytes | None = None
        self.if_modified_since: bytes | None = None
        self.accept_encoding: bytes | None = None
        self.prefetched: tuple[str, _Entry | bytes | None] | None = None

    @property
    def conditional(self) -> bool:
        return self.if_none_match is not None or self.if_modified_since is not None

    def unconditional_get(self) -> _Request:
        """This request as a plain ``GET`` with the same key (for a background refresh)."""
        scope = dict(self.scope)
        scope["method"] = "GET"
        scope["headers"] = [(k, v) for k, v in self.headers if k.lower() not in _CONDITIONAL]
        copy = _Request(scope)
        for name in ("stem", "query", "base", "credentials", "directives", "accept_encoding"):
            setattr(copy, name, getattr(self, name))
        return copy


class CacheMiddleware(EnvConfigurable):
    """A shared HTTP cache in front of ``app`` (see the module docstring for the rules)."""

    ENV_ENABLED: ClassVar[tuple[str, bool] | None] = ("ASGI_PERF_CACHE_ENABLED", False)
    ENV_STORAGE: ClassVar[bool] = True
    ENV_VARS: ClassVar[tuple[EnvVar, ...]] = (
        EnvVar("ASGI_PERF_CACHE_TTL", "ttl", to_duration),
        EnvVar("ASGI_PERF_CACHE_MAX_ENTRIES", "max_entries", lambda v, n: to_int(v, n, minimum=1)),
        EnvVar("ASGI_PERF_CACHE_MAX_BYTES", "max_bytes", to_size),
        EnvVar("ASGI_PERF_CACHE_MAX_BODY_SIZE", "max_body_size", to_size),
        EnvVar("ASGI_PERF_CACHE_METHODS", "methods", to_list),
        EnvVar("ASGI_PERF_CACHE_KEY_HEADERS", "key_headers", to_list),
        EnvVar("ASGI_PERF_CACHE_AUTHENTICATED", "cache_authenticated", to_bool),
        EnvVar("ASGI_PERF_CACHE_STALE_WHILE_REVALIDATE", "stale_while_revalidate", to_duration),
        EnvVar("ASGI_PERF_CACHE_STALE_IF_ERROR", "stale_if_error", to_duration),
        EnvVar("ASGI_PERF_CACHE_LOCK_TIMEOUT", "lock_timeout", _positive),
        EnvVar("ASGI_PERF_CACHE_HIT_FOR_MISS_TTL", "hit_for_miss_ttl", _positive),
        EnvVar("ASGI_PERF_CACHE_LOCAL_TTL", "local_ttl", to_duration),
        EnvVar("ASGI_PERF_CACHE_BYPASS_HEADERS", "bypass_headers", to_list),
        KEY_PREFIX_ENV,
    )

    def __init__(
        self,
        app: ASGIApp,
        *,
        ttl: float | str = 300.0,
        storage: str | Store = "memory://",
        methods: Iterable[str] | str = ("GET", "HEAD"),
        max_entries: int = 10_000,
        max_bytes: int | str = 64 * 1024 * 1024,
        max_body_size: int | str = 1024 * 1024,
        key_headers: Iterable[str] | str = (),
        cache_authenticated: bool = False,
        stale_while_revalidate: float | str = 0.0,
        stale_if_error: float | str = 0.0,
        lock_timeout: float | str = 5.0,
        hit_for_miss_ttl: float | str = 10.0,
        local_ttl: float | str = 0.0,
        bypass_headers: Iterable[str] | str = DEFAULT_BYPASS_HEADERS,
        key_prefix: str = "asgi_perf:",
    ) -> None:
        self.app = app
        self.ttl = to_duration(ttl, "ttl")
        self.methods = _methods(methods, "methods")
        self.max_entries = to_int(max_entries, "max_entries", minimum=1)
        self.max_bytes = to_size(max_bytes, "max_bytes")
        self.max_body_size = to_size(max_body_size, "max_body_size")
        self.key_headers = _header_names(key_headers, "key_headers")
        self.cache_authenticated = to_bool(cache_authenticated, "cache_authenticated")
        self.stale_while_revalidate = to_duration(stale_while_revalidate, "stale_while_revalidate")
        self.stale_if_error = to_duration(stale_if_error, "stale_if_error")
        self.lock_timeout = _positive(lock_timeout, "lock_timeout")
        self.hit_for_miss_ttl = _positive(hit_for_miss_ttl, "hit_for_miss_ttl")
        self.local_ttl = to_duration(local_ttl, "local_ttl")
        # A header both keyed and listed for bypass is keyed: it cannot poison its own entry.
        self.bypass_headers = frozenset(_header_names(bypass_headers, "bypass_headers")) - set(
            self.key_headers
        )
        if not isinstance(key_prefix, str):
            raise ConfigError("key_prefix", key_prefix, "a string such as 'asgi_perf:'")
        self.store = create_store(
            storage,
            prefix=key_prefix + "cache:",
            max_entries=self.max_entries,
            max_bytes=self.max_bytes,
            name="storage",
        )
        # The memory store answers without a coroutine on the hit path.
        self._get_nowait = self.store.get_nowait if type(self.store) is MemoryStore else None
        self.flight = SingleFlight(self.store, lease_ttl=LEASE_TTL, wait_timeout=self.lock_timeout)
        self.outage = Outage(logger, f"{self.store.kind} store")
        self._hosts: dict[bytes, str] = {}
        self._boring: set[bytes] = set()
        self._codings: dict[bytes | None, str] = {}
        self._not_shared: dict[str, float] = {}  # base -> until (credentialed, not public)
        self._uncacheable_paths: dict[str, list[Any]] = {}  # path -> [streak, until]
        self._resources: dict[tuple[Any, bytes, bytes, str | None], _Resource] = {}
        self._kinds: dict[bytes, int] = {
            b"accept-encoding": _AE,
            b"cache-control": _CC,
            b"pragma": _PRAGMA,
            b"if-none-match": _INM,
            b"if-modified-since": _IMS,
            b"authorization": _CRED,
            b"cookie": _CRED,
            b"host": _HOST,
        }
        for name in (*self.bypass_headers, *_RANGE_AND_PRECONDITIONS):
            self._kinds[name] = _BYPASS_HDR
        for name in self.key_headers:
            self._kinds.setdefault(name, _KEYED)
        self._encodings: tuple[str, ...] | None = None
        # base -> [Vary names or None (unknown), expiry]; cells are shared with _Resource
        self._vary: dict[str, list[Any]] = {}
        self._decoded: dict[str, tuple[bytes, _Entry, float]] = {}
        self._decoded_bytes = 0
        # Decoded bodies are copies: a quarter of the memory bound at most (16 MiB cap).
        self._decoded_max_bytes = min(_DECODED_MAX_BYTES, self.max_bytes // 4)
        self._refreshing: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.hits = 0
        self.stale_hits = 0
        self.misses = 0
        self.bypasses = 0
        self.stores = 0
        self.not_modified = 0
        self.coalesced = 0
        self.hit_for_miss = 0
        self.stale_if_error_hits = 0
        self.lock_timeouts = 0
        self.uncacheable: dict[str, int] = {}
        _stats.register("cache", self)

    # -- request entry point ---------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in self.methods:
            await self.app(scope, receive, send)
            return
        # The fast path: a plain GET/HEAD (no directives, conditions, credentials or keyed
        # headers) for a fresh entry is answered here: one pass over the headers, memoised
        # keys, one store read, no decoding. Everything else goes through _handle.
        boring = self._boring
        kinds = self._kinds
        host: bytes | None = None
        accept: bytes | None = None
        plain = True
        for name, value in scope["headers"]:
            if name in boring:
                continue
            kind = kinds[name] if name in kinds else self._classify(name)
            if kind == _HOST:
                if host is not None:  # a second Host: _inspect bypasses
                    plain = False
                host = value
            elif kind == _AE and accept is None:
                accept = value
            elif kind:  # anything that needs a closer look, or a second Accept-Encoding
                plain = False
        prefetched: tuple[str, _Entry | bytes | None] | None = None
        if plain and not self.key_headers:
            if host is None:
                host = b""
            try:  # (zero-cost in the usual case where the server set the keys)
                ident = (
                    scope["raw_path"] or scope["path"],
                    scope["query_string"],
                    host,
                    scope["scheme"],
                )
            except KeyError:
                ident = (
                    scope.get("raw_path") or scope["path"],
                    scope.get("query_string", b""),
                    host,
                    scope.get("scheme"),
                )
            resource = self._resources.get(ident)
            if resource is None:
                if self._hinted(scope["path"]):  # (checked again in _serve_or_fill)
                    await self._pass(scope, receive, send)
                    return
                resource = self._resource(scope, ident)
            if resource is not None:
                names, until = resource.vary
                if names is not None and (until == _FOREVER or until > time.monotonic()):
                    coding = None
                    if not names:
                        key = resource.key
                    elif names is _AE_ONLY:
                        coding = self._codings.get(accept) or self._coding(accept)
                        key = resource.variants.get(coding) or resource.variant(coding)
                    else:
                        variant = self._variant(names, scope["headers"], accept)
                        key = "e:" + resource.stem + "|" + variant + "?" + resource.query
                    # Inline on purpose: this is the whole cost of a hit.
                    entry: _Entry | None = None
                    get_now = self._get_nowait
                    if get_now is not None:  # memory://: no coroutine, cannot fail
                        raw = get_now(key)
                    else:
                        try:
                            raw = self._local(key) if self.local_ttl else None
                            if raw is None:
                                raw = await self.store.get(key)
                        except StoreUnavailable as exc:
                            self.outage.failed(exc)
                            self.bypasses += 1
                            add_timing("cache", desc="outage")
                            await self.app(scope, receive, _tagging_send(send, _BYPASS))
                            return
                        if self.outage.down:
                            self.outage.ok()
                    if raw is not None:
                        cached = self._decoded.get(key)  # bounded; decoded once per stored value
                        if cached is not None and (cached[0] is raw or cached[0] == raw):
                            entry = cached[1]
                        else:
                            entry = self._decoded_entry(key, raw)
                    if entry is not None:
                        now = time.time()
                        if now < entry.fresh_until and (
                            entry.plain
                            or entry.coding == coding  # negotiated for this very client
                            or self._accepts(accept, entry.coding)
                        ):
                            self.hits += 1
                            add_timing("cache", desc="hit")
                            seconds = int(now - entry.born)
                            await send(
                                {
                                    "type": "http.response.start",
                                    "status": entry.status,
                                    "headers": [
                                        *entry.headers,
                                        (
                                            b"age",
                                            _AGES[seconds]
                                            if 0 <= seconds < 3600
                                            else _age(seconds),
                                        ),
                                        _HIT_HEADER,
                                    ],
                                }
                            )
                            await send(
                                {
                                    "type": "http.response.body",
                                    "body": b"" if scope["method"] == "HEAD" else entry.body,
                                }
                            )
                            return
                    if raw == _HIT_FOR_MISS:
                        await self._pass(scope, receive, send)
                        return
                    prefetched = (key, entry)
        await self._handle(scope, receive, send, prefetched)

    async def _pass(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Hit-for-miss: the key was found uncacheable moments ago; straight to the app, no
        queue, no recording (the marker expires after ``hit_for_miss_ttl``, then one fill
        learns again)."""
        self.hit_for_miss += 1
        self.misses += 1
        add_timing("cache", desc="hit-for-miss")
        await self.app(scope, receive, _tagging_send(send, _MISS))

    async def _handle(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        prefetched: tuple[str, _Entry | bytes | None] | None,
    ) -> None:
        req = self._inspect(scope)
        if req is None:
            self.bypasses += 1
            add_timing("cache", desc="bypass")
            await self.app(scope, receive, _tagging_send(send, _BYPASS))
            return
        req.prefetched = prefetched
        try:
            await self._serve_or_fill(req, receive, send)
        except _StoreDown:
            self.bypasses += 1
            await self._fill(req, receive, send, _BYPASS, store_key=None, bypass_desc="outage")

    def _classify(self, name: bytes) -> int:
        """The kind of a header name spelled this way; names of no interest are remembered
        (bounded), so the loop over request headers skips them with one set lookup."""
        kind = self._kinds.get(name.lower(), 0)
        if len(self._boring) + len(self._kinds) < _KINDS_MAX:
            if kind:
                self._kinds[name] = kind  # another spelling of an interesting name
            else:
                self._boring.add(name)
        return kind

    def _resource(
        self, scope: Scope, ident: tuple[Any, bytes, bytes, str | None]
    ) -> _Resource | None:
        """The keys of a plain request (``None`` for a host that cannot be keyed), memoised."""
        host = self._host_key(ident[2])
        if host is None:
            return None
        stem = _stem(scope, host, "", "")
        query = _query(ident[1])
        base = stem + "?" + query
        resource = _Resource(stem, query, self._vary_cell(base))
        if len(self._resources) >= _RESOURCES_MAX:
            self._resources.clear()
        self._resources[ident] = resource
        return resource

    def _host_key(self, value: bytes) -> str | None:
        """``Host`` for the key, lowercased; ``None`` when it is not a valid host (whose
        characters could fake the key's separators, or that a framework reads otherwise)."""
        known = self._hosts.get(value)
        if known is None:
            valid = single_host(((b"host", value),))
            if valid is None:
                return None
            known = valid.decode("ascii")
            if len(self._hosts) < _KINDS_MAX:
                self._hosts[value] = known
        return known

    def _inspect(self, scope: Scope) -> _Request | None:
        """Read the request; ``None`` when it must bypass the cache (poisoning, no-store)."""
        req = _Request(scope)
        kinds = self._kinds
        cc: list[bytes] = []
        accept: list[bytes] = []
        pragma: bytes | None = None
        host: bytes | None = None
        creds: list[bytes] = []
        keyed: list[bytes] = []
        boring = self._boring
        for name, value in req.headers:
            if name in boring:
                continue
            kind = kinds.get(name) or self._classify(name)
            if not kind:
                continue
            if kind == _CC:
                cc.append(value)
            elif kind == _AE:
                accept.append(value)
            elif kind == _INM:
                req.if_none_match = value
            elif kind == _IMS:
                req.if_modified_since = value
            elif kind == _CRED:
                creds.append(value)
            elif kind == _HOST:
                if host is not None:
                    # Several Host lines: the app may read another one than the key would
                    # (RFC 9112 §3.2 makes it a 400; some servers pass it on).
                    return None
                host = value
            elif kind == _PRAGMA:
                pragma = value
            elif kind == _KEYED:
                keyed.append(name.lower() + b":" + value)
            else:
                return None
        if cc or pragma is not None:
            directives = request_directives(
                parse_cache_control([(b"cache-control", v) for v in cc]), pragma
            )
            if directives.no_store:
                return None
            req.directives = directives
        host_key = self._host_key(b"" if host is None else host)
        if host_key is None:
            return None
        if accept:
            req.accept_encoding = accept[0] if len(accept) == 1 else b",".join(accept)
        identity = ""
        if creds:
            if self.cache_authenticated:
                identity = hash_secret(b"\x00".join(creds))
            else:
                req.credentials = True
        keyed_part = fingerprint(sorted(keyed))[:16] if keyed else ""
        req.stem = _stem(scope, host_key, identity, keyed_part)
        req.query = _query(scope.get("query_string", b""))
        req.base = req.stem + "?" + req.query
        return req

    # -- keys ------------------------------------------------------------------------------
    def _preference(self) -> tuple[str, ...]:
        if self._encodings is None:
            from asgi_perf.compression._codecs import available_encodings

            self._encodings = available_encodings()
        return self._encodings

    def _variant(self, names: tuple[str, ...], headers: Headers, accept: bytes | None) -> str:
        """The part of the key chosen by the learned ``Vary`` names."""
        if not names:
            return ""
        if names == _AE_ONLY:  # the usual case, kept readable: "ae=gzip"
            return "ae=" + (self._codings.get(accept) or self._coding(accept))
        parts: list[bytes] = []
        for name in names:
            if name == "accept-encoding":
                value = choose_encoding(accept, self._preference()).encode("ascii")
            else:
                value = b",".join(get_header_values(headers, name.encode("latin-1")))
            parts.append(name.encode("latin-1"))
            parts.append(value)
        return fingerprint(parts)[:16]

    def _coding(self, accept: bytes | None) -> str:
        """The coding a CompressionMiddleware would pick for ``accept`` (memoised, bounded)."""
        coding = choose_encoding(accept, self._preference())
        if len(self._codings) < _KINDS_MAX and (accept is None or len(accept) <= 256):
            self._codings[accept] = coding
        return coding

    def _entry_key(self, req: _Request, names: tuple[str, ...]) -> str:
        variant = self._variant(names, req.headers, req.accept_encoding)
        return "e:" + req.stem + "|" + variant + "?" + req.query

    def _accepts(self, accept: bytes | None, coding: str | None) -> bool:
        """Whether a client with ``accept`` may receive a body in content ``coding``."""
        return coding is None or choose_encoding(accept, (coding,)) == coding

    async def _names(self, req: _Request, refresh: bool = False) -> tuple[tuple[str, ...], bool]:
        """The ``Vary`` names learned for this resource, and whether they are this process's
        copy (``True``) rather than just read from the store."""
        if not refresh:
            known = self._vary.get(req.base)
            if known is not None and known[0] is not None and known[1] > time.monotonic():
                return known[0], True
        raw = await self._store_call(self.store.get("v:" + req.base))
        names = tuple(raw.decode("latin-1").split("\n")) if raw else ()
        self._remember_names(req.base, names)
        return names, False

    def _vary_cell(self, base: str) -> list[Any]:
        cell = self._vary.get(base)
        if cell is None:
            if len(self._vary) >= _VARY_LOCAL_MAX:
                self._forget_local()
            cell = self._vary[base] = [None, 0.0]
        return cell

    def _remember_names(self, base: str, names: tuple[str, ...]) -> None:
        cell = self._vary_cell(base)
        cell[0] = _AE_ONLY if names == _AE_ONLY else names  # interned: checked with "is"
        # Only this process writes a memory store: its copy never goes out of date.
        cell[1] = _FOREVER if self._get_nowait is not None else time.monotonic() + VARY_LOCAL_TTL

    # -- store access ----------------------------------------------------------------------
    async def _store_call(self, operation: Any) -> Any:
        """Await a store operation; a failure becomes :class:`_StoreDown` (bypass)."""
        try:
            result = await operation
        except StoreUnavailable as exc:
            self.outage.failed(exc)
            raise _StoreDown from exc
        if self.outage.down:
            self.outage.ok()
        return result

    def _decoded_entry(self, key: str, raw: bytes) -> _Entry | None:
        cached = self._decoded.get(key)
        if cached is not None and (cached[0] is raw or cached[0] == raw):
            return cached[1]
        entry = _Entry.decode(raw)
        if entry is not None:
            self._keep_decoded(key, raw, entry)
        return entry

    def _keep_decoded(self, key: str, raw: bytes, entry: _Entry) -> None:
        if entry.size > self._decoded_max_bytes // 8:
            return
        old = self._decoded.pop(key, None)
        if old is not None:
            self._decoded_bytes -= old[1].size
        while self._decoded and (
            len(self._decoded) >= _DECODED_MAX
            or self._decoded_bytes + entry.size > self._decoded_max_bytes
        ):
            oldest = next(iter(self._decoded))
            self._decoded_bytes -= self._decoded.pop(oldest)[1].size
        self._decoded[key] = (raw, entry, time.monotonic() + self.local_ttl)
        self._decoded_bytes += entry.size

    def _local(self, key: str) -> bytes | None:
        """The L1 in front of a remote store (``local_ttl``): bytes fetched recently, or None."""
        cached = self._decoded.get(key)
        if cached is not None and cached[2] > time.monotonic():
            return cached[0]
        return None

    async def _lookup(self, key: str) -> _Entry | bytes | None:
        """The entry at ``key``, the hit-for-miss marker, or ``None``."""
        raw = self._local(key) if self.local_ttl else None
        if raw is None:
            raw = await self._store_call(self.store.get(key))
        if raw is None:
            return None
        if raw == _HIT_FOR_MISS:
            return _HIT_FOR_MISS
        return self._decoded_entry(key, raw)

    # -- the request flow ------------------------------------------------------------------
    def _usable(self, entry: _Entry, req: _Request) -> bool:
        """Whether this client may receive ``entry`` at all (credentials, content coding)."""
        if req.credentials and not entry.public:
            return False
        return entry.plain or self._accepts(req.accept_encoding, entry.coding)

    async def _serve_or_fill(self, req: _Request, receive: Receive, send: Send) -> None:
        directives = req.directives
        if not directives.only_if_cached and self._hinted(req.scope["path"]):
            await self._pass(req.scope, receive, send)
            return
        names, local = await self._names(req)
        key = self._entry_key(req, names)
        stale: _Entry | None = None
        if not directives.no_cache:
            prefetched = req.prefetched
            if prefetched is not None and prefetched[0] == key:
                found = prefetched[1]
            else:
                found = await self._lookup(key)
            if found is None and local and self._get_nowait is None:
                # Another process may have learned a new Vary: check the store once on a miss.
                fresh_names, _ = await self._names(req, refresh=True)
                if fresh_names != names:
                    names, key = fresh_names, self._entry_key(req, fresh_names)
                    found = await self._lookup(key)
            if isinstance(found, _Entry):
                if not self._usable(found, req):
                    self.bypasses += 1
                    await self._fill(req, receive, send, _BYPASS, store_key=None)
                    return
                now = time.time()
                age = found.age(now)
                if satisfies(age, found.lifetime, directives):
                    await self._replay(found, req, send, _HIT, age)
                    return
                if (
                    found.swr
                    and age - found.lifetime <= found.swr
                    and directives.max_age is None
                    and directives.min_fresh is None
                ):
                    self._revalidate_in_background(req, key)
                    await self._replay(found, req, send, _STALE, age)
                    return
                stale = found
            elif found is not None:
                await self._pass(req.scope, receive, send)
                return
        if directives.only_if_cached:
            self.misses += 1
            add_timing("cache", desc="miss")
            body = problem_body(504, "Not cached", "only-if-cached and no stored response")
            await send_response(
                send, 504, body, [(_X_CACHE, _MISS)], content_type=b"application/problem+json"
            )
            return
        if req.credentials:
            until = self._not_shared.get(req.base)
            if until is not None and until > time.monotonic():
                # This resource answered credentialed requests privately moments ago.
                self.bypasses += 1
                add_timing("cache", desc="bypass")
                await self.app(req.scope, receive, _tagging_send(send, _BYPASS))
                return
        if req.credentials or directives.no_cache:
            # Not a shared fill: the client waits for nobody; a storable answer is kept.
            self.bypasses += req.credentials
            self.misses += not req.credentials
            x_cache = _BYPASS if req.credentials else _MISS
            await self._fill(req, receive, send, x_cache, key, stale=stale)
            return
        await self._coalesced_fill(req, receive, send, key, stale)

    async def _coalesced_fill(
        self, req: _Request, receive: Receive, send: Send, key: str, stale: _Entry | None
    ) -> None:
        for attempt in (1, 2):
            # Nothing stored: read and claim in one atomic step, so a fill that completed
            # since our lookup (this process was slow) is used, never repeated.
            outcome = await self._store_call(
                self.flight.join("c:" + key[2:], key, check_first=stale is None)
            )
            if outcome.kind == "leader":
                assert outcome.lease is not None
                if stale is not None and await self._filled_meanwhile(req, send, key, stale):
                    await self._store_call(outcome.lease.release())
                    return
                self.misses += 1
                await self._fill(req, receive, send, _MISS, key, stale=stale, lease=outcome.lease)
                return
            if outcome.kind == "record":
                value = outcome.value
                if value == _HIT_FOR_MISS:  # the fill found it uncacheable
                    await self._pass(req.scope, receive, send)
                    return
                entry = self._decoded_entry(key, value) if value is not None else None
                if entry is not None and self._serve_waited(entry, req):
                    self.coalesced += 1
                    await self._replay(entry, req, send, _HIT, entry.age(time.time()))
                    return
                break  # not good enough for this request's own directives: ask the app
            if outcome.kind == "timeout":
                self.lock_timeouts += 1
                break
            # Released: the fill stored nothing here; its response may have taught a new Vary.
            if attempt == 1:
                names, _ = await self._names(req, refresh=True)
                new_key = self._entry_key(req, names)
                found = await self._lookup(new_key)
                if isinstance(found, _Entry) and self._serve_waited(found, req):
                    self.coalesced += 1
                    await self._replay(found, req, send, _HIT, found.age(time.time()))
                    return
                key = new_key
                stale = found if isinstance(found, _Entry) else None
        self.misses += 1
        await self._fill(req, receive, send, _MISS, key, stale=stale)

    def _serve_waited(self, entry: _Entry, req: _Request) -> bool:
        """Whether an entry another request just stored may answer this one: it must be
        allowed to this client and satisfy its own ``max-age`` / ``min-fresh`` (§5.2.1)."""
        return self._usable(entry, req) and satisfies(
            entry.age(time.time()), entry.lifetime, req.directives
        )

    async def _filled_meanwhile(self, req: _Request, send: Send, key: str, stale: _Entry) -> bool:
        """Double-checked locking: after winning the claim over a stale entry, read the key
        again; an entry stored since our lookup that serves this request is replayed."""
        found = await self._lookup(key)
        if not isinstance(found, _Entry) or found.created <= stale.created:
            return False
        if not self._serve_waited(found, req):
            return False
        self.coalesced += 1
        await self._replay(found, req, send, _HIT, found.age(time.time()))
        return True

    # -- serving stored responses ----------------------------------------------------------
    async def _replay(
        self, entry: _Entry, req: _Request, send: Send, x_cache: bytes, age: float
    ) -> None:
        if x_cache is _STALE:
            self.stale_hits += 1
        else:
            self.hits += 1
        if (
            req.conditional
            and entry.status == 200
            and not_modified(
                req.if_none_match, req.if_modified_since, entry.etag, entry.last_modified
            )
        ):
            self.not_modified += 1
            add_timing("cache", desc="hit-304" if x_cache is _HIT else "stale-304")
            headers = [(k, v) for k, v in entry.headers if k.lower() in _NOT_MODIFIED_FIELDS]
            headers.append((b"age", _age(age)))
            headers.append((_X_CACHE, x_cache))
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        add_timing("cache", desc="hit" if x_cache is _HIT else "stale")
        await send(
            {
                "type": "http.response.start",
                "status": entry.status,
                "headers": [
                    *entry.headers,
                    (b"age", _age(age)),
                    (_X_CACHE, x_cache),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"" if req.head else entry.body})

    # -- filling ---------------------------------------------------------------------------
    async def _fill(
        self,
        req: _Request,
        receive: Receive,
        send: Send,
        x_cache: bytes,
        store_key: str | None,
        *,
        stale: _Entry | None = None,
        lease: Lease | None = None,
        bypass_desc: str = "bypass",
    ) -> None:
        """Run the app for this request, forward its response, store it when allowed."""
        if store_key is None:
            add_timing("cache", desc=bypass_desc)
            await self.app(req.scope, receive, _tagging_send(send, x_cache))
            return
        responder = _FillResponder(self, req, send, x_cache, stale, None)
        if lease is None or self._get_nowait is not None:
            # In one process the claim is freed in a finally block (run), so it needs no
            # renewal (and a timer per fill is a measurable part of a memory-store miss).
            await responder.run(receive, store_key, lease)
            return
        async with lease:  # other processes must not take over a long fill
            await responder.run(receive, store_key, lease)

    def _revalidate_in_background(self, req: _Request, key: str) -> None:
        if key in self._refreshing or len(self._refreshing) >= _REFRESH_MAX:
            return
        self._refreshing.add(key)
        task = asyncio.get_running_loop().create_task(self._refresh(req, key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refresh(self, req: _Request, key: str) -> None:
        """One background fill for a stale entry (stale-while-revalidate), across processes."""
        try:
            claim_key = "c:" + key[2:]
            token = uuid.uuid4().hex
            try:
                won = await self.store.claim(claim_key, token, LEASE_TTL)
            except StoreUnavailable as exc:
                self.outage.failed(exc)
                return
            if not won:
                return
            copy = req.unconditional_get()
            done = asyncio.Event()

            async def receive() -> Message:
                if not done.is_set():
                    done.set()
                    return {"type": "http.request", "body": b"", "more_body": False}
                await asyncio.Event().wait()  # the request never disconnects by itself
                raise AssertionError("unreachable")  # pragma: no cover

            responder = _FillResponder(self, copy, _discard, _MISS, None, "revalidate")
            lease = Lease(self.store, claim_key, token, LEASE_TTL)
            async with lease:
                await responder.run(receive, key, lease)
        except Exception:
            logger.exception("cache: background revalidation of %s failed", req.scope["path"])
        finally:
            self._refreshing.discard(key)

    async def _store_entry(
        self, req: _Request, entry: _Entry, tags: list[str], names: tuple[str, ...]
    ) -> str:
        """Store ``entry`` under the key its own ``Vary`` names give; return that key."""
        real_key = self._entry_key(req, names)
        ttl = entry.storage_ttl(time.time())
        data = entry.encode()
        await self.store.set(real_key, data, ttl, tags=tags, indexed=True)
        cell = self._vary.get(req.base)
        if self._get_nowait is None or cell is None or cell[0] != names:
            # The record other processes read (in one process, only after a local reset).
            vary = "\n".join(names).encode("latin-1")
            await self.store.set("v:" + req.base, vary, ttl, indexed=True)
        self._remember_names(req.base, names)
        self._uncacheable_paths.pop(req.scope["path"], None)  # the streak is broken
        self._keep_decoded(real_key, data, entry)
        self.stores += 1
        return real_key

    # -- control and visibility ------------------------------------------------------------
    async def invalidate(self, *, path_prefix: str | None = None, tags: Iterable[str] = ()) -> int:
        """Delete entries whose path starts with ``path_prefix`` and/or carrying any of ``tags``.

        Returns how many entries were deleted. Uses the store's indexes, never ``KEYS``.
        """
        deleted = 0
        if path_prefix is not None:
            escaped = escape_key_part(quote(path_prefix, safe=_PRINTABLE))
            deleted += await self.store.delete_prefix("e:{" + escaped)
            await self.store.delete_prefix("v:{" + escaped)
        tag_list = [tags] if isinstance(tags, str) else list(tags)
        if tag_list:
            deleted += await self.store.delete_tags(tag_list)
        self._forget_local()
        return deleted

    async def clear(self) -> None:
        """Delete every entry of this cache (its key prefix)."""
        await self.store.clear()
        self._forget_local()

    def _hinted(self, path: str) -> bool:
        """Whether ``path`` is known to answer uncacheably (see :meth:`_path_uncacheable`)."""
        streak = self._uncacheable_paths.get(path)
        return streak is not None and streak[1] > time.monotonic()

    def _path_uncacheable(self, path: str) -> None:
        """Count an uncacheable answer (by its headers) on ``path``; after
        ``_PATH_STREAK`` in a row, any query on it goes straight to the app for a while."""
        paths = self._uncacheable_paths
        streak = paths.get(path)
        if streak is None:
            if len(paths) >= _VARY_LOCAL_MAX:
                paths.clear()
            streak = paths[path] = [0, 0.0]
        streak[0] += 1
        if streak[0] >= _PATH_STREAK:
            streak[0] = 0
            streak[1] = time.monotonic() + self.hit_for_miss_ttl

    def _remember_not_shared(self, base: str) -> None:
        if len(self._not_shared) >= _VARY_LOCAL_MAX:
            self._not_shared.clear()
        self._uncacheable_paths.clear()
        self._not_shared[base] = time.monotonic() + self.hit_for_miss_ttl

    def _forget_local(self) -> None:
        self._decoded.clear()
        self._decoded_bytes = 0
        self._vary.clear()
        self._resources.clear()  # they hold Vary cells
        self._not_shared.clear()
        self._uncacheable_paths.clear()

    def stats(self) -> dict[str, Any]:
        served = self.hits + self.stale_hits + self.misses
        store = self.store.stats()
        return {
            "hits": self.hits,
            "stale_hits": self.stale_hits,
            "misses": self.misses,
            "bypasses": self.bypasses,
            "stores": self.stores,
            "not_modified": self.not_modified,
            "coalesced": self.coalesced,
            "hit_for_miss": self.hit_for_miss,
            "stale_if_error": self.stale_if_error_hits,
            "lock_timeouts": self.lock_timeouts,
            "uncacheable": dict(self.uncacheable),
            "evictions": store.get("evictions"),
            "entries": store.get("entries"),
            "bytes": store.get("bytes"),
            "hit_ratio": (self.hits + self.stale_hits) / served if served else 0.0,
            "store": store,
            "outage": self.outage.stats(),
        }


class _StoreDown(Exception):
    """The store failed before the response started: serve the request without the cache."""


def _tagging_send(send: Send, x_cache: bytes) -> Send:
    """``send`` adding ``X-Cache`` to the response and keeping ``Cache-Tag`` from the client."""

    async def tagged(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = message.get("headers", ())
            if get_header(headers, b"cache-tag") is not None:
                headers = [(k, v) for k, v in headers if k.lower() != b"cache-tag"]
            message = {**message, "headers": [*headers, (_X_CACHE, x_cache)]}
        await send(message)

    return tagged


async def _discard(message: Message) -> None:
    return None


class _FillResponder:
    """One fill: the app's response goes to the client (as ``GET`` → ``HEAD``, ``200`` →
    ``304`` or swapped for a stale entry on a 5xx as needed) while a bounded copy is kept.

    As soon as the response is known not to be stored (its headers, or its body outgrowing
    ``max_body_size``) the waiters are freed, so a long stream does not hold them back."""

    __slots__ = (
        "cc",
        "desc",
        "drop_body",
        "ended",
        "held",
        "key",
        "lease",
        "mw",
        "reason",
        "recorder",
        "req",
        "send",
        "stale",
        "status",
        "swallowed",
        "x_cache",
    )

    def __init__(
        self,
        mw: CacheMiddleware,
        req: _Request,
        send: Send,
        x_cache: bytes,
        stale: _Entry | None,
        desc: str | None,
    ) -> None:
        self.mw = mw
        self.req = req
        self.send = send
        self.x_cache = x_cache
        self.stale = stale
        self.desc = desc
        self.key = ""
        self.lease: Lease | None = None
        self.recorder = ResponseRecorder(self.forward, mw.max_body_size)
        self.held: Message | None = None
        self.ended = False
        self.drop_body = req.head
        self.swallowed = False
        self.status = 0
        self.reason: str | None = "incomplete"
        self.cc: CacheControl = {}

    def _stale_usable(self, now: float) -> bool:
        stale = self.stale
        return stale is not None and stale.age(now) - stale.lifetime <= stale.sie

    async def run(self, receive: Receive, key: str, lease: Lease | None) -> None:
        self.key = key
        self.lease = lease
        try:
            await self._run(receive)
        finally:
            if not self.ended:  # the app raised or the request was cancelled
                await self._end()

    async def _run(self, receive: Receive) -> None:
        mw, req = self.mw, self.req
        scope = req.scope
        if req.head or req.conditional:
            scope = dict(scope)
            scope["method"] = "GET"
            scope["headers"] = [(k, v) for k, v in req.headers if k.lower() not in _CONDITIONAL]
        recorder = self.recorder
        try:
            await mw.app(scope, receive, recorder)
        except Exception:
            if recorder.started or not self._stale_usable(time.time()):
                raise
            logger.exception("cache: app failed; serving the stale entry (stale-if-error)")
            self.swallowed = True
        if self.held is not None:  # a start with no body message: forward it as it is
            held, self.held = self.held, None
            await self._send_start(held, None)
        if self.swallowed:
            assert self.stale is not None
            mw.stale_if_error_hits += 1
            await mw._replay(self.stale, req, self.send, _STALE, self.stale.age(time.time()))
            await self._end()
            return
        await self._keep()

    async def _keep(self) -> None:
        if self.ended:  # already known not storable
            return
        recorder = self.recorder
        record = recorder.result()
        if record is None:
            if recorder.overflow:
                await self._give_up("too-large")
            else:
                await self._end()  # incomplete (client gone, app gave up): nothing learned
            return
        entry, names = self._entry(record)
        if entry is None or names is None:  # names is None only for Vary: *
            await self._give_up("lifetime")
            return
        try:
            await self.mw._store_entry(self.req, entry, _tags(record.headers), names)
        except StoreUnavailable as exc:
            self.mw.outage.failed(exc)
        await self._end()

    async def _give_up(self, reason: str) -> None:
        """The response will not be stored: say so to the waiters now (hit-for-miss)."""
        mw, lease = self.mw, self.lease
        mw.uncacheable[reason] = mw.uncacheable.get(reason, 0) + 1
        if reason in _PATH_REASONS and self.status < 500 and not self.req.credentials:
            mw._path_uncacheable(self.req.scope["path"])
        if self.status >= 500 and self.stale is not None:
            await self._end()  # keep the stale entry for stale-if-error
            return
        if lease is None:
            if self.req.credentials:  # skip recording for such requests for a while
                mw._remember_not_shared(self.req.base)
            self.ended = True
            return
        self.ended = True
        try:
            await lease.fulfil(self.key, _HIT_FOR_MISS, mw.hit_for_miss_ttl)
        except StoreUnavailable as exc:
            mw.outage.failed(exc)
            await self._end()

    def _entry(self, record: RecordedResponse) -> tuple[_Entry | None, tuple[str, ...] | None]:
        mw = self.mw
        headers = _fresh_headers(record.headers)
        if get_header(headers, b"etag") is None:
            headers.append((b"etag", strong_etag(record.body)))
        if record.status != 204 and get_header(headers, b"content-length") is None:
            headers.append((b"content-length", str(len(record.body)).encode("ascii")))
        now = record.created
        cc = self.cc
        lifetime = freshness_lifetime(cc, record.headers, mw.ttl, now)
        swr, sie = stale_windows(cc, mw.stale_while_revalidate, mw.stale_if_error)
        initial = initial_age(record.headers, now)
        if lifetime - initial <= 0 and not swr and not sie:
            return None, None
        names = vary_names(record.headers)
        entry = _Entry(
            record.status, headers, record.body, now, lifetime, initial, swr, sie, "public" in cc
        )
        return entry, names

    async def _end(self) -> None:
        """Free the claim without a record: waiters go to the app themselves."""
        self.ended = True
        if self.lease is not None:
            try:
                await self.lease.release()
            except StoreUnavailable as exc:
                self.mw.outage.failed(exc)

    async def forward(self, message: Message) -> None:
        """The ``send`` the recorder forwards to: adjusts the response for this client."""
        if self.swallowed:
            return
        kind = message["type"]
        if kind == "http.response.start":
            if message["status"] >= 500 and self._stale_usable(time.time()):
                self.swallowed = True
                return
            self.held = message  # until the first body message: it may give us the ETag
            return
        if self.held is not None:
            held, self.held = self.held, None
            await self._send_start(held, message)
        if not self.ended and self.recorder.overflow:
            await self._give_up("too-large")
        if kind == "http.response.body" and self.drop_body:
            if not message.get("more_body", False):
                await self.send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        await self.send(message)

    async def _send_start(self, start: Message, first: Message | None) -> None:
        req, mw = self.req, self.mw
        self.status = status = start["status"]
        headers: Headers = list(start.get("headers", ()))
        self.cc = cc = parse_cache_control(headers)
        self.reason = storable(
            status,
            cc,
            headers,
            credentials=req.credentials,
            cache_authenticated=mw.cache_authenticated,
        )
        if self.reason is None:
            content_type = get_header(headers, b"content-type")
            if content_type is not None and content_type.startswith(b"text/event-stream"):
                self.reason = "event-stream"  # endless by design
        if self.reason is not None:
            await self._give_up(self.reason)
        etag = get_header(headers, b"etag")
        if (
            etag is None
            and self.reason is None
            and first is not None
            and first["type"] == "http.response.body"
            and not first.get("more_body", False)
        ):
            etag = strong_etag(first.get("body", b""))
            headers.append((b"etag", etag))
        if (
            req.conditional
            and status == 200
            and not_modified(
                req.if_none_match,
                req.if_modified_since,
                etag,
                get_header(headers, b"last-modified"),
            )
        ):
            status = 304
            headers = [(k, v) for k, v in headers if k.lower() in _NOT_MODIFIED_FIELDS]
            self.drop_body = True
            mw.not_modified += 1
        elif get_header(headers, b"cache-tag") is not None:
            headers = [(k, v) for k, v in headers if k.lower() != b"cache-tag"]
        headers.append((_X_CACHE, self.x_cache))
        add_timing("cache", desc=self.desc or self.x_cache.decode().lower())
        await self.send({**start, "status": status, "headers": headers})
