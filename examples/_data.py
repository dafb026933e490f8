"""A small SQLAlchemy model shared by the examples: authors with books (one-to-many).

``/authors`` lazy-loads each author's books (a classic N+1 the QueryMiddleware reports);
``/authors/eager`` loads them with ``selectinload`` (two queries, no finding).
"""

from __future__ import annotations

from sqlalchemy import ForeignKey, String, create_engine, select
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    selectinload,
)
from sqlalchemy.pool import QueuePool

from asgi_perf.queries import instrument_sqlalchemy

__all__ = ["authors_eager", "authors_lazy", "engine"]


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "authors"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    books: Mapped[list[Book]] = relationship(back_populates="author", lazy="select")


class Book(Base):
    __tablename__ = "books"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(100))
    author_id: Mapped[int] = mapped_column(ForeignKey("authors.id"))
    author: Mapped[Author] = relationship(back_populates="books")


# An in-memory database shared by the connections of this process (nothing left on disk); it
# lives as long as one connection to it is open, so one is kept for the life of the process.
engine = create_engine(
    "sqlite:///file:asgi-perf-example?mode=memory&cache=shared&uri=true",
    connect_args={"check_same_thread": False},
    poolclass=QueuePool,  # one connection per concurrent request (not one per thread)
)
_keep_alive = engine.raw_connection()
instrument_sqlalchemy(engine)
Base.metadata.drop_all(engine)
Base.metadata.create_all(engine)
with Session(engine) as _session:
    for a in range(8):
        author = Author(name=f"author {a}")
        author.books = [Book(title=f"book {a}.{b}") for b in range(3)]
        _session.add(author)
    _session.commit()


def authors_lazy() -> list[dict[str, object]]:
    with Session(engine) as session:
        authors = session.scalars(select(Author).order_by(Author.id)).all()
        return [{"name": a.name, "books": [b.title for b in a.books]} for a in authors]


def authors_eager() -> list[dict[str, object]]:
    with Session(engine) as session:
        query = select(Author).options(selectinload(Author.books)).order_by(Author.id)
        authors = session.scalars(query).all()
        return [{"name": a.name, "books": [b.title for b in a.books]} for a in authors]
