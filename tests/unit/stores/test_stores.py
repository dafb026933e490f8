"""One contract suite, run unchanged against memory, Redis and Redis Cluster."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from typing import Any, Protocol

import pytest

from asgi_perf import ConfigError, StoreUnavailable, create_store
from asgi_perf.stores import (
    KeepingMemoryStore,
    Kept,
    MemoryStore,
    Store,
    StoreFull,
    StoreOptions,
    register_scheme,
)
from asgi_perf.stores._prefetch import Prefetch
from asgi_perf.stores._redis import RedisStore, _evalsha_head
from tests.support import RedisServer, cancel_at_each_pass, fill_redis, free_port
from tests.system.test_cache_multiprocess import cpu_burners


class Clock:
    """``time.monotonic`` for the memory stores, moved by hand: expiry without sleeping."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 1000.0
        monkeypatch.setattr("asgi_perf.stores._memory.time.monotonic", lambda: self.now)


@pytest.fixture
async def store(store_url: str, key_prefix: str) -> AsyncIterator[Store]:
    s = create_store(store_url, prefix=key_prefix, timeout=2.0)
    yield s
    await s.clear()
    await s.close()


class MakeStore(Protocol):
    def __call__(self, url: str, *, clear: bool = False, **options: Any) -> Store: ...


class StartRedis(Protocol):
    def __call__(self, extra: Sequence[str] = ()) -> RedisServer: ...


@pytest.fixture
async def exit_stack() -> AsyncIterator[AsyncExitStack]:
    """Undoes ``make_store`` and ``start_redis`` in reverse order, as nested ``finally`` blocks
    would: a store is closed before its server goes, and a failing step skips no other."""
    async with AsyncExitStack() as stack:
        yield stack


@pytest.fixture
def make_store(exit_stack: AsyncExitStack) -> MakeStore:
    """``create_store``, the store closed at teardown; ``clear=True`` clears it first, so a
    failed test leaves no keys on a shared Redis."""

    def make(url: str, *, clear: bool = False, **options: Any) -> Store:
        store = create_store(url, **options)
        exit_stack.push_async_callback(store.close)
        if clear:
            exit_stack.push_async_callback(store.clear)
        return store

    return make


@pytest.fixture
def start_redis(exit_stack: AsyncExitStack) -> StartRedis:
    """A ``redis-server`` of the test's own (to stop, restart or fill), cleaned up at teardown."""

    def start(extra: Sequence[str] = ()) -> RedisServer:
        server = RedisServer(extra=extra).start()
        exit_stack.callback(server.cleanup)
        return server

    return start


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


async def test_get_or_claim_if_reads_and_claims_only_behind_its_guard(store: Store) -> None:
    def one_trip(before: int) -> None:
        if hasattr(store, "round_trips"):
            assert store.round_trips - before == 1, "one round trip per get_or_claim_if"

    trips = getattr(store, "round_trips", 0)
    won = await store.get_or_claim_if("{h}guard", b"", "{h}rec", "{h}claim", "t1", ttl=5)
    assert won == (None, None, True), "an absent guard holds b''"
    one_trip(trips)
    assert await store.holder("{h}claim") == "t1"
    lost = await store.get_or_claim_if("{h}guard", b"", "{h}rec", "{h}claim", "t2", ttl=5)
    assert lost == (None, None, False)
    assert await store.holder("{h}claim") == "t1", "a lost claim leaves the holder alone"
    await store.set("{h}guard", b"accept-language")
    await store.set("{h}rec", b"1", ttl=5)
    trips = getattr(store, "round_trips", 0)
    changed = await store.get_or_claim_if("{h}guard", b"", "{h}rec", "{h}other", "t3", ttl=5)
    assert changed == (b"accept-language", None, False), "the guard's value, nothing read"
    one_trip(trips)
    assert await store.holder("{h}other") is None, "nothing claimed behind a changed guard"
    found = await store.get_or_claim_if(
        "{h}guard", b"accept-language", "{h}rec", "{h}other", "t3", ttl=5
    )
    assert found == (None, b"1", False)
    assert await store.holder("{h}other") is None, "a record found claims nothing"
    read = await store.get_or_claim_if("{h}guard", b"accept-language", "{h}no", None, "", 5)
    assert read == (None, None, False)
    assert await store.holder("{h}no") is None, "no claim key: read only"


