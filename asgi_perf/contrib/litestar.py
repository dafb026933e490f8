"""Litestar integration: ``Litestar(plugins=[AsgiPerfPlugin()])``.

Litestar runs the middleware of ``AppConfig.middleware`` per route handler, after routing, so
the stack added by this plugin sees ``scope["path_template"]`` (route-template statistics for
free) but not requests that match no route (404s). To cover those too, wrap the whole app
instead: ``app = asgi_perf.from_env(Litestar(...))``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from asgi_perf._core.asgi import ASGIApp
from asgi_perf._stack import from_env

__all__ = ["AsgiPerfPlugin"]


class AsgiPerfPlugin:
    """An ``InitPluginProtocol`` plugin: the ``from_env`` stack as the outermost middleware."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = environ

    def _wrap(self, app: ASGIApp) -> ASGIApp:
        return from_env(app, environ=self.environ)

    def on_app_init(self, app_config: Any) -> Any:
        app_config.middleware.insert(0, self._wrap)
        return app_config
