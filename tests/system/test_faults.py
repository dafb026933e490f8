"""Redis faults: killed mid-run and restarted, slow, a black hole, refused at start-up.

For each store-backed middleware the documented degradation happens while Redis is gone —
rate limiting fails open (requests admitted, no limit headers, even past the limit), the
cache is bypassed (``X-Cache: BYPASS``, the app answers every request), dedup passes through
(the app runs for every duplicate) — every request completes with its exact body, the outage
is logged once (one WARNING line, however many requests failed), and the middleware recovers
by itself once Redis is back (limits, hits and replays return, one INFO line says so).

The faults come from a real ``redis-server`` this module owns (killed with SIGKILL and
restarted on the same port) and from :class:`tests.faults.FaultProxy` between the app and it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from asgi_perf import create_store
from asgi_perf.cache import CacheMiddleware
from asgi_perf.dedup import DedupMiddleware
from asgi_perf.ratelimit import RateLimitMiddleware
from asgi_perf.stores import Store
from tests.faults import FaultProxy
from tests.support import (
    RedisServer,
    Response,
    call,
    fill_redis,
    redis_server_available,
    skip_or_fail,
)

pytestmark = pytest.mark.redis

REQUEST_TIMEOUT = 30.0  # a bound, not a measurement: a request that hangs fails the test
RECOVERY_DEADLINE = 40  # probes (0.25 s apart) before "never recovered" fails the test


class CountingApp:
    """Answers ``payload:<path>`` (cacheable for a minute) and counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        self.calls += 1
        body = b"payload:" + scope["path"].encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/plain"),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"public, max-age=60"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


async def request(mw: Any, path: str, client: str = "10.0.0.1") -> Response:
    response = await asyncio.wait_for(
        call(mw, "GET", path, client=(client, 40000)), REQUEST_TIMEOUT
    )
    assert response.body == b"payload:" + path.encode(), "a body was lost or corrupted"
    return response


# -- per middleware: build, "working normally", "degraded as documented" ------------------------
class Kind:
    name = ""
    logger = ""
    ids = itertools.count()

    def build(self, app: CountingApp, url: str | Store, prefix: str) -> Any:
        raise NotImplementedError

    async def healthy(self, mw: Any) -> bool:
        """One probe: does the middleware do its store-backed job right now?"""
        raise NotImplementedError

    async def degraded(self, mw: Any, app: CountingApp) -> None:
        """Requests during the outage: all complete, each with the documented degradation."""
        raise NotImplementedError

    async def close(self, mw: Any) -> None:
        raise NotImplementedError

    def fresh(self) -> int:
        return next(self.ids)


class RateLimitKind(Kind):
    name = "ratelimit"
    logger = "asgi_perf.ratelimit"
    LIMIT = 3

    def build(self, app: CountingApp, url: str | Store, prefix: str) -> Any:
        # storage_timeout as the other stores' (250 ms, not 50): a busy CI machine must not
        # turn a healthy reply into an extra outage; the faults below are all far slower.
        return RateLimitMiddleware(
            app,
            limit=f"{self.LIMIT}/minute",
            storage=url,
            key_prefix=prefix,
            storage_timeout=0.25,
        )

    async def healthy(self, mw: Any) -> bool:
        # A fresh client: limited (headers) and refused past its budget.
        client = f"10.1.{self.fresh() % 250}.{self.fresh() % 250}"
        statuses = []
        for _ in range(self.LIMIT + 1):
            response = await request_any(mw, "/rl", client)
            if response.header("ratelimit-policy") is None:
                return False
            statuses.append(response.status)
        return statuses == [200] * self.LIMIT + [429]

    async def degraded(self, mw: Any, app: CountingApp) -> None:
        # Fail-open: one client sends twice its budget; every request is admitted, unlabelled.
        before = app.calls
        responses = await asyncio.gather(
            *(request(mw, "/rl", "10.2.0.1") for _ in range(2 * self.LIMIT))
        )
        assert [r.status for r in responses] == [200] * (2 * self.LIMIT)
        assert all(r.header("ratelimit-policy") is None for r in responses)
        assert app.calls - before == 2 * self.LIMIT

    async def close(self, mw: Any) -> None:
        await mw.limiter.close()