async def test_set_many_stores_indexes_and_releases_in_one_round_trip(store: Store) -> None:
    assert await store.claim("{m}claim", "leader", ttl=5)
    async with store.subscribe("{m}claim") as subscription:
        woken = asyncio.create_task(subscription.wait(5))
        await asyncio.sleep(0.01)
        trips = getattr(store, "round_trips", 0)
        records = [("{m}a", b"A", 5.0, ["mt"], True), ("{m}b", b"B", 5.0, (), True)]
        await store.set_many(records, ("{m}claim", "leader"))
        if hasattr(store, "round_trips"):
            assert store.round_trips - trips == 1
        # On a cluster without sharded pub/sub waiters poll (wait() says False).
        assert await asyncio.wait_for(woken, 6) or getattr(store, "cluster", False)
    assert (await store.get("{m}a"), await store.get("{m}b")) == (b"A", b"B")
    assert await store.holder("{m}claim") is None, "released after the records"
    assert await store.delete_tags(["mt"]) == 1, "the tag index was written"
    assert await store.get("{m}a") is None
    assert await store.delete_prefix("{m}") == 1, "the prefix index was written"
    assert await store.get("{m}b") is None
    await store.set_many([("{m}c", b"C", None, (), False)])  # no claim to release
    assert await store.get("{m}c") == b"C"


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


# On Redis Cluster through sharded pub/sub (Redis 7+), on the key's own slot.
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


async def test_clear_only_touches_own_prefix(
    store_url: str, key_prefix: str, make_store: MakeStore
) -> None:
    mine = make_store(store_url, prefix=key_prefix + "a:")
    other = make_store(store_url, clear=True, prefix=key_prefix + "b:")
    await mine.set("k", b"1")
    await other.set("k", b"2")
    await mine.clear()
    assert await mine.get("k") is None
    if store_url != "memory://":
        assert await other.get("k") == b"2"


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
    assert store.get_nowait("{s}rec") == b"v" and await store.holder("{s}claim") is None
    store.fulfil_nowait("{s}other", "nobody", "{s}rec2", b"w", ttl=5)  # no claim: still stored
    assert store.get_or_claim_nowait("{s}rec2", "{s}other", "t4", 5) == (b"w", False)


class _Thing(Kept):
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


async def test_memory_store_keeps_objects_as_they_are_charged_what_they_are_said_to_take() -> None:
    store = MemoryStore(max_entries=100, max_bytes=10_000)
    thing = _Thing("a")
    store.set_nowait("k", thing, 5, ("t",), 1_000)
    assert store.get_nowait("k") is thing and await store.get("k") is thing
    assert store.bytes == len("k") + 1_000 + 64  # the charge given, plus the per-entry cost
    assert store.get_or_claim_nowait("k", "{k}c", "t1", 5) == (thing, False)
    assert store.get_or_claim_nowait("{k}r", "{k}c", "t1", 5) == (None, True)
    other = _Thing("b")
    store.fulfil_nowait("{k}c", "t1", "{k}r", other, 5, ("t",), 2_000)  # stored, claim ended
    assert store.get_nowait("{k}r") is other and await store.holder("{k}c") is None
    assert store.bytes == 1_065 + len("{k}r") + 2_064
    assert await store.delete_tags(["t"]) == 2 and store.bytes == 0
    for i in range(20):  # 20 objects of 1,000 bytes: 10,000 bytes hold 9 of them
        store.set_nowait(f"o{i}", _Thing(str(i)), 5, (), 1_000)
    assert store.bytes <= 10_000 and store.records == 9 and store.evictions == 11


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


async def test_memory_store_sweeps_expired_entries_before_evicting_live_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock(monkeypatch)
    store = MemoryStore(max_entries=3)
    for key in ("a", "b", "c"):
        await store.set(key, b"1", ttl=5)
    clock.now += 6  # all three expired
    for key in ("d", "e", "f"):
        await store.set(key, b"1", ttl=5)
    assert store.evictions == 0  # expired entries were swept, nothing live was evicted
    await store.set("g", b"1", ttl=5)
    assert store.evictions == 1 and await store.get("d") is None


