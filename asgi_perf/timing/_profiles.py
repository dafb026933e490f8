"""Kept profiles: per route the slowest sampled requests, and the latest on-demand ones; bounded.

A finished profile is offered to the :class:`ProfileArchive` of its ``TimingMiddleware``. For
each ``(method, route)`` the archive keeps the ``keep`` slowest *sampled* profiles (a sample
faster than all of them is dropped before it is even encoded) and the ``keep`` latest
*on-demand* ones (their client holds the id). All of them together stay under ``max_bytes``:
past it the least telling profile goes first (the fastest sampled one, else the oldest
on-demand one), the newest is never the one dropped.

A profile is stored encoded: pyinstrument's session with identical stacks merged (times
summed) and every frame written once, as zlib-compressed JSON, so a hot loop of thousands of
samples costs a few hundred bytes. Merging loses the order of samples, so the HTML page's
timeline view shows aggregated time, not a timeline. Rendering (HTML, speedscope) happens when
the report asks, not on the request path.

The report finds every live archive through :func:`archives` and serves
``<report>/profiles`` (the list) and ``<report>/profiles/<id>`` (:func:`profiles_page`).
"""

from __future__ import annotations

import html
import os
import re
import time
import weakref
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import orjson

from asgi_perf._core.asgi import Scope, problem_body

__all__ = [
    "ProfileArchive",
    "ProfileRecord",
    "archives",
    "pack_session",
    "profiles_page",
    "render_html",
    "render_speedscope",
    "unpack_session",
]

ENTRY_OVERHEAD = 512  # bytes charged per kept profile besides its data (the record itself)
_ID = re.compile(r"^[0-9a-f]{16}$")
_archives: weakref.WeakSet[ProfileArchive] = weakref.WeakSet()


@dataclass(slots=True)
class ProfileRecord:
    """One kept profile and what the list shows about it."""

    id: str
    kind: str  # "sampled" | "demand"
    method: str
    route: str
    status: int
    duration: float  # seconds, measured like the timing layer's (to the last body message)
    time: float  # unix seconds when the request started
    samples: int
    data: bytes = b""  # pack_session() output
    memory: dict[str, Any] | None = None
    seq: int = 0  # arrival order, for "oldest"

    @property
    def size(self) -> int:
        return len(self.data) + ENTRY_OVERHEAD

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "method": self.method,
            "route": self.route,
            "status": self.status,
            "duration_seconds": self.duration,
            "time": self.time,
            "samples": self.samples,
            "bytes": len(self.data),
            "memory": self.memory,
            "pid": os.getpid(),
        }


@dataclass
class _Route:
    sampled: list[ProfileRecord] = field(default_factory=list)  # slowest first
    demand: list[ProfileRecord] = field(default_factory=list)  # oldest first


class ProfileArchive:
    """The kept profiles of one ``TimingMiddleware`` (see the module docstring)."""

    def __init__(self, keep: int, max_bytes: int) -> None:
        self.keep = keep
        self.max_bytes = max_bytes
        self.bytes = 0
        self.kept = 0
        self.dropped = 0
        self._routes: dict[tuple[str, str], _Route] = {}
        self._by_id: dict[str, ProfileRecord] = {}
        self._seq = 0
        _archives.add(self)

    def wants(self, kind: str, method: str, route: str, duration: float) -> bool:
        """Whether a profile would be kept: lets a fast sample skip encoding altogether."""
        if kind == "demand":
            return True
        entry = self._routes.get((method, route))
        return (
            entry is None or len(entry.sampled) < self.keep or duration > entry.sampled[-1].duration
        )

    def add(self, record: ProfileRecord) -> bool:
        """Keep ``record`` (already checked with :meth:`wants`), then enforce the bounds.

        ``False`` when the profile alone is larger than ``max_bytes`` (it is dropped).
        """
        if record.size > self.max_bytes:
            self.dropped += 1
            return False
        self._seq += 1
        record.seq = self._seq
        entry = self._routes.setdefault((record.method, record.route), _Route())
        if record.kind == "demand":
            entry.demand.append(record)
            if len(entry.demand) > self.keep:
                self._forget(entry.demand[0])
        else:
            entry.sampled.append(record)
            entry.sampled.sort(key=lambda r: r.duration, reverse=True)
            if len(entry.sampled) > self.keep:
                self._forget(entry.sampled[-1])
        self._by_id[record.id] = record
        self.bytes += record.size
        self.kept += 1
        while self.bytes > self.max_bytes:
            victim = self._least_telling(record)
            if victim is None:
                break
            self._forget(victim)
        return True

    def _least_telling(self, newest: ProfileRecord) -> ProfileRecord | None:
        sampled = [r for r in self._by_id.values() if r.kind == "sampled" and r is not newest]
        if sampled:
            return min(sampled, key=lambda r: r.duration)
        demand = [r for r in self._by_id.values() if r is not newest]
        return min(demand, key=lambda r: r.seq) if demand else None

    def _forget(self, record: ProfileRecord) -> None:
        entry = self._routes[(record.method, record.route)]
        (entry.demand if record.kind == "demand" else entry.sampled).remove(record)
        if not entry.demand and not entry.sampled:
            del self._routes[(record.method, record.route)]
        if self._by_id.pop(record.id, None) is not None:
            self.bytes -= record.size
        self.dropped += 1

    def get(self, profile_id: str) -> ProfileRecord | None:
        return self._by_id.get(profile_id)

    def records(self) -> list[ProfileRecord]:
        return list(self._by_id.values())

    def stats(self) -> dict[str, Any]:
        return {
            "kept": len(self._by_id),
            "bytes": self.bytes,
            "max_bytes": self.max_bytes,
            "keep_per_route": self.keep,
            "evicted": self.dropped,
        }


