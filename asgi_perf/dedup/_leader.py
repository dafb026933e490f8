"""The leader of a fingerprint: runs the app for everyone waiting, forwards its response at
once, and keeps a copy while it can still be shared."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from asgi_perf._core.asgi import Headers, Message, Send
from asgi_perf._core.recording import encode_response
from asgi_perf.dedup._rules import PLAIN, replayable
from asgi_perf.stores import StoreUnavailable
from asgi_perf.stores._base import SyncOperations
from asgi_perf.stores._singleflight import Lease

__all__ = ["NOT_SHARED", "PASS", "Leader", "LeaderSettings"]

NOT_SHARED = frozenset({408, 425, 429})
#: The record of a fingerprint whose response is not shared ("hit-for-pass"): waiters and
#: later duplicates run their own request.
PASS = b"asgi-perf:pass"


class LeaderSettings:
    """What every leader of one middleware shares, made once with the middleware (not copied
    into each leader, nor a bound method made, per request): how to give up on a remote
    store, which request fields the fingerprint holds, the largest body kept, how long a
    record and a pass live, where a store failure goes; and the count of responses not
    shared, which every leader adds to (the middleware reports it)."""

    __slots__ = (
        "failed",
        "fingerprinted",
        "give_up",
        "max_body",
        "not_shared",
        "pass_ttl",
        "record_ttl",
    )

    def __init__(
        self,
        give_up: Callable[[str, str, Lease | None, str | None], Awaitable[None]],
        fingerprinted: frozenset[bytes],
        max_body: int,
        record_ttl: float,
        pass_ttl: float,
        failed: Callable[[Exception], None],
    ) -> None:
        self.give_up = give_up
        self.fingerprinted = fingerprinted
        self.max_body = max_body
        self.record_ttl = record_ttl
        self.pass_ttl = pass_ttl
        self.failed = failed  # a store failure: the middleware's outage
        self.not_shared = 0


class Leader:
    """The leader's response on its way: forwarded at once, a copy kept while it can still be
    shared (decided at the start message), the waiters released the moment it cannot be. Its
    state for the middleware to read afterwards; it gets what it needs, not the middleware:
    this request's claim and the middleware's :class:`LeaderSettings`."""

    __slots__ = (
        "claim_key",
        "content",
        "held",
        "kept",
        "lease",
        "memory",
        "record_key",
        "send_next",
        "settings",
        "status",
        "token",
        "user",
    )

    send_next: Send
    settings: LeaderSettings
    user: bool
    claim_key: str
    token: str
    lease: Lease | None
    memory: SyncOperations | None  # the memory store's sync operations (no lease), or None
    record_key: str
    held: bool
    status: int
    kept: Headers | None
    content: bytes | None

    def send(self, message: Message) -> Awaitable[None]:
        """A plain function handing back the awaitable of the message forwarded: no coroutine
        per message (a coroutine budget holds it: ``tests/unit/package/test_budgets.py``); on
        a remote store, the record or the pass is written by one, before the message."""
        if self.held:
            kind = message["type"]
            settings = self.settings
            if kind == "http.response.start" and self.kept is None:
                self.status = status = message["status"]
                if status < 500 and status not in NOT_SHARED:
                    headers = message["headers"] if "headers" in message else ()
                    for name, _ in headers:
                        if name not in PLAIN:  # a field that may be dropped or forbid a replay
                            self.kept = replayable(headers, settings.fingerprinted, self.user)
                            break
                    else:  # the common case: only fields that are kept as they are, no call
                        self.kept = list(headers)
                shared = self.kept is not None
            elif (
                kind == "http.response.body"
                and self.kept is not None
                and self.content is None
                and not ("more_body" in message and message["more_body"])
                and len(chunk := message["body"] if "body" in message else b"") <= settings.max_body
            ):
                # Complete: published before the client has it, so waiters (and, on a stack
                # that holds writes back, the writes of the layers inside) go out with it.
                self.content = chunk
                self.held = False
                shared = True
                record = encode_response(self.status, self.kept, chunk, time.time())
                if self.memory is not None:
                    self.memory.fulfil_nowait(
                        self.claim_key, self.token, self.record_key, record, settings.record_ttl
                    )
                elif self.lease is not None:
                    return self._publish(record, message)
            else:  # streaming, too large, a second body, pathsend, trailers...
                shared = False
            if not shared:  # the waiters released now, the fingerprint marked as not shared
                self.held = False
                if self.memory is None:
                    return self._pass(message)
                settings.not_shared += 1  # the memory store's sync operations: no coroutine
                self.memory.fulfil_nowait(
                    self.claim_key, self.token, self.record_key, PASS, settings.pass_ttl
                )
        return self.send_next(message)

    async def _publish(self, record: bytes, message: Message) -> None:
        """A remote store: the record stored and the claim released, then the message."""
        assert self.lease is not None
        try:
            await self.lease.fulfil(self.record_key, record, self.settings.record_ttl)
        except StoreUnavailable as exc:
            self.settings.failed(exc)
        await self.send_next(message)

    async def _pass(self, message: Message) -> None:
        """A remote store: the fingerprint marked as not shared, then the message."""
        await self.settings.give_up(self.claim_key, self.token, self.lease, self.record_key)
        await self.send_next(message)
