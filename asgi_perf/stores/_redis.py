"""The distributed store on Redis or Valkey (``redis.asyncio``): one round trip per operation.

- Compound operations are Lua scripts (``get_or_claim``, ``get_or_claim_if``, ``release``,
  ``renew``, ``fulfil``) or one pipeline (``set`` with its tag and prefix indexes;
  ``set_many``: several records, their indexes and the release of a claim), so each costs one
  round trip on a single node. A script touches the keys of one hash tag only; the indexes
  live in slots of their own, so on a cluster a pipeline is sent to each node holding one
  (in parallel, by the client) while its script's keys stay on one slot.
- The client is shared by every store of the process on the same URL and event loop, made on
  first use inside the running loop (:mod:`asgi_perf.stores._redis_client`); every connection
  error or timeout becomes :class:`StoreUnavailable`.
- Waiters hear ``fulfil``/``release`` through the client's pub/sub ear and confirm their
  subscription before reading the record so no wake-up is lost. On Redis Cluster the scripts
  ``SPUBLISH`` on the key's own slot and waiters ``SSUBSCRIBE`` (Redis 7+; a key needs a hash
  tag, as every claim key does); without that, waiters poll (``Subscription.wait`` returns
  ``False`` and callers re-read with jitter).
- Prefix deletion reads a sorted-set index written at store time; tag deletion a sorted set
  per tag. Both are trimmed of expired members on every write, so they stay bounded by the
  live entries, and expire with their longest-lived member (:data:`_INDEX_ADD`), so a tag
  nobody writes again does not outlive its entries; neither uses ``KEYS`` or ``SCAN``.

- For the stack (:mod:`asgi_perf.stores._prefetch`), the scripted calls are ops: built by
  ``*_op`` methods, run now by :meth:`RedisStore.run` or sent ahead for several layers in one
  pipeline by :meth:`RedisStore.prefetch`; writes held back are sent together by
  :meth:`RedisStore.write_deferred`.

Over 600 lines because each Lua script stands next to the method that runs it, and each
scripted call next to the op the stack sends ahead in its place: a script, its caller and its
op change together.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from asgi_perf._core.config import ConfigError
from asgi_perf.stores._base import Record, Store, StoreFull, StoreUnavailable, Subscription
from asgi_perf.stores._prefetch import MISSING, Prefetch, PrefetchOp, deferred_writes, take
from asgi_perf.stores._redis_batch import Batch, one
from asgi_perf.stores._redis_client import (
    READ_TIMEOUT,
    SharedClient,
    acquire,
    client_url,
    parse_hosts,
    require_redis,
    unavailable_errors,
    want,
    within,
)
from asgi_perf.stores._registry import StoreOptions, register_scheme

__all__ = ["RedisStore"]

T = TypeVar("T")

# ARGV[2] is the channel ('' when waiters cannot hear this key: they poll), ARGV[3] the command
# that notifies them (PUBLISH, or SPUBLISH on a cluster).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  if ARGV[2] ~= '' then redis.call(ARGV[3], ARGV[2], '1') end
  return 1
end
if ARGV[2] ~= '' then redis.call(ARGV[3], ARGV[2], '0') end
return 0
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_FULFIL = """
redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[5])
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
if ARGV[2] ~= '' then redis.call(ARGV[3], ARGV[2], '1') end
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

# get_or_claim behind a guard: KEYS guard, record, claim; ARGV expected guard value, token
# ('' : read only), lease (ms). {0, guard} when the guard changed (nothing read), {1, record},
# {2} claim won, {3} claim held by another (or not asked for).
_GET_OR_CLAIM_IF = """
local guard = redis.call('GET', KEYS[1]) or ''
if guard ~= ARGV[1] then
  return {0, guard}
end
local value = redis.call('GET', KEYS[2])
if value then
  return {1, value}
end
if ARGV[2] ~= '' and redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[3], 'NX') then
  return {2}
end
return {3}
"""

SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "redis+sentinel")

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


# What ``EVALSHA`` is sent with, as the bytes redis-py passes through unconverted (a str or
# int argument costs it five calls more): each script's SHA1 (a function of its text alone)
# and small key counts.
_SHAS: dict[str, bytes] = {}
_COUNTS = [b"%d" % n for n in range(8)]


