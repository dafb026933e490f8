"""Stores for shared state, chosen by one URL.

``memory://`` (embedded, one process, bounded LRU) or ``redis://``, ``rediss://``,
``redis+cluster://h1:p1,h2:p2``, ``redis+sentinel://h:p/service`` (many workers and machines).
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from asgi_perf._core.config import ConfigError, store_scheme, to_int, to_size
from asgi_perf.stores._base import Store, StoreFull, StoreUnavailable, Subscription
from asgi_perf.stores._memory import KeepingMemoryStore, MemoryStore

__all__ = [
    "KeepingMemoryStore",
    "MemoryStore",
    "Store",
    "StoreFull",
    "StoreUnavailable",
    "Subscription",
    "create_store",
]


def create_store(
    url: str | Store,
    *,
    prefix: str = "asgi_perf:",
    max_entries: int = 10_000,
    max_bytes: int = 64 * 1024 * 1024,
    timeout: float = 0.25,
    name: str = "storage",
    keep: bool = False,
) -> Store:
    """A store for ``url`` (an existing :class:`Store` is returned as it is).

    ``prefix`` namespaces a Redis store's keys (each middleware passes its own under it);
    ``max_entries``/``max_bytes`` bound a memory store, and may be given in the URL as
    ``memory://?max_entries=100&max_bytes=1MiB``. ``keep``: entries are promises, a memory
    store never evicts them (:class:`KeepingMemoryStore`); Redis keeps them as its
    ``maxmemory-policy`` allows (see :meth:`RedisStore.evicts`).
    """
    if isinstance(url, Store):
        return url
    if not isinstance(url, str):
        raise ConfigError(name, url, "a store URL (memory://, redis://…) or a Store")
    if store_scheme(url, name) == "memory":
        query = parse_qs(urlsplit(url).query)
        if "max_entries" in query:
            max_entries = to_int(query["max_entries"][0], name + " max_entries", minimum=1)
        if "max_bytes" in query:
            max_bytes = to_size(query["max_bytes"][0], name + " max_bytes")
        kind = KeepingMemoryStore if keep else MemoryStore
        return kind(max_entries=max_entries, max_bytes=max_bytes)
    from asgi_perf.stores._redis import RedisStore

    return RedisStore(url, prefix=prefix, timeout=timeout)
