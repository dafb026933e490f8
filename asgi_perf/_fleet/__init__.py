"""Fleet statistics: every process publishes its statistics on a period, the report merges them.

:func:`publisher_for` gives the one :class:`Publisher` of a process for its settings: through
Redis when the store is Redis, through ``ASGI_PERF_STATS_DIR`` when that is set (it wins: it is
the explicit choice), or ``None`` (the report is per process) otherwise or when publishing is
off. The Redis client is the store's (``RedisStore.client``): when stores share one client per
URL and event loop, the publisher shares it too.
"""

from __future__ import annotations

from typing import Any

from asgi_perf._fleet.backends import DirectorySnapshots, RedisSnapshots
from asgi_perf._fleet.publisher import TTL_PERIODS, Publisher
from asgi_perf._report.settings import ReportSettings
from asgi_perf.stores import create_store

__all__ = ["Publisher", "publisher_for"]

_publishers: dict[tuple[Any, ...], Publisher] = {}


def publisher_for(settings: ReportSettings) -> Publisher | None:
    """This process's publisher for ``settings`` (one per backend), or ``None``: per process."""
    interval = settings.publish_interval
    if interval is None:
        return None
    ttl = interval * TTL_PERIODS
    if settings.stats_dir is not None:
        key: tuple[Any, ...] = ("directory", settings.stats_dir, interval)
        if key not in _publishers:
            snapshots = DirectorySnapshots(settings.stats_dir, ttl)
            _publishers[key] = Publisher(snapshots, interval, "directory")
        return _publishers[key]
    storage = settings.storage
    if isinstance(storage, str) and storage.startswith("memory"):
        return None
    key = ("redis", storage, settings.key_prefix, interval)
    if key not in _publishers:
        from asgi_perf.stores._redis import RedisStore

        store = create_store(storage, prefix=settings.key_prefix + "fleet:", name="storage")
        if not isinstance(store, RedisStore):
            return None  # a memory or custom store: nothing other processes could read
        _publishers[key] = Publisher(RedisSnapshots(store, ttl), interval, "redis")
    return _publishers[key]
