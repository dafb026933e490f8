"""The query log of one request (or one ``track()`` block) and the detectors that read it.

The log is *streaming*: it keeps counters and a few small tables, never the list of queries
(unless asked to keep a bounded number for test failure messages), so a request that runs a
million queries costs a million counter updates, not a million records.

Detectors:

- **N+1** (Sentry's rule, widened to loop bodies): executions of one normalized statement
  (:func:`asgi_perf.sqlnorm.normalize`) that follow each other with *differing* parameters, at
  least ``n_plus_one_threshold`` times, totalling at least ``n_plus_one_min_duration``. Sentry
  looks at strictly consecutive spans; a loop body that lazy-loads two relations interleaves two
  statements, so here a run stays open while fewer than ``LOOP_WIDTH`` other statements
  interleave with it.
- **Duplicates**: one statement with identical parameters run at least ``duplicate_threshold``
  times anywhere in the request (identity is the raw statement plus a hash of the parameters).
- **Slow queries**: one execution taking at least ``slow_query_threshold`` seconds.

Call sites are captured lazily: the stack is walked only when a finding reaches its threshold
(the ``threshold``-th repeat of a loop is on the same line as the others), never per query.
The walk skips SQLAlchemy, asgi_perf and greenlet frames and follows SQLAlchemy's asyncio
greenlet bridge back to the coroutine that awaited the query.

Several threads may record into one log (``run_in_threadpool`` copies the request's context,
which points at the same log): every update holds the log's lock.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from types import FrameType
from typing import Any

from asgi_perf._core.config import ConfigError, to_duration, to_int
from asgi_perf.queries._sqlnorm import normalize

__all__ = ["LOOP_WIDTH", "Finding", "QueryLog", "Rules", "call_site"]

LOOP_WIDTH = 4  # statements a loop body may interleave with a repeating one
_MAX_KEYS = 4096  # distinct (statement, parameters) pairs tracked per log for duplicates
_MAX_SHAPES = 4096  # statements whose shape a Rules instance remembers
_FIRST_QUERY = threading.Lock()  # guards building a log's tables (once per log that has queries)


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem found in one request: ``kind`` is ``"n+1"``, ``"duplicate"`` or ``"slow"``."""

    kind: str
    statement: str  # normalized
    count: int
    duration: float  # seconds, all counted executions together
    slowest: float  # seconds, the slowest single execution
    filename: str | None = None
    lineno: int | None = None
    function: str | None = None

    @property
    def call_site(self) -> str | None:
        """``path/to/file.py:42`` or ``None`` when no frame outside the libraries was found."""
        return None if self.filename is None else f"{self.filename}:{self.lineno}"

    def __str__(self) -> str:
        where = "" if self.filename is None else f" at {self.call_site} in {self.function}()"
        ms = self.duration * 1000
        if self.kind == "n+1":
            return (
                f"N+1 queries: {self.count} executions of `{self.statement}` with different "
                f"parameters ({ms:.1f} ms){where}; load the relation eagerly "
                "(selectinload/joinedload) or fetch the rows in one query"
            )
        if self.kind == "duplicate":
            return (
                f"duplicate queries: `{self.statement}` ran {self.count} times with the same "
                f"parameters{where}; reuse the first result"
            )
        return (
            f"slow query: `{self.statement}` took {self.slowest * 1000:.1f} ms"
            f"{'' if self.count == 1 else f' (slowest of {self.count})'}{where}"
        )


def _compile(patterns: Iterable[str | re.Pattern[str]], option: str) -> tuple[Any, Any]:
    statements: list[re.Pattern[str]] = []
    sites: list[re.Pattern[str]] = []
    for item in patterns:
        if isinstance(item, re.Pattern):
            statements.append(item)
            continue
        if not isinstance(item, str):
            raise ConfigError(option, item, "regular expressions as strings or re.Pattern")
        into, text = (sites, item[5:]) if item.startswith("site:") else (statements, item)
        try:
            into.append(re.compile(text, re.IGNORECASE))
        except re.error:
            raise ConfigError(option, item, "valid regular expressions") from None
    return tuple(statements), tuple(sites)


