"""Stampede protection across processes: 4 processes x 50 concurrent cold requests on Redis."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from tests.support import call, run_processes

pytestmark = [pytest.mark.slow, pytest.mark.redis]

PROCESSES = 4
CONCURRENCY = 50


def _worker(redis_url: str, key_prefix: str, barrier: Any, results: Any) -> None:
    from asgi_perf.cache import CacheMiddleware

    calls = 0

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.5)  # long enough for every process to arrive while it runs
        body = f"filled by {os.getpid()}".encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    async def main() -> tuple[int, list[bytes], list[str]]:
        mw = CacheMiddleware(app, storage=redis_url, key_prefix=key_prefix, lock_timeout=20)
        await mw.store.get("warm-up")  # connect before the start signal
        await asyncio.to_thread(barrier.wait, 60)
        responses = await asyncio.gather(*(call(mw, "GET", "/hot") for _ in range(CONCURRENCY)))
        await mw.store.close()
        return (
            calls,
            [r.body for r in responses],
            [r.header("x-cache") or "" for r in responses],
        )

    results.put(asyncio.run(main()))


def test_four_processes_fill_a_cold_key_once(redis_url: str, key_prefix: str) -> None:
    outcomes, _ = run_processes(_worker, (redis_url, key_prefix), PROCESSES, timeout=60)
    assert len(outcomes) == PROCESSES, "a worker did not report"
    total_calls = sum(calls for calls, _, _ in outcomes)
    bodies = {body for _, bs, _ in outcomes for body in bs}
    labels = [label for _, _, ls in outcomes for label in ls]
    assert total_calls == 1
    assert len(bodies) == 1 and next(iter(bodies)).startswith(b"filled by ")
    assert len(labels) == PROCESSES * CONCURRENCY
    assert labels.count("MISS") == 1 and labels.count("HIT") == PROCESSES * CONCURRENCY - 1