async def request_any(mw: Any, path: str, client: str) -> Response:
    """Like :func:`request` but a 429 (whose body is a problem document) is fine too."""
    response = await asyncio.wait_for(
        call(mw, "GET", path, client=(client, 40000)), REQUEST_TIMEOUT
    )
    if response.status == 200:
        assert response.body == b"payload:" + path.encode()
    else:
        assert response.status == 429, response
    return response


class CacheKind(Kind):
    name = "cache"
    logger = "asgi_perf.cache"

    def build(self, app: CountingApp, url: str | Store, prefix: str) -> Any:
        return CacheMiddleware(app, storage=url, key_prefix=prefix, lock_timeout=2)

    async def healthy(self, mw: Any) -> bool:
        path = f"/c{self.fresh()}"
        first = await request(mw, path)
        second = await request(mw, path)
        return first.header("x-cache") == "MISS" and second.header("x-cache") == "HIT"

    async def degraded(self, mw: Any, app: CountingApp) -> None:
        # Bypass: the same resource four times at once, each answered by the app.
        before = app.calls
        responses = await asyncio.gather(*(request(mw, "/cached") for _ in range(4)))
        assert [r.header("x-cache") for r in responses] == ["BYPASS"] * 4
        assert app.calls - before == 4

    async def close(self, mw: Any) -> None:
        await mw.store.close()


class DedupKind(Kind):
    name = "dedup"
    logger = "asgi_perf.dedup"

    def build(self, app: CountingApp, url: str | Store, prefix: str) -> Any:
        return DedupMiddleware(app, storage=url, key_prefix=prefix, window=30, wait_timeout=2)

    async def healthy(self, mw: Any) -> bool:
        path = f"/d{self.fresh()}"
        first = await request(mw, path)
        second = await request(mw, path)
        return first.header("x-dedup") is None and second.header("x-dedup") == "hit"

    async def degraded(self, mw: Any, app: CountingApp) -> None:
        # Pass-through: four identical requests at once all run the app; none is a replay.
        before = app.calls
        responses = await asyncio.gather(*(request(mw, "/dup") for _ in range(4)))
        assert [r.header("x-dedup") for r in responses] == [None] * 4
        assert app.calls - before == 4

    async def close(self, mw: Any) -> None:
        await mw.store.close()


