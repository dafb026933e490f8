"""Exactness across worker processes sharing one Redis (and one Redis Cluster).

Four spawned workers, each with its own middleware, event loop and connection pool, fire
their requests concurrently at the same client budget; the admissions of all of them together
must equal the limit.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from asgi_perf.ratelimit._strategies import STRATEGIES
from tests.support import run_processes

WORKERS = 4
PER_WORKER = 40
LIMIT = 50  # per day: the whole test is inside one window


def worker(url: str, prefix: str, strategies: list[str], barrier: Any, out: Any) -> None:
    from asgi_perf.ratelimit import RateLimitMiddleware
    from tests.support import call

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def main() -> None:
        for strategy in strategies:
            mw = RateLimitMiddleware(
                app,
                limit=f"{LIMIT}/day",
                strategy=strategy,
                storage=url,
                key_prefix=prefix + strategy + ":",
                storage_timeout=5.0,
            )
            await call(mw, client=("192.0.2.200", 1))  # connect first: another client's budget
            barrier.wait()
            responses = await asyncio.gather(
                *(call(mw, client=("192.0.2.1", 1)) for _ in range(PER_WORKER))
            )
            statuses = [r.status for r in responses]
            out.put((strategy, statuses.count(200), statuses.count(429), mw.stats()))
            await mw.limiter.close()

    asyncio.run(main())


def run_workers(url: str, prefix: str, strategies: list[str]) -> dict[str, list[Any]]:
    rows, exit_codes = run_processes(
        worker, (url, prefix, strategies), WORKERS, results_per_process=len(strategies), timeout=60
    )
    assert all(code == 0 for code in exit_codes)
    results: dict[str, list[Any]] = {s: [] for s in strategies}
    for strategy, admitted, refused, stats in rows:
        results[strategy].append((admitted, refused, stats))
    return results


def check(results: dict[str, list[Any]]) -> None:
    for strategy, rows in results.items():
        assert len(rows) == WORKERS
        admitted = sum(r[0] for r in rows)
        refused = sum(r[1] for r in rows)
        assert admitted == LIMIT, strategy
        assert admitted + refused == WORKERS * PER_WORKER, strategy
        assert all(r[2]["outage"]["failures"] == 0 for r in rows), strategy
        # one round trip per check (PER_WORKER + the warm-up; the script load is extra)
        trips = [r[2]["limiter"]["store"]["round_trips"] for r in rows]
        assert all(t == PER_WORKER + 1 for t in trips), (strategy, trips)


@pytest.mark.slow
@pytest.mark.redis
def test_exact_across_processes_on_redis(redis_url: str, key_prefix: str) -> None:
    check(run_workers(redis_url, key_prefix, list(STRATEGIES)))


@pytest.mark.slow
@pytest.mark.cluster
def test_exact_across_processes_on_redis_cluster(redis_cluster_url: str, key_prefix: str) -> None:
    check(run_workers(redis_cluster_url, key_prefix, ["moving-window", "fixed-window", "gcra"]))
