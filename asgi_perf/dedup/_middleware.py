"""Duplicate suppression and Idempotency-Key handling, in one process or across many.

Two jobs, one mechanism (a request fingerprint and a short-lived record of its outcome),
built on :class:`~asgi_perf.stores._singleflight.SingleFlight` and
:mod:`asgi_perf._core.recording`:

**Duplicate suppression** (double clicks, client retries, fan-out of identical reads). Two
requests are identical when HTTP says a shared cache could answer both with one response: the
fingerprint covers method, raw path, canonical query, scheme, ``Host``
(:func:`~asgi_perf._core.http.single_host`), identity (user key, else client IP), the
``vary_headers`` and the request fields of :data:`~asgi_perf.dedup._rules.FINGERPRINTED`
(credentials: two users behind one NAT with different sessions are never merged; ``Range`` and
the conditionals: a 206 or a 304 only answers the request that asked for it; the forwarded
origin) and the body, encoded injectively. A request whose ``Host`` is repeated or invalid is
passed through untouched (two readers could see two different sites in it). The first request
runs; identical ones arriving while it runs wait and get its response (``X-Dedup:
coalesced``); within ``window`` seconds after, they get the record (``X-Dedup: hit``).

What is shared (the choices where the spec is silent):

- only a response sent in **one** body message of at most ``max_body_size`` bytes: a response
  that streams (``more_body``) or grows past the limit is passed on to its own client as it
  goes, and the waiters are released *at once* (not when the stream ends) to run their own;
- only statuses below 500 other than 408, 425 and 429: a retry after a server error, a
  timeout or a refusal must really be retried, and a 429/503 that an inner rate limiter or
  the app produced is one client's answer at one moment (identity is in the fingerprint, so
  it is never served to *another* client either way); responses from outer layers never
  pass through this one;
- only what :func:`~asgi_perf.dedup._rules.replayable` allows: never a response with
  ``Set-Cookie`` or ``no-store``; a ``private`` one only when the identity is a user key (an
  address is shared by everyone behind one NAT); none whose ``Vary`` names a request field
  the fingerprint does not hold (add it to ``vary_headers``: ``origin`` behind a CORS layer);
- without the fields that describe one exchange (:data:`~asgi_perf._core.http.PER_EXCHANGE`:
  an inner cache's ``X-Cache``, timing, query counts, rate-limit state...): a replay carries
  the response, not another request's exchange;
- requests whose body exceeds ``max_body_size`` (or whose client disconnects mid-body) are
  passed through untouched, their body streamed to the app as it arrives;
- when a leader's response turns out not shareable (by status, headers, streaming or size),
  its fingerprint is remembered as such for ``window`` seconds (at least one; Varnish's
  "hit-for-pass"): identical requests then go straight to the app instead of queueing behind
  a leader whose answer they could not use. Without it, identical concurrent polls of a
  ``no-store`` endpoint would run one after another.

**Idempotency-Key**: :mod:`asgi_perf.dedup._keyed` (records kept apart from the window's, in
``idempotency_storage``; keyed requests fail closed). ``require_idempotency_key`` entries are
exact paths or prefixes ending in ``*``; a keyed request never takes part in the ``window``
replay (a new key is a new operation). ``idempotency_header=None`` switches this job off.

Beyond the spec's options: ``trusted_proxies`` (as in rate limiting, for the client IP),
``wait_timeout`` (how long a waiter waits for a leader before running its own request, 10 s),
``key_prefix`` and ``idempotency_storage`` (where Idempotency-Key records live: by default a
memory area of their own next to ``memory://``, the same Redis as ``storage`` otherwise; give
a Redis with ``maxmemory-policy noeviction`` when ``storage`` is a Redis that evicts).
``window=0`` coalesces in-flight duplicates only.

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
  the start message whether the response can be shared (status, then
  :func:`~asgi_perf.dedup._rules.replayable`: if not, it keeps nothing and releases the
  waiters at once) and encodes the record without an intermediate object.

**Store outages** fail open for duplicate suppression: the request runs un-deduplicated,
logged once per outage, counted (and while the circuit is open the store is not even asked,
but for probes: :class:`~asgi_perf._core.outage.Outage`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from asgi_perf._core import stats as _stats
from asgi_perf._core.asgi import ASGIApp, Receive, Scope, Send
from asgi_perf._core.body import prepend, read_body
from asgi_perf._core.config import (
    KEY_PREFIX_ENV,
    ConfigError,
    EnvConfigurable,
    EnvVar,
    to_duration,
    to_header_names,
    to_list,
    to_size,
)
from asgi_perf._core.config import to_header_name as _header_name
from asgi_perf._core.config import to_methods as _methods
from asgi_perf._core.config import to_paths as _paths
from asgi_perf._core.config import to_positive_duration as _positive_duration
from asgi_perf._core.context import add_timing
from asgi_perf._core.http import fingerprint
from asgi_perf._core.identity import (
    PROXY_HEADER_ENV,
    TRUSTED_PROXIES_ENV,
    ClientIP,
    default_user_key,
)
from asgi_perf._core.outage import Outage
from asgi_perf._core.recording import RecordedResponse
from asgi_perf.dedup._fingerprint import IDENTITY, RequestParts
from asgi_perf.dedup._keyed import IdempotencyKeys
from asgi_perf.dedup._leader import PASS, Leader, LeaderSettings
from asgi_perf.dedup._rules import UNSAFE_METHODS, path_matches
from asgi_perf.stores import (
    KeepingMemoryStore,
    Store,
    Stored,
    StoreUnavailable,
    create_store,
    in_process,
)
from asgi_perf.stores._prefetch import LOCAL_TOKENS, PrefetchOp, request_token
from asgi_perf.stores._singleflight import Lease, SingleFlight

__all__ = ["DedupMiddleware"]

logger = logging.getLogger("asgi_perf.dedup")

LEASE_TTL = 10.0  # seconds; renewed while the leader works, so only a crashed leader's expires
MEMORY_LEASE_TTL = 3600.0  # a memory claim is only a guard against a leaked one
RECORD_GRACE = 1.0  # seconds a record outlives ``window``, so woken waiters can still read it


def _store_url(value: object, name: str) -> str:
    url = str(value).strip()
    in_process(url, name)  # an unknown scheme is a ConfigError naming ``name``
    return url


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
        EnvVar("ASGI_PERF_IDEMPOTENCY_STORAGE", "idempotency_storage", _store_url),
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
        idempotency_storage: str | Store | None = None,
    ) -> None:
        """Long because it checks every option once, here, so that ``__call__`` checks nothing."""
        self.app = app
        self.window = to_duration(window, "window")
        self._record_ttl = self.window + RECORD_GRACE
        self._pass_ttl = max(self.window, 1.0)
        self.methods = _methods(methods, "methods")
        if identity is not None and not callable(identity):
            raise ConfigError("identity", identity, "a callable scope -> str | None, or None")
        client_ip = ClientIP(trusted_proxies, proxy_header=proxy_header)
        label = _header_name(idempotency_header, "idempotency_header")
        self.header_label = label or "Idempotency-Key"
        self.idempotency_header = None if label is None else label.lower().encode("ascii")
        self.require_idempotency_key = _paths(require_idempotency_key, "require_idempotency_key")
        self.idempotency_ttl = _positive_duration(idempotency_ttl, "idempotency_ttl")
        self.max_body_size = to_size(max_body_size, "max_body_size")
        self.vary_headers = to_header_names(vary_headers, "vary_headers")
        self.wait_timeout = _positive_duration(wait_timeout, "wait_timeout")
        if not isinstance(key_prefix, str):
            raise ConfigError("key_prefix", key_prefix, "a string such as 'asgi_perf:'")
        prefix = key_prefix + "dedup:"
        self.store = create_store(storage, prefix=prefix, name="storage")
        self.prefetchable = self.store.can_prefetch  # see prefetch_ops
        # In-process claim tokens: this prefix (unique in the process, never a bare
        # LOCAL_TOKENS one) and the request's number, made without a call
        self._tokens = next(LOCAL_TOKENS) + ":"
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
        self.parts = RequestParts(self.vary_headers, identity or default_user_key, client_ip)
        self.outage = Outage(logger, f"{self.store.kind} store")
        self._leader_settings = LeaderSettings(
            self._give_up,
            self.parts.fingerprinted,
            self.max_body_size,
            self._record_ttl,
            self._pass_ttl,
            self.outage.failed,
        )
        self.keys = None
        if label is not None:
            self.keys = self._idempotency(label, storage, idempotency_storage, prefix)
        self.requests = 0
        self.leaders = 0
        self.hits = 0
        self.coalesced = 0
        self.released = 0
        self.timeouts = 0
        self.passes = 0
        self.passed_through = 0
        self.bypassed = 0
        _stats.register("dedup", self)

    def _idempotency(
        self, label: str, storage: str | Store, given: str | Store | None, prefix: str
    ) -> IdempotencyKeys:
        """The Idempotency-Key job. Its records live in ``given``, else apart from the window
        records when those are in memory (an LRU area ordinary traffic churns: the records get
        a never-evicting area of the same bounds), else in the same store (a Redis: their own
        keys, ``{i…}``, kept as its maxmemory-policy allows)."""
        if given is not None:
            store = create_store(given, prefix=prefix, name="idempotency_storage", keep=True)
        elif self.store.kind == "memory" and not isinstance(self.store, KeepingMemoryStore):
            store = create_store(storage if isinstance(storage, str) else "memory://", keep=True)
        else:
            store = self.store
        outage = self.outage
        if store is not self.store:
            outage = Outage(logger, f"{store.kind} idempotency store")
        return IdempotencyKeys(
            self.app,
            store,
            outage,
            logger,
            label=label,
            ttl=self.idempotency_ttl,
            max_body_size=self.max_body_size,
            lease_ttl=LEASE_TTL if store.kind != "memory" else MEMORY_LEASE_TTL,
        )

    # -- entry -----------------------------------------------------------------------------
    def prefetch_ops(self, scope: Scope) -> list[PrefetchOp]:
        """The claim (or read) of a request without a body, to send ahead with other layers'
        first store calls; :meth:`__call__` then makes it and gets the reply."""
        method = scope["method"]
        if method not in self.methods or method in UNSAFE_METHODS or self.outage.down:
            return []
        parts, bodiless = self.parts(scope)
        if parts is None or not bodiless:
            return []
        fp = fingerprint(parts, b"", False)
        claim_key, record_key = "{" + fp + "}c", "{" + fp + "}r"
        op = self.store.get_or_claim_op(record_key, claim_key, request_token(), self.lease_ttl)
        return [] if op is None else [op]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Long on purpose: the non-duplicate path (read, fingerprint, claim, lead, record) is
        written out, as every call on it is counted (``tests/unit/package/test_budgets.py``);
        the Idempotency-Key job and the waiters' path are their own modules and methods."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        if method in UNSAFE_METHODS and self.keys is not None:
            values = [v for k, v in scope["headers"] if k.lower() == self.idempotency_header]
            if values or (
                self.require_idempotency_key
                and path_matches(scope["path"], self.require_idempotency_key)
            ):
                parts, _ = self.parts(scope)
                auth = b"" if parts is None else parts[self.parts.auth]
                await self.keys(scope, receive, send, values, parts, auth)
                return
        if method not in self.methods:
            await self.app(scope, receive, send)
            return
        # Duplicate suppression. The hot path (one body message, memory store, first of its
        # fingerprint) is written out here: every call and allocation saved is measurable.
        self.requests += 1
        parts, bodiless = self.parts(scope)
        if parts is None:  # a repeated or invalid Host: which site is asked is not clear
            self.bypassed += 1
            await self.app(scope, receive, send)
            return
        if bodiless:
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
        if memory is not None and not data:
            # fingerprint(parts, b"", True), inline when no part holds a NUL (its fast case)
            joined = b"\0".join(parts)
            if joined.count(b"\0") == self.parts.separators:
                fp = "j" + joined.decode("latin-1")
            else:
                fp = fingerprint(parts, b"", True)
        else:
            fp = fingerprint(parts, data)
        claim_key = f"{{{fp}}}c"  # (an f-string: one new string, where + makes two)
        record_key = f"{{{fp}}}r"
        lease: Lease | None = None
        if memory is not None:  # in-process: no coroutine and no allocation per store step
            token = f"{self._tokens}{self.requests}"
            value, won = memory.get_or_claim_nowait(record_key, claim_key, token, self.lease_ttl)
        else:
            if not self.outage.allow():  # the circuit is open: counted as a failure
                await self.app(scope, app_receive, send)
                return
            token = request_token()
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
        leader = Leader()  # every slot set here: it has no __init__ to call
        leader.send_next = send
        leader.settings = self._leader_settings
        leader.user = parts[IDENTITY][:2] == b"u:"  # a user key, not a bare address
        leader.claim_key, leader.token, leader.lease = claim_key, token, lease
        leader.record_key = record_key
        leader.memory = memory
        leader.held = True  # the claim is ours and the waiters still wait for our record
        leader.status = 0
        leader.kept = None
        leader.content = None
        try:
            if lease is not None and self._renew:
                async with lease:
                    await self.app(scope, app_receive, leader.send)
            else:
                await self.app(scope, app_receive, leader.send)
        finally:
            # Exception, disconnect, incomplete response: waiters run their own request.
            if leader.held:
                await self._give_up(claim_key, token, lease)

    # -- shared pieces ---------------------------------------------------------------------
    async def release(self, lease: Lease) -> None:
        try:
            await lease.release()
        except StoreUnavailable as exc:
            self.outage.failed(exc)

    # -- duplicate suppression -------------------------------------------------------------
    async def _follow(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        claim_key: str,
        record_key: str,
        value: Stored | None,
    ) -> Lease | None:
        """Another request has (or had) this fingerprint: replay its record, or wait for it
        and answer. A lease returned: the claim is ours after all, lead with it."""
        try:
            if value == PASS:
                self.passes += 1
                await self.app(scope, receive, send)
                return None
            if type(value) is bytes:  # (this store keeps no objects)
                response = RecordedResponse.decode(value)
                if response is not None and time.time() - response.created <= self.window:
                    self.hits += 1
                    add_timing(scope, "dedup", desc="hit")
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
            value = outcome.value
            response = RecordedResponse.decode(value if type(value) is bytes else b"")
            if response is not None:
                self.coalesced += 1
                add_timing(scope, "dedup", desc="coalesced")
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
        self._leader_settings.not_shared += 1
        if lease is None:  # the memory store's claim (a leader marks a pass itself)
            if self._memory is not None:
                self._memory.release_nowait(claim_key, token)
            return
        if pass_key is None:
            await self.release(lease)
        else:
            try:
                await lease.fulfil(pass_key, PASS, self._pass_ttl)
            except StoreUnavailable as exc:
                self.outage.failed(exc)

    # -- report ----------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        keys = self.keys
        out: dict[str, Any] = {
            "requests": self.requests,
            "leaders": self.leaders + (keys.leaders if keys else 0),
            "hits": self.hits,
            "coalesced": self.coalesced,
            "released": self.released,
            "timeouts": self.timeouts,
            "not_shared": self._leader_settings.not_shared,
            "passes": self.passes,
            "passed_through": self.passed_through + (keys.passed_through if keys else 0),
            "bypassed": self.bypassed,
            "store": self.store.stats(),
            "outage": self.outage.stats(),
        }
        if keys is not None:
            out.update(keys.stats())
            if keys.store is not self.store:
                out["idempotency_store"] = keys.store.stats()
                out["idempotency_outage"] = keys.outage.stats()
        return out