KINDS = {k.name: k for k in (RateLimitKind(), CacheKind(), DedupKind())}


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shared_redis() -> Iterator[RedisServer]:
    """A redis-server of this module (the proxy needs a host:port it knows)."""
    if not redis_server_available():
        skip_or_fail("no redis-server on PATH")
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server this test may kill."""
    if not redis_server_available():
        skip_or_fail("no redis-server on PATH")
    server = RedisServer()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def proxy(shared_redis: RedisServer) -> Iterator[FaultProxy]:
    with FaultProxy(shared_redis.port) as fault_proxy:
        yield fault_proxy


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="asgi_perf")
    return caplog


# -- the scenario every fault shares -------------------------------------------------------------
async def eventually(probe: Callable[[], Awaitable[bool]]) -> None:
    """Probe until it passes (the middleware recovered by itself) or the bound runs out."""
    for _ in range(RECOVERY_DEADLINE):
        if await probe():
            return
        await asyncio.sleep(0.25)
    raise AssertionError("the middleware did not recover after Redis came back")


def outage_lines(caplog: pytest.LogCaptureFixture, logger: str) -> tuple[int, int]:
    """(WARNING-or-worse lines, 'recovered' INFO lines) of ``logger``."""
    records = [r for r in caplog.records if r.name == logger]
    warnings = [r for r in records if r.levelno >= logging.WARNING]
    recovered = [r for r in records if r.levelno == logging.INFO and "recovered" in r.message]
    return len(warnings), len(recovered)


async def check_outage(
    kind: Kind,
    mw: Any,
    app: CountingApp,
    logs: pytest.LogCaptureFixture,
    fault_on: Callable[[], object],
    fault_off: Callable[[], object],
    *,
    healthy_first: bool = True,
) -> None:
    if healthy_first:
        assert await kind.healthy(mw), f"{kind.name} did not work before the fault"
    fault_on()
    try:
        for _ in range(2):  # two rounds: still one warning, however many requests failed
            await kind.degraded(mw, app)
        assert mw.outage.down
    finally:
        fault_off()
    await eventually(lambda: kind.healthy(mw))
    warnings, recovered = outage_lines(logs, kind.logger)
    assert warnings == 1, f"{kind.name} logged {warnings} warnings for one outage"
    assert recovered == 1
    stats = mw.stats()["outage"]
    assert stats["incidents"] == 1 and not stats["down"]
    assert stats["failures"] >= 2


# -- the faults ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(KINDS))
async def test_redis_killed_and_restarted(
    name: str, own_redis: RedisServer, key_prefix: str, logs: pytest.LogCaptureFixture
) -> None:
    kind = KINDS[name]
    own_redis.start()
    app = CountingApp()
    mw = kind.build(app, own_redis.url, key_prefix)
    try:
        await check_outage(kind, mw, app, logs, own_redis.stop, own_redis.start)
    finally:
        await kind.close(mw)


@pytest.mark.parametrize("name", sorted(KINDS))
async def test_redis_killed_while_requests_are_in_flight(
    name: str, own_redis: RedisServer, key_prefix: str, logs: pytest.LogCaptureFixture
) -> None:
    """Four clients keep requesting while Redis dies and comes back: none is lost or hangs."""
    kind = KINDS[name]
    own_redis.start()
    app = CountingApp()
    mw = kind.build(app, own_redis.url, key_prefix)
    done = asyncio.Event()
    completed = 0

    async def client(n: int) -> None:
        nonlocal completed
        i = 0
        while not done.is_set():
            i += 1
            path = f"/live{n}-{i % 3}"
            if name == "ratelimit":
                await request_any(mw, path, f"10.3.{n}.{i % 200}")
            else:
                await request(mw, path)
            completed += 1
            await asyncio.sleep(0.005)

    clients = [asyncio.ensure_future(client(n)) for n in range(4)]
    try:
        while completed < 40:
            await asyncio.sleep(0.01)
        own_redis.stop()
        mark = completed
        while completed < mark + 40:  # requests keep completing without Redis
            await asyncio.sleep(0.01)
        own_redis.start()
        await eventually(lambda: kind.healthy(mw))
        done.set()
        await asyncio.wait_for(asyncio.gather(*clients), REQUEST_TIMEOUT)
    finally:
        done.set()
        for task in clients:
            task.cancel()
        await asyncio.gather(*clients, return_exceptions=True)
        await kind.close(mw)
    warnings, recovered = outage_lines(logs, kind.logger)
    assert warnings == 1, f"{kind.name} logged {warnings} warnings for one outage"
    assert recovered == 1
    assert mw.stats()["outage"]["incidents"] == 1


@pytest.mark.parametrize("name", sorted(KINDS))
async def test_redis_slow(
    name: str, proxy: FaultProxy, key_prefix: str, logs: pytest.LogCaptureFixture
) -> None:
    """Replies slower than the store timeout are an outage; a fast Redis again ends it."""
    kind = KINDS[name]
    app = CountingApp()
    mw = kind.build(app, proxy.url, key_prefix)
    try:
        await check_outage(
            kind,
            mw,
            app,
            logs,
            lambda: proxy.set_mode("delay", delay_ms=600),
            lambda: proxy.set_mode("pass"),
        )
    finally:
        await kind.close(mw)


@pytest.mark.parametrize("name", sorted(KINDS))
async def test_redis_black_hole(
    name: str, proxy: FaultProxy, key_prefix: str, logs: pytest.LogCaptureFixture
) -> None:
    """Connections accepted and never answered: bounded by the client timeout, not a hang."""
    kind = KINDS[name]
    app = CountingApp()
    mw = kind.build(app, proxy.url, key_prefix)
    try:
        await check_outage(
            kind, mw, app, logs, lambda: proxy.set_mode("drop"), lambda: proxy.set_mode("pass")
        )
    finally:
        await kind.close(mw)


@pytest.mark.parametrize("name", sorted(KINDS))
async def test_redis_refused_at_startup(
    name: str, own_redis: RedisServer, key_prefix: str, logs: pytest.LogCaptureFixture
) -> None:
    """The app starts before Redis does: degraded from the first request, then recovers."""
    kind = KINDS[name]
    app = CountingApp()
    mw = kind.build(app, own_redis.url, key_prefix)  # nothing listens on that port yet
    try:
        await check_outage(kind, mw, app, logs, lambda: None, own_redis.start, healthy_first=False)
    finally:
        await kind.close(mw)


async def test_proxy_refuse_mode_mid_run(
    proxy: FaultProxy, key_prefix: str, logs: pytest.LogCaptureFixture
) -> None:
    """The proxy's own ``refuse`` mode (listener closed, connections reset) for all three."""
    for kind in KINDS.values():
        app = CountingApp()
        mw = kind.build(app, proxy.url, key_prefix + kind.name + ":")
        try:
            await check_outage(
                kind,
                mw,
                app,
                logs,
                lambda: proxy.set_mode("refuse"),
                lambda: proxy.set_mode("pass"),
            )
        finally:
            await kind.close(mw)
        logs.clear()


