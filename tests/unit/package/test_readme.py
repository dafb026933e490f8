"""The README as a new user reads it: its commands name what exists, its environment table is the
code's (each variable once, with its option), its snippets run as written, every header the
stack adds is in its legend, and the packaging it describes is the packaging."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Response

import asgi_perf
from asgi_perf._stack import middleware_classes

ROOT = Path(__file__).resolve().parents[3]
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def snippet(name: str) -> str:
    """The code block after ``<!-- test: name -->``."""
    match = re.search(rf"<!-- test: {re.escape(name)} -->\n```python\n(.*?)```", README, re.S)
    assert match, f"no snippet {name!r} in the README"
    return match.group(1)


# -- the first two commands, packaging ------------------------------------------------------------
def test_first_commands_run_the_example_and_the_suite() -> None:
    block = README.split("```bash\n", 1)[1].split("```", 1)[0]
    example, suite = (line for line in block.splitlines() if not line.startswith("#"))
    assert "pip install -e '.[example]'" in example
    assert "uvicorn examples.fastapi_app:app --env-file examples/.env.example" in example
    assert example.startswith("python3 -m venv .venv && . .venv/bin/activate")
    assert suite.endswith("pip install tox && tox")
    assert (ROOT / "examples" / ".env.example").is_file()


def test_extras_separate_use_example_test_and_benchmark() -> None:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    names = {extra: {re.split(r"[<>=\[; ]", d)[0] for d in deps} for extra, deps in extras.items()}
    assert names["all"] == {"asgi-perf"}  # only the package's own extras …
    assert "bench" not in extras["all"][0] and "example" not in extras["all"][0]
    assert names["example"] == {"fastapi", "uvicorn", "python-dotenv", "sqlalchemy"}
    assert {"pytest", "hypothesis", "granian", "numpy"} & names["example"] == set()
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert project["license"] == "MIT"


def test_files_the_readme_points_to_exist() -> None:
    linked = re.findall(r"\]\(([^)#:]+)\)", README)
    paths = re.findall(r"`((?:[\w.-]+/)+[\w.-]+\.(?:py|md|example|toml|ini))`", README)
    for path in [*linked, *paths]:
        assert (ROOT / path).exists(), path
    assert "spec/" not in README and "composition.md" not in README


def test_litestar_line_is_importable_as_written() -> None:
    assert "from asgi_perf.contrib.litestar import AsgiPerfPlugin" in README
    code = "import asgi_perf.contrib.litestar as m; print(m.AsgiPerfPlugin.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "AsgiPerfPlugin", out.stderr


# -- the environment table ------------------------------------------------------------------------
def _table() -> list[tuple[str, str]]:
    rows = []
    for line in section("Environment variables").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells and cells[0].startswith("`ASGI_PERF_"):
            rows.append((cells[0].strip("`"), cells[1]))
    return rows


def test_environment_table_is_the_code() -> None:
    documented = [name for name, _ in _table()]
    assert len(documented) == len(set(documented)), "a variable is documented twice"
    # in a process of its own: test modules define middlewares with variables of their own
    code = "import asgi_perf, asgi_perf._core.config as c; print(*sorted(c.known_variables()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert set(documented) == set(out.stdout.split()), out.stderr


def test_each_variable_names_its_option() -> None:
    options = dict(_table())
    for cls in middleware_classes():
        for var in cls.ENV_VARS:
            assert f"`{var.option}`" in options[var.name], (var.name, var.option)
        assert cls.ENV_ENABLED is not None and options[cls.ENV_ENABLED[0]] == "—"
    assert "`storage`" in options["ASGI_PERF_STORAGE_URL"]
    assert "see docstring" not in README


# -- snippets -------------------------------------------------------------------------------------
async def test_user_dependency_snippet_counts_the_user(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"ASGI_PERF_RATE_LIMIT_ENABLED": "true", "ASGI_PERF_RATE_LIMIT_DEFER": "true"}
    for name, value in {**env, "ASGI_PERF_RATE_LIMIT_USER": "2/minute"}.items():
        monkeypatch.setenv(name, value)
    namespace: dict[str, Any] = {"__name__": "readme_user"}
    exec(compile(snippet("user-dependency"), "README.md", "exec"), namespace)
    statuses = []
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=namespace["app"]), base_url="http://t"
    ) as client:
        for user in ["alice", "alice", "alice", "bob"]:
            response = await client.get("/me", headers={"x-user": user})
            statuses.append(response.status_code)
            assert response.headers["ratelimit-policy"].startswith('"user";q=2')
    assert statuses == [200, 200, 429, 200]


@pytest.fixture
def myapp(tmp_path: Path) -> Path:
    (tmp_path / "myapp.py").write_text(snippet("myapp"))
    (tmp_path / "test_myapp.py").write_text(snippet("test_myapp"))
    return tmp_path


@pytest.mark.slow
def test_sqlalchemy_and_pytest_snippets_as_a_user_runs_them(myapp: Path) -> None:
    env = {**os.environ, "ASGI_PERF_QUERIES_ENABLED": "true", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_myapp.py"],
        cwd=myapp,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "1 failed, 1 passed" in proc.stdout, proc.stdout[-3000:]
    assert "test_authors_has_no_n_plus_one" in proc.stdout
    # (SQLAlchemy 2.0, which Python 3.10 gets, labels the ORM's columns: "books.id AS books_id")
    assert re.search(
        r"N\+1 queries: 6 executions of `select books\.id( as books_id)?, books\.author_id",
        proc.stdout,
        re.IGNORECASE,
    ), proc.stdout[-3000:]


async def test_sqlalchemy_snippet_headers(myapp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASGI_PERF_QUERIES_ENABLED", "true")
    monkeypatch.setenv("ASGI_PERF_N_PLUS_ONE_ACTION", "header")
    monkeypatch.syspath_prepend(str(myapp))
    monkeypatch.delitem(sys.modules, "myapp", raising=False)
    module = importlib.import_module("myapp")  # SQLAlchemy resolves annotations in the module
    monkeypatch.delitem(sys.modules, "myapp")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=module.app), base_url="http://t"
    ) as client:
        response = await client.get("/authors")
    assert (response.headers["x-query-count"], response.headers["x-n-plus-one"]) == ("7", "6")
    assert 'desc="7 queries, 6 of them N+1"' in response.headers["server-timing"]


# -- the header legend ----------------------------------------------------------------------------
async def test_every_header_the_stack_adds_is_in_the_legend() -> None:
    app = FastAPI()

    @app.get("/page")
    async def page(response: Response) -> dict[str, str]:
        response.headers["cache-control"] = "public, max-age=60"
        response.headers["etag"] = '"v1"'
        return {"text": "x" * 2000}

    @app.post("/orders")
    async def orders() -> dict[str, bool]:
        return {"created": True}

    env = {
        "ASGI_PERF_STORAGE_URL": "memory://",
        "ASGI_PERF_RATE_LIMIT_ENABLED": "true",
        "ASGI_PERF_RATE_LIMIT": "5/minute",
        "ASGI_PERF_DEDUP_ENABLED": "true",
        "ASGI_PERF_CACHE_ENABLED": "true",
        "ASGI_PERF_QUERIES_ENABLED": "true",
        "ASGI_PERF_QUERIES_HEADER": "true",
    }
    asgi_perf.install(app, environ=env)
    seen: set[str] = set()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        gzip = {"accept-encoding": "gzip"}
        responses = [
            await client.get("/page", headers=gzip),  # miss, compressed
            await client.get("/page", headers=gzip),  # hit (or a dedup hit)
            await client.get("/page?again", headers={"accept-encoding": "identity"}),
            await client.post("/orders", headers={"idempotency-key": "k1"}, json={}),
            await client.post("/orders", headers={"idempotency-key": "k1"}, json={}),
            await client.get("/page", headers=gzip),  # the 6th request: 429
        ]
    assert [r.status_code for r in responses] == [200, 200, 200, 200, 200, 429]
    for response in responses:
        seen.update(name.lower() for name in response.headers)
    from_the_app = {"content-type", "content-length", "cache-control"}
    legend = section("Headers the stack adds").lower()
    missing = sorted(name for name in seen - from_the_app if f"`{name}" not in legend)
    assert missing == [], missing
    assert {"x-dedup", "x-cache", "idempotent-replayed", "retry-after", "x-n-plus-one"} <= seen


def test_every_test_the_docs_point_at_exists() -> None:
    """SECURITY.md and the README prove their claims by naming tests: each named test exists
    (``[path/]test_file.py::name``, and ``::name`` right after for another of the same file)."""
    import ast
    import re

    files = {path.name: path for path in (ROOT / "tests").rglob("test_*.py")}
    missing = []
    for doc in ("SECURITY.md", "README.md"):
        current: Path | None = None
        for match in re.finditer(r"([\w/]*test_\w+\.py)?::(\w+)", (ROOT / doc).read_text()):
            if match.group(1):
                current = files.get(match.group(1).rsplit("/", 1)[-1])
                if current is None:
                    missing.append(f"{doc}: {match.group(1)} (no such file)")
                    continue
            if current is None:
                continue
            names = {
                node.name
                for node in ast.walk(ast.parse(current.read_text()))
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            }
            if match.group(2) not in names:
                missing.append(f"{doc}: {current.name}::{match.group(2)}")
    assert missing == []
