"""The async store interface that caching and deduplication share.

Keys are ``str`` chosen by the caller; the store adds its own prefix. Keys that one atomic
operation touches together (``fulfil``'s claim and record) must share a Redis Cluster hash tag,
written by the caller as ``{...}`` inside the key. Every failure to reach the backing service
is raised as :class:`StoreUnavailable`, so callers handle one exception; a store that is
reachable but has no room for a new entry it must not evict raises :class:`StoreFull` (a kind
of :class:`StoreUnavailable`, so callers that do not tell them apart degrade the same way).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from asgi_perf.stores._prefetch import Prefetch, PrefetchOp

__all__ = [
    "Kept",
    "Record",
    "Store",
    "StoreFull",
    "StoreUnavailable",
    "Stored",
    "Subscription",
    "SyncOperations",
]

#: One record for :meth:`Store.set_many`: key, value, TTL, tags, indexed (as :meth:`Store.set`).
Record = tuple[str, bytes, float | None, Sequence[str], bool]


class StoreUnavailable(Exception):
    """The store could not be reached or did not answer in time."""


class StoreFull(StoreUnavailable):
    """The store answered, but has no room for a new entry and may not evict one to make it
    (a :class:`~asgi_perf.stores.KeepingMemoryStore` at its bounds, Redis at ``maxmemory``
    under ``noeviction``)."""


class Subscription(ABC):
    """A waiter's ear on one key, opened *before* the waiter reads the record."""

    @abstractmethod
    async def wait(self, timeout: float) -> bool:
        """Wait until the key is notified (``True``) or ``timeout`` seconds pass (``False``).
        A notification wakes one wait: the next waits for the next one (or polls).

        A ``False`` is not proof that nothing happened (notifications may be lost on Redis
        Cluster or a dropped connection): callers re-read the record and poll.
        """


class Kept:
    """The base of objects an in-process store keeps as they are (given to its ``sync``
    capability's ``set_nowait`` or ``fulfil_nowait``): never encoded, read back as the very
    object put.

    The cache keeps its entries so on ``memory://``: no encoding on a miss, no decoding on a
    hit, and one copy of each body in memory instead of the stored bytes plus a decoded one.
    A reader that keeps nothing treats one like any value it cannot decode.
    """

    __slots__ = ()


#: What a read gives back: bytes, and from an in-process store the objects kept there too.
Stored = bytes | Kept


class SyncOperations(Protocol):
    """A store's operations without the coroutine, as its ``sync`` capability offers them: for
    hot paths, on a store of this process whose every operation runs without an ``await``."""

    def get_nowait(self, key: str) -> Stored | None: ...

    def set_nowait(
        self, key: str, value: Stored, ttl: float | None, tags: Iterable[str], size: int = 0
    ) -> None:
        """:meth:`Store.set`, taking a :class:`Kept` object too, charged ``size`` bytes."""

    def claim_nowait(self, key: str, token: str, ttl: float) -> bool: ...

    def get_or_claim_nowait(
        self, record_key: str, claim_key: str, token: str, ttl: float
    ) -> tuple[Stored | None, bool]: ...

    def release_nowait(self, key: str, token: str) -> bool: ...

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
        """:meth:`Store.fulfil`, with the record's ``tags``, and ``value`` as
        :meth:`set_nowait` takes it (a fill's last step in one call)."""


