"""The Redis store's batches: several commands in one round trip, without redis-py's pipeline."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Any

import pytest

from asgi_perf import create_store
from asgi_perf.stores._base import StoreUnavailable
from asgi_perf.stores._redis import RedisStore
from asgi_perf.stores._redis_batch import Batch
from tests.support import RedisServer, cancel_at_each_pass

pytestmark = pytest.mark.redis


@pytest.fixture
async def store(redis_url: str, key_prefix: str) -> Any:
    s = create_store(redis_url, prefix=key_prefix, timeout=2.0)
    assert isinstance(s, RedisStore)
    yield s
    await s.clear()
    await s.close()


async def test_replies_come_in_order_and_a_refused_command_gives_its_error(
    store: RedisStore,
) -> None:
    batch = Batch(store.client)
    batch.set(store.key("a"), b"1", px=5000)
    batch.eval("return redis.call('INCR', KEYS[1])", 1, store.key("a"))
    batch.eval("return redis.error_reply('refused')", 0)
    batch.evalsha(b"0" * 40, b"0")
    batch.zrem(store.key("z"), "m")
    batch.delete(store.key("a"), store.key("b"))
    replies = await store.call(lambda: batch.execute(raise_on_error=False))
    assert replies[:2] == [b"OK", 2]
    assert "refused" in str(replies[2])
    assert type(replies[3]).__name__ == "NoScriptError"  # the store reloads such a script
    assert replies[4:] == [0, 1]
    batch = Batch(store.client)
    batch.eval("return redis.error_reply('refused')", 0)
    batch.set(store.key("after"), b"x")
    with pytest.raises(Exception, match="refused"):
        await batch.execute()
    assert await store.get("after") == b"x"  # every command ran; the first error is raised


async def test_the_stack_batches_go_without_redis_pys_pipeline(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py's ``Pipeline.execute`` costs about 60 µs of client CPU per batch (its own
    bookkeeping and a shielded task to give the connection back); a single node's batches
    go around it."""
    from redis.asyncio.client import Pipeline

    executed: list[object] = []

    async def counted(self: Any, raise_on_error: bool = True) -> list[Any]:
        executed.append(self)
        return []

    monkeypatch.setattr(Pipeline, "execute", counted)
    await store.set("tagged", b"v", ttl=5, tags=["t"], indexed=True)
    await store.set_many([("r", b"v", 5.0, (), False)], release=("{c}claim", "token"))
    await store.write_deferred([lambda pipe: store.release_queued("{c}claim", "token", pipe)])
    assert executed == []
    assert await store.get("tagged") == b"v"
    assert await store.get("r") == b"v"