async def test_memory_store_counts_its_records_through_every_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``records`` (what the bounds are tested against) stays the number of records held:
    writes, overwrites, expiry, evictions, deletes and clear."""
    clock = Clock(monkeypatch)
    store = MemoryStore(max_entries=3)

    def held() -> bool:
        return store.records == len(store._data) == store.stats()["entries"]

    for key in ("a", "b", "a", "c"):
        await store.set(key, b"1", ttl=5, tags=("t",))
    assert held() and store.records == 3
    await store.set("d", b"1")  # evicts the oldest
    assert held() and store.records == 3 and store.evictions == 1
    clock.now += 6
    assert await store.get("c") is None and held()  # expired on read
    assert await store.delete("d") and held()
    await store.set("e", b"1", tags=("t",))
    assert await store.delete_tags(["t"]) == 2 and held() and store.records == 0
    await store.set("f", b"1")
    await store.clear()
    assert held() and store.records == 0


async def test_memory_store_sweeps_expired_claims_now_and_then(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Claims of leaders that died without releasing expire; every ``_SWEEP_EVERY`` claims
    made, the expired ones are dropped (a held one stays)."""
    monkeypatch.setattr("asgi_perf.stores._memory._SWEEP_EVERY", 4)
    clock = Clock(monkeypatch)
    store = MemoryStore()
    assert await store.claim("held", "t", ttl=100)
    for n in range(3):
        assert await store.get_or_claim(f"r{n}", f"c{n}", "t", ttl=5) == (None, True)
    clock.now += 6
    assert len(store._claims) == 4  # expired, not swept yet
    assert await store.claim("next", "t", ttl=5)  # the fifth claim sweeps first
    assert set(store._claims) == {"held", "next"}


