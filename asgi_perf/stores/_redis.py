"""The distributed store on Redis or Valkey (``redis.asyncio``): one round trip per operation.

- Compound operations are Lua scripts (``get_or_claim``, ``release``, ``renew``, ``fulfil``)
  or one pipeline (``set`` with its tag and prefix indexes), so each costs one round trip on
  a single node.
- The client is created lazily, on first use inside the running event loop, and every
  connection error or timeout becomes :class:`StoreUnavailable`.
- Waiters hear ``fulfil``/``release`` through one shared pub/sub connection per store, and
  confirm their subscription before reading the record so no wake-up is lost. Redis Cluster's
  asyncio client has no pub/sub: there waiters poll (``Subscription.wait`` returns ``False``
  and callers re-read with jitter).
- Prefix deletion reads a sorted-set index written at store time; tag deletion a sorted set
  per tag. Both are trimmed of expired members on every write, so they stay bounded by the
  live entries, and expire with their longest-lived member (:data:`_INDEX_ADD`), so a tag
  nobody writes again does not outlive its entries; neither uses ``KEYS`` or ``SCAN``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar
from urllib.parse import parse_qs, parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from asgi_perf._core.config import REDIS_SCHEMES, ConfigError, store_scheme
from asgi_perf.stores._base import Store, StoreUnavailable, Subscription

__all__ = ["RedisStore"]

T = TypeVar("T")

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], '1')
  return 1
end
redis.call('PUBLISH', ARGV[2], '0')
return 0
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_FULFIL = """
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
redis.call('PUBLISH', ARGV[2], '1')
return 1
"""

# The record if there is one, else 1 (claim won) or 0 (claim held by another): one round trip.
_GET_OR_CLAIM = """
local value = redis.call('GET', KEYS[1])
if value then
  return value
end
if redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2], 'NX') then
  return 1
end
return 0
"""


# Add a member to an index (a tag's or the prefix index), trim the expired ones, and keep the
# index alive exactly as long as its longest-lived member: a new index expires with its first
# member, an existing one is only ever extended; a member without expiry makes it persistent.
# ARGV: member, expiry score (ms, or +inf), now (ms), the member's TTL (ms, 0: none).
_INDEX_ADD = """
local existed = redis.call('EXISTS', KEYS[1])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
local ttl = tonumber(ARGV[4])
if ttl == 0 then
  redis.call('PERSIST', KEYS[1])
elseif existed == 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
else
  local current = redis.call('PTTL', KEYS[1])
  if current >= 0 and current < ttl then
    redis.call('PEXPIRE', KEYS[1], ttl)
  end
end
return 1
"""


def _unavailable_errors() -> tuple[type[BaseException], ...]:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import RedisError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return (RedisConnectionError, RedisTimeoutError, RedisError, OSError, asyncio.TimeoutError)


class _RedisSubscription(Subscription):
    def __init__(self, future: asyncio.Future[None] | None) -> None:
        self.future = future

    async def wait(self, timeout: float) -> bool:
        if self.future is None:
            await asyncio.sleep(timeout)
            return False
        try:
            await asyncio.wait_for(asyncio.shield(self.future), timeout)
        except asyncio.TimeoutError:
            return False
        return True


class _Notifier:
    """One pub/sub connection, many local waiters per channel."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.pubsub: Any = None
        self.reader: asyncio.Task[None] | None = None
        self.waiters: dict[str, set[asyncio.Future[None]]] = {}
        self.acks: dict[str, asyncio.Future[None]] = {}

    async def add(self, channel: str) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        waiters = self.waiters.setdefault(channel, set())
        waiters.add(future)
        if len(waiters) == 1 or channel in self.acks:
            ack = self.acks.get(channel)
            if ack is None:
                ack = self.acks[channel] = loop.create_future()
                if self.pubsub is None:
                    self.pubsub = self.store.client.pubsub(ignore_subscribe_messages=False)
                await self.pubsub.subscribe(channel)
                if self.reader is None or self.reader.done():
                    self.reader = loop.create_task(self._read())
            await asyncio.wait_for(asyncio.shield(ack), self.store.timeout * 4)
        return future

    async def remove(self, channel: str, future: asyncio.Future[None]) -> None:
        waiters = self.waiters.get(channel)
        if waiters is None:
            return
        waiters.discard(future)
        if not waiters:
            del self.waiters[channel]
            self.acks.pop(channel, None)
            if self.pubsub is not None:
                with contextlib.suppress(*_unavailable_errors()):
                    await self.pubsub.unsubscribe(channel)

    async def _read(self) -> None:
        try:
            while self.waiters or self.acks:
                message = await self.pubsub.get_message(timeout=1.0)
                if message is None:
                    continue
                channel = message["channel"]
                if isinstance(channel, bytes):
                    channel = channel.decode()
                if message["type"] == "subscribe":
                    ack = self.acks.get(channel)
                    if ack is not None and not ack.done():
                        ack.set_result(None)
                elif message["type"] == "message":
                    for future in self.waiters.get(channel, ()):
                        if not future.done():
                            future.set_result(None)
        except _unavailable_errors():
            # The connection dropped: wake everyone so they re-read and poll; start afresh.
            for waiters in self.waiters.values():
                for future in waiters:
                    if not future.done():
                        future.set_result(None)
            for ack in self.acks.values():
                if not ack.done():
                    ack.set_result(None)
            self.acks.clear()
            pubsub, self.pubsub = self.pubsub, None
            if pubsub is not None:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(BaseException):
                await self.reader
            self.reader = None
        if self.pubsub is not None:
            with contextlib.suppress(Exception):
                await self.pubsub.aclose()
            self.pubsub = None


