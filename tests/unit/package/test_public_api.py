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
        "CacheWarmer",
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
        "install",
        "report_app",
    }
    for name in asgi_perf.__all__:
        assert getattr(asgi_perf, name) is not None


def test_public_modules_are_exactly_these() -> None:
    """Everything else is private (a leading underscore somewhere in its dotted name)."""
    public = {m for m in MODULES if not any(p.startswith("_") for p in m.split("."))}
    assert public == {
        "asgi_perf.cache",
        "asgi_perf.compression",
        "asgi_perf.contrib",
        "asgi_perf.contrib.litestar",
        "asgi_perf.dedup",
        "asgi_perf.queries",
        "asgi_perf.ratelimit",
        "asgi_perf.report",
        "asgi_perf.stores",
        "asgi_perf.timing",
        "asgi_perf.types",
    }


def test_examples_use_only_public_names() -> None:
    import pathlib
    import re

    examples = pathlib.Path(__file__).resolve().parents[3] / "examples"
    for path in examples.glob("*.py"):
        for match in re.finditer(r"asgi_perf[\w.]*", path.read_text()):
            assert not any(p.startswith("_") for p in match.group().split(".")), (path, match)


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
        "import sys, asgi_perf, asgi_perf._stack; asgi_perf._stack.middleware_classes();"
        "print([m for m in ('starlette', 'fastapi', 'litestar') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