class Store(ABC):
    """get / set with TTL / claim / fulfil / invalidate / notify, one round trip each."""

    kind: str = "abstract"
    #: The same operations without the coroutine, when the store has them (a capability a
    #: caller asks for, instead of testing the store's type); ``None``: use the async ones.
    sync: SyncOperations | None = None
    #: Whether :meth:`prefetch` sends calls of several layers in one round trip (see
    #: :mod:`asgi_perf.stores._prefetch`), and the ``*_op`` methods describe them.
    can_prefetch: bool = False

    @abstractmethod
    async def get(self, key: str) -> Stored | None: ...

    @abstractmethod
    async def set(
        self,
        key: str,
        value: bytes,
        ttl: float | None = None,
        tags: Iterable[str] = (),
        indexed: bool = False,
    ) -> None:
        """Store ``value``; ``tags`` and ``indexed`` (for prefix deletion) are recorded with it."""

    @abstractmethod
    async def delete(self, key: str) -> bool: ...

    @abstractmethod
    async def claim(self, key: str, token: str, ttl: float) -> bool:
        """Set ``key`` to ``token`` for ``ttl`` seconds only if absent; ``True`` if we won."""

    async def get_or_claim(
        self, record_key: str, claim_key: str, token: str, ttl: float
    ) -> tuple[Stored | None, bool]:
        """The record at ``record_key`` if there is one (``(value, False)``), else try to
        :meth:`claim` ``claim_key``: ``(None, True)`` if we won, ``(None, False)`` if not.

        One atomic step and one round trip where the store can do it (a Lua script on
        Redis: both keys must share a hash tag); this default is :meth:`get` then
        :meth:`claim`, which is just as correct (a record appears only after its claim is
        released, so a lost claim still means "wait for the record").
        """
        value = await self.get(record_key)
        if value is not None:
            return value, False
        return None, await self.claim(claim_key, token, ttl)

    async def get_or_claim_if(
        self,
        guard_key: str,
        expected: bytes,
        record_key: str,
        claim_key: str | None,
        token: str,
        ttl: float,
    ) -> tuple[bytes | None, Stored | None, bool]:
        """:meth:`get_or_claim` (or only :meth:`get`, for a ``claim_key`` of ``None``) while
        ``guard_key`` holds ``expected`` (``b""``: absent or empty), for a record key that was
        derived from the guard's value: ``(None, record, won)``. When the guard holds something
        else, nothing is read or claimed: ``(what it holds, None, False)``.

        One round trip on Redis (a Lua script: the three keys must share a hash tag); this
        default takes up to three.
        """
        guard = await self.get(guard_key)
        held = guard if type(guard) is bytes else b""  # (a guard is never a kept object)
        if held != expected:
            return held, None, False
        if claim_key is None:
            return None, await self.get(record_key), False
        value, won = await self.get_or_claim(record_key, claim_key, token, ttl)
        return None, value, won

    def get_or_claim_op(
        self, record_key: str, claim_key: str, token: str, ttl: float
    ) -> PrefetchOp | None:
        """:meth:`get_or_claim` to send ahead, where the store :attr:`can_prefetch`."""
        return None

    def get_or_claim_if_op(
        self,
        guard_key: str,
        expected: bytes,
        record_key: str,
        claim_key: str | None,
        token: str,
        ttl: float,
    ) -> PrefetchOp | None:
        """:meth:`get_or_claim_if` to send ahead, where the store :attr:`can_prefetch`."""
        return None

    async def prefetch(self, ops: Sequence[PrefetchOp], into: Prefetch) -> None:
        """Run ``ops`` (made by this store's ``*_op`` methods) in one round trip, leaving
        their replies in ``into``; only where the store :attr:`can_prefetch`."""
        raise NotImplementedError

    async def set_many(
        self, records: Sequence[Record], release: tuple[str, str] | None = None
    ) -> None:
        """:meth:`set` each record in order, then :meth:`release` the claim ``release``
        (key, token), so its waiters find them: one round trip on Redis (one pipeline)."""
        for key, value, ttl, tags, indexed in records:
            await self.set(key, value, ttl, tags=tags, indexed=indexed)
        if release is not None:
            await self.release(*release)

    @abstractmethod
    async def holder(self, key: str) -> str | None:
        """The token holding claim ``key``, or ``None`` when it is free."""

    @abstractmethod
    async def renew(self, key: str, token: str, ttl: float) -> bool:
        """Extend our claim (``token`` must still hold it)."""

    @abstractmethod
    async def release(self, key: str, token: str) -> bool:
        """Drop our claim and notify waiters on ``key``; ``False`` if it was not ours."""

    @abstractmethod
    async def fulfil(self, key: str, token: str, record_key: str, value: bytes, ttl: float) -> None:
        """Atomically store ``value`` at ``record_key``, release claim ``key``, notify waiters."""

    @abstractmethod
    def subscribe(self, key: str) -> AbstractAsyncContextManager[Subscription]:
        """Listen for notifications on ``key`` (from ``release``/``fulfil``/``notify``)."""

    @abstractmethod
    async def notify(self, key: str) -> None: ...

    @abstractmethod
    async def delete_prefix(self, prefix: str) -> int:
        """Delete every ``indexed`` key starting with ``prefix`` (never ``KEYS``/``SCAN``)."""

    @abstractmethod
    async def delete_tags(self, tags: Iterable[str]) -> int:
        """Delete every key stored with any of ``tags``."""

    @abstractmethod
    async def clear(self) -> None:
        """Delete everything under this store's prefix."""

    @abstractmethod
    def stats(self) -> dict[str, Any]: ...

    async def evicts(self) -> str | None:
        """Why an entry may be dropped before its TTL to make room, or ``None`` when it never
        is (a caller keeping promises there warns). Unknown for a store that does not say."""
        return None

    async def close(self) -> None:  # noqa: B027 - a no-op is right for stores without connections
        """Release connections; the store may be used again afterwards (it reconnects)."""
