"""The bundled benchmark: the harness runs end to end and its output is complete and parseable.

No timing is asserted anywhere (the machine is shared): the smoke run checks that every goal row
and every scenario is reported, that the floor and the peers were really measured, and that
Redis keys are cleaned up; the pure parts (HTTP framing, wrk output, goal evaluation, the
driver, the floor) are checked by tables.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys

import pytest

from benchmarks import ablation, cold, conformance, driver
from benchmarks.floor import FloorMiddleware
from benchmarks.goals import GOALS, Goal, evaluate
from benchmarks.http import HTTPResult, complete_response, parse_wrk
from benchmarks.inprocess import VariantResult
from benchmarks.progress import Progress
from benchmarks.scenarios import build_scenarios

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


@pytest.mark.slow
def test_smoke_run_reports_every_goal_and_scenario(tmp_path, redis_url):
    out = tmp_path / "bench.json"
    chart = tmp_path / "bench.png"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--smoke",
            "--peers",
            "--redis",
            redis_url,
            "--json",
            str(out),
            "--plot",
            str(chart),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,  # a hang guard: about 60 s on a slow shared host
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())

    assert [g["id"] for g in doc["goals"]] == [g.id for g in GOALS]
    assert re.fullmatch(r"[0-9a-f]{12}(\+changes)?", doc["meta"]["commit"])  # a git checkout
    peer_row = next(g for g in doc["goals"] if g["id"] == "http-vs-peer-stack")
    assert "for any stack" in peer_row["detail"]  # the app alone was measured beside it
    for goal in doc["goals"]:
        assert set(goal) >= {"id", "scenario", "goal", "measured", "unit", "met", "detail"}
        assert goal["id"] in proc.stdout  # the terminal table has the row too

    expected = {s.id for s in build_scenarios(peers=True, redis=True)}
    assert {v["scenario"] for v in doc["in_process"]} == expected
    by_name = {(v["scenario"], v["name"]): v for v in doc["in_process"]}
    floor = by_name[("floor", "floor middleware")]
    assert floor["status"] == "ok" and floor["us"] > 0
    assert doc["meta"]["floor_us"] == floor["overhead_us"]
    for peer in ["Starlette GZipMiddleware(6)", "starlette-compress gzip"]:
        assert by_name[("compress-12k-gzip", peer)]["status"] == "ok"
    assert by_name[("ratelimit-allow-memory", "asgi-ratelimit")]["status"] == "ok"
    assert by_name[("timing-otel", "opentelemetry-instrumentation-asgi")]["status"] == "ok"
    for scenario, reference in (
        ("compress-12k-gzip", "gzip codec alone"),
        ("compress-12k-zstd", "zstd codec alone"),
        ("compress-12k-br", "br codec alone"),
        ("timing-otel", "OpenTelemetry SDK calls alone"),
    ):  # the work no middleware can skip, measured beside it (its check passed)
        assert by_name[(scenario, reference)]["status"] == "ok"
    otel_row = next(g for g in doc["goals"] if g["id"] == "timing-otel")
    assert "so at least" in otel_row["detail"]
    for scenario in ("dict-poll-new", "dict-poll-shared"):  # the dcz check decoded its body
        assert by_name[(scenario, "asgi_perf dcz")]["status"] == "ok"
        assert by_name[(scenario, "asgi_perf zstd")]["status"] == "ok"
    ping = by_name[("ratelimit-allow-redis", "Redis PING floor")]
    assert ping["status"] == "ok" and ping["round_trips"] == 1.0

    http = {(r["server"], r["config"]): r for r in doc["http"]}
    assert http[("uvicorn", "bare")]["status"] == "ok" and http[("uvicorn", "bare")]["rps"] > 0
    assert http[("uvicorn", "floor")]["ratio"] is not None
    assert chart.stat().st_size > 0

    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        left = list(client.scan_iter(match=f"*asgi_perf_bench:{doc['meta']['run_id']}*"))
    finally:
        client.close()
    assert left == []


def test_help_is_the_console_entry_point():
    from benchmarks.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc", 41),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nab", None),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n", None),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\naHTTP/1.1", 39),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 60),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n", None),
        (b"HTTP/1.1 204 No Content\r\nserver: x\r\n\r\n", 38),
    ],
)
def test_http_framing(data, expected):
    assert complete_response(bytearray(data)) == expected


WRK = """Running 1s test @ http://127.0.0.1:8000/bare
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.02ms  340.12us   5.81ms   89.50%
    Req/Sec    15.20k     1.20k   16.30k    70.50%
  Latency Distribution
     50%  950.00us
     75%    1.10ms
     90%    1.40ms
     99%    2.50ms
  15234 requests in 1.00s, 4.10MB read
  Non-2xx or 3xx responses: 7
