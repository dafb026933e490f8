"""The architecture the tree shows, held by the imports themselves: the core knows no store
and no middleware; the stores know no middleware; no middleware reaches into another's
modules (what two layers share lives in the core, or in the stores)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import asgi_perf

PACKAGE = Path(asgi_perf.__file__).parent
MIDDLEWARES = ("cache", "compression", "dedup", "queries", "ratelimit", "timing")

#: (importing part, imported part): the one crossing kept, and why. The cache keys a
#: response by the coding a CompressionMiddleware would choose, so it asks which codecs are
#: installed (lazily, once): the codec modules own that answer, since they import the codecs.
ALLOWED = {("cache", "compression")}


def part_of(module: str) -> str | None:
    """``asgi_perf.cache._entries`` -> ``cache``; ``None`` outside the package."""
    names = module.split(".")
    if names[0] != "asgi_perf":
        return None
    return names[1] if len(names) > 1 else ""


def imports(path: Path) -> set[str]:
    """Every ``asgi_perf`` module a file imports, lazily (inside a function) or not."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            if node.module == "asgi_perf":  # from asgi_perf import cache
                found.update(f"asgi_perf.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("asgi_perf")}


def crossings(part: str) -> set[str]:
    """The other parts ``part``'s modules import."""
    parts: set[str] = set()
    for path in (PACKAGE / part).rglob("*.py"):
        for module in imports(path):
            other = part_of(module)
            if other is not None and other != part:
                parts.add(other)
    return parts


def test_the_core_imports_nothing_else_of_the_package() -> None:
    assert crossings("_core") == set()


def test_the_stores_import_only_the_core() -> None:
    assert crossings("stores") <= {"_core"}


@pytest.mark.parametrize("middleware", MIDDLEWARES)
def test_a_middleware_reaches_into_no_other_middleware(middleware: str) -> None:
    others = crossings(middleware) & set(MIDDLEWARES)
    assert {(middleware, other) for other in others} <= ALLOWED


def test_the_checks_see_the_imports_they_judge() -> None:
    """The walk finds lazy and package-level imports (a check that sees nothing passes)."""
    assert "compression" in crossings("cache")  # the lazy import inside a method
    assert "_core" in crossings("timing")
    assert {"_core", "stores"} <= crossings("dedup")
