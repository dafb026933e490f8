"""Fleet statistics in one process: sketches merge exactly, statistics merge by their meaning,
snapshots travel through Redis and a directory and expire, the stack's entry starts and stops
publishing and keeps the report out of the stack. (Several real processes:
``test_fleet_multiprocess.py``.)"""

from __future__ import annotations

import asyncio
import math
import os
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from asgi_perf import from_env
from asgi_perf._fleet import publisher_for
from asgi_perf._fleet.backends import DirectorySnapshots, RedisSnapshots
from asgi_perf._fleet.merge import combine, merge
from asgi_perf._fleet.publisher import Publisher
from asgi_perf._fleet.snapshot import Instance, decode, encode, this_instance
from asgi_perf._report.entry import StackEntry, under
from asgi_perf._report.prometheus import LATENCY_BUCKETS
from asgi_perf._report.settings import ReportSettings
from asgi_perf.report import report_app
from asgi_perf.stores._redis import RedisStore
from asgi_perf.timing import TimingMiddleware
from asgi_perf.timing._histogram import LatencyHistogram
from tests.support import call, make_scope


# -- sketches -------------------------------------------------------------------------------
def _sketch(values: Any) -> LatencyHistogram:
    sketch = LatencyHistogram()
    for value in values:
        sketch.record(float(value))
    return sketch


def test_merged_sketches_equal_one_sketch_of_everything() -> None:
    rng = np.random.default_rng(19)
    parts = [
        rng.lognormal(-5, 1.0, 3000),
        rng.lognormal(-2, 0.5, 2000),
        rng.uniform(1e-7, 5000, 20),  # both clamped ends (too few to be a quantile here)
    ]
    merged = LatencyHistogram()
    for part in parts:
        merged.merge(LatencyHistogram.from_state(orjson.loads(orjson.dumps(_sketch(part).state()))))
    everything = np.concatenate(parts)
    whole = _sketch(everything)
    assert merged.state()["bins"] == whole.state()["bins"]
    assert merged.count == len(everything) and merged.max == everything.max()
    assert merged.sum == pytest.approx(everything.sum())
    ordered = np.sort(everything)
    for q in (0.5, 0.95, 0.99):
        exact = float(ordered[math.floor(q * (len(ordered) - 1))])
        estimate = merged.quantile(q)
        assert estimate is not None
        assert abs(estimate - exact) <= merged.relative_accuracy * exact * (1 + 1e-9), q


def test_merge_rejects_other_accuracies_and_keeps_empty_ones_empty() -> None:
    with pytest.raises(ValueError, match="accuracy"):
        LatencyHistogram().merge(LatencyHistogram(0.01))
    empty = LatencyHistogram()
    empty.merge(LatencyHistogram())
    assert empty.count == 0 and empty.quantile(0.5) is None
    assert LatencyHistogram.from_state(empty.state()).quantile(0.99) is None


def test_fixed_buckets_add_up_and_hold_within_accuracy() -> None:
    rng = np.random.default_rng(7)
    a, b = rng.lognormal(-4, 1.5, 4000), rng.lognormal(-3, 1.0, 3000)
    bounds = list(LATENCY_BUCKETS)
    merged = _sketch(a)
    merged.merge(_sketch(b))
    counts = merged.cumulative(bounds)
    halves = zip(_sketch(a).cumulative(bounds), _sketch(b).cumulative(bounds), strict=True)
    parts = [x + y for x, y in halves]
    assert counts == parts  # buckets of merged sketches are the sums of their parts'
    assert counts == sorted(counts) and counts[-1] <= merged.count
    both = np.concatenate([a, b])
    for bound, count in zip(bounds, counts, strict=True):
        low = int((both <= bound * (1 - merged.relative_accuracy)).sum())
        high = int((both <= bound * (1 + merged.relative_accuracy)).sum())
        assert low <= count <= high, bound


