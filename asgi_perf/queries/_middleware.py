"""Per-request database query recording, slow-query log and N+1 detection.

``QueryMiddleware`` opens a query log per HTTP request in a ``ContextVar``; the hooks
(:func:`instrument_sqlalchemy`, :func:`record_query`) write into whichever log is current, so
queries run in the handler, in a dependency, in ``run_in_threadpool`` or in a sync endpoint are
attributed to their request and never to a concurrent one. The log is one mutable object set
once per request: a thread gets a copy of the context that points at the *same* object. It is
closed when the request ends, so a task that outlives the request does not write into it.
(``run_in_threadpool``, ``asyncio.to_thread`` and executors run via ``copy_context().run`` carry
the log; a bare ``threading.Thread`` starts with an empty context and is not attributed.)

Choices where the spec is silent:

- Actions: ``log`` warns once per finding per request (logger ``asgi_perf.queries``) when the
  request ends, with ``extra`` fields ``http_method``, ``http_route``, ``url_path``,
  ``finding`` (``n+1``, ``duplicate``, ``slow``), ``statement``, ``query_count``,
  ``duration_seconds`` and ``call_site``; ``header`` also adds ``X-Query-Count`` (queries
  run), ``X-N-Plus-One`` (how many of them belong to N+1 patterns, ``0`` when none) and a
  ``db`` Server-Timing entry saying the same (``desc="9 queries, 8 of them N+1"``);
  ``raise`` also fails the request with :class:`NPlusOneError` (N+1 findings only; duplicates
  and slow queries are logged). ``header=True`` adds the headers whatever the action.
- Headers leave with ``http.response.start``: they carry the queries and findings known at that
  moment. Queries run while a body streams are logged and counted in ``stats()`` but are not in
  the headers; with ``raise`` an N+1 found after the start fails the request when the app
  returns (the response is already partly sent, so the server aborts it).
- Server-Timing: the ``db`` entry (``db;dur=4.1;desc="7 queries"``) always goes to an outer
  ``TimingMiddleware`` through the context it left in the scope, when one is present (it
  decides what to expose). Without one, and with the headers on, this middleware appends its
  own ``Server-Timing`` field line (RFC 9110 §5.3 lets field lines combine).
- ``ignore``: regular expressions searched (case-insensitively) in the normalized statement;
  ignored statements are not counted at all. An entry ``"site:<regex>"`` is searched in the
  call site (``path/to/file.py:42``) and drops *findings* from there: matching each query's
  call site would mean walking the stack per query. In the environment
  (``ASGI_PERF_QUERIES_IGNORE``) entries are separated by ``;``, since regular expressions
  contain commas.
- ``duplicate_threshold`` defaults to ``n_plus_one_threshold``; ``slow_query_threshold=None``
  turns the slow-query detector off.
- ``NPlusOneError`` subclasses ``AssertionError``: test runners report it as a failed check.
- ``track()`` blocks nest: a query is recorded into every open log of the chain (a
  ``track()`` around a test-client call sees the request's queries as well).
- Requests that ran no query cost one ``ContextVar.set``/``reset`` and one small object; with
  ``action="log"`` and no Timing outside, ``send`` is not even wrapped.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Awaitable, Iterable, Iterator
from contextvars import ContextVar, Token
from time import perf_counter
from typing import Any

from asgi_perf._core import context, stats
from asgi_perf._core.asgi import ASGIApp, Message, Receive, Scope, Send
from asgi_perf._core.config import (
    ConfigError,
    EnvConfigurable,
    EnvVar,
    install_hint,
    to_bool,
    to_choice,
    to_duration,
    to_int,
)
from asgi_perf._core.routes import template_of
from asgi_perf.queries._findings import Finding, QueryLog, Rules

__all__ = [
    "Finding",
    "NPlusOneError",
    "QueryLog",
    "QueryMiddleware",
    "assert_max_queries",
    "assert_no_n_plus_one",
    "current_log",
    "instrument_sqlalchemy",
    "record_query",
    "track",
    "uninstrument_sqlalchemy",
]

logger = logging.getLogger("asgi_perf.queries")

ACTIONS = ("log", "header", "raise")
_TOP = 20  # findings per kind in stats()
_MAX_TRACKED = 1000  # distinct (kind, statement, call site) aggregates kept by stats()

_current: ContextVar[QueryLog | None] = ContextVar("asgi_perf_queries", default=None)


class NPlusOneError(AssertionError):
    """A request (or a checked block) ran an N+1 query pattern; ``findings`` says where.

    An ``AssertionError`` so test runners report it as a failed check.
    """

    def __init__(self, findings: list[Finding]) -> None:
        self.findings = findings
        super().__init__("\n".join(str(f) for f in findings))


# -- hooks ------------------------------------------------------------------------------------
def current_log() -> QueryLog | None:
    """The log queries are recorded into right now (``None`` outside requests and ``track``)."""
    return _current.get()


def record_query(statement: str, duration: float, params: Any = None) -> None:
    """Record one executed query (``duration`` in seconds) for any driver without a hook."""
    log = _current.get()
    while log is not None:
        log.record(statement, params, duration)
        log = log.parent


_START = "_asgi_perf_query_start"


def _before_cursor_execute(
    conn: Any, cursor: Any, statement: str, parameters: Any, ctx: Any, executemany: bool
) -> None:
    if _current.get() is not None and ctx is not None:
        setattr(ctx, _START, perf_counter())


def _after_cursor_execute(
    conn: Any, cursor: Any, statement: str, parameters: Any, ctx: Any, executemany: bool
) -> None:
    start = getattr(ctx, _START, None)
    if start is not None:
        record_query(statement, perf_counter() - start, parameters)


def _event_target(engine: Any) -> Any:
    # AsyncEngine: the events live on the sync Engine it wraps.
    return getattr(engine, "sync_engine", engine)


def instrument_sqlalchemy(engine: Any) -> Any:
    """Record every query of ``engine`` (an ``Engine``, an ``AsyncEngine`` or the ``Engine``
    class for all engines) through SQLAlchemy's cursor events. Idempotent; returns ``engine``.
    """
    try:
        from sqlalchemy import event
    except ImportError as exc:
        raise ImportError(
            f"instrument_sqlalchemy needs SQLAlchemy: {install_hint('sqlalchemy')}"
        ) from exc

    target = _event_target(engine)
    if not event.contains(target, "before_cursor_execute", _before_cursor_execute):
        event.listen(target, "before_cursor_execute", _before_cursor_execute)
        event.listen(target, "after_cursor_execute", _after_cursor_execute)
    return engine


def uninstrument_sqlalchemy(engine: Any) -> None:
    """Undo :func:`instrument_sqlalchemy`."""
    from sqlalchemy import event

    target = _event_target(engine)
    if event.contains(target, "before_cursor_execute", _before_cursor_execute):
        event.remove(target, "before_cursor_execute", _before_cursor_execute)
        event.remove(target, "after_cursor_execute", _after_cursor_execute)


# -- outside requests: tests and jobs ---------------------------------------------------------
@contextlib.contextmanager
def track(
    *,
    n_plus_one_threshold: int = 5,
    n_plus_one_min_duration: float = 0.0,
    duplicate_threshold: int | None = None,
    slow_query_threshold: float | None = 0.1,
    ignore: Iterable[str | re.Pattern[str]] = (),
    keep: int = 100,
) -> Iterator[QueryLog]:
    """``with track() as log:`` records the block's queries (``log.count``, ``log.findings()``,
    the first ``keep`` statements in ``log.queries``). Requests inside the block record into
    their own log *and* this one.
    """
    rules = Rules(
        n_plus_one_threshold=n_plus_one_threshold,
        n_plus_one_min_duration=n_plus_one_min_duration,
        duplicate_threshold=duplicate_threshold,
        slow_query_threshold=slow_query_threshold,
        ignore=ignore,
    )
    log = QueryLog(rules, _current.get(), keep=to_int(keep, "keep", minimum=0))
    token = _current.set(log)
    try:
        yield log
    finally:
        log.close()
        _current.reset(token)


@contextlib.contextmanager
def assert_max_queries(n: int, **options: Any) -> Iterator[QueryLog]:
    """Fail (``AssertionError`` listing the queries) if the block runs more than ``n`` queries."""
    limit = to_int(n, "n", minimum=0)
    with track(**options) as log:
        yield log
    if log.count > limit:
        listed = "\n".join(f"  {i}. {statement}" for i, (statement, _) in enumerate(log.queries, 1))
        more = (
            "" if len(log.queries) == log.count else f"\n  ... {log.count - len(log.queries)} more"
        )
        raise AssertionError(f"{log.count} queries ran, at most {limit} expected:\n{listed}{more}")


@contextlib.contextmanager
def assert_no_n_plus_one(**options: Any) -> Iterator[QueryLog]:
    """Raise :class:`NPlusOneError` if the block runs an N+1 pattern (options as in ``track``)."""
    with track(**options) as log:
        yield log
    found = log.n_plus_one()
    if found:
        raise NPlusOneError(found)


# -- the middleware ---------------------------------------------------------------------------
def _patterns_from_env(value: str, name: str) -> tuple[str, ...]:
    patterns = tuple(part.strip() for part in value.split(";") if part.strip())
    for pattern in patterns:
        try:
            re.compile(pattern[5:] if pattern.startswith("site:") else pattern)
        except re.error:
            raise ConfigError(name, value, "';'-separated regular expressions") from None
    return patterns


# a page without queries, the common case, reports constants: made and rendered once
_NO_QUERIES_ENTRY = context.fixed_entry("db", 0.0, "0 queries")
_NO_QUERY_COUNTS = ((b"x-query-count", b"0"), (b"x-n-plus-one", b"0"))
_NO_QUERIES = (
    *_NO_QUERY_COUNTS,
    (b"server-timing", context.format_server_timing([_NO_QUERIES_ENTRY])),
)


class QueryMiddleware(EnvConfigurable):
    """Attribute database queries to requests; report N+1 patterns, duplicates and slow queries."""

    ENV_ENABLED = ("ASGI_PERF_QUERIES_ENABLED", False)
    ENV_VARS = (
        EnvVar(
            "ASGI_PERF_N_PLUS_ONE_THRESHOLD",
            "n_plus_one_threshold",
            lambda v, n: to_int(v, n, minimum=2),
        ),
        EnvVar("ASGI_PERF_N_PLUS_ONE_MIN_DURATION", "n_plus_one_min_duration", to_duration),
        EnvVar("ASGI_PERF_N_PLUS_ONE_ACTION", "action", lambda v, n: to_choice(v, n, ACTIONS)),
        EnvVar(
            "ASGI_PERF_DUPLICATE_QUERY_THRESHOLD",
            "duplicate_threshold",
            lambda v, n: to_int(v, n, minimum=2),
        ),
        EnvVar("ASGI_PERF_SLOW_QUERY_THRESHOLD", "slow_query_threshold", to_duration),
        EnvVar("ASGI_PERF_QUERIES_HEADER", "header", to_bool),
        EnvVar("ASGI_PERF_QUERIES_IGNORE", "ignore", _patterns_from_env),
    )

    def __init__(
        self,
        app: ASGIApp,
        *,
        n_plus_one_threshold: int = 5,
        n_plus_one_min_duration: float = 0.0,
        duplicate_threshold: int | None = None,
        slow_query_threshold: float | None = 0.1,
        action: str = "log",
        header: bool = False,
        ignore: Iterable[str | re.Pattern[str]] = (),
    ) -> None:
        self.app = app
        self.rules = Rules(
            n_plus_one_threshold=n_plus_one_threshold,
            n_plus_one_min_duration=n_plus_one_min_duration,
            duplicate_threshold=duplicate_threshold,
            slow_query_threshold=slow_query_threshold,
            ignore=ignore,
        )
        self.action = to_choice(action, "action", ACTIONS)
        self.header = to_bool(header, "header") or self.action == "header"
        self.raises = self.action == "raise"
        self.wraps = self.header or self.raises
        #: Set by :func:`asgi_perf.from_env` when this layer is innermost under Timing: its
        #: ``db`` entry is made when Timing renders (``RequestContext.late``), and no
        #: ``send`` is wrapped for it.
        self.hands_entry = False
        self._requests = 0
        self._queries = 0
        self._query_time = 0.0
        self._with_n1 = 0
        self._findings: dict[tuple[str, str, str | None], list[Any]] = {}
        stats.register("queries", self)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        log = QueryLog(self.rules)
        token = _current.set(log)
        # the log this one opened inside (a ``track()`` around a test client call): read off
        # the token rather than with a ``get`` first, one call less per request
        if token.old_value is not Token.MISSING:
            log.parent = token.old_value
        try:
            # without headers to add, only an outer Timing's context is a reason to wrap
            timing = (
                None if self.wraps or context.SCOPE_KEY not in scope else scope[context.SCOPE_KEY]
            )
            # The wrappers work before forwarding only: plain functions handing back what
            # ``send`` returns to be awaited, no coroutine of their own per message.
            if timing is not None and self.hands_entry:  # Timing renders it (from_env)

                def late() -> context.TimingEntry:
                    return _db_entry(log, log.n_plus_one()) if log.count else _NO_QUERIES_ENTRY

                timing.late = late
                await self.app(scope, receive, send)
            elif timing is not None:
                timings = timing.timings

                def send_reporting(message: Message) -> Awaitable[None]:
                    if message["type"] == "http.response.start":  # the db entry, nothing else
                        timings.append(
                            _db_entry(log, log.n_plus_one()) if log.count else _NO_QUERIES_ENTRY
                        )
                    return send(message)

                await self.app(scope, receive, send_reporting)
            elif self.wraps:

                def send_with_findings(message: Message) -> Awaitable[None]:
                    if message["type"] == "http.response.start":
                        message = self._start(scope, log, message)
                    return send(message)

                await self.app(scope, receive, send_with_findings)
            else:
                await self.app(scope, receive, send)
        finally:
            if log.count:
                log.close()
            else:  # nothing recorded: nothing to flush, only later recordings to refuse
                log.closed = True
            _current.reset(token)
            self._requests += 1
            found = self._finish(scope, log) if log.count else []
        if self.raises:  # not raised yet: found after the response started, or swallowed
            n1 = [f for f in found if f.kind == "n+1"]
            if n1:
                raise NPlusOneError(n1)

    def _finish(self, scope: Scope, log: QueryLog) -> list[Finding]:
        self._queries += log.count
        self._query_time += log.duration
        found = log.findings()
        if any(f.kind == "n+1" for f in found):
            self._with_n1 += 1
        method, path = scope.get("method", "GET"), scope.get("path", "")
        route = template_of(scope, 0) if found else path
        for finding in found:
            logger.warning(
                "%s %s: %s",
                method,
                path,
                finding,
                extra={
                    "http_method": method,
                    "http_route": route,
                    "url_path": path,
                    "finding": finding.kind,
                    "statement": finding.statement,
                    "query_count": finding.count,
                    "duration_seconds": finding.duration,
                    "call_site": finding.call_site,
                },
            )
            key = (finding.kind, finding.statement, finding.call_site)
            agg = self._findings.get(key)
            if agg is None:
                if len(self._findings) >= _MAX_TRACKED:
                    continue
                agg = self._findings[key] = [finding, 0, 0, 0.0]
            agg[1] += 1
            agg[2] += finding.count
            agg[3] += finding.duration
        return found

    def stats(self) -> dict[str, Any]:
        """Totals and the most frequent N+1 / duplicate / slow shapes with their call sites."""
        by_kind: dict[str, list[dict[str, Any]]] = {"n+1": [], "duplicate": [], "slow": []}
        for finding, requests, queries, duration in self._findings.values():
            by_kind[finding.kind].append(
                {
                    "statement": finding.statement,
                    "call_site": finding.call_site,
                    "function": finding.function,
                    "requests": requests,
                    "queries": queries,
                    "total_ms": round(duration * 1000, 3),
                }
            )
        for rows in by_kind.values():
            rows.sort(key=lambda row: (-row["requests"], -row["queries"]))
            del rows[_TOP:]
        return {
            "requests": self._requests,
            "queries": self._queries,
            "query_time_ms": round(self._query_time * 1000, 3),
            "requests_with_n_plus_one": self._with_n1,
            "n_plus_one": by_kind["n+1"],
            "duplicates": by_kind["duplicate"],
            "slow_queries": by_kind["slow"],
            "action": self.action,
            "n_plus_one_threshold": self.rules.n_plus_one_threshold,
        }

    def _start(self, scope: Scope, log: QueryLog, message: Message) -> Message:
        """Add the headers (and the db entry, to an outer Timing's context if there is one), or
        raise, as ``http.response.start`` leaves."""
        timing = context.context_of(scope)
        if not log.count:  # the common case of a page without queries: constants only
            if timing is not None:
                timing.timings.append(_NO_QUERIES_ENTRY)
            if not self.header:
                return message
            fields = _NO_QUERIES if timing is None else _NO_QUERY_COUNTS
            return {**message, "headers": [*message.get("headers", ()), *fields]}
        n1 = log.n_plus_one()
        if self.raises and n1:
            raise NPlusOneError(n1)
        entry = _db_entry(log, n1)
        if timing is not None:  # add_timing without looking the context up again
            timing.timings.append(entry)
        if not self.header:
            return message
        headers = list(message.get("headers", ()))
        headers.append((b"x-query-count", str(log.count).encode()))
        headers.append((b"x-n-plus-one", str(_in_n1(n1)).encode()))
        if timing is None:
            headers.append((b"server-timing", context.format_server_timing([entry])))
        return {**message, "headers": headers}


def _in_n1(n1: list[Finding]) -> int:
    """How many queries belong to N+1 patterns (queries, like ``X-Query-Count``)."""
    return sum(f.count for f in n1)


def _db_entry(log: QueryLog, n1: list[Finding]) -> context.TimingEntry:
    """``db;dur=4.1;desc="9 queries, 8 of them N+1"``: what the request's queries took."""
    desc = f"{log.count} quer{'y' if log.count == 1 else 'ies'}"
    if n1:
        desc += f", {_in_n1(n1)} of them N+1"
    return context.TimingEntry("db", log.duration * 1000, desc)
