"""``python -m benchmarks.runs``: several runs' goal rows, their medians and the rows that
straddle their goal (the issue's "met in the median of three runs, say which")."""

from __future__ import annotations

import json
from typing import Any

import pytest

from benchmarks import runs
from benchmarks.goals import GOALS, Goal, meets


@pytest.mark.parametrize(
    ("goal", "value", "expected"),
    [
        (Goal("a", "s", "g", "floors", 1.5, True, "x", "o"), 1.5, True),
        (Goal("a", "s", "g", "floors", 1.5, True, "x", "o"), 1.51, False),
        (Goal("a", "s", "g", "rps_ratio", 0.95, False, "http", "o"), 0.95, True),
        (Goal("a", "s", "g", "rps_ratio", 0.95, False, "http", "o"), 0.94, False),
        (Goal("a", "s", "g", "round_trips", 1.0, True, "x", "o"), 1.04, True),
        (Goal("a", "s", "g", "round_trips", 1.0, True, "x", "o"), 0.5, False),  # exact, not ≤
        (Goal("a", "s", "g", "floors", 1.5, True, "x", "o"), None, None),
    ],
)
def test_meets_judges_a_figure_as_the_goal_table_does(goal, value, expected):
    assert meets(goal, value) is expected


def _run(commit: str | None, **figures: float) -> dict[str, Any]:
    return {
        "meta": {"started": "2026-12-01T12:00:00+0000", "commit": commit, "mode": "full"},
        "http": [{"config": "bare", "rps": 14000.0}],
        "goals": [{"id": gid, "measured": value} for gid, value in figures.items()],
    }


def _three(commits: tuple[str | None, ...] = ("abc", "abc", "abc")) -> list[dict[str, Any]]:
    one, two, three = commits
    return [
        _run(
            one, **{"http-compression": 0.93, "cache-hit-floors": 1.4, "stack-redis-hit-trips": 1.0}
        ),
        _run(
            two, **{"http-compression": 0.96, "cache-hit-floors": 1.6, "stack-redis-hit-trips": 1.0}
        ),
        _run(three, **{"http-compression": 0.97, "cache-hit-floors": 1.7}),
    ]


def test_rows_take_the_median_and_count_the_runs_that_met_them():
    rows = {row.goal.id: row for row in runs.combine(_three())}
    assert [row.goal.id for row in runs.combine(_three())] == [g.id for g in GOALS]
    compression = rows["http-compression"]  # ≥ 0.95: met in two runs and in the median
    assert (compression.median, compression.met, compression.met_in) == (0.96, True, 2)
    assert compression.straddles
    hit = rows["cache-hit-floors"]  # ≤ 1.5: met in one run, not in the median
    assert (hit.median, hit.met, hit.met_in, hit.straddles) == (1.6, False, 1, True)
    trips = rows["stack-redis-hit-trips"]  # measured in two runs of three: their median
    assert (trips.values, trips.median, trips.met, trips.straddles) == (
        [1.0, 1.0, None],
        1.0,
        True,
        False,
    )
    unmeasured = rows["gzip-time"]
    assert (unmeasured.median, unmeasured.met, unmeasured.measured_in) == (None, None, 0)


def test_the_report_names_straddling_rows_and_sums_them_up():
    text = runs.format_runs(_three(), runs.combine(_three()))
    assert "met (straddles: met in 2 of 3)" in text
    assert "NOT MET (straddles: met in 1 of 3)" in text
    assert "warning" not in text
    last = text.splitlines()[-2:]
    assert last[0] == (
        "1 met in every run that measured them; 1 met in the median only (http-compression); "
        "1 met in some run but not in the median (cache-hit-floors); 0 met in no run; "
        f"{len(GOALS) - 3} not measured"
    )
    assert last[1] == f"goals met by the median: 2 of {len(GOALS)}"


def test_runs_of_different_code_are_flagged():
    docs = _three(("abc", "abc", None))
    text = runs.format_runs(docs, runs.combine(docs))
    assert "warning: the runs measured different code (abc, unknown)" in text


def test_main_reads_the_files_and_refuses_what_is_not_a_run(tmp_path, capsys):
    paths = []
    for n, doc in enumerate(_three()):
        path = tmp_path / f"run{n}.json"
        path.write_text(json.dumps(doc))
        paths.append(str(path))
    assert runs.main(paths) == 0
    assert "goals met by the median: 2 of" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"figures": []}))
    with pytest.raises(SystemExit, match="has no goal rows"):
        runs.main([str(bad)])
    with pytest.raises(SystemExit, match="cannot read"):
        runs.main([str(tmp_path / "missing.json")])
