"""The per-request context through which layers talk to each other without knowing each other.

An outer layer that wants to *read* what inner layers did (``TimingMiddleware``) opens a
context with :func:`open_context`; inner layers *write* into it with :func:`add_timing` and
:func:`incr`. When nobody opened a context, writing costs one ``ContextVar.get`` and does
nothing, so layers may always write.

Inner layers must add their Server-Timing entries before they forward
``http.response.start``: the header leaves with that message (W3C Server-Timing).
"""

from __future__ import annotations

import re
from contextvars import ContextVar, Token
from dataclasses import dataclass, field

__all__ = [
    "RequestContext",
    "TimingEntry",
    "add_timing",
    "close_context",
    "current",
    "format_server_timing",
    "incr",
    "open_context",
]


@dataclass(slots=True)
class TimingEntry:
    """One Server-Timing metric: ``name;dur=1.2;desc="hit"``."""

    name: str
    dur: float | None = None  # milliseconds
    desc: str | None = None


@dataclass(slots=True)
class RequestContext:
    """What inner layers reported about one request."""

    timings: list[TimingEntry] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)


_current: ContextVar[RequestContext | None] = ContextVar("asgi_perf_request", default=None)


def open_context() -> tuple[RequestContext, Token[RequestContext | None]]:
    """Start collecting for the current request; pass the token to :func:`close_context`."""
    ctx = RequestContext()
    return ctx, _current.set(ctx)


def close_context(token: Token[RequestContext | None]) -> None:
    _current.reset(token)


def current() -> RequestContext | None:
    """The context an outer layer opened for this request, if any."""
    return _current.get()


def add_timing(name: str, dur: float | None = None, desc: str | None = None) -> None:
    """Contribute a Server-Timing entry (``dur`` in milliseconds); a no-op with no reader."""
    ctx = _current.get()
    if ctx is not None:
        ctx.timings.append(TimingEntry(name, dur, desc))


def incr(name: str, amount: int = 1) -> None:
    """Add to a per-request counter; a no-op with no reader."""
    ctx = _current.get()
    if ctx is not None:
        ctx.counters[name] = ctx.counters.get(name, 0) + amount


_TOKEN_RE = re.compile(r"[^!#$%&'*+\-.^_`|~0-9A-Za-z]")


def _quote(value: str) -> str:
    # RFC 9110 quoted-string; control characters cannot be escaped, so they are dropped.
    cleaned = "".join(c for c in value if c >= " " and c != "\x7f")
    return '"' + cleaned.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_server_timing(entries: list[TimingEntry]) -> bytes:
    """Render entries in W3C Server-Timing syntax; names are made into valid tokens."""
    parts: list[str] = []
    for entry in entries:
        name = _TOKEN_RE.sub("-", entry.name) or "metric"
        part = name
        if entry.dur is not None:
            part += f";dur={entry.dur:.3f}".rstrip("0").rstrip(".")
        if entry.desc is not None:
            part += ";desc=" + _quote(entry.desc)
        parts.append(part)
    return ", ".join(parts).encode("latin-1", "replace")
