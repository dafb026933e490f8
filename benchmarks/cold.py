"""python -m benchmarks.cold: what each layer costs when the CPU's caches are cold.

The in-process figures of ``python -m benchmarks`` come from a tight loop: the same few
kilobytes of bytecode and objects serve every request, so they stay in the CPU's caches. Under a
real server they do not: between two requests of a layer the server's parser, the event loop and
the kernel run, and the layer's code and data are read from memory again. This runs each
scenario's bare app and asgi_perf variant twice, interleaved: once as the benchmark does (hot),
once with ``--evict-mib`` of memory written before every request (cold; only the request itself
is timed), and prints both overheads. The cold one is the upper end of what a layer costs under a
server (a server evicts less than all of it); what drives it is how much code and data a request
touches, which the call counts (``--counts``) follow more closely than hot times do.

Examples:

    python -m benchmarks.cold                      the full stack, both shapes, and every layer
    python -m benchmarks.cold --only stack-memory  one scenario (ids: python -m benchmarks --list)
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from collections.abc import Iterable

from .driver import timed
from .scenarios import Context, Unavailable, build_scenarios

__all__ = ["chosen_ids", "main", "measure", "scenario_parser"]

DEFAULT = (
    "floor",
    "compress-skip-tiny",
    "ratelimit-allow-raw",
    "cache-hit-memory",
    "cache-miss-memory",
    "dedup-memory",
    "timing",
    "queries",
    "stack-memory",
    "stack-memory-paths",
)


class Evictor:
    """Writes one byte of every 64-byte line of a buffer larger than the CPU's caches."""

    def __init__(self, mib: int) -> None:
        self.buffer = bytearray(mib * 1024 * 1024)
        self.ones = b"\x01" * (len(self.buffer) // 64)

    def __call__(self) -> None:
        self.buffer[::64] = self.ones


async def measure(
    ids: tuple[str, ...], requests: int, rounds: int, mib: int
) -> list[tuple[str, str, float, float]]:
    """(scenario id, variant, hot overhead µs, cold overhead µs) of each scenario's asgi_perf
    variant (its first one), medians over ``rounds`` interleaved rounds."""
    evictor = Evictor(mib)
    scenarios = {s.id: s for s in build_scenarios(peers=False, redis=False)}
    rows: list[tuple[str, str, float, float]] = []
    for sid in ids:
        scenario = scenarios[sid]
        role = "floor" if sid == "floor" else "ours"
        ours = next(v for v in scenario.variants if v.role == role)
        ctx = Context(scenario=sid)
        try:
            apps = [scenario.variants[0].build(ctx), ours.build(ctx)]
        except Unavailable as exc:
            print(f"{sid}: not available ({exc})", file=sys.stderr)
            continue
        n = 0
        for app in apps:  # warm-up: memoised routes, lazy imports
            await timed(app, scenario.request, requests, n, collect=False)
            n += requests
        hot: list[float] = []
        cold: list[float] = []
        for _ in range(rounds):
            for evict, out in ((None, hot), (evictor, cold)):
                bare = await timed(apps[0], scenario.request, requests, n, False, evict)
                n += requests
                mine = await timed(apps[1], scenario.request, requests, n, False, evict)
                n += requests
                out.append((mine - bare) * 1e6)
        rows.append((sid, ours.name, statistics.median(hot), statistics.median(cold)))
    return rows


def scenario_parser(
    prog: str, doc: str | None, ids: tuple[str, ...], rounds: int
) -> argparse.ArgumentParser:
    """The options of a tool that times some in-process scenarios: ``--only``, ``--requests``,
    ``--rounds`` (shared by this module and :mod:`benchmarks.ablation`)."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0] if doc else None)
    parser.add_argument("--only", default=",".join(ids), help="scenario ids, comma-separated")
    parser.add_argument("--requests", type=int, default=2000, help="per round and variant")
    parser.add_argument("--rounds", type=int, default=rounds)
    return parser


def chosen_ids(
    parser: argparse.ArgumentParser, only: str, known: Iterable[str], where: str
) -> tuple[str, ...]:
    """``--only``'s ids; an unknown one stops with exit status 2 and says ``where`` they are."""
    ids = tuple(i for i in only.split(",") if i)
    valid = set(known)
    unknown = [i for i in ids if i not in valid]
    if unknown:
        parser.error(f"unknown scenario ids {unknown}: {where}")
    return ids


def main(argv: list[str] | None = None) -> None:
    parser = scenario_parser("python -m benchmarks.cold", __doc__, DEFAULT, rounds=5)
    parser.add_argument("--evict-mib", type=int, default=32, help="memory written per request")
    args = parser.parse_args(argv)
    known = [s.id for s in build_scenarios(peers=False, redis=False)]
    ids = chosen_ids(parser, args.only, known, "python -m benchmarks --list names them")
    rows = asyncio.run(measure(ids, args.requests, args.rounds, args.evict_mib))
    print(f"{'scenario':22s} {'variant':30s} {'hot µs':>8s} {'cold µs':>8s} {'cold/hot':>8s}")
    for sid, name, hot, cold in rows:
        ratio = f"{cold / hot:8.1f}" if hot > 0.05 else "       -"
        print(f"{sid:22s} {name:30s} {hot:8.2f} {cold:8.2f} {ratio}")
    print(f"(overhead over the bare app; cold: {args.evict_mib} MiB written before each request)")


if __name__ == "__main__":
    main()
