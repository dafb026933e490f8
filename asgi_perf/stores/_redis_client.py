"""One ``redis.asyncio`` client, pool and pub/sub ear per (Redis URL, event loop), shared by
every :class:`~asgi_perf.stores._redis.RedisStore` of the process.

Rate limiting, dedup, the cache (and anything else on one URL) used to open a pool each; a
process now holds one, made on first use inside the running loop (a client cannot cross
loops). Stores sharing a client keep their own timeouts:

- on one node or Sentinel, a store's call sets a context variable that the connection reads
  as its read timeout (:func:`_timed`): a 50 ms rate-limit check and a 250 ms cache read go
  through one pool, and neither connecting (at least 1 s) nor waiting for a pooled connection
  is cut by the short one;
- on Redis Cluster (whose nodes make their own connections) the client reads with the longest
  timeout its stores asked for, and a store that asked for less bounds its calls itself
  (connecting included).

Waiters hear ``fulfil``/``release`` through one pub/sub connection per client
(:class:`Notifier`), confirming their subscription before they read the record so no wake-up
is lost. On Redis Cluster they use sharded pub/sub (``SSUBSCRIBE``/``SPUBLISH``, Redis 7+),
which stays on the node of the key's slot; on an older cluster, or a client without cluster
pub/sub, they poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sys
import time
from collections.abc import Awaitable
from contextvars import ContextVar
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from asgi_perf._core.config import ConfigError, install_hint

__all__ = [
    "READ_TIMEOUT",
    "Notifier",
    "SharedClient",
    "acquire",
    "client_url",
    "parse_hosts",
    "require_redis",
    "unavailable_errors",
    "want",
    "within",
]

T = TypeVar("T")

#: The read timeout of the store call running in this context (see :func:`_timed`).
READ_TIMEOUT: ContextVar[float | None] = ContextVar("asgi_perf_redis_read_timeout", default=None)


async def within(seconds: float, awaitable: Awaitable[T]) -> T:
    """``await awaitable``, or ``asyncio.TimeoutError`` after ``seconds``."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):
            return await awaitable
    return await asyncio.wait_for(awaitable, seconds)  # pragma: no cover - Python 3.10


def require_redis(url: str, name: str) -> None:
    """``ConfigError`` naming the extra to install when the ``redis`` package is missing."""
    try:
        import redis  # noqa: F401
    except ImportError:
        raise ConfigError(
            name, url, "a store whose package is installed: " + install_hint("redis")
        ) from None


def unavailable_errors() -> tuple[type[BaseException], ...]:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import RedisError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return (RedisConnectionError, RedisTimeoutError, RedisError, OSError, asyncio.TimeoutError)


