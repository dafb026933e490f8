"""What Timing keeps per ``(method, route)`` series, and the document the report shows of it.

Kept apart from the middleware so the fleet report can rebuild and merge series from other
processes' snapshots without a middleware.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from asgi_perf.timing._histogram import LatencyHistogram
from asgi_perf.timing._slo import RouteObjectives

__all__ = ["OVERFLOW", "QUANTILES", "RouteStats", "timing_document"]

OVERFLOW = "__overflow__"
QUANTILES = (0.5, 0.95, 0.99)


class RouteStats:
    """What one ``(method, route)`` series has seen."""

    __slots__ = ("duration", "errors", "slo", "slow", "statuses", "ttfb")

    def __init__(self) -> None:
        self.slo: tuple[RouteObjectives, ...] | None = None  # the route's objectives, if any
        self.errors = 0
        self.slow = 0
        self.statuses: dict[int, int] = {}
        self.duration = LatencyHistogram()
        self.ttfb = LatencyHistogram()

    @property
    def count(self) -> int:
        """Every request has exactly one status: counting them again would cost a request."""
        return sum(self.statuses.values())

    def as_dict(self, method: str, route: str) -> dict[str, Any]:
        def summary(hist: LatencyHistogram) -> dict[str, float | None]:
            out = {f"p{round(q * 100)}": hist.quantile(q) for q in QUANTILES}
            out["max"] = hist.max if hist.count else None
            out["mean"] = hist.mean
            return out

        return {
            "method": method,
            "route": route,
            "count": self.count,
            "errors": self.errors,
            "slow": self.slow,
            "statuses": {str(code): n for code, n in sorted(self.statuses.items())},
            "duration_seconds": summary(self.duration),
            "duration_sum_seconds": self.duration.sum,
            "ttfb_seconds": summary(self.ttfb),
            "ttfb_count": self.ttfb.count,
            "ttfb_sum_seconds": self.ttfb.sum,
        }

    # -- the fleet report: a mergeable form (sketch buckets, not quantiles) ---------------------
    def state(self, method: str, route: str) -> dict[str, Any]:
        return {
            "method": method,
            "route": route,
            "errors": self.errors,
            "slow": self.slow,
            "statuses": {str(code): n for code, n in self.statuses.items()},
            "duration": self.duration.state(),
            "ttfb": self.ttfb.state(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RouteStats:
        series = cls()
        series.errors = int(state["errors"])
        series.slow = int(state["slow"])
        series.statuses = {int(code): int(n) for code, n in state["statuses"].items()}
        series.duration = LatencyHistogram.from_state(state["duration"])
        series.ttfb = LatencyHistogram.from_state(state["ttfb"])
        return series

    def merge(self, other: RouteStats) -> None:
        self.errors += other.errors
        self.slow += other.slow
        for code, n in other.statuses.items():
            self.statuses[code] = self.statuses.get(code, 0) + n
        self.duration.merge(other.duration)
        self.ttfb.merge(other.ttfb)


def timing_document(
    scalars: dict[str, Any], routes: Iterable[tuple[tuple[str, str], RouteStats]]
) -> dict[str, Any]:
    """The ``stats()`` document of one middleware, or of a fleet's merged series."""
    series = sorted(routes, key=lambda item: item[0])
    return {
        "requests": sum(stats.count for _, stats in series),
        **scalars,
        "routes": [stats.as_dict(method, route) for (method, route), stats in series],
    }
