"""In-process scenarios for the timing layer's profiling: what it costs off, idle, sampled, asked.

- ``profiling-off``: ``TimingMiddleware`` as it is, next to the same with every profiling option
  set but profiling off (and an SLO on another route): the two must cost the same. Then
  profiling on with nobody asking (the layer alone), at a 1% sample rate, and at 1% with memory
  profiling (``tracemalloc`` started and stopped around each sampled request).
- ``profiling-on-demand``: every request asks (``X-Asgi-Perf-Profile: 1`` from an allowed
  client), so every request is profiled and its profile kept: the cost of one profiled request.
"""

from __future__ import annotations

from typing import Any

from .apps import BODIES
from .driver import Request
from .scenarios import (
    Builder,
    Scenario,
    Variant,
    floor,
    has_header,
    header_absent,
    identity,
    ours,
    raw,
    status,
)

__all__ = ["profiling_scenarios", "sampled"]

TRUSTED = "10.0.0.0/8"  # the driver's client is 10.1.2.3


def sampled(name: str, app: Builder, **options: Any) -> Variant:
    """Timing with profiling on for a client that may not ask: only sampling profiles."""
    return Variant(
        name,
        "ours",
        ours("timing", "TimingMiddleware", app, profiling=True, **options),
        header_absent("x-asgi-perf-profile-id"),
    )


def profiling_scenarios() -> list[Scenario]:
    """The two scenarios; the bare app is ``raw()`` (200 B) as in the ``timing`` scenario."""
    b200 = raw()
    # every variant hides Server-Timing from the driver's client (which therefore may not ask
    # for a profile either), so they all do the same header work and differ by profiling only
    quiet = {"otel": "off", "expose_server_timing": False}
    timing = ours("timing", "TimingMiddleware", b200, **quiet)
    off = [
        Variant("bare app", "bare", b200),
        Variant("floor middleware", "floor", floor(b200), identity(BODIES["200B"])),
        Variant("asgi_perf timing", "ours", timing, status(200)),
        Variant(
            "timing, profiling options set, profiling off",
            "ours",
            ours(
                "timing",
                "TimingMiddleware",
                b200,
                profiling=False,
                profile_sample_rate=0.01,
                memory_profiling=True,
                slos="GET /elsewhere: p99<1s",
                **quiet,
            ),
            status(200),
        ),
        sampled("timing, profiling on, nobody asks", b200, **quiet),
        sampled("timing, profiling on, 1% sampled", b200, profile_sample_rate=0.01, **quiet),
        sampled(
            "timing, profiling on, 1% sampled + memory",
            b200,
            profile_sample_rate=0.01,
            memory_profiling=True,
            **quiet,
        ),
    ]
    asked = Request(headers=(("x-asgi-perf-profile", "1"),))
    allowed = {"otel": "off", "expose_server_timing": TRUSTED}
    demand = [
        Variant("bare app", "bare", b200),
        Variant(
            "asgi_perf timing",
            "ours",
            ours("timing", "TimingMiddleware", b200, **allowed),
            header_absent("x-asgi-perf-profile-id"),
        ),
        Variant(
            "timing, every request profiled on demand",
            "ours",
            ours("timing", "TimingMiddleware", b200, profiling=True, **allowed),
            has_header("x-asgi-perf-profile-id"),
        ),
    ]
    return [
        Scenario(
            "profiling-off",
            "timing profiling: off (must cost what timing costs), idle, 1% sampled",
            Request(),
            off,
        ),
        Scenario(
            "profiling-on-demand",
            "timing profiling: every request asks for a profile (X-Asgi-Perf-Profile: 1)",
            asked,
            demand,
        ),
    ]
