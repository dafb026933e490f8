"""python -m benchmarks: what each asgi_perf middleware costs, measured on this machine.

Examples:

    python -m benchmarks --quick        under a minute: in-process and over HTTP
    python -m benchmarks --list         the scenario ids --only takes, the configurations
                                        --configs takes
    python -m benchmarks --peers --redis redis://localhost:6379/15 --json out.json --plot out.png
                                        everything: the peer libraries and the Redis rows too
    python -m benchmarks --smoke --json out.json
                                        CI: a few requests per variant, checks the output parses

Exit status 0 whether goals are met or not (the table says); 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import os
import platform
import sys
import time
from typing import Any

from .goals import GOALS, evaluate
from .http import HTTPSettings, http_steps, installed, run_http
from .inprocess import Settings, run_scenarios, steps
from .progress import Progress
from .report import format_tables, plot, summary, write_json
from .scenarios import Context, build_scenarios
from .server import CONFIGS, PEER_STACKS

__all__ = ["main"]

PEERS = (
    "starlette",
    "starlette-compress",
    "brotli-asgi",
    "slowapi",
    "asgi-ratelimit",
    "fastapi-cache2",
    "opentelemetry-instrumentation-asgi",
    "fastapi",
    "uvicorn",
    "granian",
    "hypercorn",
    "limits",
    "redis",
    "zstandard",
    "brotli",
    "zlib-ng",
    "isal",
)


PEER_ONLY = ("starlette-gzip", *PEER_STACKS)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="short rounds: finishes in under a minute")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="a few requests per variant, one round (CI: checks the harness, not speed)",
    )
    p.add_argument(
        "--requests",
        type=int,
        metavar="N",
        help="fixed in-process requests per timed segment (default: calibrated)",
    )
    p.add_argument("--rounds", type=int, metavar="N", help="in-process rounds (default 7, quick 3)")
    p.add_argument("--peers", action="store_true", help="also measure the installed peer libraries")
    p.add_argument(
        "--redis",
        metavar="URL",
        help="Redis for store-backed scenarios (keys under a "
        "unique asgi_perf_bench:<run>: prefix, deleted afterwards)",
    )
    p.add_argument("--json", metavar="FILE", help="write every figure as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="bar chart of the ratios (needs matplotlib)")
    p.add_argument("--no-http", action="store_true", help="in-process only")
    p.add_argument(
        "--counts",
        action="store_true",
        help="only the deterministic figures: Python calls and Redis round trips per request "
        "(in-process, no timing; the same on every machine for one Python version)",
    )
    p.add_argument("--no-inprocess", action="store_true", help="HTTP only")
    p.add_argument(
        "--servers",
        default="uvicorn",
        help="comma-separated: uvicorn,granian,hypercorn or 'all' (installed ones)",
    )
    p.add_argument("--connections", type=int, default=16, help="HTTP keep-alive connections")
    p.add_argument("--duration", type=float, help="seconds per HTTP segment (default 1, quick 0.5)")
    p.add_argument(
        "--no-wrk", action="store_true", help="use the built-in generator even if wrk is on PATH"
    )
    p.add_argument(
        "--only", metavar="IDS", help="comma-separated in-process scenario ids to run (--list)"
    )
    p.add_argument(
        "--list", action="store_true", help="print the scenario ids and HTTP configurations; exit"
    )
    p.add_argument(
        "--configs",
        metavar="NAMES",
        help="comma-separated HTTP configurations to run "
        f"(bare is always run; default: all of {', '.join(CONFIGS)})",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    args = p.parse_args(argv)
    if args.requests is not None and args.requests < 1:
        p.error("--requests must be ≥ 1")
    for flag, given, known in (
        ("--only", args.only, {s.id for s in build_scenarios(peers=True, redis=True)}),
        ("--configs", args.configs, set(CONFIGS)),
    ):
        unknown = sorted(set(filter(None, (given or "").split(","))) - known)
        if unknown:
            p.error(f"{flag}: unknown {', '.join(unknown)} (python -m benchmarks --list)")
    return args


def _versions() -> dict[str, str]:
    out = {}
    for name in PEERS:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[name] = importlib.metadata.version(name)
    return out


def _commit() -> str | None:
    """The checkout's commit (``+changes`` when tracked files differ from it): which code a
    run measured, so runs can be compared (``python -m benchmarks.runs``); ``None`` outside
    a git checkout."""
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, text=True
        )
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
        )
    except OSError:
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+changes" if changed.stdout.strip() else "")


def _redis_ok(url: str) -> str | None:
    try:
        import redis

        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        client.ping()
        client.close()
        return None
    except Exception as exc:
        return repr(exc)


def _cleanup_redis(url: str, run_id: str) -> int:
    """Delete this run's keys (SCAN + DEL on our unique prefix; never FLUSHDB)."""
    import redis

    client = redis.Redis.from_url(url)
    deleted = 0
    try:
        batch = []
        for key in client.scan_iter(match=f"*asgi_perf_bench:{run_id}*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += client.delete(*batch)
                batch = []
        if batch:
            deleted += client.delete(*batch)
    finally:
        client.close()
    return deleted


async def _run(args: argparse.Namespace) -> int:
    if args.smoke:
        settings = Settings(
            rounds=1,
            segment=0.0,
            warmup=0.0,
            requests=args.requests or 10,
            collect=False,
            counted=8,
        )
        http = HTTPSettings(duration=args.duration or 0.1, warmup=0.05, rounds=1)
    elif args.quick:
        settings = Settings(rounds=3, segment=0.03, warmup=0.01)
        http = HTTPSettings(duration=args.duration or 0.5, warmup=0.2, rounds=1)
    else:
        settings = Settings()
        http = HTTPSettings(duration=args.duration or 1.0, warmup=0.5, rounds=5)
    if args.counts:
        settings = Settings(rounds=1, segment=0.0, warmup=0.0, requests=20, counts_only=True)
        args.no_http = True
    if args.requests:
        settings.requests = args.requests
    if args.rounds:
        settings.rounds = args.rounds
    servers = (
        ("uvicorn", "granian", "hypercorn")
        if args.servers == "all"
        else tuple(s.strip() for s in args.servers.split(",") if s.strip())
    )
    if args.servers == "all":
        servers = tuple(s for s in servers if installed(s))
    http.servers, http.connections, http.peers = servers, args.connections, args.peers
    http.use_wrk = not args.no_wrk

    redis_url = args.redis
    redis_problem = _redis_ok(redis_url) if redis_url else None
    if redis_problem:
        print(
            f"Redis at {redis_url} unreachable ({redis_problem}): "
            "store-backed Redis scenarios skipped",
            file=sys.stderr,
        )
        redis_url = None
    ctx = Context(redis_url=redis_url)
    scenarios = [] if args.no_inprocess else build_scenarios(args.peers, bool(redis_url))
    if args.only:
        wanted = {"floor", *args.only.split(",")}
        scenarios = [s for s in scenarios if s.id in wanted]
    configs = [] if args.no_http else [c for c in CONFIGS if args.peers or c not in PEER_ONLY]
    if args.configs:
        configs = [c for c in configs if c == "bare" or c in args.configs.split(",")]
    total = steps(scenarios, settings) + (http_steps(http, len(configs)) if configs else 0)
    progress = Progress(total, enabled=not args.no_progress)
    started = time.time()
    meta: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": sys.argv[1:],
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_start": os.getloadavg(),
        "versions": _versions(),
        "commit": _commit(),
        "mode": "smoke" if args.smoke else "quick" if args.quick else "full",
        "rounds": settings.rounds,
        "http_rounds": http.rounds,
        "run_id": ctx.run_id,
        "redis": redis_url,
        "titles": {s.id: s.title for s in scenarios},
    }
    try:
        variants = await run_scenarios(scenarios, ctx, settings, progress)
        results = await run_http(http, configs, progress) if configs else []
    finally:
        progress.close()
        for close in ctx.closers:
            with contextlib.suppress(Exception):
                await close()
        if redis_url:
            meta["redis_keys_deleted"] = _cleanup_redis(redis_url, ctx.run_id)
    floor_us = next(
        (v.overhead_us for v in variants if v.scenario == "floor" and v.role == "floor"), None
    )
    ping = next((v.overhead_us for v in variants if v.role == "ping" and v.overhead_us), None)
    meta.update(
        floor_us=floor_us,
        redis_ping_us=ping,
        seconds=round(time.time() - started, 1),
        load_average_end=os.getloadavg(),
    )
    goals = evaluate(GOALS, variants, results)
    print(format_tables(variants, results, goals, meta))
    if ping is not None:
        print(f"Redis PING round trip (the floor of store-backed checks): {ping:.1f} µs")
    print(
        f"finished in {meta['seconds']} s; load average "
        f"{meta['load_average_start'][0]:.2f} at start, "
        f"{meta['load_average_end'][0]:.2f} at end ({meta['cpus']} CPUs)"
    )
    if args.json:
        write_json(args.json, variants, results, goals, meta)
    if args.plot:
        plot(args.plot, variants, results, goals)
    print("\n".join(summary(variants, results, goals)))
    return 0


def list_ids() -> str:
    """What ``--only`` and ``--configs`` accept, with what each measures."""
    lines = ["In-process scenarios (--only ID,ID; the floor scenario always runs):"]
    for scenario in build_scenarios(peers=True, redis=True):
        needs = "  [needs --redis]" if scenario.needs_redis else ""
        lines.append(f"  {scenario.id:28} {scenario.title}{needs}")
    lines.append("HTTP configurations (--configs NAME,NAME; bare always runs):")
    configs = ", ".join(c for c in CONFIGS if c != "bare")
    lines.append(f"  {configs}  (starlette-gzip: with --peers)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        print(list_ids())
        return 0
    return asyncio.run(_run(args))


if __name__ == "__main__":
    sys.exit(main())
