"""Peak traced memory and top allocation sites of a profiled request (stdlib ``tracemalloc``).

``tracemalloc`` is process-wide and slows every allocation while it traces, so it is started
only for a memory-profiled request and stopped after it. One request is traced at a time; a
profiled request that arrives meanwhile gets its CPU profile and a ``note`` instead of memory
figures, and so does every request while something else (``PYTHONTRACEMALLOC``, a debugger)
has tracemalloc running: that session is not ours to reset or to snapshot (a snapshot of a
whole process's allocations takes seconds). Allocations of other requests running at the same
time are counted too (the figures are the process's during that request).

- ``peak_bytes``: the highest traced memory during the request (tracing starts with it):
  exact, whenever the peak happened.
- ``sites``: the top source lines by bytes allocated and still held, at the highest point a
  watcher thread saw (it polls the traced total every few milliseconds and snapshots each new
  high mark) or at the end, whichever held more. Memory held for less than a poll without the
  request giving up the GIL can be missing from the sites, never from the peak.
"""

from __future__ import annotations

import threading
import tracemalloc
from typing import Any

__all__ = ["MemoryTracer"]

POLL_SECONDS = 0.002
MIN_STEP = 256 * 1024  # a new snapshot when traced memory grew by this much since the last one
_IGNORED = (
    tracemalloc.Filter(False, tracemalloc.__file__),
    tracemalloc.Filter(False, threading.__file__),
    tracemalloc.Filter(False, __file__),
    tracemalloc.Filter(False, "*/pyinstrument/*"),  # the CPU profiler's own samples
)


class MemoryTracer:
    """Hands out at most one :class:`MemoryTrace` at a time."""

    def __init__(self, top: int = 10) -> None:
        self.top = top
        self._busy = threading.Lock()

    def begin(self) -> MemoryTrace | str:
        """Start tracing one request; or why not (another one is being traced, or tracemalloc
        was started by someone else)."""
        if not self._busy.acquire(blocking=False):
            return "memory not traced: another request was being traced"
        try:
            if tracemalloc.is_tracing():
                self._busy.release()
                return "memory not traced: tracemalloc was already running (started elsewhere)"
            return MemoryTrace(self)
        except BaseException:
            self._busy.release()
            raise


class MemoryTrace:
    """One request being traced: call :meth:`end` exactly once."""

    def __init__(self, tracer: MemoryTracer) -> None:
        self._tracer = tracer
        tracemalloc.start(1)
        self._baseline = tracemalloc.get_traced_memory()[0]
        self._best: tracemalloc.Snapshot | None = None
        self._best_bytes = self._baseline
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="asgi-perf-memory", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            current = tracemalloc.get_traced_memory()[0]
            if current >= self._best_bytes + max(MIN_STEP, self._best_bytes // 10):
                self._take(current)

    def _take(self, current: int) -> None:
        snapshot = tracemalloc.take_snapshot()
        self._best = snapshot
        self._best_bytes = current

    def end(self) -> dict[str, Any]:
        """Stop tracing; the request's peak and top sites."""
        try:
            self._stop.set()
            self._watcher.join()
            current, peak = tracemalloc.get_traced_memory()
            if self._best is None or current > self._best_bytes:
                self._take(current)
            return {"peak_bytes": max(0, peak - self._baseline), "sites": self._sites()}
        finally:
            tracemalloc.stop()
            self._tracer._busy.release()

    def _sites(self) -> list[dict[str, Any]]:
        assert self._best is not None
        stats = self._best.filter_traces(_IGNORED).statistics("lineno")
        return [
            {
                "file": stat.traceback[0].filename,
                "line": stat.traceback[0].lineno,
                "bytes": stat.size,
                "count": stat.count,
            }
            for stat in stats[: self._tracer.top]
        ]
