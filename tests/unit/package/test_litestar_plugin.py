"""The Litestar plugin builds one stack per application (Litestar builds middleware per route
handler): one rate-limit budget, one cache, one timing series set across every route."""

from __future__ import annotations

import httpx
import pytest
from litestar import Litestar, get
from litestar.params import FromPath

from asgi_perf import ConfigError
from asgi_perf._core import stats
from asgi_perf.contrib.litestar import AsgiPerfPlugin

ENV = {
    "ASGI_PERF_STORAGE_URL": "memory://",
    "ASGI_PERF_RATE_LIMIT_ENABLED": "true",
    "ASGI_PERF_RATE_LIMIT": "5/minute",
    "ASGI_PERF_CACHE_ENABLED": "true",
}


@get("/a")
async def route_a() -> str:
    return "a"


@get("/b")
async def route_b() -> str:
    return "b"


@get("/users/{user_id:int}")
async def route_user(user_id: FromPath[int]) -> dict[str, int]:
    return {"user_id": user_id}


@get("/only/here/{item_id:int}")
async def route_only(item_id: FromPath[int]) -> dict[str, int]:
    return {"item_id": item_id}


def make_app(env: dict[str, str]) -> Litestar:
    routes = [route_a, route_b, route_user, route_only]
    return Litestar(routes, plugins=[AsgiPerfPlugin(environ=env)])


async def test_one_rate_limit_budget_across_routes() -> None:
    app = make_app(ENV)
    paths = ["/a", "/b", "/users/5", "/a", "/b", "/users/6", "/a", "/b"]
    statuses = []
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        for path in paths:
            response = await client.get(path)
            statuses.append(response.status_code)
    assert statuses == [200] * 5 + [429] * 3
    assert response.headers["ratelimit"].startswith('"default";r=0')


async def test_one_stack_sees_every_route_template() -> None:
    """The statistics of all routes are in one TimingMiddleware (one report, not one per route).
    Only this test requests ``/only/here/…``: other tests' stacks may still be alive."""
    app = make_app({"ASGI_PERF_STORAGE_URL": "memory://"})
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        for path in ["/a", "/b", "/users/1", "/users/2", "/only/here/1"]:
            response = await client.get(path)
            assert response.status_code == 200
            assert response.headers["server-timing"].startswith("total;dur=")
    mine = [
        {route["route"]: route["count"] for route in timing["routes"]}
        for timing in stats.snapshot()["timing"]
        if any(route["route"] == "/only/here/{item_id}" for route in timing["routes"])
    ]
    assert mine == [{"/a": 1, "/b": 1, "/users/{user_id}": 2, "/only/here/{item_id}": 1}]


def test_bad_variable_raises_when_the_app_is_built() -> None:
    with pytest.raises(ConfigError, match="ASGI_PERF_RATE_LIMIT='often'"):
        make_app({**ENV, "ASGI_PERF_RATE_LIMIT": "often"})