def client_url(url: str) -> str:
    """``url`` without the query parameters only a store reads (``prefix``): stores whose URLs
    differ by those alone share a client."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "prefix"]
    return urlunsplit(parts._replace(query=urlencode(query)))


def parse_hosts(url: str, name: str = "storage") -> list[tuple[str, int]]:
    hosts = []
    for hostport in urlsplit(url).netloc.rpartition("@")[2].split(","):
        host, _, port = hostport.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(name, url, "host:port pairs, e.g. redis+cluster://h1:7000,h2:7001")
        hosts.append((host.strip("[]"), int(port)))
    return hosts


@functools.cache
def _timed(connection_class: Any) -> type[Any]:
    """``connection_class`` whose reads time out after the calling store's timeout, and
    whose writes need no timer when they cannot wait.

    redis-py reads ``socket_timeout`` afresh for every reply; the store sets
    :data:`READ_TIMEOUT` around each call, so one pool serves stores with different timeouts
    and a call never waits on another store's.

    redis-py also bounds every write with ``asyncio.wait_for`` (a task and a timer per
    command, about a fifth of a rate-limit check's client CPU). A write can only wait when
    the transport's buffer passes its high-water mark (asyncio's flow control); one that
    fits below it is handed to the socket and returns at once, so it goes without the
    timer. A larger one, or one on a connection still to be made, keeps it.

    The write is then followed by one pass of the event loop before the read (and its
    timer) starts, as it was when the write ran as wait_for's task: a burst of requests
    that became ready together takes its turn there, so the read timeout bounds Redis's
    answer, not that queue. Without the pass, on a CPU-starved machine the queue counted
    against the first reads' timeouts and a burst degraded as an outage
    (``tests/system/test_dedup_multiprocess.py`` under CPU burners). A cancellation in that
    pass drops the connection, as redis-py does for one inside its own write or read.
    """

    pack = _hiredis_pack()

    class Timed(connection_class):  # type: ignore[misc, valid-type]
        if pack is not None:  # in C, as redis-py's own sync connections pack

            def pack_command(self, *args: Any) -> list[bytes]:
                if self.encoder.encoding != "utf-8" or self.encoder.encoding_errors != "strict":
                    return super().pack_command(*args)  # type: ignore[no-any-return]
                return [pack(args)]

            def pack_commands(self, commands: Any) -> list[bytes]:
                if self.encoder.encoding != "utf-8" or self.encoder.encoding_errors != "strict":
                    return super().pack_commands(commands)  # type: ignore[no-any-return]
                return [pack(tuple(command)) for command in commands]

        async def read_response(self, *args: Any, **kwargs: Any) -> Any:
            timeout = READ_TIMEOUT.get()
            if timeout is not None:
                self.socket_timeout = timeout
            return await super().read_response(*args, **kwargs)

        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            timeout = self.socket_timeout
            if timeout and _fits(self._writer, command):
                self.socket_timeout = 0.0  # redis-py then writes and drains without a timer
                try:
                    await super().send_packed_command(command, check_health)
                finally:
                    self.socket_timeout = timeout
                try:
                    await asyncio.sleep(0)  # the loop's pass: see above
                except BaseException:
                    # cancelled with the command sent and its reply unread: a connection put
                    # back in the pool so would hand that reply to the next command on it
                    await self.disconnect(nowait=True)
                    raise
                return
            await super().send_packed_command(command, check_health)

    Timed.__name__ = Timed.__qualname__ = "Timed" + connection_class.__name__
    return Timed


def _hiredis_pack() -> Any:
    """A command packer in C with redis-py's own encoding (what its sync connections use when
    hiredis is installed; its asyncio ones pack in Python: 680 calls and 52 µs for the seven
    commands of a cache fill on the development machine, 18 calls and 8 µs this way), or
    ``None`` without hiredis.

    The same bytes as redis-py's packer for what it accepts: the command name split at spaces
    (``"SCRIPT LOAD"``), ``bytearray`` and ``memoryview`` as bytes, int and float as their
    ``repr``, str as UTF-8 (a client with another encoding keeps redis-py's packer); and its
    ``DataError`` for what it refuses (``tests/unit/stores/test_redis_pack.py``).
    """
    try:
        from hiredis import pack_command
        from redis.exceptions import DataError
    except ImportError:  # pragma: no cover - no hiredis, or one without pack_command
        return None

    def pack(args: tuple[Any, ...]) -> bytes:
        name = args[0]
        if type(name) is str:
            if " " in name:
                args = (*name.encode().split(), *args[1:])
        elif b" " in name:
            args = (*name.split(), *args[1:])
        try:
            return pack_command(args)  # type: ignore[no-any-return]
        except TypeError as exc:  # a bytearray (redis-py sends its bytes), or a refusal
            if any(type(arg) is bytearray for arg in args):
                return pack(tuple(bytes(a) if type(a) is bytearray else a for a in args))
            raise DataError(str(exc)) from exc

    return pack


def _fits(writer: Any, command: Any) -> bool:
    """Would writing ``command`` (redis-py's packed form: bytes or a list of them) leave the
    connection's transport at or below its high-water mark, so that ``drain()`` returns at
    once? ``False`` when there is no open transport (connecting keeps its own timeout)."""
    if writer is None:
        return False
    transport = writer.transport
    if transport is None or transport.is_closing():
        return False
    if type(command) is list:
        size = sum(map(len, command))
    elif type(command) is bytes:
        size = len(command)
    else:
        return False
    high = transport.get_write_buffer_limits()[1]
    return bool(transport.get_write_buffer_size() + size <= high)


_POOL_PARTS = (
    "_condition",
    "_available_connections",
    "get_available_connection",
    "ensure_connection",
)


@functools.cache
def _uncontended(pool_class: type[Any]) -> type[Any]:
    """``pool_class`` (redis-py's ``BlockingConnectionPool``) taking and giving back a
    connection without its queue when nobody queues.

    Its ``get_connection`` enters an ``asyncio.Condition`` and an ``asyncio.timeout`` (a timer)
    for every command, and ``release`` enters the condition again: about 20 µs of client CPU
    on a rate-limit check that costs about 140 µs over the bare app (A/B runs of the
    benchmark's ``ratelimit-allow-redis``). When the condition's lock is free, nobody waits
    on it and an idle connection is there, taking it is what the queue would do at once, so
    it is taken directly; otherwise (a burst, a full pool, a pool under maintenance) the
    queue runs as before. A connection given back past the queue wakes a caller that began
    to wait meanwhile (the pool's own lock can hold the release up). A redis-py without
    these parts gets ``pool_class`` unchanged.
    """
    sample = pool_class(max_connections=1)
    if not all(hasattr(sample, part) for part in _POOL_PARTS):  # pragma: no cover
        return pool_class
    base: Any = pool_class.__mro__[1]  # the plain pool: its release has no queue

    class Uncontended(pool_class):  # type: ignore[misc, valid-type]
        def _queue_idle(self) -> bool:
            condition = self._condition
            lock = condition._lock
            return not (lock.locked() or lock._waiters or condition._waiters)

        async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
            if (
                self._available_connections
                and self._queue_idle()
                and not getattr(self, "_in_maintenance", False)
            ):
                connection = self.get_available_connection()
                try:
                    await self.ensure_connection(connection)
                except BaseException:
                    await self.release(connection)
                    raise
                return connection
            return await super().get_connection(*args, **kwargs)

        async def release(self, connection: Any) -> None:
            if not self._queue_idle():
                await super().release(connection)
                return
            await base.release(self, connection)
            if self._condition._waiters:  # one began to wait while it was given back
                async with self._condition:
                    self._condition.notify()

    Uncontended.__name__ = Uncontended.__qualname__ = "Uncontended" + pool_class.__name__
    return Uncontended


def _make_client(url: str, timeout: float) -> tuple[Any, bool]:
    """A ``redis.asyncio`` client for ``url`` and whether it is a cluster client."""
    import redis.asyncio as aredis
    from redis.asyncio.cluster import ClusterNode, RedisCluster
    from redis.asyncio.retry import Retry
    from redis.asyncio.sentinel import Sentinel
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    common: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": max(timeout, 1.0),
        # One retry on a fresh connection: a pooled connection that Redis closed (restart,
        # idle timeout) fails once; more retries would only stretch an outage. Only for a
        # connection error: a timeout retried would double the wait on a slow server. (The
        # asyncio ``Retry``: the sync one, given to an asyncio client, never retries.)
        "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    }
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("redis", "rediss", "unix"):
        # A blocking pool: past ``max_connections`` (default 200, or ``?max_connections=`` in
        # the URL) a call queues for a free connection up to ``pool_timeout`` (default 2 s, or
        # ``?pool_timeout=``). redis-py's default pool raises at once at 100 connections, which
        # turns a burst of traffic into an "outage" (rate limits failing open under a burst).
        query = dict(parse_qsl(parts.query))
        wait = float(query.pop("pool_timeout", 2.0))
        client_url = urlunsplit(parts._replace(query=urlencode(query)))
        pool = _uncontended(aredis.BlockingConnectionPool).from_url(
            client_url, max_connections=200, timeout=max(wait, timeout), **common
        )
        pool.connection_class = _timed(pool.connection_class)
        return aredis.Redis.from_pool(pool), False  # the client owns (and closes) the pool
    hosts = parse_hosts(url)
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
    client = sentinel.master_for(path[0], db=db, password=password, username=username)
    pool = client.connection_pool
    pool.connection_class = _timed(pool.connection_class)
    return client, False


async def _sharded_pubsub(client: Any) -> bool:
    """Can this cluster's waiters use ``SSUBSCRIBE`` (Redis 7+, a client with cluster pub/sub)?"""
    if not hasattr(client, "pubsub"):
        return False
    info = await client.info("server")
    versions = [info] if "redis_version" in info else list(info.values())
    majors = [int(str(v.get("redis_version", "0")).split(".")[0]) for v in versions]
    return bool(majors) and min(majors) >= 7


class _Subscriber:
    """What a pub/sub ear differs in: ``SUBSCRIBE`` on one node, ``SSUBSCRIBE`` on a cluster."""

    def __init__(self, sharded: bool) -> None:
        self.sharded = sharded
        self.acked = "ssubscribe" if sharded else "subscribe"
        self.message = "smessage" if sharded else "message"

    async def subscribe(self, pubsub: Any, channel: str) -> None:
        await (pubsub.ssubscribe(channel) if self.sharded else pubsub.subscribe(channel))

    async def unsubscribe(self, pubsub: Any, channel: str) -> None:
        await (pubsub.sunsubscribe(channel) if self.sharded else pubsub.unsubscribe(channel))

    async def next_message(self, pubsub: Any) -> Any:
        if not self.sharded:
            return await pubsub.get_message(timeout=1.0)
        # Sharded messages come from one connection per node, read in turn: a short wait on
        # each keeps a wake-up on the last node from waiting on the others' timeouts.
        started = time.monotonic()
        message = await pubsub.get_sharded_message(timeout=0.02)
        if message is None and time.monotonic() - started < 0.005:
            await asyncio.sleep(0.02)  # no node to read yet: do not spin
        return message


class Notifier:
    """One pub/sub connection (one per node on a cluster), many local waiters per channel."""

    def __init__(self, client: Any, sharded: bool) -> None:
        self.client = client
        self.kind = _Subscriber(sharded)
        self.pubsub: Any = None
        self.reader: asyncio.Task[None] | None = None
        self.waiters: dict[str, set[asyncio.Future[None]]] = {}
        self.acks: dict[str, asyncio.Future[None]] = {}

    async def add(self, channel: str, timeout: float) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        waiters = self.waiters.setdefault(channel, set())
        waiters.add(future)
        if len(waiters) == 1 or channel in self.acks:
            ack = self.acks.get(channel)
            if ack is None:
                ack = self.acks[channel] = loop.create_future()
                if self.pubsub is None:
                    self.pubsub = self.client.pubsub(ignore_subscribe_messages=False)
                await self.kind.subscribe(self.pubsub, channel)
                if self.reader is None or self.reader.done():
                    self.reader = loop.create_task(self._read())
            await asyncio.wait_for(asyncio.shield(ack), timeout * 4)
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
                with contextlib.suppress(*unavailable_errors()):
                    await self.kind.unsubscribe(self.pubsub, channel)

    async def _read(self) -> None:
        kind = self.kind
        try:
            while self.waiters or self.acks:
                message = await kind.next_message(self.pubsub)
                if message is None:
                    continue
                channel = message["channel"]
                if isinstance(channel, bytes):
                    channel = channel.decode()
                if message["type"] == kind.acked:
                    ack = self.acks.get(channel)
                    if ack is not None and not ack.done():
                        ack.set_result(None)
                elif message["type"] == kind.message:
                    for future in self.waiters.get(channel, ()):
                        if not future.done():
                            future.set_result(None)
        except unavailable_errors():
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


class SharedClient:
    """The client of one URL on one loop, and what goes with it: cluster start-up, registered
    scripts, the pub/sub ear, and how many stores use it (the last one out closes it)."""

    def __init__(self, url: str, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.url = url
        self.loop = loop
        self.timeout = timeout
        self.client, self.cluster = _make_client(url, timeout)
        self.initialized = not self.cluster
        self.sharded = False  # cluster waiters use SSUBSCRIBE (known once initialized)
        self.publish = "PUBLISH"  # what the scripts notify waiters with
        self.init_lock = asyncio.Lock()
        self.scripts: dict[str, Any] = {}
        self.notifier: Notifier | None = None
        self.users = 0

    async def initialize(self) -> None:
        # redis-py's cluster client breaks connections when many tasks trigger its lazy
        # initialisation at once (AttributeError on a closed writer): do it once, first.
        async with self.init_lock:
            if not self.initialized:
                await self.client.initialize()
                self.sharded = await _sharded_pubsub(self.client)
                self.publish = "SPUBLISH" if self.sharded else "PUBLISH"
                self.initialized = True

    def script(self, source: str) -> Any:
        """A registered Lua script (``EVALSHA`` with ``EVAL`` fallback) on this client."""
        script = self.scripts.get(source)
        if script is None:
            script = self.scripts[source] = self.client.register_script(source)
        return script

    def ear(self) -> Notifier:
        if self.notifier is None:
            self.notifier = Notifier(self.client, self.sharded)
        return self.notifier

    async def release(self) -> None:
        """One store is done with the client: close it when it was the last."""
        self.users -= 1
        if self.users > 0:
            return
        if _CLIENTS.get((self.url, self.loop)) is self:
            del _CLIENTS[(self.url, self.loop)]
        if self.loop.is_closed():
            return
        if self.loop is asyncio.get_running_loop():
            await self._close()
        else:
            asyncio.run_coroutine_threadsafe(self._close(), self.loop)

    async def _close(self) -> None:
        if self.notifier is not None:
            await self.notifier.close()
            self.notifier = None
        with contextlib.suppress(Exception):
            await self.client.aclose()


_CLIENTS: dict[tuple[str, asyncio.AbstractEventLoop], SharedClient] = {}
_LONGEST: dict[str, float] = {}  # client URL -> the longest timeout a store asked for


def want(url: str, timeout: float) -> None:
    """A store of ``url`` will want ``timeout``: a cluster client made later reads with the
    longest asked (called when a store is made, before any loop runs)."""
    _LONGEST[url] = max(_LONGEST.get(url, 0.0), timeout)


def acquire(url: str, timeout: float) -> SharedClient:
    """The running loop's client of ``url``, made on first use; one more user of it."""
    loop = asyncio.get_running_loop()
    shared = _CLIENTS.get((url, loop))
    if shared is None:
        for stale in [key for key in _CLIENTS if key[1].is_closed()]:
            del _CLIENTS[stale]
        shared = SharedClient(url, loop, max(timeout, _LONGEST.get(url, 0.0)))
        _CLIENTS[(url, loop)] = shared
    elif shared.cluster and timeout > shared.timeout:
        # A cluster store made after the client, wanting a longer read: its own client.
        shared = SharedClient(url, loop, timeout)
    shared.users += 1
    return shared