@pytest.mark.parametrize("name", sorted(KINDS))
async def test_busy_redis_is_not_an_outage(
    name: str, shared_redis: RedisServer, key_prefix: str, logs: pytest.LogCaptureFixture
) -> None:
    """300 requests at once against a healthy Redis: no degradation, nothing logged.

    redis-py 8 caps an asyncio client's default pool at 100 connections and raises
    ``MaxConnectionsError`` at once past it. Were the store to keep that pool, 100+ concurrent
    store calls in one process would be an "outage": rate limiting failing open (an
    attacker's burst switching limits off), the cache bypassing, and a dedup leader whose
    release failed leaving its waiters queued until ``wait_timeout``."""
    kind = KINDS[name]
    app = CountingApp()
    # Generous store timeouts: the subject is the pool's cap, which redis-py's default pool
    # enforces at once, whatever the timeout. A 250 ms read timeout would also count the
    # event loop's own queueing of 300 requests on a CPU-starved machine as Redis failures.
    if name == "ratelimit":
        mw = RateLimitMiddleware(
            app,
            limit="100000/minute",
            storage=shared_redis.url,
            key_prefix=key_prefix,
            storage_timeout=5,
        )
    else:
        store = create_store(shared_redis.url, prefix=key_prefix + name + ":", timeout=5.0)
        mw = kind.build(app, store, key_prefix)
    try:
        responses = await asyncio.gather(
            *(request(mw, f"/busy{i % 7}", f"10.4.{i % 250}.1") for i in range(300))
        )
        warnings, _ = outage_lines(logs, kind.logger)
        assert mw.stats()["outage"]["failures"] == 0 and warnings == 0, mw.stats()["outage"]
        if name == "ratelimit":
            assert all(r.header("ratelimit-policy") for r in responses)  # none failed open
    finally:
        await kind.close(mw)


