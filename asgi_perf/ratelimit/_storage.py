"""Which limiter counts on which store (:func:`create_limiter`), and the one for any store.

:class:`StoreLimiter` rate-limits on a :class:`~asgi_perf.stores.Store` that is neither
in-process nor Redis.

The memory strategies (:data:`~asgi_perf.ratelimit._strategies.MEMORY_STRATEGIES`) run over
one record per identity and rule, holding every window's state. A check takes the record's
claim (a lock with a lease: a crashed holder's expires), reads, decides, writes only when it
admits, and releases — so counts stay exact among all the processes sharing the store, at
four round trips per check, and concurrent checks of one identity queue on the claim. Times
are this process's ``time.time()``: keep the clocks of the processes sharing a store in sync.
Redis has its own one-script limiter; this one is for stores registered by other packages.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from asgi_perf.ratelimit._strategies import (
    MEMORY_STRATEGIES,
    Decision,
    Limiter,
    MemoryLimiter,
    RedisLimiter,
    Window,
    evaluate,
    hash_tag,
)
from asgi_perf.stores import (
    Store,
    Stored,
    StoreOptions,
    StoreUnavailable,
    create_store,
    in_process,
)

__all__ = ["StoreLimiter", "create_limiter"]

LEASE = 2.0  # seconds a check may hold its identity's claim, and wait for it
_POLL = 0.01  # a waiter re-tries the claim at least this often (a notification may be lost)
_TOKENS = itertools.count()


class StoreLimiter(Limiter):
    """One store with one strategy: claim, get, decide, set, release."""

    kind = "store"

    def __init__(
        self, store: Store, strategy: str = "moving-window", clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(strategy)
        self.store = store
        self.clock = clock
        self._check, self._admit = MEMORY_STRATEGIES[self.strategy]
        self._moving = self.strategy == "moving-window"
        self._owner = f"{os.getpid()}:{id(self):x}:"

    async def _lock(self, key: str, token: str) -> None:
        store = self.store
        if await store.claim(key, token, LEASE):
            return
        deadline = time.monotonic() + LEASE
        async with store.subscribe(key) as released:
            while not await store.claim(key, token, LEASE):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise StoreUnavailable(f"rate-limit record {key!r} stayed claimed")
                await released.wait(min(remaining, _POLL))

    def _thaw(self, raw: Stored | None, now: float, windows: Sequence[Window]) -> list[Any]:
        stored = orjson.loads(raw) if type(raw) is bytes else None
        if not isinstance(stored, list) or len(stored) != len(windows):
            return [None] * len(windows)
        states: list[Any] = []
        for (state, expires), (amount, _) in zip(stored, windows, strict=True):
            if state is None or expires <= now:
                states.append(None)
            else:
                states.append(deque(state, maxlen=amount) if self._moving else state)
        return states

    async def hit(self, identity: str, rule: str, windows: Sequence[Window]) -> Decision:
        key = f"rl:{hash_tag(identity)}:{rule}:{self.strategy}"
        claim = key + ":claim"
        token = self._owner + str(next(_TOKENS))
        store = self.store
        await self._lock(claim, token)
        try:
            now = self.clock()
            states = self._thaw(await store.get(key), now, windows)
            decision, admitted = evaluate(self._check, self._admit, states, now, windows)
            if admitted is not None:
                frozen = [[list(s) if isinstance(s, deque) else s, e] for s, e in admitted]
                ttl = max(expires for _, expires in admitted) - now
                await store.set(key, orjson.dumps(frozen), ttl=max(ttl, 0.001))
        finally:
            with contextlib.suppress(StoreUnavailable):
                await store.release(claim, token)
        return decision

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "store": self.store.stats()}

    async def close(self) -> None:
        await self.store.close()


def create_limiter(
    storage: str | Store,
    strategy: str,
    *,
    prefix: str = "asgi_perf:ratelimit:",
    timeout: float = 0.05,
) -> Limiter:
    """A limiter for a store URL or a :class:`~asgi_perf.stores.Store`, chosen by what the
    store is, never by a list of schemes:

    - a store of this process (``memory://``, or a store offering ``sync`` operations): counts
      in this process without a coroutine (at most the URL's ``max_entries`` keys, default
      100,000); no store is made for it;
    - a Redis store (``redis://``, ``redis+cluster://``…): one script per check;
    - any other store: the same strategies over its records (:class:`StoreLimiter`).
    """
    if isinstance(storage, str) and in_process(storage, "storage"):
        bounds = StoreOptions(max_entries=100_000, name="storage").with_url(storage)
        return MemoryLimiter(strategy, max_entries=bounds.max_entries)
    store = create_store(storage, prefix=prefix, timeout=timeout)
    if store.sync is not None:
        return MemoryLimiter(strategy)
    from asgi_perf.stores._redis import RedisStore

    if isinstance(store, RedisStore):
        return RedisLimiter(store, strategy)
    return StoreLimiter(store, strategy)