# -- statistics -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("values", "key", "expected"),
    [
        ([1, 2, 3], "hits", 6),
        ([0.5, 0.25], "query_time_ms", 0.75),
        ([100, 100], "max_entries", 100),  # a setting, not a count
        ([1.0, 1.0], "slow_threshold_seconds", 1.0),
        ([False, True], "down", True),
        ([None, 4], "entries", 4),
        ([None, None], "entries", None),
        (["redis", "redis"], "kind", "redis"),
        (["log", "header"], "action", ["header", "log"]),  # processes disagree: both shown
        ([["zstd", "gzip"], ["zstd", "gzip"]], "encodings", ["zstd", "gzip"]),
        ([{"gzip": 1}, {"gzip": 2, "br": 1}], "compressed", {"gzip": 3, "br": 1}),
    ],
)
def test_combine(values: list[Any], key: str, expected: Any) -> None:
    assert combine(values, key) == expected


def test_merge_recomputes_ratios_and_merges_finding_rows() -> None:
    one = {
        "cache": [{"hits": 3, "stale_hits": 0, "misses": 1, "hit_ratio": 0.75}],
        "queries": [
            {
                "requests": 2,
                "n_plus_one": [
                    {"statement": "SELECT a", "call_site": "x.py:1", "requests": 2, "queries": 10},
                ],
            }
        ],
    }
    two = {
        "cache": [{"hits": 0, "stale_hits": 1, "misses": 3, "hit_ratio": 0.25}],
        "queries": [
            {
                "requests": 5,
                "n_plus_one": [
                    {"statement": "SELECT b", "call_site": "y.py:2", "requests": 1, "queries": 6},
                    {"statement": "SELECT a", "call_site": "x.py:1", "requests": 3, "queries": 15},
                ],
            }
        ],
        "other": [{"n": 1}, {"n": 2}],  # instances matched by registration order
    }
    merged = merge([one, two])
    assert merged["cache"] == [{"hits": 3, "stale_hits": 1, "misses": 4, "hit_ratio": 0.5}]
    [queries] = merged["queries"]
    assert queries["requests"] == 7
    assert queries["n_plus_one"] == [
        {"statement": "SELECT a", "call_site": "x.py:1", "requests": 5, "queries": 25},
        {"statement": "SELECT b", "call_site": "y.py:2", "requests": 1, "queries": 6},
    ]
    assert merged["other"] == [{"n": 1}, {"n": 2}]


