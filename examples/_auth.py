"""A toy authentication layer for the examples: ``Authorization: Bearer <user>`` → user id.

It writes ``scope["state"]["user_id"]``, which is what asgi-perf's default user key reads, so
rate limits and dedup count that user instead of the client IP. It must sit *outside* the
asgi-perf stack (it runs before the limiter decides); a real app would verify a token here.
"""

from __future__ import annotations

import os
import secrets
import sys

from asgi_perf.types import ASGIApp, Receive, Scope, Send

__all__ = ["BearerUser", "report_token"]


def report_token() -> str:
    """The report's bearer token: ``ASGI_PERF_REPORT_TOKEN``, else a random one, printed.

    The report shows SQL statements, routes and call sites: an example never serves it
    unprotected. (With several workers set the variable: each worker would draw its own.)
    """
    token = os.environ.get("ASGI_PERF_REPORT_TOKEN", "").strip()
    if not token:
        token = secrets.token_urlsafe(24)
        print(f"asgi-perf report: send 'Authorization: Bearer {token}'", file=sys.stderr)
    return token


class BearerUser:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            auth = next((v for k, v in scope.get("headers") or () if k == b"authorization"), b"")
            if auth[:7].lower() == b"bearer " and auth[7:].strip():
                scope.setdefault("state", {})["user_id"] = auth[7:].strip().decode("latin-1")
        await self.app(scope, receive, send)