class Rules:
    """Validated detector settings, shared by every log a middleware (or ``track``) opens."""

    __slots__ = (
        "_shapes",
        "duplicate_threshold",
        "ignore_sites",
        "ignore_statements",
        "n_plus_one_min_duration",
        "n_plus_one_threshold",
        "slow_query_threshold",
    )

    def __init__(
        self,
        *,
        n_plus_one_threshold: int = 5,
        n_plus_one_min_duration: float = 0.0,
        duplicate_threshold: int | None = None,
        slow_query_threshold: float | None = 0.1,
        ignore: Iterable[str | re.Pattern[str]] = (),
    ) -> None:
        self.n_plus_one_threshold = to_int(n_plus_one_threshold, "n_plus_one_threshold", minimum=2)
        self.n_plus_one_min_duration = to_duration(
            n_plus_one_min_duration, "n_plus_one_min_duration"
        )
        self.duplicate_threshold = (
            self.n_plus_one_threshold
            if duplicate_threshold is None
            else to_int(duplicate_threshold, "duplicate_threshold", minimum=2)
        )
        self.slow_query_threshold = (
            float("inf")
            if slow_query_threshold is None
            else to_duration(slow_query_threshold, "slow_query_threshold")
        )
        if isinstance(ignore, str | re.Pattern):
            ignore = (ignore,)
        self.ignore_statements, self.ignore_sites = _compile(ignore, "ignore")
        self._shapes: dict[str, str | None] = {}

    def shape(self, statement: str) -> str | None:
        """The normalized statement, or ``None`` when an ``ignore`` pattern matches it."""
        shapes = self._shapes
        try:
            return shapes[statement]
        except KeyError:
            pass
        shape: str | None = normalize(statement)
        if any(p.search(shape) for p in self.ignore_statements):  # type: ignore[arg-type]
            shape = None
        if len(shapes) >= _MAX_SHAPES:
            shapes.clear()
        shapes[statement] = shape
        return shape

    def site_ignored(self, finding: Finding) -> bool:
        site = finding.call_site
        return site is not None and any(p.search(site) for p in self.ignore_sites)


# -- call sites -------------------------------------------------------------------------------
def _library_dirs() -> tuple[str, ...]:
    dirs = [os.path.dirname(__file__) + os.sep]
    for name in ("sqlalchemy", "sqlmodel", "greenlet"):
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None)
        if path:
            dirs.append(os.path.dirname(path) + os.sep)
    return tuple(dirs)


Site = tuple[str, int, str]


def call_site(frame: FrameType | None = None) -> Site | None:
    """``(filename, line, function)`` of the first frame outside SQLAlchemy and asgi_perf.

    Under SQLAlchemy's asyncio layer the query runs in a child greenlet whose stack ends at
    ``greenlet_spawn``; the walk continues in the parent greenlet, where the awaiting
    coroutine is suspended.
    """
    skip = _library_dirs()
    frame = sys._getframe(1) if frame is None else frame
    greenlet = sys.modules.get("greenlet")
    current = greenlet.getcurrent() if greenlet is not None else None
    while True:
        while frame is not None:
            code = frame.f_code
            if not code.co_filename.startswith(skip):
                return code.co_filename, frame.f_lineno, code.co_name
            frame = frame.f_back
        current = getattr(current, "parent", None)
        if current is None:
            return None
        frame = current.gr_frame


# -- the log ----------------------------------------------------------------------------------
def _params_key(params: Any) -> int:
    """A hash standing for the parameters (kept instead of the values, which may be large)."""
    try:
        return hash(params)
    except TypeError:
        pass
    try:
        if isinstance(params, dict):
            return hash(tuple(params.items()))
        if isinstance(params, list):
            return hash(tuple(params))
    except TypeError:
        pass
    return hash(repr(params))


class _Run:
    """Consecutive executions of one shape (see the module docstring)."""

    __slots__ = ("count", "duration", "first", "shape", "site", "slowest", "varied")

    def __init__(self, shape: str, key: tuple[str, int], duration: float) -> None:
        self.shape = shape
        self.first = key
        self.count = 1
        self.duration = duration
        self.slowest = duration
        self.varied = False
        self.site: Site | None = None


class _Tables:
    """What a log holds once it has seen a query (requests without queries never build it)."""

    __slots__ = ("dup_sites", "dups", "kept", "lock", "n1", "runs", "slow")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: list[_Run] = []
        self.n1: dict[tuple[str, Site | None], list[float]] = {}
        self.dups: dict[tuple[str, int], int] = {}
        self.dup_sites: dict[tuple[str, int], tuple[str, Site | None]] = {}
        self.slow: dict[tuple[str, Site | None], list[float]] = {}
        self.kept: list[tuple[str, float]] = []


def _found(site: Site | None) -> tuple[str | None, int | None, str | None]:
    return (None, None, None) if site is None else site


