"""The cache's decision for a request, as one pure function (RFC 9111 §4).

Given what is stored for the request's key (or nothing), the request's own directives and
the time, :func:`decide` says what to do: serve the entry, serve it stale, serve it stale
while one background request revalidates it, revalidate it with the app, fetch a full
response, or answer ``504``. The middleware only carries the decision out; every rule is
tested by the table in ``tests/unit/cache/test_cache_decide.py``.
"""

from __future__ import annotations

import enum

from asgi_perf.cache._entry import Entry
from asgi_perf.cache._rules import RequestDirectives

__all__ = ["Action", "decide", "stale_on_error"]


class Action(enum.Enum):
    SERVE = "serve"  # fresh enough for this request: no call to the app
    SERVE_STALE = "stale"  # stale, but within the request's max-stale (§4.2.4)
    REFRESH = "refresh"  # stale within stale-while-revalidate: serve it, revalidate behind
    REVALIDATE = "revalidate"  # a conditional request with the entry's validators (§4.3.1)
    FILL = "fill"  # a full request: nothing (usable) stored, or nothing to validate with
    UNAVAILABLE = "504"  # only-if-cached and nothing that may be served (§5.2.1.7)


def decide(entry: Entry | None, request: RequestDirectives, now: float) -> Action:
    """What to do for a request whose key holds ``entry`` (``None``: nothing usable)."""
    if entry is None:
        return Action.UNAVAILABLE if request.only_if_cached else Action.FILL
    age = entry.age(now)
    remaining = entry.lifetime - age
    within_max_age = request.max_age is None or age <= request.max_age
    if not (request.no_cache or entry.no_cache):
        if remaining > 0:
            if within_max_age and (request.min_fresh is None or remaining >= request.min_fresh):
                return Action.SERVE
        elif not entry.no_stale and request.min_fresh is None and within_max_age:
            if request.max_stale is not None and -remaining <= request.max_stale:
                return Action.SERVE_STALE
            if entry.swr and -remaining <= entry.swr and request.max_age is None:
                return Action.REFRESH
    if request.only_if_cached:
        return Action.UNAVAILABLE
    return Action.REVALIDATE if entry.revalidatable else Action.FILL


def stale_on_error(entry: Entry | None, now: float) -> bool:
    """Whether ``entry`` may stand in for a failed answer of the app (a 5xx, an exception):
    within its ``stale-if-error`` window (RFC 5861 §4) and not forbidden to be served stale."""
    if entry is None or entry.no_stale:
        return False
    return entry.age(now) - entry.lifetime <= entry.sie