Requests/sec:  15190.42
Transfer/sec:      4.09MB
"""


def test_wrk_output_is_parsed():
    seg = parse_wrk(WRK, 1)
    assert seg.requests == 15234
    assert seg.rps == pytest.approx(15190.42)
    assert seg.percentile(50) == pytest.approx(0.95)
    assert seg.percentile(99) == pytest.approx(2.5)
    assert seg.errors == 7
    with pytest.raises(RuntimeError):
        parse_wrk("unable to connect", 1)


def _variant(scenario, name, role="ours", **kw):
    return VariantResult(scenario, name, role, **kw)


def test_goal_evaluation():
    goals = [
        Goal("a", "s", "g", "floors", 2.0, True, "x", "ours"),
        Goal("b", "s", "g", "overhead_ratio", 0.5, True, "x", "ours", "peer"),
        Goal("c", "s", "g", "round_trips", 1.0, True, "x", "ours"),
        Goal("d", "s", "g", "rps_ratio", 0.95, False, "http", "cache"),
        Goal("e", "s", "g", "size_ratio", 1.03, True, "x", "gone", "peer"),
        Goal("f", "s", "g", "rps_vs", 3.0, False, "http", "stack", "peers", "plain"),
        Goal("g", "s", "g", "overhead_ratio", 0.5, True, "x", "ours", "peer", reference="alone"),
        Goal("h", "s", "g", "beyond_floors", 3.0, True, "x", "ours", "alone"),
    ]
    variants = [
        _variant(
            "x",
            "ours",
            overhead_us=3.0,
            floors=3.0,
            floor_us=1.0,
            round_trips=2.0,
            us=4.0,
            body_bytes=100,
        ),
        _variant("x", "peer", role="peer", overhead_us=5.0, us=6.0, body_bytes=100),
        _variant("x", "gone", status="not available", reason="no module"),
        _variant("x", "alone", role="reference", overhead_us=1.5, us=2.5),
    ]
    http = [
        HTTPResult("uvicorn", "cache", rps=960.0, bare_rps=1000.0, ratio=0.96),
        HTTPResult("uvicorn", "stack", rps=1500.0),
        HTTPResult("uvicorn", "peers", rps=600.0),
        HTTPResult("uvicorn", "plain", rps=1650.0),  # the app alone: the row's ceiling
    ]
    results = {g.id: g for g in evaluate(goals, variants, http)}
    assert (results["a"].measured, results["a"].met) == (3.0, False)
    assert (results["b"].measured, results["b"].met) == (0.6, False)
    assert (results["c"].measured, results["c"].met) == (2.0, False)
    assert (results["d"].measured, results["d"].met) == (0.96, True)
    assert results["e"].met is None and "not available" in results["e"].detail
    assert (results["f"].measured, results["f"].met) == (2.5, False)
    assert results["f"].detail == (
        "1500 vs 600 req/s; the app with no middleware 1650 req/s, so at most 2.75 x for any stack"
    )
    # the work no middleware can skip (a codec's call, the SDK's): the least ratio any reaches
    assert (results["g"].measured, results["g"].met) == (0.6, False)
    assert results["g"].detail == "overhead 3.0 µs vs 5.0 µs; alone 1.5 µs, so at least 0.30 x"
    # the time beyond that work, in floors
    assert (results["h"].measured, results["h"].met) == (1.5, True)
    assert results["h"].detail == "overhead 3.0 µs, alone 1.5 µs, floor 1.00 µs"


def test_every_spec_goal_row_has_a_goal():
    rows = {g.scenario.split(",")[0].split(" (")[0] for g in GOALS}
    assert {
        "compression",
        "compression applied",
        "rate limit",
        "cache hit",
        "dedup",
        "timing without OpenTelemetry",
        "timing with OpenTelemetry SDK on",
        "query middleware",
        "full stack",
    } <= rows
    assert len({g.id for g in GOALS}) == len(GOALS)


async def test_floor_forwards_every_message_and_driver_sees_them():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 201, "headers": [(b"a", b"1")]})
        await send({"type": "http.response.body", "body": b"x", "more_body": True})
        await send({"type": "http.response.body", "body": b"y"})

    request = driver.Request(unique=True)
    response = await driver.one(FloorMiddleware(app), request, n=7)
    assert (response.status, response.body, response.chunks) == (201, b"xy", 2)
    assert response.header("A") == "1"
    assert request.scope_factory()(7)["query_string"] == b"n=7"
    assert await driver.timed(FloorMiddleware(app), request, 3) > 0


async def test_round_trips_are_counted(redis_url):
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        await client.ping()
        with driver.count_redis_round_trips() as counter:
            await client.ping()
            async with client.pipeline(transaction=False) as pipe:
                await pipe.ping().ping().execute()
        assert counter.count == 2  # a pipeline is one round trip
    finally:
        await client.aclose()


def test_progress_writes_lines_when_not_a_terminal():
    stream = io.StringIO()
    progress = Progress(4, stream=stream)
    progress.step("one", 2)
    progress.step("one")
    progress.step("two")
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and "50%" in lines[0] and "100%" in lines[1] and "two" in lines[1]


def test_scenarios_without_peers_or_redis_have_no_peer_rows():
    scenarios = build_scenarios(peers=False, redis=False)
    assert all(
        v.role in ("bare", "floor", "ours", "reference") for s in scenarios for v in s.variants
    )
    assert not any(s.needs_redis for s in scenarios)
    assert all(s.variants[0].role == "bare" for s in scenarios)


async def test_cold_mode_times_each_layer_hot_and_with_the_caches_evicted():
    rows = await cold.measure(("floor", "cache-hit-memory"), requests=20, rounds=1, mib=1)
    assert [(sid, name) for sid, name, _, _ in rows] == [
        ("floor", "floor middleware"),
        ("cache-hit-memory", "asgi_perf cache hit"),
    ]
    assert all(hot == hot and cold_ == cold_ for _, _, hot, cold_ in rows)  # measured: no NaN


async def test_ablation_weighs_each_layer_inside_the_stack():
    """Each row's stack really is the full one without that layer: it makes fewer calls
    (deterministic), whatever the times say."""
    rows = await ablation.measure(("stack-memory",), requests=20, rounds=1)
    assert [layer for _, layer, _, _ in rows] == [
        ablation.STACK,
        *(name for name, _ in ablation.LAYERS),
    ]
    assert all(calls > 0 for _, _, _, calls in rows)
    assert all(t == t for _, _, t, _ in rows)  # measured: no NaN


def test_ablation_names_an_unknown_scenario(capsys):
    with pytest.raises(SystemExit) as exit_:
        ablation.main(["--only", "cache-hit-memory"])
    assert exit_.value.code == 2
    assert "cache-hit-memory" in capsys.readouterr().err


def test_cold_mode_names_an_unknown_scenario(capsys):
    with pytest.raises(SystemExit) as exit_:
        cold.main(["--only", "no-such-scenario"])
    assert exit_.value.code == 2
    assert "no-such-scenario" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("verdicts", "expected"),
    [
        (  # untested (browser-only) tests are not counted; checks are not either
            {
                "a": ["required", "✅", ""],
                "b": ["required", "⛔️", ""],
                "c": ["required", "-", ""],
                "d": ["optimal", "⚠️", ""],
                "e": ["optimal", "✅", ""],
                "f": ["check", "Y", ""],
            },
            {
                "required": {"passed": 1, "total": 2, "not_passed": ["b"]},
                "optimal": {"passed": 1, "total": 2, "not_passed": ["d"]},
            },
        ),
        (  # a setup failure is not a pass
            {"a": ["required", "🔹", ""]},
            {
                "required": {"passed": 0, "total": 1, "not_passed": ["a"]},
                "optimal": {"passed": 0, "total": 0, "not_passed": []},
            },
        ),
    ],
)
def test_conformance_summary_counts_what_the_suite_ran(verdicts, expected):
    assert conformance.summarize(verdicts) == expected


async def test_conformance_proxy_forwards_the_exchange_as_it_came():
    import httpx

    seen = []

    def origin(request):
        seen.append(request)
        return httpx.Response(
            200,
            headers=[
                ("Cache-Control", "max-age=60"),
                ("Connection", "x-secret"),
                ("X-Secret", "1"),
                ("Keep-Alive", "timeout=5"),
                ("Transfer-Encoding", "chunked"),
                ("Content-Encoding", "gzip"),
            ],
            stream=httpx.ByteStream(b"\x1f\x8b raw bytes"),  # (content= would decode it here)
        )

    app = conformance.proxy_app("http://origin.test", httpx.MockTransport(origin))
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/a b",
        "raw_path": b"/a%20b",
        "query_string": b"q=1",
        "headers": [(b"host", b"proxy"), (b"if-none-match", b'"x"'), (b"connection", b"close")],
    }
    await app(scope, receive, send)
    assert str(seen[0].url) == "http://origin.test/a%20b?q=1"
    assert seen[0].headers["if-none-match"] == '"x"' and "connection" not in seen[0].headers
    assert "accept-encoding" not in seen[0].headers  # no field of the proxy's own
    start, body = sent
    names = [k.lower() for k, _ in start["headers"]]
    # hop-by-hop fields too: omitting them is the cache's job, not the proxy's
    assert {b"connection", b"x-secret", b"keep-alive"} <= set(names)
    assert b"transfer-encoding" not in names
    assert dict(start["headers"])[b"content-length"] == str(len(body["body"])).encode()
    assert body["body"] == b"\x1f\x8b raw bytes"  # undecoded
