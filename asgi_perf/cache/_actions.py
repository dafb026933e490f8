"""Carrying the cache's decisions out: answering from an entry, calling the app (a fill or a
revalidation, coalesced across requests and processes), refreshing behind a stale hit, and
passing requests by.

:class:`Actions` holds what these need (the app, settings, counters, the store's entries,
the request reader and the single flight) and nothing of the middleware, which decides and
calls them.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable

from asgi_perf._core.asgi import Message, Receive, Scope, Send, without
from asgi_perf._core.context import add_timing
from asgi_perf.cache._decide import Action, decide
from asgi_perf.cache._entries import HIT_FOR_MISS
from asgi_perf.cache._entry import Entry
from asgi_perf.cache._request import Request
from asgi_perf.cache._responder import FillJob, FillResponder, Parts
from asgi_perf.cache._serve import BYPASS, HIT, MISS, STALE, X_CACHE, replay
from asgi_perf.stores import StoreUnavailable
from asgi_perf.stores._singleflight import Lease, SingleFlight

__all__ = ["LEASE_TTL", "Actions"]

logger = logging.getLogger("asgi_perf.cache")

LEASE_TTL = 10.0  # seconds a fill's claim lives without renewal (renewed while the app runs)
_REFRESH_MAX = 100  # concurrent background revalidations per middleware


def _tagging_send(
    send: Send, extra: tuple[tuple[bytes, bytes], ...], drop: frozenset[bytes]
) -> Send:
    """``send`` adding ``extra`` fields to the response and keeping those addressed to the
    cache (``Cache-Tag``, its own targeted field: ``drop``) from the client."""

    def tagged(message: Message) -> Awaitable[None]:  # (send's awaitable: no coroutine)
        if message["type"] == "http.response.start":
            headers = without(message["headers"], drop) if "headers" in message else []
            headers += extra
            message = {**message, "headers": headers}
        return send(message)

    return tagged


async def _discard(message: Message) -> None:
    return None


class Actions:
    """What the cache does for a request once it has decided (see the module docstring)."""

    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        self.app, self.settings, self.counters, self.entries, self.reader = parts
        self.store = store = self.entries.store
        wait = self.settings.lock_timeout
        self.flight = SingleFlight(store, lease_ttl=LEASE_TTL, wait_timeout=wait)
        self.refreshing: set[str] = set()
        # The fields a bypassed or passed-through response gets (never changed: copied)
        self._bypassed = ((X_CACHE, BYPASS), self.settings.status.forward("bypass"))
        self._passed = ((X_CACHE, MISS), self.settings.status.forward("uri-miss"))
        self.tasks: set[asyncio.Task[None]] = set()

    async def bypass(self, scope: Scope, receive: Receive, send: Send, desc: str) -> None:
        self.counters.bypasses += 1
        add_timing(scope, "cache", desc=desc)
        await self.app(scope, receive, _tagging_send(send, self._bypassed, self.settings.consumed))

    async def pass_through(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Hit-for-miss: the key was found uncacheable moments ago; straight to the app, no
        queue, no recording (the marker expires after ``hit_for_miss_ttl``, then one fill
        learns again)."""
        self.counters.hit_for_miss += 1
        self.counters.misses += 1
        add_timing(scope, "cache", desc="hit-for-miss")
        await self.app(scope, receive, _tagging_send(send, self._passed, self.settings.consumed))

    def usable(self, entry: Entry, req: Request) -> bool:
        """Whether this client may receive ``entry`` at all (credentials, content coding)."""
        if req.credentials and not entry.shared:
            return False
        return (
            entry.plain
            or not entry.negotiable
            or self.reader.accepts(req.accept_encoding, entry.coding)
        )

    async def coalesced(
        self,
        req: Request,
        receive: Receive,
        send: Send,
        job: FillJob,
        claimed: bool | None = None,
    ) -> None:
        """One request per key calls the app; the others wait for what it stores.
        ``claimed``: the lookup already tried the claim (and lost it: ``False``; a won claim
        goes straight to :meth:`fill`)."""
        entries = self.entries
        key, stale = job.key, job.stale
        for attempt in (1, 2):
            if attempt == 1 and claimed is False:
                outcome = await entries.call(self.flight.wait("c:" + key[2:], key))
            else:
                # Nothing stored: read and claim in one atomic step, so a fill that completed
                # since our lookup (this process was slow) is used, never repeated.
                outcome = await entries.call(
                    self.flight.join("c:" + key[2:], key, check_first=stale is None)
                )
            if outcome.kind == "leader":
                assert outcome.lease is not None
                if stale is not None and await self.filled_meanwhile(req, send, key, stale):
                    await entries.call(outcome.lease.release())
                    return
                self.counters.misses += 1
                await self.fill(req, receive, send, job, outcome.lease)
                return
            if outcome.kind == "record":
                value = outcome.value
                if value == HIT_FOR_MISS:  # the fill found it uncacheable
                    await self.pass_through(req.scope, receive, send)
                    return
                entry = entries.decode(key, value) if value is not None else None
                if entry is not None and await self.serve_waited(entry, req, send, key):
                    return
                break  # not good enough for this request's own directives: ask the app
            if outcome.kind == "timeout":
                self.counters.lock_timeouts += 1
                break
            # Released: the fill stored nothing here; its response may have taught a new Vary.
            if attempt == 1:
                names, _ = await entries.names(req.base, refresh=True)
                key = self.reader.entry_key(req, names)
                found = await entries.lookup(key)
                stale = found if isinstance(found, Entry) and self.usable(found, req) else None
                if stale is not None and await self.serve_waited(stale, req, send, key):
                    return
                revalidate = stale is not None and stale.revalidatable
                job.key, job.stale, job.revalidate = key, stale, revalidate
        self.counters.misses += 1
        await self.fill(req, receive, send, job)

    async def serve_waited(self, entry: Entry, req: Request, send: Send, key: str) -> bool:
        """Serve an entry another request just stored, if this request accepts it (its own
        ``max-age`` / ``min-fresh``, §5.2.1, and the entry's usability for this client)."""
        if not self.usable(entry, req) or decide(entry, req.directives, time.time()) not in (
            Action.SERVE,
            Action.SERVE_STALE,
        ):
            return False
        self.counters.coalesced += 1
        await self.replay(entry, req, send, HIT, key, collapsed=True)
        return True

    async def filled_meanwhile(self, req: Request, send: Send, key: str, stale: Entry) -> bool:
        """Double-checked locking: after winning the claim over a stale entry, read the key
        again; an entry stored since our lookup that serves this request is replayed."""
        found = await self.entries.lookup(key)
        if not isinstance(found, Entry) or found.response_time <= stale.response_time:
            return False
        return await self.serve_waited(found, req, send, key)

    async def replay(
        self,
        entry: Entry,
        req: Request,
        send: Send,
        x_cache: bytes,
        key: str,
        span: tuple[int, int] | None = None,
        collapsed: bool = False,
    ) -> None:
        counters, now = self.counters, time.time()
        if x_cache is STALE:
            counters.stale_hits += 1
        else:
            counters.hits += 1
        age = entry.age(now)
        ttl = entry.lifetime - age
        status = self.settings.status
        if collapsed:
            cache_status = status.forward(
                "uri-miss", entry.status, collapsed=True, ttl=ttl, key=key
            )
        else:
            cache_status = status.hit(ttl, key)
        sent = await replay(
            entry,
            send,
            [(X_CACHE, x_cache), cache_status],
            age=age,
            head=req.head,
            if_none_match=req.if_none_match,
            if_modified_since=req.if_modified_since,
            span=span,
        )
        counters.not_modified += sent == 304
        desc = "hit" if x_cache is HIT else "stale"
        add_timing(req.scope, "cache", desc=desc + "-304" if sent == 304 else desc)

    async def fill(
        self,
        req: Request,
        receive: Receive,
        send: Send,
        job: FillJob | str,
        lease: Lease | None = None,
    ) -> None:
        """Run the app for this request, forward its response, store it when allowed
        (``job``: a plain miss's key alone, see :class:`FillResponder`; ``lease``: the claim
        that makes it the one fill of its key, if not the job's)."""
        if lease is None and type(job) is not str:
            assert isinstance(job, FillJob)
            lease = job.lease
        responder = FillResponder(self.parts, req, send, job, lease)
        if lease is None or self.entries.get_nowait is not None:
            # In one process the claim is freed in a finally block (run), so it needs no
            # renewal (and a timer per fill is a measurable part of a memory-store miss).
            await responder.run(receive)
            return
        async with lease:  # other processes must not take over a long fill
            await responder.run(receive)

    def revalidate_in_background(self, req: Request, key: str, entry: Entry) -> None:
        if key in self.refreshing or len(self.refreshing) >= _REFRESH_MAX:
            return
        self.refreshing.add(key)
        task = asyncio.get_running_loop().create_task(self._refresh(req, key, entry))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _refresh(self, req: Request, key: str, entry: Entry) -> None:
        """One background revalidation of a stale entry (stale-while-revalidate), across
        processes: whoever holds the claim does it, the others skip it."""
        try:
            claim_key = "c:" + key[2:]
            token = uuid.uuid4().hex
            try:
                won = await self.store.claim(claim_key, token, LEASE_TTL)
            except StoreUnavailable as exc:
                self.entries.outage.failed(exc)
                return
            if not won:
                return
            copy = Request(req.for_app([]))
            for name in ("host", "path", "stem", "query", "base", "credentials", "accept_encoding"):
                setattr(copy, name, getattr(req, name))
            done = asyncio.Event()

            async def receive() -> Message:
                if not done.is_set():
                    done.set()
                    return {"type": "http.request", "body": b"", "more_body": False}
                await asyncio.Event().wait()  # the request never disconnects by itself
                raise AssertionError("unreachable")  # pragma: no cover

            lease = Lease(self.store, claim_key, token, LEASE_TTL)  # fill() renews it
            await self.fill(copy, receive, _discard, FillJob(key, "stale", entry, True, lease))
        except Exception:
            logger.exception("cache: background revalidation of %s failed", req.scope["path"])
        finally:
            self.refreshing.discard(key)
