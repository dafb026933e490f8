"""The per-process registry every middleware reports its statistics to.

A middleware calls :func:`register` once, with its kind (``"cache"``) and itself; the report
endpoint calls :func:`snapshot`. Instances are held weakly, so apps built and dropped (tests,
reloads) do not accumulate; a new middleware appears in the report without editing it.
"""

from __future__ import annotations

import weakref
from typing import Any, Protocol

__all__ = ["StatsSource", "register", "snapshot", "states"]


class StatsSource(Protocol):
    def stats(self) -> dict[str, Any]: ...


_sources: list[tuple[str, weakref.ref[StatsSource]]] = []


def register(kind: str, source: StatsSource) -> None:
    """Report ``source.stats()`` under ``kind`` for as long as ``source`` lives."""
    _sources[:] = [(k, ref) for k, ref in _sources if ref() is not None]
    _sources.append((kind, weakref.ref(source)))


def snapshot() -> dict[str, list[dict[str, Any]]]:
    """``{kind: [stats of each live instance]}``, in registration order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for kind, ref in _sources:
        source = ref()
        if source is not None:
            out.setdefault(kind, []).append(source.stats())
    return out


def states() -> dict[str, list[dict[str, Any]]]:
    """:func:`snapshot`, but from each source's ``mergeable_stats()`` where it has one.

    What the fleet report publishes and merges: timing's latency sketches travel as bucket
    counts (which add up across processes) instead of percentiles (which do not).
    """
    out: dict[str, list[dict[str, Any]]] = {}
    for kind, ref in _sources:
        source = ref()
        if source is not None:
            read = getattr(source, "mergeable_stats", None) or source.stats
            out.setdefault(kind, []).append(read())
    return out
