"""Starlette with the full asgi-perf stack from the environment.

uvicorn examples.starlette_app:app --env-file examples/.env.example
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Mount, Route

import asgi_perf
from examples._auth import BearerUser, report_token
from examples._data import authors_eager, authors_lazy

ITEMS = [
    {"id": i, "name": f"item {i}", "tags": ["a", "b", "c"], "price": i * 1.25} for i in range(200)
]


async def index(request: Request) -> JSONResponse:
    return JSONResponse({"hello": "world"})


async def items(request: Request) -> JSONResponse:
    return JSONResponse(ITEMS, headers={"Cache-Control": "public, max-age=30"})


async def user(request: Request) -> JSONResponse:
    return JSONResponse({"user_id": request.path_params["user_id"]})


def authors(request: Request) -> JSONResponse:
    return JSONResponse(authors_lazy())


def authors_fixed(request: Request) -> JSONResponse:
    return JSONResponse(authors_eager())


async def events(request: Request) -> StreamingResponse:
    async def stream() -> AsyncIterator[bytes]:
        for i in range(5):
            yield f"data: event {i}\n\n".encode()
            await asyncio.sleep(0.2)

    return StreamingResponse(stream(), media_type="text/event-stream")


app = Starlette(
    routes=[
        Route("/", index),
        Route("/items", items),
        Route("/users/{user_id:int}", user),
        Route("/authors", authors),
        Route("/authors/eager", authors_fixed),
        Route("/events", events),
        # the report: from_env's stack lets /__perf__ through (ASGI_PERF_REPORT_PATH), the token
        # keeps it private
        Mount("/__perf__", asgi_perf.report_app(token=report_token())),
    ]
)

asgi_perf.install(app)  # the stack, recommended order, checked now
app.add_middleware(BearerUser)  # added last, so outermost: runs before the rate limiter