class QueryLog:
    """The queries of one request: counters plus the detectors' tables.

    ``parent`` is the log that was current when this one opened (a ``track()`` around a test
    client call): recording walks the chain, so both see the query.
    """

    __slots__ = ("_tables", "closed", "count", "duration", "keep", "parent", "rules")

    def __init__(self, rules: Rules, parent: QueryLog | None = None, keep: int = 0) -> None:
        self.rules = rules
        self.parent = parent
        self.keep = keep
        self.count = 0
        self.duration = 0.0
        self.closed = False
        self._tables: _Tables | None = None  # built, with its lock, by the first query

    @property
    def queries(self) -> list[tuple[str, float]]:
        """The first ``keep`` queries as ``(statement, seconds)`` (for failure messages)."""
        tables = self._tables
        return [] if tables is None else list(tables.kept)

    def record(self, statement: str, params: Any, duration: float) -> None:
        shape = self.rules.shape(statement)
        if shape is None:
            return
        key = (statement, _params_key(params))
        rules = self.rules
        tables = self._tables
        if tables is None:
            with _FIRST_QUERY:
                tables = self._tables
                if tables is None:
                    tables = self._tables = _Tables()
        with tables.lock:
            if self.closed:
                return
            self.count += 1
            self.duration += duration
            if len(tables.kept) < self.keep:
                tables.kept.append((statement, duration))
            site: Site | None = None
            # duplicates
            dups = tables.dups
            seen = dups.get(key, 0) + 1
            if seen > 1 or len(dups) < _MAX_KEYS:
                dups[key] = seen
            if seen == rules.duplicate_threshold:
                site = call_site()
                tables.dup_sites[key] = (shape, site)
            # N+1 runs
            runs = tables.runs
            run = runs[-1] if runs else None
            if run is None or (run.shape is not shape and run.shape != shape):
                run = next((r for r in runs if r.shape is shape or r.shape == shape), None)
                if run is None:
                    runs.append(_Run(shape, key, duration))
                    if len(runs) > LOOP_WIDTH:
                        self._close_run(tables, runs.pop(0))
                    run = None
                else:
                    runs.remove(run)
                    runs.append(run)
            if run is not None:
                run.count += 1
                run.duration += duration
                if duration > run.slowest:
                    run.slowest = duration
                if not run.varied and key != run.first:
                    run.varied = True
                if run.site is None and run.varied and run.count >= rules.n_plus_one_threshold:
                    run.site = site or call_site()
            # slow
            if duration >= rules.slow_query_threshold:
                slot = tables.slow.setdefault((shape, site or call_site()), [0, 0.0, 0.0])
                slot[0] += 1
                slot[1] += duration
                slot[2] = max(slot[2], duration)

    def _qualifies(self, run: _Run) -> bool:
        rules = self.rules
        return (
            run.varied
            and run.count >= rules.n_plus_one_threshold
            and run.duration >= rules.n_plus_one_min_duration
        )

    def _close_run(self, tables: _Tables, run: _Run) -> None:
        if self._qualifies(run):
            slot = tables.n1.setdefault((run.shape, run.site), [0, 0.0, 0.0])
            slot[0] += run.count
            slot[1] += run.duration
            slot[2] = max(slot[2], run.slowest)

    def close(self) -> None:
        """End of the request: later recordings (a task that outlived it) are dropped."""
        self.closed = True
        tables = self._tables
        if tables is not None:
            with tables.lock:
                for run in tables.runs:
                    self._close_run(tables, run)
                tables.runs.clear()

    def findings(self) -> list[Finding]:
        """Every finding so far, N+1 first, then duplicates, then slow; each by count."""
        tables = self._tables
        if tables is None:
            return []
        out: list[Finding] = []
        with tables.lock:
            n1 = {k: list(v) for k, v in tables.n1.items()}
            for run in tables.runs:  # still open: report what is known now
                if self._qualifies(run):
                    slot = n1.setdefault((run.shape, run.site), [0, 0.0, 0.0])
                    slot[0] += run.count
                    slot[1] += run.duration
                    slot[2] = max(slot[2], run.slowest)
            for (shape, site), (count, total, slowest) in n1.items():
                out.append(Finding("n+1", shape, int(count), total, slowest, *_found(site)))
            for key, (shape, site) in tables.dup_sites.items():
                count = tables.dups[key]
                out.append(Finding("duplicate", shape, count, 0.0, 0.0, *_found(site)))
            for (shape, site), (count, total, slowest) in tables.slow.items():
                out.append(Finding("slow", shape, int(count), total, slowest, *_found(site)))
        order = {"n+1": 0, "duplicate": 1, "slow": 2}
        out.sort(key=lambda f: (order[f.kind], -f.count))
        return [f for f in out if not self.rules.site_ignored(f)]

    def n_plus_one(self) -> list[Finding]:
        return [f for f in self.findings() if f.kind == "n+1"]
