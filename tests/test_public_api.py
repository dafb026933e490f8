"""The public surface: what ``asgi_perf`` exports, and every module declares ``__all__``
naming only things it defines or deliberately re-exports (as httpx checks its exports)."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import pytest

import asgi_perf

MODULES = sorted(
    info.name for info in pkgutil.walk_packages(asgi_perf.__path__, prefix="asgi_perf.")
)


def test_package_exports() -> None:
    assert set(asgi_perf.__all__) == {
        "CacheMiddleware",
        "CompressionMiddleware",
        "ConfigError",
        "DedupMiddleware",
        "NPlusOneError",
        "QueryMiddleware",
        "RateLimitMiddleware",
        "Store",
        "StoreUnavailable",
        "TimingMiddleware",
        "create_store",
        "from_env",
        "report_app",
    }
    for name in asgi_perf.__all__:
        assert getattr(asgi_perf, name) is not None


@pytest.mark.parametrize("module_name", MODULES)
def test_every_module_declares_all(module_name: str) -> None:
    module = importlib.import_module(module_name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{module_name} has no __all__"
    assert len(exported) == len(set(exported)), f"{module_name}.__all__ repeats a name"
    for name in exported:
        assert hasattr(module, name), f"{module_name}.__all__ names missing {name}"


MIDDLEWARES = [
    asgi_perf.CacheMiddleware,
    asgi_perf.CompressionMiddleware,
    asgi_perf.DedupMiddleware,
    asgi_perf.QueryMiddleware,
    asgi_perf.RateLimitMiddleware,
    asgi_perf.TimingMiddleware,
]


@pytest.mark.parametrize("cls", MIDDLEWARES, ids=lambda c: c.__name__)
def test_middleware_shape(cls: Any) -> None:
    """Plain class, keyword options, from_env, an enable switch, no BaseHTTPMiddleware."""
    from starlette.middleware.base import BaseHTTPMiddleware

    assert not issubclass(cls, BaseHTTPMiddleware)
    assert callable(cls.from_env)
    assert cls.ENV_ENABLED is not None and cls.ENV_ENABLED[0].startswith("ASGI_PERF_")
    for var in cls.ENV_VARS:
        assert var.name.startswith("ASGI_PERF_"), var.name


@pytest.mark.parametrize("cls", MIDDLEWARES, ids=lambda c: c.__name__)
async def test_lifespan_passes_through_untouched(cls: Any) -> None:
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope, receive, send))

    async def receive() -> Any:
        return {"type": "lifespan.startup"}

    async def send(message: Any) -> None:
        return None

    scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
    await cls(app)(scope, receive, send)
    assert seen == [(scope, receive, send)]


def test_no_framework_import_in_the_package() -> None:
    """The hot path never imports Starlette, FastAPI or Litestar (contrib is opt-in)."""
    import subprocess
    import sys

    code = (
        "import sys, asgi_perf, asgi_perf.stack; asgi_perf.stack.middleware_classes();"
        "print([m for m in ('starlette', 'fastapi', 'litestar') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
