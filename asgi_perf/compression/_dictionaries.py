"""Offered dictionaries, kept by SHA-256 in the store so that every worker can use them.

The state side of RFC 9842 for :class:`~asgi_perf.compression.CompressionMiddleware` (the pure
rules are in :mod:`._dictionary_rules`):

- **Offer**: a ``GET`` answered 200 on a rule's path carries ``Use-As-Dictionary``; its body
  (up to ``max_size``) is hashed and written to the store under ``d:<sha-256 hex>`` with the
  rule's ``match``/``match-dest``/``id`` and its *scope*, for ``ttl`` seconds, before the last
  body message leaves (so the client's next request finds it on any worker). A body this worker
  wrote less than ``ttl / 2`` ago is not written again (polled resources repeat).
- **Scope**: a response is never kept when it is ``no-store``. One that is ``private``, sets a
  cookie, or answers a request with credentials (``Authorization``/``Cookie``) without
  ``public`` is kept for that identity only (a hash of the credentials): another identity
  naming its hash gets the normal coding. ``private`` without credentials is never kept (whose
  would it be?). Cache-Control is read conservatively: the words ``no-store``/``private``
  anywhere in it count.
- **Use**: a request on a rule's path with ``Available-Dictionary``, accepting ``dcz``, whose
  dictionary is known (this worker's bounded local copies first, then one store read; the
  content is checked against its hash), matches the dictionary's own ``match``, ``id``
  (``Dictionary-ID``), ``match-dest`` (``Sec-Fetch-Dest``) and scope gets a ``dcz`` codec.
  Anything else (malformed header, unknown hash, store down) means the normal negotiation.
- Store failures are logged once per incident and counted; they only cost the saving.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections import OrderedDict
from typing import Any

import orjson

from asgi_perf._core.asgi import Headers, Scope
from asgi_perf._core.config import ConfigError, install_hint, to_duration, to_int
from asgi_perf._core.identity import hash_secret
from asgi_perf._core.negotiation import choose_encoding
from asgi_perf._core.outage import Outage
from asgi_perf.compression._codecs import ZstdDictionary, dictionary_encodings
from asgi_perf.compression._dictionary_rules import (
    Rule,
    compile_match,
    parse_available_dictionary,
    parse_sf_string,
)
from asgi_perf.stores import Store, StoreUnavailable, create_store

__all__ = ["DictRequest", "Dictionaries", "Offer", "build_dictionaries", "max_count", "ttl"]

_LOCAL_ENTRIES = 64  # dictionaries this worker keeps (content and prepared codec)
_LOCAL_BYTES = 16 * 1024 * 1024
_PATH_CACHE = 1024  # memo of request path -> rule, bounded
_FORMAT = b"D1"  # stored value: D1 + JSON [match, [dest…], id, scope] + "\n" + content
_DCZ = ("dcz",)
_STORE_BYTES = 64 * 1024 * 1024  # bound of a memory store of dictionaries

Meta = tuple[str, tuple[str, ...], str, str]  # match, match-dest, id, scope


class _Entry:
    __slots__ = ("codec", "content", "expires", "meta", "refresh")

    def __init__(self, content: bytes, meta: Meta, expires: float, refresh: float) -> None:
        self.content = content  # its hash() is the key of Dictionaries._digests
        self.meta = meta
        self.expires = expires
        self.refresh = refresh  # before this, offering the same body again writes nothing
        self.codec: ZstdDictionary | None = None


def _key(digest: bytes) -> str:
    return "d:" + digest.hex()


def _encode(meta: Meta, content: bytes) -> bytes:
    match, dests, ident, scope = meta
    return _FORMAT + orjson.dumps([match, list(dests), ident, scope]) + b"\n" + content


def _decode(raw: bytes, digest: bytes) -> tuple[Meta, bytes] | None:
    """A stored dictionary, or ``None`` if it is malformed or its content is not ``digest``'s."""
    head, sep, content = raw.partition(b"\n")
    if not sep or not head.startswith(_FORMAT):
        return None
    try:
        match, dests, ident, scope = orjson.loads(head[len(_FORMAT) :])
    except (orjson.JSONDecodeError, ValueError, TypeError):
        return None
    if hashlib.sha256(content).digest() != digest:
        return None
    return (str(match), tuple(str(d) for d in dests), str(ident), str(scope)), content


