"""The latency sketch: p50/p95/p99 within 1% of numpy's exact percentiles over 100,000
latencies of several shapes, bounded memory whatever is recorded."""

from __future__ import annotations

import math

import numpy as np
import pytest

from asgi_perf.timing._histogram import BATCH, MAX_VALUE, MIN_VALUE, LatencyHistogram


def distributions() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(20261123)
    n = 100_000
    return {
        "lognormal": rng.lognormal(mean=-4.0, sigma=1.2, size=n),
        "exponential": rng.exponential(scale=0.05, size=n) + 0.0005,
        "uniform": rng.uniform(0.001, 2.0, size=n),
        "bimodal": np.concatenate(
            [rng.normal(0.002, 0.0003, 70_000).clip(1e-4), rng.normal(0.8, 0.1, 30_000).clip(0.1)]
        ),
        "pareto tail": (rng.pareto(1.5, size=n) + 1) * 0.003,
    }


@pytest.mark.parametrize(("name", "values"), list(distributions().items()))
def test_percentiles_within_one_percent_of_numpy(name: str, values: np.ndarray) -> None:
    sketch = LatencyHistogram()
    for value in values.tolist():
        sketch.record(value)
    assert sketch.count == len(values)
    for q in (0.5, 0.95, 0.99):
        exact = float(np.percentile(values, q * 100))
        estimate = sketch.quantile(q)
        assert estimate is not None
        assert abs(estimate - exact) / exact <= 0.01, (name, q, estimate, exact)
    assert sketch.max == values.max()
    assert sketch.sum == pytest.approx(values.sum())
    assert sketch.mean == pytest.approx(values.mean())


def test_memory_is_bounded_by_the_value_range_not_the_count() -> None:
    sketch = LatencyHistogram()
    rng = np.random.default_rng(7)
    for value in np.exp(rng.uniform(math.log(1e-9), math.log(1e6), 200_000)).tolist():
        sketch.record(value)
    gamma = (1 + sketch.relative_accuracy) / (1 - sketch.relative_accuracy)
    bound = math.ceil(math.log(MAX_VALUE) / math.log(gamma)) - math.ceil(
        math.log(MIN_VALUE) / math.log(gamma)
    )
    assert sketch.buckets <= bound + 1 <= 2300  # 8 bytes each: under 20 KB
    narrow = LatencyHistogram()
    for value in rng.uniform(0.010, 0.020, 100_000).tolist():
        narrow.record(value)
    assert narrow.buckets <= 70  # only the range actually seen is allocated


def test_empty_single_and_clamped_values() -> None:
    sketch = LatencyHistogram()
    assert sketch.quantile(0.5) is None and sketch.mean is None
    sketch.record(0.0123)
    for q in (0.0, 0.5, 0.99, 1.0):
        assert sketch.quantile(q) == pytest.approx(0.0123, rel=0.005)
    sketch.record(0.0)  # below the range: counted, clamped
    sketch.record(10_000.0)  # above the range: counted, clamped, max kept exactly
    assert sketch.count == 3 and sketch.max == 10_000.0
    assert sketch.quantile(1.0) == 10_000.0
    assert sketch.quantile(0.0) == 0.0


def test_growth_in_both_directions_keeps_counts() -> None:
    sketch = LatencyHistogram()
    for value in (0.1, 0.001, 1.0, 0.00001, 10.0):
        sketch.record(value)
    assert [sketch.quantile(q) for q in (0.0, 0.25, 0.5, 0.75, 1.0)] == pytest.approx(
        [0.00001, 0.001, 0.1, 1.0, 10.0], rel=0.005
    )


def test_accuracy_option_is_validated() -> None:
    with pytest.raises(ValueError):
        LatencyHistogram(0.0)
    with pytest.raises(ValueError):
        LatencyHistogram(1.5)


def _bucket_counts(sketch: LatencyHistogram) -> dict[int, int]:
    return {
        position + sketch._offset: n for position, n in enumerate(sketch._bins) if n
    }  # the sketch's own buckets (private: this test is about how values are folded)


def test_batches_fold_like_one_value_at_a_time_and_stay_bounded() -> None:
    rng = np.random.default_rng(11)
    values = rng.lognormal(mean=-6.0, sigma=0.8, size=3 * BATCH + 17).tolist()
    values += [0.0, -1.0, MIN_VALUE, MAX_VALUE, 1e9, math.inf]  # every clamp
    batched, single = LatencyHistogram(), LatencyHistogram()
    gamma = (1 + single.relative_accuracy) / (1 - single.relative_accuracy)
    for value in values:
        batched.record(value)
        assert batched.held < BATCH  # folded as soon as a batch is full
        assert len(batched.pending) == BATCH  # its slots, made once
        single.record(value)
        single.flush()  # a batch of one: the bucket of each value computed on its own
    assert batched.count == single.count == len(values)
    assert batched.max == single.max == math.inf and batched.min == single.min == -1.0
    # a value on a bucket edge may land in either neighbour (float rounding): compare the
    # counts up to one edge move per bucket, and every quantile within the sketch's accuracy
    a, b = _bucket_counts(batched), _bucket_counts(single)
    assert sum(a.values()) == sum(b.values()) == len(values)
    assert sum(abs(a.get(i, 0) - b.get(i, 0)) for i in a.keys() | b.keys()) <= 2
    for q in (0.01, 0.25, 0.5, 0.9, 0.99):
        x, y = batched.quantile(q), single.quantile(q)
        assert x is not None and y is not None and abs(x - y) <= (gamma - 1) * y


def test_nan_is_counted_not_fatal() -> None:
    sketch = LatencyHistogram()
    for value in (0.001, math.nan, 0.002):
        sketch.record(value)
    assert sketch.count == 3 and sketch.max == 0.002
    # the NaN ranks lowest (clamped to the 1 µs floor): the median is the 1 ms value
    accuracy = sketch.relative_accuracy
    assert sketch.quantile(0.5) == pytest.approx(0.001, rel=accuracy)
    assert sketch.quantile(0.25) == pytest.approx(1e-6, rel=accuracy)
