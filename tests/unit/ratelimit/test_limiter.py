"""Strategies x storages: table tests on a fake clock, memory/Redis parity, round trips."""

from __future__ import annotations

import abc
import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asgi_perf._core.config import ConfigError
from asgi_perf.ratelimit._rules import Policy
from asgi_perf.ratelimit._storage import StoreLimiter, create_limiter
from asgi_perf.ratelimit._strategies import (
    STRATEGIES,
    Decision,
    MemoryLimiter,
    RedisLimiter,
    hash_tag,
    sliding_retry,
)
from asgi_perf.stores import MemoryStore, Store

W = [(3, 10.0)]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(strategy: str, steps: list[tuple[float, bool, int, float]]) -> None:
    """Each step: (time offset, allowed, remaining, t) on a 3-per-10s window."""
    clock = Clock()
    limiter = MemoryLimiter(strategy, clock=clock)
    for offset, allowed, remaining, reset in steps:
        clock.now = 1000.0 + offset
        d = limiter.check("ip:1", "default", W)
        got = (offset, d.allowed, d.remaining[0], round(d.resets[0], 3))
        assert got == (offset, allowed, remaining, reset)


def test_fixed_window_table() -> None:
    run(
        "fixed-window",
        [
            (0, True, 2, 10.0),
            (1, True, 1, 9.0),
            (2, True, 0, 8.0),
            (3, False, -1, 7.0),
            (9.5, False, -1, 0.5),
            (10, True, 2, 10.0),  # the window began with the first request, not the clock
        ],
    )


def test_moving_window_table() -> None:
    run(
        "moving-window",
        [
            (0, True, 2, 10.0),
            (1, True, 1, 9.0),
            (2, True, 0, 8.0),
            (3, False, -1, 7.0),  # the request at 0 leaves at 10
            (10, True, 0, 1.0),  # 0 left; 1 and 2 still count
            (10.5, False, -1, 0.5),
            (11, True, 0, 1.0),
        ],
    )


def test_sliding_window_table() -> None:
    # 1000 is a multiple of 10: windows are [1000, 1010), [1010, 1020) …
    run(
        "sliding-window",
        [
            (0, True, 2, 10.0),
            (1, True, 1, 9.0),
            (2, True, 0, 8.0),
            (3, False, -1, 7.001),  # current is full: wait for the next window (+1 ms)
            (15, True, 1, 5.0),  # previous 3 weighted by 5/10 -> floor(1.5) = 1
            (15, True, 0, 5.0),
            (15, False, -1, 1.668),  # room when floor(3 * (10 - e) / 10) + 1 < 3: e > 3.33
            (16.668, True, 0, 3.332),
        ],
    )


def test_gcra_table() -> None:
    run(
        "gcra",
        [
            (0, True, 2, 3.333),
            (0, True, 1, 6.667),
            (0, True, 0, 10.0),
            (0, False, -1, 3.333),  # one cell refills every 10/3 s
            (3.334, True, 0, 9.999),
            (3.335, False, -1, 3.332),
        ],
    )


@pytest.mark.parametrize(
    ("current", "previous", "elapsed", "amount", "expected"),
    [
        (3, 0, 2.0, 3, 8.001),
        (6, 0, 0.0, 3, 15.001),  # next window, then half of 6 must decay
        (1, 4, 0.0, 3, 5.001),  # 4 * (10 - e) / 10 < 2 -> e > 5
    ],
)
def test_sliding_retry(
    current: int, previous: int, elapsed: float, amount: int, expected: float
) -> None:
    assert round(sliding_retry(current, previous, elapsed, amount, 10.0), 3) == expected


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_all_windows_must_have_room_and_refusals_count_nowhere(strategy: str) -> None:
    clock = Clock()
    limiter = MemoryLimiter(strategy, clock=clock)
    windows = [(2, 10.0), (100, 1000.0)]
    assert [limiter.check("k", "r", windows).allowed for _ in range(5)] == [
        True,
        True,
        False,
        False,
        False,
    ]
    d = limiter.check("k", "r", windows)
    assert d.remaining == [-1, 0]  # only the first window refuses; the other reports 0
    assert d.tightest() == 0
    clock.now += 500
    d = limiter.check("k", "r", windows)
    # 2 admitted before + this one; GCRA has refilled the 2 cells meanwhile (10 s each)
    assert d.allowed and d.remaining[1] == (99 if strategy == "gcra" else 100 - 3)


def test_tightest_when_allowed_prefers_fewest_remaining() -> None:
    clock = Clock()
    limiter = MemoryLimiter("fixed-window", clock=clock)
    d = limiter.check("k", "r", [(10, 1.0), (2, 60.0)])
    assert d.remaining == [9, 1] and d.tightest() == 1