async def test_keeping_memory_store_never_evicts_and_refuses_new_claims_when_full(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Records and claims share ``max_entries``; without room a new claim raises StoreFull
    (an existing record is still read, a held claim still answers "taken"); expired records
    and claims are swept to make room; nothing is ever evicted."""
    clock = Clock(monkeypatch)
    store = create_store("memory://?max_entries=3", keep=True)
    assert isinstance(store, KeepingMemoryStore) and await store.evicts() is None
    assert await store.get_or_claim("{1}r", "{1}c", "t1", ttl=10) == (None, True)
    await store.fulfil("{1}c", "t1", "{1}r", b"one", ttl=60)
    await store.set("{2}r", b"two", ttl=120)
    assert await store.get_or_claim("{3}r", "{3}c", "t3", ttl=10) == (None, True)
    with pytest.raises(StoreFull):  # 2 records + 1 claim: full
        await store.get_or_claim("{4}r", "{4}c", "t4", ttl=10)
    assert await store.get_or_claim("{1}r", "{1}c", "t", ttl=10) == (b"one", False)
    assert await store.get_or_claim("{3}r", "{3}c", "t", ttl=10) == (None, False)
    assert store.evictions == 0
    clock.now += 61  # the first record expires, its room is swept free
    assert await store.get_or_claim("{4}r", "{4}c", "t4", ttl=10) == (None, True)
    assert await store.get("{2}r") == b"two"
    clock.now += 11  # both claims expire (leaders that never came back)
    assert await store.claim("{5}c", "t5", ttl=10) and await store.claim("{6}c", "t6", ttl=10)
    with pytest.raises(StoreFull):
        await store.claim("{7}c", "t7", ttl=10)


async def test_keeping_memory_store_keeps_a_claimed_record_beyond_max_bytes() -> None:
    store = KeepingMemoryStore(max_bytes=1024)
    assert await store.claim("{1}c", "t1", ttl=10)
    await store.fulfil("{1}c", "t1", "{1}r", b"x" * 5000, ttl=60)  # its claim reserved room
    assert await store.get("{1}r") == b"x" * 5000
    with pytest.raises(StoreFull):  # now full by bytes: no new claim
        await store.claim("{2}c", "t2", ttl=10)


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


async def test_redis_store_recovers_after_restart(
    start_redis: StartRedis, make_store: MakeStore
) -> None:
    server = start_redis()
    store = make_store(server.url, prefix="recover:", timeout=0.3)
    await store.set("k", b"v")
    server.stop()
    with pytest.raises(StoreUnavailable):
        await store.get("k")
    server.start()
    assert await store.get("k") is None  # the server kept nothing; it answers again
    await store.set("k", b"again")
    assert await store.get("k") == b"again"


async def test_scripts_redis_lost_are_loaded_again_in_the_same_call(
    start_redis: StartRedis, make_store: MakeStore
) -> None:
    """After a restart Redis has no scripts: a scripted call (run alone, or sent ahead for a
    request) answers in the same call, the script loaded again."""
    server = start_redis()
    store = make_store(server.url, prefix="scripts:", timeout=0.5)
    assert isinstance(store, RedisStore)
    op = store.get_or_claim_op("r", "c", "t1", 5)
    assert await store.run(op) == (None, True)
    assert _evalsha_head(op)[0] == store.script(op.source).sha.encode()  # Redis's name
    server.stop()
    server.start()  # nothing kept: no scripts, no keys
    assert await store.run(store.get_or_claim_op("r", "c", "t2", 5)) == (None, True)
    await store.fulfil("c", "t2", "r", b"v", 5)
    into = Prefetch("t3")
    server.stop()
    server.start()
    op = store.get_or_claim_op("r", "c", "t3", 5)
    await store.prefetch([op], into)
    assert op.key not in into.results  # NOSCRIPT in the pipeline: the layer runs it
    assert await store.run(op) == (None, True)


async def test_redis_store_retries_a_dead_pooled_connection_once(
    start_redis: StartRedis, make_store: MakeStore
) -> None:
    """Redis restarts between two calls: the pooled connection is dead, and the first call
    after the restart is retried on a fresh connection instead of failing."""
    server = start_redis(extra=["--appendonly", "yes", "--appendfsync", "always"])
    store = make_store(server.url, prefix="retry:", timeout=0.3)
    await store.set("k", b"v")
    server.stop()
    server.start()
    assert await store.get("k") == b"v"  # the data was kept on disk; the call succeeds
    assert await store.get_or_claim("{k}r", "{k}c", "t", ttl=5) == (None, True)


@pytest.mark.parametrize(
    ("settings", "evicts"),
    [
        ([], None),
        (["--maxmemory", "100mb", "--maxmemory-policy", "noeviction"], None),
        (["--maxmemory", "100mb", "--maxmemory-policy", "allkeys-lru"], "allkeys-lru"),
        (["--maxmemory", "100mb", "--maxmemory-policy", "volatile-ttl"], "volatile-ttl"),
        (["--maxmemory", "100mb", "--rename-command", "CONFIG", '""'], "could not be read"),
    ],
)
async def test_redis_store_says_whether_it_may_evict(
    settings: list[str], evicts: str | None, start_redis: StartRedis, make_store: MakeStore
) -> None:
    server = start_redis(extra=settings)
    store = make_store(server.url, prefix="evicts:", timeout=0.5)
    reason = await store.evicts()
    assert reason is None if evicts is None else evicts in str(reason)


async def test_redis_store_at_maxmemory_without_eviction_is_full(
    start_redis: StartRedis, make_store: MakeStore
) -> None:
    server = start_redis()
    store = make_store(server.url, prefix="full:", timeout=0.5)
    fill_redis(server.url)
    with pytest.raises(StoreFull):
        await store.get_or_claim("{k}r", "{k}c", "t", ttl=5)
    assert await store.get("{k}r") is None  # reads still work: full, not down


async def test_redis_store_one_round_trip_per_operation(
    redis_url: str, key_prefix: str, make_store: MakeStore
) -> None:
    store = make_store(redis_url, clear=True, prefix=key_prefix)
    key = uuid.uuid4().hex
    before = store.round_trips  # type: ignore[attr-defined]
    await store.set(key, b"v", ttl=5, tags=["a", "b"], indexed=True)
    await store.get(key)
    await store.claim("c" + key, "t", ttl=5)
    await store.fulfil("c" + key, "t", key, b"w", ttl=5)
    assert store.round_trips - before == 4  # type: ignore[attr-defined]


# -- the scheme registry ----------------------------------------------------------------------
@pytest.fixture
def fake_scheme(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, StoreOptions]]:
    """Registers ``fake://`` for one test (a third-party store's way in)."""
    from asgi_perf.stores import _registry

    made: list[tuple[str, StoreOptions]] = []

    def factory(url: str, options: StoreOptions) -> Store:
        made.append((url, options))
        return ThirdPartyStore()

    monkeypatch.setattr(_registry, "_SCHEMES", dict(_registry._SCHEMES))
    register_scheme(factory, "fake")
    return made


class ThirdPartyStore(MemoryStore):
    """A store that is neither the memory store nor Redis (a subclass: no ``sync``)."""


def test_a_registered_scheme_is_a_store_url_everywhere(
    fake_scheme: list[tuple[str, StoreOptions]],
) -> None:
    """The core knows no scheme: registering one is all it takes for ``create_store``, the
    middlewares and the environment to accept it."""
    from asgi_perf.ratelimit import RateLimitMiddleware

    store = create_store("fake://x?y=1", prefix="p:", timeout=0.5, name="opt")
    assert isinstance(store, ThirdPartyStore)
    assert fake_scheme[-1] == ("fake://x?y=1", StoreOptions("p:", 10_000, 64 * 1024**2, 0.5, "opt"))
    mw = RateLimitMiddleware.from_env(lambda *a: None, environ={"REDIS_URL": "fake://x"})
    assert mw.limiter.kind == "store"


def test_an_unknown_scheme_lists_the_registered_ones() -> None:
    with pytest.raises(ConfigError) as info:
        create_store("mongodb://x", name="ASGI_PERF_STORAGE_URL")
    assert info.value.name == "ASGI_PERF_STORAGE_URL"
    for scheme in ("memory://", "redis://", "rediss://", "redis+cluster://", "redis+sentinel://"):
        assert scheme in info.value.accepted


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:1/0", "redis+cluster://127.0.0.1:1", "rediss://h:1/0"]
)
def test_a_redis_url_without_the_redis_package_names_the_extra(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in [m for m in sys.modules if m.startswith("redis.")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "redis", None)  # any ``import redis…`` now fails
    with pytest.raises(ConfigError) as info:
        create_store(url, name="ASGI_PERF_STORAGE_URL")
    assert info.value.name == "ASGI_PERF_STORAGE_URL"
    assert "pip install 'asgi-perf[redis]'" in str(info.value)
    from asgi_perf.dedup import DedupMiddleware

    with pytest.raises(ConfigError, match=r"asgi-perf\[redis\]"):
        DedupMiddleware(lambda *a: None, storage=url)


# -- the synchronous capability ---------------------------------------------------------------
async def cacheable(scope: Any, receive: Any, send: Any) -> None:
    headers = [(b"cache-control", b"public, max-age=60")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"x"})


