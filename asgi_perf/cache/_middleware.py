"""CacheMiddleware: a shared server-side HTTP cache by the rules of RFC 9111.

The cache's decision for a request is a pure function (:func:`asgi_perf.cache._decide.decide`);
this module reads the request (:mod:`._request`), looks its key up (:mod:`._entries`),
carries the decision out and hands calls of the app to a per-request responder
(:mod:`._responder`). A plain ``GET`` for a fresh entry is answered inline in ``__call__``
(one pass over the headers, memoised keys, one store read, no decoding): that is the whole
cost of a hit.

Per request:

- ``GET``/``HEAD``: a request carrying a header of ``bypass_headers``, several or an invalid
  ``Host``, ``no-store`` or a precondition (``If-Match``, ``If-Range`` …) goes to the app
  untouched (``X-Cache: BYPASS``). Otherwise the stored entry for its key is served, served
  stale, revalidated with the app (``If-None-Match`` / ``If-Modified-Since``), or fetched —
  by exactly one request per key (per process on memory, across processes on Redis) while
  the others wait for it (bounded by ``lock_timeout``). A ``Range`` is served from a fresh
  complete entry, else passed to the app.
- Unsafe methods (``POST``, ``PUT``, ``PATCH``, ``DELETE``, unknown ones): a non-error
  response invalidates every stored variant of the target URI and of a same-origin
  ``Location`` / ``Content-Location`` (RFC 9111 §4.4) before it reaches the client.
- Other methods, lifespan and websocket pass straight through.

Choices where RFC 9111 leaves room are written in the README's cache section.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any, ClassVar

from asgi_perf._core import stats as _stats
from asgi_perf._core.asgi import (
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    problem_body,
    send_response,
)
from asgi_perf._core.config import EnvConfigurable, EnvVar
from asgi_perf._core.context import SCOPE_KEY, add_timing
from asgi_perf.cache import _purge
from asgi_perf.cache._actions import LEASE_TTL, Actions
from asgi_perf.cache._decide import Action, decide
from asgi_perf.cache._entries import AE_ONLY, FOREVER, HIT_FOR_MISS, Entries, StoreDown
from asgi_perf.cache._entry import Entry
from asgi_perf.cache._invalidate import invalidate_targets
from asgi_perf.cache._keys import target_parts
from asgi_perf.cache._request import AE, HOST, Request, RequestReader, Resource
from asgi_perf.cache._responder import FillJob, FillResponder, Parts
from asgi_perf.cache._serve import (
    BYPASS,
    HIT,
    INTS,
    MISS,
    STALE,
    X_CACHE,
    age_bytes,
    byte_range,
)
from asgi_perf.cache._settings import ENV_VARS, Counters, Settings
from asgi_perf.stores import Store, StoreUnavailable, create_store
from asgi_perf.stores._prefetch import LOCAL_TOKENS, PREFETCH, PrefetchOp, request_token
from asgi_perf.stores._singleflight import Lease

__all__ = ["CacheMiddleware"]

logger = logging.getLogger("asgi_perf.cache")

_RESOURCES_MAX = 4096  # plain requests' keys memoised
_SAFE = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})  # RFC 9110 §9.2.1
_HIT_HEADER = (X_CACHE, HIT)


def _claims(req: Request) -> bool:
    """Whether a miss of ``req`` claims its fill (it may share the response it gets)."""
    directives = req.directives
    return not (
        directives.only_if_cached or directives.no_cache or req.credentials or req.range is not None
    )


class CacheMiddleware(EnvConfigurable):
    """A shared HTTP cache in front of ``app``.

    Options (keyword arguments, or ``ASGI_PERF_CACHE_*`` through ``from_env``): see
    :class:`asgi_perf.cache._settings.Settings` and the README's cache section —
    ``default_ttl`` (off: only explicit freshness or a §4.2.2 heuristic is reused),
    ``paths``, ``max_entries``, ``max_bytes``, ``max_body_size``, ``key_headers``,
    ``cache_authenticated``, ``stale_while_revalidate``, ``stale_if_error`` (300 s),
    ``max_stale_keep``, ``lock_timeout``, ``hit_for_miss_ttl``, ``local_ttl``,
    ``bypass_headers``, ``cdn_cache_control``, ``targeted_field``, ``cache_name``,
    ``cache_status_key``, ``key_prefix``; ``storage`` is a store URL or a Store.
    """

    ENV_ENABLED: ClassVar[tuple[str, bool] | None] = ("ASGI_PERF_CACHE_ENABLED", False)
    ENV_STORAGE: ClassVar[bool] = True
    ENV_VARS: ClassVar[tuple[EnvVar, ...]] = ENV_VARS

    def __init__(self, app: ASGIApp, *, storage: str | Store = "memory://", **options: Any):
        self.app = app
        self.settings = settings = Settings(**options)
        self.store = create_store(
            storage,
            prefix=settings.key_prefix + "cache:",
            max_entries=settings.max_entries,
            max_bytes=settings.max_bytes,
            name="storage",
        )
        self.entries = Entries(
            self.store, settings.max_bytes, settings.local_ttl, settings.hit_for_miss_ttl
        )
        self.entries.on_forget.append(self._forget_resources)
        self.outage = self.entries.outage
        self.prefetchable = self.store.can_prefetch  # see prefetch_ops
        self.reader = RequestReader(
            settings.key_headers, settings.bypass_headers, settings.cache_authenticated
        )
        self.counters = Counters()
        parts = Parts(app, settings, self.counters, self.entries, self.reader)
        self.actions = Actions(parts)
        # "name; hit; ttl=" when no key is shown: a hit appends the digits, nothing else
        self._hit_prefix = b"" if settings.status.with_key else settings.status.hit_prefix
        self._resources: dict[tuple[Any, bytes, bytes, str | None], Resource] = {}
        self._resources_room = _RESOURCES_MAX  # counted as they are added: no len call
        _stats.register("cache", self)
        _purge.register(self)

    # -- request entry point ---------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Long on purpose: a hit is served inline, without one call more than it needs (each
        # one is a measurable part of a 2 µs hit); everything else leaves early for _handle.
        """Long on purpose: the per-request path, inlined (every call is counted by
        ``tests/unit/package/test_budgets.py``); the decisions themselves are ``_decide``'s."""
        if scope["type"] != "http" or scope["method"] not in self.settings.methods:
            if scope["type"] == "http" and scope["method"] not in _SAFE:
                await self._unsafe(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        # The fast path: a plain GET/HEAD (no directives, conditions, credentials, ranges
        # or keyed headers) for a fresh entry is answered here. Everything else: _handle.
        reader = self.reader
        boring = reader.boring
        kinds = reader.kinds
        host: bytes | None = None
        accept: bytes | None = None
        plain = True
        for name, value in scope["headers"]:
            if name in boring:
                continue
            kind = kinds[name] if name in kinds else reader.classify(name)
            if kind == HOST:
                if host is not None:  # a second Host: the slow path bypasses
                    plain = False
                host = value
            elif kind == AE and accept is None:
                accept = value
            elif kind:  # anything that needs a closer look, or a second Accept-Encoding
                plain = False
        prefetched: tuple[str, Entry | bytes | None] | None = None
        resource: Resource | None = None
        # (A prefetched request's lookup is made, and answered, on the slow path.)
        fast = self.entries.sync is not None or PREFETCH.get() is None
        if plain and not reader.key_headers and fast:
            try:  # (zero-cost in the usual case where the server set the keys)
                ident = (scope["raw_path"] or scope["path"], scope["query_string"],
                         host or b"", scope["scheme"])  # fmt: skip
            except KeyError:
                ident = (scope.get("raw_path") or scope["path"], scope.get("query_string", b""),
                         host or b"", scope.get("scheme"))  # fmt: skip
            resources = self._resources
            resource = resources[ident] if ident in resources else None  # (in: no get call)
            if resource is None:
                path = scope["path"]  # (in first: the usual path has no hint, and no call)
                if path in self.entries.uncacheable_paths and self.entries.hinted(path):
                    await self.actions.pass_through(scope, receive, send)
                    return
                resource = self._resource(scope, ident)
            if resource is not None:
                names, until = resource.vary
                if names is not None and (until == FOREVER or until > time.monotonic()):
                    coding = None
                    if not names:
                        key = resource.key
                    elif names is AE_ONLY:
                        coding = reader.codings.get(accept) or reader.coding(accept)
                        key = resource.variants.get(coding) or resource.variant(coding)
                    else:
                        variant = reader.variant(names, scope["headers"], accept)
                        key = "e:" + resource.stem + "|" + variant + "?" + resource.query
                    # Inline on purpose: this is the whole cost of a hit.
                    entry: Entry | None = None
                    entries = self.entries
                    get_now = entries.get_nowait
                    if get_now is not None:  # memory://: no coroutine, cannot fail
                        raw = get_now(key)
                    else:
                        try:
                            raw = entries.local(key) if entries.local_ttl else None
                            if raw is None:
                                raw = await self.store.get(key)
                        except StoreUnavailable as exc:
                            self.outage.failed(exc)
                            await self.actions.bypass(scope, receive, send, "outage")
                            return
                        if self.outage.down:
                            self.outage.ok()
                    if type(raw) is Entry:  # memory:// keeps the entry itself
                        entry = raw
                    elif raw is not None:
                        decoded = entries.decoded  # bounded; decoded once per value
                        cached = decoded[key] if key in decoded else None
                        if cached is not None and (cached[0] is raw or cached[0] == raw):
                            entry = cached[1]
                        else:
                            entry = entries.decode(key, raw)
                    if entry is not None:
                        now = time.time()
                        if now < entry.fresh_until and (
                            entry.direct or (coding == entry.coding and not entry.no_cache)
                        ):
                            self.counters.hits += 1
                            if SCOPE_KEY in scope:  # a reader outside: the hit's entry
                                scope[SCOPE_KEY].add("cache", None, "hit")
                            age = int(now - entry.born)
                            ttl = entry.whole_lifetime - age
                            await send(
                                {
                                    "type": "http.response.start",
                                    "status": entry.status,
                                    "headers": [
                                        *entry.headers,
                                        (b"age", INTS[age] if 0 <= age < 3600 else age_bytes(age)),
                                        _HIT_HEADER,
                                        (b"cache-status", self._hit_prefix + INTS[ttl])
                                        if 0 <= ttl < 3600 and self._hit_prefix
                                        else self.settings.status.hit(ttl, key),
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
                    if raw == HIT_FOR_MISS:
                        await self.actions.pass_through(scope, receive, send)
                        return
                    prefetched = (key, entry)
        await self._handle(scope, receive, send, prefetched, resource, accept)

    def _resource(
        self, scope: Scope, ident: tuple[Any, bytes, bytes, str | None]
    ) -> Resource | None:
        """The keys of a plain request (``None`` for a host that cannot be keyed), memoised."""
        origins = self.reader.origins
        origin = ident[2], ident[3]
        known = origins[origin] if origin in origins else self.reader.origin(*origin)
        if known is None:
            return None
        host, tail = known
        path, query = target_parts(ident[0], ident[1])
        stem_ = "{" + path + tail  # (stem() from the origin's tail: no call)
        base = stem_ + "?" + query
        vary = self.entries.vary
        resource = Resource()  # (filled in here: see Resource)
        resource.stem, resource.path, resource.host, resource.query = stem_, path, host, query
        # (entry_key(stem_, "", query), inline: a test holds the two to one key)
        resource.base, resource.key = base, "e:" + stem_ + "|?" + query
        resource.vary = vary[base] if base in vary else self.entries.vary_cell(base)
        resource.variants = {}
        if self._resources_room <= 0:
            self._forget_resources()
        self._resources_room -= 1
        self._resources[ident] = resource
        return resource

    def _forget_resources(self) -> None:
        self._resources.clear()  # they hold Vary cells
        self._resources_room = _RESOURCES_MAX

    # -- the slow path ---------------------------------------------------------------------
    async def _handle(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        prefetched: tuple[str, Entry | bytes | None] | None,
        resource: Resource | None = None,
        accept: bytes | None = None,
    ) -> None:
        """A request the fast path did not answer (a plain one comes with its ``resource``,
        its keys, and ``Accept-Encoding``, so it is not read again). Long because it is the
        short I/O loop around the pure :func:`decide`: the lookup, then one branch per action
        (serve, revalidate, fill, bypass, 504), each a few lines; one frame, as every miss
        passes here."""
        req = Request(scope, resource, accept) if resource is not None else self.reader.read(scope)
        if req is None:
            await self.actions.bypass(scope, receive, send, "bypass")
            return
        entries = self.entries
        try:
            directives = req.directives
            path = scope["path"]  # (in first, as in __call__)
            if (
                not directives.only_if_cached
                and path in entries.uncacheable_paths
                and entries.hinted(path)
            ):
                await self.actions.pass_through(scope, receive, send)
                return
            sync = entries.sync
            token = ""  # the fill of a coalesced miss is claimed with the lookup
            if resource is not None or _claims(req):  # (a plain request claims: no call)
                token = next(LOCAL_TOKENS) if sync is not None else request_token()
            if sync is None:
                key, found, won = await self._lookup_remote(req, prefetched, token)
            else:  # in this process: its copy of the Vary names is the truth
                cell = resource.vary if resource is not None else None  # (read in __call__)
                if cell is None:
                    names, _ = await entries.names(req.base)
                elif cell[0] is None:  # a resource new to this process
                    names = entries.names_nowait(req.base, cell)
                else:
                    names = cell[0]
                key = (
                    req.plain_key
                    if not names and req.plain_key
                    else self.reader.entry_key(req, names)
                )
                won = None  # (None: the claim was not tried)
                if prefetched is not None and prefetched[0] == key and (prefetched[1] or not token):
                    found = prefetched[1]
                elif not token:
                    found = await entries.lookup(key)
                else:  # what key holds, or the claim of its fill, in one step
                    held, won = sync.get_or_claim_nowait(key, "c:" + key[2:], token, LEASE_TTL)
                    found = None
                    if held is not None:  # (decode gives a kept entry back as it is)
                        won = None
                        found = HIT_FOR_MISS if held == HIT_FOR_MISS else entries.decode(key, held)
            if won is not None:  # nothing stored, and the claim was tried
                if won:  # the one fill of this key
                    self.counters.misses += 1
                    lease = Lease(self.store, "c:" + key[2:], token, LEASE_TTL)
                    if sync is not None:  # Actions.fill in one process (no renewal), inline
                        await FillResponder(self.actions.parts, req, send, key, lease).run(receive)
                    else:
                        await self.actions.fill(req, receive, send, key, lease)  # (a plain miss)
                else:
                    await self.actions.coalesced(req, receive, send, FillJob(key, "uri-miss"), won)
                return
            if found == HIT_FOR_MISS and not directives.only_if_cached:
                await self.actions.pass_through(scope, receive, send)
                return
            entry = found if isinstance(found, Entry) else None
            usable = entry if entry is not None and self.actions.usable(entry, req) else None
            if req.range is not None:
                await self._ranged(req, receive, send, key, usable)
                return
            now = time.time()
            action = decide(usable, directives, now)
            if action is Action.SERVE or action is Action.SERVE_STALE or action is Action.REFRESH:
                assert usable is not None
                if action is Action.REFRESH:
                    self.actions.revalidate_in_background(req, key, usable)
                stale = action is not Action.SERVE
                await self.actions.replay(usable, req, send, STALE if stale else HIT, key)
                return
            if action is Action.UNAVAILABLE:
                self.counters.misses += 1
                add_timing(scope, "cache", desc="miss")
                body = problem_body(504, "Not cached", "only-if-cached and no stored response")
                headers = [(X_CACHE, MISS), self.settings.status.forward("miss", key=key)]
                await send_response(send, 504, body, headers, b"application/problem+json")
                return
            revalidate = action is Action.REVALIDATE
            why = "request" if directives.no_cache else ("stale" if entry else "uri-miss")
            if req.credentials:
                if (entry is None or not entry.shared) and self.entries.shared_recently_refused(
                    req.base
                ):  # this resource answered credentialed requests privately moments ago
                    await self.actions.bypass(scope, receive, send, "bypass")
                    return
                # Not a shared fill: the client waits for nobody; a shareable answer is kept.
                self.counters.bypasses += 1
                job = FillJob(key, "bypass", usable, revalidate, x_cache=BYPASS)
                await self.actions.fill(req, receive, send, job)
                return
            job = FillJob(key, why, usable, revalidate)
            if directives.no_cache:
                self.counters.misses += 1
                await self.actions.fill(req, receive, send, job)
                return
            await self.actions.coalesced(req, receive, send, job)
        except StoreDown:
            await self.actions.bypass(scope, receive, send, "outage")

    async def _lookup_remote(
        self, req: Request, prefetched: tuple[str, Entry | bytes | None] | None, token: str
    ) -> tuple[str, Entry | bytes | None, bool | None]:
        """The lookup of :meth:`_handle` on a remote store, in one round trip: the ``Vary``
        names (this process's copy, checked by the store), the entry and, on a miss, the claim
        of its fill, in one script."""
        entries, reader = self.entries, self.reader
        names = entries.known_names(req.base) or ()
        key = reader.entry_key(req, names)
        if prefetched is not None and prefetched[0] == key and prefetched[1] is not None:
            return key, prefetched[1], None
        if entries.local_ttl:
            raw = entries.local(key)
            if raw is not None:
                return key, entries.decode(key, raw), None
        for _ in range(3):  # another process may have learned other names meanwhile
            learned, found, won = await entries.lookup_or_claim(
                req.base, names, key, token, LEASE_TTL
            )
            if learned is None:
                return key, found, won if token and found is None else None
            names = learned
            key = reader.entry_key(req, names)
        return key, await entries.lookup(key), None  # names keep changing: no claim

    def prefetch_ops(self, scope: Scope) -> list[PrefetchOp]:
        """The lookup (and claim) of a remote store's miss path, to send ahead with other
        layers' first store calls; :meth:`_lookup_remote` then makes it and gets the reply.
        (While a prefetch is on, requests take that path instead of the fast path's read.)"""
        entries = self.entries
        if scope["method"] not in self.settings.methods or entries.sync is not None:
            return []
        req = self.reader.read(scope)
        if req is None or self.outage.down:
            return []
        if not req.directives.only_if_cached and entries.hinted(scope["path"]):
            return []
        names = entries.known_names(req.base) or ()
        key = self.reader.entry_key(req, names)
        if entries.local_ttl and entries.local(key) is not None:
            return []
        token = request_token() if _claims(req) else ""
        op = entries.lookup_or_claim_op(req.base, names, key, token, LEASE_TTL)
        return [] if op is None else [op]

    async def _ranged(
        self, req: Request, receive: Receive, send: Send, key: str, entry: Entry | None
    ) -> None:
        """A ``Range`` request: a byte range of a fresh complete stored ``200`` is served from
        it (RFC 9110 §14.2); anything else is the app's (never stored)."""
        if entry is not None and entry.status == 200:
            span = byte_range(req.range or b"", entry.size)
            if span is not None and decide(entry, req.directives, time.time()) is Action.SERVE:
                await self.actions.replay(entry, req, send, HIT, key, span)
                return
        await self.actions.bypass(req.scope, receive, send, "bypass")

    # -- unsafe methods --------------------------------------------------------------------
    async def _unsafe(self, scope: Scope, receive: Receive, send: Send) -> None:
        """RFC 9111 §4.4: a non-error response to an unsafe method invalidates what is
        stored for the target URI (and same-origin ``Location`` / ``Content-Location``)
        before the client sees it."""
        status = self.settings.status.forward("method")

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                if 200 <= message["status"] < 400:
                    deleted = await invalidate_targets(
                        self.entries, self.reader, scope, message.get("headers", ())
                    )
                    self.counters.invalidations += deleted
                message = {**message, "headers": [*message.get("headers", ()), status]}
            await send(message)

        await self.app(scope, receive, watch)

    # -- control and visibility ------------------------------------------------------------
    async def invalidate(self, *, path_prefix: str | None = None, tags: Iterable[str] = ()) -> int:
        """Delete entries whose path starts with ``path_prefix`` and/or carrying any of ``tags``.

        Returns how many entries were deleted. Uses the store's indexes, never ``KEYS``.
        See :func:`asgi_perf.cache.purge` to do this without holding the middleware.
        """
        return await self.entries.purge(tags=tags, path_prefix=path_prefix)

    async def clear(self) -> None:
        """Delete every entry of this cache (its key prefix)."""
        await self.entries.clear()

    def stats(self) -> dict[str, Any]:
        counters = self.counters
        served = counters.hits + counters.stale_hits + counters.misses
        store = self.store.stats()
        return {
            **counters.as_dict(),
            "uncacheable": dict(counters.uncacheable),
            "evictions": store.get("evictions"),
            "entries": store.get("entries"),
            "bytes": store.get("bytes"),
            "hit_ratio": (counters.hits + counters.stale_hits) / served if served else 0.0,
            "store": store,
            "outage": self.outage.stats(),
        }
