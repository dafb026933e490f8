"""The per-request context through which layers talk to each other without knowing each other.

An outer layer that wants to *read* what inner layers did (``TimingMiddleware``) puts a
:class:`RequestContext` in the request's scope under :data:`SCOPE_KEY` (:func:`open_context`);
inner layers find it there and *write* into it with :meth:`RequestContext.add`. The scope is
the one object every layer already holds for the request: finding the context is a dict
lookup (``in``, then a subscript: no call, inlined on hot paths; :func:`context_of`
elsewhere), where a ``ContextVar`` cost a read per report and a set and a reset per request.
When nobody reads, a layer finds nothing and reports nothing.

Inner layers must add their Server-Timing entries before they forward
``http.response.start``: the header leaves with that message (W3C Server-Timing).

A reader opens a context for every request, so opening one is kept to the bare minimum: a
``RequestContext`` makes its ``timings`` list only when something is reported, and a reader
on a hot path may subclass it (keeping its own per-request state in the same object) and put
it in the scope itself.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from asgi_perf._core.asgi import Scope

__all__ = [
    "SCOPE_KEY",
    "RequestContext",
    "TimingEntry",
    "add_timing",
    "context_of",
    "fixed_entry",
    "format_server_timing",
    "open_context",
]

#: Where a reader leaves the request's :class:`RequestContext` in its scope.
SCOPE_KEY = "asgi_perf.context"


@dataclass(slots=True)
class TimingEntry:
    """One Server-Timing metric: ``name;dur=1.2;desc="hit"``.

    Read-only once reported: an entry that is the same on every request (:func:`fixed_entry`)
    is one object shared by them all, rendered once.
    """

    name: str
    dur: float | None = None  # milliseconds
    desc: str | None = None
    # its Server-Timing text, kept by a fixed entry only (the others are rendered each time)
    _text: bytes | None = field(default=None, init=False, repr=False, compare=False)


class RequestContext:
    """What inner layers reported about one request.

    ``timings`` is made on first use: most requests report nothing, and the reader (Timing)
    opens a context for every request, so an empty one must cost nothing but the object
    itself (no ``__init__``: making one calls no Python code). A reader may subclass it to
    keep its own per-request state in the same object (one allocation per request).
    """

    # a class-level default: the instance stores a list only once something is reported
    _timings: list[TimingEntry] | None = None
    #: Response fields for the reader to add to the start it forwards, set by a layer
    #: that :func:`asgi_perf.from_env` put right inside the reader (``hands_fields``):
    #: they leave on the reader's one new header list, without a ``send`` wrapper of
    #: that layer's own. Any other layer adds its fields itself.
    fields: list[tuple[bytes, bytes]] | None = None
    #: An entry made when the reader renders Server-Timing, set by the layer
    #: :func:`asgi_perf.from_env` put innermost (``hands_entry``): what it saw until the
    #: response started, without a ``send`` wrapper of its own. Rendered first, where the
    #: innermost layer's entry stands.
    late: Callable[[], TimingEntry] | None = None

    def __repr__(self) -> str:
        return f"RequestContext(timings={self._timings or []!r})"

    @property
    def timings(self) -> list[TimingEntry]:
        timings = self._timings
        if timings is None:
            timings = self._timings = []
        return timings

    def add(self, name: str, dur: float | None = None, desc: str | None = None) -> None:
        """Contribute a Server-Timing entry (``dur`` in milliseconds).

        An entry without a duration is one of a handful of constants (``cache;desc="hit"``):
        the shared :func:`fixed_entry`, not a new object rendered again.
        """
        if dur is not None:
            entry = TimingEntry(name, dur, desc)
        elif (name, desc) in _FIXED:
            entry = _FIXED[name, desc]
        else:
            entry = fixed_entry(name, None, desc)
        timings = self._timings
        if timings is None:
            self._timings = [entry]  # (a new list with the entry: no append call)
        else:
            timings.append(entry)


def context_of(scope: Scope) -> RequestContext | None:
    """The context a reader outside put in ``scope``, if any (hot paths inline this)."""
    return scope[SCOPE_KEY] if SCOPE_KEY in scope else None  # type: ignore[no-any-return]


def add_timing(scope: Scope, name: str, dur: float | None = None, desc: str | None = None) -> None:
    """:meth:`RequestContext.add` to the context in ``scope``; nothing when none is there."""
    if SCOPE_KEY in scope:
        scope[SCOPE_KEY].add(name, dur, desc)


def open_context(scope: Scope) -> RequestContext:
    """Start collecting for this request, as a reader does: a new context in ``scope``."""
    ctx = scope[SCOPE_KEY] = RequestContext()
    return ctx


_TOKEN_RE = re.compile(r"[^!#$%&'*+\-.^_`|~0-9A-Za-z]")
_CONTROL = {**dict.fromkeys(range(32)), 0x7F: None}


@functools.lru_cache(maxsize=256)
def _token(name: str) -> str:
    return _TOKEN_RE.sub("-", name) or "metric"


@functools.lru_cache(maxsize=1024)
def _quote(value: str) -> str:
    """RFC 9110 quoted-string; control characters cannot be escaped, so they are dropped.

    Cached: the descriptions layers send are a handful of constants ("hit", "gzip", ...).
    """
    if not value.isprintable():
        value = value.translate(_CONTROL)
    if '"' in value or "\\" in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + value + '"'


def _render(entry: TimingEntry) -> bytes:
    part = _token(entry.name)
    if entry.dur is not None:
        dur = "%.3f" % entry.dur  # noqa: UP031 (no call, where format() would be one)
        if dur[-1] == "0":  # "1.230" -> "1.23", "1.200" -> "1.2", "1.000" -> "1": no call
            dur = dur[:-1] if dur[-2] != "0" else dur[:-2] if dur[-3] != "0" else dur[:-4]
        part += ";dur=" + dur
    if entry.desc is not None:
        part += ";desc=" + _quote(entry.desc)
    return part.encode("latin-1", "replace")  # (a fixed entry's once, kept in ``_text``)


# (name, desc) -> the shared entry without a duration: layers send a handful of these
_FIXED: dict[tuple[str, str | None], TimingEntry] = {}
_MAX_FIXED = 256  # beyond, entries without a duration are made per request (a hostile desc)


def fixed_entry(name: str, dur: float | None = None, desc: str | None = None) -> TimingEntry:
    """An entry that is the same on every request, rendered once here (its text kept).

    A layer reporting a constant keeps the result and appends it to ``timings`` itself;
    :meth:`RequestContext.add` does so for entries without a duration.
    """
    entry = TimingEntry(name, dur, desc)
    entry._text = _render(entry)
    if dur is None and len(_FIXED) < _MAX_FIXED:
        _FIXED[name, desc] = entry
    return entry


def format_server_timing(entries: list[TimingEntry]) -> bytes:
    """Render entries in W3C Server-Timing syntax; names are made into valid tokens.

    A loop that adds to one bytes string, each entry rendered as bytes (a fixed one once): no
    comprehension frame, no join, no encode of the whole (calls counted)."""
    value = b""
    for entry in entries:
        part = entry._text if entry._text is not None else _render(entry)
        value = part if not value else value + b", " + part
    return value