async def test_the_fast_path_is_a_capability_not_a_type() -> None:
    """The memory store offers ``sync``; a subclass does not inherit it (its async operations
    may fail or count, and the sync ones would bypass them) unless it says so; the cache's
    hit path follows ``sync``, whatever the store's class."""
    from asgi_perf.cache import CacheMiddleware
    from tests.support import call

    assert MemoryStore().sync is not None and ThirdPartyStore().sync is None

    class OptedIn(MemoryStore):
        def __init__(self) -> None:
            super().__init__()
            self.sync = self
            self.sync_reads = 0

        def get_nowait(self, key: str) -> bytes | None:
            self.sync_reads += 1
            return super().get_nowait(key)

    for store, sync_reads in ((OptedIn(), True), (ThirdPartyStore(), False)):
        mw = CacheMiddleware(cacheable, storage=store)
        hits = [(await call(mw)).header("x-cache") for _ in range(3)]
        assert hits == ["MISS", "HIT", "HIT"]
        assert (getattr(store, "sync_reads", 0) > 0) is sync_reads


# -- one client per URL and loop --------------------------------------------------------------
@pytest.mark.redis
async def test_one_process_holds_one_pool_for_every_store_backed_middleware(
    redis_url: str, key_prefix: str
) -> None:
    """Rate limit, dedup and cache on one Redis URL: Redis sees one connection from the
    process (requests one after another need no more), not one pool per middleware."""
    import redis.asyncio as aredis

    from asgi_perf.cache import CacheMiddleware
    from asgi_perf.dedup import DedupMiddleware
    from asgi_perf.ratelimit import RateLimitMiddleware
    from tests.support import call

    name = "pool-" + uuid.uuid4().hex[:12]
    url = f"{redis_url.split('?')[0]}?client_name={name}"

    cache = CacheMiddleware(cacheable, storage=url, key_prefix=key_prefix)
    dedup = DedupMiddleware(cache, storage=url, key_prefix=key_prefix)
    stack = RateLimitMiddleware(dedup, storage=url, key_prefix=key_prefix, storage_timeout=0.5)
    admin = aredis.Redis.from_url(redis_url)
    try:
        for i in range(20):
            response = await call(stack, "GET", f"/p{i % 3}")
            assert response.status == 200 and response.header("ratelimit-policy")
        clients = await admin.client_list()
        assert len([c for c in clients if c.get("name") == name]) == 1
        assert stack.limiter.store.client is dedup.store.client is cache.store.client
    finally:
        for store in (stack.limiter.store, dedup.store, cache.store):
            await store.clear()
            await store.close()
        await admin.aclose()


