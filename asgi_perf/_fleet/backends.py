"""Where processes leave their snapshots for each other: Redis, or a directory on one machine.

Both keep a snapshot for ``ttl`` seconds (a few publishing periods) after its last publication,
so a process that died without a word disappears by itself.

- Redis: one key per instance, set with ``PX`` by a script that also lists the instance in a
  sorted set (scored with its expiry by the Redis clock, so hosts' clocks never matter) and
  trims the set of expired ones: one round trip per publication. Reading is the set, then one
  ``MGET``. Every key carries the hash tag ``{fleet}``, so this works on Redis Cluster too.
- Directory: one file per instance, replaced atomically; a file older than ``ttl`` is ignored
  (and removed by whoever sees it). File work runs in a thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from typing import Protocol

from asgi_perf._core.config import ConfigError
from asgi_perf.stores._redis import RedisStore

__all__ = ["DirectorySnapshots", "RedisSnapshots", "Snapshots"]

_PUBLISH = """
local now = redis.call('TIME')
local expires = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], expires, ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', expires - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
"""


class Snapshots(Protocol):
    ttl: float

    async def publish(self, instance_id: str, blob: bytes) -> None: ...

    async def read(self) -> list[bytes]: ...

    async def remove(self, instance_id: str) -> None: ...

    async def close(self) -> None: ...


class RedisSnapshots:
    """Snapshots under ``<store prefix>{fleet}:``, through ``store``'s client."""

    def __init__(self, store: RedisStore, ttl: float) -> None:
        self.store = store
        self.ttl = ttl
        self.members = store.prefix + "{fleet}:instances"
        self.records = store.prefix + "{fleet}:instance:"

    async def publish(self, instance_id: str, blob: bytes) -> None:
        script = self.store.script(_PUBLISH)
        keys = [self.records + instance_id, self.members]
        args = [blob, max(1, int(self.ttl * 1000)), instance_id]
        await self.store.call(lambda: script(keys=keys, args=args))

    async def read(self) -> list[bytes]:
        client = self.store.client
        ids: list[bytes] = await self.store.call(lambda: client.zrange(self.members, 0, -1))
        if not ids:
            return []
        keys = [self.records + i.decode() for i in ids]
        blobs: list[bytes | None] = await self.store.call(lambda: client.mget(keys))
        return [blob for blob in blobs if blob is not None]

    async def remove(self, instance_id: str) -> None:
        pipe = self.store.client.pipeline(transaction=False)
        pipe.delete(self.records + instance_id)
        pipe.zrem(self.members, instance_id)
        await self.store.call(pipe.execute)

    async def close(self) -> None:
        await self.store.close()


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_SUFFIX = ".snapshot"


class DirectorySnapshots:
    """Snapshots as files in ``path`` (created if missing), for processes of one machine."""

    def __init__(self, path: str, ttl: float, name: str = "ASGI_PERF_STATS_DIR") -> None:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise ConfigError(name, path, f"a directory this process can create ({exc})") from None
        if not os.path.isdir(path) or not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(name, path, "a directory this process can write to")
        self.path = path
        self.ttl = ttl

    def _file(self, instance_id: str) -> str:
        return os.path.join(self.path, _UNSAFE.sub("_", instance_id) + _SUFFIX)

    async def publish(self, instance_id: str, blob: bytes) -> None:
        await asyncio.to_thread(self._write, self._file(instance_id), blob)

    @staticmethod
    def _write(target: str, blob: bytes) -> None:
        temporary = f"{target}.{os.getpid()}.tmp"
        with open(temporary, "wb") as out:
            out.write(blob)
        os.replace(temporary, target)

    async def read(self) -> list[bytes]:
        return await asyncio.to_thread(self._read)

    def _read(self) -> list[bytes]:
        blobs = []
        now = time.time()
        for entry in os.scandir(self.path):
            if not entry.name.endswith(_SUFFIX):
                continue
            with contextlib.suppress(FileNotFoundError):  # replaced or removed meanwhile
                if now - entry.stat().st_mtime > self.ttl:
                    os.unlink(entry.path)  # its process stopped publishing: gone
                    continue
                with open(entry.path, "rb") as snapshot:
                    blobs.append(snapshot.read())
        return blobs

    async def remove(self, instance_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(os.unlink, self._file(instance_id))

    async def close(self) -> None:
        return None
