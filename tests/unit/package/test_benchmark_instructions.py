"""``python -m benchmarks.instructions``: instructions per request counted by callgrind between
marker calls; the parts it reads, the arithmetic, the child, and one real run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from benchmarks import instructions
from benchmarks.instructions import Counted

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


def _part(path, number: int, summary: int) -> None:
    path.write_text(
        f"version: 1\ncreator: callgrind\npart: {number}\nevents: Ir\nsummary: {summary}\n"
    )


def test_parts_reads_every_dump_of_the_run_and_nothing_else(tmp_path):
    _part(tmp_path / "cg.1", 1, 900)
    _part(tmp_path / "cg.2", 2, 5000)
    _part(tmp_path / "cg", 3, 70)  # the last part keeps the file's own name
    _part(tmp_path / "other.1", 1, 1)  # another run's
    (tmp_path / "cg.3").write_text("garbage")
    assert instructions.parts(str(tmp_path), "cg") == {1: 900, 2: 5000, 3: 70}


def test_the_k_th_measured_segment_is_part_2k():
    found = {1: 10**9, 2: 6000, 3: 10**8, 4: 12000, 5: 10**8, 6: 21000, 7: 5}
    measured = [("bare app", "bare"), ("floor middleware", "floor"), ("mine", "ours")]
    rows = instructions.measured_counts("s", measured, found, 1000)
    assert [(r.variant, r.role, r.per_request) for r in rows] == [
        ("bare app", "bare", 6.0),
        ("floor middleware", "floor", 12.0),
        ("mine", "ours", 21.0),
    ]


def test_overheads_are_over_the_bare_app_and_floors_over_the_floor_of_the_scenario():
    rows = [
        Counted("a", "bare app", "bare", 6000.0),
        Counted("a", "floor middleware", "floor", 12000.0),
        Counted("a", "mine", "ours", 21000.0),
        Counted("b", "bare app", "bare", 1000.0),
        Counted("b", "mine", "ours", 4000.0),  # a scenario without a floor: no floors
    ]
    assert [(over, n) for _, over, n in instructions.floors(rows)] == [
        (0.0, 0.0),
        (6000.0, 1.0),
        (15000.0, 2.5),
        (0.0, None),
        (3000.0, None),
    ]


def test_the_child_runs_each_role_and_says_what_it_measured(capsys):
    instructions.run_child("compress-skip-tiny", 5)
    assert json.loads(capsys.readouterr().out) == [
        ["bare app", "bare"],
        ["floor middleware", "floor"],
        ["asgi_perf compression", "ours"],
    ]


def test_an_unknown_scenario_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        instructions.main(["--only", "nope"])
    assert exc.value.code == 2
    assert "unknown scenario ids ['nope']" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_a_real_count_of_the_floor_scenario():
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.instructions", "--only", "floor", "--requests", "50"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,  # a hang guard: about 30 s under valgrind on a slow shared host
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {line.split()[1]: line.split() for line in proc.stdout.splitlines()[1:-1]}
    bare, floor = int(rows["bare"][3]), int(rows["floor"][3])
    assert 0 < bare < floor  # the floor wraps the bare app: it can only add instructions
    assert rows["floor"][-1] == "1.00"
