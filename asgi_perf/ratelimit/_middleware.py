"""Per-user and per-IP rate limits: identity, rules, standard headers, failure handling.

The counting itself is :mod:`asgi_perf.ratelimit._strategies` (strategies x storages, one Redis
round trip per check); the rules are :mod:`~asgi_perf.ratelimit._rules`, one request's check is
:mod:`~asgi_perf.ratelimit._gate`; this module decides *who* is counted, *against which rule*,
and what the client sees. Choices where the spec is silent:

- **Who**: ``user_key(scope)`` (default: an authenticated ``scope["user"]``, then
  ``scope["state"]["user_id"]``; a string names a request header whose value — an API key —
  is hashed and tried first). A user is counted under ``"u:<key>"`` with ``user_limit``;
  everyone else under ``"ip:<address>"`` with ``limit``, the address from
  :class:`~asgi_perf.identity.ClientIP` (forwarding headers only from ``trusted_proxies``).
- **When**: before the app, so a refused request never reaches it and its body is never read.
  A user id that an *inner* layer sets (an auth middleware inside this one, a FastAPI
  dependency) does not exist yet at that point; ``defer=True`` waits for it: when no user key
  is known up front, the check runs when the app first reads the body or starts its response
  (after routing, inner middlewares and dependencies). A refusal then still never reads the
  body nor sends any byte of the app's response, but the app's code up to that point ran.
  FastAPI reads a body *before* solving dependencies, so for body endpoints set the user in an
  inner middleware (or use a header key).
- **Rules** (``{"POST /login": "5/minute"}`` or :class:`Rule`): the first rule whose methods and
  path match replaces the default limits for that request (as ``slowapi``'s route limits
  replace its defaults) and has its own counter per identity. A path is matched before the app
  runs, so Starlette's ``scope["route"]`` (set only while routing) is not available; instead a
  pattern is a prefix (``/api``: ``/api`` and ``/api/...``), a route template
  (``/users/{id}``, ``/files/{p:path}``: one segment / the rest) or a regex (``^/v\\d+/``).
  The counter is keyed by the *rule*, never the concrete URL, so ``/users/1`` and
  ``/users/2`` share one budget. ``exempt_paths`` use the same patterns and cost nothing.
- **Several windows** (``"10/second;100/minute"``): every one must have room; the headers
  describe one window — on a refusal the one that clears last, else the one with the fewest
  remaining — with every window listed in ``RateLimit-Policy``.
- **Headers** (draft-ietf-httpapi-ratelimit-headers-10 and ``X-RateLimit-*``): see
  :mod:`asgi_perf.ratelimit._headers`; ``t`` per strategy in :mod:`asgi_perf.ratelimit._strategies`.
  Refusals: ``429``, ``Retry-After`` = ``t`` >= 1, ``Cache-Control: no-store`` and an RFC 9457
  body with type ``https://iana.org/assignments/http-problem-types#quota-exceeded``.
- **Failures**: a store error, or a reply slower than ``storage_timeout`` (the Redis client's
  socket timeout, so it costs nothing per call; connecting waits at least 1 s, the shared
  store's floor), fails that request (:class:`~asgi_perf._core.outage.Outage`: one warning
  per incident, a counter, one info line on recovery). ``fail_open=True`` admits the request
  without limit headers; ``False`` answers ``503`` with ``Retry-After: 1``. One failure is one
  request's problem: only a run of failures opens the circuit, and while it is open a share of
  requests still probes the store, so a store that answers again is used again at once.
- **Redis** 5 or newer (scripts that write after ``TIME``); Valkey works the same.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Iterable
from typing import Any

from asgi_perf._core import stats
from asgi_perf._core.asgi import ASGIApp, Headers, Message, Receive, Scope, Send
from asgi_perf._core.config import (
    KEY_PREFIX_ENV,
    ConfigError,
    EnvConfigurable,
    EnvVar,
    to_bool,
    to_header_name,
    to_int,
    to_list,
    to_positive_duration,
    to_rates,
)
from asgi_perf._core.context import SCOPE_KEY
from asgi_perf._core.identity import PROXY_HEADER_ENV, TRUSTED_PROXIES_ENV, ClientIP, UserKey
from asgi_perf._core.outage import Outage
from asgi_perf.ratelimit._gate import Deferred, Gate
from asgi_perf.ratelimit._rules import (
    Policy,
    Route,
    Rule,
    compile_path,
    make_user_key,
    parse_rules,
)
from asgi_perf.ratelimit._storage import create_limiter
from asgi_perf.ratelimit._strategies import Decision, Limiter, to_strategy
from asgi_perf.stores import Store
from asgi_perf.stores._prefetch import PrefetchOp

__all__ = ["RateLimitMiddleware", "Rule", "compile_path", "parse_rules"]

logger = logging.getLogger("asgi_perf.ratelimit")


def with_fields(send: Send, extra: Headers) -> Send:
    """``send`` whose response start carries the limit fields ``extra`` (a plain function
    returning the wrapper, itself a plain function handing back ``send``'s awaitable: an
    admitted request makes no coroutine of its own for either)."""

    def send_with_headers(message: Message) -> Awaitable[None]:
        if message["type"] == "http.response.start":
            message["headers"] = [*message["headers"], *extra] if "headers" in message else extra
        return send(message)

    return send_with_headers


class RateLimitMiddleware(EnvConfigurable):
    """Refuse clients over their budget with ``429`` before the app runs."""

    ENV_ENABLED = ("ASGI_PERF_RATE_LIMIT_ENABLED", False)
    ENV_STORAGE = True
    ENV_VARS = (
        EnvVar("ASGI_PERF_RATE_LIMIT", "limit", to_rates),
        EnvVar("ASGI_PERF_RATE_LIMIT_USER", "user_limit", to_rates),
        EnvVar("ASGI_PERF_RATE_LIMIT_STRATEGY", "strategy", to_strategy),
        TRUSTED_PROXIES_ENV,
        PROXY_HEADER_ENV,
        EnvVar("ASGI_PERF_RATE_LIMIT_RULES", "rules", parse_rules),
        EnvVar("ASGI_PERF_RATE_LIMIT_EXEMPT_PATHS", "exempt_paths", to_list),
        EnvVar("ASGI_PERF_RATE_LIMIT_USER_HEADER", "user_key", to_header_name),
        EnvVar("ASGI_PERF_RATE_LIMIT_HEADERS", "headers", to_bool),
        EnvVar("ASGI_PERF_RATE_LIMIT_FAIL_OPEN", "fail_open", to_bool),
        EnvVar(
            "ASGI_PERF_RATE_LIMIT_IPV6_PREFIX",
            "ipv6_prefix",
            lambda v, n: to_int(v, n, minimum=1, maximum=128),
        ),
        EnvVar("ASGI_PERF_RATE_LIMIT_STORAGE_TIMEOUT", "storage_timeout", to_positive_duration),
        EnvVar("ASGI_PERF_RATE_LIMIT_DEFER", "defer", to_bool),
        KEY_PREFIX_ENV,
    )

    def __init__(
        self,
        app: ASGIApp,
        *,
        limit: Any = "100/minute",
        user_limit: Any = "1000/minute",
        strategy: str = "moving-window",
        storage: str | Store = "memory://",
        user_key: UserKey | str | None = None,
        trusted_proxies: Iterable[str] | str = (),
        proxy_header: str = "x-forwarded-for",
        rules: Any = (),
        exempt_paths: Iterable[str] | str = (),
        headers: bool = True,
        fail_open: bool = True,
        ipv6_prefix: int = 64,
        storage_timeout: float | str = 0.05,
        defer: bool = False,
        key_prefix: str = "asgi_perf:",
    ) -> None:
        self.app = app
        self.default = Policy("default", limit, "limit")
        self.default_user = Policy("user", user_limit, "user_limit")
        self.routes = tuple(Route(rule, "rules") for rule in parse_rules(rules))
        names = [r.ip.name for r in self.routes]
        if len(set(names)) != len(names) or {"default", "user"} & set(names):
            raise ConfigError("rules", rules, "rules with distinct names other than default/user")
        self.exempt = tuple(
            compile_path(p, "exempt_paths") for p in to_list(exempt_paths, "exempt_paths")
        )
        self.user_key = make_user_key(user_key)
        self.client_ip = ClientIP(
            trusted_proxies,
            to_int(ipv6_prefix, "ipv6_prefix", minimum=1, maximum=128),
            proxy_header,
        )
        self.headers = to_bool(headers, "headers")
        #: Set by :func:`asgi_perf.from_env` when Timing is the next layer outside: an
        #: admitted request's fields go out with Timing's (``RequestContext.fields``), on
        #: one header list, and this layer wraps no ``send``.
        self.hands_fields = False
        self.fail_open = to_bool(fail_open, "fail_open")
        self.defer = to_bool(defer, "defer")
        self.storage_timeout = to_positive_duration(storage_timeout, "storage_timeout")
        self.limiter: Limiter = create_limiter(
            storage,
            to_strategy(strategy),
            prefix=key_prefix + "ratelimit:",
            timeout=self.storage_timeout,
        )
        self.prefetchable = self.limiter.prefetchable
        self.outage = Outage(logger, "rate-limit store")
        self.gate = Gate(
            default=self.default,
            default_user=self.default_user,
            routes=self.routes,
            user_key=self.user_key,
            client_ip=self.client_ip,
            limiter=self.limiter,
            outage=self.outage,
            headers=self.headers,
            fail_open=self.fail_open,
        )
        self.counters = self.gate.counters
        stats.register("ratelimit", self)

    def _is_exempt(self, path: str) -> bool:
        return any(match(path) for match in self.exempt)

    # -- ASGI ------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self.exempt and self._is_exempt(scope["path"])):
            if scope["type"] == "http":
                self.counters.exempted += 1
            await self.app(scope, receive, send)
            return
        gate = self.gate
        if self.defer and self.user_key(scope) is None:
            await Deferred(gate, self.app, scope, receive, send).run()
            return
        identity, policy = gate.identify(scope)
        single = policy.single
        one = gate.one
        extra: Headers | None
        if single is not None and one is not None:  # in-process, one window: no objects
            ok, left, reset = one(identity, policy.name, single[0], single[1])
            if not ok:
                await gate.refuse(send, policy, Decision(False, [left], [reset]))
                return
            extra = policy.allowed_fields(left, reset) if self.headers else None
        else:
            decision = await gate.decide(scope, identity, policy)
            if decision is None:
                if self.fail_open:
                    await self.app(scope, receive, send)
                else:
                    await gate.refuse(send, policy, None)
                return
            if not decision.allowed:
                await gate.refuse(send, policy, decision)
                return
            extra = policy.fields(decision)[0] if self.headers else None
        self.counters.allowed += 1
        if extra is None:
            await self.app(scope, receive, send)
        elif self.hands_fields and SCOPE_KEY in scope:
            scope[SCOPE_KEY].fields = extra  # Timing, right outside, adds them (from_env)
            await self.app(scope, receive, send)
        else:
            await self.app(scope, receive, with_fields(send, extra))

    def prefetch_ops(self, scope: Scope) -> list[PrefetchOp]:
        """This request's check, to send ahead with other layers' first store calls (the
        check :meth:`__call__` will then make, answered from the reply)."""
        if (self.exempt and self._is_exempt(scope["path"])) or self.outage.down:
            return []
        if self.defer and self.user_key(scope) is None:
            return []
        identity, policy = self.gate.identify(scope)
        op = self.limiter.hit_op(identity, policy.name, policy.windows)
        return [] if op is None else [op]

    def stats(self) -> dict[str, Any]:
        return {
            "allowed": self.counters.allowed,
            "refused": self.counters.refused,
            "exempt": self.counters.exempted,
            "outage": self.outage.stats(),
            "limiter": self.limiter.stats(),
        }
