"""The cache's options (checked once, at construction) and its counters.

Everything a per-request responder needs to know is in :class:`Settings`; everything it
counts goes to :class:`Counters`. Neither holds the middleware.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from asgi_perf._core.config import (
    KEY_PREFIX_ENV,
    ConfigError,
    EnvVar,
    to_bool,
    to_duration,
    to_header_names,
    to_int,
    to_list,
    to_methods,
    to_positive_duration,
    to_size,
)
from asgi_perf.cache._entry import NOT_STORED, EntryPolicy
from asgi_perf.cache._keys import path_matcher
from asgi_perf.cache._rules import DEFAULT_BYPASS_HEADERS
from asgi_perf.cache._serve import CacheStatus

__all__ = ["ENV_VARS", "Counters", "Settings"]


def _methods(value: object, name: str) -> frozenset[str]:
    return to_methods(value, name, allowed=("GET", "HEAD"))  # the methods a shared cache serves


def _optional_ttl(value: object, name: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return to_duration(value, name)


def _paths(value: object, name: str) -> re.Pattern[str] | None:
    patterns = to_list(value, name)
    for pattern in patterns:
        if not pattern.startswith("/") or "*" in pattern[:-1]:
            raise ConfigError(
                name,
                value,
                "paths or route templates: /about, /items/{id}, /static/* (comma-separated)",
            )
    return path_matcher(patterns)


def _cache_name(value: object, name: str) -> str:
    if not isinstance(value, str) or not value or not (value.isascii() and value.isprintable()):
        raise ConfigError(name, value, "a name of printable ASCII characters, e.g. 'asgi-perf'")
    return value


class Settings:
    """The options of one CacheMiddleware, converted and checked."""

    def __init__(
        self,
        *,
        default_ttl: float | str | None = None,
        paths: Iterable[str] | str = (),
        methods: Iterable[str] | str = ("GET", "HEAD"),
        max_entries: int = 10_000,
        max_bytes: int | str = 64 * 1024 * 1024,
        max_body_size: int | str = 1024 * 1024,
        key_headers: Iterable[str] | str = (),
        cache_authenticated: bool = False,
        stale_while_revalidate: float | str = 0.0,
        stale_if_error: float | str = 300.0,
        max_stale_keep: float | str = 3600.0,
        lock_timeout: float | str = 5.0,
        hit_for_miss_ttl: float | str = 10.0,
        local_ttl: float | str = 0.0,
        bypass_headers: Iterable[str] | str = DEFAULT_BYPASS_HEADERS,
        cdn_cache_control: bool = True,
        targeted_field: str | None = "Asgi-Perf-Cache-Control",
        cache_name: str = "asgi-perf",
        cache_status_key: bool = False,
        key_prefix: str = "asgi_perf:",
    ) -> None:
        self.default_ttl = _optional_ttl(default_ttl, "default_ttl")
        self.paths = _paths(paths, "paths")
        self.methods = _methods(methods, "methods")
        self.max_entries = to_int(max_entries, "max_entries", minimum=1)
        self.max_bytes = to_size(max_bytes, "max_bytes")
        self.max_body_size = to_size(max_body_size, "max_body_size")
        self.key_headers = to_header_names(key_headers, "key_headers")
        self.cache_authenticated = to_bool(cache_authenticated, "cache_authenticated")
        self.stale_while_revalidate = to_duration(stale_while_revalidate, "stale_while_revalidate")
        self.stale_if_error = to_duration(stale_if_error, "stale_if_error")
        self.max_stale_keep = to_duration(max_stale_keep, "max_stale_keep")
        self.lock_timeout = to_positive_duration(lock_timeout, "lock_timeout")
        self.hit_for_miss_ttl = to_positive_duration(hit_for_miss_ttl, "hit_for_miss_ttl")
        self.local_ttl = to_duration(local_ttl, "local_ttl")
        # A header both keyed and listed for bypass is keyed: it cannot poison its own entry.
        self.bypass_headers = frozenset(to_header_names(bypass_headers, "bypass_headers")) - set(
            self.key_headers
        )
        own = to_header_names(targeted_field or "", "targeted_field")
        # RFC 9213: the most specific targeted field first; this cache's own one is never
        # forwarded (no other cache obeys it), CDN-Cache-Control is (a CDN in front needs it).
        self.own_field: bytes | None = own[0] if own else None
        cdn = (b"cdn-cache-control",) if to_bool(cdn_cache_control, "cdn_cache_control") else ()
        self.targeted: tuple[bytes, ...] = (*own[:1], *cdn)
        self.drop = NOT_STORED | {self.own_field} if self.own_field else NOT_STORED
        # Fields addressed to this cache alone: never forwarded to the client.
        self.consumed = frozenset({b"cache-tag", *own[:1]})
        self.status = CacheStatus(
            _cache_name(cache_name, "cache_name"), to_bool(cache_status_key, "cache_status_key")
        )
        if not isinstance(key_prefix, str):
            raise ConfigError("key_prefix", key_prefix, "a string such as 'asgi_perf:'")
        self.key_prefix = key_prefix
        #: The entry policy by whether the request had credentials, when it is the same for
        #: every path (no ``paths``); else ``None`` (:meth:`policy` decides per path).
        self.fixed_policies = (
            None if self.paths is not None else {c: self._policy("/", c) for c in (False, True)}
        )

    def ttl_for(self, path: str) -> float | None:
        """The default TTL a response on ``path`` gets when it states no freshness."""
        if self.default_ttl is None or (self.paths is not None and not self.paths.fullmatch(path)):
            return None
        return self.default_ttl

    def policy(self, path: str, credentials: bool) -> EntryPolicy:
        if self.fixed_policies is not None:  # the same for every path: made once
            return self.fixed_policies[credentials]
        return self._policy(path, credentials)

    def _policy(self, path: str, credentials: bool) -> EntryPolicy:
        return EntryPolicy(
            self.targeted,
            self.ttl_for(path),
            self.stale_while_revalidate,
            self.stale_if_error,
            credentials,
            self.cache_authenticated,
            self.drop,
        )


ENV_VARS = (
    EnvVar("ASGI_PERF_CACHE_DEFAULT_TTL", "default_ttl", to_duration),
    EnvVar("ASGI_PERF_CACHE_PATHS", "paths", to_list),
    EnvVar("ASGI_PERF_CACHE_MAX_ENTRIES", "max_entries", lambda v, n: to_int(v, n, minimum=1)),
    EnvVar("ASGI_PERF_CACHE_MAX_BYTES", "max_bytes", to_size),
    EnvVar("ASGI_PERF_CACHE_MAX_BODY_SIZE", "max_body_size", to_size),
    EnvVar("ASGI_PERF_CACHE_METHODS", "methods", to_list),
    EnvVar("ASGI_PERF_CACHE_KEY_HEADERS", "key_headers", to_list),
    EnvVar("ASGI_PERF_CACHE_AUTHENTICATED", "cache_authenticated", to_bool),
    EnvVar("ASGI_PERF_CACHE_STALE_WHILE_REVALIDATE", "stale_while_revalidate", to_duration),
    EnvVar("ASGI_PERF_CACHE_STALE_IF_ERROR", "stale_if_error", to_duration),
    EnvVar("ASGI_PERF_CACHE_MAX_STALE_KEEP", "max_stale_keep", to_duration),
    EnvVar("ASGI_PERF_CACHE_LOCK_TIMEOUT", "lock_timeout", to_positive_duration),
    EnvVar("ASGI_PERF_CACHE_HIT_FOR_MISS_TTL", "hit_for_miss_ttl", to_positive_duration),
    EnvVar("ASGI_PERF_CACHE_LOCAL_TTL", "local_ttl", to_duration),
    EnvVar("ASGI_PERF_CACHE_BYPASS_HEADERS", "bypass_headers", to_list),
    EnvVar("ASGI_PERF_CACHE_CDN_CACHE_CONTROL", "cdn_cache_control", to_bool),
    EnvVar("ASGI_PERF_CACHE_TARGETED_FIELD", "targeted_field", lambda v, n: v.strip()),
    EnvVar("ASGI_PERF_CACHE_NAME", "cache_name", lambda v, n: v.strip()),
    EnvVar("ASGI_PERF_CACHE_STATUS_KEY", "cache_status_key", to_bool),
    KEY_PREFIX_ENV,
)


class Counters:
    """What the cache counts; shared by the middleware and its responders."""

    __slots__ = (
        "bypasses",
        "coalesced",
        "hit_for_miss",
        "hits",
        "invalidations",
        "lock_timeouts",
        "misses",
        "not_modified",
        "revalidated",
        "stale_hits",
        "stale_if_error",
        "stores",
        "uncacheable",
    )

    def __init__(self) -> None:
        self.hits = 0
        self.stale_hits = 0
        self.misses = 0
        self.bypasses = 0
        self.stores = 0
        self.not_modified = 0
        self.coalesced = 0
        self.hit_for_miss = 0
        self.stale_if_error = 0
        self.lock_timeouts = 0
        self.revalidated = 0  # stored entries the app confirmed with a 304
        self.invalidations = 0
        self.uncacheable: dict[str, int] = {}

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}
