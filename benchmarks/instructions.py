"""python -m benchmarks.instructions: CPU instructions per request, counted by valgrind.

Times on a shared machine move by more than a small change saves, so a change of a fraction of
a floor cannot be told from noise by timing it. An instruction count can: valgrind's callgrind
counts the instructions a process executes, the same count each run for the same code and
inputs, whatever else the machine is doing. Each scenario runs in one child process under
callgrind; the bare app, the floor middleware and the asgi_perf variant are each warmed up,
then ``--requests`` of them run between two marker calls (``os.getppid``) at which callgrind
writes its counters, so only the requests themselves are counted. Printed: instructions per
request, the overhead over the bare app, and that overhead in floors (the floor middleware's
overhead, counted the same way).

An instruction is not a nanosecond (a cache miss costs hundreds of cycles and no
instruction), so these figures do not replace the timed goals; they say which of two versions
does less work, deterministically. Needs valgrind (Debian's package ``valgrind``); about half a
minute per scenario, scenarios run in parallel on the machine's cores.

    python -m benchmarks.instructions                          the default scenarios
    python -m benchmarks.instructions --only compress-skip-tiny,cache-hit-memory
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .cold import DEFAULT, chosen_ids
from .counts import WARMUP, observed
from .scenarios import Context, build_scenarios

__all__ = ["Counted", "floors", "main", "parts", "run_child"]

#: measured in this order: the first variant of each role (a reference: the work no middleware
#: can skip, such as the codec's own call; what ours costs beyond it is printed too)
ROLES = ("bare", "floor", "ours", "reference")
MARKER = "os_getppid"  # the C function whose calls delimit what is counted
_SUMMARY = re.compile(r"^summary:\s*(\d+)", re.MULTILINE)


class _Marked:
    """The marker call at each end of what is counted (callgrind dumps its counters there)."""

    def __enter__(self) -> None:
        gc.collect()  # (the collector is off inside: the same heap in every segment)
        os.getppid()

    def __exit__(self, *exc: object) -> None:
        os.getppid()


@dataclass
class Counted:
    scenario: str
    variant: str
    role: str
    per_request: float  # instructions


async def _segments(sid: str, requests: int) -> list[tuple[str, str]]:
    """In the child: each role's variant warmed up, then ``requests`` of it between two marker
    calls (callgrind writes its counters at each). The (name, role) measured, in order."""
    scenario = next(s for s in build_scenarios(peers=False, redis=False) if s.id == sid)
    measured: list[tuple[str, str]] = []
    n = 0
    for role in ROLES:
        variant = next((v for v in scenario.variants if v.role == role), None)
        if variant is None:
            continue
        app = variant.build(Context(scenario=sid))
        await observed(app, scenario.request, _Marked(), n, requests)
        n += WARMUP + requests
        measured.append((variant.name, role))
    return measured


def run_child(sid: str, requests: int) -> None:
    """``--child``: run the segments and print what was measured, as JSON."""
    print(json.dumps(asyncio.run(_segments(sid, requests))))


def parts(directory: str, stem: str) -> dict[int, int]:
    """Instructions of each part callgrind wrote (``stem.N`` for the N-th dump, ``stem`` for
    the last): part number -> the part's summary."""
    found: dict[int, int] = {}
    for name in os.listdir(directory):
        if name != stem and not name.startswith(stem + "."):
            continue
        with open(os.path.join(directory, name), encoding="utf-8", errors="replace") as fh:
            text = fh.read()
        part = re.search(r"^part:\s*(\d+)", text, re.MULTILINE)
        summary = _SUMMARY.search(text)
        if part and summary:
            found[int(part.group(1))] = int(summary.group(1))
    return found


def measured_counts(
    sid: str, measured: list[tuple[str, str]], found: dict[int, int], requests: int
) -> list[Counted]:
    """The k-th measured segment is part 2k (part 1 runs up to the first marker; each odd
    part after it builds and warms up the next variant)."""
    return [
        Counted(sid, name, role, found[2 * (k + 1)] / requests)
        for k, (name, role) in enumerate(measured)
    ]


def count(sid: str, requests: int, valgrind: str) -> list[Counted]:
    with tempfile.TemporaryDirectory(prefix="asgi-perf-cg-") as tmp:
        proc = subprocess.run(
            [
                valgrind,
                "--tool=callgrind",
                f"--callgrind-out-file={tmp}/cg",
                f"--dump-before={MARKER}",
                sys.executable,
                "-m",
                "benchmarks.instructions",
                "--child",
                sid,
                "--requests",
                str(requests),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},  # the same dicts and sets each run
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{sid}: the child failed: {proc.stderr[-1500:]}")
        measured = json.loads(proc.stdout.strip().splitlines()[-1])
        return measured_counts(sid, measured, parts(tmp, "cg"), requests)


def floors(rows: list[Counted]) -> list[tuple[Counted, float | None, float | None]]:
    """Each row with its overhead over the bare app of its scenario and that in floors (the
    floor of its scenario, else the ``floor`` scenario's when it was counted too)."""
    bare = {r.scenario: r.per_request for r in rows if r.role == "bare"}
    floor = {
        r.scenario: r.per_request - bare[r.scenario]
        for r in rows
        if r.role == "floor" and r.scenario in bare
    }
    out: list[tuple[Counted, float | None, float | None]] = []
    for row in rows:
        over = row.per_request - bare[row.scenario] if row.scenario in bare else None
        unit = floor.get(row.scenario, floor.get("floor"))
        out.append((row, over, over / unit if over is not None and unit else None))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.instructions",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--only", default=",".join(DEFAULT), help="scenario ids, comma-separated")
    parser.add_argument("--requests", type=int, default=1000, help="counted per variant")
    parser.add_argument("--child", metavar="SCENARIO", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run_child(args.child, args.requests)
        return 0
    known = [s.id for s in build_scenarios(peers=False, redis=False)]
    ids = chosen_ids(parser, args.only, known, "python -m benchmarks --list names them")
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        parser.error("valgrind is not installed (Debian: apt-get install valgrind)")
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        results = list(pool.map(lambda sid: count(sid, args.requests, valgrind), ids))
    rows = [row for result in results for row in result]
    table = floors(rows)
    print(f"{'scenario':22s} {'variant':30s} {'instr/req':>10s} {'overhead':>10s} {'floors':>7s}")
    for row, over, in_floors in table:
        shown = f"{over:10.0f}" if over is not None and row.role != "bare" else "         -"
        print(
            f"{row.scenario:22s} {row.variant:30s} {row.per_request:10.0f} {shown} "
            + (f"{in_floors:7.2f}" if in_floors is not None and row.role != "bare" else "      -")
        )
    references = {r.scenario: r for r in rows if r.role == "reference"}
    for row, over, in_floors in table:
        reference = references.get(row.scenario)
        if row.role == "ours" and reference is not None and over is not None:
            beyond = row.per_request - reference.per_request
            print(
                f"{row.scenario:22s} {row.variant} beyond the {reference.variant}: {beyond:.0f}"
                # (its floors: the overhead's floors scaled to what lies beyond the reference)
                + (
                    f" ({beyond * in_floors / over:.2f} floors)"
                    if in_floors is not None and over
                    else ""
                )
            )
    print(f"(callgrind, {args.requests} requests per variant; overhead over the bare app)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
