"""``asgi_perf.install(app)``: the whole stack in a FastAPI / Starlette app in one line, keeping
the app object; checked when called (so a bad option stops the server from starting); the
wrong order of hand-added layers is visible; ``ASGI_PERF_STORAGE_CHECK`` fails fast."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import asgi_perf
from asgi_perf import ConfigError, StoreUnavailable
from asgi_perf._core import config
from asgi_perf._stack import middleware_classes
from tests.support import call, free_port

ROOT = Path(__file__).resolve().parents[3]
EVERYTHING = {
    "ASGI_PERF_STORAGE_URL": "memory://",
    "ASGI_PERF_RATE_LIMIT_ENABLED": "true",
    "ASGI_PERF_DEDUP_ENABLED": "true",
    "ASGI_PERF_CACHE_ENABLED": "true",
    "ASGI_PERF_QUERIES_ENABLED": "true",
    "ASGI_PERF_N_PLUS_ONE_ACTION": "header",
}


def layers(app: Any) -> list[str]:
    """Class names of the built middleware chain, outermost first."""
    names, node = [], app.middleware_stack
    while node is not None:
        names.append(type(node).__name__)
        node = getattr(node, "app", None)
    return names


async def test_fastapi_one_line_keeps_the_app_and_builds_the_recommended_order() -> None:
    app = FastAPI()
    assert asgi_perf.install(app, environ=EVERYTHING) is app

    @app.get("/late")  # a route added after install: the app object is still the app
    async def late() -> dict[str, str]:
        return {"late": "yes"}

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        response = await client.get("/late")
    assert response.json() == {"late": "yes"}
    timing = response.headers["server-timing"]
    assert timing.startswith("total;dur=") and "db;" in timing  # inner entries reached Timing
    assert response.headers["ratelimit-policy"] and response.headers["x-query-count"] == "0"

    ours = [c.__name__ for c in middleware_classes()]
    built = [name for name in layers(app) if name in ours]
    assert built == ours  # Timing → RateLimit → Dedup → Cache → Compression → Query
    names = layers(app)
    assert names.index("TimingMiddleware") > names.index("ServerErrorMiddleware")
    assert names.index("QueryMiddleware") < names.index("ExceptionMiddleware")


@pytest.mark.parametrize("store", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def test_the_rate_limit_right_inside_timing_hands_it_its_fields(
    store: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In from_env's stack (past the Prefetcher on Redis) an admitted request's limit
    fields leave on Timing's one new header list, in the order the two layers add them,
    and the rate limit wraps no send of its own; built by hand, each adds its own."""
    from asgi_perf.ratelimit import RateLimitMiddleware
    from asgi_perf.ratelimit import _middleware as ratelimit_module
    from asgi_perf.timing import TimingMiddleware

    env = dict(EVERYTHING)
    if store == "redis":
        env["ASGI_PERF_STORAGE_URL"] = request.getfixturevalue("redis_url")
        env["ASGI_PERF_KEY_PREFIX"] = request.getfixturevalue("key_prefix")
    wrapped: list[int] = []
    with_fields = ratelimit_module.with_fields

    def counted(send: Any, extra: Any) -> Any:
        wrapped.append(1)
        return with_fields(send, extra)

    monkeypatch.setattr(ratelimit_module, "with_fields", counted)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"a", b"1")]})
        await send({"type": "http.response.body", "body": b"ok"})

    def names(response: Any) -> list[str]:
        return [k.decode() for k, _ in response.headers]

    first = await call(asgi_perf.from_env(app, environ=env), path="/one")
    assert first.status == 200 and not wrapped
    second = await call(TimingMiddleware(RateLimitMiddleware(app, limit="5/minute")), path="/one")
    assert wrapped == [1]
    for response in (first, second):
        sent = names(response)
        assert sent.index("ratelimit-policy") < sent.index("server-timing")
        at = sent.index("ratelimit-policy")
        assert sent[at : at + 5] == [
            "ratelimit-policy",
            "ratelimit",
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
        ]


async def test_queries_innermost_under_timing_leaves_its_entry_for_timing_to_make() -> None:
    """In from_env's stack Queries wraps no send for its ``db`` entry: Timing makes it when it
    renders, from the queries run until then, first among the entries as before. Stacked by
    hand (Timing right outside), Queries adds it on its way out, as ever."""
    from asgi_perf.queries import QueryMiddleware, record_query
    from asgi_perf.timing import TimingMiddleware

    sends: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        sends.append(getattr(send, "__qualname__", ""))
        record_query("SELECT 1", 0.002)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    env = {"ASGI_PERF_QUERIES_ENABLED": "true", "ASGI_PERF_CACHE_ENABLED": "true"}
    one_pass = await call(asgi_perf.from_env(app, environ=env), path="/q")
    by_hand = await call(TimingMiddleware(QueryMiddleware(app)), path="/q")
    assert "QueryMiddleware" not in sends[0] and "QueryMiddleware" in sends[1]
    for response in (one_pass, by_hand):
        entries = response.header("server-timing").split(", ")
        assert entries[0].startswith("total;dur=")
        assert entries[1].startswith("db;dur=") and entries[1].endswith('desc="1 query"')


async def test_starlette_and_the_innermost_layer_calls_the_app_directly() -> None:
    app = Starlette(routes=[Route("/", lambda r: PlainTextResponse("hi"))])
    asgi_perf.install(app, environ={"ASGI_PERF_QUERIES_ENABLED": "true"})
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        assert (await client.get("/")).text == "hi"
    stack = app.middleware_stack
    query = next(n for n in _chain(stack) if type(n).__name__ == "QueryMiddleware")
    assert type(query.app).__name__ == "ExceptionMiddleware"  # no extra hop per request


