"""What each middleware's statistics mean to Prometheus: counters, gauges and their labels.

Monotonic counts are counters (exported with ``_total``); what varies within one count (the
content-coding, the outcome, the middleware a store serves) is a label, never part of a name.
Ratios and echoed settings are left out: Prometheus computes ratios from the counters, and a
setting is not a measurement. A kind not listed here (a middleware from elsewhere) falls back to
one gauge per numeric statistic (:func:`asgi_perf._report.prometheus.exposition`).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["METRICS", "Metric"]


@dataclass(frozen=True, slots=True)
class Metric:
    """One family's samples from one place in a ``stats()`` document.

    ``path`` leads to a number; with ``by``, to a mapping whose keys become that label (and
    whose values are numbers, or mappings holding the number under ``field``).
    """

    family: str  # after "asgi_perf_", before "_total"
    type: str  # "counter" or "gauge"
    help: str
    path: tuple[str, ...]
    labels: tuple[tuple[str, str], ...] = ()
    by: str | None = None
    field: str | None = None
    scale: float = 1.0


def _outcomes(family: str, help_: str, keys: dict[str, str]) -> list[Metric]:
    return [
        Metric(family, "counter", help_, (key,), (("outcome", outcome),))
        for key, outcome in keys.items()
    ]


def _store(middleware: str, store: tuple[str, ...], outage: tuple[str, ...]) -> list[Metric]:
    label = (("middleware", middleware),)
    return [
        Metric(
            "store_round_trips",
            "counter",
            "Store round trips, by the middleware that made them.",
            (*store, "round_trips"),
            label,
        ),
        Metric(
            "store_failures",
            "counter",
            "Store calls that failed, or were skipped while the circuit was open.",
            (*outage, "failures"),
            label,
        ),
        Metric(
            "store_incidents",
            "counter",
            "Store outages (each logged once).",
            (*outage, "incidents"),
            label,
        ),
        Metric("store_down", "gauge", "1 while the store is failing.", (*outage, "down"), label),
        Metric(
            "store_circuit_open",
            "gauge",
            "1 while calls to the store are skipped but for probes.",
            (*outage, "open"),
            label,
        ),
    ]


def _counter(family: str, help_: str, *path: str, scale: float = 1.0) -> Metric:
    return Metric(family, "counter", help_, path, scale=scale)


METRICS: dict[str, list[Metric]] = {
    "cache": [
        *_outcomes(
            "cache_lookups",
            "Requests the cache looked up, by outcome.",
            {"hits": "hit", "stale_hits": "stale_hit", "misses": "miss", "bypasses": "bypass"},
        ),
        _counter("cache_stores", "Responses stored.", "stores"),
        _counter("cache_not_modified", "304 answers made by the cache.", "not_modified"),
        _counter("cache_coalesced", "Requests that waited for another's fill.", "coalesced"),
        _counter(
            "cache_hit_for_miss", "Lookups skipped for a known-uncacheable key.", "hit_for_miss"
        ),
        _counter(
            "cache_stale_if_error", "Stale entries served as the app failed.", "stale_if_error"
        ),
        _counter(
            "cache_lock_timeouts", "Waits for another's fill that timed out.", "lock_timeouts"
        ),
        Metric(
            "cache_uncacheable",
            "counter",
            "Responses not stored, by reason.",
            ("uncacheable",),
            by="reason",
        ),
        _counter("cache_evictions", "Entries evicted from the memory store.", "evictions"),
        Metric("cache_entries", "gauge", "Entries in the memory store.", ("entries",)),
        Metric("cache_bytes", "gauge", "Bytes held by the memory store.", ("bytes",)),
        *_store("cache", ("store",), ("outage",)),
    ],
    "compression": [
        Metric(
            "compression_responses",
            "counter",
            "Responses compressed, by content-coding.",
            ("compressed",),
            by="coding",
        ),
        _counter("compression_streams", "Streamed responses compressed.", "streams"),
        _counter("compression_threaded", "Chunks compressed in a worker thread.", "threaded"),
        _counter("compression_input_bytes", "Bytes before compression.", "bytes_in"),
        _counter("compression_output_bytes", "Bytes after compression.", "bytes_out"),
        Metric(
            "compression_codec_failures",
            "counter",
            "Codec errors (the response went out uncompressed), by content-coding.",
            ("codec_errors",),
            by="coding",
            field="failures",
        ),
    ],
    "ratelimit": [
        *_outcomes(
            "ratelimit_decisions",
            "Rate-limit decisions, by outcome.",
            {"allowed": "allowed", "refused": "refused", "exempt": "exempt"},
        ),
        Metric(
            "ratelimit_keys", "gauge", "Counters held by the memory limiter.", ("limiter", "keys")
        ),
        _counter(
            "ratelimit_evictions",
            "Counters evicted from the memory limiter.",
            "limiter",
            "evictions",
        ),
        *_store("ratelimit", ("limiter", "store"), ("outage",)),
    ],
    "dedup": [
        _counter("dedup_requests", "Requests dedup considered.", "requests"),
        *_outcomes(
            "dedup_outcomes",
            "What dedup did, by outcome.",
            {
                "leaders": "leader",
                "hits": "hit",
                "coalesced": "coalesced",
                "released": "released",
                "timeouts": "timeout",
                "not_shared": "not_shared",
                "passes": "pass",
                "passed_through": "passed_through",
            },
        ),
        *_outcomes(
            "idempotency_outcomes",
            "Idempotency-Key requests answered without the app, by outcome.",
            {
                "idempotent_replays": "replay",
                "conflicts": "conflict",
                "mismatches": "mismatch",
                "rejected": "rejected",
            },
        ),
        *_store("dedup", ("store",), ("outage",)),
    ],
    "queries": [
        _counter("queries_requests", "Requests whose queries were recorded.", "requests"),
        _counter("queries_statements", "Database queries run.", "queries"),
        _counter(
            "queries_duration_seconds", "Time spent in queries.", "query_time_ms", scale=0.001
        ),
        _counter(
            "queries_requests_with_n_plus_one",
            "Requests with at least one N+1 finding.",
            "requests_with_n_plus_one",
        ),
    ],
}
