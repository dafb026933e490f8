"""python -m benchmarks.ablation: what each layer adds *inside* the full stack.

``python -m benchmarks`` times each middleware alone and the whole stack. Inside the stack a
layer may cost more or less than alone: the stack hands some layers' work to Timing, and two
layers may do the same job twice (dedup's and the cache's single flights both claim a GET). So
this builds the ``from_env`` stack of the full-stack scenarios with every layer on, then once
without each layer, and reports what the stack loses without it: microseconds (in-process,
``memory://``; the median over interleaved rounds of the difference within a round) and Python
calls per request (deterministic). The times are noisy on a shared machine (a layer of one or
two microseconds can show below zero); the calls are not. The layers' shares need not add up
to the stack's total: they interact.

Examples:

    python -m benchmarks.ablation                        both request shapes
    python -m benchmarks.ablation --only stack-memory    one shape (or stack-memory-paths)
"""

from __future__ import annotations

import asyncio
import statistics
from typing import Any

from .cold import chosen_ids, scenario_parser
from .counts import calls_per_request
from .driver import timed
from .scenarios import Context, build_scenarios, full_stack

__all__ = ["LAYERS", "main", "measure", "paired"]

#: (name shown, the ``<NAME>`` of its ``ASGI_PERF_<NAME>_ENABLED`` variable), outermost first
LAYERS = (
    ("timing", "TIMING"),
    ("ratelimit", "RATE_LIMIT"),
    ("dedup", "DEDUP"),
    ("cache", "CACHE"),
    ("compression", "COMPRESSION"),
    ("queries", "QUERIES"),
)
SHAPES = ("stack-memory", "stack-memory-paths")
STACK = "(the whole stack)"


def paired(a: list[float], b: list[float]) -> float:
    """The median over rounds of ``a`` minus ``b`` in the same round (drift cancels)."""
    return statistics.median(x - y for x, y in zip(a, b, strict=True))


async def measure(
    ids: tuple[str, ...], requests: int, rounds: int
) -> list[tuple[str, str, float, float]]:
    """(scenario id, layer or :data:`STACK`, µs, calls per request): the stack's overhead
    over the bare app, then, for each layer, what the stack costs less without it."""
    scenarios = {s.id: s for s in build_scenarios(peers=False, redis=False)}
    rows: list[tuple[str, str, float, float]] = []
    for sid in ids:
        request = scenarios[sid].request
        app = scenarios[sid].variants[0].build  # the scenario's bare app, which its stack wraps
        builders = [app, full_stack(app)] + [full_stack(app, without=env) for _, env in LAYERS]
        built: list[Any] = [build(Context(scenario=sid)) for build in builders]
        n = 0
        calls: list[float] = []
        for stack in built:  # counted first: the count's warm-up is the timing's too
            calls.append(await calls_per_request(stack, request, start=n))
            n += 10_000
        times: list[list[float]] = [[] for _ in built]
        for _ in range(rounds):
            for stack, out in zip(built, times, strict=True):
                out.append(await timed(stack, request, requests, n) * 1e6)
                n += requests
        rows.append((sid, STACK, paired(times[1], times[0]), calls[1] - calls[0]))
        for i, (name, _) in enumerate(LAYERS, start=2):
            rows.append((sid, name, paired(times[1], times[i]), calls[1] - calls[i]))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = scenario_parser("python -m benchmarks.ablation", __doc__, SHAPES, rounds=7)
    args = parser.parse_args(argv)
    ids = chosen_ids(parser, args.only, SHAPES, f"this takes {', '.join(SHAPES)}")
    rows = asyncio.run(measure(ids, args.requests, args.rounds))
    print(f"{'scenario':20s} {'layer':18s} {'µs':>8s} {'calls':>8s}")
    for sid, layer, micros, calls in rows:
        print(f"{sid:20s} {layer:18s} {micros:8.2f} {calls:8.1f}")
    print("(the whole stack: over the bare app; a layer: what the stack costs less without it)")


if __name__ == "__main__":
    main()