def _parse_hosts(url: str) -> list[tuple[str, int]]:
    hosts = []
    for hostport in urlsplit(url).netloc.rpartition("@")[2].split(","):
        host, _, port = hostport.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(
                "storage", url, "host:port pairs, e.g. redis+cluster://h1:7000,h2:7001"
            )
        hosts.append((host.strip("[]"), int(port)))
    return hosts


def _make_client(url: str, timeout: float) -> tuple[Any, bool]:
    """A ``redis.asyncio`` client for ``url`` and whether it is a cluster client."""
    try:
        import redis.asyncio as aredis
        from redis.asyncio.cluster import ClusterNode, RedisCluster
        from redis.asyncio.sentinel import Sentinel
        from redis.backoff import NoBackoff
        from redis.retry import Retry
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise ConfigError(
            "storage", url, "redis installed: pip install 'asgi-perf[redis]'"
        ) from None

    common: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": max(timeout, 1.0),
        # One retry on a fresh connection: a pooled connection that Redis closed (restart,
        # idle timeout) fails once; more retries would only stretch an outage.
        "retry": Retry(NoBackoff(), 1),
    }
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("redis", "rediss", "unix"):
        # A blocking pool: past ``max_connections`` (default 200, or ``?max_connections=`` in
        # the URL) a call queues for a free connection up to ``pool_timeout`` (default 2 s, or
        # ``?pool_timeout=``). redis-py's default pool raises at once at 100 connections, which
        # turns a burst of traffic into an "outage" (rate limits failing open under a burst).
        query = dict(parse_qsl(parts.query))
        query.pop("prefix", None)
        wait = float(query.pop("pool_timeout", 2.0))
        client_url = urlunsplit(parts._replace(query=urlencode(query)))
        pool = aredis.BlockingConnectionPool.from_url(
            client_url, max_connections=200, timeout=max(wait, timeout), **common
        )
        return aredis.Redis.from_pool(pool), False  # the client owns (and closes) the pool
    hosts = _parse_hosts(url)
    password = unquote(parts.password) if parts.password else None
    username = unquote(parts.username) if parts.username else None
    if scheme == "redis+cluster":
        nodes = [ClusterNode(h, p) for h, p in hosts]
        common.pop("retry")
        cluster = RedisCluster(startup_nodes=nodes, password=password, username=username, **common)
        return cluster, True
    # redis+sentinel://[:password@]h1:26379,h2:26379/service_name[/db]
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ConfigError(
            "storage", url, "redis+sentinel://host:port[,host:port]/service_name[/db]"
        )
    db = int(path[1]) if len(path) > 1 and path[1].isdigit() else 0
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        hosts, sentinel_kwargs={"password": password}, **common
    )
    return sentinel.master_for(path[0], db=db, password=password, username=username), False


