"""A bounded-memory latency histogram with a relative-error guarantee on every quantile.

Algorithm: the log-bucket sketch of DDSketch (Masson, Rim, Lee, VLDB 2019) with a dense,
growing store. A value ``x`` goes to bucket ``ceil(log(x) / log(gamma))`` with
``gamma = (1 + a) / (1 - a)``; a bucket covers ``(gamma**(i-1), gamma**i]`` and answers with the
point of that interval whose relative distance to both ends is ``a``. So any quantile is within
relative error ``a`` of the true value of that rank, whatever the distribution.

Why this one: latency percentiles are read as *relative* figures (p99 of 2 ms vs 200 ms), which is
exactly what the log buckets guarantee; recording is a ``list.append``, folded into the buckets
every :data:`BATCH` values (or when read) at the cost of at most a ``log`` per bucket in the
batch (no merging step like t-digest, no reservoir that loses the tail); and memory is bounded
by the value range, not by the number of requests. With ``a = 0.5%`` and the range 1 µs - 1 h
clamped, a sketch holds at most 2,200 eight-byte counters (17.6 KB) and in practice only the few
hundred buckets between its fastest and slowest request. Values outside the range are clamped to
its ends; the exact minimum, maximum, sum and count are kept on the side.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_right
from typing import Any

__all__ = ["BATCH", "LatencyHistogram"]

_ceil, _log = math.ceil, math.log  # module globals: one lookup each on the hot path

DEFAULT_ACCURACY = 0.005
MIN_VALUE = 1e-6  # seconds; faster is clamped (an in-process call takes longer)
MAX_VALUE = 3600.0  # seconds; slower is clamped
BATCH = 256  # values held before they are folded (a bounded list: 256 floats, ~8 KB)


class LatencyHistogram:
    """Log-bucket sketch of positive durations (seconds); quantiles within ``accuracy``.

    Values are folded into the buckets in batches: :meth:`record` writes into :attr:`pending`
    (a list of :data:`BATCH` slots made once, the first :attr:`held` of them in use) and
    every reader (:meth:`quantile`, :attr:`count`, :attr:`sum`, :attr:`min`,
    :attr:`max`, …) folds what is pending first, so readers always see every value. A
    batch costs about half of recording its values one by one (the bucket indices are
    computed in one comprehension and counted in C), and it is what a request pays on the
    hot path: a slot written and a count moved, no call. A hot path may do that itself if
    it calls :meth:`flush` once :attr:`held` reaches :data:`BATCH`.
    """

    __slots__ = (
        "_bins",
        "_count",
        "_gamma",
        "_hi",
        "_inv_log_gamma",
        "_lo",
        "_max",
        "_min",
        "_offset",
        "_sum",
        "held",
        "pending",
        "relative_accuracy",
    )

    def __init__(self, relative_accuracy: float = DEFAULT_ACCURACY) -> None:
        if not 0.0 < relative_accuracy < 1.0:
            raise ValueError("relative_accuracy must be between 0 and 1")
        self.relative_accuracy = relative_accuracy
        self._gamma = (1.0 + relative_accuracy) / (1.0 - relative_accuracy)
        self._inv_log_gamma = 1.0 / math.log(self._gamma)
        self._lo = math.ceil(math.log(MIN_VALUE) * self._inv_log_gamma)
        self._hi = math.ceil(math.log(MAX_VALUE) * self._inv_log_gamma)
        self._bins: array[int] = array("Q")
        self._offset = 0  # bucket index of _bins[0]
        self._count = 0
        self._sum = 0.0
        self._min = math.inf
        self._max = 0.0
        self.pending: list[float] = [0.0] * BATCH
        self.held = 0  # values in pending, not folded yet

    def record(self, value: float) -> None:
        """Add one duration in seconds (clamped into 1 µs - 1 h)."""
        held = self.held
        self.pending[held] = value
        self.held = held = held + 1
        if held == BATCH:
            self.flush()

    def flush(self) -> None:
        """Fold the pending values into the buckets.

        The batch is sorted, then each bucket takes its whole run of values at once (one
        ``bisect`` for the bucket's upper end), so the ``log`` is paid at most per bucket
        present, not per value, and not for a bucket next to the previous one: a route's
        latencies sit in a few dozen neighbouring buckets. The bins are grown once, to the
        batch's two ends.
        """
        if not self.held:
            return
        values = self.pending[: self.held]  # (a copy: the slots are written again)
        self.held = 0
        total = sum(values)
        if total != total:  # a NaN (an odd injected clock): kept in the count, bucketed lowest
            values = [value if value == value else 0.0 for value in values]
        values.sort()
        size = len(values)
        self._count += size
        self._sum += total
        if values[0] < self._min:
            self._min = values[0]
        if values[-1] > self._max:
            self._max = values[-1]
        gamma, inv = self._gamma, self._inv_log_gamma
        # grown to the batch's two ends at once, not a bucket at a time as the loop meets them
        self._add(self._index(values[0]), 0)
        self._add(self._index(values[-1]), 0)
        i = 0
        if values[0] <= MIN_VALUE:
            i = bisect_right(values, MIN_VALUE)
            self._add(self._lo, i)
        bins, offset = self._bins, self._offset
        end = len(bins)
        index, bound = 0, 0.0  # the last bucket taken and its upper end (none yet)
        while i < size:
            value = values[i]
            if value >= MAX_VALUE:
                self._add(self._hi, size - i)
                return
            # latencies sit in neighbouring buckets: the next one up needs no log
            index = index + 1 if value <= bound * gamma else _ceil(_log(value) * inv)
            bound = gamma**index
            # lo=i+1: a rounding of the bound below value cannot stall the loop
            j = bisect_right(values, bound, i + 1)
            position = index - offset
            if 0 <= position < end:
                bins[position] += j - i
            else:  # not reached unless rounding puts a value outside its batch's ends
                self._add(index, j - i)
                bins, offset, end = self._bins, self._offset, len(self._bins)
            i = j

    def _index(self, value: float) -> int:
        """The bucket of ``value``, clamped into the range."""
        if value <= MIN_VALUE:
            return self._lo
        if value >= MAX_VALUE:
            return self._hi
        return _ceil(_log(value) * self._inv_log_gamma)

    def _add(self, index: int, n: int) -> None:
        position = index - self._offset
        if not 0 <= position < len(self._bins):
            self._grow(index)
            position = index - self._offset
        self._bins[position] += n

    def _grow(self, index: int) -> None:
        bins = self._bins
        if not bins:
            self._offset = index
            bins.append(0)
        elif index < self._offset:
            bins[0:0] = array("Q", bytes(8 * (self._offset - index)))
            self._offset = index
        else:
            bins.frombytes(bytes(8 * (index - self._offset - len(bins) + 1)))

    @property
    def count(self) -> int:
        return self._count + self.held

    @property
    def sum(self) -> float:
        self.flush()
        return self._sum

    @property
    def min(self) -> float:
        """The smallest value recorded (``inf`` when empty)."""
        self.flush()
        return self._min

    @property
    def max(self) -> float:
        """The largest value recorded (``0.0`` when empty)."""
        self.flush()
        return self._max

    def quantile(self, q: float) -> float | None:
        """The value at quantile ``q`` (0..1), or ``None`` when empty.

        Rank convention: the ``floor(q * (count - 1))``-th smallest value, the lower of the two
        order statistics numpy's default linear interpolation blends.
        """
        self.flush()
        if self._count == 0:
            return None
        if q <= 0.0:
            return self._min
        if q >= 1.0:
            return self._max
        rank = math.floor(q * (self._count - 1))
        seen = 0
        for position, n in enumerate(self._bins):
            seen += n
            if seen > rank:
                index = position + self._offset
                value = 2.0 * self._gamma**index / (self._gamma + 1.0)
                return min(max(value, self._min), self._max)
        return self._max  # pragma: no cover - counts always sum to count

    @property
    def mean(self) -> float | None:
        self.flush()
        return self._sum / self._count if self._count else None

    @property
    def buckets(self) -> int:
        """How many counters the sketch holds (its memory is 8 bytes each)."""
        self.flush()
        return len(self._bins)

    # -- merging (the fleet report) -------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """A JSON-ready copy: the buckets from their first index, and the exact side figures.

        Two sketches of one accuracy merge exactly bucket by bucket (:meth:`merge`), which is
        what lets processes publish these and a report combine them into one fleet's quantiles.
        """
        self.flush()
        return {
            "accuracy": self.relative_accuracy,
            "offset": self._offset,
            "bins": self._bins.tolist(),
            "count": self._count,
            "sum": self._sum,
            "min": self._min if self._count else None,
            "max": self._max,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LatencyHistogram:
        """The sketch :meth:`state` described (``ValueError``/``KeyError`` on a malformed one)."""
        sketch = cls(float(state["accuracy"]))
        bins = array("Q", (int(n) for n in state["bins"]))
        if bins:
            sketch._offset = int(state["offset"])
            sketch._bins = bins
        sketch._count = int(state["count"])
        sketch._sum = float(state["sum"])
        sketch._min = math.inf if state["min"] is None else float(state["min"])
        sketch._max = float(state["max"])
        return sketch

    def merge(self, other: LatencyHistogram) -> None:
        """Add every value ``other`` holds, as if recorded here (same accuracy required)."""
        if other.relative_accuracy != self.relative_accuracy:
            raise ValueError("only sketches of the same relative accuracy merge exactly")
        self.flush()
        other.flush()
        if not other._bins:
            return
        first, last = other._offset, other._offset + len(other._bins) - 1
        self._add(first, 0)
        self._add(last, 0)
        start = first - self._offset
        bins = self._bins
        for position, n in enumerate(other._bins):
            if n:
                bins[start + position] += n
        self._count += other._count
        self._sum += other._sum
        self._min = min(self._min, other._min)
        self._max = max(self._max, other._max)

    def cumulative(self, bounds: list[float]) -> list[int]:
        """How many values fall at or below each bound (ascending): fixed histogram buckets.

        A value counts by its bucket's representative value, so a bound is honoured to within
        the sketch's relative accuracy; the counts are a sum over buckets, hence the counts of
        merged sketches are the sums of the counts of their parts.
        """
        self.flush()
        out: list[int] = []
        seen = 0
        position = 0
        bins, gamma = self._bins, self._gamma
        scale = 2.0 / (gamma + 1.0)
        for bound in bounds:
            while position < len(bins) and scale * gamma ** (position + self._offset) <= bound:
                seen += bins[position]
                position += 1
            out.append(seen)
        return out