def _evalsha_head(op: PrefetchOp) -> tuple[bytes, bytes]:
    """``op``'s script SHA1 and key count, as ``EVALSHA`` takes them."""
    source = op.source
    sha = _SHAS[source] if source in _SHAS else _SHAS.setdefault(source, _sha1(source))
    count = len(op.keys)
    return sha, _COUNTS[count] if count < 8 else b"%d" % count


def _sha1(source: str) -> bytes:
    return hashlib.sha1(source.encode()).hexdigest().encode()  # Redis names a script by it


def _hash_tagged(key: str) -> bool:
    """Does ``key`` carry a Redis Cluster hash tag (a non-empty ``{...}``)?"""
    start = key.find("{")
    return start >= 0 and key.find("}", start + 1) > start + 1


class _RedisSubscription(Subscription):
    """Its ear is one message: once it has woken a wait, later waits poll (sleep for their
    timeout), as without an ear."""

    def __init__(self, future: asyncio.Future[None] | None) -> None:
        self.future = future

    async def wait(self, timeout: float) -> bool:
        future = self.future
        if future is None:
            await asyncio.sleep(timeout)
            return False
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
        except asyncio.TimeoutError:
            return False
        self.future = None  # spent (a done future would wake every later wait at once)
        return True


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _got_or_claimed(result: Any) -> tuple[bytes | None, bool]:
    if isinstance(result, bytes):
        return result, False
    return None, result == 1


def _got_or_claimed_if(result: Any) -> tuple[bytes | None, bytes | None, bool]:
    kind = result[0]
    if kind == 0:
        return result[1], None, False
    if kind == 1:
        return None, result[1], False
    return None, None, kind == 2


