"""In-process measurement: interleaved rounds, medians, ratios to the bare app of the same round.

Each round times the bare app, then each variant followed by the bare app again
(bare, v1, bare, v2, bare …); a variant is compared with the mean of the two bare segments around
it, so drift of a busy machine cancels. Reported: median seconds per request over the rounds,
median ratio to bare, median overhead (variant - bare) and that overhead in floors (the floor
middleware's overhead measured in the same scenario where it is one of the variants).
"""

from __future__ import annotations

import gc
import statistics
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any

from .counts import COUNTED, calls_per_request
from .driver import count_redis_round_trips, one, timed
from .progress import Progress
from .scenarios import Context, Scenario, Unavailable

__all__ = ["Settings", "VariantResult", "apply_floors", "run_scenarios", "steps"]


@dataclass
class Settings:
    rounds: int = 7
    segment: float = 0.15  # seconds per timed segment
    warmup: float = 0.05
    requests: int | None = None  # fixed requests per segment (smoke tests)
    min_requests: int = 20
    max_requests: int = 50_000
    collect: bool = True  # gc.collect() before each timed segment
    counts_only: bool = False  # deterministic counts only, no timing
    counted: int = COUNTED  # requests whose Python calls are counted, per variant


@dataclass
class VariantResult:
    scenario: str
    name: str
    role: str
    status: str = "ok"  # ok | not available | check failed | error
    reason: str = ""
    requests: int = 0
    rounds: int = 0
    us: float | None = None  # median µs per request
    bare_us: float | None = None
    ratio: float | None = None  # median of per-round variant / bare
    overhead_us: float | None = None  # median of per-round variant - bare
    floors: float | None = None  # overhead / floor overhead
    floor_us: float | None = None  # the floor overhead used (same scenario where measured)
    body_bytes: int | None = None
    round_trips: float | None = None  # Redis round trips per request
    calls: float | None = None  # Python calls per request beyond the bare app's (memory only)
    samples: list[tuple[float, float]] = field(default_factory=list)  # (variant µs, bare µs)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _Live:
    def __init__(self, result: VariantResult, app: Any, offset: int, trips: bool) -> None:
        self.result = result
        self.app = app
        self.next = offset
        self.count_trips = trips  # count Redis round trips in every timed segment
        self.trips = 0
        self.trip_requests = 0

    def take(self, n: int) -> int:
        start = self.next
        self.next += n
        return start


async def _prepare(live: _Live, scenario: Scenario, check: Any, prime: int) -> None:
    request = scenario.request
    for _ in range(prime):
        await one(live.app, request, live.take(1))
    response = await one(live.app, request, live.take(1))
    live.result.body_bytes = len(response.body)
    if check is not None:
        problem = check(response)
        if problem:
            live.result.status = "check failed"
            live.result.reason = problem


async def run_scenario(
    scenario: Scenario, ctx: Context, settings: Settings, progress: Progress
) -> list[VariantResult]:
    results: list[VariantResult] = []
    lives: list[_Live] = []
    ctx.scenario = scenario.id
    for index, variant in enumerate(scenario.variants):
        result = VariantResult(scenario.id, variant.name, variant.role)
        results.append(result)
        try:
            app = variant.build(ctx)
        except Unavailable as exc:
            result.status, result.reason = "not available", str(exc)
            continue
        except ImportError as exc:  # e.g. the FastAPI scenario without fastapi installed
            result.status, result.reason = "not available", f"{exc}"
            continue
        except Exception as exc:  # a constructor that raises: report it, keep going
            result.status, result.reason = "error", f"construction failed: {exc!r}"
            continue
        live = _Live(result, app, (index + 1) * 10**9, variant.round_trips)
        try:
            await _prepare(live, scenario, variant.check, variant.prime)
        except Exception as exc:
            result.status, result.reason = "error", f"request failed: {exc!r}"
            traceback.print_exc()
            continue
        if result.status == "ok":
            lives.append(live)
    if not lives or lives[0].result.role != "bare":
        for r in results:
            if r.status == "ok":
                r.status, r.reason = "error", "the bare app did not run"
        progress.step(
            scenario.id, settings.rounds * 2 * (len(scenario.variants) - 1) + settings.rounds
        )
        return results

    await _count(lives, scenario, settings.counted)
    if settings.counts_only:
        progress.step(scenario.id, steps([scenario], settings))
        return results
    gc.collect()
    gc.freeze()  # apps and imports are permanent: the per-segment collections stay cheap
    request = scenario.request
    counts: dict[int, int] = {}
    for live in lives:  # warm up and calibrate: each segment should last about settings.segment
        try:
            per = await timed(live.app, request, 5, live.take(5), settings.collect)
            warm = max(1, min(settings.max_requests, int(settings.warmup / max(per, 1e-7))))
            per = await timed(live.app, request, warm, live.take(warm), settings.collect)
        except Exception as exc:
            live.result.status, live.result.reason = "error", f"request failed: {exc!r}"
            continue
        if settings.requests:
            counts[id(live)] = settings.requests
        else:
            n = int(settings.segment / max(per, 1e-7))
            counts[id(live)] = max(settings.min_requests, min(settings.max_requests, n))
        live.result.requests = counts[id(live)]
    lives = [live for live in lives if live.result.status == "ok"]
    bare, others = lives[0], lives[1:]

    samples: dict[int, list[tuple[float, float]]] = {id(live): [] for live in others}
    skipped = (len(scenario.variants) - 1 - len(others)) * 2 * settings.rounds
    progress.step(scenario.id, skipped)
    for round_no in range(settings.rounds):
        turn = round_no % len(others) if others else 0
        order = others[turn:] + others[:turn]
        before = await _segment(bare, request, counts, settings.collect)
        progress.step(scenario.id)
        for live in order:
            try:
                t = await _segment(live, request, counts, settings.collect)
            except Exception as exc:
                live.result.status, live.result.reason = "error", f"request failed: {exc!r}"
                t = float("nan")
            after = await _segment(bare, request, counts, settings.collect)
            progress.step(scenario.id, 2)
            samples[id(live)].append((t, (before + after) / 2))
            before = after
    for live in others:
        _summarize(live.result, samples[id(live)])
    bare_times = [s[1] for live in others for s in samples[id(live)]]
    if bare_times:
        bare.result.us = statistics.median(bare_times) * 1e6
        bare.result.bare_us = bare.result.us
        bare.result.ratio = 1.0
        bare.result.overhead_us = 0.0
        bare.result.rounds = settings.rounds
    return results