def test_memory_is_bounded() -> None:
    limiter = MemoryLimiter("moving-window", max_entries=100)
    for i in range(1000):
        limiter.check(f"ip:{i}", "r", W)
    stats = limiter.stats()
    assert stats["keys"] <= 100 and stats["evictions"] > 0


async def test_memory_exact_under_200_concurrent_tasks() -> None:
    for strategy in STRATEGIES:
        limiter = create_limiter("memory://", strategy)

        async def one(limiter: Any) -> bool:
            await asyncio.sleep(0)
            return (await limiter.hit("ip:nat", "default", [(50, 3600.0)])).allowed

        results = await asyncio.gather(*(one(limiter) for _ in range(200)))
        assert sum(results) == 50, strategy


def test_bad_strategy_and_url() -> None:
    with pytest.raises(ConfigError, match="strategy"):
        create_limiter("memory://", "token-bucket")
    with pytest.raises(ConfigError, match="storage"):
        create_limiter("mongodb://x", "gcra")


class ThirdPartyStore(Store):
    """Another package's store, neither the memory store nor Redis (here it delegates to a
    memory store, without offering ``sync``): counted through claim/get/set/release."""

    def __init__(self) -> None:
        self.inner = MemoryStore()


for _name in Store.__abstractmethods__:
    setattr(
        ThirdPartyStore,
        _name,
        lambda self, *a, _name=_name, **k: getattr(self.inner, _name)(*a, **k),
    )
abc.update_abstractmethods(ThirdPartyStore)


