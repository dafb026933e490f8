"""The fleet report across real processes: ``uvicorn --workers`` on Redis (and on a stats
directory with ``memory://``), and two independent servers as two "hosts" on one Redis.

The app (``tests/apps/fleetapp.py``) records the duration the client asks for, so the test
knows every sample: the report of any process must count every request sent to any of them,
give percentiles within the sketch's relative accuracy (0.5%) of the exact percentiles of all
samples, and list every live process; a SIGKILLed worker must leave the report by itself (its
snapshot's time to live runs out); Prometheus counters of the fleet must add up to the requests
sent, and its histogram buckets to the sum of each process's.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from asgi_perf.timing._histogram import DEFAULT_ACCURACY
from tests.support import ServerProcess, uvicorn_process

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

APP = "tests.apps.fleetapp:app"
INTERVAL = 0.25  # seconds between publications; snapshots live 3 of them
REQUESTS = 300


def durations(n: int, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    return [float(d) for d in rng.lognormal(mean=-4.0, sigma=1.2, size=n).clip(1e-4, 20.0)]


def fresh_client(url: str) -> httpx.AsyncClient:
    """No keep-alive: every request is a new connection, which any worker may accept."""
    return httpx.AsyncClient(
        base_url=url, timeout=30, limits=httpx.Limits(max_keepalive_connections=0)
    )


async def send_work(url: str, samples: list[float], concurrency: int = 12) -> Counter[int]:
    """``GET /work?d=…`` once per sample; how many each worker (``X-Pid``) answered."""
    served: Counter[int] = Counter()
    queue = iter(samples)

    async def worker(client: httpx.AsyncClient) -> None:
        for d in queue:
            response = await client.get("/work", params={"d": repr(d)})
            assert response.status_code == 200, response.text
            served[int(response.headers["x-pid"])] += 1

    async with fresh_client(url) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return served


async def report(url: str, **params: str) -> dict[str, Any]:
    async with fresh_client(url) as client:
        response = await client.get("/__perf__/", params=params)
        assert response.status_code == 200, response.text
        document: dict[str, Any] = response.json()
        return document


def work_route(document: dict[str, Any]) -> dict[str, Any]:
    [timing] = document["stats"]["timing"]
    [route] = [r for r in timing["routes"] if r["route"] == "/work"]
    return route


def assert_percentiles(route: dict[str, Any], samples: list[float]) -> None:
    """Each merged quantile within the sketch's accuracy of the exact one (same rank rule)."""
    ordered = sorted(samples)
    for q in (0.5, 0.95, 0.99):
        exact = ordered[math.floor(q * (len(ordered) - 1))]
        merged = route["duration_seconds"][f"p{round(q * 100)}"]
        assert abs(merged - exact) <= DEFAULT_ACCURACY * exact * (1 + 1e-9), (q, merged, exact)
    assert route["duration_seconds"]["max"] == max(samples)
    assert route["duration_sum_seconds"] == pytest.approx(sum(samples))


