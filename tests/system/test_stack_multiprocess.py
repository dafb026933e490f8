"""The full stack on Redis across processes: its first store calls go out together (the
prefetcher), and exactly-once still holds. 4 processes x 25 concurrent identical cold requests,
with CPU burners started by the test, so processes are starved at random moments between the
prefetched claim and the layer that takes it."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from tests.support import call, run_processes
from tests.system.test_cache_multiprocess import cpu_burners

pytestmark = [pytest.mark.slow, pytest.mark.redis]

PROCESSES = 4
CONCURRENCY = 25


def _worker(redis_url: str, key_prefix: str, barrier: Any, results: Any) -> None:
    from asgi_perf import from_env
    from asgi_perf._prefetcher import Prefetcher

    calls = 0

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        headers = [(b"cache-control", b"max-age=60")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": f"by {os.getpid()}".encode()})

    env = {
        "ASGI_PERF_STORAGE_URL": redis_url,
        "ASGI_PERF_KEY_PREFIX": key_prefix,
        "ASGI_PERF_RATE_LIMIT_ENABLED": "true",
        "ASGI_PERF_RATE_LIMIT": "1000000/hour",
        "ASGI_PERF_RATE_LIMIT_STORAGE_TIMEOUT": "5",
        "ASGI_PERF_DEDUP_ENABLED": "true",
        "ASGI_PERF_DEDUP_WAIT_TIMEOUT": "20",
        "ASGI_PERF_CACHE_ENABLED": "true",
        "ASGI_PERF_CACHE_LOCK_TIMEOUT": "20",
        # no fleet publisher: its round trips, in a task of their own, would land in the
        # counted ones now and then (the name this used to give, ASGI_PERF_FLEET, was read
        # by nothing; strict makes a name nothing reads an error)
        "ASGI_PERF_REPORT_PUBLISH_INTERVAL": "off",
        "ASGI_PERF_STRICT": "true",
    }

    async def main() -> tuple[int, list[bytes], bool]:
        nonlocal calls
        stack = from_env(app, env)
        layer: Any = stack
        prefetched = False
        while layer is not None:
            prefetched = prefetched or isinstance(layer, Prefetcher)
            # A store call that times out fails open by design (tests/system/test_faults.py);
            # this test is about the claims, so the store may be slow under the burners.
            if getattr(layer, "store", None) is not None:
                layer.store.timeout = 5.0
            layer = getattr(layer, "app", None)
        await call(stack, "GET", "/warm-up")  # connections and scripts (another may fill it)
        await asyncio.to_thread(barrier.wait, 60)
        calls = 0
        responses = await asyncio.gather(*(call(stack, "GET", "/hot") for _ in range(CONCURRENCY)))
        return calls, [r.body for r in responses], prefetched

    results.put(asyncio.run(main()))


def test_four_processes_run_a_cold_request_once_through_the_stack(
    redis_url: str, key_prefix: str
) -> None:
    with cpu_burners():
        outcomes, _ = run_processes(_worker, (redis_url, key_prefix), PROCESSES, timeout=120)
    assert len(outcomes) == PROCESSES, "a worker did not report"
    assert all(prefetched for _, _, prefetched in outcomes)
    assert sum(calls for calls, _, _ in outcomes) == 1, [calls for calls, _, _ in outcomes]
    bodies = {body for _, bodies, _ in outcomes for body in bodies}
    assert len(bodies) == 1 and next(iter(bodies)).startswith(b"by ")