@pytest.mark.redis
async def test_stores_sharing_a_pool_keep_their_own_timeouts(
    redis_url: str, key_prefix: str
) -> None:
    """One pool, a 5 s store and a 100 ms store: a 1 s reply serves the first, fails the other."""
    from urllib.parse import urlsplit

    from tests.faults import FaultProxy

    with FaultProxy(urlsplit(redis_url).port or 6379) as proxy:
        short = create_store(proxy.url, prefix=key_prefix, timeout=0.1)
        long = create_store(proxy.url, prefix=key_prefix, timeout=5.0)
        try:
            await long.set("k", b"v")
            assert short.client is long.client  # type: ignore[attr-defined]
            proxy.set_mode("delay", delay_ms=500)  # each way: a reply takes 1 s
            assert await long.get("k") == b"v"
            with pytest.raises(StoreUnavailable):
                await short.get("k")
            proxy.set_mode("pass")
        finally:
            await long.clear()
            await short.close()
            await long.close()


@pytest.mark.redis
async def test_a_write_that_cannot_wait_goes_without_a_timer(
    redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch, make_store: MakeStore
) -> None:
    """redis-py bounds each write with ``asyncio.wait_for`` (a task and a timer); a command
    that fits in the transport's buffer is sent without one, a large one keeps it."""
    store = make_store(redis_url, clear=True, prefix=key_prefix, timeout=2.0)
    waits: list[object] = []
    real = asyncio.wait_for

    async def counted(awaitable: Any, timeout: float | None) -> Any:
        waits.append(awaitable)
        return await real(awaitable, timeout)

    try:
        await store.set("warm", b"v")  # connected: the first write also connects
        monkeypatch.setattr(asyncio, "wait_for", counted)
        await store.set("small", b"v" * 1000)
        assert await store.get("small") == b"v" * 1000
        assert waits == []
        await store.set("large", b"v" * (1 << 20))  # past the 64 KiB high-water mark
        assert len(waits) == 1
    finally:
        monkeypatch.undo()


@pytest.mark.redis
@pytest.mark.parametrize("server", ["redis_url", "redis_cluster_url"])
async def test_a_command_cancelled_at_any_point_leaves_no_reply_for_the_next_one(
    server: str, key_prefix: str, request: pytest.FixtureRequest, make_store: MakeStore
) -> None:
    """A call cancelled (a timeout, a client gone) after its command was sent but before its
    reply was read must not put the connection back with that reply waiting: the next
    command on it would read the wrong answer, another request's record. Every point of
    cancellation is tried, from before the write to after the read."""
    url = request.getfixturevalue(server)
    store = make_store(url, clear=True, prefix=key_prefix, timeout=2.0)
    await store.set("{t}a", b"A")
    await store.set("{t}b", b"B")

    async def check(passes: int) -> None:
        assert await store.get("{t}b") == b"B", f"cancelled after {passes} loop passes"
        assert await store.holder("{t}b") == "B"

    await cancel_at_each_pass(lambda: store.get("{t}a"), 30, check)


