"""Per-user and per-IP rate limits: identity, rules, standard headers, failure handling.

The counting itself is :mod:`asgi_perf.limiter` (strategies x storages, one Redis round trip
per check); this module decides *who* is counted, *against which rule*, and what the client
sees. Choices where the spec is silent:

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

import asyncio
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

from asgi_perf._core import stats
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
from asgi_perf._core.context import add_timing
from asgi_perf._core.identity import (
    PROXY_HEADER_ENV,
    TRUSTED_PROXIES_ENV,
    ClientIP,
    UserKey,
    clean_key,
    default_user_key,
    header_user_key,
)
from asgi_perf._core.outage import Outage
from asgi_perf.ratelimit._headers import (
    delta_seconds,
    policy_field,
    ratelimit_template,
    retry_after,
)
from asgi_perf.ratelimit._storage import create_limiter
from asgi_perf.ratelimit._strategies import (
    Decision,
    Limiter,
    MemoryLimiter,
    Window,
    to_strategy,
)
from asgi_perf.stores import Store, StoreUnavailable

__all__ = ["RateLimitMiddleware", "Rule", "compile_path", "parse_rules"]

logger = logging.getLogger("asgi_perf.ratelimit")

QUOTA_EXCEEDED = "https://iana.org/assignments/http-problem-types#quota-exceeded"
_METHOD_RE = re.compile(r"^[A-Za-z]+(,[A-Za-z]+)*$")
_PARAM_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::([A-Za-z_]+))?\}")

PathMatch = Callable[[str], bool]


def compile_path(pattern: str, name: str = "rules") -> PathMatch:
    """A path pattern: ``^regex``, a route template with ``{param}``, or a prefix."""
    if not isinstance(pattern, str) or not pattern.startswith(("/", "^")):
        raise ConfigError(
            name, pattern, "a path prefix '/api', a template '/users/{id}' or '^regex'"
        )
    if pattern.startswith("^"):
        try:
            regex = re.compile(pattern)
        except re.error:
            raise ConfigError(name, pattern, "a valid regular expression") from None
        return lambda path: regex.match(path) is not None
    if _PARAM_RE.search(pattern):
        parts: list[str] = []
        last = 0
        for m in _PARAM_RE.finditer(pattern):
            parts.append(re.escape(pattern[last : m.start()]))
            parts.append(".*" if m.group(2) == "path" else "[^/]+")
            last = m.end()
        parts.append(re.escape(pattern[last:]))
        template = re.compile("".join(parts) + r"\Z")
        return lambda path: template.match(path) is not None
    if pattern == "/":
        return lambda path: True
    base = pattern.rstrip("/")
    below = base + "/"
    return lambda path: path == base or path.startswith(below)


@dataclass(frozen=True)
class Rule:
    """Limits for requests whose method and path match: replaces the defaults for them.

    ``user_limit`` applies to users (default: ``limit`` for everyone); ``methods`` empty means
    any (``GET`` includes ``HEAD``); ``name`` (default: ``"METHOD pattern"`` as written)
    names the counter and the policy.
    """

    pattern: str
    limit: Any
    user_limit: Any = None
    methods: tuple[str, ...] = ()
    name: str | None = None


def parse_rules(value: object, name: str = "rules") -> tuple[Rule, ...]:
    """``{"POST /login": "5/minute"}``, :class:`Rule` objects, or the environment's
    ``"POST /login=5/minute;20/hour, /api/{id}=10/second"`` (or a JSON object)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            try:
                value = orjson.loads(text)
            except orjson.JSONDecodeError:
                raise ConfigError(name, value, "a JSON object of 'METHOD /path': rates") from None
        else:
            pairs: dict[str, str] = {}
            pending = ""
            for piece in text.split(","):  # a comma before the '=' belongs to the pattern
                pending = f"{pending},{piece}" if pending else piece
                if "=" in piece:
                    key, _, rates = pending.rpartition("=")
                    if not key.strip():
                        break
                    pairs[key.strip()] = rates.strip()
                    pending = ""
            if pending.strip() or not pairs:
                raise ConfigError(name, value, "'METHOD /path=rates' items, comma-separated")
            value = pairs
    if isinstance(value, Mapping):
        rules = []
        for key, rates in value.items():
            text = str(key).strip()
            method, sep, path = text.partition(" ")
            if sep and _METHOD_RE.match(method) and path.strip():
                methods = tuple(m.upper() for m in method.split(","))
                rules.append(Rule(path.strip(), rates, methods=methods, name=text))
            else:
                rules.append(Rule(text, rates, name=text))
        return tuple(rules)
    if isinstance(value, Iterable) and not isinstance(value, bytes):
        items = tuple(value)
        if all(isinstance(r, Rule) for r in items):
            return items
    raise ConfigError(name, value, "a mapping of 'METHOD /path' to rates, or Rule objects")


