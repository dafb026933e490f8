"""Stores for shared state, chosen by one URL whose scheme the store registered.

``memory://`` (embedded, one process, bounded LRU) or ``redis://``, ``rediss://``, ``unix://``,
``redis+cluster://h1:p1,h2:p2``, ``redis+sentinel://h:p/service`` (many workers and machines).
Another store registers its schemes with :func:`register_scheme`.
"""

from __future__ import annotations

from asgi_perf._core.config import ConfigError
from asgi_perf.stores import _redis  # noqa: F401 - importing it registers the Redis schemes
from asgi_perf.stores._base import (
    Kept,
    Store,
    Stored,
    StoreFull,
    StoreUnavailable,
    Subscription,
    SyncOperations,
)
from asgi_perf.stores._memory import KeepingMemoryStore, MemoryStore
from asgi_perf.stores._registry import (
    StoreFactory,
    StoreOptions,
    factory_for,
    in_process,
    register_scheme,
)

__all__ = [
    "KeepingMemoryStore",
    "Kept",
    "MemoryStore",
    "Store",
    "StoreFactory",
    "StoreFull",
    "StoreOptions",
    "StoreUnavailable",
    "Stored",
    "Subscription",
    "SyncOperations",
    "create_store",
    "in_process",
    "register_scheme",
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
    ``memory://?max_entries=100&max_bytes=1MiB``. An unknown scheme, or a known one whose
    extra is not installed, is a ``ConfigError`` naming ``name``. ``keep``: entries are
    promises, a memory store never evicts them (:class:`KeepingMemoryStore`); Redis keeps them
    as its ``maxmemory-policy`` allows (see :meth:`RedisStore.evicts`).
    """
    if isinstance(url, Store):
        return url
    if not isinstance(url, str):
        raise ConfigError(name, url, "a store URL (memory://, redis://…) or a Store")
    options = StoreOptions(prefix, max_entries, max_bytes, timeout, name, keep)
    return factory_for(url, name)(url, options)
