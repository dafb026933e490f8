"""The rules of rate limiting as plain values: path patterns, per-route rules, policies with
their constant header parts, the 429 body, and who the user is. Built once, at construction."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

from asgi_perf._core.asgi import Headers, Scope, problem_body
from asgi_perf._core.config import ConfigError, to_header_name, to_rates
from asgi_perf._core.identity import UserKey, clean_key, default_user_key, header_user_key
from asgi_perf.ratelimit._headers import (
    delta_seconds,
    policy_field,
    ratelimit_template,
    retry_after,
)
from asgi_perf.ratelimit._strategies import Decision, Window

__all__ = [
    "QUOTA_EXCEEDED",
    "PathMatch",
    "Policy",
    "Route",
    "Rule",
    "compile_path",
    "make_user_key",
    "parse_rules",
    "refusal_body",
]

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


class Policy:
    """One set of windows under one name, with its constant header parts precomputed."""

    __slots__ = (
        "limit_fields",
        "name",
        "names",
        "policy",
        "remaining_prefix",
        "reset_infix",
        "single",
        "templates",
        "windows",
    )

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
        #: ``"name";r=`` and ``;t=`` of a one-window policy's ``RateLimit``: its template's
        #: parts around the two numbers, to join with digits formatted once
        self.remaining_prefix, _, rest = self.templates[0].partition(b"%d")
        self.reset_infix = rest.partition(b"%d")[0]
        self.limit_fields = tuple((b"x-ratelimit-limit", b"%d" % a) for a, _ in self.windows)
        self.single: Window | None = self.windows[0] if single else None

    def allowed_fields(self, remaining: int, reset: float) -> Headers:
        """The limit fields of an admitted request under a one-window policy: what
        :meth:`fields` gives, with the rounding of :func:`delta_seconds` written inline (this
        runs on every admitted request)."""
        t = -((1e-6 - reset) // 1)  # ceil(reset - 1e-6), as delta_seconds
        if t < 0:
            t = 0
        r, tb = b"%d" % remaining, b"%d" % t  # each formatted once, for both fields
        return [
            self.policy,
            (b"ratelimit", self.remaining_prefix + r + self.reset_infix + tb),
            self.limit_fields[0],
            (b"x-ratelimit-remaining", r),
            (b"x-ratelimit-reset", tb),
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


class Route:
    __slots__ = ("ip", "match", "methods", "user")

    def __init__(self, rule: Rule, option: str) -> None:
        name = rule.name or rule.pattern
        self.match = compile_path(rule.pattern, option)
        methods = {m.upper() for m in rule.methods}
        if "GET" in methods:
            methods.add("HEAD")  # frameworks answer HEAD with the GET route
        self.methods = frozenset(methods)
        self.ip = Policy(name, rule.limit, f"{option}[{name!r}]")
        self.user = (
            self.ip
            if rule.user_limit is None
            else Policy(name, rule.user_limit, f"{option}[{name!r}].user_limit")
        )


@lru_cache(maxsize=1024)
def refusal_body(policy: Policy, i: int, violated: tuple[int, ...], wait: int) -> bytes:
    """The RFC 9457 body of a 429 (few distinct ones: cached, a flood of refusals is cheap)."""
    amount, window = policy.windows[i]
    return problem_body(
        429,
        "Too Many Requests",
        f"Quota of {amount} requests per {window:g} seconds exceeded; retry in {wait} s.",
        QUOTA_EXCEEDED,
        **{"violated-policies": [policy.names[j] for j in violated], "retry_after": wait},
    )


def make_user_key(value: UserKey | str | None) -> UserKey:
    """The ``user_key`` option as a function: the default, a header (hashed, then the
    default), or the user's callable (its keys cleaned)."""
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