# -- Idempotency-Key: fail closed ----------------------------------------------------------------
class PaymentApp:
    """``POST /pay``: charges once per call and says which charge it was."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.calls += 1
        await receive()
        body = b"charge %d" % self.calls
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": body})


async def pay(mw: Any, key: str) -> Response:
    headers = [("Idempotency-Key", key)]
    return await asyncio.wait_for(
        call(mw, "POST", "/pay", headers=headers, body=b"amount=10"), REQUEST_TIMEOUT
    )


async def test_keyed_retry_after_a_redis_restart_is_replayed(
    key_prefix: str, logs: pytest.LogCaptureFixture
) -> None:
    """Redis restarts (its data on disk) between a payment and its retry: the retry's pooled
    connection is dead. It is retried once on a fresh connection and the retry gets the
    recorded answer; it never runs the payment a second time."""
    if not redis_server_available():
        skip_or_fail("no redis-server on PATH")
    server = RedisServer(extra=["--appendonly", "yes", "--appendfsync", "always"]).start()
    app = PaymentApp()
    mw = DedupMiddleware(app, storage=server.url, key_prefix=key_prefix)
    try:
        first = await pay(mw, "pay-1")
        server.stop()
        server.start()
        retry = await pay(mw, "pay-1")
    finally:
        await mw.store.close()
        server.cleanup()
    assert (first.status, first.body) == (201, b"charge 1")
    assert (retry.status, retry.body) == (201, b"charge 1")
    assert retry.header("idempotent-replayed") == "true"
    assert app.calls == 1 and mw.stats()["outage"]["failures"] == 0


@pytest.mark.parametrize("fault", ["delay", "drop", "refuse"])
async def test_keyed_requests_fail_closed_while_redis_cannot_answer(
    fault: Any, proxy: FaultProxy, key_prefix: str, logs: pytest.LogCaptureFixture
) -> None:
    """Slow past the store timeout, a black hole, refused: a keyed request (new key or retry)
    gets 503 + Retry-After and the app does not run; once Redis answers again the retry gets
    the recorded answer. Duplicate suppression meanwhile passes through (fails open)."""
    app = PaymentApp()
    mw = DedupMiddleware(app, storage=proxy.url, key_prefix=key_prefix)
    try:
        assert (await pay(mw, "pay-1")).body == b"charge 1"
        proxy.set_mode(fault, delay_ms=600)
        try:
            for key in ("pay-1", "pay-2", "pay-1"):
                refused = await pay(mw, key)
                assert refused.status == 503 and refused.header("retry-after") == "1"
            assert app.calls == 1
            passed = await asyncio.wait_for(call(mw, "GET", "/list"), REQUEST_TIMEOUT)
            assert passed.status == 201 and app.calls == 2
        finally:
            proxy.set_mode("pass")

        async def replayed() -> bool:
            return (await pay(mw, "pay-1")).header("idempotent-replayed") == "true"

        await eventually(replayed)
    finally:
        await mw.store.close()
    assert app.calls == 2
    assert mw.stats()["unavailable"] >= 3
    warnings, recovered = outage_lines(logs, "asgi_perf.dedup")
    assert (warnings, recovered) == (1, 1)


async def test_keyed_request_on_a_full_redis_is_refused(
    own_redis: RedisServer, key_prefix: str, logs: pytest.LogCaptureFixture
) -> None:
    """Redis at maxmemory under noeviction: a new key gets 503 (counted as full, not as an
    outage) instead of running without a record; a recorded key is still replayed."""
    own_redis.start()
    app = PaymentApp()
    mw = DedupMiddleware(app, storage=own_redis.url, key_prefix=key_prefix)
    try:
        await pay(mw, "pay-1")
        fill_redis(own_redis.url)
        refused = await pay(mw, "pay-2")
        replay = await pay(mw, "pay-1")
    finally:
        await mw.store.close()
    assert refused.status == 503 and refused.header("retry-after") == "60"
    assert replay.header("idempotent-replayed") == "true" and replay.body == b"charge 1"
    assert app.calls == 1
    stats = mw.stats()
    assert stats["full"] == 1 and stats["outage"]["failures"] == 0


@pytest.mark.parametrize(("policy", "warned"), [("allkeys-lru", 1), ("noeviction", 0)])
async def test_a_redis_that_may_evict_records_is_named_in_one_warning(
    policy: str, warned: int, key_prefix: str, logs: pytest.LogCaptureFixture
) -> None:
    if not redis_server_available():
        skip_or_fail("no redis-server on PATH")
    server = RedisServer(extra=["--maxmemory", "100mb", "--maxmemory-policy", policy]).start()
    mw = DedupMiddleware(PaymentApp(), storage=server.url, key_prefix=key_prefix)
    try:
        for key in ("pay-1", "pay-2", "pay-3"):
            assert (await pay(mw, key)).status == 201
    finally:
        await mw.store.close()
        server.cleanup()
    warnings = [r.message for r in logs.records if r.levelno >= logging.WARNING]
    assert len(warnings) == warned, warnings
    assert all(policy in w and "noeviction" in w for w in warnings)
