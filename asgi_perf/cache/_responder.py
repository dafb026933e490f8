"""One call of the app on behalf of the cache: a fill, or a revalidation of a stored entry.

The app's response goes to the client as it comes (``GET`` → ``HEAD``, ``200`` → ``304``
for the client's own validators, a ``304`` to the cache's validators → the freshened stored
response, a ``5xx`` → the stale entry within ``stale-if-error``) while a bounded copy is kept
and stored when RFC 9111 allows. As soon as the response is known not to be stored (its
headers, or its body outgrowing ``max_body_size``) the waiters are freed, so a long stream
does not hold them back, and the copy stops: the responder is the app's ``send`` itself (no
recorder around it), so from then on a message costs it one test.

The responder gets the settings, the counters and the cache's view of the store; it never
sees the middleware.
"""

from __future__ import annotations

import logging
import time
from typing import NamedTuple

from asgi_perf._core.asgi import (
    LOWER,
    ASGIApp,
    Fields,
    Headers,
    Message,
    Receive,
    Send,
    get_header,
)
from asgi_perf._core.context import SCOPE_KEY, add_timing
from asgi_perf.cache._decide import stale_on_error
from asgi_perf.cache._entries import HIT_FOR_MISS, Entries
from asgi_perf.cache._entry import (
    OWN_ETAG,
    Entry,
    EntryPolicy,
    build_entry,
    judge,
    merge_not_modified,
)
from asgi_perf.cache._keys import uri_tag
from asgi_perf.cache._request import Request, RequestReader
from asgi_perf.cache._rules import CacheControl, Freshness, not_modified, strong_etag, vary_names
from asgi_perf.cache._serve import BYPASS, HIT, MISS, REVALIDATED, STALE, X_CACHE, replay
from asgi_perf.cache._settings import Counters, Settings
from asgi_perf.stores import StoreUnavailable
from asgi_perf.stores._singleflight import Lease

__all__ = ["FillJob", "FillResponder", "Parts", "cache_tags"]

logger = logging.getLogger("asgi_perf.cache")

