"""Litestar integration: ``Litestar(route_handlers, plugins=[AsgiPerfPlugin()])``.

One stack per application, as with Starlette: one rate-limit budget, one cache, one set of
statistics across every route. Litestar builds the middleware of ``AppConfig.middleware`` once
per route handler, after routing; so the plugin builds the :func:`asgi_perf.from_env` stack
once (when ``Litestar(...)`` is constructed: a bad option or variable raises there, and the
server does not start) and gives each route a two-line entry that runs the request through
that shared stack, whose innermost layer calls the route's own handler stack.

Because it runs after routing, the stack sees ``scope["path_template"]`` (route-template
statistics for free) but not requests that match no route (404s, 405s). To cover those too,
wrap the whole app instead: ``app = asgi_perf.from_env(Litestar(...))`` (the returned object is
then the stack, not the Litestar instance).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from asgi_perf._core.asgi import ASGIApp, Receive, Scope, Send
from asgi_perf._stack import from_env

__all__ = ["AsgiPerfPlugin"]

# The scope key under which a route's entry hands its handler stack to the shared stack.
_ROUTE_APP = "asgi_perf.route_app"


async def _route_app(scope: Scope, receive: Receive, send: Send) -> None:
    """The innermost app of the shared stack: the matched route's own handler stack."""
    await scope[_ROUTE_APP](scope, receive, send)


class AsgiPerfPlugin:
    """An ``InitPluginProtocol`` plugin: the ``from_env`` stack, shared by every route."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = environ

    def on_app_init(self, app_config: Any) -> Any:
        stack = from_env(_route_app, environ=self.environ)
        if stack is not _route_app:

            def entry(app: ASGIApp) -> ASGIApp:  # Litestar passes app= by keyword
                async def through_stack(scope: Scope, receive: Receive, send: Send) -> None:
                    scope[_ROUTE_APP] = app
                    await stack(scope, receive, send)

                return through_stack

            app_config.middleware.insert(0, entry)
        return app_config