class RedisStore(Store):
    """``redis://``, ``rediss://``, ``redis+cluster://h1:p1,h2:p2``, ``redis+sentinel://…``."""

    kind = "redis"

    def __init__(self, url: str, prefix: str = "asgi_perf:", timeout: float = 0.25) -> None:
        scheme = store_scheme(url, "storage", REDIS_SCHEMES)
        if "{" in prefix or "}" in prefix:
            raise ConfigError("prefix", prefix, "a key prefix without '{' or '}'")
        query = parse_qs(urlsplit(url).query)
        if "prefix" in query:
            prefix = query["prefix"][0]
        if self.cluster_or_sentinel(scheme):
            _parse_hosts(url)  # reject a malformed host list now, not on first request
        self.url = url
        self.prefix = prefix
        self.timeout = timeout
        self.cluster = scheme == "redis+cluster"
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scripts: dict[str, Any] = {}
        self._notifier: _Notifier | None = None
        self._errors = _unavailable_errors()
        self._initialized = not self.cluster
        self._init_lock = asyncio.Lock()
        self.round_trips = 0

    @staticmethod
    def cluster_or_sentinel(scheme: str) -> bool:
        return scheme in ("redis+cluster", "redis+sentinel")

    # -- plumbing --------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        """The ``redis.asyncio`` client of the running loop (made on first use)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client, _ = _make_client(self.url, self.timeout)
            self._loop = loop
            self._initialized = not self.cluster
            self._init_lock = asyncio.Lock()
            self._scripts = {}
            self._notifier = None
        return self._client

    def key(self, key: str) -> str:
        return self.prefix + key

    def script(self, source: str) -> Any:
        """A registered Lua script (``EVALSHA`` with ``EVAL`` fallback) on this client."""
        client = self.client
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = client.register_script(source)
        return script

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run one round trip, mapping every connection failure to ``StoreUnavailable``."""
        self.round_trips += 1
        try:
            if not self._initialized:
                await self._initialize()
            return await operation()
        except self._errors as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def _initialize(self) -> None:
        # redis-py's cluster client breaks connections when many tasks trigger its lazy
        # initialisation at once (AttributeError on a closed writer): do it once, first.
        async with self._init_lock:
            if not self._initialized:
                await self._client.initialize()
                self._initialized = True

    def _channel(self, key: str) -> str:
        return self.prefix + "__notify__:" + key

    # -- records ---------------------------------------------------------------------------
    async def get(self, key: str) -> bytes | None:
        client = self.client
        result: bytes | None = await self.call(lambda: client.get(self.prefix + key))
        return result

    async def set(
        self,
        key: str,
        value: bytes,
        ttl: float | None = None,
        tags: Iterable[str] = (),
        indexed: bool = False,
    ) -> None:
        client = self.client
        full = self.prefix + key
        px = max(1, int(ttl * 1000)) if ttl else None
        tag_list = list(tags)
        if not tag_list and not indexed:
            await self.call(lambda: client.set(full, value, px=px))
            return
        now_ms = int(time.time() * 1000)
        expires = str(now_ms + px) if px else "+inf"
        pipe = client.pipeline(transaction=False)
        pipe.set(full, value, px=px)
        indexes = [self.prefix + "__tag__:" + tag for tag in tag_list]
        if indexed:
            indexes.append(self.prefix + "__index__")
        for index in indexes:  # EVAL: each index alone (its own slot on a cluster)
            pipe.eval(_INDEX_ADD, 1, index, full, expires, now_ms, px or 0)
        await self.call(pipe.execute)

    async def delete(self, key: str) -> bool:
        client = self.client
        deleted: int = await self.call(lambda: client.delete(self.prefix + key))
        return bool(deleted)

    async def _delete_many(self, keys: list[bytes]) -> int:
        client = self.client
        total = 0
        for start in range(0, len(keys), 500):
            batch = keys[start : start + 500]
            if self.cluster:
                pipe = client.pipeline(transaction=False)
                for k in batch:
                    pipe.delete(k)
                total += sum(await self.call(pipe.execute))
            else:
                total += await self.call(lambda b=batch: client.delete(*b))  # type: ignore[misc]
        return total

    # -- claims ----------------------------------------------------------------------------
    async def claim(self, key: str, token: str, ttl: float) -> bool:
        client = self.client
        px = max(1, int(ttl * 1000))
        won = await self.call(lambda: client.set(self.prefix + key, token, px=px, nx=True))
        return bool(won)

    async def get_or_claim(
        self, record_key: str, claim_key: str, token: str, ttl: float
    ) -> tuple[bytes | None, bool]:
        script = self.script(_GET_OR_CLAIM)
        keys = [self.prefix + record_key, self.prefix + claim_key]
        args = [token, max(1, int(ttl * 1000))]
        result = await self.call(lambda: script(keys=keys, args=args))
        if isinstance(result, bytes):
            return result, False
        return None, result == 1

    async def holder(self, key: str) -> str | None:
        client = self.client
        value: bytes | None = await self.call(lambda: client.get(self.prefix + key))
        return None if value is None else value.decode("utf-8", "replace")

    async def renew(self, key: str, token: str, ttl: float) -> bool:
        script = self.script(_RENEW)
        px = max(1, int(ttl * 1000))
        done = await self.call(lambda: script(keys=[self.prefix + key], args=[token, px]))
        return bool(done)

    async def release(self, key: str, token: str) -> bool:
        script = self.script(_RELEASE)
        channel = self._channel(key)
        done = await self.call(lambda: script(keys=[self.prefix + key], args=[token, channel]))
        return bool(done)

    async def fulfil(self, key: str, token: str, record_key: str, value: bytes, ttl: float) -> None:
        script = self.script(_FULFIL)
        px = max(1, int(ttl * 1000))
        keys = [self.prefix + key, self.prefix + record_key]
        args = [token, self._channel(key), value, px]
        await self.call(lambda: script(keys=keys, args=args))

    # -- notifications ---------------------------------------------------------------------
    async def notify(self, key: str) -> None:
        client = self.client
        await self.call(lambda: client.publish(self._channel(key), "1"))

    @contextlib.asynccontextmanager
    async def _subscribe(self, key: str) -> AsyncIterator[Subscription]:
        if self.cluster:
            yield _RedisSubscription(None)
            return
        self.client  # noqa: B018 - bind the notifier to this loop's client
        if self._notifier is None:
            self._notifier = _Notifier(self)
        notifier = self._notifier
        channel = self._channel(key)
        try:
            future = await notifier.add(channel)
        except self._errors:
            # No ear on the channel: the caller falls back to polling.
            waiters = notifier.waiters.get(channel)
            if waiters is not None:
                for f in list(waiters):
                    if not f.done():
                        await notifier.remove(channel, f)
            yield _RedisSubscription(None)
            return
        try:
            yield _RedisSubscription(future)
        finally:
            await notifier.remove(channel, future)

    def subscribe(self, key: str) -> Any:
        return self._subscribe(key)

    # -- invalidation ----------------------------------------------------------------------
    async def _members(self, zkey: str, prefix: str | None = None) -> list[bytes]:
        client = self.client
        now_ms = int(time.time() * 1000)
        members: list[bytes] = await self.call(lambda: client.zrangebyscore(zkey, now_ms, "+inf"))
        if prefix is not None:
            wanted = prefix.encode()
            members = [m for m in members if m.startswith(wanted)]
        return members

    async def delete_prefix(self, prefix: str) -> int:
        index_key = self.prefix + "__index__"
        members = await self._members(index_key, self.prefix + prefix)
        deleted = await self._delete_many(members)
        if members:
            client = self.client
            await self.call(lambda: client.zrem(index_key, *members))
        return deleted

    async def delete_tags(self, tags: Iterable[str]) -> int:
        members: set[bytes] = set()
        tag_keys = [self.prefix + "__tag__:" + tag for tag in tags]
        for tag_key in tag_keys:
            members.update(await self._members(tag_key))
        deleted = await self._delete_many(sorted(members))
        if tag_keys:
            await self._delete_many([k.encode() for k in tag_keys])
        return deleted

    async def clear(self) -> None:
        """Delete every key under the prefix (``SCAN`` of the prefix only: an admin action)."""
        client = self.client
        pattern = self.prefix.replace("*", r"\*").replace("?", r"\?") + "*"
        keys: list[bytes] = []

        async def scan() -> None:
            async for k in client.scan_iter(match=pattern, count=1000):
                keys.append(k)

        await self.call(scan)
        await self._delete_many(keys)

    def stats(self) -> dict[str, Any]:
        return {"kind": self.kind, "round_trips": self.round_trips, "cluster": self.cluster}

    async def close(self) -> None:
        if self._notifier is not None:
            await self._notifier.close()
            self._notifier = None
        if self._client is not None:
            client, self._client = self._client, None
            with contextlib.suppress(Exception):
                await client.aclose()
