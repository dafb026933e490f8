"""The embedded store: one process, bounded by entries and bytes, LRU, TTL, O(1) operations.

:class:`MemoryStore` makes room by dropping the least recently used entry (expired ones at that
end go first and are not counted as evictions). :class:`KeepingMemoryStore` is for entries that
are promises (idempotency records): it never evicts; a claim that would need room it does not
have raises :class:`~asgi_perf.stores.StoreFull`.

Every operation runs without an ``await`` in the middle, so it is atomic with respect to
other tasks of the event loop; no lock is needed.

The ``*_nowait`` methods (``get_nowait``, ``set_nowait``, ``claim_nowait``,
``get_or_claim_nowait``, ``release_nowait``, ``fulfil_nowait``) are those operations without
the coroutine; the store offers them as its ``sync`` capability
(:class:`~asgi_perf.stores.SyncOperations`) to hot paths. A subclass does not inherit the
capability: it may override the async operations (to fail, delay or count them) and the sync
ones would bypass that; it sets ``sync`` itself.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

from asgi_perf.stores._base import (
    Store,
    Stored,
    StoreFull,
    Subscription,
    SyncOperations,
)
from asgi_perf.stores._registry import StoreOptions, register_scheme

__all__ = ["KeepingMemoryStore", "MemoryStore"]

_OVERHEAD = 64  # bytes charged per entry beyond key and value, so tiny entries still count
#: Claims made between two sweeps of the expired ones (leaders that died without releasing):
#: a sweep now and then, instead of counting the claims held at every claim.
_SWEEP_EVERY = 10_000


#: A record and its bookkeeping: ``(value, expires, tags, size)``. A tuple of bytes, numbers and
#: strings, which the garbage collector stops tracking once it has seen it; a full store of
#: objects (10,000 by default, most of them living long enough to reach the oldest generation)
#: was walked by every collection. The full stack on never-repeated paths, 100,000 requests
#: in-process: 220 → 156 ms in the collector, longest pause 25 → 14 ms (with the cache's
#: path streaks, also tuples now). A record of a kept object (:class:`~asgi_perf.stores.Kept`:
#: the cache's entries) stays tracked; the cache's miss that stores one is still faster
#: for it (no encoding: 26 to 27 µs against 33 µs in-process with a full store, collections
#: included).
_Entry = tuple[Stored, float, tuple[str, ...], int]


class _MemorySubscription(Subscription):
    def __init__(self) -> None:
        self.event = asyncio.Event()

    async def wait(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.event.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        self.event.clear()  # spent: the next wait is for the next notification
        return True


class MemoryStore(Store):
    """``memory://?max_entries=10000&max_bytes=64MiB``."""

    kind = "memory"
    #: A read moves the entry to the recently used end (the order eviction follows).
    lru = True
    #: Every entry written is stored, even one larger than ``max_bytes``: its claim
    #: reserved the room, and a promise is never dropped for its size.
    keeps = False

    def __init__(self, max_entries: int = 10_000, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._data: OrderedDict[str, _Entry] = OrderedDict()
        self._claims: dict[str, tuple[str, float]] = {}
        self._tags: dict[str, set[str]] = {}
        self._subs: dict[str, set[_MemorySubscription]] = {}
        self._claimed = 0  # claims made since the last sweep
        self.bytes = 0
        self.records = 0  # len(_data), kept as it changes: a write's bound test needs no len
        self.evictions = 0
        self.sync: SyncOperations | None = self if type(self) is MemoryStore else None
        self._plain_claims = type(self).claim_nowait is MemoryStore.claim_nowait

    @classmethod
    def from_url(cls, url: str, options: StoreOptions) -> MemoryStore:
        """``memory://`` with the bounds of ``options``, or of the URL's query."""
        bounded = options.with_url(url)
        kind = KeepingMemoryStore if options.keep else cls
        return kind(max_entries=bounded.max_entries, max_bytes=bounded.max_bytes)

    # -- records ---------------------------------------------------------------------------
    def _drop(self, key: str) -> _Entry | None:
        entry = self._data.pop(key, None)
        if entry is not None:
            _, _, tags, size = entry
            self.bytes -= size
            self.records -= 1
            if tags:
                self._untag(key, tags)
        return entry

    def _untag(self, key: str, tags: tuple[str, ...]) -> None:
        for tag in tags:
            keys = self._tags.get(tag)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._tags[tag]

    def _get(self, key: str) -> Stored | None:
        data = self._data
        if key not in data:  # (in, then a subscript: no call, found or not)
            return None
        value, expires, _, _ = data[key]
        if expires and expires <= time.monotonic():
            self._drop(key)
            return None
        if self.lru:
            data.move_to_end(key)
        return value

    async def get(self, key: str) -> Stored | None:
        return self._get(key)

    #: ``get`` without the coroutine, for hot paths that know the store is in-process.
    get_nowait = _get

    def _set(
        self, key: str, value: Stored, ttl: float | None, tags: Iterable[str], size: int = 0
    ) -> None:
        """``size``: what a kept object is charged (bytes are charged their length)."""
        data = self._data
        if key in data:
            self._drop(key)
        size = len(key) + (len(value) if type(value) is bytes else size) + _OVERHEAD
        if (size > self.max_bytes or self.max_entries < 1) and not self.keeps:
            return  # could never fit: storing it would evict everything for nothing
        tag_tuple = tuple(tags) if tags else ()
        expires = time.monotonic() + ttl if ttl else 0.0
        data[key] = (value, expires, tag_tuple, size)
        self.bytes += size
        self.records += 1
        tagged = self._tags
        for tag in tag_tuple:  # (a new tag, the usual URI tag, costs no call)
            if tag in tagged:
                tagged[tag].add(key)
            else:
                tagged[tag] = {key}
        if self.records > self.max_entries or self.bytes > self.max_bytes:
            self._make_room()

    def _make_room(self) -> None:
        """Back within the bounds: drop entries from the least recently used end; those
        that had expired are swept, the others count as evictions."""
        data = self._data
        now = time.monotonic()
        while self.records > self.max_entries or self.bytes > self.max_bytes:
            oldest, (_, expires, tags, size) = data.popitem(last=False)
            self.bytes -= size
            self.records -= 1
            if tags:
                self._untag(oldest, tags)
            if not expires or expires > now:
                self.evictions += 1

    async def set(
        self,
        key: str,
        value: bytes,
        ttl: float | None = None,
        tags: Iterable[str] = (),
        indexed: bool = False,
    ) -> None:
        self._set(key, value, ttl, tags)

    #: ``set`` without the coroutine (``indexed`` is a remote store's concern).
    set_nowait = _set

    async def delete(self, key: str) -> bool:
        return self._drop(key) is not None

    # -- claims ----------------------------------------------------------------------------
    def _holder(self, key: str) -> str | None:
        held = self._claims.get(key)
        if held is None:
            return None
        if held[1] <= time.monotonic():
            del self._claims[key]
            return None
        return held[0]

    def claim_nowait(self, key: str, token: str, ttl: float) -> bool:
        """:meth:`claim` without the coroutine (in-process hot paths)."""
        claims = self._claims
        now = time.monotonic()
        if key in claims and claims[key][1] > now:  # ``in``: most keys are not claimed
            return False
        if self._claimed >= _SWEEP_EVERY:  # drop the expired claims now and then
            self._claimed = 0
            for stale in [k for k, (_, exp) in claims.items() if exp <= now]:
                del claims[stale]
        self._claimed += 1
        claims[key] = (token, now + ttl)
        return True

    async def claim(self, key: str, token: str, ttl: float) -> bool:
        return self.claim_nowait(key, token, ttl)

    def get_or_claim_nowait(
        self, record_key: str, claim_key: str, token: str, ttl: float
    ) -> tuple[Stored | None, bool]:
        """:meth:`get_or_claim` without the coroutine."""
        if record_key in self._data:
            value = self._get(record_key)
            if value is not None:
                return value, False
        claims = self._claims
        # the usual claim inline, unless a subclass decides claims its own way
        if self._plain_claims and claim_key not in claims and self._claimed < _SWEEP_EVERY:
            self._claimed += 1
            claims[claim_key] = (token, time.monotonic() + ttl)
            return None, True
        return None, self.claim_nowait(claim_key, token, ttl)

    async def get_or_claim(
        self, record_key: str, claim_key: str, token: str, ttl: float
    ) -> tuple[Stored | None, bool]:
        return self.get_or_claim_nowait(record_key, claim_key, token, ttl)

    async def holder(self, key: str) -> str | None:
        return self._holder(key)

    async def renew(self, key: str, token: str, ttl: float) -> bool:
        if self._holder(key) != token:
            return False
        self._claims[key] = (token, time.monotonic() + ttl)
        return True

    def release_nowait(self, key: str, token: str) -> bool:
        """:meth:`release` without the coroutine (inline: every fill and leader ends here)."""
        claims = self._claims
        released = False
        if key in claims:  # (in, not get: no call)
            held = claims[key]
            expired = held[1] <= time.monotonic()
            if expired or held[0] == token:  # an expired claim is dropped, as _holder does
                del claims[key]
                released = not expired
        if key in self._subs:
            self._notify(key)
        return released

    async def release(self, key: str, token: str) -> bool:
        return self.release_nowait(key, token)

    def fulfil_nowait(
        self,
        key: str,
        token: str,
        record_key: str,
        value: Stored,
        ttl: float,
        tags: Iterable[str] = (),
        size: int = 0,
    ) -> None:
        """:meth:`fulfil` without the coroutine; the record with ``tags``, and ``size`` as
        :meth:`set_nowait` takes it."""
        self._set(record_key, value, ttl, tags, size)
        claims = self._claims
        if key in claims and claims[key][0] == token:
            del claims[key]
        if key in self._subs:
            self._notify(key)

    async def fulfil(self, key: str, token: str, record_key: str, value: bytes, ttl: float) -> None:
        self.fulfil_nowait(key, token, record_key, value, ttl)

    # -- notifications ---------------------------------------------------------------------
    def _notify(self, key: str) -> None:
        for sub in self._subs.get(key, ()):
            sub.event.set()

    async def notify(self, key: str) -> None:
        self._notify(key)

    @asynccontextmanager
    async def _subscribe(self, key: str) -> AsyncIterator[Subscription]:
        sub = _MemorySubscription()
        subs = self._subs.setdefault(key, set())
        subs.add(sub)
        try:
            yield sub
        finally:
            subs.discard(sub)
            if not subs:
                self._subs.pop(key, None)

    def subscribe(self, key: str) -> Any:
        return self._subscribe(key)

    # -- invalidation ----------------------------------------------------------------------
    async def delete_prefix(self, prefix: str) -> int:
        doomed = [key for key in self._data if key.startswith(prefix)]
        for key in doomed:
            self._drop(key)
        return len(doomed)

    async def delete_tags(self, tags: Iterable[str]) -> int:
        doomed: set[str] = set()
        for tag in tags:
            doomed |= self._tags.get(tag, set())
        for key in doomed:
            self._drop(key)
        return len(doomed)

    async def clear(self) -> None:
        self._data.clear()
        self._claims.clear()
        self._tags.clear()
        self.bytes = self.records = 0

    async def evicts(self) -> str | None:
        return (
            f"least recently used entries are evicted past max_entries={self.max_entries} "
            f"or max_bytes={self.max_bytes}"
        )

    def stats(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "entries": self.records,
            "bytes": self.bytes,
            "evictions": self.evictions,
            "max_entries": self.max_entries,
            "max_bytes": self.max_bytes,
        }


class KeepingMemoryStore(MemoryStore):
    """``memory://`` for entries that are promises: kept until they expire, never evicted.

    Records and claims together are bounded by ``max_entries``, records by ``max_bytes``. A new
    claim (the right to write a record later) is only granted while there is room, after
    sweeping expired records and claims; without room it raises
    :class:`~asgi_perf.stores.StoreFull` rather than dropping an entry someone relies on. A
    record written under a claim is always stored, so the bytes may overshoot ``max_bytes`` by
    the records of the claims in flight when it was reached. Reads do not reorder entries: the
    oldest write is at the front, which, for entries of one TTL, is the first to expire.
    """

    lru = False
    keeps = True

    def __init__(self, max_entries: int = 10_000, max_bytes: int = 64 * 1024 * 1024) -> None:
        super().__init__(max_entries=max_entries, max_bytes=max_bytes)
        self.sync = self  # its own claim_nowait is the sync operation

    def _full(self) -> bool:
        return (
            len(self._data) + len(self._claims) >= self.max_entries or self.bytes >= self.max_bytes
        )

    async def evicts(self) -> str | None:
        return None

    def _make_room(self) -> None:
        self._sweep()

    def _sweep(self) -> None:
        """Drop the expired records at the front and every expired claim."""
        data = self._data
        now = time.monotonic()
        while data:
            key, (_, expires, _, _) = next(iter(data.items()))
            if not expires or expires > now:
                break
            self._drop(key)
        claims = self._claims
        for stale in [k for k, (_, expires) in claims.items() if expires <= now]:
            del claims[stale]

    def claim_nowait(self, key: str, token: str, ttl: float) -> bool:
        if self._full() and self._holder(key) is None:
            self._sweep()
            if self._full():
                raise StoreFull(
                    f"{len(self._data)} records and {len(self._claims)} claims "
                    f"({self.bytes} bytes) fill max_entries={self.max_entries}, "
                    f"max_bytes={self.max_bytes}"
                )
        return super().claim_nowait(key, token, ttl)


register_scheme(MemoryStore.from_url, "memory", in_process=True)
