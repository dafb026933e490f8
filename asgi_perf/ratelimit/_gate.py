"""One check of one request: who it is, which policy applies, the limiter's decision, and the
refusal. The middleware and its deferred responder share one :class:`Gate` (settings and
counters, built once); neither reaches into the other."""

from __future__ import annotations

import asyncio
import time
from functools import lru_cache
from typing import Any

from asgi_perf._core.asgi import Headers, Message, Receive, Scope, Send, problem_body, send_response
from asgi_perf._core.context import add_timing
from asgi_perf._core.identity import ClientIP, UserKey, default_user_key
from asgi_perf._core.outage import Outage
from asgi_perf.ratelimit._rules import Policy, Route, refusal_body
from asgi_perf.ratelimit._strategies import Decision, Limiter, MemoryLimiter
from asgi_perf.stores import StoreUnavailable

__all__ = ["Counters", "Deferred", "Gate"]

_PEERS_MAX = 10_000  # grouped client addresses remembered


class Counters:
    """What the report shows of one middleware's requests."""

    __slots__ = ("allowed", "exempted", "refused")

    def __init__(self) -> None:
        self.allowed = 0
        self.refused = 0
        self.exempted = 0


class Gate:
    """Settings and counters of one rate-limit middleware, and the steps of a check."""

    def __init__(
        self,
        *,
        default: Policy,
        default_user: Policy,
        routes: tuple[Route, ...],
        user_key: UserKey,
        client_ip: ClientIP,
        limiter: Limiter,
        outage: Outage,
        headers: bool,
        fail_open: bool,
    ) -> None:
        self.default = default
        self.default_user = default_user
        self.routes = routes
        self.user_key = user_key
        self._default_user = user_key is default_user_key
        self.client_ip = client_ip
        self.limiter = limiter
        self.outage = outage
        self.headers = headers
        self.fail_open = fail_open
        self.counters = Counters()
        #: in-process limiter: its synchronous check (and the one-window shortcut)
        self.sync = limiter.check if isinstance(limiter, MemoryLimiter) else None
        self.one = limiter.check_one if isinstance(limiter, MemoryLimiter) else None
        self._route_for = lru_cache(maxsize=4096)(self._route_uncached)
        self._peers: dict[Any, str] = {}

    # -- who and which rule ----------------------------------------------------------------
    def _route_uncached(self, method: str, path: str) -> Route | None:
        for route in self.routes:
            if (not route.methods or method in route.methods) and route.match(path):
                return route
        return None

    def identify(self, scope: Scope) -> tuple[str, Policy]:
        """The counted identity (``u:<user>`` or ``ip:<address>``) and its policy."""
        if self._default_user and "user" not in scope and not ("state" in scope and scope["state"]):
            user = None  # what default_user_key says of a scope without user nor state, no call
        else:
            user = self.user_key(scope)
        route = self._route_for(scope["method"], scope["path"]) if self.routes else None
        if user is not None:
            return "u:" + user, self.default_user if route is None else route.user
        if self.client_ip.trusted:
            ip = "ip:" + self.client_ip(scope)
        else:  # the peer alone decides: remember its grouped form
            client = scope["client"] if "client" in scope else None
            peer = client[0] if client else None
            peers = self._peers
            if peer in peers:
                ip = peers[peer]
            else:
                if len(peers) >= _PEERS_MAX:
                    peers.clear()
                ip = peers[peer] = "ip:" + self.client_ip(scope)
        return ip, self.default if route is None else route.ip

    # -- checking --------------------------------------------------------------------------
    async def decide(self, scope: Scope, identity: str, policy: Policy) -> Decision | None:
        """The limiter's decision, or ``None`` when the store failed (an outage)."""
        if self.sync is not None:
            return self.sync(identity, policy.name, policy.windows)
        outage = self.outage
        if not outage.allow():
            return None
        start = time.perf_counter()
        try:
            decision = await self.limiter.hit(identity, policy.name, policy.windows)
        except StoreUnavailable as exc:
            outage.failed(exc)
            return None
        add_timing(scope, "ratelimit", (time.perf_counter() - start) * 1000.0)
        if outage.down:
            outage.ok()
        return decision

    async def refuse(self, send: Send, policy: Policy, decision: Decision | None) -> None:
        """``429`` with the limit fields, or ``503`` when the store is down and fail-closed."""
        if decision is None:
            body = problem_body(
                503, "Service Unavailable", "The rate-limit store is unavailable.", "about:blank"
            )
            headers: Headers = [(b"retry-after", b"1"), (b"cache-control", b"no-store")]
            await send_response(send, 503, body, headers, b"application/problem+json")
            return
        self.counters.refused += 1
        headers, wait = policy.fields(decision)
        i = decision.tightest()
        headers.append((b"retry-after", b"%d" % wait))
        headers.append((b"cache-control", b"no-store"))
        violated = tuple(j for j, left in enumerate(decision.remaining) if left < 0)
        body = refusal_body(policy, i, violated, wait)
        await send_response(send, 429, body, headers, b"application/problem+json")


class Deferred:
    """``defer=True`` without a user key up front: check when the app first reads or sends."""

    __slots__ = (
        "app",
        "extra",
        "gate",
        "lock",
        "receive",
        "refused",
        "scope",
        "send",
        "settled",
    )

    def __init__(self, gate: Gate, app: Any, scope: Scope, receive: Receive, send: Send) -> None:
        self.gate = gate
        self.app = app
        self.scope = scope
        self.receive = receive
        self.send = send
        self.settled = False
        self.refused = False
        self.extra: Headers = []
        self.lock = asyncio.Lock()
        scope.setdefault("state", {})  # inner layers write the user id where we read it

    async def _settle(self) -> None:
        async with self.lock:
            if self.settled:
                return
            gate = self.gate
            identity, policy = gate.identify(self.scope)
            decision = await gate.decide(self.scope, identity, policy)
            self.settled = True
            if decision is None:
                if not gate.fail_open:
                    self.refused = True
                    await gate.refuse(self.send, policy, None)
                return
            if not decision.allowed:
                self.refused = True
                await gate.refuse(self.send, policy, decision)
                return
            gate.counters.allowed += 1
            if gate.headers:
                self.extra = policy.fields(decision)[0]

    async def _receive(self) -> Message:
        if not self.settled:
            await self._settle()
        if self.refused:
            return {"type": "http.disconnect"}
        return await self.receive()

    async def _send(self, message: Message) -> None:
        if not self.settled:
            await self._settle()
        if self.refused:
            return  # the refusal went out instead of the app's response
        if self.extra and message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), *self.extra]
        await self.send(message)

    async def run(self) -> None:
        try:
            await self.app(self.scope, self._receive, self._send)
        except Exception:
            if not self.refused:
                raise
            # The app failed on the disconnect it was handed after the refusal went out.
