"""The reference middlewares every measurement is compared with.

``FloorMiddleware`` is the cheapest pure-ASGI middleware that sees the response: it wraps ``send``
and forwards every message. Nothing that must see the response can cost less, so in-process
overheads are reported as multiples of its overhead ("floors").

``PingMiddleware`` does one Redis ``PING`` per request before calling the app: the floor of any
check that needs one store round trip.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FloorMiddleware", "PingMiddleware"]


class FloorMiddleware:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def forward(message: dict[str, Any]) -> None:
            await send(message)

        await self.app(scope, receive, forward)


class PingMiddleware:
    def __init__(self, app: Any, client: Any) -> None:
        self.app = app
        self.client = client

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await self.client.ping()
        await self.app(scope, receive, send)