class RedisStore(Store):
    """``redis://``, ``rediss://``, ``redis+cluster://h1:p1,h2:p2``, ``redis+sentinel://…``."""

    kind = "redis"
    can_prefetch = True

    def __init__(
        self, url: str, prefix: str = "asgi_perf:", timeout: float = 0.25, name: str = "storage"
    ) -> None:
        scheme = url.partition("://")[0].lower()
        if scheme not in SCHEMES:
            raise ConfigError(name, url, "a URL starting with " + ", ".join(SCHEMES))
        require_redis(url, name)
        if "{" in prefix or "}" in prefix:
            raise ConfigError("prefix", prefix, "a key prefix without '{' or '}'")
        query = parse_qs(urlsplit(url).query)
        if "prefix" in query:
            prefix = query["prefix"][0]
        if scheme in ("redis+cluster", "redis+sentinel"):
            parse_hosts(url, name)  # reject a malformed host list now, not on first request
        self.url = url
        self.prefix = prefix
        self.timeout = timeout
        self.cluster = scheme == "redis+cluster"
        self._batches = scheme in ("redis", "rediss", "unix")  # one node, this package's pool
        self._client_url = client_url(url)
        want(self._client_url, timeout)
        self._shared: SharedClient | None = None  # the client of the loop last used
        self._held: dict[asyncio.AbstractEventLoop, SharedClient] = {}
        self._errors = unavailable_errors()
        from redis.exceptions import NoScriptError, OutOfMemoryError

        self._full = OutOfMemoryError
        self._no_script = NoScriptError
        self.round_trips = 0

    @classmethod
    def from_url(cls, url: str, options: StoreOptions) -> RedisStore:
        return cls(url, prefix=options.prefix, timeout=options.timeout, name=options.name)

    # -- plumbing --------------------------------------------------------------------------
    def _bound(self) -> SharedClient:
        """The shared client of the running loop (acquired on first use in that loop)."""
        loop = asyncio.get_running_loop()
        shared = self._shared
        if shared is None or shared.loop is not loop:
            shared = self._held.get(loop)
            if shared is None:
                for closed in [held for held in self._held if held.is_closed()]:
                    del self._held[closed]
                shared = self._held[loop] = acquire(self._client_url, self.timeout)
            self._shared = shared
        return shared

    @property
    def client(self) -> Any:
        """The ``redis.asyncio`` client of the running loop, shared with the process's other
        stores of this URL."""
        return self._bound().client

    def key(self, key: str) -> str:
        return self.prefix + key

    def _pipeline(self) -> Any:
        """Commands for one round trip: a :class:`~asgi_perf.stores._redis_batch.Batch` on one
        node; redis-py's pipeline on a cluster (it splits a batch by node) and behind Sentinel
        (its pool finds the master)."""
        client = self.client
        return Batch(client) if self._batches else client.pipeline(transaction=False)

    def script(self, source: str) -> Any:
        """A registered Lua script (``EVALSHA`` with ``EVAL`` fallback) on this client."""
        return self._bound().script(source)

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run one round trip within this store's timeout, mapping every connection failure
        to ``StoreUnavailable``."""
        self.round_trips += 1
        shared = self._bound()
        token = READ_TIMEOUT.set(self.timeout)
        try:
            if not shared.initialized:
                await shared.initialize()
            if shared.cluster and self.timeout < shared.timeout:  # it reads with a longer one
                return await within(self.timeout, operation())
            return await operation()
        except self._errors as exc:
            if isinstance(exc, self._full):  # maxmemory reached under noeviction
                raise StoreFull(f"{type(exc).__name__}: {exc}") from exc
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        finally:
            READ_TIMEOUT.reset(token)

    def _channel(self, key: str) -> str:
        return self.prefix + "__notify__:" + key

    def _notice(self, key: str) -> tuple[str, str]:
        """The channel a script notifies ``key``'s waiters on and the command to do it with:
        no channel on a cluster without sharded pub/sub, or for a key without a hash tag
        (the channel would be on another slot than the script's keys)."""
        shared = self._bound()
        if shared.cluster and not (shared.sharded and _hash_tagged(key)):
            return "", shared.publish
        return self._channel(key), shared.publish

    # -- records ---------------------------------------------------------------------------
    async def get(self, key: str) -> bytes | None:
        client = self.client
        full = self.prefix + key
        if self._batches:  # (a cache hit on Redis: this read is its round trip)
            found: bytes | None = await self.call(lambda: one(client, b"GET", full))
            return found
        result: bytes | None = await self.call(lambda: client.get(full))
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
        pipe = self._pipeline()
        self._queue_set(pipe, key, value, ttl, tag_list, indexed, int(time.time() * 1000))
        await self.call(pipe.execute)

    def _queue_set(
        self,
        pipe: Any,
        key: str,
        value: bytes,
        ttl: float | None,
        tags: Iterable[str],
        indexed: bool,
        now_ms: int,
    ) -> None:
        """Queue a :meth:`set` of ``key`` with its tag and prefix indexes on ``pipe``."""
        full = self.prefix + key
        px = max(1, int(ttl * 1000)) if ttl else None
        pipe.set(full, value, px=px)
        indexes = [self.prefix + "__tag__:" + tag for tag in tags]
        if indexed:
            indexes.append(self.prefix + "__index__")
        expires = str(now_ms + px) if px else "+inf"
        for index in indexes:  # EVAL: each index alone (its own slot on a cluster)
            pipe.eval(_INDEX_ADD, 1, index, full, expires, now_ms, px or 0)

    async def set_many(
        self, records: Sequence[Record], release: tuple[str, str] | None = None
    ) -> None:
        # One pipeline, in order: the records and their indexes, then the release (a script on
        # the claim's slot) that wakes the waiters, who then find the records.
        held = deferred_writes()
        if held is not None:
            held.append((self, lambda pipe: self._queue_set_many(pipe, records, release)))
            return
        pipe = self._pipeline()
        self._queue_set_many(pipe, records, release)
        await self.call(pipe.execute)

    def _queue_set_many(
        self, pipe: Any, records: Sequence[Record], release: tuple[str, str] | None
    ) -> None:
        now_ms = int(time.time() * 1000)
        for key, value, ttl, tags, indexed in records:
            self._queue_set(pipe, key, value, ttl, tags, indexed, now_ms)
        if release is not None:
            self.release_queued(*release, pipe)

    def release_queued(self, key: str, token: str, pipe: Any) -> None:
        """:meth:`release` queued on ``pipe`` (a pipeline of this store's client)."""
        pipe.eval(_RELEASE, 1, self.prefix + key, token, *self._notice(key))

    async def write_deferred(self, writes: Sequence[Callable[[Any], None]]) -> None:
        """Send ``writes`` held back for one request (:func:`deferred_writes`, each queueing
        itself on a pipeline of this store's client) in one round trip."""
        pipe = self._pipeline()
        for queue in writes:
            queue(pipe)
        replies = await self.call(lambda: pipe.execute(raise_on_error=False))
        failed = [reply for reply in replies if isinstance(reply, Exception)]
        if failed:  # each write ran; one that Redis refused (out of memory…) is an outage
            raise StoreUnavailable(f"{type(failed[0]).__name__}: {failed[0]}")

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
        found: tuple[bytes | None, bool] = await self.run(
            self.get_or_claim_op(record_key, claim_key, token, ttl)
        )
        return found

    def get_or_claim_op(
        self, record_key: str, claim_key: str, token: str, ttl: float
    ) -> PrefetchOp:
        """:meth:`get_or_claim` as an op: run now (:meth:`run`) or sent ahead (:meth:`prefetch`)."""
        return PrefetchOp(
            ("get_or_claim", self, record_key, claim_key, token),
            self,
            _GET_OR_CLAIM,
            [self.prefix + record_key, self.prefix + claim_key],
            [token, max(1, int(ttl * 1000))],
            _got_or_claimed,
            lambda found: (claim_key, token) if found[1] else None,
        )

    async def get_or_claim_if(
        self,
        guard_key: str,
        expected: bytes,
        record_key: str,
        claim_key: str | None,
        token: str,
        ttl: float,
    ) -> tuple[bytes | None, bytes | None, bool]:
        found: tuple[bytes | None, bytes | None, bool] = await self.run(
            self.get_or_claim_if_op(guard_key, expected, record_key, claim_key, token, ttl)
        )
        return found

    def get_or_claim_if_op(
        self,
        guard_key: str,
        expected: bytes,
        record_key: str,
        claim_key: str | None,
        token: str,
        ttl: float,
    ) -> PrefetchOp:
        """:meth:`get_or_claim_if` as an op (see :meth:`get_or_claim_op`)."""
        prefix = self.prefix
        return PrefetchOp(
            ("get_or_claim_if", self, guard_key, expected, record_key, claim_key, token),
            self,
            _GET_OR_CLAIM_IF,
            [prefix + guard_key, prefix + record_key, prefix + (claim_key or record_key)],
            [expected, token if claim_key is not None else "", max(1, int(ttl * 1000))],
            _got_or_claimed_if,
            lambda found: (claim_key, token) if found[2] and claim_key else None,
        )

    async def run(self, op: PrefetchOp) -> Any:
        """One op, decoded: the reply the stack fetched ahead for this request
        (:func:`~asgi_perf.stores._prefetch.take`), else its script, by ``EVALSHA`` directly
        (the Script wrapper costs more per call; after a Redis restart it loads the script
        again, in this same call); on one node as a batch of one, without redis-py's command
        machinery (its retry closure, event dispatch and reply callbacks)."""
        found = take(op.key)
        if found is not MISSING:
            return found
        script = self.script(op.source)
        sha, count = _evalsha_head(op)

        async def evalsha() -> Any:
            try:
                if self._batches:
                    return await one(
                        script.registered_client, b"EVALSHA", sha, count, *op.keys, *op.args
                    )
                return await script.registered_client.evalsha(sha, count, *op.keys, *op.args)
            except self._no_script:
                return await script(keys=op.keys, args=op.args)

        return op.decode(await self.call(evalsha))

    async def prefetch(self, ops: Sequence[PrefetchOp], into: Prefetch) -> None:
        """Run ``ops`` (scripts of this client's stores) in one pipeline, their replies left
        in ``into``. A script Redis lost (restarted) gets no reply: its layer runs it itself;
        when the round trip fails, every op's reply is the failure."""
        pipe = self._pipeline()
        for op in ops:
            pipe.evalsha(*_evalsha_head(op), *op.keys, *op.args)
        try:
            replies = await self.call(lambda: pipe.execute(raise_on_error=False))
        except StoreUnavailable as exc:
            for op in ops:
                into.results[op.key] = exc
            return
        for op, reply in zip(ops, replies, strict=True):
            if not isinstance(reply, Exception):
                into.results[op.key] = op.decode(reply)
                into.ops[op.key] = op

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
        held = deferred_writes()
        if held is not None:  # with the request's other writes: ours, as far as we know
            held.append((self, lambda pipe: self.release_queued(key, token, pipe)))
            return True
        script = self.script(_RELEASE)
        args = [token, *self._notice(key)]
        done = await self.call(lambda: script(keys=[self.prefix + key], args=args))
        return bool(done)

    async def fulfil(self, key: str, token: str, record_key: str, value: bytes, ttl: float) -> None:
        px = max(1, int(ttl * 1000))
        keys = [self.prefix + key, self.prefix + record_key]
        args = [token, *self._notice(key), value, px]
        held = deferred_writes()
        if held is not None:
            held.append((self, lambda pipe: pipe.eval(_FULFIL, 2, *keys, *args)))
            return
        script = self.script(_FULFIL)
        await self.call(lambda: script(keys=keys, args=args))

    # -- notifications ---------------------------------------------------------------------
    async def _ready(self) -> SharedClient:
        """The client, started (on a cluster: its nodes found and its pub/sub kind known)."""
        shared = self._bound()
        if not shared.initialized:
            try:
                await shared.initialize()
            except self._errors as exc:
                raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        return shared

    async def notify(self, key: str) -> None:
        client = (await self._ready()).client
        channel, command = self._notice(key)
        if channel:
            await self.call(lambda: client.execute_command(command, channel, "1"))

    @contextlib.asynccontextmanager
    async def _subscribe(self, key: str) -> AsyncIterator[Subscription]:
        try:
            shared = await self._ready()
        except StoreUnavailable:
            shared = self._bound()
        if shared.cluster and not (shared.sharded and _hash_tagged(key)):
            yield _RedisSubscription(None)
            return
        notifier = shared.ear()
        channel = self._channel(key)
        future: asyncio.Future[None] | None = None
        token = READ_TIMEOUT.set(self.timeout)
        try:
            future = await notifier.add(channel, self.timeout)
        except self._errors:
            # No ear on the channel: the caller falls back to polling.
            for waiter in list(notifier.waiters.get(channel, ())):
                if not waiter.done():
                    await notifier.remove(channel, waiter)
        finally:
            READ_TIMEOUT.reset(token)
        if future is None:
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

    async def evicts(self) -> str | None:
        """Why Redis may evict a key that has a TTL before it expires, or ``None`` when it
        will not (no ``maxmemory``, or ``maxmemory-policy noeviction``: writes then fail with
        an ``OOM`` error, raised as :class:`StoreFull`). ``CONFIG GET`` may be denied (managed
        Redis, ACLs): then a reason saying it could not be checked. Raises
        :class:`StoreUnavailable` when Redis does not answer."""
        from redis.exceptions import ResponseError

        client = self.client

        async def config() -> Any:
            try:
                return await client.config_get("maxmemory*")
            except ResponseError as exc:  # denied, renamed or unknown: not an outage
                return exc

        reply = await self.call(config)
        if isinstance(reply, ResponseError):
            return f"its maxmemory-policy could not be read ({reply})"
        if self.cluster and reply and all(isinstance(v, dict) for v in reply.values()):
            reply = next(iter(reply.values()))  # one node's answer (every node should agree)
        settings = {_text(k): _text(v) for k, v in (reply or {}).items()}
        policy = settings.get("maxmemory-policy", "")
        if settings.get("maxmemory", "0") == "0" or policy == "noeviction":
            return None
        return f"maxmemory-policy is {policy or 'unknown'}"

    def stats(self) -> dict[str, Any]:
        return {"kind": self.kind, "round_trips": self.round_trips, "cluster": self.cluster}

    async def close(self) -> None:
        """Stop using the shared client (closed when no store of the process uses it)."""
        held, self._held, self._shared = self._held, {}, None
        for shared in held.values():
            await shared.release()


register_scheme(RedisStore.from_url, *SCHEMES)