class DictRequest:
    """What one request says about dictionaries (read once, only on a rule's path)."""

    __slots__ = ("accepts", "credentials", "dest", "dictionary_id", "digest", "method", "path")

    def __init__(self, scope: Scope) -> None:
        accept: bytes | None = None
        available: list[bytes] = []
        dictionary_id: bytes | None = None
        credentials: list[bytes] = []
        self.dest: str | None = None
        for key, value in scope["headers"]:
            name = key.lower()
            if name == b"accept-encoding":
                accept = value if accept is None else accept + b"," + value
            elif name == b"available-dictionary":
                available.append(value)
            elif name == b"dictionary-id":
                dictionary_id = value
            elif name == b"sec-fetch-dest":  # the destination; "empty" stands for ""
                dest = value.decode("latin-1").strip().lower()
                self.dest = "" if dest == "empty" else dest
            elif name == b"authorization" or name == b"cookie":
                credentials.append(name + b":" + value)
        # RFC 9842 §2.2: one hash; several fields are malformed, hence ignored.
        self.digest = parse_available_dictionary(available[0]) if len(available) == 1 else None
        self.dictionary_id = None if dictionary_id is None else parse_sf_string(dictionary_id)
        self.accepts = accept is not None and choose_encoding(accept, _DCZ) == "dcz"
        self.credentials = b"\x00".join(credentials)
        self.method: str = scope["method"]
        self.path: str = scope["path"]

    @property
    def identity(self) -> str:
        return hash_secret(self.credentials) if self.credentials else ""


class Offer:
    """Collects one offered response's body (bounded) and keeps it when the body ends."""

    __slots__ = ("chunks", "owner", "rule", "scope", "size", "start")

    def __init__(self, owner: Dictionaries, rule: Rule, scope: str, start: Any) -> None:
        self.owner = owner
        self.rule = rule
        self.scope = scope
        self.start = start  # the app's start message, for a response that turns out unrecordable
        self.chunks: list[bytes] | None = []
        self.size = 0

    def feed(self, body: bytes) -> None:
        chunks = self.chunks
        if chunks is None:
            return
        self.size += len(body)
        if self.size > self.owner.max_size:
            self.chunks = None  # too large to keep: the client may store it, we cannot
        elif body:
            chunks.append(body)

    async def finish(self) -> None:
        if self.chunks:
            await self.owner.remember(b"".join(self.chunks), self.rule, self.scope)


