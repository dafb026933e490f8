"""FastAPI with the full asgi-perf stack from the environment, added in one line.

    uvicorn examples.fastapi_app:app --env-file examples/.env.example

Routes: ``/`` (tiny), ``/items`` (12 KB JSON, cacheable), ``/users/{user_id}`` (per-user
data, never shared), ``/authors`` (lazy loading: an N+1), ``/authors/eager`` (its fix),
``/events`` (server-sent events, streamed and flushed), ``/orders`` (POST; send an
``Idempotency-Key``), ``/__perf__`` (the report: JSON, or Prometheus at ``/__perf__/metrics``;
send ``Authorization: Bearer <ASGI_PERF_REPORT_TOKEN>``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import StreamingResponse

import asgi_perf
from examples._auth import BearerUser, report_token
from examples._data import authors_eager, authors_lazy

app = FastAPI(title="asgi-perf example")
ITEMS = [
    {"id": i, "name": f"item {i}", "tags": ["a", "b", "c"], "price": i * 1.25} for i in range(200)
]


def current_user(request: Request) -> str | None:
    """The user the auth layer found (``scope["state"]["user_id"]``), if any."""
    return getattr(request.state, "user_id", None)


@app.get("/")
async def index() -> dict[str, str]:
    return {"hello": "world"}


@app.get("/items")
async def items(response: Response) -> list[dict[str, Any]]:
    response.headers["Cache-Control"] = "public, max-age=30"
    response.headers["Cache-Tag"] = "items"
    return ITEMS


@app.get("/users/{user_id}")
async def user(user_id: int, me: Annotated[str | None, Depends(current_user)]) -> dict[str, Any]:
    return {"user_id": user_id, "viewer": me}


@app.get("/authors")
def authors() -> list[dict[str, object]]:
    return authors_lazy()


@app.get("/authors/eager")
def authors_fixed() -> list[dict[str, object]]:
    return authors_eager()


@app.get("/events")
async def events() -> StreamingResponse:
    async def stream() -> AsyncIterator[bytes]:
        for i in range(5):
            yield f"data: event {i}\n\n".encode()
            await asyncio.sleep(0.2)

    return StreamingResponse(stream(), media_type="text/event-stream")


@app.post("/orders")
async def orders(
    order: dict[str, Any], me: Annotated[str | None, Depends(current_user)]
) -> dict[str, Any]:
    await asyncio.sleep(0.05)  # work worth not doing twice
    return {"created": True, "order": order, "by": me}


# the report: from_env's stack lets /__perf__ through (ASGI_PERF_REPORT_PATH), the token keeps
# it private
app.mount("/__perf__", asgi_perf.report_app(token=report_token()))

# The stack, in the recommended order (Timing → RateLimit → Dedup → Cache → Compression → Query).
# Checked now: a bad ASGI_PERF_* value stops the server from starting.
asgi_perf.install(app)
# add_middleware puts the layer added last outermost: the user is known before the limiter runs.
app.add_middleware(BearerUser)
