"""The queries middleware: see :mod:`asgi_perf.queries._middleware`."""

from asgi_perf.queries._middleware import (
    NPlusOneError,
    QueryMiddleware,
    assert_max_queries,
    assert_no_n_plus_one,
    instrument_sqlalchemy,
    record_query,
    track,
    uninstrument_sqlalchemy,
)

__all__ = [
    "NPlusOneError",
    "QueryMiddleware",
    "assert_max_queries",
    "assert_no_n_plus_one",
    "instrument_sqlalchemy",
    "record_query",
    "track",
    "uninstrument_sqlalchemy",
]
