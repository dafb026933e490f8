"""Stampede protection across processes: 4 processes x 50 concurrent cold requests on Redis,
with CPU burners started by the test itself, so that processes are starved at random moments
(a claim won after another process's fill completed must use that fill, not repeat it)."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import call, run_processes

pytestmark = [pytest.mark.slow, pytest.mark.redis]

PROCESSES = 4
CONCURRENCY = 50
BURNERS = 6  # busy processes on top of the workers: three times the cores of the CI machine
FILL_SECONDS = 0.05  # short, so a starved process often looks up before the fill and claims after


def _burn(stop: Any) -> None:
    while not stop.is_set():
        sum(range(10_000))


@contextlib.contextmanager
def cpu_burners(count: int = BURNERS) -> Iterator[None]:
    """``count`` processes spinning on the CPU for the duration of the block."""
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    burners = [ctx.Process(target=_burn, args=(stop,), daemon=True) for _ in range(count)]
    for burner in burners:
        burner.start()
    try:
        time.sleep(0.5)  # let them reach the CPU before the workers start
        yield
    finally:
        stop.set()
        for burner in burners:
            burner.join(timeout=10)
            if burner.is_alive():  # pragma: no cover - a stuck burner
                burner.kill()
                burner.join()


def _worker(redis_url: str, key_prefix: str, barrier: Any, results: Any) -> None:
    from asgi_perf.cache import CacheMiddleware
    from asgi_perf.stores._redis import RedisStore

    calls = 0

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(FILL_SECONDS)
        body = f"filled by {os.getpid()}".encode()
        headers = [(b"cache-control", b"max-age=60")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def main() -> tuple[int, list[bytes], list[str]]:
        # A store call that times out bypasses the cache by design (tests/system/test_faults.py);
        # this test is about the claim, so the store may be slow under the burners but answers.
        store = RedisStore(redis_url, prefix=key_prefix + "cache:", timeout=5.0)
        mw = CacheMiddleware(app, storage=store, lock_timeout=20)
        # One connection per concurrent request, opened before the start signal.
        await asyncio.gather(*(store.get("warm-up") for _ in range(CONCURRENCY)))
        await asyncio.to_thread(barrier.wait, 60)
        responses = await asyncio.gather(*(call(mw, "GET", "/hot") for _ in range(CONCURRENCY)))
        await store.close()
        return (
            calls,
            [r.body for r in responses],
            [r.header("x-cache") or "" for r in responses],
        )

    results.put(asyncio.run(main()))


def test_four_processes_fill_a_cold_key_once(redis_url: str, key_prefix: str) -> None:
    with cpu_burners():
        outcomes, _ = run_processes(_worker, (redis_url, key_prefix), PROCESSES, timeout=90)
    assert len(outcomes) == PROCESSES, "a worker did not report"
    total_calls = sum(calls for calls, _, _ in outcomes)
    bodies = {body for _, bs, _ in outcomes for body in bs}
    labels = [label for _, _, ls in outcomes for label in ls]
    assert total_calls == 1, [(calls, sorted(set(ls))) for calls, _, ls in outcomes]
    assert len(bodies) == 1 and next(iter(bodies)).startswith(b"filled by ")
    assert len(labels) == PROCESSES * CONCURRENCY
    assert labels.count("MISS") == 1 and labels.count("HIT") == PROCESSES * CONCURRENCY - 1
