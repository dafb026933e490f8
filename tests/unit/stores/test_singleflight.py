"""Single flight on every store: one leader, waiters get its record, released, or time out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from asgi_perf.stores import Store, StoreUnavailable, create_store
from asgi_perf.stores._singleflight import SingleFlight


@pytest.fixture
async def store(store_url: str, key_prefix: str) -> AsyncIterator[Store]:
    s = create_store(store_url, prefix=key_prefix, timeout=2.0)
    yield s
    await s.clear()
    await s.close()


async def test_one_leader_and_everyone_gets_its_record(store: Store) -> None:
    flight = SingleFlight(store, wait_timeout=5)
    runs = 0

    async def request() -> bytes:
        nonlocal runs
        outcome = await flight.join("{k}claim", "{k}rec")
        if outcome.kind == "record":
            assert outcome.value is not None
            return outcome.value
        assert outcome.kind == "leader" and outcome.lease is not None
        async with outcome.lease:
            runs += 1
            await asyncio.sleep(0.1)
            await outcome.lease.fulfil("{k}rec", b"result", ttl=5)
        return b"result"

    results = await asyncio.wait_for(asyncio.gather(*(request() for _ in range(50))), 10)
    assert results == [b"result"] * 50
    assert runs == 1


async def test_release_without_record_frees_the_waiters(store: Store) -> None:
    flight = SingleFlight(store, wait_timeout=5)
    leader = await flight.join("{r}claim", "{r}rec")
    assert leader.kind == "leader" and leader.lease is not None
    waiter = asyncio.create_task(flight.join("{r}claim", "{r}rec"))
    await asyncio.sleep(0.05)
    await leader.lease.release()
    outcome = await asyncio.wait_for(waiter, 5)
    assert outcome.kind == "released"


async def test_waiter_deadline(store: Store) -> None:
    flight = SingleFlight(store, wait_timeout=0.1, lease_ttl=5)
    leader = await flight.join("{t}claim", "{t}rec")
    assert leader.kind == "leader"
    outcome = await asyncio.wait_for(flight.join("{t}claim", "{t}rec"), 5)
    assert outcome.kind == "timeout"


async def test_lease_is_renewed_while_leader_works(store: Store) -> None:
    flight = SingleFlight(store, lease_ttl=0.15)
    leader = await flight.join("{l}claim", "{l}rec")
    assert leader.lease is not None
    async with leader.lease:
        await asyncio.sleep(0.4)  # longer than the lease: only renewal keeps the claim
        assert await store.holder("{l}claim") == leader.lease.token
    await leader.lease.release()


async def test_crashed_leader_claim_expires(store: Store) -> None:
    flight = SingleFlight(store, lease_ttl=0.1, wait_timeout=5)
    first = await flight.join("{c}claim", "{c}rec")
    assert first.kind == "leader"  # and never ends its lease: a crash
    outcome = await asyncio.wait_for(flight.join("{c}claim", "{c}rec"), 5)
    assert outcome.kind == "released"


class FlakyRenewals:
    """Wraps a store: its first ``failures`` renewals fail as a slow store's would."""

    def __init__(self, store: Store, failures: int) -> None:
        self.store = store
        self.failures = failures

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)

    async def renew(self, key: str, token: str, ttl: float) -> bool:
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("renewal timed out")
        return await self.store.renew(key, token, ttl)


async def test_a_run_of_failed_renewals_does_not_lose_the_claim(store: Store) -> None:
    flaky: Any = FlakyRenewals(store, failures=3)
    flight = SingleFlight(flaky, lease_ttl=0.3)
    leader = await flight.join("{f}claim", "{f}rec")
    assert leader.lease is not None
    async with leader.lease:
        await asyncio.sleep(0.6)  # three failed renewals in a row, then working ones
        assert flaky.failures == 0
        assert await store.holder("{f}claim") == leader.lease.token
    await leader.lease.release()
    assert await store.holder("{f}claim") is None


async def test_a_stalled_leader_takes_its_lapsed_claim_back(store: Store) -> None:
    flight = SingleFlight(store, lease_ttl=0.15)
    leader = await flight.join("{s}claim", "{s}rec")
    assert leader.lease is not None
    async with leader.lease:
        time.sleep(0.3)  # the event loop stalls past the lease: the claim lapses
        assert await store.holder("{s}claim") is None
        # the loop runs again: the renewer takes the claim back (waited for, not timed: a
        # loaded machine may need more than one renewal period)
        for _ in range(100):
            if await store.holder("{s}claim") == leader.lease.token:
                break
            await asyncio.sleep(0.05)
        assert await store.holder("{s}claim") == leader.lease.token
        # … so a waiter now waits for this leader instead of doing the work a second time
        waiter = await asyncio.wait_for(
            SingleFlight(store, wait_timeout=0.1).join("{s}claim", "{s}rec"), 5
        )
        assert waiter.kind == "timeout"
    await leader.lease.release()
    await asyncio.sleep(0.1)  # a renewer that outlived the release would take it back
    assert await store.holder("{s}claim") is None


async def test_a_waiter_woken_while_the_claim_is_still_held_waits_without_spinning(
    store: Store,
) -> None:
    """A notification that finds the claim still held (a spurious wake, or a new leader
    that claimed at once) is spent: the waiter waits for the next one, or polls, instead of
    being woken again at once (on Python 3.12+ that loop never yielded: a livelock)."""
    flight = SingleFlight(store, wait_timeout=3, poll_max=0.25)
    leader = await flight.join("{w}claim", "{w}rec")
    assert leader.kind == "leader" and leader.lease is not None
    reads = 0
    get = store.get

    async def counting_get(key: str) -> Any:
        nonlocal reads
        if key == "{w}rec":
            reads += 1
        return await get(key)

    store.get = counting_get  # type: ignore[method-assign]
    waiter = asyncio.create_task(flight.wait("{w}claim", "{w}rec"))
    await asyncio.sleep(0.05)
    before = reads
    await store.notify("{w}claim")  # woken, but the leader still holds the claim
    await asyncio.sleep(0.4)
    woken_reads = reads - before
    await leader.lease.fulfil("{w}rec", b"done", ttl=5)
    outcome = await asyncio.wait_for(waiter, 5)
    assert outcome.kind == "record" and outcome.value == b"done"
    assert woken_reads <= 12, f"{woken_reads} reads in 0.4 s after one notification"
