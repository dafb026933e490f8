"""Cache warming: requests sent through the whole stack when the app's lifespan starts.

``CacheWarmer(app, warm=[...])`` (or ``ASGI_PERF_CACHE_WARM`` with ``asgi_perf.from_env``, which
puts it outermost) lets the app start (its own lifespan handlers run first: pools, clients),
then sends a ``GET`` for every entry through everything it wraps, at most ``concurrency`` at a
time, each bounded by ``timeout``; only then does the server hear ``lifespan.startup.complete``,
so the first users after a deploy are served from a warm cache. A failure (an exception, a
5xx, a timeout) is logged and counted, never fatal: startup always completes.

An entry is a path (``/items?page=1``, sent with ``Host: localhost``) or an absolute URL
(``https://shop.example/items``): the cache keys on scheme and ``Host``, so give URLs the way
clients reach the app. Request headers follow in brackets (``[Accept-Encoding: br]``: the
cache keeps one entry per negotiated coding). Entries are separated by ``;`` or new lines::

    ASGI_PERF_CACHE_WARM="https://shop.example/; https://shop.example/items [Accept-Encoding: br]"

With a shared store (Redis) one worker warms: each tries a claim on a key naming the list, the
winner warms and the others skip (``claim_ttl``, default 60 s: workers that start within it
skip; a store that cannot be reached means this worker warms anyway). Responses are discarded
as they stream; nothing is buffered. Warming requests are ordinary requests to every layer
(timing counts them; ``User-Agent: asgi-perf-warm`` tells them apart).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from asgi_perf._core.asgi import ASGIApp, Message, Receive, Scope, Send
from asgi_perf._core.config import (
    KEY_PREFIX_ENV,
    ConfigError,
    EnvConfigurable,
    EnvVar,
    to_duration,
    to_int,
)
from asgi_perf._core.http import fingerprint
from asgi_perf._core.stats import register

__all__ = ["CacheWarmer", "WarmRequest", "parse_warm"]

logger = logging.getLogger("asgi_perf.warm")

EXAMPLE = "'/; https://shop.example/items [Accept-Encoding: br]; /about'"
USER_AGENT = b"asgi-perf-warm"
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


@dataclass(frozen=True, slots=True)
class WarmRequest:
    """One ``GET`` to send at startup."""

    scheme: str
    host: str  # the Host header: name[:port]
    server: tuple[str, int]
    path: str  # decoded, as in an ASGI scope
    raw_path: bytes
    query: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()

    def __str__(self) -> str:
        query = "?" + self.query.decode("latin-1") if self.query else ""
        return f"{self.scheme}://{self.host}{self.raw_path.decode('latin-1')}{query}"


def _split_entries(text: str) -> list[str]:
    """Split on ``;`` and new lines outside ``[...]`` (header values may hold ``;``)."""
    entries: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth = max(0, depth - 1)
        if char in ";\n" and depth == 0:
            entries.append("".join(current))
            current = []
        else:
            current.append(char)
    entries.append("".join(current))
    return [e.strip() for e in entries if e.strip()]


def _header(text: str, name: str, entry: str) -> tuple[bytes, bytes]:
    field, colon, value = text.partition(":")
    field, value = field.strip(), value.strip()
    if not colon or not field or not set(field) <= _TOKEN:
        raise ConfigError(
            name, entry, f"headers as [Name: value] after the target, as in {EXAMPLE}"
        )
    if not value.isprintable() or not value.isascii():
        raise ConfigError(name, entry, "header values of printable ASCII")
    if field.lower() == "host":
        raise ConfigError(name, entry, "the host in an absolute URL, not a [Host: …] header")
    return field.lower().encode("ascii"), value.encode("ascii")


def _request(target: str, headers: list[tuple[bytes, bytes]], name: str, entry: str) -> WarmRequest:
    if target.startswith("/"):
        parts = urlsplit("http://localhost" + target)
    elif target.lower().startswith(("http://", "https://")):
        parts = urlsplit(target)
        if not parts.hostname:
            raise ConfigError(name, entry, "an absolute URL with a host")
    else:
        raise ConfigError(
            name, entry, f"a path starting with '/' or an http(s):// URL, as in {EXAMPLE}"
        )
    if parts.username or parts.password or parts.fragment or not target.isascii():
        raise ConfigError(name, entry, "a URL without user info or fragment, in ASCII")
    try:
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError:
        raise ConfigError(name, entry, "a URL with a valid port") from None
    raw_path = parts.path or "/"
    return WarmRequest(
        parts.scheme.lower(),
        parts.netloc.lower(),
        (parts.hostname or "localhost", port),
        unquote(raw_path),
        raw_path.encode("ascii"),
        parts.query.encode("ascii"),
        tuple(headers),
    )


def _entry(entry: str, name: str) -> WarmRequest:
    target, bracket, rest = entry.partition("[")
    target = target.strip()
    if not target or any(c.isspace() for c in target):
        raise ConfigError(name, entry, f"one path or URL per entry, as in {EXAMPLE}")
    headers: list[tuple[bytes, bytes]] = []
    while bracket:
        inside, closed, rest = rest.partition("]")
        if not closed:
            raise ConfigError(name, entry, "a ']' closing every '['")
        headers.append(_header(inside, name, entry))
        gap, bracket, rest = rest.partition("[")
        if gap.strip():
            raise ConfigError(name, entry, "only [Name: value] headers after the target")
    return _request(target, headers, name, entry)


def parse_warm(value: object, name: str = "warm") -> tuple[WarmRequest, ...]:
    """The warming list from text (see the module docstring) or an iterable of entries.

    An iterable may hold entry strings or ``(target, {header: value})`` pairs. A pure
    function: every mistake is a :class:`ConfigError` naming ``name`` and the entry.
    """
    if isinstance(value, str):
        return tuple(_entry(e, name) for e in _split_entries(value))
    if not isinstance(value, Iterable) or isinstance(value, bytes | Mapping):
        raise ConfigError(name, value, f"entries as a string such as {EXAMPLE}, or a list")
    out: list[WarmRequest] = []
    for item in value:
        if isinstance(item, WarmRequest):
            out.append(item)
        elif isinstance(item, str):
            out.extend(_entry(e, name) for e in _split_entries(item))
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], Mapping):
            target, fields = item
            headers = [_header(f"{k}: {v}", name, str(item)) for k, v in fields.items()]
            out.append(_request(str(target), headers, name, str(item)))
        else:
            raise ConfigError(name, item, "an entry string or a (target, {header: value}) pair")
    return tuple(out)


class _Exchange:
    """One warming request's ``receive`` and ``send``: the body is counted, never kept."""

    def __init__(self) -> None:
        self.status = 0
        self.bytes = 0
        self.sent_request = False
        self.done = asyncio.Event()

    async def receive(self) -> Message:
        if not self.sent_request:
            self.sent_request = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.done.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
        elif kind == "http.response.body":
            self.bytes += len(message.get("body", b""))
            if not message.get("more_body", False):
                self.done.set()
        elif kind == "http.response.pathsend":
            self.done.set()


