"""Single flight on every store: one leader, waiters get its record, released, or time out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from asgi_perf.stores import Store, create_store
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
