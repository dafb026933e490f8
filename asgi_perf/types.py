"""The ASGI types the public API is written in (plain aliases, no framework types)."""

from __future__ import annotations

from asgi_perf._core.asgi import ASGIApp, Headers, Message, Receive, Scope, Send

__all__ = ["ASGIApp", "Headers", "Message", "Receive", "Scope", "Send"]