@pytest.mark.redis
async def test_an_idle_connection_is_taken_without_the_pool_queue(
    redis_url: str, key_prefix: str, make_store: MakeStore
) -> None:
    """redis-py's blocking pool enters a Condition and a timer for every command; with nobody
    waiting and a connection idle, the store's pool takes it directly (a fifth of a rate-limit
    check's client CPU)."""
    store = make_store(redis_url, clear=True, prefix=key_prefix, timeout=2.0)
    await store.set("k", b"v")  # connected
    condition = store.client.connection_pool._condition  # type: ignore[attr-defined]
    queued: list[int] = []
    real = condition.acquire

    async def counted() -> bool:
        queued.append(1)
        return bool(await real())

    condition.acquire = counted
    for _ in range(5):
        assert await store.get("k") == b"v"
    assert queued == []
    async with condition:  # somebody holds the queue: a call waits its turn in it
        call = asyncio.ensure_future(store.get("k"))
        await asyncio.sleep(0.05)
        assert not call.done()
    assert await call == b"v"
    assert len(queued) >= 2


@pytest.mark.redis
async def test_a_small_pool_serves_a_burst_each_call_its_own_reply(
    redis_url: str, key_prefix: str, make_store: MakeStore
) -> None:
    """Two connections, 300 concurrent calls under CPU burners: every call completes with its
    own key's value (calls queue for a connection, and one given back reaches a waiter)."""
    url = redis_url + "?max_connections=2"
    store = make_store(url, clear=True, prefix=key_prefix, timeout=5.0)
    with cpu_burners(2):
        await asyncio.gather(*(store.set(f"k{i}", str(i).encode()) for i in range(300)))
        got = await asyncio.gather(*(store.get(f"k{i}") for i in range(300)))
    assert got == [str(i).encode() for i in range(300)]
    assert len(store.client.connection_pool._in_use_connections) == 0  # type: ignore[attr-defined]


@pytest.mark.redis
async def test_a_connection_given_back_past_the_queue_reaches_a_caller_who_began_to_wait(
    redis_url: str, key_prefix: str, make_store: MakeStore
) -> None:
    """A connection given back without the queue, while the pool's own lock is held (a
    disconnect of the pool, say), must still wake a caller that began to wait meanwhile,
    not leave it waiting out the pool timeout."""
    url = redis_url + "?max_connections=1"
    store = make_store(url, clear=True, prefix=key_prefix, timeout=5.0)
    await store.set("k", b"v")
    pool = store.client.connection_pool  # type: ignore[attr-defined]
    connection = await pool.get_connection()
    await pool._lock.acquire()
    given_back = asyncio.ensure_future(pool.release(connection))
    await asyncio.sleep(0)
    waiter = asyncio.ensure_future(pool.get_connection())
    await asyncio.sleep(0.05)
    assert not waiter.done()
    pool._lock.release()
    await given_back
    assert await asyncio.wait_for(waiter, 1.0) is connection
    await pool.release(connection)


@pytest.mark.redis
async def test_a_write_to_a_server_that_stopped_reading_times_out(
    redis_url: str, key_prefix: str
) -> None:
    """The write without a timer is only taken when it cannot wait: a large value sent to a
    Redis that takes nothing still fails within the store's timeout."""
    from urllib.parse import urlsplit

    from tests.faults import FaultProxy

    with FaultProxy(urlsplit(redis_url).port or 6379) as proxy:
        store = create_store(proxy.url, prefix=key_prefix, timeout=0.3)
        try:
            await store.set("k", b"v")
            proxy.set_mode("stall")
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(store.set("big", b"v" * (64 << 20)), 10)
            with pytest.raises(StoreUnavailable):  # and a small one: its reply never comes
                await asyncio.wait_for(store.set("small", b"v"), 10)
        finally:
            proxy.set_mode("pass")
            await store.clear()
            await store.close()


_BUSY_1_S = """
local t0 = redis.call('TIME')
local start = t0[1] * 1000000 + t0[2]
repeat local t = redis.call('TIME') until t[1] * 1000000 + t[2] - start > 1000000
return 1
"""