class _Policy:
    """One set of windows under one name, with its constant header parts precomputed."""

    __slots__ = ("limit_fields", "name", "names", "policy", "single", "templates", "windows")

    def __init__(self, name: str, rates: Any, option: str) -> None:
        items = to_rates(rates, option)
        self.name = name
        self.windows: tuple[Window, ...] = tuple(
            (int(item.amount), float(item.get_expiry())) for item in items
        )
        seconds = [w for _, w in self.windows]
        if len(set(seconds)) != len(seconds):
            raise ConfigError(
                option, rates, "rates with distinct windows, e.g. '10/second;100/minute'"
            )
        single = len(self.windows) == 1
        self.names = tuple(name if single else f"{name}-{w:g}s" for _, w in self.windows)
        self.policy = (
            b"ratelimit-policy",
            policy_field((n, a, w) for n, (a, w) in zip(self.names, self.windows, strict=True)),
        )
        self.templates = tuple(ratelimit_template(n) for n in self.names)
        self.limit_fields = tuple((b"x-ratelimit-limit", b"%d" % a) for a, _ in self.windows)
        self.single: Window | None = self.windows[0] if single else None

    def allowed_fields(self, remaining: int, reset: float) -> Headers:
        """The limit fields of an admitted request under a one-window policy: what
        :meth:`fields` gives, with the rounding of :func:`delta_seconds` written inline (this
        runs on every admitted request)."""
        t = -((1e-6 - reset) // 1)  # ceil(reset - 1e-6), as delta_seconds
        if t < 0:
            t = 0
        return [
            self.policy,
            (b"ratelimit", self.templates[0] % (remaining, t)),
            self.limit_fields[0],
            (b"x-ratelimit-remaining", b"%d" % remaining),
            (b"x-ratelimit-reset", b"%d" % t),
        ]

    def fields(self, decision: Decision) -> tuple[Headers, int]:
        """The limit fields for ``decision`` (one window: see :meth:`Decision.tightest`) and
        its ``t``, which on a refusal is also ``Retry-After``."""
        i = decision.tightest()
        remaining = decision.remaining[i]
        if remaining < 0:
            remaining = 0
        reset = (
            delta_seconds(decision.resets[i])
            if decision.allowed
            else retry_after(decision.resets[i])
        )
        return [
            self.policy,
            (b"ratelimit", self.templates[i] % (remaining, reset)),
            self.limit_fields[i],
            (b"x-ratelimit-remaining", b"%d" % remaining),
            (b"x-ratelimit-reset", b"%d" % reset),
        ], reset


class _Route:
    __slots__ = ("ip", "match", "methods", "user")

    def __init__(self, rule: Rule, option: str) -> None:
        name = rule.name or rule.pattern
        self.match = compile_path(rule.pattern, option)
        methods = {m.upper() for m in rule.methods}
        if "GET" in methods:
            methods.add("HEAD")  # frameworks answer HEAD with the GET route
        self.methods = frozenset(methods)
        self.ip = _Policy(name, rule.limit, f"{option}[{name!r}]")
        self.user = (
            self.ip
            if rule.user_limit is None
            else _Policy(name, rule.user_limit, f"{option}[{name!r}].user_limit")
        )


@lru_cache(maxsize=1024)
def _refusal_body(policy: _Policy, i: int, violated: tuple[int, ...], wait: int) -> bytes:
    """The RFC 9457 body of a 429 (few distinct ones: cached, a flood of refusals is cheap)."""
    amount, window = policy.windows[i]
    return problem_body(
        429,
        "Too Many Requests",
        f"Quota of {amount} requests per {window:g} seconds exceeded; retry in {wait} s.",
        QUOTA_EXCEEDED,
        **{"violated-policies": [policy.names[j] for j in violated], "retry_after": wait},
    )


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
        self.default = _Policy("default", limit, "limit")
        self.default_user = _Policy("user", user_limit, "user_limit")
        self.routes = tuple(_Route(rule, "rules") for rule in parse_rules(rules))
        names = [r.ip.name for r in self.routes]
        if len(set(names)) != len(names) or {"default", "user"} & set(names):
            raise ConfigError("rules", rules, "rules with distinct names other than default/user")
        self.exempt = tuple(
            compile_path(p, "exempt_paths") for p in to_list(exempt_paths, "exempt_paths")
        )
        self.user_key = _user_key(user_key)
        self.client_ip = ClientIP(
            trusted_proxies,
            to_int(ipv6_prefix, "ipv6_prefix", minimum=1, maximum=128),
            proxy_header,
        )
        self.headers = to_bool(headers, "headers")
        self.fail_open = to_bool(fail_open, "fail_open")
        self.defer = to_bool(defer, "defer")
        self.storage_timeout = to_positive_duration(storage_timeout, "storage_timeout")
        self.limiter: Limiter = create_limiter(
            storage,
            to_strategy(strategy),
            prefix=key_prefix + "ratelimit:",
            timeout=self.storage_timeout,
        )
        self._sync = self.limiter.check if isinstance(self.limiter, MemoryLimiter) else None
        self._one = self.limiter.check_one if isinstance(self.limiter, MemoryLimiter) else None
        self._route_for = lru_cache(maxsize=4096)(self._route_uncached)
        self._peers: dict[Any, str] = {}
        self.outage = Outage(logger, "rate-limit store")
        self.allowed = 0
        self.refused = 0
        self.exempted = 0
        stats.register("ratelimit", self)

    # -- who and which rule ----------------------------------------------------------------
    def _route_uncached(self, method: str, path: str) -> _Route | None:
        for route in self.routes:
            if (not route.methods or method in route.methods) and route.match(path):
                return route
        return None

    def _identify(self, scope: Scope) -> tuple[str, _Policy]:
        user = self.user_key(scope)
        route = self._route_for(scope["method"], scope["path"]) if self.routes else None
        if user is not None:
            return "u:" + user, self.default_user if route is None else route.user
        if self.client_ip.trusted:
            ip = "ip:" + self.client_ip(scope)
        else:  # the peer alone decides: remember its grouped form
            client = scope["client"] if "client" in scope else None  # noqa: SIM401 (no call)
            peer = client[0] if client else None
            peers = self._peers
            if peer in peers:
                ip = peers[peer]
            else:
                if len(peers) >= 10_000:
                    peers.clear()
                ip = peers[peer] = "ip:" + self.client_ip(scope)
        return ip, self.default if route is None else route.ip

    def _is_exempt(self, path: str) -> bool:
        return any(match(path) for match in self.exempt)

    # -- checking --------------------------------------------------------------------------
    async def _decide(self, identity: str, policy: _Policy) -> Decision | None:
        """The limiter's decision, or ``None`` when the store failed (an outage)."""
        if self._sync is not None:
            return self._sync(identity, policy.name, policy.windows)
        if not self.outage.allow():
            return None
        start = time.perf_counter()
        try:
            decision = await self.limiter.hit(identity, policy.name, policy.windows)
        except StoreUnavailable as exc:
            self.outage.failed(exc)
            return None
        add_timing("ratelimit", (time.perf_counter() - start) * 1000.0)
        if self.outage.down:
            self.outage.ok()
        return decision

    async def _refuse(self, send: Send, policy: _Policy, decision: Decision | None) -> None:
        if decision is None:  # the store is down and fail_open is off
            body = problem_body(
                503, "Service Unavailable", "The rate-limit store is unavailable.", "about:blank"
            )
            headers: Headers = [(b"retry-after", b"1"), (b"cache-control", b"no-store")]
            await send_response(send, 503, body, headers, b"application/problem+json")
            return
        self.refused += 1
        headers, wait = policy.fields(decision)
        i = decision.tightest()
        headers.append((b"retry-after", b"%d" % wait))
        headers.append((b"cache-control", b"no-store"))
        violated = tuple(j for j, left in enumerate(decision.remaining) if left < 0)
        body = _refusal_body(policy, i, violated, wait)
        await send_response(send, 429, body, headers, b"application/problem+json")

    # -- ASGI ------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self.exempt and self._is_exempt(scope["path"])):
            if scope["type"] == "http":
                self.exempted += 1
            await self.app(scope, receive, send)
            return
        if self.defer and self.user_key(scope) is None:
            await _Deferred(self, scope, receive, send).run()
            return
        identity, policy = self._identify(scope)
        single = policy.single
        if single is not None and self._one is not None:  # in-process, one window: no objects
            ok, left, reset = self._one(identity, policy.name, single[0], single[1])
            if ok:
                self.allowed += 1
                if not self.headers:
                    await self.app(scope, receive, send)
                    return
                await self._admit(scope, receive, send, policy.allowed_fields(left, reset))
                return
            decision: Decision | None = Decision(False, [left], [reset])
        elif self._sync is not None:
            decision = self._sync(identity, policy.name, policy.windows)
        else:
            decision = await self._decide(identity, policy)
        if decision is None:
            if self.fail_open:
                await self.app(scope, receive, send)
            else:
                await self._refuse(send, policy, None)
            return
        if not decision.allowed:
            await self._refuse(send, policy, decision)
            return
        self.allowed += 1
        if not self.headers:
            await self.app(scope, receive, send)
            return
        await self._admit(scope, receive, send, policy.fields(decision)[0])

    async def _admit(self, scope: Scope, receive: Receive, send: Send, extra: Headers) -> None:
        """Run the app; its response start carries the limit fields ``extra``."""

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = (
                    [*message["headers"], *extra] if "headers" in message else extra
                )
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def stats(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "refused": self.refused,
            "exempt": self.exempted,
            "outage": self.outage.stats(),
            "limiter": self.limiter.stats(),
        }


class _Deferred:
    """``defer=True`` without a user key up front: check when the app first reads or sends."""

    __slots__ = ("extra", "lock", "mw", "receive", "refused", "scope", "send", "settled")

    def __init__(self, mw: RateLimitMiddleware, scope: Scope, receive: Receive, send: Send) -> None:
        self.mw = mw
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
            mw = self.mw
            identity, policy = mw._identify(self.scope)
            decision = await mw._decide(identity, policy)
            self.settled = True
            if decision is None:
                if not mw.fail_open:
                    self.refused = True
                    await mw._refuse(self.send, policy, None)
                return
            if not decision.allowed:
                self.refused = True
                await mw._refuse(self.send, policy, decision)
                return
            mw.allowed += 1
            if mw.headers:
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
            await self.mw.app(self.scope, self._receive, self._send)
        except Exception:
            if not self.refused:
                raise
            # The app failed on the disconnect it was handed after the refusal went out.


def _user_key(value: UserKey | str | None) -> UserKey:
    if value is None:
        return default_user_key
    if isinstance(value, str):
        name = to_header_name(value, "user_key")
        if name is None:
            raise ConfigError("user_key", value, "a header name, a callable or None")
        from_header = header_user_key(name)

        def header_then_default(scope: Scope) -> str | None:
            return from_header(scope) or default_user_key(scope)

        return header_then_default
    if callable(value):
        custom = value

        def cleaned(scope: Scope) -> str | None:
            return clean_key(custom(scope))

        return cleaned
    raise ConfigError("user_key", value, "a header name, a callable or None")
