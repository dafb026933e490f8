"""Duplicate suppression and Idempotency-Key handling, in one process or across many.

Two jobs, one mechanism (a request fingerprint and a short-lived record of its outcome),
built on :class:`~asgi_perf.singleflight.SingleFlight` and :mod:`asgi_perf.recording`:

**Duplicate suppression** (double clicks, client retries, fan-out of identical reads). The
fingerprint covers method, path, canonical query (:func:`~asgi_perf.idempotency.canonical_query`),
identity (user key, else client IP), the ``vary_headers``, the credential headers
(``Authorization`` and ``Cookie``: two users behind one NAT with different sessions are never
merged, even without an auth middleware) and the body. The first request runs; identical ones
arriving while it runs wait and get its response (``X-Dedup: coalesced``); within ``window``
seconds after, they get the record (``X-Dedup: hit``).

What is shared (the choices where the spec is silent):

- only a response sent in **one** body message of at most ``max_body_size`` bytes: a response
  that streams (``more_body``) or grows past the limit is passed on to its own client as it
  goes, and the waiters are released *at once* (not when the stream ends) to run their own;
- only statuses below 500 other than 408, 425 and 429: a retry after a server error, a
  timeout or a refusal must really be retried, and a 429/503 that an inner rate limiter or
  the app produced is one client's answer at one moment (identity is in the fingerprint, so
  it is never served to *another* client either way); responses from outer layers never
  pass through this one;
- never a response with ``Set-Cookie`` (the identity may be an IP shared by several people)
  or ``Cache-Control: no-store`` (the app's way to say "always fresh", e.g. a balance read
  right after a transfer within the window);
- requests whose body exceeds ``max_body_size`` (or whose client disconnects mid-body) are
  passed through untouched, their body streamed to the app as it arrives.

**Idempotency-Key** (draft-ietf-httpapi-idempotency-key-header) for POST/PUT/PATCH/DELETE
carrying the header: the key is scoped by identity and ``Authorization``; the first request
runs and its complete response, whatever the status, is kept for ``idempotency_ttl``; a retry
with the same payload replays it with ``Idempotent-Replayed: true``. Not kept (the key is free
again): a request that failed before its response was complete (exception, disconnect), and a
429 or 503 (the request was not processed: Stripe's rule). A response larger than
``max_body_size`` cannot be replayed: the key is marked used and a retry gets a 409 saying so.
The payload fingerprint covers method, path, canonical query and body (not the
``vary_headers``: a retry with another ``Accept`` is the same operation); it travels in the
claim's token, so a different payload is a 422 even while the first is in flight (else 409).
A body larger than ``max_body_size`` is still protected; its payload fingerprint then covers
the first ``max_body_size`` bytes. ``require_idempotency_key`` entries are exact paths or
prefixes ending in ``*``; a keyed request never takes part in the ``window`` replay (a new key
is a new operation). ``idempotency_header=None`` switches this job off.

Beyond the spec's options: ``trusted_proxies`` (as in rate limiting, for the client IP),
``wait_timeout`` (how long a waiter waits for a leader before running its own request, 10 s)
and ``key_prefix``. ``window=0`` coalesces in-flight duplicates only. On Redis a non-duplicate
costs three round trips (read record, ``SET NX`` claim, the fulfil script); a memory store's
claim is not renewed (it cannot outlive its process, and the leader always releases it).

**Store outages** fail open: the request runs un-deduplicated, logged once per outage, counted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from . import stats as _stats
from .asgi import ASGIApp, Message, Receive, Scope, Send, problem_body, send_response
from .body import BufferedBody, read_body
from .config import (
    ConfigError,
    EnvConfigurable,
    EnvVar,
    to_duration,
    to_list,
    to_size,
)
from .context import add_timing
from .idempotency import (
    UNSAFE_METHODS,
    InvalidKey,
    canonical_query,
    decode_record,
    encode_record,
    fingerprint,
    parse_idempotency_key,
    path_matches,
)
from .identity import ClientIP, default_user_key
from .outage import Outage
from .recording import RecordedResponse, ResponseRecorder
from .singleflight import Lease, SingleFlight
from .stores import Store, StoreUnavailable, create_store

__all__ = ["DedupMiddleware"]

logger = logging.getLogger("asgi_perf.dedup")

LEASE_TTL = 10.0  # seconds; renewed while the leader works, so only a crashed leader's expires
MEMORY_LEASE_TTL = 3600.0  # a memory claim is only a guard against a leaked one
RECORD_GRACE = 1.0  # seconds a record outlives ``window``, so woken waiters can still read it
NOT_SHARED = frozenset({408, 425, 429})
NOT_KEPT_FOR_KEY = frozenset({429, 503})
_PROBLEM = b"application/problem+json"
_CREDENTIALS = (b"authorization", b"cookie")
_NO_RENEWAL = contextlib.nullcontext()


def _positive_duration(value: object, name: str) -> float:
    seconds = to_duration(value, name)
    if seconds <= 0:
        raise ConfigError(name, value, "a duration > 0: 500ms, 5s, 2m, 1h")
    return seconds


def _methods(value: object, name: str) -> frozenset[str]:
    methods = frozenset(m.upper() for m in to_list(value, name))
    if not all(m.isalpha() and m.isascii() for m in methods):
        raise ConfigError(name, value, "HTTP method names such as GET,POST")
    return methods


def _paths(value: object, name: str) -> tuple[str, ...]:
    paths = to_list(value, name)
    if not all(p.startswith("/") for p in paths):
        raise ConfigError(name, value, "paths starting with '/' (a trailing '*' is a prefix)")
    return paths


def _header_name(value: object, name: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not all(c.isalnum() or c in "-_" for c in value.strip()):
        raise ConfigError(name, value, "a header name such as Idempotency-Key, or None")
    return value.strip()


class _Leader(ResponseRecorder):
    """``send`` of the request that runs: forwards at once, keeps a copy while it can be shared,
    and releases the waiters the moment it cannot (streaming, too large, status, cookie)."""

    __slots__ = ("flight_lease", "middleware")

    def __init__(self, send: Send, lease: Lease, middleware: DedupMiddleware) -> None:
        super().__init__(send, middleware.max_body_size)
        self.flight_lease: Lease | None = lease
        self.middleware = middleware

    async def give_up(self) -> None:
        self.overflow = True  # nothing more is kept
        lease, self.flight_lease = self.flight_lease, None
        if lease is not None:
            self.middleware.not_shared += 1
            await self.middleware.release(lease)

    async def __call__(self, message: Message) -> None:
        if self.overflow:
            await self.send(message)
            return
        kind = message["type"]
        if kind == "http.response.start":
            status = message["status"]
            if status >= 500 or status in NOT_SHARED or _private(message):
                await self.give_up()
        elif kind != "http.response.body" or message.get("more_body", False):
            await self.give_up()
        await ResponseRecorder.__call__(self, message)
        if self.overflow and self.flight_lease is not None:
            await self.give_up()


def _path(scope: Scope) -> bytes:
    raw = scope.get("raw_path")
    if isinstance(raw, bytes):
        return raw
    path: str = scope.get("root_path", "") + scope["path"]
    return path.encode("utf-8", "surrogatepass")


def _private(message: Message) -> bool:
    """The response sets a cookie or says ``Cache-Control: no-store``: not to be shared."""
    for name, value in message.get("headers", ()):
        lowered = name.lower()
        if lowered == b"set-cookie" or (
            lowered == b"cache-control" and b"no-store" in value.lower()
        ):
            return True
    return False


class DedupMiddleware(EnvConfigurable):
    """Run identical requests once; honour ``Idempotency-Key`` on unsafe methods."""

    ENV_ENABLED = ("ASGI_PERF_DEDUP_ENABLED", False)
    ENV_STORAGE = True
    ENV_VARS = (
        EnvVar("ASGI_PERF_DEDUP_WINDOW", "window", to_duration),
        EnvVar("ASGI_PERF_DEDUP_METHODS", "methods", _methods),
        EnvVar("ASGI_PERF_DEDUP_MAX_BODY_SIZE", "max_body_size", to_size),
        EnvVar("ASGI_PERF_DEDUP_VARY_HEADERS", "vary_headers", to_list),
        EnvVar("ASGI_PERF_DEDUP_WAIT_TIMEOUT", "wait_timeout", _positive_duration),
        EnvVar("ASGI_PERF_IDEMPOTENCY_HEADER", "idempotency_header", _header_name),
        EnvVar("ASGI_PERF_IDEMPOTENCY_TTL", "idempotency_ttl", _positive_duration),
        EnvVar("ASGI_PERF_IDEMPOTENCY_REQUIRED", "require_idempotency_key", _paths),
        EnvVar("ASGI_PERF_TRUSTED_PROXIES", "trusted_proxies", to_list),
        EnvVar("ASGI_PERF_KEY_PREFIX", "key_prefix", lambda v, n: v.strip()),
    )

    def __init__(
        self,
        app: ASGIApp,
        *,
        window: float | str = 5.0,
        methods: Iterable[str] | str = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"),
        storage: str | Store = "memory://",
        identity: Callable[[Scope], str | None] | None = None,
        trusted_proxies: Iterable[str] | str = (),
        idempotency_header: str | None = "Idempotency-Key",
        require_idempotency_key: Iterable[str] | str = (),
        idempotency_ttl: float | str = 86400.0,
        max_body_size: int | str = 1024 * 1024,
        vary_headers: Iterable[str] | str = ("accept", "accept-encoding", "accept-language"),
        wait_timeout: float | str = 10.0,
        key_prefix: str = "asgi_perf:",
    ) -> None:
        self.app = app
        self.window = to_duration(window, "window")
        self.methods = _methods(methods, "methods")
        if identity is not None and not callable(identity):
            raise ConfigError("identity", identity, "a callable scope -> str | None, or None")
        self.identity = identity or default_user_key
        self.client_ip = ClientIP(trusted_proxies)
        label = _header_name(idempotency_header, "idempotency_header")
        self.header_label = label or "Idempotency-Key"
        self.idempotency_header = None if label is None else label.lower().encode("ascii")
        self.require_idempotency_key = _paths(require_idempotency_key, "require_idempotency_key")
        self.idempotency_ttl = _positive_duration(idempotency_ttl, "idempotency_ttl")
        self.max_body_size = to_size(max_body_size, "max_body_size")
        vary = tuple(h.lower().encode("latin-1") for h in to_list(vary_headers, "vary_headers"))
        self.vary_headers = vary
        self.wait_timeout = _positive_duration(wait_timeout, "wait_timeout")
        if not isinstance(key_prefix, str):
            raise ConfigError("key_prefix", key_prefix, "a string such as 'asgi_perf:'")
        self.store = create_store(storage, prefix=key_prefix + "dedup:", name="storage")
        # A memory store's claim cannot outlive its process and the leader always releases it
        # (``finally``): no renewal task, whose start and cancel would cost a loop iteration.
        self._renew = self.store.kind != "memory"
        self.lease_ttl = LEASE_TTL if self._renew else MEMORY_LEASE_TTL
        self.flight = SingleFlight(
            self.store, lease_ttl=self.lease_ttl, wait_timeout=self.wait_timeout
        )
        # Every header the fingerprint reads, with its slot: one pass over the request headers.
        names = dict.fromkeys((*vary, *_CREDENTIALS))
        self._slots = {name: i for i, name in enumerate(names)}
        self.outage = Outage(logger, f"{self.store.kind} store")
        self.requests = 0
        self.leaders = 0
        self.hits = 0
        self.coalesced = 0
        self.released = 0
        self.timeouts = 0
        self.not_shared = 0
        self.passed_through = 0
        self.replayed = 0
        self.conflicts = 0
        self.mismatches = 0
        self.rejected = 0
        _stats.register("dedup", self)

    # -- entry -----------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        if self.idempotency_header is not None and method in UNSAFE_METHODS:
            values = [v for k, v in scope["headers"] if k.lower() == self.idempotency_header]
            if values or (
                self.require_idempotency_key
                and path_matches(scope["path"], self.require_idempotency_key)
            ):
                await self._idempotent(scope, receive, send, values)
                return
        if method not in self.methods:
            await self.app(scope, receive, send)
            return
        await self._deduplicated(scope, receive, send)

    # -- shared pieces ---------------------------------------------------------------------
    def _who(self, scope: Scope) -> bytes:
        # "surrogatepass": never fails on any str, and keeps distinct strings distinct
        user = self.identity(scope)
        if user is not None:
            return b"u:" + str(user).encode("utf-8", "surrogatepass")
        return b"ip:" + self.client_ip(scope).encode("utf-8", "surrogatepass")

    def _header_parts(self, scope: Scope) -> list[bytes]:
        slots = self._slots
        values = [b""] * len(slots)
        for name, value in scope["headers"]:
            i = slots.get(name)
            if i is None:
                i = slots.get(name.lower())
                if i is None:
                    continue
            values[i] = value if not values[i] else values[i] + b"," + value
        return values

    async def release(self, lease: Lease) -> None:
        try:
            await lease.release()
        except StoreUnavailable as exc:
            self.outage.failed(exc)

    async def _problem(self, send: Send, status: int, title: str, detail: str) -> None:
        body = problem_body(status, title, detail)
        await send_response(send, status, body, content_type=_PROBLEM)

    # -- duplicate suppression -------------------------------------------------------------
    async def _deduplicated(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.requests += 1
        body = await read_body(receive, self.max_body_size)
        if not body.complete:
            self.passed_through += 1
            await self.app(scope, body.receive, send)
            return
        fp = fingerprint(
            (
                scope["method"].encode("ascii"),
                _path(scope),
                canonical_query(scope.get("query_string", b"")),
                self._who(scope),
                *self._header_parts(scope),
            ),
            body.data,
        )
        claim_key = "{" + fp + "}c"
        record_key = "{" + fp + "}r"
        store = self.store
        try:
            value = await store.get(record_key)
            if value is not None:
                response = RecordedResponse.decode(value)
                if response is not None and time.time() - response.created <= self.window:
                    self.hits += 1
                    add_timing("dedup", desc="hit")
                    await response.replay(send, ((b"x-dedup", b"hit"),))
                    return
                await store.delete(record_key)  # kept only for waiters' grace: too old to replay
            outcome = await self.flight.join(claim_key, record_key, check_first=False)
        except StoreUnavailable as exc:
            self.outage.failed(exc)
            await self.app(scope, body.receive, send)
            return
        self.outage.ok()
        if outcome.kind == "record":
            response = RecordedResponse.decode(outcome.value or b"")
            if response is not None:
                self.coalesced += 1
                add_timing("dedup", desc="coalesced")
                await response.replay(send, ((b"x-dedup", b"coalesced"),))
                return
        elif outcome.kind == "leader" and outcome.lease is not None:
            await self._lead(scope, body, send, outcome.lease, record_key)
            return
        elif outcome.kind == "timeout":
            self.timeouts += 1
        else:
            self.released += 1
        await self.app(scope, body.receive, send)

    async def _lead(
        self, scope: Scope, body: BufferedBody, send: Send, lease: Lease, record_key: str
    ) -> None:
        self.leaders += 1
        leader = _Leader(send, lease, self)
        try:
            async with lease if self._renew else _NO_RENEWAL:
                await self.app(scope, body.receive, leader)
            response = leader.result()
            if response is not None:
                leader.flight_lease = None
                try:
                    await lease.fulfil(record_key, response.encode(), self.window + RECORD_GRACE)
                except StoreUnavailable as exc:
                    self.outage.failed(exc)
        finally:
            # Exception, disconnect, incomplete response: waiters run their own request.
            if leader.flight_lease is not None:
                await leader.give_up()

    # -- Idempotency-Key -------------------------------------------------------------------
    async def _idempotent(
        self, scope: Scope, receive: Receive, send: Send, values: list[bytes]
    ) -> None:
        label = self.header_label
        if not values:
            self.rejected += 1
            detail = f"The {label} header is required for {scope['method']} {scope['path']}."
            await self._problem(send, 400, f"{label} header required", detail)
            return
        try:
            key = parse_idempotency_key(values)
        except InvalidKey as exc:
            self.rejected += 1
            detail = (
                f"{label} must be a quoted string (RFC 8941) or a bare token of 1 to 255 "
                f"printable characters: {exc}."
            )
            await self._problem(send, 400, f"Invalid {label}", detail)
            return
        body = await read_body(receive, self.max_body_size)
        if body.disconnected:
            self.passed_through += 1
            await self.app(scope, body.receive, send)
            return
        payload = fingerprint(
            (
                scope["method"].encode("ascii"),
                _path(scope),
                canonical_query(scope.get("query_string", b"")),
                b"" if body.complete else b"truncated",
            ),
            body.data,
        )
        auth = self._header_parts(scope)[self._slots[b"authorization"]]
        scoped = fingerprint((self._who(scope), auth, key.encode("ascii")))
        claim_key = "{i" + scoped + "}c"
        record_key = "{i" + scoped + "}r"
        token = payload + "." + os.urandom(16).hex()
        store = self.store
        holder = None
        try:
            value = await store.get(record_key)
            won = value is None and await store.claim(claim_key, token, self.lease_ttl)
            if value is None and not won:
                holder = await store.holder(claim_key)
                if holder is None:  # it completed between our reads
                    value = await store.get(record_key)
        except StoreUnavailable as exc:
            self.outage.failed(exc)
            await self.app(scope, body.receive, send)
            return
        self.outage.ok()
        if won:
            await self._first_with_key(
                scope, body, send, Lease(store, claim_key, token, self.lease_ttl)
            )
        elif value is not None:
            await self._replay_key(send, value, payload, label)
        else:
            await self._in_flight(send, holder, payload, label)

    async def _in_flight(self, send: Send, holder: str | None, payload: str, label: str) -> None:
        if holder is not None and holder.partition(".")[0] != payload:
            await self._mismatch(send, label)
            return
        self.conflicts += 1
        detail = f"A request with this {label} is still being processed; retry later."
        await self._problem(send, 409, "Request in progress", detail)

    async def _mismatch(self, send: Send, label: str) -> None:
        self.mismatches += 1
        detail = f"This {label} was already used with a different request payload."
        await self._problem(send, 422, f"{label} reused", detail)

    async def _replay_key(self, send: Send, value: bytes, payload: str, label: str) -> None:
        record = decode_record(value)
        response = None
        if record is not None:
            if record[0] != payload:
                await self._mismatch(send, label)
                return
            if record[1] is not None:
                response = RecordedResponse.decode(record[1])
        if response is None:
            self.conflicts += 1
            detail = (
                f"A request with this {label} already completed, but its response was too "
                "large to keep and cannot be replayed."
            )
            await self._problem(send, 409, "Response not replayable", detail)
            return
        self.replayed += 1
        add_timing("dedup", desc="hit")
        await response.replay(send, ((b"idempotent-replayed", b"true"),))

    async def _first_with_key(
        self, scope: Scope, body: BufferedBody, send: Send, lease: Lease
    ) -> None:
        self.leaders += 1
        recorder = ResponseRecorder(send, self.max_body_size)
        record_key = lease.key[:-1] + "r"
        kept = False
        try:
            async with lease if self._renew else _NO_RENEWAL:
                await self.app(scope, body.receive, recorder)
            if recorder.started and recorder.complete and recorder.status not in NOT_KEPT_FOR_KEY:
                response = recorder.result()
                payload = lease.token.partition(".")[0]
                encoded = None if response is None else response.encode()
                try:
                    await lease.fulfil(
                        record_key, encode_record(payload, encoded), self.idempotency_ttl
                    )
                    kept = True
                except StoreUnavailable as exc:
                    self.outage.failed(exc)
        finally:
            if not kept:
                await self.release(lease)

    # -- report ----------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "leaders": self.leaders,
            "hits": self.hits,
            "coalesced": self.coalesced,
            "released": self.released,
            "timeouts": self.timeouts,
            "not_shared": self.not_shared,
            "passed_through": self.passed_through,
            "idempotent_replays": self.replayed,
            "conflicts": self.conflicts,
            "mismatches": self.mismatches,
            "rejected": self.rejected,
            "store": self.store.stats(),
            "outage": self.outage.stats(),
        }
