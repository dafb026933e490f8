"""Purge the cache from anywhere: a route handler, a background job, an admin command, another
process — without holding the middleware (``app.add_middleware`` and ``from_env`` never hand
it out).

Every CacheMiddleware registers itself here (weakly) when it is built, so
``await purge(tags=["user:42"])`` reaches every cache of this process, whatever its store.
Given the ``storage`` URL and ``key_prefix`` the caches were built with, a purge goes to that
store directly: on Redis it reaches every process and machine of the fleet (their in-process
copies expire within ``local_ttl``, which is off by default).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any, Protocol

from asgi_perf._core.config import ConfigError
from asgi_perf.cache._entries import Entries
from asgi_perf.stores import create_store, in_process

__all__ = ["purge", "register"]


class _Cache(Protocol):
    entries: Entries


_live: weakref.WeakSet[Any] = weakref.WeakSet()


def register(cache: _Cache) -> None:
    """Make ``cache`` reachable by :func:`purge` for as long as it lives."""
    _live.add(cache)


async def _purge(
    entries: Entries, tags: Iterable[str], path_prefix: str | None, everything: bool
) -> int:
    if everything:
        deleted = await entries.store.delete_prefix("e:")
        await entries.store.delete_prefix("v:")
        entries.forget_local()
        return deleted
    return await entries.purge(tags=tags, path_prefix=path_prefix)


async def purge(
    *,
    tags: Iterable[str] | str = (),
    path_prefix: str | None = None,
    everything: bool = False,
    storage: str | None = None,
    key_prefix: str = "asgi_perf:",
) -> int:
    """Delete cached responses carrying any of ``tags`` (their ``Cache-Tag`` values), whose
    path starts with ``path_prefix`` (as clients send it, percent-encoded), or all of them;
    return how many entries were deleted.

    Without ``storage``: every CacheMiddleware of this process. With the ``storage`` URL
    (``redis://…``) and ``key_prefix`` the caches use: that store, from any process.
    """
    tag_list = [tags] if isinstance(tags, str) else list(tags)
    if not tag_list and path_prefix is None and not everything:
        raise ConfigError("purge", None, "tags=…, path_prefix=… or everything=True")
    if storage is not None and not in_process(storage, "storage"):
        store = create_store(storage, prefix=key_prefix + "cache:", name="storage")
        try:
            deleted = await _purge(Entries(store, 0, 0.0, 1.0), tag_list, path_prefix, everything)
        finally:
            await store.close()
        for cache in list(_live):  # their in-process copies of what was just deleted
            cache.entries.forget_local()
        return deleted
    deleted = 0
    for cache in list(_live):
        deleted += await _purge(cache.entries, tag_list, path_prefix, everything)
    return deleted
