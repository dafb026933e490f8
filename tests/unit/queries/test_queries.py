"""QueryMiddleware with the generic hook: attribution, detectors, actions, config, helpers."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from starlette.concurrency import run_in_threadpool

from asgi_perf._core.config import ConfigError
from asgi_perf.queries._findings import _MAX_KEYS, LOOP_WIDTH, QueryLog
from asgi_perf.queries._middleware import (
    NPlusOneError,
    QueryMiddleware,
    assert_max_queries,
    assert_no_n_plus_one,
    current_log,
    record_query,
    track,
)
from tests.support import call, reader

CHILD = "SELECT * FROM books WHERE author_id = ?"
PARENT = "SELECT * FROM authors"


def lazy_loop(n: int, statement: str = CHILD, duration: float = 0.001) -> None:
    for i in range(n):
        record_query(statement, duration, (i,))  # LOOP-LINE


LOOP_LINE = next(
    i for i, line in enumerate(Path(__file__).read_text().splitlines(), 1) if "# LOOP-LINE" in line
)


def make_app(work: Any, *, body: bytes = b"ok") -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        result = work()
        if asyncio.iscoroutine(result):
            await result
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    return app


# -- attribution ------------------------------------------------------------------------------
async def test_concurrent_requests_see_only_their_own_queries() -> None:
    gate = asyncio.Event()
    sizes = iter(range(3, 13))

    async def work() -> None:
        n = next(sizes)
        for i in range(n):
            record_query(CHILD, 0.0, (i,))
            await asyncio.sleep(0)  # interleave with the other requests
        await gate.wait()

    app = QueryMiddleware(make_app(work), action="header")
    tasks = [asyncio.create_task(call(app)) for _ in range(10)]
    await asyncio.sleep(0.05)
    gate.set()
    responses = await asyncio.gather(*tasks)
    assert sorted(int(r.header("x-query-count") or -1) for r in responses) == list(range(3, 13))
    for r in responses:
        count = int(r.header("x-query-count") or -1)
        assert r.header("x-n-plus-one") == str(count if count >= 5 else 0)


async def test_threadpool_and_to_thread_queries_belong_to_the_request() -> None:
    def sync_part() -> None:
        record_query(PARENT, 0.0)

    async def work() -> None:
        await run_in_threadpool(sync_part)
        await asyncio.to_thread(sync_part)
        await asyncio.gather(*(run_in_threadpool(lazy_loop, 2) for _ in range(3)))

    app = QueryMiddleware(make_app(work), header=True)
    response = await call(app)
    assert response.header("x-query-count") == "8"


async def test_a_task_outliving_the_request_does_not_write_into_it() -> None:
    release = asyncio.Event()
    seen: list[QueryLog] = []
    late: list[asyncio.Task[None]] = []

    async def background() -> None:
        await release.wait()
        record_query(PARENT, 0.0)

    async def work() -> None:
        log = current_log()
        assert log is not None
        seen.append(log)
        record_query(PARENT, 0.0)
        late.append(asyncio.create_task(background()))

    app = QueryMiddleware(make_app(work))
    await call(app)
    release.set()
    await late[0]
    assert seen[0].closed and seen[0].count == 1
    assert current_log() is None


def test_threads_mutate_the_same_log_without_losing_updates() -> None:
    with track() as log:
        # each thread runs in its own copy of the context, as run_in_threadpool does
        threads = [
            threading.Thread(target=contextvars.copy_context().run, args=(lazy_loop, 500))
            for _ in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert log.count == 2000


# -- detectors --------------------------------------------------------------------------------
def test_n_plus_one_needs_threshold_repeats_with_different_parameters() -> None:
    with track(n_plus_one_threshold=5) as log:
        record_query(PARENT, 0.001)
        lazy_loop(4)
    assert log.findings() == []
    with track(n_plus_one_threshold=5) as log:
        record_query(PARENT, 0.001)
        lazy_loop(5)
    (finding,) = log.findings()
    assert finding.kind == "n+1"
    assert finding.count == 5
    assert finding.statement == "select * from books where author_id = ?"
    assert finding.duration == pytest.approx(0.005)
    assert (finding.filename, finding.lineno, finding.function) == (
        __file__,
        LOOP_LINE,
        "lazy_loop",
    )


def test_identical_parameters_are_duplicates_not_n_plus_one() -> None:
    with track() as log:
        for _ in range(6):
            record_query(CHILD, 0.0, (1,))
    (finding,) = log.findings()
    assert (finding.kind, finding.count) == ("duplicate", 6)
    assert "ran 6 times with the same parameters" in str(finding)
    assert finding.filename == __file__


def test_literal_values_count_as_different_parameters() -> None:
    with track() as log:
        for i in range(5):
            record_query(f"SELECT * FROM books WHERE author_id = {i}", 0.0)
    assert [f.kind for f in log.findings()] == ["n+1"]


def test_a_loop_body_with_two_lazy_loads_reports_both() -> None:
    with track() as log:
        for i in range(6):
            record_query(CHILD, 0.0, (i,))
            record_query("SELECT * FROM profiles WHERE author_id = ?", 0.0, (i,))
    assert sorted((f.statement.split()[3], f.count) for f in log.findings()) == [
        ("books", 6),
        ("profiles", 6),
    ]


def test_a_run_ends_when_more_than_loop_width_statements_intervene() -> None:
    with track() as log:
        lazy_loop(3)
        for k in range(LOOP_WIDTH):
            record_query(f"SELECT * FROM other{k}", 0.0)
        lazy_loop(3)
    assert log.findings() == []


def test_min_duration_filters_fast_loops() -> None:
    with track(n_plus_one_min_duration=0.05) as log:
        lazy_loop(10, duration=0.001)
    assert log.findings() == []
    with track(n_plus_one_min_duration="50ms") as log:
        lazy_loop(10, duration=0.01)
    assert [f.kind for f in log.findings()] == ["n+1"]


def test_slow_query_is_reported_with_its_call_site() -> None:
    with track(slow_query_threshold=0.5) as log:
        record_query(PARENT, 0.2)
        record_query(PARENT, 0.7)
    (finding,) = log.findings()
    assert (finding.kind, finding.count, finding.slowest) == ("slow", 1, 0.7)
    assert finding.filename == __file__
    with track(slow_query_threshold=None) as log:
        record_query(PARENT, 100.0)
    assert log.findings() == []


def test_duplicate_table_is_bounded() -> None:
    with track() as log:
        for i in range(_MAX_KEYS + 100):
            record_query(PARENT, 0.0, (i,))
        tables = log._tables
        assert tables is not None and len(tables.dups) == _MAX_KEYS
    assert log.count == _MAX_KEYS + 100


def test_ignore_statement_patterns_and_call_sites() -> None:
    with track(ignore=[r"from\s+authors"]) as log:
        for _ in range(10):
            record_query(PARENT, 0.0, (1,))
        record_query(CHILD, 0.0)
    assert log.count == 1 and log.findings() == []
    with track(ignore=["site:test_queries\\.py:" + str(LOOP_LINE)]) as log:
        lazy_loop(10)
    assert log.count == 10 and log.findings() == []


# -- actions ----------------------------------------------------------------------------------
async def test_header_action_adds_counts_and_its_own_server_timing() -> None:
    def parent_then_children() -> None:
        record_query(PARENT, 0.001)
        lazy_loop(7)

    app = QueryMiddleware(make_app(parent_then_children), action="header")
    response = await call(app)
    assert response.header("x-query-count") == "8"
    # both count queries (never patterns): the header and the description say the same thing
    assert response.header("x-n-plus-one") == "7"
    assert response.header("server-timing") == 'db;dur=8;desc="8 queries, 7 of them N+1"'


async def test_with_timing_outside_the_db_entry_goes_to_the_context() -> None:
    app, contexts = reader(QueryMiddleware(make_app(lambda: lazy_loop(2)), header=True))
    response = await call(app)
    assert response.header("server-timing") is None
    assert response.header("x-query-count") == "2"
    assert [(e.name, e.desc) for e in contexts[0].timings] == [("db", "2 queries")]


async def test_log_action_warns_once_per_finding_and_does_not_wrap_send(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sends: list[Any] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        sends.append(send)
        lazy_loop(5)
        for _ in range(5):
            record_query(PARENT, 0.0)
        await make_app(lambda: None)(scope, receive, send)

    async def outer_send(message: Any) -> None:
        pass

    from tests.support import make_scope

    async def receive() -> Any:
        return {"type": "http.disconnect"}

    with caplog.at_level(logging.WARNING, logger="asgi_perf.queries"):
        await QueryMiddleware(inner)(make_scope(path="/authors"), receive, outer_send)
    assert sends == [outer_send]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert messages[0].startswith("GET /authors: N+1 queries: 5 executions of")
    assert f"test_queries.py:{LOOP_LINE} in lazy_loop()" in messages[0]
    assert "duplicate queries" in messages[1]


async def test_raise_action_fails_the_request_naming_statement_and_site() -> None:
    sent: list[Any] = []
    app = QueryMiddleware(make_app(lambda: lazy_loop(5)), action="raise")
    with pytest.raises(NPlusOneError) as info:
        await app({"type": "http", "method": "GET", "path": "/"}, _disconnect, _collect_into(sent))
    assert sent == []  # the start message never left
    text = str(info.value)
    assert "select * from books where author_id = ?" in text
    assert f"test_queries.py:{LOOP_LINE}" in text
    assert info.value.findings[0].count == 5
    # clean requests are untouched
    response = await call(QueryMiddleware(make_app(lambda: lazy_loop(4)), action="raise"))
    assert response.status == 200


async def test_raise_after_the_response_started_fails_when_the_app_returns() -> None:
    sent: list[Any] = []

    async def streaming(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        lazy_loop(5)
        await send({"type": "http.response.body", "body": b"x"})

    with pytest.raises(NPlusOneError):
        await QueryMiddleware(streaming, action="raise")(
            {"type": "http", "method": "GET", "path": "/"}, _disconnect, _collect_into(sent)
        )
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]


async def _disconnect() -> Any:
    return {"type": "http.disconnect"}


def _collect_into(sink: list[Any]) -> Any:
    async def send(message: Any) -> None:
        sink.append(message)

    return send


@pytest.mark.parametrize("kind", ["lifespan", "websocket"])
async def test_other_scopes_pass_through_untouched(kind: str) -> None:
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope, receive, send, current_log()))

    scope = {"type": kind}
    await QueryMiddleware(app, action="raise")(scope, _disconnect, _collect_into([]))
    assert seen[0][0] is scope and seen[0][3] is None


# -- stats ------------------------------------------------------------------------------------
async def test_stats_lists_the_most_frequent_n_plus_one_shapes() -> None:
    app = QueryMiddleware(make_app(lambda: lazy_loop(6)))
    for _ in range(3):
        await call(app)
    await call(QueryMiddleware(make_app(lambda: None)))
    stats = app.stats()
    assert stats["requests"] == 3 and stats["queries"] == 18
    assert stats["requests_with_n_plus_one"] == 3
    (row,) = stats["n_plus_one"]
    assert row["statement"] == "select * from books where author_id = ?"
    assert row["call_site"] == f"{__file__}:{LOOP_LINE}"
    assert (row["requests"], row["queries"]) == (3, 18)


# -- configuration ----------------------------------------------------------------------------
def test_env_ignore_splits_statements_from_call_sites() -> None:
    """What QUERIES_IGNORE makes of its list (that each variable arrives at its option:
    test_options_contract)."""
    env = {"ASGI_PERF_QUERIES_IGNORE": "select 1; from alembic_version ;site:migrations/"}
    rules = QueryMiddleware.from_env(make_app(lambda: None), env).rules
    assert [p.pattern for p in rules.ignore_statements] == ["select 1", "from alembic_version"]
    assert [p.pattern for p in rules.ignore_sites] == ["migrations/"]


def test_enabled_in_env() -> None:
    assert QueryMiddleware.enabled_in_env({"ASGI_PERF_QUERIES_ENABLED": "yes"})
    assert not QueryMiddleware.enabled_in_env({})
    with pytest.raises(ConfigError) as info:
        QueryMiddleware.enabled_in_env({"ASGI_PERF_QUERIES_ENABLED": "maybe"})
    assert (info.value.name, info.value.value) == ("ASGI_PERF_QUERIES_ENABLED", "maybe")


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("n_plus_one_threshold", 0),
        ("duplicate_threshold", 1),
        ("slow_query_threshold", -1),
        ("action", "shout"),
        ("header", "perhaps"),
        ("ignore", ["("]),
        ("ignore", [3]),
    ],
)
def test_bad_options_name_the_option(option: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        QueryMiddleware(make_app(lambda: None), **{option: value})
    assert info.value.name == option


# -- test helpers -----------------------------------------------------------------------------
def test_assert_max_queries() -> None:
    with assert_max_queries(3) as log:
        lazy_loop(3)
    assert log.count == 3
    with pytest.raises(AssertionError) as info, assert_max_queries(2):
        lazy_loop(4)
    assert str(info.value).startswith("4 queries ran, at most 2 expected:\n  1. SELECT")


def test_assert_no_n_plus_one() -> None:
    with assert_no_n_plus_one():
        lazy_loop(4)
    with pytest.raises(NPlusOneError, match="5 executions"), assert_no_n_plus_one():
        lazy_loop(5)


async def test_track_around_a_request_sees_its_queries_too() -> None:
    app = QueryMiddleware(make_app(lambda: lazy_loop(5)))
    with track() as outer:
        await call(app)
    assert outer.count == 5
    assert [f.kind for f in outer.findings()] == ["n+1"]
    assert current_log() is None


async def test_findings_reach_the_shared_report() -> None:
    import orjson

    from asgi_perf.report import report_app

    app = QueryMiddleware(make_app(lambda: lazy_loop(5)))
    await call(app)
    report = report_app(environ={})  # this process's report, whatever REDIS_URL says
    document = orjson.loads((await call(report)).body)
    mine = [s for s in document["stats"]["queries"] if s["requests"] == 1 and s["n_plus_one"]]
    assert mine[-1]["n_plus_one"][0]["call_site"] == f"{__file__}:{LOOP_LINE}"
    prometheus = (await call(report, query="format=prometheus")).body
    assert b"asgi_perf_queries_requests_with_n_plus_one" in prometheus
