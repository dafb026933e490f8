"""Cache warming: the entry parser by tables, warming through the whole stack at lifespan
startup (in process and under a real uvicorn), failures that never stop startup, and the Redis
claim: with two uvicorn workers the app runs once per warmed path."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import threading
from typing import Any

import httpx
import pytest
import redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import asgi_perf
from asgi_perf import CacheWarmer, ConfigError
from asgi_perf._warm import WarmRequest, parse_warm
from tests.support import UvicornThread, call, free_port, wait_for_port

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))

# -- the parser ------------------------------------------------------------------------------------
VALID = [
    ("/", [("http", "localhost", ("localhost", 80), "/", b"/", b"", ())]),
    (
        "https://Shop.Example:8443/a%20b?page=2 [Accept-Encoding: br] [X-Tenant: 7]",
        [
            (
                "https",
                "shop.example:8443",
                ("shop.example", 8443),
                "/a b",
                b"/a%20b",
                b"page=2",
                ((b"accept-encoding", b"br"), (b"x-tenant", b"7")),
            )
        ],
    ),
    (
        "/a [Accept: text/html;q=0.9, */*;q=0.1]; /b\n/c",
        [
            (
                "http",
                "localhost",
                ("localhost", 80),
                "/a",
                b"/a",
                b"",
                ((b"accept", b"text/html;q=0.9, */*;q=0.1"),),
            ),
            ("http", "localhost", ("localhost", 80), "/b", b"/b", b"", ()),
            ("http", "localhost", ("localhost", 80), "/c", b"/c", b"", ()),
        ],
    ),
    ("https://x.test", [("https", "x.test", ("x.test", 443), "/", b"/", b"", ())]),
    (" ; ", []),
    (
        ["/one", ("/two", {"Accept-Language": "de"})],
        [
            ("http", "localhost", ("localhost", 80), "/one", b"/one", b"", ()),
            (
                "http",
                "localhost",
                ("localhost", 80),
                "/two",
                b"/two",
                b"",
                ((b"accept-language", b"de"),),
            ),
        ],
    ),
]


@pytest.mark.parametrize(("value", "expected"), VALID)
def test_valid_entries(value: Any, expected: list[tuple[Any, ...]]) -> None:
    got = [
        (r.scheme, r.host, r.server, r.path, r.raw_path, r.query, r.headers)
        for r in parse_warm(value, "ASGI_PERF_CACHE_WARM")
    ]
    assert got == expected


INVALID = [
    ("items", "a path starting with '/' or an http(s):// URL"),
    ("ftp://x/y", "a path starting with '/' or an http(s):// URL"),
    ("/a /b", "one path or URL per entry"),
    ("/a [Accept-Encoding br]", "headers as [Name: value]"),
    ("/a [Bad Name: 1]", "headers as [Name: value]"),
    ("/a [Accept: x", "a ']' closing every '['"),
    ("/a [Accept: x] junk", "only [Name: value] headers"),
    ("/a [Host: other]", "the host in an absolute URL"),
    ("http://user:pw@x/", "without user info"),
    ("/a#frag", "without user info or fragment"),
    ("http://x:99999/", "a valid port"),
    ("http:///nohost", "an absolute URL with a host"),
    ("/caf\u00e9", "in ASCII"),
]


@pytest.mark.parametrize(("value", "accepted"), INVALID)
def test_invalid_entries_name_the_variable(value: str, accepted: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_warm(value, "ASGI_PERF_CACHE_WARM")
    assert info.value.name == "ASGI_PERF_CACHE_WARM" and accepted in str(info.value)


@pytest.mark.parametrize("value", [42, b"/a", {"/a": "x"}, [("/a", "not a mapping")]])
def test_invalid_types(value: Any) -> None:
    with pytest.raises(ConfigError, match="warm"):
        parse_warm(value, "warm")


def test_bad_variables_are_named() -> None:
    env = {"ASGI_PERF_CACHE_WARM": "/a", "ASGI_PERF_CACHE_WARM_CONCURRENCY": "0"}
    with pytest.raises(ConfigError, match="ASGI_PERF_CACHE_WARM_CONCURRENCY"):
        asgi_perf.from_env(Starlette(), environ=env)
    with pytest.raises(ConfigError, match="ASGI_PERF_CACHE_WARM="):
        asgi_perf.from_env(Starlette(), environ={"ASGI_PERF_CACHE_WARM": "no-slash"})


# -- warming through the stack --------------------------------------------------------------------
def counting_app() -> tuple[Starlette, dict[str, int]]:
    runs: dict[str, int] = {}

    async def items(request: Request) -> PlainTextResponse:
        runs[request.url.path] = runs.get(request.url.path, 0) + 1
        lang = request.headers.get("accept-language", "-")
        headers = {"cache-control": "public, max-age=60", "vary": "accept-language"}
        return PlainTextResponse(f"items in {lang}", headers=headers)

    async def broken(request: Request) -> PlainTextResponse:
        raise RuntimeError("the database is not there yet")

    async def slow(request: Request) -> PlainTextResponse:
        await asyncio.sleep(5)
        return PlainTextResponse("late")

    app = Starlette(routes=[Route("/items", items), Route("/broken", broken), Route("/slow", slow)])
    return app, runs


async def run_startup(app: Any) -> list[dict[str, Any]]:
    """Drive a lifespan startup and shutdown; the messages the app sent."""
    incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await incoming.put({"type": "lifespan.startup"})
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "lifespan.startup.complete":
            await incoming.put({"type": "lifespan.shutdown"})

    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    await app(scope, incoming.get, send)
    return sent


async def test_startup_warms_through_the_stack_and_failures_are_not_fatal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, runs = counting_app()
    stack = asgi_perf.from_env(
        app,
        environ={
            "ASGI_PERF_CACHE_ENABLED": "true",
            "ASGI_PERF_CACHE_WARM": "http://testserver/items; /broken; /slow; "
            "http://testserver/items [Accept-Language: de]",
            "ASGI_PERF_CACHE_WARM_TIMEOUT": "200ms",
        },
    )
    assert isinstance(stack, CacheWarmer)
    with caplog.at_level(logging.INFO, logger="asgi_perf.warm"):
        sent = await run_startup(stack)
    assert [m["type"] for m in sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
    assert runs == {"/items": 2}  # one entry per Accept-Language, as the cache keys them
    assert stack.stats() == {
        "requests": 4,
        "state": "done",
        "warmed": 2,
        "failed": 2,
        "seconds": pytest.approx(stack.outcome["seconds"]),
    }
    failures = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("/broken" in m and "database is not there" in m for m in failures), failures
    assert any("/slow" in m and "TimeoutError" in m for m in failures), failures

    first = await call(stack, path="/items", headers=[("host", "testserver")])
    assert (first.header("x-cache"), first.body) == ("HIT", b"items in -")
    german = await call(
        stack, path="/items", headers=[("host", "testserver"), ("accept-language", "de")]
    )
    assert (german.header("x-cache"), german.body) == ("HIT", b"items in de")
    assert runs == {"/items": 2}


def test_first_request_after_a_real_startup_is_a_hit() -> None:
    app, runs = counting_app()
    port = free_port()
    stack = asgi_perf.from_env(
        app,
        environ={
            "ASGI_PERF_CACHE_ENABLED": "true",
            "ASGI_PERF_CACHE_WARM": f"http://127.0.0.1:{port}/items",
        },
    )
    with UvicornThread(stack, port=port, lifespan="on"):
        assert runs == {"/items": 1}  # warmed before uvicorn said it started
        response = httpx.get(f"http://127.0.0.1:{port}/items", timeout=10)
    assert response.status_code == 200 and response.text == "items in -"
    assert response.headers["x-cache"] == "HIT"
    assert runs == {"/items": 1}


async def test_nothing_to_warm_passes_the_lifespan_through() -> None:
    app, runs = counting_app()
    warmer = CacheWarmer(app, warm="")
    assert next(m["type"] for m in await run_startup(warmer)) == "lifespan.startup.complete"
    assert runs == {} and warmer.stats()["state"] == "pending"
    response = await call(warmer, path="/items")
    assert response.status == 200  # http passes through untouched


# -- one worker warms ------------------------------------------------------------------------------
@pytest.mark.redis
async def test_a_claim_in_redis_lets_one_warmer_warm(redis_url: str, key_prefix: str) -> None:
    app, runs = counting_app()
    options = {"storage": redis_url, "key_prefix": key_prefix}
    first = CacheWarmer(app, "http://testserver/items", **options)
    second = CacheWarmer(app, "http://testserver/items", **options)
    other_list = CacheWarmer(app, "http://testserver/items; /broken", **options)
    assert (await first.warm())["state"] == "done"
    assert (await second.warm())["state"] == "skipped"
    assert (await other_list.warm())["state"] == "done"  # another list is another claim
    assert runs == {"/items": 2}


async def test_an_unreachable_store_means_this_worker_warms(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, runs = counting_app()
    warmer = CacheWarmer(app, "/items", storage=f"redis://127.0.0.1:{free_port()}/0")
    assert (await warmer.warm())["state"] == "done"
    assert runs == {"/items": 1}
    assert any("unreachable" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
@pytest.mark.redis
def test_two_uvicorn_workers_on_redis_run_the_app_once_per_warmed_path(
    redis_url: str, key_prefix: str
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "ASGI_PERF_STORAGE_URL": redis_url,
        "ASGI_PERF_KEY_PREFIX": key_prefix,
        "ASGI_PERF_CACHE_ENABLED": "true",
        "ASGI_PERF_CACHE_WARM": f"http://127.0.0.1:{port}/cached; http://127.0.0.1:{port}/uncached",
        "WARM_TEST_PREFIX": key_prefix,
    }
    command = [sys.executable, "-m", "uvicorn", "tests.apps.warmed:app", "--workers", "2"]
    command += ["--port", str(port), "--log-level", "info", "--lifespan", "on"]
    server = subprocess.Popen(
        command, cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    started = threading.Semaphore(0)
    log: list[str] = []

    def read() -> None:
        assert server.stderr is not None
        for line in server.stderr:
            log.append(line)
            if "Application startup complete" in line:
                started.release()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    client = redis.Redis.from_url(redis_url)
    try:
        for _ in range(2):
            assert started.acquire(timeout=60), "".join(log)
        wait_for_port(port)
        runs = {p: int(client.get(f"{key_prefix}runs:{p}") or 0) for p in ("/cached", "/uncached")}
        assert runs == {"/cached": 1, "/uncached": 1}, "".join(log)
        response = httpx.get(f"http://127.0.0.1:{port}/cached", timeout=10)
        assert response.headers["x-cache"] == "HIT" and response.text == "body of /cached"
        assert int(client.get(f"{key_prefix}runs:/cached") or 0) == 1
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:  # pragma: no cover - a hung server
            server.kill()
            server.wait()
        reader.join(10)
        assert server.stderr is not None
        server.stderr.close()
        for key in client.scan_iter(match=f"*{key_prefix}*", count=1000):
            client.delete(key)
        client.close()


def test_warm_request_is_printable() -> None:
    (request,) = parse_warm("https://x.test/a?b=1")
    assert isinstance(request, WarmRequest) and str(request) == "https://x.test/a?b=1"
