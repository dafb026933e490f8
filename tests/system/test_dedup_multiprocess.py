"""Dedup across processes: 4 workers x 25 concurrent identical POSTs on Redis run the app once,
also with CPU burners started by the test (the store keeps its default 250 ms timeout: a burst
on a starved machine must not count as a Redis outage and run the app everywhere)."""

from __future__ import annotations

import asyncio
import multiprocessing
from typing import Any

import pytest

from tests.support import run_processes, wait_until
from tests.system.test_cache_multiprocess import cpu_burners

PROCESSES = 4
PER_PROCESS = 25


async def _run(
    url: str, prefix: str, barrier: Any, fail_first: bool
) -> tuple[int, list[bytes], list[str | None]]:
    import redis.asyncio as aredis

    from asgi_perf.dedup import DedupMiddleware
    from tests.support import call

    calls = 0
    arrived = prefix + "arrived"  # processes whose requests all reached the middleware
    client = aredis.from_url(url) if fail_first else None  # on a single Redis

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal calls
        calls += 1
        first = calls == 1
        await receive()
        await asyncio.sleep(0.3)
        if client is not None and first and await mw.store.claim("first", "me", 60):
            # Fail only once every process's requests wait for this leader: a request
            # arriving after the failure would rightly lead (and be shared) itself. Process
            # start-up under load takes far longer than a request's first round trip.
            async def everyone_arrived() -> bool:
                return int(await client.get(arrived) or 0) >= PROCESSES

            await wait_until(everyone_arrived, 30, step=0.01)
            await asyncio.sleep(0.2)
            raise RuntimeError("the leader fails")  # in whichever process leads
        body = b'{"order": 1, "pid": %d}' % multiprocessing.current_process().pid
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": body})

    mw = DedupMiddleware(app, storage=url, key_prefix=prefix, window=5)
    await mw.store.get("warm-up")  # connect before the start line, not after
    await asyncio.to_thread(barrier.wait, 30)
    requests = asyncio.gather(
        *(call(mw, "POST", "/orders", body=b'{"item": 7}') for _ in range(PER_PROCESS)),
        return_exceptions=True,
    )
    await wait_until(lambda: mw.stats()["requests"] >= PER_PROCESS, 30)
    if client is not None:
        await client.incr(arrived)
    done = await asyncio.wait_for(requests, 30)
    await mw.store.close()
    if client is not None:
        await client.aclose()
    responses = [r for r in done if not isinstance(r, BaseException)]
    failed = [b"<raised>" for r in done if isinstance(r, RuntimeError)]
    return calls, [r.body for r in responses] + failed, [r.header("x-dedup") for r in responses]


def _worker(url: str, prefix: str, fail_first: bool, barrier: Any, results: Any) -> None:
    results.put(asyncio.run(_run(url, prefix, barrier, fail_first)))


def _spawn(url: str, prefix: str, fail_first: bool) -> list[Any]:
    return run_processes(_worker, (url, prefix, fail_first), PROCESSES)[0]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["redis", "cluster", "redis-starved"])
def test_identical_posts_across_processes_run_once(
    backend: str, key_prefix: str, request: pytest.FixtureRequest
) -> None:
    url = str(request.getfixturevalue("redis_cluster_url" if backend == "cluster" else "redis_url"))
    if backend == "redis-starved":
        with cpu_burners():
            outcomes = _spawn(url, key_prefix, fail_first=False)
    else:
        outcomes = _spawn(url, key_prefix, fail_first=False)
    assert len(outcomes) == PROCESSES, "a worker did not report"
    assert sum(calls for calls, _, _ in outcomes) == 1
    bodies = {body for _, process_bodies, _ in outcomes for body in process_bodies}
    assert len(bodies) == 1  # 100 identical responses, made by one process
    marks = [m for _, _, process_marks in outcomes for m in process_marks]
    assert len(marks) == PROCESSES * PER_PROCESS
    assert marks.count(None) == 1
    assert set(marks) - {None} <= {"coalesced", "hit"}


@pytest.mark.slow
def test_failed_leader_releases_waiters_in_every_process(redis_url: str, key_prefix: str) -> None:
    outcomes = _spawn(redis_url, key_prefix, fail_first=True)
    assert len(outcomes) == PROCESSES, "a worker did not report"
    bodies = [body for _, process_bodies, _ in outcomes for body in process_bodies]
    assert len(bodies) == PROCESSES * PER_PROCESS  # nobody hung
    assert bodies.count(b"<raised>") == 1  # only the failed leader's own client saw the error
    assert sum(calls for calls, _, _ in outcomes) == PROCESSES * PER_PROCESS
    marks = [m for _, _, process_marks in outcomes for m in process_marks]
    assert marks == [None] * (PROCESSES * PER_PROCESS - 1)  # no replay of a failure


@pytest.mark.slow
async def test_over_a_real_server_with_chunked_uploads() -> None:
    import httpx

    from asgi_perf.dedup import DedupMiddleware
    from tests.support import serve

    calls = 0
    seen: list[bytes] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal calls
        if scope["type"] != "http":
            return
        calls += 1
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        seen.append(body)
        await asyncio.sleep(0.2)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"len=%d" % len(body)})

    big = bytes(range(256)) * 1024  # 256 KiB, larger than max_body_size: passed through
    mw = DedupMiddleware(app, max_body_size=64 * 1024)

    async def chunks() -> Any:
        for i in range(0, len(big), 10_000):
            yield big[i : i + 10_000]

    with serve(mw) as url:
        async with httpx.AsyncClient(base_url=url, timeout=20) as client:
            same = await asyncio.gather(
                *(client.post("/o", content=b"x" * 5000) for _ in range(20))
            )
            large = await client.post("/o", content=chunks())
    assert [r.text for r in same] == ["len=5000"] * 20
    assert sum(r.headers.get("x-dedup") is None for r in same) == 1
    assert large.text == f"len={len(big)}"
    assert seen[-1] == big  # streamed to the app intact
    assert calls == 2
