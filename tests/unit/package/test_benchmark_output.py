"""The benchmark's command line and output say what to conclude: plain --help, --list of the ids
--only takes, the bare figure behind each HTTP ratio, floors explained once, the flag that would
measure a goal not measured, and a three-line summary at the end. (No timing is asserted.)"""

from __future__ import annotations

import pytest

from benchmarks.__main__ import list_ids, main, parse_args
from benchmarks.goals import GOALS, evaluate
from benchmarks.http import HTTPResult
from benchmarks.inprocess import VariantResult
from benchmarks.report import format_tables, summary
from benchmarks.scenarios import build_scenarios
from benchmarks.server import CONFIGS


def test_help_is_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "::" not in out and "``" not in out and "--list" in out


def test_list_names_every_id_only_takes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    for scenario in build_scenarios(peers=True, redis=True):
        assert f"  {scenario.id} " in out
    assert all(config in out for config in CONFIGS if config != "bare")
    assert out.strip() == list_ids()


def test_unknown_ids_are_refused_with_a_pointer_to_list(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--only", "timing,nope"])
    assert exit_info.value.code == 2
    assert "--only: unknown nope (python -m benchmarks --list)" in capsys.readouterr().err


def _results() -> tuple[list[VariantResult], list[HTTPResult]]:
    def variant(scenario: str, name: str, role: str, us: float, bare: float) -> VariantResult:
        overhead = us - bare
        return VariantResult(
            scenario,
            name,
            role,
            us=us,
            bare_us=bare,
            ratio=us / bare,
            overhead_us=overhead,
            floors=overhead / 0.5,
            floor_us=0.5,
        )

    variants = [
        variant("floor", "floor middleware", "floor", 2.5, 2.0),
        variant("stack-memory", "bare app", "bare", 2.0, 2.0),
        variant("stack-memory", "asgi_perf full stack", "ours", 22.0, 2.0),
        variant("cache-hit-fastapi", "bare app", "bare", 60.0, 60.0),
        variant("cache-hit-fastapi", "asgi_perf cache hit", "ours", 3.0, 60.0),
        variant("queries", "asgi_perf queries", "ours", 1.9, 2.0),  # faster than bare: noise
    ]
    http = [
        HTTPResult("uvicorn", "bare", rps=30000.0, bare_rps=30000.0, ratio=1.0),
        HTTPResult("uvicorn", "stack", rps=12000.0, bare_rps=31000.0, ratio=0.39),
    ]
    return variants, http


def test_tables_show_the_bare_figure_floors_noise_and_missing_flags() -> None:
    variants, http = _results()
    goals = evaluate(GOALS, variants, http)
    meta = {"rounds": 3, "http_rounds": 1, "floor_us": 0.5, "titles": {}}
    text = format_tables(variants, http, goals, meta)
    assert text.count("A floor is the cost of a middleware that does nothing") == 1
    stack_row = next(line for line in text.splitlines() if "uvicorn stack" in line)
    assert "12000" in stack_row and "31000" in stack_row and "0.390" in stack_row
    queries_row = next(line for line in text.splitlines() if "asgi_perf queries" in line)
    assert " ~0 " in queries_row and "-0.1" not in queries_row
    by_id = {g.id: g for g in goals}
    assert by_id["gzip-time"].hint == "run with --peers"
    assert by_id["ratelimit-redis-trips"].hint == "run with --redis URL"
    assert "(run with --peers)" in text and "(run with --redis URL)" in text


def test_ends_with_a_three_line_summary() -> None:
    variants, http = _results()
    lines = summary(variants, http, evaluate(GOALS, variants, http))
    assert lines[0] == "Summary:" and len(lines) == 4
    assert "adds ≈ 20.0 µs per request in-process" in lines[1]
    assert "12000 vs 31000 req/s bare (0.39x)" in lines[1]
    assert "≈ 3.0 µs instead of ≈ 60.0 µs" in lines[2] and "saves ≈ 57.0 µs" in lines[2]
    assert lines[3].startswith("- goals of the bundled table: ")
