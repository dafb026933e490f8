"""The outermost layer of a stack built by :func:`asgi_perf.from_env`.

- Requests under the report's path (``ASGI_PERF_REPORT_PATH``, default ``/__perf__``) go
  straight to the app, past every middleware of the stack: the report is never rate limited,
  cached, deduplicated or compressed, and never counted in the statistics it shows (a scraper
  polling it would otherwise be a route of its own, and a burst could lock the operator out).
- With a fleet backend (Redis store or ``ASGI_PERF_STATS_DIR``), the fleet publisher starts at
  the app's lifespan startup, or at the first request when the server runs no lifespan, and
  stops (withdrawing this process's snapshot) at lifespan shutdown.

Cost per request: the path comparison, and a loop identity check when publishing.
"""

from __future__ import annotations

from asyncio import get_running_loop

from asgi_perf._core.asgi import ASGIApp, Message, Receive, Scope, Send
from asgi_perf._fleet import Publisher, publisher_for
from asgi_perf._report.settings import ReportSettings

__all__ = ["StackEntry", "under", "wrap_stack"]


def _below(path: str, root: str, prefix: str) -> bool:
    if root and path.startswith(root):
        path = path[len(root) :]
    return path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/")


def under(scope: Scope, prefix: str) -> bool:
    """Whether the request's path (below the ASGI ``root_path``) is ``prefix`` or beneath it.

    The path as received (``raw_path``) counts too: Litestar hands the middleware of a mounted
    app the path *below* the mount point.
    """
    root: str = scope.get("root_path") or ""
    if _below(scope.get("path") or "", root, prefix):
        return True
    raw: bytes | None = scope.get("raw_path")
    return raw is not None and _below(raw.decode("latin-1"), root, prefix)


class StackEntry:
    """``stack`` for everything but the report's path, which goes to ``bypass`` (the bare app)."""

    def __init__(
        self, stack: ASGIApp, bypass: ASGIApp, path: str | None, publisher: Publisher | None
    ) -> None:
        self.app = stack  # ``app``: what tools walking a stack's layers follow
        self.bypass = bypass
        self.path = path
        self._raw = (path or "").encode("latin-1")  # (read only when there is a path)
        self.publisher = publisher

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http" or kind == "websocket":
            path = self.path
            # The report's path appears nowhere in most requests: ``in`` tells (a str needle:
            # no call), ``find`` in the raw path (a bytes needle makes ``in`` raise and clear
            # a TypeError inside CPython first, ten times the cost of the call)
            if (
                path is not None
                and (
                    path in scope["path"]
                    or ("raw_path" in scope and (scope["raw_path"] or b"").find(self._raw) >= 0)
                )
                and under(scope, path)
            ):
                await self.bypass(scope, receive, send)
                return
            publisher = self.publisher
            if publisher is not None and publisher.loop is not get_running_loop():
                publisher.ensure_running()
            await self.app(scope, receive, send)
        elif kind == "lifespan" and self.publisher is not None:
            await self.app(scope, self._lifespan(receive, self.publisher), send)
        else:
            await self.app(scope, receive, send)

    @staticmethod
    def _lifespan(receive: Receive, publisher: Publisher) -> Receive:
        async def watched() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                publisher.ensure_running()
            elif message["type"] == "lifespan.shutdown":
                await publisher.stop()
            return message

        return watched


def wrap_stack(stack: ASGIApp, app: ASGIApp, settings: ReportSettings) -> ASGIApp:
    """``stack`` behind a :class:`StackEntry` when it has anything to do, else ``stack``."""
    publisher = publisher_for(settings)
    if settings.path is None and publisher is None:
        return stack
    return StackEntry(stack, app, settings.path, publisher)
