"""One contract suite, run unchanged against memory, Redis and Redis Cluster."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from asgi_perf import ConfigError, StoreUnavailable, create_store
from asgi_perf.stores import MemoryStore, Store
from tests.support import RedisServer, free_port


@pytest.fixture
async def store(store_url: str, key_prefix: str) -> AsyncIterator[Store]:
    s = create_store(store_url, prefix=key_prefix, timeout=2.0)
    yield s
    await s.clear()
    await s.close()


async def test_get_set_delete(store: Store) -> None:
    assert await store.get("{a}k") is None
    await store.set("{a}k", b"v1")
    assert await store.get("{a}k") == b"v1"
    await store.set("{a}k", b"\x00binary\xff")
    assert await store.get("{a}k") == b"\x00binary\xff"
    assert await store.delete("{a}k") is True
    assert await store.delete("{a}k") is False
    assert await store.get("{a}k") is None


async def test_ttl_is_honoured(store: Store) -> None:
    await store.set("short", b"x", ttl=0.05)
    await store.set("long", b"y", ttl=30)
    assert await store.get("short") == b"x"
    await asyncio.sleep(0.12)
    assert await store.get("short") is None
    assert await store.get("long") == b"y"


async def test_claim_renew_release(store: Store) -> None:
    assert await store.holder("{c}lock") is None
    assert await store.claim("{c}lock", "t1", ttl=5) is True
    assert await store.holder("{c}lock") == "t1"
    assert await store.claim("{c}lock", "t2", ttl=5) is False
    assert await store.renew("{c}lock", "t2", ttl=5) is False
    assert await store.renew("{c}lock", "t1", ttl=5) is True
    assert await store.release("{c}lock", "t2") is False
    assert await store.release("{c}lock", "t1") is True
    assert await store.claim("{c}lock", "t2", ttl=5) is True


async def test_claim_expires(store: Store) -> None:
    assert await store.claim("{c}exp", "t1", ttl=0.05) is True
    await asyncio.sleep(0.12)
    assert await store.claim("{c}exp", "t2", ttl=5) is True


async def test_hundred_concurrent_claims_have_one_winner(store: Store) -> None:
    results = await asyncio.gather(*(store.claim("{c}race", f"t{i}", ttl=5) for i in range(100)))
    assert results.count(True) == 1


async def test_fulfil_stores_releases_and_wakes_waiters(store: Store) -> None:
    assert await store.claim("{f}claim", "leader", ttl=5)
    woke: list[bool] = []

    async def waiter() -> bytes | None:
        async with store.subscribe("{f}claim") as sub:
            record = await store.get("{f}record")
            while record is None:
                woke.append(await sub.wait(0.05))
                record = await store.get("{f}record")
            return record

    tasks = [asyncio.create_task(waiter()) for _ in range(5)]
    await asyncio.sleep(0.1)
    await store.fulfil("{f}claim", "leader", "{f}record", b"done", ttl=5)
    assert await asyncio.wait_for(asyncio.gather(*tasks), 5) == [b"done"] * 5
    assert await store.claim("{f}claim", "next", ttl=5), "fulfil released the claim"


async def test_get_or_claim_reads_the_record_or_claims_in_one_step(store: Store) -> None:
    rounds = getattr(store, "round_trips", 0)
    assert await store.get_or_claim("{g}rec", "{g}claim", "t1", ttl=5) == (None, True)
    assert await store.holder("{g}claim") == "t1"
    assert await store.get_or_claim("{g}rec", "{g}claim", "t2", ttl=5) == (None, False)
    assert await store.holder("{g}claim") == "t1", "a lost claim leaves the holder alone"
    if hasattr(store, "round_trips"):
        assert store.round_trips - rounds == 4, "one round trip per get_or_claim"
    await store.fulfil("{g}claim", "t1", "{g}rec", b"", ttl=5)  # an empty record is a record
    assert await store.get_or_claim("{g}rec", "{g}claim", "t3", ttl=5) == (b"", False)
    assert await store.holder("{g}claim") is None, "a record found claims nothing"
    await store.set("{g}rec", b"1", ttl=5)  # a record that looks like the script's integers
    assert await store.get_or_claim("{g}rec", "{g}claim", "t3", ttl=5) == (b"1", False)


async def test_get_or_claim_claim_expires(store: Store) -> None:
    assert await store.get_or_claim("{ge}rec", "{ge}claim", "t1", ttl=0.05) == (None, True)
    await asyncio.sleep(0.12)
    assert await store.get_or_claim("{ge}rec", "{ge}claim", "t2", ttl=5) == (None, True)


async def test_hundred_concurrent_get_or_claims_have_one_winner(store: Store) -> None:
    results = await asyncio.gather(
        *(store.get_or_claim("{gr}rec", "{gr}race", f"t{i}", ttl=5) for i in range(100))
    )
    assert [won for _, won in results].count(True) == 1
    assert all(value is None for value, _ in results)


# Not on Redis Cluster: its asyncio client has no pub/sub, so waiters there poll (documented;
# test_subscription_times_out and the single-flight tests cover that path on the cluster).
@pytest.mark.parametrize("store_url", ["memory", "redis"], indirect=True)
async def test_subscription_hears_notify(store: Store) -> None:
    async with store.subscribe("{n}key") as sub:
        asyncio.get_running_loop().call_later(
            0.05, lambda: asyncio.ensure_future(store.notify("{n}key"))
        )
        assert await sub.wait(5) is True


async def test_subscription_times_out(store: Store) -> None:
    async with store.subscribe("{n}quiet") as sub:
        assert await sub.wait(0.05) is False


async def test_delete_by_prefix_only_indexed_keys(store: Store) -> None:
    await store.set("/users/1", b"a", ttl=30, indexed=True)
    await store.set("/users/2", b"b", ttl=30, indexed=True)
    await store.set("/items/1", b"c", ttl=30, indexed=True)
    assert await store.delete_prefix("/users/") == 2
    assert await store.get("/users/1") is None
    assert await store.get("/users/2") is None
    assert await store.get("/items/1") == b"c"


async def test_delete_by_tag(store: Store) -> None:
    await store.set("{t}1", b"a", ttl=30, tags=["user:1"])
    await store.set("{t}2", b"b", ttl=30, tags=["user:1", "user:2"])
    await store.set("{t}3", b"c", ttl=30, tags=["user:2"])
    assert await store.delete_tags(["user:1"]) == 2
    assert await store.get("{t}1") is None
    assert await store.get("{t}2") is None
    assert await store.get("{t}3") == b"c"


async def test_clear_only_touches_own_prefix(store_url: str, key_prefix: str) -> None:
    mine = create_store(store_url, prefix=key_prefix + "a:")
    other = create_store(store_url, prefix=key_prefix + "b:")
    try:
        await mine.set("k", b"1")
        await other.set("k", b"2")
        await mine.clear()
        assert await mine.get("k") is None
        if store_url != "memory://":
            assert await other.get("k") == b"2"
    finally:
        await other.clear()
        await mine.close()
        await other.close()


# -- memory-only bounds -----------------------------------------------------------------------
async def test_default_get_or_claim_for_stores_without_their_own() -> None:
    store = MemoryStore()
    get_or_claim = Store.get_or_claim  # the interface's default: get, then claim
    assert await get_or_claim(store, "{d}rec", "{d}claim", "t1", 5) == (None, True)
    assert await get_or_claim(store, "{d}rec", "{d}claim", "t2", 5) == (None, False)
    await store.fulfil("{d}claim", "t1", "{d}rec", b"r", ttl=5)
    assert await get_or_claim(store, "{d}rec", "{d}claim", "t3", 5) == (b"r", False)
    assert await store.holder("{d}claim") is None


async def test_memory_sync_operations_match_the_async_ones() -> None:
    store = MemoryStore()
    assert store.get_or_claim_nowait("{s}rec", "{s}claim", "t1", 5) == (None, True)
    assert store.claim_nowait("{s}claim", "t2", 5) is False
    assert store.release_nowait("{s}claim", "t2") is False
    assert store.release_nowait("{s}claim", "t1") is True
    assert store.claim_nowait("{s}claim", "t3", 5) is True
    woke: list[bool] = []

    async def waiter() -> None:
        async with store.subscribe("{s}claim") as sub:
            woke.append(await sub.wait(5))

    task = asyncio.create_task(waiter())
    await asyncio.sleep(0.01)
    store.fulfil_nowait("{s}claim", "t3", "{s}rec", b"v", ttl=5)
    await asyncio.wait_for(task, 5)
    assert woke == [True]
    assert store.get_nowait("{s}rec") == b"v" and store._holder("{s}claim") is None
    store.fulfil_nowait("{s}other", "nobody", "{s}rec2", b"w", ttl=5)  # no claim: still stored
    assert store.get_or_claim_nowait("{s}rec2", "{s}other", "t4", 5) == (b"w", False)


async def test_memory_store_bounded_by_bytes_and_entries() -> None:
    store = MemoryStore(max_entries=50, max_bytes=10_000)
    for i in range(1000):  # 10x max_bytes in values alone
        await store.set(f"k{i}", b"x" * 100)
        assert store.bytes <= 10_000
        assert store.stats()["entries"] <= 50
    assert store.evictions > 0
    assert await store.get("k999") == b"x" * 100
    assert await store.get("k0") is None


async def test_memory_store_is_lru() -> None:
    store = MemoryStore(max_entries=3)
    for key in ("a", "b", "c"):
        await store.set(key, b"1")
    await store.get("a")  # a is now most recent
    await store.set("d", b"1")
    assert await store.get("b") is None
    assert await store.get("a") == b"1"


async def test_memory_store_skips_values_that_cannot_fit() -> None:
    store = MemoryStore(max_bytes=1000)
    await store.set("small", b"1")
    await store.set("huge", b"x" * 5000)
    assert await store.get("huge") is None
    assert await store.get("small") == b"1", "a value too big to store evicts nothing"


def test_memory_url_parameters() -> None:
    store = create_store("memory://?max_entries=7&max_bytes=1KiB")
    assert isinstance(store, MemoryStore)
    assert (store.max_entries, store.max_bytes) == (7, 1024)


@pytest.mark.parametrize("url", ["mysql://x", "memory://?max_bytes=lots", "redis+cluster://nohost"])
def test_bad_store_urls_name_the_setting(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        create_store(url, name="ASGI_PERF_STORAGE_URL")
    assert "ASGI_PERF_STORAGE_URL" in str(info.value) or "storage" in str(info.value)


# -- Redis failure mapping --------------------------------------------------------------------
async def test_unreachable_redis_raises_store_unavailable() -> None:
    store = create_store(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2)
    with pytest.raises(StoreUnavailable):
        await store.get("k")
    with pytest.raises(StoreUnavailable):
        await store.set("k", b"v", tags=["t"], indexed=True)
    await store.close()


async def test_redis_store_recovers_after_restart() -> None:
    server = RedisServer().start()
    store = create_store(server.url, prefix="recover:", timeout=0.3)
    try:
        await store.set("k", b"v")
        server.stop()
        with pytest.raises(StoreUnavailable):
            await store.get("k")
        server.start()
        assert await store.get("k") is None  # the server kept nothing; it answers again
        await store.set("k", b"again")
        assert await store.get("k") == b"again"
    finally:
        await store.close()
        server.cleanup()


async def test_redis_store_one_round_trip_per_operation(redis_url: str, key_prefix: str) -> None:
    store = create_store(redis_url, prefix=key_prefix)
    try:
        key = uuid.uuid4().hex
        before = store.round_trips  # type: ignore[attr-defined]
        await store.set(key, b"v", ttl=5, tags=["a", "b"], indexed=True)
        await store.get(key)
        await store.claim("c" + key, "t", ttl=5)
        await store.fulfil("c" + key, "t", key, b"w", ttl=5)
        assert store.round_trips - before == 4  # type: ignore[attr-defined]
    finally:
        await store.clear()
        await store.close()


async def test_redis_indexes_expire_with_their_longest_lived_member(
    redis_url: str, key_prefix: str
) -> None:
    """A tag or prefix index never outlives its entries (nor expires before them)."""
    import redis.asyncio as aredis

    store = create_store(redis_url, prefix=key_prefix)
    client = aredis.Redis.from_url(redis_url)
    tag, index = key_prefix + "__tag__:t", key_prefix + "__index__"
    try:
        await store.set("long", b"1", ttl=60, tags=["t"], indexed=True)
        await store.set("short", b"2", ttl=5, tags=["t"], indexed=True)  # does not shorten it
        for key in (tag, index):
            assert 55_000 < await client.pttl(key) <= 60_000
        await store.set("longer", b"3", ttl=120, tags=["t"])
        assert 115_000 < await client.pttl(tag) <= 120_000  # extended
        await store.set("forever", b"4", tags=["t"])
        assert await client.pttl(tag) == -1  # a member without expiry: so is its index
        assert await store.delete_tags(["t"]) == 4
    finally:
        await client.aclose()
        await store.clear()
        await store.close()
