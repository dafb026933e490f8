"""Route templates: real Starlette, FastAPI and Litestar routing collapse ``/users/1`` and
``/users/2`` into one series; unmatched requests share ``__unmatched__``; bare apps get the
path with ids collapsed."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from litestar.params import FromPath

from asgi_perf._core.routes import (
    _HEX,
    _UUID,
    CACHE_SIZE,
    UNMATCHED,
    _cache,
    collapse_path,
    route_template,
)
from asgi_perf.timing import TimingMiddleware
from tests.support import call, make_scope


def series(mw: TimingMiddleware) -> dict[tuple[str, str], dict[str, int]]:
    return {(r["method"], r["route"]): r["statuses"] for r in mw.stats()["routes"]}


@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/", "/"),
        ("/users/1", "/users/{id}"),
        ("/users/42/orders/7", "/users/{id}/orders/{id}"),
        ("/items/123e4567-e89b-12d3-a456-426614174000", "/items/{uuid}"),
        ("/items/123e4567e89b12d3a456426614174000", "/items/{uuid}"),
        ("/blobs/9f86d081884c7d659a2feaa0c55ad015", "/blobs/{uuid}"),
        ("/commits/3f786850e387550fdab836ed7e6dc881de23001b", "/commits/{hex}"),
        ("/about/team", "/about/team"),
        ("/v2/docs", "/v2/docs"),
        ("/deadbeefdeadbeef", "/deadbeefdeadbeef"),  # all letters: a word, not an id
        ("/users/1/", "/users/{id}/"),
        ("/1/2", "/{id}/{id}"),  # neighbouring segments, each whole
        ("//7//", "//{id}//"),
        ("items/3", "items/{id}"),  # no leading slash: the first segment counts too
        ("/v1.2/x9", "/v1.2/x9"),  # digits inside a segment are not an id
        ("/12345678901234567890123456789012", "/{id}"),  # all digits: an id, even 32 long
        ("/9f86d081884c7d659a2feaa0c55ad0151", "/{hex}"),  # 33 hex: not a UUID
    ],
)
def test_collapse_path(path: str, template: str) -> None:
    assert collapse_path(path) == template


# The segment rules read one after the other, each over the whole path: the reference the
# single scan of collapse_path must agree with.
_SEGMENT = r"(?<![^/]){}(?![^/])"
_RULES = (
    (re.compile(_SEGMENT.format(r"\d+")), "{id}"),
    (re.compile(_SEGMENT.format(_UUID)), "{uuid}"),
    (re.compile(_SEGMENT.format(_HEX)), "{hex}"),
)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text("0123456789", min_size=1, max_size=40),
            st.text("0123456789abcdefABCDEF-", min_size=1, max_size=40),
            st.text("abcdefxyz0123456789.-_", max_size=12),
            st.uuids().map(str),
            st.uuids().map(lambda u: u.hex),
        ),
        max_size=6,
    ).map(lambda segments: "/" + "/".join(segments))
)
def test_collapse_path_applies_the_segment_rules_in_order(path: str) -> None:
    expected = path
    for pattern, placeholder in _RULES:
        expected = pattern.sub(placeholder, expected)
    _cache.clear()
    assert collapse_path(path) == expected[:200]


def test_collapse_is_bounded() -> None:
    assert len(collapse_path("/a" * 1000)) == 200


def test_the_memo_of_collapsed_paths_is_bounded() -> None:
    """Never more than ``CACHE_SIZE`` paths remembered, however many distinct paths come."""
    for n in range(3 * CACHE_SIZE + 7):
        assert collapse_path(f"/p{n}/7") == f"/p{n}/{{id}}"
        assert len(_cache) <= CACHE_SIZE
    assert len(_cache) > 0


def test_bare_app_404_is_unmatched() -> None:
    assert route_template(make_scope(path="/wp-login.php"), 404) == (UNMATCHED, False)
    assert route_template(make_scope(path="/users/5"), 200) == ("/users/{id}", False)
    # route_from_scope=False ignores what a framework left in the scope
    scope = make_scope(path="/users/5", path_template="/users/{user_id:int}")
    assert route_template(scope, 200, from_scope=False) == ("/users/{id}", False)
    assert route_template(scope, 200) == ("/users/{user_id:int}", True)


async def test_starlette_routes_mounts_and_unmatched() -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    async def endpoint(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def raw(scope: Any, receive: Any, send: Any) -> None:
        await PlainTextResponse("static")(scope, receive, send)

    app = Starlette(
        routes=[
            Route("/users/{user_id:int}", endpoint),
            Mount("/api", routes=[Route("/items/{item_id}", endpoint)]),
            Mount("/static", app=raw),
        ]
    )
    mw = TimingMiddleware(app)
    for path in ("/users/1", "/users/2", "/api/items/a", "/api/items/b", "/static/x.css"):
        assert (await call(mw, path=path)).status == 200
    # behind a proxy that strips /edge (server root_path): the template stays app-relative
    scope = make_scope(path="/edge/api/items/c", root_path="/edge")
    assert (await call(mw, scope=scope)).status == 200
    for path in ("/nope/1", "/nope/2", "/api/nothing/here"):
        assert (await call(mw, path=path)).status == 404
    assert (await call(mw, "POST", "/users/3")).status == 405
    assert series(mw) == {
        ("GET", "/users/{user_id:int}"): {"200": 2},
        ("GET", "/api/items/{item_id}"): {"200": 3},
        ("GET", "/static/{path}"): {"200": 1},
        ("GET", UNMATCHED): {"404": 3},
        ("POST", "/users/{user_id:int}"): {"405": 1},
    }


async def test_starlette_add_middleware_sees_route_after_app() -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def endpoint(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/users/{user_id}", endpoint)])
    app.add_middleware(TimingMiddleware)
    for path in ("/users/1", "/users/2"):
        await call(app, path=path)
    timing = app.middleware_stack
    while not isinstance(timing, TimingMiddleware):
        timing = timing.app  # type: ignore[union-attr]
    assert series(timing) == {("GET", "/users/{user_id}"): {"200": 2}}


async def test_fastapi_routes_and_routers() -> None:
    from fastapi import APIRouter, FastAPI

    app = FastAPI()
    router = APIRouter(prefix="/v1")

    @app.get("/users/{user_id}")
    async def user(user_id: int) -> dict[str, int]:
        return {"id": user_id}

    @router.get("/orders/{order_id}")
    async def order(order_id: str) -> dict[str, str]:
        return {"id": order_id}

    app.include_router(router)
    mw = TimingMiddleware(app)
    for path in ("/users/1", "/users/2", "/v1/orders/a", "/v1/orders/b"):
        assert (await call(mw, path=path)).status == 200
    assert (await call(mw, path="/users/abc")).status == 422
    assert (await call(mw, path="/missing/1")).status == 404
    assert series(mw) == {
        ("GET", "/users/{user_id}"): {"200": 2, "422": 1},
        ("GET", "/v1/orders/{order_id}"): {"200": 2},
        ("GET", UNMATCHED): {"404": 1},
    }


async def test_litestar_path_template() -> None:
    from litestar import Litestar, get
    from litestar.middleware import DefineMiddleware

    @get("/users/{user_id:int}")
    async def user(user_id: FromPath[int]) -> dict[str, int]:
        return {"id": user_id}

    outside = TimingMiddleware(Litestar(route_handlers=[user]))
    for path in ("/users/1", "/users/2"):
        assert (await call(outside, path=path)).status == 200
    assert (await call(outside, path="/nothing/3")).status == 404
    assert series(outside) == {
        ("GET", "/users/{user_id}"): {"200": 2},
        ("GET", UNMATCHED): {"404": 1},
    }

    inner: list[TimingMiddleware] = []

    def factory(app: Any) -> TimingMiddleware:
        inner.append(TimingMiddleware(app))
        return inner[-1]

    inside = Litestar(route_handlers=[user], middleware=[DefineMiddleware(factory)])
    for path in ("/users/1", "/users/2"):
        assert (await call(inside, path=path)).status == 200
    assert series(inner[0]) == {("GET", "/users/{user_id}"): {"200": 2}}


def test_route_templates_are_cached_per_route_object_never_per_reused_id() -> None:
    from asgi_perf._core.routes import template_of

    class Route:
        def __init__(self, path: str) -> None:
            self.path = path

    # each route is dropped right after use, so CPython hands its id to the next one:
    # a cache keyed on the id alone would answer with an earlier route's template
    for n in range(200):
        scope = make_scope(path=f"/p{n}")
        scope["route"] = Route(f"/route-{n}")
        assert template_of(scope, 200) == f"/route-{n}"
        assert route_template(scope, 200) == (f"/route-{n}", True)
        assert template_of(scope, 404) == f"/route-{n}"  # a matched route keeps its name
