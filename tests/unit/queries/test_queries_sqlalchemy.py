"""A real SQLAlchemy ORM app (authors -> books) behind QueryMiddleware, served by Starlette and
FastAPI, on a SQLite file and on PostgreSQL when one answers on 127.0.0.1:5432.

The lazy-loading endpoints must be reported as N+1 with the right count and the line of their
loop; their ``selectinload`` twins must not; a loop of identical queries is duplicates; and
findings stay with their request under concurrency, in threads and through ``AsyncEngine``.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine, ForeignKey, String, create_engine, func, select, text
from sqlalchemy.ext.asyncio import AsyncAttrs, AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    selectinload,
)
from sqlalchemy.pool import NullPool
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from asgi_perf.queries import (
    NPlusOneError,
    QueryMiddleware,
    assert_no_n_plus_one,
    instrument_sqlalchemy,
    track,
    uninstrument_sqlalchemy,
)

with warnings.catch_warnings():  # Starlette 1.x deprecates httpx under its TestClient
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

AUTHORS = 8
BOOKS_PER_AUTHOR = 2


class Base(AsyncAttrs, DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "qa_authors"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    books: Mapped[list[Book]] = relationship(back_populates="author", order_by="Book.id")


class Book(Base):
    __tablename__ = "qa_books"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(50))
    author_id: Mapped[int] = mapped_column(ForeignKey("qa_authors.id"))
    author: Mapped[Author] = relationship(back_populates="books")


# -- the application's data access: the loops whose lines the findings must name ------------
def lazy_sync(engine: Engine, limit: int) -> list[list[str]]:
    with Session(engine) as session:
        authors = session.scalars(select(Author).order_by(Author.id).limit(limit)).all()
        return [[book.title for book in author.books] for author in authors]  # LAZY-SYNC


def eager_sync(engine: Engine, limit: int) -> list[list[str]]:
    with Session(engine) as session:
        query = select(Author).options(selectinload(Author.books)).order_by(Author.id)
        authors = session.scalars(query.limit(limit)).all()
        return [[book.title for book in author.books] for author in authors]


def duplicates_sync(engine: Engine, times: int) -> list[int]:
    with Session(engine) as session:
        return [session.scalar(select(func.count(Book.id))) or 0 for _ in range(times)]  # DUPS


async def lazy_async(engine: AsyncEngine, limit: int) -> list[list[str]]:
    async with AsyncSession(engine) as session:
        authors = (await session.scalars(select(Author).order_by(Author.id).limit(limit))).all()
        out = []
        for author in authors:
            books = await author.awaitable_attrs.books  # LAZY-ASYNC
            out.append([book.title for book in books])
        return out


async def eager_async(engine: AsyncEngine, limit: int) -> list[list[str]]:
    async with AsyncSession(engine) as session:
        query = select(Author).options(selectinload(Author.books)).order_by(Author.id)
        authors = (await session.scalars(query.limit(limit))).all()
        return [[book.title for book in author.books] for author in authors]


def _line(marker: str) -> int:
    lines = Path(__file__).read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.rstrip().endswith("# " + marker))


LAZY_SYNC, LAZY_ASYNC, DUPS = _line("LAZY-SYNC"), _line("LAZY-ASYNC"), _line("DUPS")


# -- databases --------------------------------------------------------------------------------
@dataclass
class Database:
    engine: Engine
    aengine: AsyncEngine
    name: str


def _postgres_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=0.5):
            return True
    except OSError:
        return False


def _seed(engine: Engine) -> None:
    with Session(engine) as session:
        for a in range(1, AUTHORS + 1):
            author = Author(id=a, name=f"author {a}")
            author.books = [
                Book(id=a * 10 + b, title=f"book {a}.{b}") for b in range(BOOKS_PER_AUTHOR)
            ]
            session.add(author)
        session.commit()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("db") / "app.db"
        engine = create_engine(f"sqlite:///{path}")
        Base.metadata.create_all(engine)
        _seed(engine)
        aengine = create_async_engine(f"sqlite+aiosqlite:///{path}", poolclass=NullPool)
        instrument_sqlalchemy(engine)
        instrument_sqlalchemy(aengine)
        yield Database(engine, aengine, "sqlite")
        uninstrument_sqlalchemy(engine)
        uninstrument_sqlalchemy(aengine)
        engine.dispose()
        asyncio.run(aengine.dispose())
        return
    pytest.importorskip("psycopg2")
    pytest.importorskip("asyncpg")
    if not _postgres_up():
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    schema = f"asgi_perf_q_{uuid.uuid4().hex[:10]}"
    base = create_engine("postgresql+psycopg2://postgres@127.0.0.1:5432/test")
    abase = create_async_engine(
        "postgresql+asyncpg://postgres@127.0.0.1:5432/test", poolclass=NullPool
    )
    with base.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    translate = {"schema_translate_map": {None: schema}}
    engine = base.execution_options(**translate)
    try:
        Base.metadata.create_all(engine)
        _seed(engine)
        instrument_sqlalchemy(base)
        instrument_sqlalchemy(abase)
        yield Database(engine, abase.execution_options(**translate), "postgresql")
    finally:
        uninstrument_sqlalchemy(base)
        uninstrument_sqlalchemy(abase)
        asyncio.run(abase.dispose())
        with base.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        base.dispose()


# -- the two frameworks -----------------------------------------------------------------------
class InFlight:
    """Counts handlers running at once, to prove that requests really overlapped."""

    def __init__(self) -> None:
        self.now = self.peak = 0
        self.lock = threading.Lock()

    def __enter__(self) -> None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.now -= 1


def starlette_app(db: Database, inflight: InFlight, **options: Any) -> Any:
    def limit(request: Request) -> int:
        return int(request.query_params.get("limit", AUTHORS))

    def lazy(request: Request) -> JSONResponse:  # sync endpoint: Starlette runs it in a thread
        with inflight:
            return JSONResponse(lazy_sync(db.engine, limit(request)))

    def eager(request: Request) -> JSONResponse:
        with inflight:
            return JSONResponse(eager_sync(db.engine, limit(request)))

    def dups(request: Request) -> JSONResponse:
        return JSONResponse(duplicates_sync(db.engine, limit(request)))

    async def threadpool_lazy(request: Request) -> JSONResponse:
        return JSONResponse(await run_in_threadpool(lazy_sync, db.engine, limit(request)))

    async def async_lazy(request: Request) -> JSONResponse:
        with inflight:
            return JSONResponse(await lazy_async(db.aengine, limit(request)))

    async def async_eager(request: Request) -> JSONResponse:
        with inflight:
            return JSONResponse(await eager_async(db.aengine, limit(request)))

    app = Starlette(
        routes=[
            Route("/lazy", lazy),
            Route("/eager", eager),
            Route("/dups", dups),
            Route("/threadpool/lazy", threadpool_lazy),
            Route("/async/lazy", async_lazy),
            Route("/async/eager", async_eager),
        ]
    )
    app.add_middleware(QueryMiddleware, **options)
    return app


def fastapi_app(db: Database, inflight: InFlight, **options: Any) -> Any:
    app = FastAPI()

    @app.get("/lazy")
    def lazy(limit: int = AUTHORS) -> list[list[str]]:  # sync: run in the threadpool
        with inflight:
            return lazy_sync(db.engine, limit)

    @app.get("/eager")
    def eager(limit: int = AUTHORS) -> list[list[str]]:
        with inflight:
            return eager_sync(db.engine, limit)

    @app.get("/dups")
    def dups(limit: int = AUTHORS) -> list[int]:
        return duplicates_sync(db.engine, limit)

    @app.get("/threadpool/lazy")
    async def threadpool_lazy(limit: int = AUTHORS) -> list[list[str]]:
        return await run_in_threadpool(lazy_sync, db.engine, limit)

    @app.get("/async/lazy")
    async def async_lazy(limit: int = AUTHORS) -> list[list[str]]:
        with inflight:
            return await lazy_async(db.aengine, limit)

    @app.get("/async/eager")
    async def async_eager(limit: int = AUTHORS) -> list[list[str]]:
        with inflight:
            return await eager_async(db.aengine, limit)

    app.add_middleware(QueryMiddleware, **options)
    return app


FRAMEWORKS = {"starlette": starlette_app, "fastapi": fastapi_app}


@pytest.fixture(params=sorted(FRAMEWORKS))
def framework(request: pytest.FixtureRequest) -> Any:
    return FRAMEWORKS[request.param]


@pytest.fixture
async def client(db: Database, framework: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = framework(db, InFlight(), action="header")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


def plain(text: str) -> str:
    """``text`` without the PostgreSQL test schema that ``schema_translate_map`` renders."""
    return re.sub(r"asgi_perf_q_\w+\.", "", text)


def _stats(app: Any) -> dict[str, Any]:
    # The QueryMiddleware instance Starlette built: found through the report registry.
    from asgi_perf._core import stats as registry

    return registry.snapshot()["queries"][-1]


# -- tests ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("path", "line"), [("/lazy", LAZY_SYNC), ("/async/lazy", LAZY_ASYNC)])
async def test_lazy_loading_is_n_plus_one_with_count_and_call_site(
    db: Database, framework: Any, path: str, line: int, caplog: pytest.LogCaptureFixture
) -> None:
    app = framework(db, InFlight(), action="header")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        response = await c.get(path)
    assert response.status_code == 200
    assert response.json()[0] == ["book 1.0", "book 1.1"]
    assert response.headers["x-query-count"] == str(1 + AUTHORS)
    assert response.headers["x-n-plus-one"] == str(AUTHORS)
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "asgi_perf.queries"]
    assert f"N+1 queries: {AUTHORS} executions of `select" in warning
    assert f"test_queries_sqlalchemy.py:{line} in " in warning
    (row,) = _stats(app)["n_plus_one"]
    assert row["call_site"] == f"{__file__}:{line}"
    assert "qa_books" in row["statement"] and "author_id" in row["statement"]
    assert (row["requests"], row["queries"]) == (1, AUTHORS)


@pytest.mark.parametrize("path", ["/eager", "/async/eager"])
async def test_selectinload_twin_is_clean(
    client: httpx.AsyncClient, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    response = await client.get(path)
    assert response.json()[0] == ["book 1.0", "book 1.1"]
    assert response.headers["x-query-count"] == "2"
    assert response.headers["x-n-plus-one"] == "0"
    assert not [r for r in caplog.records if r.name == "asgi_perf.queries"]


async def test_a_loop_of_identical_queries_is_duplicates(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    response = await client.get("/dups", params={"limit": 6})
    assert response.json() == [AUTHORS * BOOKS_PER_AUTHOR] * 6
    assert response.headers["x-n-plus-one"] == "0"
    (warning,) = [plain(r.getMessage()) for r in caplog.records if r.name == "asgi_perf.queries"]
    assert "duplicate queries: `select count(qa_books.id)" in warning
    assert "ran 6 times with the same parameters" in warning
    assert f"test_queries_sqlalchemy.py:{DUPS} in " in warning


async def test_run_in_threadpool_queries_are_attributed(client: httpx.AsyncClient) -> None:
    response = await client.get("/threadpool/lazy", params={"limit": 6})
    assert response.headers["x-query-count"] == "7"
    assert response.headers["x-n-plus-one"] == "6"


@pytest.mark.parametrize("prefix", ["", "/async"])
async def test_fifty_concurrent_requests_keep_their_own_findings(
    db: Database, framework: Any, prefix: str
) -> None:
    inflight = InFlight()
    app = framework(db, inflight, action="header")
    plan = [(i % 2 == 0, 5 + i % 4) for i in range(50)]  # (lazy?, limit)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        responses = await asyncio.gather(
            *(
                c.get(f"{prefix}/{'lazy' if lazy else 'eager'}", params={"limit": limit})
                for lazy, limit in plan
            )
        )
    assert inflight.peak > 1  # the requests did overlap
    for (lazy, limit), response in zip(plan, responses, strict=True):
        assert len(response.json()) == limit
        if lazy:
            assert response.headers["x-query-count"] == str(1 + limit)
            assert response.headers["x-n-plus-one"] == str(limit)
        else:
            assert response.headers["x-query-count"] == "2"
            assert response.headers["x-n-plus-one"] == "0"
    stats = _stats(app)
    assert stats["requests"] == 50 and stats["requests_with_n_plus_one"] == 25
    (row,) = stats["n_plus_one"]
    assert row["queries"] == sum(limit for lazy, limit in plan if lazy)


def test_raise_action_fails_the_request_in_the_test_client(db: Database, framework: Any) -> None:
    app = framework(db, InFlight(), action="raise")
    with TestClient(app) as client:
        with pytest.raises(NPlusOneError) as info:
            client.get("/lazy")
        assert client.get("/eager").status_code == 200
    message = plain(str(info.value))
    # (SQLAlchemy 2.0, which Python 3.10 gets, labels the ORM's columns: "… as qa_books_id")
    columns = ("id", "title", "author_id")
    listed = ", ".join(rf"qa_books\.{c}( as qa_books_{c})?" for c in columns)
    assert re.search(rf"select {listed} from ", message), message
    # (the comprehension's own frame before Python 3.12; inlined into the function since)
    site = rf"test_queries_sqlalchemy\.py:{LAZY_SYNC} in (<listcomp>|lazy_sync)\(\)"
    assert re.search(site, message), message
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/lazy").status_code == 500


def test_test_helpers_with_the_orm(db: Database) -> None:
    with assert_no_n_plus_one():
        eager_sync(db.engine, AUTHORS)
    with pytest.raises(NPlusOneError, match=f"{AUTHORS} executions"), assert_no_n_plus_one():
        lazy_sync(db.engine, AUTHORS)
    with track() as log:
        asyncio.run(lazy_async(db.aengine, 5))
    (finding,) = log.findings()
    assert (finding.count, finding.lineno) == (5, LAZY_ASYNC)


def test_instrumenting_is_idempotent_and_reversible() -> None:
    from sqlalchemy.engine import Engine as EngineClass

    engine = create_engine("sqlite://")

    def count_one_query() -> int:
        with track() as log, engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return log.count

    assert count_one_query() == 0
    assert instrument_sqlalchemy(instrument_sqlalchemy(engine)) is engine
    assert count_one_query() == 1
    uninstrument_sqlalchemy(engine)
    assert count_one_query() == 0
    instrument_sqlalchemy(EngineClass)  # every engine
    try:
        assert count_one_query() == 1
    finally:
        uninstrument_sqlalchemy(EngineClass)
    assert count_one_query() == 0
    engine.dispose()