def _chain(node: Any) -> list[Any]:
    out = []
    while node is not None:
        out.append(node)
        node = getattr(node, "app", None)
    return out


def test_bad_option_raises_at_install_not_at_the_first_request() -> None:
    with pytest.raises(ConfigError, match="ASGI_PERF_GZIP_LEVEL='11'"):
        asgi_perf.install(FastAPI(), environ={"ASGI_PERF_GZIP_LEVEL": "11"})


def test_install_needs_add_middleware() -> None:
    async def bare(scope: Any, receive: Any, send: Any) -> None:
        return None

    with pytest.raises(TypeError, match="from_env"):
        asgi_perf.install(bare)  # type: ignore[type-var]


def test_nothing_enabled_adds_nothing() -> None:
    app = FastAPI()
    env = {"ASGI_PERF_TIMING_ENABLED": "false", "ASGI_PERF_COMPRESSION_ENABLED": "false"}
    asgi_perf.install(app, environ=env)
    assert app.user_middleware == []


def _serve_module(tmp_path: Path, source: str, *args: str, env: dict[str, str]) -> Any:
    (tmp_path / "userapp.py").write_text(textwrap.dedent(source))
    return subprocess.run(
        [sys.executable, "-m", "uvicorn", "userapp:app", "--port", str(free_port()), *args],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.slow
def test_server_refuses_to_start_on_a_bad_variable(tmp_path: Path) -> None:
    source = """
        import asgi_perf
        from fastapi import FastAPI
        app = FastAPI()
        asgi_perf.install(app)
    """
    proc = _serve_module(tmp_path, source, env={"ASGI_PERF_COMPRESSION_MIN_SIZE": "lots"})
    assert proc.returncode != 0
    assert "CompressionMiddleware: ASGI_PERF_COMPRESSION_MIN_SIZE='lots'" in proc.stderr


@pytest.mark.slow
def test_lifespan_on_makes_a_lazily_built_bad_option_fatal(tmp_path: Path) -> None:
    """What the README says for per-middleware add_middleware lines: Starlette builds them at
    the lifespan start; with ``--lifespan on`` uvicorn then exits instead of serving 500s."""
    source = """
        import asgi_perf
        from fastapi import FastAPI
        app = FastAPI()
        app.add_middleware(asgi_perf.CompressionMiddleware, minimum_size="lots")
    """
    proc = _serve_module(tmp_path, source, "--lifespan", "on", env={})
    assert proc.returncode != 0
    assert "CompressionMiddleware: minimum_size='lots'" in proc.stderr
    assert "Application startup failed" in proc.stderr


def test_timing_added_inside_another_layer_is_reported(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config, "_ORDER_REPORTED", set())
    wrong = Starlette()
    wrong.add_middleware(asgi_perf.TimingMiddleware)  # reading order: first added ...
    wrong.add_middleware(asgi_perf.CompressionMiddleware)  # ... but last added is outermost
    right = Starlette()
    right.add_middleware(asgi_perf.CompressionMiddleware)
    right.add_middleware(asgi_perf.TimingMiddleware)
    with caplog.at_level(logging.WARNING, logger="asgi_perf.config"):
        right.build_middleware_stack()
        assert caplog.records == []
        wrong.build_middleware_stack()
    [record] = caplog.records
    assert "TimingMiddleware is inside CompressionMiddleware" in record.getMessage()
    assert "added last is the outermost" in record.getMessage()


async def _bare(scope: Any, receive: Any, send: Any) -> None:
    return None


def test_storage_check_fail_refuses_an_unreachable_store() -> None:
    env = {
        "ASGI_PERF_STORAGE_URL": f"redis://127.0.0.1:{free_port()}/0",
        "ASGI_PERF_RATE_LIMIT_ENABLED": "true",
    }
    assert asgi_perf.from_env(_bare, environ=env) is not None  # default: fail open, as before
    with pytest.raises(StoreUnavailable, match=r"ASGI_PERF_STORAGE_URL='redis://127\.0\.0\.1"):
        asgi_perf.from_env(_bare, environ={**env, "ASGI_PERF_STORAGE_CHECK": "fail"})


def test_storage_check_warn_logs(caplog: pytest.LogCaptureFixture) -> None:
    env = {
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "ASGI_PERF_CACHE_ENABLED": "true",
        "ASGI_PERF_STORAGE_CHECK": "warn",
    }
    with caplog.at_level(logging.WARNING, logger="asgi_perf.config"):
        asgi_perf.from_env(_bare, environ=env)
    assert "REDIS_URL='redis://127.0.0.1" in caplog.text and "fail open" in caplog.text


def test_storage_check_passes_a_reachable_store_and_checks_its_value(redis_url: str) -> None:
    env = {
        "ASGI_PERF_STORAGE_URL": redis_url,
        "ASGI_PERF_DEDUP_ENABLED": "true",
        "ASGI_PERF_STORAGE_CHECK": "fail",
    }
    assert asgi_perf.from_env(_bare, environ=env) is not None
    with pytest.raises(ConfigError, match="ASGI_PERF_STORAGE_CHECK='always'"):
        asgi_perf.from_env(_bare, environ={"ASGI_PERF_STORAGE_CHECK": "always"})
