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
  passed through untouched, their body streamed to the app as it arrives;
- when a leader's response turns out not shareable (by status, headers, streaming or size),
  its fingerprint is remembered as such for ``window`` seconds (at least one; Varnish's
  "hit-for-pass"): identical requests then go straight to the app instead of queueing behind
  a leader whose answer they could not use. Without it, identical concurrent polls of a
  ``no-store`` endpoint would run one after another.

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
and ``key_prefix``. ``window=0`` coalesces in-flight duplicates only.

**Cost.** Every request is fingerprinted and every shareable response recorded, so the
non-duplicate path is written for speed (``benchmarks``: dedup-memory, dedup-redis):

- the record is read and the claim taken in one step (:meth:`Store.get_or_claim`): on Redis a
  non-duplicate costs two round trips (that script, then the fulfil script), a hit one, a
  first request with an Idempotency-Key two;
- on the memory store (exactly :class:`~asgi_perf.stores.MemoryStore`) the store's sync
  operations run inline: no coroutine, lease or outcome object per step, a process-unique
  counter as the claim token; the claim is not renewed (it cannot outlive its process, and
  the leader always releases it), and a request without a body is keyed by its fingerprint's
  injective encoding itself, not a digest of it;
- a GET or HEAD on HTTP/1.x without ``Content-Length`` or ``Transfer-Encoding`` has no body
  (RFC 9112 §6.3): it is not read before the app (which gets the server's ``receive``);
  any other request's body is read first, as it is part of the fingerprint;
- the leader keeps only the start message's headers and the single body message, decides at
  the start message whether the response can be shared (status, ``Set-Cookie``,
  ``no-store``: if not, it keeps nothing and releases the waiters at once) and encodes the
  record without an intermediate object.

**Store outages** fail open: the request runs un-deduplicated, logged once per outage, counted.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from asgi_perf._core import stats as _stats
from asgi_perf._core.asgi import (
    ASGIApp,
    Headers,
    Message,
    Receive,
    Scope,
    Send,
    problem_body,
    send_response,
)
from asgi_perf._core.body import BufferedBody, prepend, read_body
from asgi_perf._core.config import (
    KEY_PREFIX_ENV,
    ConfigError,
    EnvConfigurable,
    EnvVar,
    to_duration,
    to_list,
    to_size,
)
from asgi_perf._core.config import to_header_name as _header_name
from asgi_perf._core.config import to_methods as _methods
from asgi_perf._core.config import to_paths as _paths
from asgi_perf._core.config import to_positive_duration as _positive_duration
from asgi_perf._core.context import add_timing
from asgi_perf._core.identity import (
    PROXY_HEADER_ENV,
    TRUSTED_PROXIES_ENV,
    ClientIP,
    default_user_key,
)
from asgi_perf._core.outage import Outage
from asgi_perf._core.recording import RecordedResponse, ResponseRecorder, encode_response
from asgi_perf.dedup._rules import (
    UNSAFE_METHODS,
    InvalidKey,
    canonical_query,
    decode_record,
    encode_record,
    fingerprint,
    parse_idempotency_key,
    path_matches,
)
from asgi_perf.stores import Store, StoreUnavailable, create_store
from asgi_perf.stores._singleflight import Lease, SingleFlight

__all__ = ["DedupMiddleware"]

logger = logging.getLogger("asgi_perf.dedup")

LEASE_TTL = 10.0  # seconds; renewed while the leader works, so only a crashed leader's expires
MEMORY_LEASE_TTL = 3600.0  # a memory claim is only a guard against a leaked one
RECORD_GRACE = 1.0  # seconds a record outlives ``window``, so woken waiters can still read it
NOT_SHARED = frozenset({408, 425, 429})
#: The record of a fingerprint whose responses are not shared ("hit-for-pass").
PASS = b"asgi-perf:pass"
NOT_KEPT_FOR_KEY = frozenset({429, 503})
_PROBLEM = b"application/problem+json"
_CREDENTIALS = (b"authorization", b"cookie")
_NO_RENEWAL = contextlib.nullcontext()
_FRAMING_NAMES = frozenset({b"content-length", b"transfer-encoding"})
_FIXED = 4  # fingerprint parts before the headers: method, path, query, identity
_FRAMING = -2  # header slot: says the request has a body
_IGNORED = -1  # header slot: not part of the fingerprint
_NO_BODY_METHODS = frozenset({"GET", "HEAD"})
_HTTP1 = frozenset({"1.0", "1.1"})
_TOKENS = map(str, itertools.count())  # claim tokens of the in-process fast path: unique here


def _path(scope: Scope) -> bytes:
    raw = scope.get("raw_path")
    if isinstance(raw, bytes):
        return raw
    path: str = scope.get("root_path", "") + scope["path"]
    return path.encode("utf-8", "surrogatepass")


def _private(message: Message) -> bool:
    """The response sets a cookie or says ``Cache-Control: no-store``: not to be shared."""
    for name, value in message.get("headers", ()):
        size = len(name)  # lower() only the names that can match: 10 and 13 bytes
        if size == 10:
            if name.lower() == b"set-cookie":
                return True
        elif size == 13 and name.lower() == b"cache-control" and b"no-store" in value.lower():
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
        TRUSTED_PROXIES_ENV,
        PROXY_HEADER_ENV,
        KEY_PREFIX_ENV,
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
        proxy_header: str = "x-forwarded-for",
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
        self._record_ttl = self.window + RECORD_GRACE
        self._pass_ttl = max(self.window, 1.0)
        self.methods = _methods(methods, "methods")
        if identity is not None and not callable(identity):
            raise ConfigError("identity", identity, "a callable scope -> str | None, or None")
        self.identity = identity or default_user_key
        self.client_ip = ClientIP(trusted_proxies, proxy_header=proxy_header)
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
        # The memory store itself (not a subclass that may override its async methods): its
        # sync operations skip a coroutine per step.
        self._memory = self.store.sync
        self.lease_ttl = LEASE_TTL if self._renew else MEMORY_LEASE_TTL
        self.flight = SingleFlight(
            self.store, lease_ttl=self.lease_ttl, wait_timeout=self.wait_timeout
        )
        # Every header the fingerprint reads, with its slot: one pass over the request headers.
        names = dict.fromkeys((*vary, *_CREDENTIALS))
        self._slots = {name: _FIXED + i for i, name in enumerate(names)}  # index in parts
        self._no_headers = [b""] * len(self._slots)
        # Any spelling of a header name seen -> its slot, _FRAMING or _IGNORED.
        self._names: dict[bytes, int] = {**dict.fromkeys(_FRAMING_NAMES, _FRAMING), **self._slots}
        self._peers: dict[str, bytes] = {}  # peer address -> identity part (no proxies)
        self.outage = Outage(logger, f"{self.store.kind} store")
        self.requests = 0
        self.leaders = 0
        self.hits = 0
        self.coalesced = 0
        self.released = 0
        self.timeouts = 0
        self.not_shared = 0
        self.passes = 0
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
        if method in UNSAFE_METHODS and self.idempotency_header is not None:
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
        # Duplicate suppression. The hot path (one body message, memory store, first of its
        # fingerprint) is written out here: every call and allocation saved is measurable.
        self.requests += 1
        parts, framed = self._request_parts(scope)
        if not framed and method in _NO_BODY_METHODS and scope.get("http_version") in _HTTP1:
            # RFC 9112 §6.3: no Content-Length nor Transfer-Encoding, no body. Nothing to
            # read before the app: it gets the server's ``receive`` itself.
            data = b""
            app_receive = receive
        else:
            message = await receive()
            if (
                message["type"] == "http.request"
                and not message.get("more_body", False)
                and len(data := message.get("body", b"")) <= self.max_body_size
            ):
                app_receive = prepend(message, receive)
            else:
                body = await read_body(receive, self.max_body_size, message)
                app_receive = body.receive
                if not body.complete:
                    self.passed_through += 1
                    await self.app(scope, app_receive, send)
                    return
                data = body.data
        memory = self._memory
        fp = fingerprint(parts, data, memory is not None)
        claim_key = "{" + fp + "}c"
        record_key = "{" + fp + "}r"
        lease: Lease | None = None
        if memory is not None:  # in-process: no coroutine and no allocation per store step
            token = next(_TOKENS)
            value, won = memory.get_or_claim_nowait(record_key, claim_key, token, self.lease_ttl)
        else:
            token = os.urandom(16).hex()
            try:
                value, won = await self.store.get_or_claim(
                    record_key, claim_key, token, self.lease_ttl
                )
            except StoreUnavailable as exc:
                self.outage.failed(exc)
                await self.app(scope, app_receive, send)
                return
            if self.outage.down:
                self.outage.ok()
            if won:
                lease = Lease(self.store, claim_key, token, self.lease_ttl)
        if not won:
            lease = await self._follow(scope, app_receive, send, claim_key, record_key, value)
            if lease is None:
                return  # answered
            token = lease.token
            memory = None

        # The leader: run the app, forwarding every message at once; keep a copy of a
        # response that can be shared and publish it, or release the waiters the moment it
        # cannot be (streaming, too large, status, cookie). ``memory``: the memory store's
        # sync operations, no lease and no renewal; else ``lease``.
        self.leaders += 1
        max_body = self.max_body_size
        held = True  # the claim is ours and the waiters still wait for our record
        status = 0
        kept: Headers | None = None
        content: bytes | None = None

        async def leader_send(message: Message) -> None:
            nonlocal held, status, kept, content
            if held:
                kind = message["type"]
                if kind == "http.response.start" and kept is None:
                    status = message["status"]
                    if status < 500 and status not in NOT_SHARED and not _private(message):
                        kept = list(message.get("headers", ()))
                    else:
                        held = False
                        await self._give_up(claim_key, token, lease, record_key)
                elif (
                    kind == "http.response.body"
                    and kept is not None
                    and content is None
                    and not message.get("more_body", False)
                    and len(chunk := message.get("body", b"")) <= max_body
                ):
                    content = chunk
                else:  # streaming, too large, a second body, pathsend, trailers...
                    held = False
                    await self._give_up(claim_key, token, lease, record_key)
            await send(message)

        try:
            if lease is not None and self._renew:
                async with lease:
                    await self.app(scope, app_receive, leader_send)
            else:
                await self.app(scope, app_receive, leader_send)
            if held and content is not None and kept is not None:
                held = False
                record = encode_response(status, kept, content, time.time())
                if memory is not None:
                    memory.fulfil_nowait(claim_key, token, record_key, record, self._record_ttl)
                elif lease is not None:
                    try:
                        await lease.fulfil(record_key, record, self._record_ttl)
                    except StoreUnavailable as exc:
                        self.outage.failed(exc)
        finally:
            # Exception, disconnect, incomplete response: waiters run their own request.
            if held:
                await self._give_up(claim_key, token, lease)

    # -- shared pieces ---------------------------------------------------------------------
    def _who(self, scope: Scope) -> bytes:
        # "surrogatepass": never fails on any str, and keeps distinct strings distinct
        user = self.identity(scope)
        if user is not None:
            return b"u:" + str(user).encode("utf-8", "surrogatepass")
        if self.client_ip.trusted:  # the address may come from the request's headers
            return b"ip:" + self.client_ip(scope).encode("utf-8", "surrogatepass")
        # Else it depends on the peer address alone: remember the last few thousand.
        client = scope.get("client")
        peer = client[0] if client else None
        if type(peer) is not str:
            return b"ip:" + self.client_ip(scope).encode("utf-8", "surrogatepass")
        who = self._peers.get(peer)
        if who is None:
            if len(self._peers) >= 4096:
                self._peers.clear()
            who = b"ip:" + self.client_ip(scope).encode("utf-8", "surrogatepass")
            self._peers[peer] = who
        return who

    def _request_parts(self, scope: Scope) -> tuple[list[bytes], bool]:
        """The fingerprint's parts but the body: method, raw path, canonical query, identity
        (:data:`_FIXED` parts), then the fingerprinted headers, each in its slot (repeats
        comma-joined); and whether the request says how its body is framed (Content-Length
        or Transfer-Encoding). One pass over the request headers."""
        query = scope.get("query_string", b"")
        if b"&" in query:
            query = canonical_query(query)
        path = scope.get("raw_path")
        if type(path) is not bytes:
            path = _path(scope)
        parts = [scope["method"].encode("ascii"), path, query, self._who(scope)]
        parts += self._no_headers
        names = self._names
        framed = False
        for name, value in scope["headers"]:
            i = names.get(name)
            if i is None:  # a spelling not seen yet: learn it (a bounded number of them)
                lowered = name.lower()
                i = self._slots.get(lowered, _FRAMING if lowered in _FRAMING_NAMES else _IGNORED)
                if len(names) < 1024:
                    names[name] = i
            if i >= 0:
                parts[i] = value if not parts[i] else parts[i] + b"," + value
            elif i == _FRAMING:
                framed = True
        return parts, framed

    async def release(self, lease: Lease) -> None:
        try:
            await lease.release()
        except StoreUnavailable as exc:
            self.outage.failed(exc)

    async def _problem(self, send: Send, status: int, title: str, detail: str) -> None:
        body = problem_body(status, title, detail)
        await send_response(send, status, body, content_type=_PROBLEM)

    # -- duplicate suppression -------------------------------------------------------------
    async def _follow(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        claim_key: str,
        record_key: str,
        value: bytes | None,
    ) -> Lease | None:
        """Another request has (or had) this fingerprint: replay its record, or wait for it
        and answer. A lease returned: the claim is ours after all, lead with it."""
        try:
            if value == PASS:
                self.passes += 1
                await self.app(scope, receive, send)
                return None
            if value is not None:
                response = RecordedResponse.decode(value)
                if response is not None and time.time() - response.created <= self.window:
                    self.hits += 1
                    add_timing("dedup", desc="hit")
                    await response.replay(send, ((b"x-dedup", b"hit"),))
                    return None
                # Kept only for waiters' grace: too old to replay. Lead, or wait for a leader.
                await self.store.delete(record_key)
                outcome = await self.flight.join(claim_key, record_key, check_first=False)
            else:
                outcome = await self.flight.wait(claim_key, record_key)
        except StoreUnavailable as exc:
            self.outage.failed(exc)
            await self.app(scope, receive, send)
            return None
        if self.outage.down:
            self.outage.ok()
        if outcome.kind == "record" and outcome.value == PASS:
            self.released += 1
        elif outcome.kind == "record":
            response = RecordedResponse.decode(outcome.value or b"")
            if response is not None:
                self.coalesced += 1
                add_timing("dedup", desc="coalesced")
                await response.replay(send, ((b"x-dedup", b"coalesced"),))
                return None
        elif outcome.kind == "leader" and outcome.lease is not None:
            return outcome.lease
        elif outcome.kind == "timeout":
            self.timeouts += 1
        else:
            self.released += 1
        await self.app(scope, receive, send)
        return None

    async def _give_up(
        self, claim_key: str, token: str, lease: Lease | None, pass_key: str | None = None
    ) -> None:
        """The leader's response will not be shared: release the waiters now, and with
        ``pass_key`` remember the fingerprint as not shared (waiters see the marker and run
        their own request; later duplicates skip the queue)."""
        self.not_shared += 1
        if lease is None:
            if self._memory is not None:
                if pass_key is None:
                    self._memory.release_nowait(claim_key, token)
                else:
                    self._memory.fulfil_nowait(claim_key, token, pass_key, PASS, self._pass_ttl)
        elif pass_key is None:
            await self.release(lease)
        else:
            try:
                await lease.fulfil(pass_key, PASS, self._pass_ttl)
            except StoreUnavailable as exc:
                self.outage.failed(exc)

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
        parts, _ = self._request_parts(scope)
        method_path_query = parts[:3]
        truncated = b"" if body.complete else b"truncated"
        payload = fingerprint((*method_path_query, truncated), body.data)
        auth = parts[self._slots[b"authorization"]]
        scoped = fingerprint((parts[3], auth, key.encode("ascii")))
        claim_key = "{i" + scoped + "}c"
        record_key = "{i" + scoped + "}r"
        token = payload + "." + os.urandom(16).hex()
        store = self.store
        holder = None
        try:
            value, won = await store.get_or_claim(record_key, claim_key, token, self.lease_ttl)
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
            "passes": self.passes,
            "passed_through": self.passed_through,
            "idempotent_replays": self.replayed,
            "conflicts": self.conflicts,
            "mismatches": self.mismatches,
            "rejected": self.rejected,
            "store": self.store.stats(),
            "outage": self.outage.stats(),
        }