async def hello(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def test_timing_state_round_trips_and_merges() -> None:
    clock = iter(x * 0.001 for x in range(10_000))
    mw = TimingMiddleware(hello, clock=lambda: next(clock))
    for path in ("/a", "/a", "/b/1"):
        await call(mw, path=path)
    state = orjson.loads(orjson.dumps(mw.mergeable_stats()))
    [merged] = merge([{"timing": [state]}, {"timing": [state]}])["timing"]
    routes = {r["route"]: r for r in merged["routes"]}
    assert routes["/a"]["statuses"] == {"200": 4}
    assert routes["/b/{id}"]["duration"]["count"] == 2
    assert LatencyHistogram.from_state(routes["/a"]["duration"]).quantile(0.5) == pytest.approx(
        mw.stats()["routes"][0]["duration_seconds"]["p50"]
    )


# -- snapshots and backends -----------------------------------------------------------------
def test_snapshot_encoding() -> None:
    me = this_instance()
    assert me.pid == os.getpid() and me.id.startswith(me.host)
    document = decode(encode(me, 12.5))
    assert document["instance"] == me.describe() and document["published"] == 12.5
    assert isinstance(document["stats"], dict)
    for junk in (b"", b"not zlib", encode(me, 1)[:-3]):
        with pytest.raises(ValueError, match="snapshot"):
            decode(junk)


def _foreign(tag: str) -> Instance:
    return Instance(f"elsewhere-{tag}", "elsewhere", 424242, 1.0)


async def _contract(snapshots: Any) -> None:
    """Publish, read, replace, remove, and expire by themselves after the ttl."""
    first, second = _foreign("1"), _foreign("2")
    await snapshots.publish(first.id, encode(first, 1.0))
    await snapshots.publish(second.id, encode(second, 2.0))
    await snapshots.publish(first.id, encode(first, 3.0))  # a newer one replaces it
    found = {decode(b)["instance"]["id"]: decode(b)["published"] for b in await snapshots.read()}
    assert found == {first.id: 3.0, second.id: 2.0}
    await snapshots.remove(second.id)
    assert [decode(b)["instance"]["id"] for b in await snapshots.read()] == [first.id]
    await asyncio.sleep(snapshots.ttl + 0.3)
    assert await snapshots.read() == []  # nobody removed it: it expired


async def test_directory_snapshots(tmp_path: Path) -> None:
    snapshots = DirectorySnapshots(str(tmp_path / "stats"), ttl=0.5)
    await _contract(snapshots)
    assert os.listdir(tmp_path / "stats") == []  # the reader removed the stale file


@pytest.mark.redis
async def test_redis_snapshots(redis_url: str, key_prefix: str) -> None:
    store = RedisStore(redis_url, prefix=key_prefix)
    try:
        snapshots = RedisSnapshots(store, ttl=0.5)
        await _contract(snapshots)
        client = store.client
        assert await client.exists(snapshots.members) == 0  # the index expires with the last one
        before = store.round_trips
        await snapshots.publish("x", b"y")
        assert store.round_trips - before == 1  # one round trip per publication
    finally:
        await store.close()


@pytest.mark.cluster
async def test_redis_cluster_snapshots(redis_cluster_url: str, key_prefix: str) -> None:
    store = RedisStore(redis_cluster_url, prefix=key_prefix)
    try:
        await _contract(RedisSnapshots(store, ttl=0.5))
    finally:
        await store.close()


# -- the publisher, the report, the stack's entry --------------------------------------------
async def test_report_merges_other_processes_from_a_directory(tmp_path: Path) -> None:
    """Another process's snapshot (made here under a foreign identity) joins this one's."""
    env = {"ASGI_PERF_STATS_DIR": str(tmp_path), "ASGI_PERF_REPORT_PUBLISH_INTERVAL": "0.2s"}
    clock = iter(x * 0.001 for x in range(10_000))
    mw = TimingMiddleware(hello, clock=lambda: next(clock))
    for _ in range(3):
        await call(mw, path="/fleet-merge-route")
    foreign = _foreign("dir")
    snapshots = DirectorySnapshots(str(tmp_path), ttl=0.6)
    await snapshots.publish(foreign.id, encode(foreign, time.time()))
    app = report_app(environ=env)
    try:
        document = orjson.loads((await call(app)).body)
        assert document["scope"] == "fleet" and "does not publish" in document["note"]
        publisher = publisher_for(ReportSettings.resolve(env))
        assert publisher is not None
        publisher.ensure_running()  # what the stack's entry does (lifespan or first request)
        document = orjson.loads((await call(app)).body)
        assert document["scope"] == "fleet" and "note" not in document
        assert document["fleet"] == {
            "backend": "directory",
            "publish_interval": 0.2,
            "ttl": pytest.approx(0.6),
        }
        assert {i["id"] for i in document["instances"]} == {this_instance().id, foreign.id}
        route = [
            r
            for entry in document["stats"]["timing"]
            for r in entry["routes"]
            if r["route"] == "/fleet-merge-route"
        ]
        # this process counts 3; the foreign snapshot is this process's too (published after the
        # requests), so the fleet shows 6: this process's live figures plus the other's
        assert sum(r["count"] for r in route) == 6
        process = orjson.loads((await call(app, query="scope=process")).body)
        assert process["scope"] == "process" and len(process["instances"]) == 1
        prometheus = (await call(app, query="format=prometheus")).text()
        families = {f.name: f for f in text_string_to_metric_families(prometheus)}
        assert [s.value for s in families["asgi_perf_report_instances"].samples] == [2.0]
        assert {s.labels["scope"] for s in families["asgi_perf_http_requests"].samples} == {"fleet"}
        await asyncio.sleep(0.8)  # the foreign snapshot is not renewed: it leaves by itself
        document = orjson.loads((await call(app)).body)
        assert foreign.id not in {i["id"] for i in document["instances"]}
    finally:
        publisher = publisher_for(ReportSettings.resolve(env))
        assert publisher is not None
        await publisher.stop()


async def test_report_answers_for_this_process_when_a_snapshot_is_unreadable(
    tmp_path: Path,
) -> None:
    """A snapshot this version cannot merge (another layout, another sketch accuracy)."""
    env = {"ASGI_PERF_STATS_DIR": str(tmp_path)}
    odd = _foreign("odd")
    document = {
        "format": 1,
        "instance": odd.describe(),
        "published": time.time(),
        "stats": {"timing": [{"routes": [{"method": "GET"}]}]},
    }
    blob = zlib.compress(orjson.dumps(document))
    await DirectorySnapshots(str(tmp_path), ttl=15).publish(odd.id, blob)
    response = await call(report_app(environ=env))
    assert response.status == 200
    reply = orjson.loads(response.body)
    assert reply["scope"] == "process" and "unreadable" in reply["note"]


async def test_report_answers_for_this_process_when_the_fleet_is_unreachable() -> None:
    app = report_app(environ={"ASGI_PERF_STORAGE_URL": "redis://127.0.0.1:1/0"})
    publisher = publisher_for(
        ReportSettings.resolve({"ASGI_PERF_STORAGE_URL": "redis://127.0.0.1:1/0"})
    )
    try:
        response = await call(app)
        document = orjson.loads(response.body)
        assert response.status == 200 and document["scope"] == "process"
        assert "fleet statistics unavailable" in document["note"]
    finally:
        assert publisher is not None
        await publisher.stop()


def test_publisher_is_one_per_backend(tmp_path: Path) -> None:
    env = {"ASGI_PERF_STATS_DIR": str(tmp_path)}
    one, two = (publisher_for(ReportSettings.resolve(env)) for _ in range(2))
    assert one is two and one is not None and one.interval == 5.0
    assert publisher_for(ReportSettings.resolve({})) is None  # memory://: per process
    off = {**env, "ASGI_PERF_REPORT_PUBLISH_INTERVAL": "off"}
    assert publisher_for(ReportSettings.resolve(off)) is None


@pytest.mark.parametrize(
    ("path", "root", "raw", "expected"),
    [
        ("/__perf__", "", None, True),
        ("/__perf__/", "", None, True),
        ("/__perf__/metrics", "", None, True),
        ("/__perfume", "", None, False),
        ("/api/__perf__/metrics", "/api", None, True),
        ("/items", "", None, False),
        ("/", "", None, False),
        ("/metrics/", "", b"/__perf__/metrics", True),  # Litestar, below its mount point
        ("/", "", b"/__perfume", False),
    ],
)
def test_under(path: str, root: str, raw: bytes | None, expected: bool) -> None:
    scope = make_scope(path=path, root_path=root, raw_path=raw or path.encode())
    assert under(scope, "/__perf__") is expected


async def test_litestar_mount_is_let_through() -> None:
    """Litestar runs the plugin's stack with the path below the mount: the raw path decides."""
    import httpx
    from litestar import Litestar, get
    from litestar.handlers import asgi

    from asgi_perf.contrib.litestar import AsgiPerfPlugin

    @get("/")
    async def index() -> dict[str, int]:
        return {"a": 1}

    env = {"ASGI_PERF_RATE_LIMIT_ENABLED": "true", "ASGI_PERF_RATE_LIMIT": "1/minute"}
    perf = asgi("/__perf__", is_mount=True, copy_scope=True)(report_app(environ={}))
    app = Litestar(route_handlers=[index, perf], plugins=[AsgiPerfPlugin(environ=env)])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/")).status_code == 200
        assert (await client.get("/")).status_code == 429
        for path in ("/__perf__", "/__perf__/", "/__perf__/metrics"):
            response = await client.get(path)
            assert response.status_code == 200 and "ratelimit-policy" not in response.headers
        assert (await client.get("/__perf__/metrics")).text.startswith("# HELP")


class Counting:
    """The bare app: the report under /__perf__, ``ok`` elsewhere; counts what reaches it."""

    def __init__(self, report: Any) -> None:
        self.report = report
        self.calls = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        self.calls += 1
        if under(scope, "/__perf__"):
            await self.report({**scope, "root_path": "/__perf__"}, receive, send)
        else:
            await hello(scope, receive, send)


async def test_stack_lets_the_report_through_untouched() -> None:
    """Rate limit 1/minute, cache and dedup on: the report is never refused, cached, replayed
    or counted, however often it is asked for."""
    env = {
        "ASGI_PERF_RATE_LIMIT_ENABLED": "true",
        "ASGI_PERF_RATE_LIMIT": "1/minute",
        "ASGI_PERF_DEDUP_ENABLED": "true",
        "ASGI_PERF_CACHE_ENABLED": "true",
    }
    app = Counting(report_app(environ={}))
    stack = from_env(app, environ=env)
    assert isinstance(stack, StackEntry) and stack.publisher is None
    for _ in range(5):
        response = await call(stack, path="/__perf__/", client=("203.0.113.9", 1))
        assert response.status == 200 and response.header("x-cache") is None
        assert response.header("ratelimit-policy") is None
        assert response.header("server-timing") is None
    assert app.calls == 5
    assert (await call(stack, path="/x", client=("203.0.113.9", 1))).status == 200
    assert (await call(stack, path="/x", client=("203.0.113.9", 1))).status == 429
    timing = stack.app
    assert isinstance(timing, TimingMiddleware)
    assert [r["route"] for r in timing.stats()["routes"]] == ["/x"]  # the report is not in it
    # a path of its own, or none at all
    moved = from_env(app, environ={**env, "ASGI_PERF_REPORT_PATH": "/ops/perf/"})
    assert isinstance(moved, StackEntry) and moved.path == "/ops/perf"
    off = from_env(app, environ={**env, "ASGI_PERF_REPORT_PATH": "off"})
    assert isinstance(off, TimingMiddleware)


async def _lifespan(app: Any, until: asyncio.Event) -> list[str]:
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    sent: list[str] = []
    await inbox.put({"type": "lifespan.startup"})

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])

    async def stop() -> None:
        await until.wait()
        await inbox.put({"type": "lifespan.shutdown"})

    stopper = asyncio.create_task(stop())
    await app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, send)
    await stopper
    return sent