class Dictionaries:
    """The rules, the store and the local copies of one middleware's dictionaries."""

    def __init__(
        self,
        rules: tuple[Rule, ...],
        store: Store,
        *,
        ttl: float,
        max_size: int,
        level: int,
        logger: logging.Logger,
        codec_outage: Outage,
    ) -> None:
        self.rules = rules
        self.store = store
        self.ttl = ttl
        self.max_size = max_size
        self.level = level
        self.outage = Outage(logger, f"{store.kind} store (compression dictionaries)")
        self.codec_outage = codec_outage
        self._paths: dict[str, Rule | None] = {}
        self._patterns: dict[str, re.Pattern[str] | None] = {}
        self._local: OrderedDict[bytes, _Entry] = OrderedDict()
        self._local_bytes = 0
        # (length, hash()) of a local copy's content -> its SHA-256: a body offered again
        # (a polled resource) is recognised by Python's string hash and one comparison,
        # several times cheaper than SHA-256 over it.
        self._digests: dict[tuple[int, int], bytes] = {}
        self.offered = 0
        self.stored = 0
        self.used = 0
        self.unknown = 0
        self.refused = 0

    def rule_for(self, path: str) -> Rule | None:
        """The first rule whose pattern matches ``path`` (memoised, bounded)."""
        try:
            return self._paths[path]
        except KeyError:
            pass
        rule = next((r for r in self.rules if r.regex.fullmatch(path)), None)
        if len(self._paths) < _PATH_CACHE:
            self._paths[path] = rule
        return rule

    # -- use -------------------------------------------------------------------------------
    async def codec_for(self, request: DictRequest) -> ZstdDictionary | None:
        """The ``dcz`` codec for the dictionary this request names, or ``None``."""
        digest = request.digest
        if digest is None or not request.accepts:
            return None
        entry = self._local_get(digest)
        if entry is None:
            entry = await self._fetch(digest)
            if entry is None:
                self.unknown += 1
                return None
        if not self._usable(entry.meta, request):
            self.refused += 1
            return None
        codec = entry.codec
        if codec is None:
            try:
                codec = entry.codec = ZstdDictionary(entry.content, digest, self.level)
            except Exception as exc:  # a codec failure: the normal coding, logged once
                self.codec_outage.failed(exc)
                return None
        self.used += 1
        return codec

    def _usable(self, meta: Meta, request: DictRequest) -> bool:
        match, dests, ident, scope = meta
        if scope and scope != request.identity:
            return False
        if ident and request.dictionary_id != ident:
            return False
        if dests and request.dest is not None and request.dest not in dests:
            return False
        try:
            pattern = self._patterns[match]
        except KeyError:
            pattern = compile_match(match)
            if len(self._patterns) < _PATH_CACHE:
                self._patterns[match] = pattern
        return pattern is not None and pattern.fullmatch(request.path) is not None

    async def _fetch(self, digest: bytes) -> _Entry | None:
        if not self.outage.allow():
            return None
        try:
            raw = await self.store.get(_key(digest))
        except StoreUnavailable as exc:
            self.outage.failed(exc)
            return None
        self.outage.ok()
        decoded = _decode(raw, digest) if type(raw) is bytes else None
        if decoded is None:
            return None
        now = time.monotonic()
        entry = _Entry(decoded[1], decoded[0], now + self.ttl, now)
        self._local_put(digest, entry)
        return entry

    # -- offer -----------------------------------------------------------------------------
    def offer_for(self, request: DictRequest, rule: Rule, status: int, start: Any) -> Offer | None:
        """An :class:`Offer` when this response may become a dictionary (module docstring)."""
        if request.method != "GET" or status != 200:
            return None
        cache_control = b""
        sets_cookie = False
        headers: Headers = start.get("headers", ())
        for key, value in headers:
            name = key.lower()
            if name == b"cache-control":
                cache_control += value.lower() + b","
            elif name == b"set-cookie":
                sets_cookie = True
            elif name == b"use-as-dictionary":
                return None  # the app offers it itself, on its own terms
        if b"no-store" in cache_control:
            return None
        scope = ""
        if (
            b"private" in cache_control
            or sets_cookie
            or (request.credentials and b"public" not in cache_control)
        ):
            if not request.credentials:
                return None
            scope = request.identity
        self.offered += 1
        return Offer(self, rule, scope, start)

    async def remember(self, content: bytes, rule: Rule, scope: str) -> None:
        """Keep ``content`` as the dictionary it was offered as (store + local copy)."""
        known = self._digests.get((len(content), hash(content)))
        entry = None if known is None else self._local.get(known)
        if known is not None and entry is not None and entry.content == content:
            digest = known
        else:
            digest = hashlib.sha256(content).digest()
            entry = self._local.get(digest)
        meta: Meta = (rule.match, rule.match_dest, rule.id, scope)
        now = time.monotonic()
        if entry is not None and entry.meta == meta and now < entry.refresh:
            self._local.move_to_end(digest)
            return
        written = await self._write(digest, meta, content)
        fresh = _Entry(content, meta, now + self.ttl, now + self.ttl / 2 if written else now)
        if entry is not None:
            fresh.codec = entry.codec  # same hash, same content: the prepared codec holds
        self._local_put(digest, fresh)

    async def _write(self, digest: bytes, meta: Meta, content: bytes) -> bool:
        if not self.outage.allow():
            return False
        try:
            await self.store.set(_key(digest), _encode(meta, content), self.ttl)
        except StoreUnavailable as exc:
            self.outage.failed(exc)
            return False
        self.outage.ok()
        self.stored += 1
        return True

    # -- local copies ----------------------------------------------------------------------
    def _local_get(self, digest: bytes) -> _Entry | None:
        entry = self._local.get(digest)
        if entry is None:
            return None
        if time.monotonic() >= entry.expires:
            self._local_drop(digest)
            return None
        self._local.move_to_end(digest)
        return entry

    def _local_put(self, digest: bytes, entry: _Entry) -> None:
        self._local_drop(digest)
        self._local[digest] = entry
        self._local_bytes += len(entry.content)
        self._digests[len(entry.content), hash(entry.content)] = digest
        while len(self._local) > _LOCAL_ENTRIES or self._local_bytes > _LOCAL_BYTES:
            self._local_drop(next(iter(self._local)))

    def _local_drop(self, digest: bytes) -> None:
        entry = self._local.pop(digest, None)
        if entry is not None:
            self._local_bytes -= len(entry.content)
            self._digests.pop((len(entry.content), hash(entry.content)), None)

    def stats(self) -> dict[str, Any]:
        return {
            "rules": [rule.match for rule in self.rules],
            "offered": self.offered,
            "stored": self.stored,
            "used": self.used,
            "unknown": self.unknown,
            "refused": self.refused,
            "local": len(self._local),
            "store": self.outage.stats(),
        }


def max_count(value: object, name: str) -> int:
    """The ``dictionary_max_count`` option: how many dictionaries a memory store keeps."""
    return to_int(value, name, minimum=1)


def ttl(value: object, name: str) -> float:
    """The ``dictionary_ttl`` option: how long the store keeps a dictionary (> 0)."""
    seconds = to_duration(value, name)
    if seconds <= 0:
        raise ConfigError(name, value, "a duration > 0: seconds or with a unit (30m, 24h)")
    return seconds


def build_dictionaries(
    rules: tuple[Rule, ...],
    storage: str | Store,
    key_prefix: str,
    *,
    max_count: int,
    max_size: int,
    ttl: float,
    level: int,
    logger: logging.Logger,
) -> Dictionaries | None:
    """A middleware's dictionaries, or ``None`` without rules (then no store is made)."""
    if not rules:
        return None
    if "dcz" not in dictionary_encodings():
        raise ConfigError(
            "dictionaries",
            [r.match for r in rules],
            "the zstd extra: " + install_hint("zstd"),
        )
    if not isinstance(key_prefix, str):
        raise ConfigError("key_prefix", key_prefix, "a string such as 'asgi_perf:'")
    store = create_store(
        storage,
        prefix=key_prefix + "dict:",
        max_entries=max_count,
        max_bytes=_STORE_BYTES,
        name="storage",
    )
    return Dictionaries(
        rules,
        store,
        ttl=ttl,
        max_size=max_size,
        level=level,
        logger=logger,
        codec_outage=Outage(logger, "dcz codec"),
    )