@pytest.mark.redis
async def test_cluster_stores_sharing_a_client_keep_their_own_timeouts(
    redis_cluster_url: str, key_prefix: str, make_store: MakeStore
) -> None:
    """On Redis Cluster the client reads with the longest timeout; a store that asked for less
    bounds its own calls: the node busy for a second fails the 100 ms store, not the 5 s one.

    The short store asks until the busy script holds the node (a fixed sleep raced the
    script's start on a loaded machine), then must fail there."""
    url = redis_cluster_url + "?max_connections=9"  # a client of its own for this test
    long = make_store(url, clear=True, prefix=key_prefix, timeout=5.0)
    short = make_store(url, prefix=key_prefix, timeout=0.1)
    await long.set("{d}k", b"v")
    assert await short.get("{d}k") == b"v" and short.client is long.client  # type: ignore[attr-defined]
    busy = long.script(_BUSY_1_S)  # type: ignore[attr-defined]
    task = asyncio.ensure_future(long.call(lambda: busy(keys=["{d}k"])))  # type: ignore[attr-defined]
    failed = False
    while not task.done():  # the busy second: the short store's call must fail within it
        try:
            await short.get("{d}k")
        except StoreUnavailable:
            failed = True
            break
        await asyncio.sleep(0.01)
    assert failed, "the short store answered all through the node's busy second"
    assert await task == 1 and await long.get("{d}k") == b"v"


async def test_the_last_store_out_closes_the_shared_client(
    redis_url: str, key_prefix: str, make_store: MakeStore
) -> None:
    first = make_store(redis_url, clear=True, prefix=key_prefix)
    second = make_store(redis_url + "?prefix=" + key_prefix + "b:", clear=True)
    await first.set("k", b"1")
    await second.set("k", b"2")
    client = first.client  # type: ignore[attr-defined]
    assert second.client is client  # type: ignore[attr-defined]
    await first.close()
    assert await second.get("k") == b"2"  # still open for the other store
    await second.close()
    assert await first.get("k") == b"1"  # a closed store reconnects on use
    assert first.client is not client  # type: ignore[attr-defined]


# -- Redis Cluster waiters: sharded pub/sub -----------------------------------------------------
@pytest.mark.redis
async def test_cluster_waiters_hear_fulfil_through_sharded_pubsub(
    redis_cluster_url: str, key_prefix: str, make_store: MakeStore
) -> None:
    """Redis 7+: a waiter on the cluster is woken by ``fulfil`` (``SPUBLISH`` on the key's own
    slot), not by its poll; a key without a hash tag cannot be heard there, and polls."""
    store = make_store(redis_cluster_url, clear=True, prefix=key_prefix, timeout=2.0)
    assert await store.claim("{w}claim", "leader", ttl=5)
    async with store.subscribe("{w}claim") as sub:
        loop = asyncio.get_running_loop()
        loop.call_later(
            0.05,
            lambda: asyncio.ensure_future(
                store.fulfil("{w}claim", "leader", "{w}rec", b"done", ttl=5)
            ),
        )
        assert await sub.wait(5) is True
    assert await store.get("{w}rec") == b"done"
    async with store.subscribe("untagged") as sub:
        assert await sub.wait(0.05) is False
    assert await store.claim("untagged", "t", ttl=5)
    assert await store.release("untagged", "t") is True  # no cross-slot publish


@pytest.mark.redis
async def test_cluster_without_sharded_pubsub_polls(
    redis_cluster_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch, make_store: MakeStore
) -> None:
    """A cluster older than Redis 7 (simulated): no ``SPUBLISH`` anywhere, waiters poll, and
    claims, releases and records still work."""
    from asgi_perf.stores import _redis_client

    async def too_old(client: Any) -> bool:
        return False

    monkeypatch.setattr(_redis_client, "_sharded_pubsub", too_old)
    store = make_store(redis_cluster_url + "?max_connections=7", clear=True, prefix=key_prefix)
    assert await store.claim("{o}claim", "leader", ttl=5)
    async with store.subscribe("{o}claim") as sub:
        await store.fulfil("{o}claim", "leader", "{o}rec", b"r", ttl=5)
        assert await sub.wait(0.05) is False
    assert await store.get("{o}rec") == b"r" and await store.holder("{o}claim") is None


async def test_redis_indexes_expire_with_their_longest_lived_member(
    redis_url: str, key_prefix: str, make_store: MakeStore
) -> None:
    """A tag or prefix index never outlives its entries (nor expires before them)."""
    import redis.asyncio as aredis

    store = make_store(redis_url, clear=True, prefix=key_prefix)
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