class CacheWarmer(EnvConfigurable):
    """Warm the stack it wraps when the lifespan starts (see the module docstring)."""

    ENV_STORAGE = True
    ENV_VARS = (
        EnvVar("ASGI_PERF_CACHE_WARM", "warm", parse_warm),
        EnvVar(
            "ASGI_PERF_CACHE_WARM_CONCURRENCY",
            "concurrency",
            lambda v, n: to_int(v, n, minimum=1, maximum=256),
        ),
        EnvVar("ASGI_PERF_CACHE_WARM_TIMEOUT", "timeout", to_duration),
        KEY_PREFIX_ENV,
    )

    def __init__(
        self,
        app: ASGIApp,
        warm: str | Iterable[Any] = (),
        *,
        concurrency: int = 4,
        timeout: float | str = 10.0,
        storage: str | Any = "memory://",
        key_prefix: str = "asgi_perf:",
        claim_ttl: float | str = 60.0,
    ) -> None:
        self.app = app
        self.requests = parse_warm(warm, "warm")
        self.concurrency = to_int(concurrency, "concurrency", minimum=1, maximum=256)
        self.timeout = to_duration(timeout, "timeout")
        self.claim_ttl = to_duration(claim_ttl, "claim_ttl")
        if not isinstance(key_prefix, str):
            raise ConfigError("key_prefix", key_prefix, "a string such as 'asgi_perf:'")
        self._storage = storage
        self._key_prefix = key_prefix
        self.outcome: dict[str, Any] = {"state": "pending", "warmed": 0, "failed": 0}
        register("warm", self)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan" or not self.requests:
            await self.app(scope, receive, send)
            return

        async def send_after_warming(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                await self.warm(scope.get("state"))
            await send(message)

        await self.app(scope, receive, send_after_warming)

    async def warm(self, state: Any = None) -> dict[str, Any]:
        """Warm now (once the app started): the outcome, also in the report under ``warm``."""
        started = time.perf_counter()
        try:
            if not await self._claim():
                self.outcome = {"state": "skipped", "warmed": 0, "failed": 0}
                logger.info("cache warming skipped: another worker claimed it")
                return self.outcome
            gate = asyncio.Semaphore(self.concurrency)
            results = await asyncio.gather(*(self._one(r, gate, state) for r in self.requests))
            failed = results.count(False)
            self.outcome = {
                "state": "done",
                "warmed": len(results) - failed,
                "failed": failed,
                "seconds": time.perf_counter() - started,
            }
            logger.info(
                "cache warming: %d of %d requests answered in %.2fs",
                len(results) - failed,
                len(results),
                self.outcome["seconds"],
            )
        except Exception:  # warming must never stop the app from starting
            self.outcome = {"state": "failed", "warmed": 0, "failed": len(self.requests)}
            logger.exception("cache warming failed; the app starts cold")
        return self.outcome

    async def _claim(self) -> bool:
        """``True`` when this process should warm: it won the claim, or there is none to win."""
        from asgi_perf.stores import MemoryStore, StoreUnavailable, create_store

        store = create_store(self._storage, prefix=self._key_prefix + "warm:")
        if isinstance(store, MemoryStore):
            return True  # one process per store: nobody to share the work with
        key = "claim:" + fingerprint([str(r).encode("latin-1") for r in self.requests])
        token = f"{socket.gethostname()}:{os.getpid()}"
        try:
            return await store.claim(key, token, self.claim_ttl)
        except StoreUnavailable:
            logger.warning("cache warming: the store is unreachable, this worker warms")
            return True
        finally:
            if store is not self._storage:
                await store.close()

    async def _one(self, request: WarmRequest, gate: asyncio.Semaphore, state: Any) -> bool:
        async with gate:
            exchange = _Exchange()
            scope = _scope(request, state)
            try:
                await asyncio.wait_for(
                    self.app(scope, exchange.receive, exchange.send), self.timeout
                )
            except Exception as exc:  # TimeoutError included
                logger.warning("cache warming: GET %s failed: %r", request, exc)
                return False
            finally:
                exchange.done.set()
            if not exchange.status or exchange.status >= 500:
                logger.warning("cache warming: GET %s answered %s", request, exchange.status)
                return False
            return True

    def stats(self) -> dict[str, Any]:
        return {"requests": len(self.requests), **self.outcome}


def _scope(request: WarmRequest, state: Any) -> Scope:
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": request.scheme,
        "path": request.path,
        "raw_path": request.raw_path,
        "query_string": request.query,
        "root_path": "",
        "headers": [
            (b"host", request.host.encode("ascii")),
            (b"user-agent", USER_AGENT),
            *request.headers,
        ],
        "client": ("127.0.0.1", 0),
        "server": request.server,
        "extensions": {},
    }
    if isinstance(state, dict):
        scope["state"] = state.copy()  # what the app's lifespan put there, as servers do
    return scope