# Reasons that come from how the app answers a path, not from one request or one body.
_PATH_REASONS = frozenset(
    {"status", "no-store", "private", "set-cookie", "vary-star", "event-stream", "lifetime"}
)
_NO_POLICY = EntryPolicy()
_DESC = {x: x.decode().lower() for x in (HIT, MISS, STALE, REVALIDATED, BYPASS)}
_NOT_MODIFIED_FIELDS = frozenset(
    {b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary", b"last-modified"}
)


def cache_tags(headers: Headers) -> list[str]:
    """``Cache-Tag`` values; a tag that is not printable ASCII of at most 256 characters is
    ignored (it becomes part of a store key)."""
    tags: list[str] = []
    for name, value in headers:
        if (LOWER[name] if name in LOWER else name.lower()) == b"cache-tag":
            for tag in value.decode("latin-1").replace(",", " ").split():
                if len(tag) <= 256 and tag.isascii() and tag.isprintable():
                    tags.append(tag)
    return tags


class Parts(NamedTuple):
    """What calling the app on the cache's behalf works with (never the middleware)."""

    app: ASGIApp
    settings: Settings
    counters: Counters
    entries: Entries
    reader: RequestReader


class FillJob:
    """What one call of the app is for (made on every miss: a plain class, as a NamedTuple's
    ``__new__`` costs a call more)."""

    __slots__ = ("key", "lease", "revalidate", "stale", "why", "x_cache")

    def __init__(
        self,
        key: str,  # the entry key it fills
        why: str,  # Cache-Status fwd= reason: uri-miss, stale, request, bypass
        stale: Entry | None = None,  # the stored entry it may revalidate, or serve on error
        revalidate: bool = False,  # send the stale entry's validators
        lease: Lease | None = None,  # the claim that makes it the one fill of its key
        x_cache: bytes = MISS,
    ) -> None:
        self.key = key
        self.why = why
        self.stale = stale
        self.revalidate = revalidate
        self.lease = lease
        self.x_cache = x_cache


class FillResponder:
    """Runs the app once for ``req`` and answers the client; see the module docstring."""

    __slots__ = (
        "app",
        "chunks",
        "counters",
        "drop_body",
        "ended",
        "entries",
        "etag",
        "fields",
        "freshen",
        "held",
        "index",
        "judged",
        "key",
        "lease",
        "length",
        "policy",
        "reader",
        "reason",
        "req",
        "request_time",
        "response_time",
        "revalidating",
        "send",
        "settings",
        "size",
        "stale",
        "started",
        "status",
        "swallowed",
        "why",
        "x_cache",
    )

    def __init__(
        self, parts: Parts, req: Request, send: Send, job: FillJob | str, lease: Lease | None
    ) -> None:
        """``job``: what the call is for, or, for a plain miss (nothing stored, nothing to
        revalidate), its entry key alone: no job made on the usual miss."""
        self.app, self.settings, self.counters, self.entries, self.reader = parts
        self.req = req
        self.send = send
        if type(job) is str:
            self.key, self.why, self.stale, self.x_cache = job, "uri-miss", None, MISS
            self.revalidating = False
        else:
            assert isinstance(job, FillJob)
            self.key, self.why, self.stale, self.x_cache = job.key, job.why, job.stale, job.x_cache
            self.revalidating = job.revalidate and self.stale is not None
        self.lease = lease
        self.started = False
        self.held: Message | None = None
        self.freshen: Message | None = None  # the app's 304 to our validators
        self.ended = False
        self.drop_body = req.head
        self.swallowed = False
        self.status = 0
        self.length: int | None = None  # the declared Content-Length
        self.chunks: list[bytes] = []  # the body so far, kept while it may be stored …
        self.size = 0  # … and its length
        self.reason: str | None = "incomplete"
        self.request_time = self.response_time = 0.0
        # Set when the response starts (_send_start), before anything is kept:
        self.fields: Fields = Fields()
        self.index: dict[bytes, list[bytes]] = {}  # fields by name
        self.policy = _NO_POLICY
        self.judged: tuple[CacheControl, Freshness] | None = None
        self.etag: bytes | None = None  # the strong ETag the cache made and sent

    async def run(self, receive: Receive) -> None:
        try:
            validators = self.stale.validators() if self.revalidating and self.stale else []
            req = self.req
            scope = req.scope if req.as_sent and not validators else req.for_app(validators)
            self.request_time = time.time()
            try:
                await self.app(scope, receive, self)
            except Exception:
                if self.started or not stale_on_error(self.stale, time.time()):
                    raise
                logger.exception("cache: app failed; serving the stale entry (stale-if-error)")
                self.swallowed = True
            finally:
                if scope is not self.req.scope:  # the app ran on a copy
                    self.req.adopt(scope)
            if self.held is not None:  # a start with no body message: forward it as it is
                held, self.held = self.held, None
                await self._send_start(held, None)
            if self.swallowed:
                await self._serve_stale()
            elif self.freshen is not None:
                await self._freshen(self.freshen)
        finally:
            if not self.ended:  # the body never completed (client gone, app gave up or raised)
                await self._end()  # nothing learned

    # -- what the app answered ----------------------------------------------------------------
    async def __call__(self, message: Message) -> None:
        """The app's ``send``: adjusts the response for this client and, until it is known
        not to be stored, keeps a copy of the body (once not, messages go straight through)."""
        if self.swallowed or self.freshen is not None:
            return
        kind = message["type"]
        if kind == "http.response.start":
            self.started = True
            self.response_time = time.time()
            status = message["status"]
            if status == 304 and self.revalidating:
                self.freshen = message
                return
            if status >= 500 and stale_on_error(self.stale, self.response_time):
                self.swallowed = True
                self.status = status
                return
            self.held = message  # until the first body message: it may give us the ETag
            return
        if self.held is not None:
            held, self.held = self.held, None
            await self._send_start(held, message)
        if not self.ended:  # still to be stored
            if kind != "http.response.body":  # pathsend, zerocopysend, trailers: not replayable
                await self._give_up("too-large")
            else:
                chunk = message["body"] if "body" in message else b""
                more = "more_body" in message and message["more_body"]
                self.size += len(chunk)
                if self.size > self.settings.max_body_size:
                    await self._give_up("too-large")
                elif more and self.size != self.length:
                    self.chunks.append(chunk)
                else:  # the last byte (or the declared Content-Length) leaves with this chunk
                    # Stored before the client has it: a request it sends next (or a waiter
                    # woken now) finds the entry. A body in one message is kept as it is.
                    chunks = self.chunks
                    await self._keep(b"".join([*chunks, chunk]) if chunks else chunk)
        if kind == "http.response.body" and self.drop_body:
            if not message.get("more_body", False):
                await self.send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        await self.send(message)

    async def _send_start(self, start: Message, first: Message | None) -> None:
        req, settings = self.req, self.settings
        self.status = status = start["status"]
        # The app's fields, judged by name many times here and again when the entry is built.
        self.fields = headers = Fields(start["headers"] if "headers" in start else ())
        self.index = index = headers.by_name()  # (read with in: no call per name)
        fixed = settings.fixed_policies  # (read here: no call in the usual case)
        self.policy = policy = (
            fixed[req.credentials]
            if fixed is not None
            else settings.policy(req.scope["path"], req.credentials)
        )
        cc, fresh, self.reason = judge(status, headers, self.response_time, policy, index)
        self.judged = cc, fresh
        if (
            self.reason is None
            and b"content-type" in index
            and index[b"content-type"][0].startswith(b"text/event-stream")
        ):
            self.reason = "event-stream"  # endless by design
        if self.reason is not None:
            await self._give_up(self.reason)
        elif b"content-length" in index:  # (its declared length matters only if it is stored)
            length = index[b"content-length"][0]
            self.length = int(length) if length.isdigit() else None
        body: bytes | None = None  # all of it, when the first body message is the last
        if (
            first is not None
            and first["type"] == "http.response.body"
            and not ("more_body" in first and first["more_body"])
        ):
            body = first["body"] if "body" in first else b""
        etag = index[b"etag"][0] if b"etag" in index else None
        consumed = settings.consumed
        if consumed.isdisjoint(index):
            sent = list(headers)
        else:
            sent = [(k, v) for k, v in headers if k.lower() not in consumed]
        if etag is None and self.reason is None and body is not None:
            etag = self.etag = strong_etag(body)
            sent += ((b"etag", etag),)  # (+= a tuple: no call)
        if (req.if_none_match is not None or req.if_modified_since is not None) and (
            self._not_modified(status, headers, etag)
        ):  # the client's own validators match
            status = 304
            sent = [(k, v) for k, v in sent if k.lower() in _NOT_MODIFIED_FIELDS]
            self.drop_body = True
            self.counters.not_modified += 1
        stored = self.reason is None and body is not None and len(body) <= settings.max_body_size
        said = settings.status
        made = (self.why, start["status"], stored)  # (the field made for these before: no call)
        sent += (
            (X_CACHE, self.x_cache),
            said.forwarded[made]
            if made in said.forwarded
            else said.forward(self.why, start["status"], stored=stored, key=self.key),
        )
        if SCOPE_KEY in req.scope:  # a reader outside (inline: every fill passes here)
            req.scope[SCOPE_KEY].add("cache", None, _DESC[self.x_cache])
        await self.send({**start, "status": status, "headers": sent})

    def _not_modified(self, status: int, headers: Headers, etag: bytes | None) -> bool:
        """Whether the request's own conditionals make this response a ``304`` for it (the
        app never saw them: the cache answers them, RFC 9110 §13.2); only asked when it has
        some."""
        req = self.req
        modified = get_header(headers, b"last-modified") or get_header(headers, b"date")
        return 200 <= status < 300 and not_modified(
            req.if_none_match, req.if_modified_since, etag, modified
        )

    # -- storing ------------------------------------------------------------------------------
    async def _keep(self, body: bytes) -> None:
        """Store the response, its ``body`` complete (its fields already indexed and judged)."""
        if not self.started:  # a body without a start: nothing to store
            await self._end()
            return
        headers, index = self.fields, self.index
        entry = build_entry(
            self.status,
            headers,
            body,
            self.request_time,
            self.response_time,
            self.policy,
            judged=self.judged,
            etag=self.etag,
            index=index,
        )
        names = vary_names(headers) if b"vary" in index else ()
        if type(entry) is str or names is None:  # names is None only for Vary: *
            await self._give_up(entry if type(entry) is str else "vary-star")
            return
        assert type(entry) is Entry
        await self._store(entry, names, cache_tags(headers) if b"cache-tag" in index else [])
        if self.lease is None:  # (released with the entry: _end, inline)
            self.ended = True
        else:
            await self._end()

    async def _store(self, entry: Entry, names: tuple[str, ...], tags: list[str]) -> None:
        req, entries = self.req, self.entries
        # (a response that varies on nothing: the plain key, made for the lookup: no call)
        key = req.plain_key if not names and req.plain_key else self.reader.entry_key(req, names)
        # (from the response's start, not the clock: the store keeps it the body's transfer
        # time longer, which freshness, judged on every read, makes harmless; no call)
        ttl = entry.storage_ttl(self.response_time, self.settings.max_stale_keep)
        try:
            scope = req.scope
            scheme = (scope["scheme"] if "scheme" in scope else None) or "http"  # (no get)
            tags = [*tags, uri_tag(scheme, req.host, req.path, req.query)]
            if await entries.put(req.base, key, entry, names, tags, ttl, self.lease):
                self.lease = None  # released with the entry, in the same round trip
        except StoreUnavailable as exc:
            entries.outage.failed(exc)
            return
        path = req.scope["path"]
        if path in entries.uncacheable_paths:  # (in first: no call in the usual case)
            entries.path_cacheable(path)
        self.counters.stores += 1

    async def _freshen(self, start: Message) -> None:
        """§4.3.4: the app confirmed the stored entry; update its fields, store it again and
        answer the client from it."""
        stale, req = self.stale, self.req
        assert stale is not None
        update: Headers = list(start.get("headers", ()))
        merged = merge_not_modified(stale.headers, update, self.settings.drop)
        own_etag = bool(stale.flags & OWN_ETAG) or get_header(update, b"etag") is not None
        policy = self.settings.policy(req.scope["path"], req.credentials)
        now = self.response_time
        entry = build_entry(
            stale.status, merged, stale.body, self.request_time, now, policy, own_etag, update
        )
        self.counters.revalidated += 1
        stored = not isinstance(entry, str)
        if isinstance(entry, Entry):
            names = vary_names(merged)
            if names is not None:
                await self._store(entry, names, cache_tags(update) or cache_tags(stale.headers))
        else:  # no longer storable: this client still gets the confirmed response
            entry = Entry(stale.status, merged, stale.body, now, 0.0, 0.0, 0.0, 0.0, stale.flags)
        await self._end()
        self.x_cache = REVALIDATED
        add_timing(self.req.scope, "cache", desc="revalidated")
        await self._replay(entry, stale_status=304, stored=stored)

    async def _serve_stale(self) -> None:
        assert self.stale is not None
        self.counters.stale_if_error += 1
        self.x_cache = STALE
        add_timing(self.req.scope, "cache", desc="stale-if-error")
        await self._end()
        await self._replay(self.stale, stale_status=self.status, stored=False)

    async def _replay(self, entry: Entry, *, stale_status: int, stored: bool) -> None:
        req, now = self.req, time.time()
        age = entry.age(now)
        status = self.settings.status.forward(
            self.why, stale_status, stored=stored, ttl=entry.lifetime - age, key=self.key
        )
        sent = await replay(
            entry,
            self.send,
            [(X_CACHE, self.x_cache), status],
            age=age,
            head=req.head,
            if_none_match=req.if_none_match,
            if_modified_since=req.if_modified_since,
        )
        self.counters.not_modified += sent == 304

    # -- ending -------------------------------------------------------------------------------
    async def _give_up(self, reason: str) -> None:
        """The response will not be stored: say so to the waiters now (hit-for-miss)."""
        counters, entries, req = self.counters, self.entries, self.req
        counted = counters.uncacheable
        counted[reason] = (counted[reason] if reason in counted else 0) + 1  # (no get call)
        if reason in _PATH_REASONS and self.status < 500 and not req.credentials:
            entries.path_uncacheable(req.scope["path"])
        if self.status >= 500 and self.stale is not None:
            await self._end()  # keep the stale entry for stale-if-error
            return
        lease = self.lease
        self.ended = True
        if lease is None:
            if req.credentials:  # skip recording for such requests for a while
                entries.remember_not_shared(req.base)
            return
        sync = entries.sync
        if sync is not None:  # in-process: no coroutine, cannot fail, no renewal to stop
            sync.fulfil_nowait(
                lease.key, lease.token, self.key, HIT_FOR_MISS, self.settings.hit_for_miss_ttl
            )
            return
        try:
            await lease.fulfil(self.key, HIT_FOR_MISS, self.settings.hit_for_miss_ttl)
        except StoreUnavailable as exc:
            entries.outage.failed(exc)
            await self._release()

    async def _end(self) -> None:
        """Free the claim without a record: waiters go to the app themselves (or find the
        entry just stored under its key)."""
        self.ended = True
        if self.lease is not None:  # (none left once the entry was stored with its release)
            await self._release()

    async def _release(self) -> None:
        if self.lease is not None:
            try:
                await self.lease.release()
            except StoreUnavailable as exc:
                self.entries.outage.failed(exc)