async def test_a_call_alone_goes_without_redis_pys_command_machinery(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rate-limit check, a claim not sent ahead, a cache hit's read: each is a batch of one
    on a single node, without ``execute_command``'s retry closure, event dispatch and reply
    callbacks (about 30 Python calls of the 260 of a cache hit on Redis)."""
    from redis.asyncio.client import Redis

    commands: list[object] = []
    execute_command = Redis.execute_command

    async def counted(self: Any, *args: Any, **options: Any) -> Any:
        commands.append(args[0])
        return await execute_command(self, *args, **options)

    assert await store.run(store.get_or_claim_op("r", "{c}c", "t1", 5)) == (None, True)
    await store.set("k", b"v")
    monkeypatch.setattr(Redis, "execute_command", counted)  # the script is loaded
    assert await store.run(store.get_or_claim_op("r", "{c}c", "t2", 5)) == (None, False)
    assert await store.run(store.get_or_claim_op("r2", "{c}c2", "t3", 5)) == (None, True)
    assert await store.get("k") == b"v"
    assert await store.get("absent") is None
    assert commands == []


async def test_a_batchs_replies_are_read_under_one_timer(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py starts and cancels a timer for every reply it reads (about 5 µs each); the
    seven replies of a cache fill's batch share one deadline, the store's read timeout."""
    if sys.version_info < (3, 11):
        pytest.skip("Python 3.10 keeps a timer per reply (no asyncio.timeout)")
    await store.get("warm")  # a connection in the pool: none is made (with its own timers)
    loop = asyncio.get_running_loop()
    timers: list[float] = []
    call_at = loop.call_at

    def counted(when: float, *args: Any, **kwargs: Any) -> Any:
        timers.append(when - loop.time())
        return call_at(when, *args, **kwargs)

    monkeypatch.setattr(loop, "call_at", counted)
    batch = Batch(store.client)
    for n in range(7):
        batch.set(store.key(f"k{n}"), b"v", px=5000)
    assert await store.call(batch.execute) == [b"OK"] * 7
    assert len(timers) == 1 and timers[0] <= store.timeout


async def test_a_slow_reply_times_out_its_batch_and_drops_the_connection() -> None:
    """A reply that does not come within the read timeout fails the batch as it would fail
    one command (``StoreUnavailable``), and the replies still due are not left on a pooled
    connection for the next call."""
    server = RedisServer().start()
    store = create_store(server.url, prefix="batch-slow:", timeout=0.2)
    assert isinstance(store, RedisStore)
    try:
        await store.set("k", b"v")
        batch = Batch(store.client)
        batch.set(store.key("a"), b"A")
        batch.eval(_BUSY_HALF_S, 0)
        batch.set(store.key("b"), b"B")
        with pytest.raises(StoreUnavailable, match=f"Timeout reading .*127.0.0.1:{server.port}"):
            await store.call(batch.execute)
        for _ in range(100):  # until the script is over and Redis answers again
            try:
                value = await store.get("k")
                break
            except StoreUnavailable:
                await asyncio.sleep(0.05)
        assert value == b"v"  # not a reply of the batch cut short
        assert [await store.get("a"), await store.get("b")] == [b"A", b"B"]
        assert not store.client.connection_pool._in_use_connections
    finally:
        await store.close()
        server.cleanup()


_BUSY_HALF_S = """
local t0 = redis.call('TIME')
local start = t0[1] * 1000000 + t0[2]
repeat local t = redis.call('TIME') until t[1] * 1000000 + t[2] - start > 500000
return 1
"""


async def test_a_batch_cancelled_at_any_point_leaves_no_reply_for_the_next_call(
    store: RedisStore,
) -> None:
    """As for one command: a batch cut short with replies unread drops its connection."""
    await store.set("{t}b", b"B")

    def start() -> Any:
        batch = Batch(store.client)
        for i in range(3):
            batch.eval("return ARGV[1]", 0, f"reply {i}")
        return store.call(batch.execute)

    async def check(passes: int) -> None:
        assert await store.get("{t}b") == b"B", f"cancelled after {passes} loop passes"

    await cancel_at_each_pass(start, 40, check)
    pool = store.client.connection_pool
    assert not pool._in_use_connections  # every connection was given back or dropped


async def test_a_batch_cancelled_while_giving_its_connection_back_still_gives_it_back(
    store: RedisStore,
) -> None:
    """The pool's own lock is held (a disconnect of the pool, say) when a batch is done: it
    waits to give its connection back, is cancelled there, and the connection still returns."""
    await store.set("k", b"v")
    pool = store.client.connection_pool
    await pool._lock.acquire()
    batch = Batch(store.client)
    batch.eval("return 1", 0)
    call = asyncio.ensure_future(store.call(batch.execute))
    await asyncio.sleep(0.1)  # the reply is read; the batch waits for the lock to give back
    assert not call.done() and len(pool._in_use_connections) == 1
    call.cancel()
    await asyncio.sleep(0)
    pool._lock.release()
    with contextlib.suppress(asyncio.CancelledError):
        await call
    await asyncio.sleep(0.05)
    assert not pool._in_use_connections
    assert await store.get("k") == b"v"


async def test_a_batch_on_a_dead_pooled_connection_is_sent_once_more() -> None:
    """Redis restarts between two batches: the first after it goes out again on a fresh
    connection instead of failing (the client's policy for a single command)."""
    server = RedisServer(extra=["--appendonly", "yes", "--appendfsync", "always"]).start()
    store = create_store(server.url, prefix="batch-retry:", timeout=0.5)
    assert isinstance(store, RedisStore)
    try:
        await store.set("k", b"v")
        server.stop()
        server.start()
        batch = Batch(store.client)
        batch.set(store.key("k2"), b"v2")
        batch.eval("return redis.call('GET', KEYS[1])", 1, store.key("k"))
        assert await store.call(batch.execute) == [b"OK", b"v"]
    finally:
        await store.close()
        server.cleanup()


async def test_a_batch_checks_the_health_of_a_connection_idle_past_the_urls_interval(
    redis_url: str, key_prefix: str
) -> None:
    """``health_check_interval`` on the URL: a batch on a connection idle past it sends a
    PING first, as any redis-py command does; within it, none."""
    sep = "&" if "?" in redis_url else "?"
    store = create_store(f"{redis_url}{sep}health_check_interval=30", prefix=key_prefix)
    assert isinstance(store, RedisStore)
    try:
        await store.set("k", b"v")
        pool = store.client.connection_pool
        (connection,) = pool._available_connections
        pings = 0
        send_ping = connection._send_ping

        async def counted() -> None:
            nonlocal pings
            pings += 1
            await send_ping()

        connection._send_ping = counted

        async def batch() -> list[Any]:
            b = Batch(store.client)
            b.eval("return redis.call('GET', KEYS[1])", 1, store.key("k"))
            return await b.execute()

        assert await store.call(batch) == [b"v"]
        assert pings == 0  # just used: within the interval
        connection.next_health_check = 0  # as if idle for longer than the interval
        assert await store.call(batch) == [b"v"]
        assert pings == 1
    finally:
        await store.clear()
        await store.close()


async def test_batches_only_on_a_single_node_url(redis_url: str) -> None:
    """A cluster client splits a pipeline by node and a Sentinel one finds the master: both
    keep redis-py's pipeline (no connection is made to tell)."""
    from redis.asyncio.client import Pipeline

    single = create_store(redis_url, prefix="kinds:", timeout=0.2)
    sentinel = create_store("redis+sentinel://127.0.0.1:1/mymaster", prefix="kinds:", timeout=0.2)
    try:
        assert isinstance(single, RedisStore) and isinstance(sentinel, RedisStore)
        assert isinstance(single._pipeline(), Batch)
        assert isinstance(sentinel._pipeline(), Pipeline)
    finally:
        await single.close()
        await sentinel.close()
