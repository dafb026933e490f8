"""The cache's side of the store: entries, their ``Vary`` records, hit-for-miss markers,
invalidation, and what this process keeps in memory in front of the store.

Shared by the middleware, its fill responders and :func:`asgi_perf.cache.purge`, so that
the keys (:mod:`asgi_perf.cache._keys`) and the in-process copies stay consistent whoever
writes or deletes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar
from urllib.parse import quote

from asgi_perf._core.outage import Outage
from asgi_perf.cache._entry import Entry
from asgi_perf.cache._keys import PRINTABLE, escape_key_part
from asgi_perf.stores import Store, Stored, StoreUnavailable
from asgi_perf.stores._prefetch import PrefetchOp
from asgi_perf.stores._singleflight import Lease

__all__ = ["AE_ONLY", "FOREVER", "HIT_FOR_MISS", "Entries", "StoreDown"]

logger = logging.getLogger("asgi_perf.cache")
T = TypeVar("T")

HIT_FOR_MISS = b"\x00hit-for-miss"
AE_ONLY = ("accept-encoding",)
FOREVER = float("inf")
VARY_LOCAL_TTL = 10.0  # seconds this process trusts its copy of a resource's Vary names
_EMPTY = b""
#: What an entry kept as an object takes beyond its body and field bytes, charged against the
#: memory store's ``max_bytes``: the object and its numbers, and per field its tuple and two
#: bytes objects (tracemalloc, CPython 3.11: 1,376 B for a 200 B body and five fields of 132
#: B; the same entry encoded is 427 B).
_KEPT_BYTES = 400
_FIELD_BYTES = 130
_LOCAL_MAX = 10_000  # Vary cells, hints …
_DECODED_MAX = 1024  # decoded entries kept in process …
_DECODED_MAX_BYTES = 16 * 1024 * 1024  # … and their bodies' total size (or max_bytes / 4)
_PATH_STREAK = 3  # uncacheable answers in a row that make a path pass straight through


class StoreDown(Exception):
    """The store failed before the response started: serve the request without the cache."""


class Entries:
    """Entries in ``store`` and this process's copies of them."""

    def __init__(self, store: Store, max_bytes: int, local_ttl: float, hit_for_miss_ttl: float):
        self.store = store
        self.outage = Outage(logger, f"{store.kind} store")
        self.local_ttl = local_ttl
        self.hit_for_miss_ttl = hit_for_miss_ttl
        # The memory store answers without a coroutine on the hit path.
        sync = store.sync  # an in-process store's synchronous reads, else None
        self.get_nowait = sync.get_nowait if sync is not None else None
        self.sync = sync
        # base -> [Vary names or None (unknown), expiry]; cells are shared with memoised keys
        self.vary: dict[str, list[Any]] = {}
        # key -> (stored bytes, decoded entry, local expiry): a hit does not decode again
        self.decoded: dict[str, tuple[bytes, Entry, float]] = {}
        self.decoded_bytes = 0
        # Decoded bodies are copies: a quarter of the memory bound at most (16 MiB cap).
        self.decoded_max_bytes = min(_DECODED_MAX_BYTES, max_bytes // 4)
        self.not_shared: dict[str, float] = {}  # base -> until (credentialed, not shareable)
        self.uncacheable_paths: dict[str, tuple[int, float]] = {}  # path -> (streak, until)
        # what the Vary cells and the path streaks take before they are emptied (counted as
        # they are added: no len call on a new resource's path)
        self._vary_room = self._paths_room = _LOCAL_MAX
        self.on_forget: list[Any] = []  # callbacks dropping state memoised elsewhere

    # -- store calls ------------------------------------------------------------------------
    async def call(self, operation: Awaitable[T]) -> T:
        """Await a store operation; a failure becomes :class:`StoreDown` (bypass)."""
        try:
            result = await operation
        except StoreUnavailable as exc:
            self.outage.failed(exc)
            raise StoreDown from exc
        if self.outage.down:
            self.outage.ok()
        return result

    async def lookup(self, key: str) -> Entry | bytes | None:
        """The entry at ``key``, the hit-for-miss marker, or ``None``."""
        raw: Stored | None = self.local(key) if self.local_ttl else None
        if raw is None:
            raw = await self.call(self.store.get(key))
        if raw is None:
            return None
        if raw == HIT_FOR_MISS:
            return HIT_FOR_MISS
        return self.decode(key, raw)

    def decode(self, key: str, raw: Stored) -> Entry | None:
        if type(raw) is not bytes:  # an in-process store keeps the entry itself
            return raw if type(raw) is Entry else None
        decoded = self.decoded
        cached = decoded[key] if key in decoded else None
        if cached is not None and (cached[0] is raw or cached[0] == raw):
            return cached[1]
        entry = Entry.decode(raw)
        if entry is not None:
            self.keep_decoded(key, raw, entry)
        return entry

    def keep_decoded(self, key: str, raw: bytes, entry: Entry) -> None:
        if entry.size > self.decoded_max_bytes // 8:
            return
        decoded = self.decoded
        if key in decoded:  # (in first: a new key costs no call)
            self.decoded_bytes -= decoded.pop(key)[1].size
        while decoded and (
            len(decoded) >= _DECODED_MAX or self.decoded_bytes + entry.size > self.decoded_max_bytes
        ):
            self.decoded_bytes -= decoded.pop(next(iter(decoded)))[1].size
        # (the expiry is only read as an L1, when local_ttl is on: else no clock call)
        expiry = time.monotonic() + self.local_ttl if self.local_ttl else 0.0
        decoded[key] = (raw, entry, expiry)
        self.decoded_bytes += entry.size

    def local(self, key: str) -> bytes | None:
        """The L1 in front of a remote store (``local_ttl``): bytes fetched recently, or None."""
        cached = self.decoded.get(key)
        if cached is not None and cached[2] > time.monotonic():
            return cached[0]
        return None

    async def lookup_or_claim(
        self, base: str, names: tuple[str, ...], key: str, token: str, ttl: float
    ) -> tuple[tuple[str, ...] | None, Entry | bytes | None, bool]:
        """In one round trip on a remote store: whether ``base``'s ``Vary`` names are still
        ``names`` (``key`` was built from them), what ``key`` holds and — when it holds
        nothing and a ``token`` is given — the claim of its fill (``ttl`` seconds).

        ``(None, found, won)``; or, when the store holds other names, ``(those names, None,
        False)`` and nothing was read or claimed (the caller builds the key again).
        """
        expected = "\n".join(names).encode("latin-1")
        claim_key = "c:" + key[2:] if token else None
        held, raw, won = await self.call(
            self.store.get_or_claim_if("v:" + base, expected, key, claim_key, token, ttl)
        )  # (prefetched by lookup_or_claim_op, when the stack sent it ahead)
        if held is not None:
            learned = tuple(held.decode("latin-1").split("\n")) if held else ()
            self.remember_names(base, learned)
            return learned, None, False
        self.remember_names(base, names)
        if raw is None or raw == HIT_FOR_MISS:
            return None, raw, won
        return None, self.decode(key, raw), False

    def lookup_or_claim_op(
        self, base: str, names: tuple[str, ...], key: str, token: str, ttl: float
    ) -> PrefetchOp | None:
        """:meth:`lookup_or_claim`'s store call, to send ahead with other layers' calls."""
        expected = "\n".join(names).encode("latin-1")
        claim_key = "c:" + key[2:] if token else None
        return self.store.get_or_claim_if_op("v:" + base, expected, key, claim_key, token, ttl)

    # -- Vary records -----------------------------------------------------------------------
    def known_names(self, base: str) -> tuple[str, ...] | None:
        """This process's copy of ``base``'s ``Vary`` names (no store call), if it has one."""
        known = self.vary.get(base)
        if known is not None and known[0] is not None and known[1] > time.monotonic():
            names: tuple[str, ...] = known[0]
            return names
        return None

    async def names(self, base: str, refresh: bool = False) -> tuple[tuple[str, ...], bool]:
        """The ``Vary`` names learned for resource ``base``, and whether they are this
        process's copy (``True``) rather than just read from the store."""
        if not refresh:  # known_names() inline: this is on the memory store's miss path
            vary = self.vary
            known = vary[base] if base in vary else None  # (in, not get: no call)
            if known is not None and known[0] is not None and known[1] > time.monotonic():
                return known[0], True
        else:
            known = None
        if self.get_nowait is not None:  # in-process: no coroutine, cannot fail
            return self.names_nowait(base, self.vary_cell(base) if known is None else known), False
        raw = await self.call(self.store.get("v:" + base))
        names = tuple(raw.decode("latin-1").split("\n")) if type(raw) is bytes and raw else ()
        self.remember_names(base, names)  # (its cell again: it may have been reset meanwhile)
        return names, False

    def names_nowait(self, base: str, cell: list[Any]) -> tuple[str, ...]:
        """In-process: ``base``'s ``Vary`` names read from the store into its ``cell``, which
        then knows them for good (only this process writes the store); the miss path of a
        resource new to this process, one call."""
        assert self.get_nowait is not None
        raw = self.get_nowait("v:" + base)
        names = tuple(raw.decode("latin-1").split("\n")) if type(raw) is bytes and raw else ()
        cell[0] = AE_ONLY if names == AE_ONLY else names  # (remember_names, inline)
        cell[1] = FOREVER
        return cell[0]  # type: ignore[no-any-return]

    def vary_cell(self, base: str) -> list[Any]:
        vary = self.vary
        if base in vary:  # (in first: a new resource costs no get)
            return vary[base]
        if self._vary_room <= 0:
            self.forget_local()
        self._vary_room -= 1
        cell = self.vary[base] = [None, 0.0]
        return cell

    def remember_names(self, base: str, names: tuple[str, ...]) -> None:
        """``base``'s names, in its cell of :attr:`vary`."""
        cell = self.vary_cell(base)
        cell[0] = AE_ONLY if names == AE_ONLY else names  # interned: checked with "is"
        # Only this process writes a memory store: its copy never goes out of date.
        cell[1] = FOREVER if self.get_nowait is not None else time.monotonic() + VARY_LOCAL_TTL

    # -- writing ----------------------------------------------------------------------------
    async def put(
        self,
        base: str,
        key: str,
        entry: Entry,
        names: tuple[str, ...],
        tags: list[str],
        ttl: float,
        lease: Lease | None = None,
    ) -> bool:
        """Store ``entry`` at ``key`` (its own ``Vary`` names chose it) with ``tags``; on a
        remote store, with its ``Vary`` record and the release of ``lease`` in the same round
        trip (in this process: at once). Whether ``lease`` was released."""
        sync = self.sync
        if sync is None:  # the Vary record is what other processes read
            data = entry.encode()
            vary = "\n".join(names).encode("latin-1")
            release = lease.ending() if lease is not None else None
            records = [(key, data, ttl, tags, True), ("v:" + base, vary, ttl, (), True)]
            await self.store.set_many(records, release)
            self.remember_names(base, names)
            self.keep_decoded(key, data, entry)
            return lease is not None
        # In this process the store keeps the entry itself, charged what it takes in memory.
        fields = len(_EMPTY.join(map(_EMPTY.join, entry.headers)))
        size = entry.size + fields + _KEPT_BYTES + _FIELD_BYTES * entry.count
        cell = self.vary[base] if base in self.vary else None
        if cell is None or cell[0] != names:  # else known already (forever, in-process)
            sync.set_nowait("v:" + base, "\n".join(names).encode("latin-1"), ttl, ())
            self.remember_names(base, names)
        if lease is None:
            sync.set_nowait(key, entry, ttl, tags, size)
            return False
        # (its lease is never renewed in-process: no ending; released with the entry)
        sync.fulfil_nowait(lease.key, lease.token, key, entry, ttl, tags, size)
        return True

    # -- hints this process learns ----------------------------------------------------------
    def hinted(self, path: str) -> bool:
        """Whether ``path`` is known to answer uncacheably (see :meth:`path_uncacheable`)."""
        paths = self.uncacheable_paths
        return path in paths and paths[path][1] > time.monotonic()

    def path_uncacheable(self, path: str) -> None:
        """Count an uncacheable answer (by its headers) on ``path``; after three in a row,
        any query on it goes straight to the app for ``hit_for_miss_ttl`` seconds."""
        paths = self.uncacheable_paths
        if path in paths:  # (in, not get: no call)
            streak, until = paths[path]
        else:
            if self._paths_room <= 0:
                paths.clear()
                self._paths_room = _LOCAL_MAX
            self._paths_room -= 1
            streak, until = 0, 0.0
        streak += 1
        if streak >= _PATH_STREAK:
            streak, until = 0, time.monotonic() + self.hit_for_miss_ttl
        paths[path] = (streak, until)  # a new tuple: untracked by the GC, unlike a list

    def path_cacheable(self, path: str) -> None:
        self.uncacheable_paths.pop(path, None)  # the streak is broken

    def remember_not_shared(self, base: str) -> None:
        """A credentialed request for ``base`` got a response only for itself: pass such
        requests straight through for a while."""
        if len(self.not_shared) >= _LOCAL_MAX:
            self.not_shared.clear()
        self.not_shared[base] = time.monotonic() + self.hit_for_miss_ttl

    def shared_recently_refused(self, base: str) -> bool:
        until = self.not_shared.get(base)
        return until is not None and until > time.monotonic()

    # -- invalidation -----------------------------------------------------------------------
    async def invalidate(self, uri_tags: Iterable[str], path: str) -> int:
        """Delete every variant of the target URIs (RFC 9111 §4.4) by their URI tags."""
        deleted = await self.store.delete_tags(list(uri_tags))
        if self.local_ttl:  # only the L1 could serve them without asking the store
            self.forget_path(path)
        return deleted

    async def purge(self, *, tags: Iterable[str] = (), path_prefix: str | None = None) -> int:
        """Delete entries carrying any of ``tags`` and/or whose path starts with
        ``path_prefix`` (as the client sends it: percent-encoded); indexes only, no ``KEYS``."""
        deleted = 0
        if path_prefix is not None:
            escaped = escape_key_part(quote(path_prefix, safe=PRINTABLE))
            deleted += await self.store.delete_prefix("e:{" + escaped)
            await self.store.delete_prefix("v:{" + escaped)
        tag_list = [tags] if isinstance(tags, str) else list(tags)
        if tag_list:
            deleted += await self.store.delete_tags(tag_list)
        self.forget_local()
        return deleted

    async def clear(self) -> None:
        await self.store.clear()
        self.forget_local()

    def forget_path(self, path: str) -> None:
        """Drop the in-process copies of ``path``'s entries (``path`` as in a key)."""
        prefix = "e:{" + path
        for key in [k for k in self.decoded if k.startswith(prefix)]:
            self.decoded_bytes -= self.decoded.pop(key)[1].size

    def forget_local(self) -> None:
        self.decoded.clear()
        self.decoded_bytes = 0
        self.vary.clear()
        self.not_shared.clear()
        self.uncacheable_paths.clear()
        self._vary_room = self._paths_room = _LOCAL_MAX
        for callback in self.on_forget:
            callback()