TRIP_REQUESTS = 50  # requests whose Redis round trips are counted before timing


async def _count(lives: list[_Live], scenario: Scenario, counted: int) -> None:
    """The deterministic figures: Redis round trips per request of the variants that use Redis,
    and calls per request of the others minus the bare app's (not of Redis variants: the event
    loop's own calls while they wait would be counted too)."""
    if not lives or lives[0].result.role != "bare":
        return
    counts: list[tuple[_Live, float]] = []
    for live in lives:
        if live.count_trips:
            await _segment(live, scenario.request, {id(live): TRIP_REQUESTS}, False)
            continue
        if live.result.role in ("peer", "reference"):  # the budgets are ours alone
            continue
        try:
            calls = await calls_per_request(
                live.app, scenario.request, live.take(10**6), counted, warmup=min(64, counted)
            )
        except Exception as exc:
            live.result.status, live.result.reason = "error", f"request failed: {exc!r}"
            continue
        counts.append((live, calls))
    if counts and counts[0][0] is lives[0]:
        bare = counts[0][1]
        for live, calls in counts[1:]:
            live.result.calls = round(calls - bare, 1)


async def _segment(live: _Live, request: Any, counts: dict[int, int], collect: bool) -> float:
    n = counts[id(live)]
    if not live.count_trips:
        return await timed(live.app, request, n, live.take(n), collect)
    # counted over every timed request: a store that timed out (fail-open) shows as < 1
    with count_redis_round_trips() as counter:
        t = await timed(live.app, request, n, live.take(n), collect)
    live.trips += counter.count
    live.trip_requests += n
    live.result.round_trips = live.trips / live.trip_requests
    return t


def _summarize(result: VariantResult, samples: list[tuple[float, float]]) -> None:
    good = [(t, b) for t, b in samples if t == t]
    if result.status != "ok" or not good:
        return
    result.rounds = len(good)
    result.samples = [(t * 1e6, b * 1e6) for t, b in good]
    result.us = statistics.median(t for t, _ in good) * 1e6
    result.bare_us = statistics.median(b for _, b in good) * 1e6
    result.ratio = statistics.median(t / b for t, b in good)
    result.overhead_us = statistics.median(t - b for t, b in good) * 1e6


def steps(scenarios: list[Scenario], settings: Settings) -> int:
    return sum(settings.rounds * (2 * (len(s.variants) - 1) + 1) for s in scenarios)


async def run_scenarios(
    scenarios: list[Scenario], ctx: Context, settings: Settings, progress: Progress
) -> list[VariantResult]:
    results: list[VariantResult] = []
    for scenario in scenarios:
        results += await run_scenario(scenario, ctx, settings, progress)
    apply_floors(results)
    return results


def apply_floors(results: list[VariantResult]) -> None:
    """Overheads in floors: the floor measured in the same scenario (same minutes of a busy
    machine) where there is one, else the one of the ``floor`` scenario."""
    floors = {r.scenario: r.overhead_us for r in results if r.role == "floor" and r.overhead_us}
    default = floors.get("floor")
    for r in results:
        floor = floors.get(r.scenario, default)
        if r.overhead_us is not None and r.role != "bare" and floor and floor > 0:
            r.floor_us = floor
            r.floors = r.overhead_us / floor
