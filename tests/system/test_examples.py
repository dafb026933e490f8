"""Each example app starts under uvicorn (as the README says) and answers its documented routes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import ROOT, free_port, server_process, uvicorn_command

pytestmark = pytest.mark.slow


@pytest.fixture(params=["fastapi_app", "starlette_app", "litestar_app"])
def example(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    port = free_port()
    env = dict(os.environ, TMPDIR=str(tmp_path))  # where a temporary file would go
    app = f"examples.{request.param}:app"
    command = uvicorn_command(app, port, "--env-file", "examples/.env.example")
    # the event stream stays open: that is not a slow request
    with server_process(command, port, env, forbid=(b"slow request",)) as url:
        yield request.param, url
    assert list(tmp_path.iterdir()) == []  # the example database leaves no file behind


def remaining(response: httpx.Response) -> int:
    """``r`` of the ``RateLimit`` field: requests left in the window."""
    return int(response.headers["ratelimit"].split(";r=")[1].split(";")[0])


def test_example_routes(example: tuple[str, str]) -> None:
    name, url = example
    with httpx.Client(base_url=url, timeout=10) as client:
        r = client.get("/")
        assert r.status_code == 200 and r.json() == {"hello": "world"}
        assert "total;dur=" in r.headers.get("server-timing", "")
        assert r.headers.get("ratelimit-policy")

        r = client.get("/items", headers={"accept-encoding": "gzip"})
        assert r.status_code == 200 and len(r.json()) == 200
        assert r.headers.get("content-encoding") == "gzip"
        again = client.get("/items", headers={"accept-encoding": "gzip"})
        # Answered without the app: by the cache, or (inside the 5 s dedup window, since
        # Dedup sits outside Cache) by the dedup record of the first response.
        assert again.headers.get("x-cache") == "HIT" or again.headers.get("x-dedup") in (
            "hit",
            "coalesced",
        )
        assert again.json() == r.json()

        first_left = remaining(client.get("/"))
        r = client.get("/users/7")
        assert r.status_code == 200 and r.json()["user_id"] == 7
        assert remaining(r) < first_left  # one budget for the whole app, not one per route

        lazy = client.get("/authors")
        eager = client.get("/authors/eager")
        assert lazy.json() == eager.json() and len(lazy.json()) == 8
        # as the README says: 1 query for the authors + 8 lazy loads, the 8 an N+1
        assert (lazy.headers["x-query-count"], lazy.headers["x-n-plus-one"]) == ("9", "8")
        assert eager.headers.get("x-n-plus-one", "0") == "0"

        if name != "litestar_app":
            with client.stream("GET", "/events") as stream:
                lines = [line for line in stream.iter_lines() if line]
                assert lines[0] == "data: event 0" and len(lines) == 5

        # the report: mounted protected, and let through the stack untouched
        assert client.get("/__perf__/").status_code == 401
        auth = {"authorization": f"Bearer {env_value('ASGI_PERF_REPORT_TOKEN')}"}
        for _ in range(3):
            r = client.get("/__perf__/", headers=auth)
            assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
            for field in ("ratelimit-policy", "server-timing", "x-cache", "content-encoding"):
                assert field not in r.headers, field
        report = r.json()
        assert {"timing", "cache", "ratelimit", "dedup", "compression", "queries"} <= set(
            report["stats"]
        )
        routes = {route["route"] for t in report["stats"]["timing"] for route in t["routes"]}
        assert {"/users/{user_id}", "/users/{user_id:int}"} & routes
        assert not any("perf" in route for route in routes)  # not in its own statistics
        metrics = client.get("/__perf__/metrics", headers=auth)
        assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert "asgi_perf_http_requests_total{" in metrics.text


def env_value(name: str) -> str:
    with open(os.path.join(ROOT, "examples", ".env.example")) as env:
        for line in env:
            key, _, value = line.strip().partition("=")
            if key == name:
                return value
    raise AssertionError(f"{name} is not in examples/.env.example")
