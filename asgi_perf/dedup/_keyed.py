"""The Idempotency-Key job of :class:`~asgi_perf.dedup.DedupMiddleware`: a record is a promise.

draft-ietf-httpapi-idempotency-key-header, for unsafe methods carrying the header: the key is
scoped by identity, ``Authorization``, scheme and ``Host`` (one user cannot replay another's
key, nor one site's answer on another); the first request runs and its complete response,
whatever the status, is kept for ``idempotency_ttl``; a retry with the same payload replays it
with ``Idempotent-Replayed: true``. Not kept (the key is free again): a request that failed
before its response was complete (exception, disconnect), and a 429 or 503 (the request was
not processed: Stripe's rule). A response that was sent completely is kept even when the app
raises afterwards (a failing background task): the client saw a result, a retry must see it
too. A response larger than ``max_body_size`` cannot be replayed: the key is marked used and a
retry gets a 409 saying so. The payload fingerprint covers method, path, canonical query and
body (not the ``vary_headers``: a retry with another ``Accept`` is the same operation); it
travels in the claim's token, so a different payload is a 422 even while the first is in
flight (else 409). A body larger than ``max_body_size`` is still protected; its payload
fingerprint then covers the first ``max_body_size`` bytes.

**Fail closed.** A keyed request never runs unprotected: when its store cannot answer (down,
slower than its timeout, the circuit open; a pooled connection that Redis closed is retried
once on a fresh one by the store itself) it gets ``503`` with ``Retry-After``; when the store
has no room for a new record (:class:`~asgi_perf.stores.StoreFull`) it gets ``503`` too, and
old records are never dropped to make room. A request whose ``Host`` is repeated or invalid
gets ``400`` (RFC 9112 §3.2), as its key could not be scoped to one site.

Records live in their own store area (see ``idempotency_storage``): ordinary traffic's window
records can never evict them. A store that could evict them (an LRU memory store, Redis with a
``maxmemory`` and an evicting ``maxmemory-policy``) is named in one warning on first use.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

from asgi_perf._core.asgi import ASGIApp, Receive, Scope, Send, problem_body, send_response
from asgi_perf._core.body import BufferedBody, read_body
from asgi_perf._core.context import add_timing
from asgi_perf._core.http import fingerprint, replayable_headers
from asgi_perf._core.outage import Outage
from asgi_perf._core.recording import RecordedResponse, ResponseRecorder, encode_response
from asgi_perf.dedup._rules import InvalidKey, decode_record, encode_record, parse_idempotency_key
from asgi_perf.stores import Store, StoreFull, StoreUnavailable
from asgi_perf.stores._singleflight import Lease

__all__ = ["IdempotencyKeys"]

NOT_KEPT = frozenset({429, 503})
_PROBLEM = b"application/problem+json"
_NO_RENEWAL = contextlib.nullcontext()
#: Seconds a client is told to wait: the store's circuit probes within milliseconds; a full
#: store only gains room as its oldest records expire.
RETRY_UNAVAILABLE = b"1"
RETRY_FULL = b"60"
FULFIL_ATTEMPTS = 2  # the record of a request that ran: worth a second try


class IdempotencyKeys:
    """Answer one keyed request: ``await keys(scope, receive, send, values, parts, auth)``."""

    def __init__(
        self,
        app: ASGIApp,
        store: Store,
        outage: Outage,
        logger: logging.Logger,
        *,
        label: str,
        ttl: float,
        max_body_size: int,
        lease_ttl: float,
    ) -> None:
        self.app = app
        self.store = store
        self.outage = outage
        self.logger = logger
        self.label = label
        self.ttl = ttl
        self.max_body_size = max_body_size
        self.lease_ttl = lease_ttl
        self.renew = store.kind != "memory"  # a memory claim cannot outlive its process
        self._checked = False  # whether the store was asked if it may evict records
        self._full_logged = False
        self.leaders = 0
        self.replayed = 0
        self.conflicts = 0
        self.mismatches = 0
        self.rejected = 0
        self.passed_through = 0
        self.unavailable = 0
        self.full = 0

    async def __call__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        values: list[bytes],
        parts: list[bytes] | None,
        auth: bytes,
    ) -> None:
        """``values``: the key's field lines; ``parts``: method, path, query, identity,
        scheme, host of the fingerprint (``None``: the Host is repeated or invalid)."""
        key = await self._key(scope, send, values, parts)
        if key is None or parts is None:
            return
        body = await read_body(receive, self.max_body_size)
        if body.disconnected:
            self.passed_through += 1
            await self.app(scope, body.receive, send)
            return
        truncated = b"" if body.complete else b"truncated"
        payload = fingerprint((*parts[:3], truncated), body.data)
        scoped = fingerprint((parts[3], auth, parts[4], parts[5], key.encode("ascii")))
        claim_key = "{i" + scoped + "}c"
        record_key = "{i" + scoped + "}r"
        token = payload + "." + os.urandom(16).hex()
        if not self.outage.allow():  # the circuit is open: counted as a failure
            await self._refuse(send, full=False)
            return
        try:
            won, value, holder = await self._claim(record_key, claim_key, token)
        except StoreFull as exc:
            if not self._full_logged:  # once until a key is kept again
                self._full_logged = True
                self.logger.warning("no room for a new Idempotency-Key record (%s)", exc)
            await self._refuse(send, full=True)
            return
        except StoreUnavailable as exc:
            self.outage.failed(exc)
            await self._refuse(send, full=False)
            return
        self.outage.ok()
        if not self._checked:  # once, when the store answers
            await self._check_eviction()
        if won:
            self._full_logged = False  # there was room again
            lease = Lease(self.store, claim_key, token, self.lease_ttl)
            await self._first(scope, body, send, lease, record_key)
        elif value is not None:
            await self._replay(scope, send, value, payload)
        else:
            await self._in_flight(send, holder, payload)

    async def _key(
        self, scope: Scope, send: Send, values: list[bytes], parts: list[bytes] | None
    ) -> str | None:
        """The key, or ``None`` once a 400 says why there is none."""
        label = self.label
        if not values:
            detail = f"The {label} header is required for {scope['method']} {scope['path']}."
            await self._problem(send, 400, f"{label} header required", detail)
            return None
        try:
            key = parse_idempotency_key(values)
        except InvalidKey as exc:
            detail = (
                f"{label} must be a quoted string (RFC 8941) or a bare token of 1 to 255 "
                f"printable characters: {exc}."
            )
            await self._problem(send, 400, f"Invalid {label}", detail)
            return None
        if parts is None:
            detail = f"A request with an {label} needs exactly one valid Host header."
            await self._problem(send, 400, "Invalid Host", detail)
            return None
        return key

    async def _claim(
        self, record_key: str, claim_key: str, token: str
    ) -> tuple[bool, bytes | None, str | None]:
        """(we hold the claim, the record, the claim's holder): one round trip, two more
        when another holds the claim."""
        store = self.store
        stored, won = await store.get_or_claim(record_key, claim_key, token, self.lease_ttl)
        value = stored if type(stored) is bytes else None  # (this store keeps no objects)
        holder = None
        if value is None and not won:
            holder = await store.holder(claim_key)
            if holder == token:  # a retried call had claimed it for us before its reply was lost
                return True, None, None
            if holder is None:  # it completed between our reads
                stored = await store.get(record_key)
                value = stored if type(stored) is bytes else None
        return won, value, holder

    async def _check_eviction(self) -> None:
        """Warn once when the store may drop a record before ``idempotency_ttl`` (asked
        again next time if the store did not answer)."""
        self._checked = True
        try:
            reason = await self.store.evicts()
        except StoreUnavailable:
            self._checked = False
            return
        if reason is not None:
            self.logger.warning(
                "Idempotency-Key records in the %s store may be lost before they expire (%s): "
                "a retried request could run twice. Use Redis with maxmemory-policy "
                "noeviction (or no maxmemory), or a store of their own (idempotency_storage).",
                self.store.kind,
                reason,
            )

    # -- the first request with a key ------------------------------------------------------
    async def _first(
        self, scope: Scope, body: BufferedBody, send: Send, lease: Lease, record_key: str
    ) -> None:
        self.leaders += 1
        recorder = ResponseRecorder(send, self.max_body_size)
        try:
            async with lease if self.renew else _NO_RENEWAL:
                await self.app(scope, body.receive, recorder)
        finally:  # also when the app raised: a response sent completely is kept
            if recorder.started and recorder.complete and recorder.status not in NOT_KEPT:
                await self._keep(lease, recorder, record_key)
            else:
                try:
                    await lease.release()
                except StoreUnavailable as exc:
                    self.outage.failed(exc)

    async def _keep(self, lease: Lease, recorder: ResponseRecorder, record_key: str) -> None:
        response = recorder.result()
        encoded = None
        if response is not None:
            headers = replayable_headers(response.headers)
            encoded = encode_response(response.status, headers, response.body, response.created)
        record = encode_record(lease.token.partition(".")[0], encoded)
        for _ in range(FULFIL_ATTEMPTS):
            try:
                await lease.fulfil(record_key, record, self.ttl)
                return
            except StoreUnavailable as exc:
                self.outage.failed(exc)
        # Not stored: the claim is left to expire, so a retry meanwhile gets 409, not a rerun.

    # -- answers without the app -----------------------------------------------------------
    async def _replay(self, scope: Scope, send: Send, value: bytes, payload: str) -> None:
        record = decode_record(value)
        response = None
        if record is not None:
            if record[0] != payload:
                await self._mismatch(send)
                return
            if record[1] is not None:
                response = RecordedResponse.decode(record[1])
        if response is None:
            self.conflicts += 1
            detail = (
                f"A request with this {self.label} already completed, but its response was "
                "too large to keep and cannot be replayed."
            )
            await self._problem(send, 409, "Response not replayable", detail)
            return
        self.replayed += 1
        add_timing(scope, "dedup", desc="hit")
        await response.replay(send, ((b"idempotent-replayed", b"true"),))

    async def _in_flight(self, send: Send, holder: str | None, payload: str) -> None:
        if holder is not None and holder.partition(".")[0] != payload:
            await self._mismatch(send)
            return
        self.conflicts += 1
        detail = f"A request with this {self.label} is still being processed; retry later."
        await self._problem(send, 409, "Request in progress", detail)

    async def _mismatch(self, send: Send) -> None:
        self.mismatches += 1
        detail = f"This {self.label} was already used with a different request payload."
        await self._problem(send, 422, f"{self.label} reused", detail)

    async def _refuse(self, send: Send, *, full: bool) -> None:
        """503: the request was not run, and must not be until its key can be kept."""
        if full:
            self.full += 1
            title = "Idempotency records full"
            detail = f"No room to keep a new {self.label} now; retry later."
        else:
            self.unavailable += 1
            title = "Idempotency store unavailable"
            detail = f"Requests with an {self.label} cannot be protected now; retry shortly."
        retry = RETRY_FULL if full else RETRY_UNAVAILABLE
        await self._problem(send, 503, title, detail, ((b"retry-after", retry),))

    async def _problem(
        self,
        send: Send,
        status: int,
        title: str,
        detail: str,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        if status == 400:
            self.rejected += 1
        body = problem_body(status, title, detail)
        await send_response(send, status, body, headers, content_type=_PROBLEM)

    def stats(self) -> dict[str, Any]:
        return {
            "idempotent_replays": self.replayed,
            "conflicts": self.conflicts,
            "mismatches": self.mismatches,
            "rejected": self.rejected,
            "unavailable": self.unavailable,
            "full": self.full,
        }