async def test_lifespan_starts_and_stops_publishing(tmp_path: Path) -> None:
    env = {"ASGI_PERF_STATS_DIR": str(tmp_path), "ASGI_PERF_REPORT_PUBLISH_INTERVAL": "0.05s"}
    stack = from_env(Counting(report_app(environ=env)), environ=env)
    assert isinstance(stack, StackEntry)
    publisher = stack.publisher
    assert isinstance(publisher, Publisher)
    done = asyncio.Event()
    running = asyncio.create_task(_lifespan(stack, done))
    deadline = time.monotonic() + 10
    while publisher.publishes < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert publisher.publishes >= 3
    assert len(os.listdir(tmp_path)) == 1  # this process's snapshot, renewed in place
    done.set()
    assert await running == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert publisher.task is None and os.listdir(tmp_path) == []  # withdrawn at shutdown


async def test_first_request_starts_publishing_without_lifespan(tmp_path: Path) -> None:
    env = {"ASGI_PERF_STATS_DIR": str(tmp_path), "ASGI_PERF_REPORT_PUBLISH_INTERVAL": "0.05s"}
    stack = from_env(Counting(report_app(environ=env)), environ=env)
    assert isinstance(stack, StackEntry) and stack.publisher is not None
    try:
        assert stack.publisher.task is None
        await call(stack, path="/x")
        task = stack.publisher.task
        assert task is not None
        await call(stack, path="/x")
        assert stack.publisher.task is task  # started once
        await asyncio.sleep(0.2)
        assert stack.publisher.publishes >= 2
    finally:
        await stack.publisher.stop()


async def test_publish_failures_are_logged_once_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    snapshots = DirectorySnapshots(str(tmp_path), ttl=1.0)
    publisher = Publisher(snapshots, 0.01, "directory")
    snapshots.path = str(tmp_path / "gone")  # every write now fails
    for _ in range(3):
        await publisher.publish()
    assert publisher.publishes == 0 and publisher.outage.failures == 3
    assert len([r for r in caplog.records if "fleet statistics" in r.message]) == 1
    snapshots.path = str(tmp_path)
    await publisher.publish()
    assert publisher.publishes == 1 and not publisher.outage.down