def archives() -> list[ProfileArchive]:
    """Every live archive of this process."""
    return list(_archives)


# -- encoding -------------------------------------------------------------------------------------
def pack_session(session_json: dict[str, Any]) -> tuple[bytes, int]:
    """pyinstrument ``Session.to_json()`` -> (compact bytes, sample count)."""
    frames: dict[str, int] = {}
    merged: dict[tuple[int, ...], float] = {}
    records = session_json.pop("frame_records")
    for stack, seconds in records:
        key = tuple(frames.setdefault(frame, len(frames)) for frame in stack)
        merged[key] = merged.get(key, 0.0) + seconds
    session_json["frames"] = list(frames)
    session_json["stacks"] = [[list(key), seconds] for key, seconds in merged.items()]
    return zlib.compress(orjson.dumps(session_json), 6), len(records)


def unpack_session(data: bytes) -> dict[str, Any]:
    """:func:`pack_session` reversed, ready for ``Session.from_json``."""
    doc: dict[str, Any] = orjson.loads(zlib.decompress(data))
    frames = doc.pop("frames")
    stacks = doc.pop("stacks")
    doc["frame_records"] = [([frames[i] for i in key], seconds) for key, seconds in stacks]
    return doc


def _session(record: ProfileRecord) -> Any:
    from pyinstrument.session import Session

    return Session.from_json(unpack_session(record.data))


def render_speedscope(record: ProfileRecord) -> bytes:
    from pyinstrument.renderers import SpeedscopeRenderer

    rendered: str = SpeedscopeRenderer().render(_session(record))
    return rendered.encode("utf-8")


def render_html(record: ProfileRecord) -> bytes:
    """pyinstrument's interactive page, with the request and its memory figures on top."""
    from pyinstrument.renderers import HTMLRenderer

    page: str = HTMLRenderer().render(_session(record))
    lines = [
        f"{record.method} {record.route} -> {record.status} in {record.duration * 1000:.1f} ms"
        f" ({record.kind}, id {record.id})"
    ]
    if record.memory:
        lines.append(f"peak traced memory: {record.memory.get('peak_bytes', 0) / 1e6:.1f} MB")
        for site in record.memory.get("sites", ()):
            where = f"{site['file']}:{site['line']}"
            lines.append(f"  {site['bytes'] / 1e6:9.2f} MB {site['count']:7d} blocks  {where}")
        if record.memory.get("note"):
            lines.append(str(record.memory["note"]))
    banner = (
        '<pre style="margin:0;padding:6px 10px;background:#223;color:#eee;font-size:12px">'
        + html.escape("\n".join(lines))
        + "</pre>"
    )
    return page.replace("<body>", "<body>" + banner, 1).encode("utf-8")


# -- report pages ---------------------------------------------------------------------------------
Page = tuple[int, bytes, bytes]  # status, body, content type
_FORMATS: dict[str, tuple[Callable[[ProfileRecord], bytes], bytes]] = {
    "html": (render_html, b"text/html; charset=utf-8"),
    "speedscope": (render_speedscope, b"application/json"),
    "json": (lambda r: orjson.dumps(r.summary()), b"application/json"),
}


def _problem(status: int, title: str, detail: str) -> Page:
    return status, problem_body(status, title, detail), b"application/problem+json"


def profiles_page(scope: Scope, route_path: str) -> Page | None:
    """The ``/profiles`` pages of the report, or ``None`` when ``route_path`` is another page.

    ``…/profiles``: the kept profiles of every archive, newest first (JSON).
    ``…/profiles/<id>``: one profile, HTML by default, ``?format=speedscope`` or ``?format=json``.
    """
    parts = route_path.rstrip("/").split("/")
    if parts[-1] == "profiles":
        records = sorted(
            (r for archive in archives() for r in archive.records()),
            key=lambda r: r.time,
            reverse=True,
        )
        document = {
            "pid": os.getpid(),
            "time": time.time(),
            "profiles": [r.summary() for r in records],
        }
        return 200, orjson.dumps(document), b"application/json"
    if len(parts) < 2 or parts[-2] != "profiles":
        return None
    profile_id = parts[-1]
    query = dict(parse_qsl((scope.get("query_string") or b"").decode("latin-1")))
    fmt = query.get("format", "html").lower()
    if fmt not in _FORMATS:
        return _problem(400, "Bad Request", "format must be one of: " + ", ".join(_FORMATS))
    record = None
    if _ID.match(profile_id):
        record = next((r for a in archives() if (r := a.get(profile_id)) is not None), None)
    if record is None:
        return _problem(404, "Not Found", f"no kept profile {profile_id!r} in this process")
    render, content_type = _FORMATS[fmt]
    return 200, render(record), content_type
