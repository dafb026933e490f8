"""A toy authentication layer for the examples: ``Authorization: Bearer <user>`` → user id.

It writes ``scope["state"]["user_id"]``, which is what asgi-perf's default user key reads, so
rate limits and dedup count that user instead of the client IP. It must sit *outside* the
asgi-perf stack (it runs before the limiter decides); a real app would verify a token here.
"""

from __future__ import annotations

from asgi_perf.types import ASGIApp, Receive, Scope, Send

__all__ = ["BearerUser"]


class BearerUser:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            auth = next((v for k, v in scope.get("headers") or () if k == b"authorization"), b"")
            if auth[:7].lower() == b"bearer " and auth[7:].strip():
                scope.setdefault("state", {})["user_id"] = auth[7:].strip().decode("latin-1")
        await self.app(scope, receive, send)
