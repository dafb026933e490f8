"""The stack's store calls in two round trips (``asgi_perf._prefetcher``), on a real Redis.

``from_env`` with rate limiting, dedup and the cache on Redis sends the rate-limit check,
dedup's claim and the cache's lookup-and-claim of a GET in one pipeline (each layer then finds
its reply), and holds their last writes back until the response leaves them, to send them in
one more. What must hold: the round trips per request, waiters and later requests find the
records, a claim no layer took (a refused request) is released at once, the stack still fails
open when Redis is down, and a store layer used alone makes its own calls as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis

from asgi_perf import from_env
from asgi_perf._prefetcher import Prefetcher
from benchmarks.driver import count_redis_round_trips
from tests.support import call, free_port

pytestmark = pytest.mark.redis
Build = Callable[[Any, dict[str, str]], Any]  # from_env(app, environ)


class App:
    def __init__(self, cache_control: str = "no-store", delay: float = 0.0) -> None:
        self.calls = 0
        self.cache_control = cache_control
        self.delay = delay

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        headers = [(b"cache-control", self.cache_control.encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"body of " + scope["path"].encode()})


def environ(storage: str, key_prefix: str, limit: str = "1000000/hour") -> dict[str, str]:
    return {
        "ASGI_PERF_STORAGE_URL": storage,
        "ASGI_PERF_KEY_PREFIX": key_prefix,
        "ASGI_PERF_RATE_LIMIT_ENABLED": "true",
        "ASGI_PERF_RATE_LIMIT": limit,
        "ASGI_PERF_DEDUP_ENABLED": "true",
        "ASGI_PERF_CACHE_ENABLED": "true",
        # no fleet publisher: its round trips, in a task of their own, would land in the
        # counted ones now and then (the name this used to give, ASGI_PERF_FLEET, was read
        # by nothing; strict makes a name nothing reads an error)
        "ASGI_PERF_REPORT_PUBLISH_INTERVAL": "off",
        "ASGI_PERF_STRICT": "true",
    }


@pytest.fixture
async def stack_of() -> AsyncIterator[Build]:
    """``from_env`` for a test, whose stacks have their Redis connections closed at its end,
    not left to the garbage collector (whose warnings are errors here)."""
    built: list[Any] = []

    def build(app: Any, env: dict[str, str]) -> Any:
        built.append(from_env(app, env))
        return built[-1]

    yield build
    for stack in built:
        for layer in layers(stack):
            for part in ("store", "limiter"):
                if hasattr(layer, part):
                    await getattr(layer, part).close()


def layers(stack: Any) -> Iterator[Any]:
    while stack is not None:
        yield stack
        stack = getattr(stack, "app", None)


async def trips(stack: Any, path: str) -> tuple[int, str | None]:
    with count_redis_round_trips() as counter:
        response = await call(stack, "GET", path)
    assert response.status in (200, 429)
    return counter.count, response.header("x-cache")


async def test_a_stack_on_redis_sends_its_first_calls_together(
    redis_url: str, key_prefix: str, stack_of: Build
) -> None:
    no_store = stack_of(App(), environ(redis_url, key_prefix + "a:"))
    cacheable = stack_of(App("max-age=60"), environ(redis_url, key_prefix + "b:"))
    assert any(isinstance(layer, Prefetcher) for layer in layers(no_store))
    await call(no_store, "GET", "/warm")  # connections and scripts, once
    await call(cacheable, "GET", "/warm")
    # one trip for the three first calls, one for the last writes of dedup and the cache
    # (their claims released: the hit-for-miss markers, or the entry and dedup's record)
    assert await trips(no_store, "/items/1") == (2, "MISS")
    assert await trips(cacheable, "/items/1") == (2, "MISS")
    # a repeat within dedup's window: its record answers, in the same single trip
    assert (await trips(cacheable, "/items/1"))[0] == 1
    await asyncio.sleep(0)


async def test_held_back_writes_reach_redis_before_the_client_has_the_response(
    redis_url: str, key_prefix: str, stack_of: Build
) -> None:
    """The cache's entry is in Redis when the client gets the last byte: a second stack (as
    another worker) answers the next request from it, and no claim stays behind."""
    env = environ(redis_url, key_prefix)
    app = App("max-age=60")
    first, second = stack_of(app, env), stack_of(app, env)
    seen: list[list[bytes]] = []

    async def watch(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body"):
            client = redis.Redis.from_url(redis_url)
            try:
                seen.append(list(client.scan_iter(match=key_prefix + "*")))
            finally:
                client.close()

    scope = {"type": "http", "method": "GET", "path": "/p", "raw_path": b"/p",
             "query_string": b"", "headers": [], "http_version": "1.1", "scheme": "http",
             "client": ("10.0.0.1", 1234), "server": ("h", 80), "root_path": ""}  # fmt: skip

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    await first(scope, receive, watch)
    stored = seen[0]
    assert any(b"cache:e:" in k for k in stored) and any(b"dedup:{" in k for k in stored)
    assert not [k for k in stored if b"}c" in k or b":c:" in k]  # claims released
    assert x_cache(await call(second, "GET", "/p")) == "HIT"
    assert app.calls == 1


def x_cache(response: Any) -> str | None:
    return response.header("x-cache")  # type: ignore[no-any-return]


async def test_a_claim_no_layer_took_is_released(
    redis_url: str, key_prefix: str, stack_of: Build
) -> None:
    """A refused request never reaches dedup or the cache: the claims its prefetch won for
    them must not stay behind (an identical request would wait for them to expire)."""
    app = App("max-age=60")
    stack = stack_of(app, environ(redis_url, key_prefix, limit="1/minute"))
    assert (await call(stack, "GET", "/first")).status == 200
    assert (await call(stack, "GET", "/second")).status == 429
    client = redis.Redis.from_url(redis_url)
    try:
        left = [k for k in client.scan_iter(match=key_prefix + "*") if b"}c" in k or b":c:" in k]
    finally:
        client.close()
    assert left == []
    assert app.calls == 1


async def test_the_stack_fails_open_when_redis_is_down(key_prefix: str, stack_of: Build) -> None:
    app = App("max-age=60")
    stack = stack_of(app, environ(f"redis://127.0.0.1:{free_port()}/0", key_prefix))
    response = await call(stack, "GET", "/anything")
    assert response.status == 200 and response.body == b"body of /anything"
    assert app.calls == 1


async def test_concurrent_identical_requests_run_the_app_once(
    redis_url: str, key_prefix: str, stack_of: Build
) -> None:
    app = App("max-age=60", delay=0.05)
    stack = stack_of(app, environ(redis_url, key_prefix))
    responses = await asyncio.gather(*(call(stack, "GET", "/hot") for _ in range(30)))
    assert {r.body for r in responses} == {b"body of /hot"}
    assert app.calls == 1


async def test_a_layer_alone_makes_its_own_calls(
    redis_url: str, key_prefix: str, stack_of: Build
) -> None:
    env = environ(redis_url, key_prefix)
    del env["ASGI_PERF_DEDUP_ENABLED"], env["ASGI_PERF_RATE_LIMIT_ENABLED"]
    stack = stack_of(App("max-age=60"), env)
    assert not any(isinstance(layer, Prefetcher) for layer in layers(stack))
    await call(stack, "GET", "/warm")
    assert await trips(stack, "/one") == (2, "MISS")  # lookup-and-claim, then the entry
    assert await trips(stack, "/one") == (1, "HIT")
