"""Litestar with asgi-perf: the plugin adds the stack from the environment, one for the app.

    uvicorn examples.litestar_app:app --env-file examples/.env.example

A single middleware can also be added the Litestar way:
``Litestar(..., middleware=[DefineMiddleware(CompressionMiddleware, minimum_size=500)])``.
"""

from __future__ import annotations

from typing import Any

from litestar import Litestar, Response, get
from litestar.handlers import asgi
from litestar.middleware import DefineMiddleware

from asgi_perf import CompressionMiddleware, report_app
from asgi_perf.contrib.litestar import AsgiPerfPlugin
from examples._auth import report_token
from examples._data import authors_eager, authors_lazy

ITEMS = [
    {"id": i, "name": f"item {i}", "tags": ["a", "b", "c"], "price": i * 1.25} for i in range(200)
]


@get("/")
async def index() -> dict[str, str]:
    return {"hello": "world"}


@get("/items")
async def items() -> Response[list[dict[str, Any]]]:
    return Response(ITEMS, headers={"Cache-Control": "public, max-age=30"})


@get("/users/{user_id:int}")
async def user(user_id: int) -> dict[str, int]:
    return {"user_id": user_id}


@get("/authors", sync_to_thread=True)
def authors() -> list[dict[str, object]]:
    return authors_lazy()


@get("/authors/eager", sync_to_thread=True)
def authors_fixed() -> list[dict[str, object]]:
    return authors_eager()


@get("/compressed-only", middleware=[DefineMiddleware(CompressionMiddleware, minimum_size=10)])
async def compressed_only() -> str:
    return "a route with its own CompressionMiddleware " * 20


# the report, mounted: the plugin's stack lets /__perf__ through, the token keeps it private
perf = asgi("/__perf__", is_mount=True, copy_scope=True)(report_app(token=report_token()))

app = Litestar(
    route_handlers=[index, items, user, authors, authors_fixed, compressed_only, perf],
    plugins=[AsgiPerfPlugin()],
)