async def wait_for_report(url: str, check: Any, timeout: float = 20.0) -> dict[str, Any]:
    """The first report (from whichever process answers) for which ``check`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        document = await report(url)
        if check(document) or time.monotonic() > deadline:
            return document
        await asyncio.sleep(INTERVAL / 2)


def pids(document: dict[str, Any]) -> set[int]:
    return {instance["pid"] for instance in document["instances"]}


async def load_every_worker(server: ServerProcess, seed: int) -> tuple[list[float], set[int]]:
    """Send REQUESTS requests, then more until every worker has answered some."""
    workers = set(server.workers())
    samples = durations(REQUESTS, seed)
    served = await send_work(server.url, samples)
    extra = durations(2000, seed + 1)
    while set(served) != workers and extra:
        batch, extra = extra[:50], extra[50:]
        served += await send_work(server.url, batch)
        samples += batch
    assert set(served) == workers, (served, workers)
    return samples, workers


@pytest.fixture(params=["redis", "directory"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    env = {"FLEETAPP_INTERVAL": f"{INTERVAL}s"}
    if request.param == "redis":
        env["FLEETAPP_STORAGE_URL"] = str(request.getfixturevalue("redis_url"))
        env["FLEETAPP_KEY_PREFIX"] = str(request.getfixturevalue("key_prefix"))
    else:
        env["FLEETAPP_STATS_DIR"] = str(tmp_path / "stats")
    return env


async def test_workers_share_one_report_and_a_killed_one_leaves(
    backend: dict[str, str], tmp_path: Path
) -> None:
    workers_wanted = 3 if "FLEETAPP_STORAGE_URL" in backend else 2
    log = str(tmp_path / "server.log")
    with uvicorn_process(APP, backend, log, workers=workers_wanted) as server:
        samples, workers = await load_every_worker(server, seed=1)
        n = len(samples)

        # every worker's answer: all N requests, fleet percentiles, every worker listed
        answered: set[int] = set()
        for _ in range(60):
            document = await wait_for_report(
                server.url, lambda d: work_route(d)["count"] == n and pids(d) == workers
            )
            assert document["scope"] == "fleet" and "note" not in document
            assert pids(document) == workers
            route = work_route(document)
            assert route["count"] == n and route["statuses"] == {"200": n}
            assert_percentiles(route, samples)
            [limits] = document["stats"]["ratelimit"]
            assert limits["allowed"] == n  # every middleware's counters add up too
            answered.add(document["pid"])
            if answered == workers:
                break
        assert answered == workers, "some worker never answered the report"

        # this process alone
        alone = await report(server.url, scope="process")
        assert alone["scope"] == "process" and pids(alone) == {alone["pid"]}
        assert work_route(alone)["count"] < n

        # SIGKILL one worker: nothing withdraws its snapshot; its time to live does
        victim = sorted(workers)[0]
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        gone = await wait_for_report(server.url, lambda d: victim not in pids(d))
        assert victim not in pids(gone), "a killed worker stayed in the report"
        left_after = time.monotonic() - killed_at
        assert set(pids(gone)) <= set(server.workers()) | {victim}
        print(f"\nkilled worker {victim} left the report after {left_after:.2f} s")


@pytest.mark.redis
async def test_two_hosts_on_one_redis_and_prometheus_adds_up(
    redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    env = {
        "FLEETAPP_STORAGE_URL": redis_url,
        "FLEETAPP_KEY_PREFIX": key_prefix,
        "FLEETAPP_INTERVAL": f"{INTERVAL}s",
    }
    with (
        uvicorn_process(APP, env, str(tmp_path / "a.log")) as a,
        uvicorn_process(APP, env, str(tmp_path / "b.log")) as b,
    ):
        to_a, to_b = durations(200, 3), durations(150, 4)
        assert set(await send_work(a.url, to_a)) == {a.proc.pid}
        assert set(await send_work(b.url, to_b)) == {b.proc.pid}
        samples, n = to_a + to_b, len(to_a) + len(to_b)
        hosts = {a.proc.pid, b.proc.pid}
        for server in (a, b):
            document = await wait_for_report(
                server.url, lambda d: work_route(d)["count"] == n and pids(d) == hosts
            )
            assert document["pid"] == server.proc.pid and pids(document) == hosts
            assert_percentiles(work_route(document), samples)

        async with fresh_client(a.url) as client, fresh_client(b.url) as other:
            fleet = (await client.get("/__perf__/metrics")).text
            om = await client.get(
                "/__perf__/metrics", headers={"accept": "application/openmetrics-text"}
            )
            parts = [
                (await c.get("/__perf__/metrics", params={"scope": "process"})).text
                for c in (client, other)
            ]
        families = {f.name: f for f in text_string_to_metric_families(fleet)}
        requests = families["asgi_perf_http_requests"]
        assert requests.type == "counter"
        work = [s for s in requests.samples if s.labels["route"] == "/work"]
        assert sum(s.value for s in work) == n  # the sum of the _total counters: requests sent
        assert {s.labels["scope"] for s in work} == {"fleet"}
        allowed = [
            s
            for s in families["asgi_perf_ratelimit_decisions"].samples
            if s.labels["outcome"] == "allowed"
        ]
        assert [s.value for s in allowed] == [n]
        assert [s.value for s in families["asgi_perf_report_instances"].samples] == [2]

        fleet_buckets = buckets(families)
        assert fleet_buckets["+Inf"] == n == fleet_buckets["_count"]
        ordered = [v for k, v in fleet_buckets.items() if k not in ("_count", "_sum")]
        assert ordered == sorted(ordered)
        per_process = [
            buckets({f.name: f for f in text_string_to_metric_families(t)}) for t in parts
        ]
        for bound in fleet_buckets:
            if bound != "_sum":  # the buckets and the count of the fleet: the sum of its parts'
                assert fleet_buckets[bound] == sum(p[bound] for p in per_process), bound
        assert fleet_buckets["_sum"] == pytest.approx(sum(p["_sum"] for p in per_process))

        assert om.headers["content-type"].startswith("application/openmetrics-text")
        parsed = {f.name: f for f in openmetrics_families(om.text)}
        assert parsed["asgi_perf_http_request_duration_seconds"].type == "histogram"


def buckets(families: dict[str, Any]) -> dict[str, float]:
    """The /work duration histogram: cumulative count per ``le``, then ``_count`` and ``_sum``."""
    out: dict[str, float] = {}
    for sample in families["asgi_perf_http_request_duration_seconds"].samples:
        if sample.labels.get("route") != "/work":
            continue
        if sample.name.endswith("_bucket"):
            out[sample.labels["le"]] = sample.value
        else:
            out[sample.name[sample.name.rindex("_") :]] = sample.value
    return out