def test_a_memory_url_counts_in_process_without_making_a_store(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_store(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a MemoryStore was made to read a setting")

    monkeypatch.setattr(MemoryStore, "__init__", no_store)
    limiter = create_limiter("memory://?max_entries=50", "gcra")
    assert isinstance(limiter, MemoryLimiter) and limiter.max_entries == 50
    assert create_limiter("memory://", "gcra").max_entries == 100_000  # type: ignore[attr-defined]


async def test_any_store_is_accepted_and_counts_exactly() -> None:
    """Not only memory and Redis: another store gets the same decisions as the memory
    limiter, one at a time per identity even with 200 checks at once."""
    for strategy in STRATEGIES:
        clock = Clock()
        limiter = create_limiter(ThirdPartyStore(), strategy)
        assert isinstance(limiter, StoreLimiter)
        limiter.clock = clock
        memory = MemoryLimiter(strategy, clock=clock)
        windows = [(3, 10.0), (5, 60.0)]
        for step in range(12):
            clock.now += 1.5
            a = await limiter.hit("ip:1", "default", windows)
            b = memory.check("ip:1", "default", windows)
            assert (a.allowed, a.remaining, a.resets) == (b.allowed, b.remaining, b.resets), step

        crowd = create_limiter(ThirdPartyStore(), strategy)

        async def one(limiter: Any = crowd) -> bool:
            await asyncio.sleep(0)
            return (await limiter.hit("ip:nat", "default", [(50, 3600.0)])).allowed

        assert sum(await asyncio.gather(*(one() for _ in range(200)))) == 50, strategy
    sync_store = MemoryStore()
    assert isinstance(create_limiter(sync_store, "gcra"), MemoryLimiter)


@pytest.mark.parametrize(
    ("identity", "expected"),
    [("ip:1.2.3.4", "{ip:1.2.3.4}"), ("u:a}b", None), ("u:{x}", None)],
)
def test_hash_tag(identity: str, expected: str | None) -> None:
    tag = hash_tag(identity)
    if expected is not None:
        assert tag == expected
    else:
        assert tag.count("{") == 1 and tag.count("}") == 1 and tag.startswith("{h:")


# -- Redis ------------------------------------------------------------------------------------
@pytest.mark.redis
@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_redis_matches_memory(store_url: str, key_prefix: str, strategy: str) -> None:
    """Same decisions on every storage (long windows, so the few ms between calls do not matter)."""
    limiter = create_limiter(store_url, strategy, prefix=key_prefix, timeout=1.0)
    memory = MemoryLimiter(strategy)
    windows = [(3, 3600.0), (5, 7200.0)]
    try:
        for i in range(6):
            identity = "u:{weird}" if i % 2 else "ip:10.0.0.1"
            a = await limiter.hit(identity, "default", windows)
            b = memory.check(identity, "default", windows)
            assert (a.allowed, a.remaining) == (b.allowed, b.remaining)
            assert all(abs(x - y) < 2 for x, y in zip(a.resets, b.resets, strict=True))
    finally:
        await limiter.close()


@pytest.mark.redis
@pytest.mark.parametrize("server", ["redis_url", "redis_cluster_url"])
async def test_redis_one_round_trip_per_check(
    server: str, key_prefix: str, request: pytest.FixtureRequest
) -> None:
    store_url = request.getfixturevalue(server)
    limiter = create_limiter(store_url, "moving-window", prefix=key_prefix, timeout=1.0)
    assert isinstance(limiter, RedisLimiter)
    windows = [(2, 60.0), (10, 3600.0), (100, 86400.0)]
    try:
        await limiter.hit("ip:warm", "default", windows)  # loads the script
        before = limiter.store.round_trips
        for _ in range(5):
            await limiter.hit("ip:9.9.9.9", "default", windows)
        assert limiter.store.round_trips - before == 5
        keys = limiter.keys("ip:9.9.9.9", "default", windows)
        from redis.crc import key_slot

        assert len({key_slot(k.encode()) for k in keys}) == 1
    finally:
        await limiter.close()


async def test_redis_store_object_is_accepted(redis_url: str, key_prefix: str) -> None:
    from asgi_perf.stores import create_store

    store: Any = create_store(redis_url, prefix=key_prefix)
    limiter = create_limiter(store, "gcra")
    try:
        assert (await limiter.hit("ip:1", "r", W)).allowed
        assert limiter.stats()["store"]["round_trips"] == 1
    finally:
        await limiter.close()


@settings(max_examples=150, deadline=None)
@given(
    amount=st.integers(1, 5),
    gaps=st.lists(st.floats(0, 4, allow_nan=False).map(lambda x: round(x, 3)), max_size=40),
)
def test_moving_window_is_exact(amount: int, gaps: list[float]) -> None:
    """Admitted iff fewer than ``amount`` admissions in the last 10 s; never more."""
    clock = Clock()
    limiter = MemoryLimiter("moving-window", clock=clock)
    admitted: list[float] = []
    for gap in gaps:
        clock.now += gap
        recent = [t for t in admitted if t > clock.now - 10]
        d = limiter.check("k", "r", [(amount, 10.0)])
        assert d.allowed == (len(recent) < amount)
        if d.allowed:
            admitted.append(clock.now)
            assert d.remaining[0] == amount - len(recent) - 1
        else:
            # Retry-After: the moment the oldest counted admission leaves the window
            assert abs(clock.now + d.resets[0] - (recent[0] + 10)) < 1e-6


@settings(max_examples=150, deadline=None)
@given(
    amount=st.integers(1, 5),
    gaps=st.lists(st.floats(0, 4, allow_nan=False).map(lambda x: round(x, 3)), max_size=40),
)
def test_gcra_never_exceeds_burst_plus_rate(amount: int, gaps: list[float]) -> None:
    """In any span of length s at most ``amount + s / interval`` admissions (GCRA's bound)."""
    clock = Clock()
    limiter = MemoryLimiter("gcra", clock=clock)
    admitted: list[float] = []
    for gap in gaps:
        clock.now += gap
        if limiter.check("k", "r", [(amount, 10.0)]).allowed:
            admitted.append(clock.now)
    interval = 10.0 / amount
    for i, start in enumerate(admitted):
        for j in range(i, len(admitted)):
            span = admitted[j] - start
            assert j - i + 1 <= amount + span / interval + 1e-6


@settings(max_examples=150, deadline=None)
@given(
    strategy=st.sampled_from(STRATEGIES),
    amount=st.integers(1, 5),  # to_rates refuses a quota of 0
    steps=st.lists(
        st.tuples(st.floats(0, 6, allow_nan=False).map(lambda x: round(x, 3)), st.booleans()),
        max_size=40,
    ),
)
def test_check_one_decides_as_check_does(
    strategy: str, amount: int, steps: list[tuple[float, bool]]
) -> None:
    """The one-window shortcut the middleware takes (the fixed window's written out) gives
    ``check``'s answer and leaves the state ``check`` reads: one limiter answers by either,
    at random, a twin only by ``check``."""
    clock = Clock()
    either, twin = MemoryLimiter(strategy, clock=clock), MemoryLimiter(strategy, clock=clock)
    for gap, shortcut in steps:
        clock.now += gap
        d = twin.check("k", "r", [(amount, 10.0)])
        expected = (d.allowed, d.remaining[0], round(d.resets[0], 6))
        if shortcut:
            ok, left, reset = either.check_one("k", "r", amount, 10.0)
            got = (ok, left, round(reset, 6))
        else:
            e = either.check("k", "r", [(amount, 10.0)])
            got = (e.allowed, e.remaining[0], round(e.resets[0], 6))
        assert got == expected


@given(
    name=st.sampled_from(["default", "api", 'we "quote"']),
    left=st.integers(min_value=0, max_value=10**6),  # admitted: never below 0
    reset=st.floats(min_value=0.0, max_value=1e5, allow_nan=False),
)
def test_allowed_fields_are_the_fields_of_the_same_decision(
    name: str, left: int, reset: float
) -> None:
    """The one-window fields, built from the template's parts around its two numbers, are
    what ``fields`` makes of the same admitted decision."""
    policy = Policy(name, "10/minute", "rate")
    assert policy.allowed_fields(left, reset) == policy.fields(Decision(True, [left], [reset]))[0]
