"""Request profiling in the timing layer: on demand over a real server, sampled under load,
memory, the report pages, the bounds, and that profiling off costs nothing (imports, calls)."""

from __future__ import annotations

import asyncio
import logging
import pathlib
import subprocess
import sys
import time
import tracemalloc
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from asgi_perf import ConfigError, report_app
from asgi_perf.timing import TimingMiddleware
from asgi_perf.timing._profiles import (
    ProfileArchive,
    ProfileRecord,
    pack_session,
    render_speedscope,
    unpack_session,
)
from asgi_perf.timing._profiling import ProfilingLayer, to_fraction
from tests.support import call, serve

TRUSTED = ["127.0.0.0/8"]
ASK = [("X-Asgi-Perf-Profile", "1")]


def spin_in_named_function(seconds: float) -> int:
    """CPU work the profile must name."""
    end = time.perf_counter() + seconds
    turns = 0
    while time.perf_counter() < end:
        turns += 1
    return turns


async def slow_io() -> None:
    await asyncio.sleep(0.05)


async def work(request: Request) -> PlainTextResponse:
    await slow_io()
    spin_in_named_function(0.3)
    return PlainTextResponse("the app's own body")


async def spin(request: Request) -> PlainTextResponse:
    spin_in_named_function(int(request.path_params["ms"]) / 1000)
    return PlainTextResponse("spun")


async def sleepy(request: Request) -> PlainTextResponse:
    await asyncio.sleep(int(request.path_params["ms"]) / 1000)
    return PlainTextResponse("slept")


async def allocate(request: Request) -> PlainTextResponse:
    blob = bytearray(20 * 1024 * 1024)  # the allocation site the memory profile must name
    await asyncio.sleep(0.05)  # held while the request waits, as for a slow query
    return PlainTextResponse(str(len(blob)))


async def broken(request: Request) -> PlainTextResponse:
    raise RuntimeError("boom")


def starlette(**timing: Any) -> tuple[Starlette, TimingMiddleware]:
    app = Starlette(
        routes=[
            Route("/work/{n}", work),
            Route("/sleep/{ms}", sleepy),
            Route("/spin/{ms}", spin),
            Route("/allocate", allocate),
            Route("/broken", broken),
            Mount("/__perf__", report_app()),
        ]
    )
    mw = TimingMiddleware(app, **timing)
    return app, mw


def layer(mw: TimingMiddleware) -> ProfilingLayer:
    assert isinstance(mw.app, ProfilingLayer)
    return mw.app


def frame_seconds(speedscope: dict[str, Any], function: str) -> tuple[float, float]:
    """(seconds inside frames named ``function``, the profile's total) from evented speedscope."""
    frames = speedscope["shared"]["frames"]
    profile = speedscope["profiles"][0]
    inside = 0.0
    depth = 0
    opened = 0.0
    for event in profile["events"]:
        named = frames[event["frame"]]["name"] == function
        if event["type"] == "O" and named:
            if depth == 0:
                opened = event["at"]
            depth += 1
        elif event["type"] == "C" and named:
            depth -= 1
            if depth == 0:
                inside += event["at"] - opened
    return inside, profile["endValue"] - profile["startValue"]


# -- on demand ------------------------------------------------------------------------------------
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_on_demand_profile_over_a_real_server_names_the_hot_function(loop: str) -> None:
    _, mw = starlette(profiling=True, expose_server_timing=TRUSTED)
    with serve(mw, loop=loop) as url:
        response = httpx.get(url + "/work/7", headers=ASK, timeout=30)
        assert response.status_code == 200
        assert response.text == "the app's own body"
        profile_id = response.headers["x-asgi-perf-profile-id"]
        assert "server-timing" in response.headers

        listing = httpx.get(url + "/__perf__/profiles", timeout=30).json()
        mine = [p for p in listing["profiles"] if p["id"] == profile_id]
        assert len(mine) == 1
        assert mine[0]["method"] == "GET" and mine[0]["route"] == "/work/{n}"
        assert mine[0]["status"] == 200 and mine[0]["kind"] == "demand"
        assert mine[0]["duration_seconds"] >= 0.3

        speedscope = httpx.get(
            url + f"/__perf__/profiles/{profile_id}", params={"format": "speedscope"}, timeout=30
        ).json()
        spin, total = frame_seconds(speedscope, "spin_in_named_function")
        assert spin > 0.5 * total, (spin, total)
        awaited, _ = frame_seconds(speedscope, "slow_io")
        if loop == "asyncio":  # uvloop's C loop hides the task switch from pyinstrument
            assert awaited >= 0.04  # the await is followed, under the awaiting line

        page = httpx.get(url + f"/__perf__/profiles/{profile_id}", timeout=30)
        assert page.headers["content-type"].startswith("text/html")
        assert "spin_in_named_function" in page.text and "/work/{n}" in page.text


async def test_a_profile_holds_its_own_request_not_those_running_meanwhile() -> None:
    _, mw = starlette(profiling=True, expose_server_timing=TRUSTED)
    # /spin blocks the loop past both timers: the one of /work (50 ms, due first) and the
    # profiled one's (80 ms). /work then spins while the profiled request is ready to resume:
    # pyinstrument's "enabled" async mode would charge that spin to the profiled request.
    profiled, _, _ = await asyncio.gather(
        call(mw, path="/sleep/80", headers=ASK),
        call(mw, path="/work/1"),
        call(mw, path="/spin/150"),
    )
    (record,) = layer(mw).archive.records()
    assert record.id == profiled.header("x-asgi-perf-profile-id")
    speedscope = orjson.loads(render_speedscope(record))
    spin, total = frame_seconds(speedscope, "spin_in_named_function")
    assert total >= 0.3 and spin == 0.0, (spin, total)


async def test_the_profile_header_from_a_client_not_allowed_is_ignored() -> None:
    _, mw = starlette(profiling=True, expose_server_timing=["10.0.0.0/8"])
    response = await call(mw, path="/sleep/1", headers=ASK, client=("192.0.2.1", 1000))
    assert response.status == 200 and response.header("x-asgi-perf-profile-id") is None
    assert layer(mw).counts["refused"] == 1 and layer(mw).archive.records() == []
    allowed = await call(mw, path="/sleep/1", headers=ASK, client=("10.1.2.3", 1000))
    (record,) = layer(mw).archive.records()
    assert allowed.header("x-asgi-perf-profile-id") == record.id


async def test_a_failing_app_is_profiled_and_still_raises() -> None:
    _, mw = starlette(profiling=True, expose_server_timing=TRUSTED)
    with pytest.raises(RuntimeError, match="boom"):
        await call(mw, path="/broken", headers=ASK)
    (record,) = layer(mw).archive.records()
    assert record.status == 500 and record.route == "/broken"


async def test_a_profile_that_cannot_be_kept_never_fails_the_request(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_pack(session: Any) -> Any:
        raise ValueError("cannot encode")

    monkeypatch.setattr("asgi_perf.timing._profiling.pack_session", broken_pack)
    _, mw = starlette(profiling=True, expose_server_timing=TRUSTED)
    for _ in range(2):
        response = await call(mw, path="/sleep/1", headers=ASK)
        assert response.status == 200 and response.body == b"slept"
    assert layer(mw).counts["failures"] == 2 and layer(mw).archive.records() == []
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [
        "keeping a profile failed (logged once, then counted)"
    ]


async def test_nested_profiling_layers_profile_once() -> None:
    _, inner = starlette(profiling=True, expose_server_timing=TRUSTED)
    outer = TimingMiddleware(inner, profiling=True, expose_server_timing=TRUSTED)
    response = await call(outer, path="/sleep/1", headers=ASK)
    assert response.status == 200
    assert len(response.header_list("x-asgi-perf-profile-id")) == 1
    assert layer(inner).counts["nested"] == 1


# -- sampled --------------------------------------------------------------------------------------
async def test_sampled_profiles_under_load_keep_the_slowest_within_the_bound() -> None:
    _, mw = starlette(profiling=True, profile_sample_rate=1.0, profile_keep=3)
    slow = [400, 300, 250]  # started first, so they hold profiling slots under the load
    fast = [5 + i % 20 for i in range(60)]
    responses = await asyncio.gather(*(call(mw, path=f"/sleep/{ms}") for ms in slow + fast))
    assert all(r.status == 200 for r in responses)
    assert all(r.header("x-asgi-perf-profile-id") is None for r in responses)  # sampled: no id
    counts = layer(mw).counts
    assert counts["busy"] > 0  # more requests at once than the MAX_CONCURRENT slots
    assert counts["sampled"] + counts["busy"] == len(responses)
    kept = layer(mw).archive.records()
    by_route: dict[str, list[ProfileRecord]] = {}
    for record in kept:
        by_route.setdefault(record.route, []).append(record)
    assert [r.duration >= 0.25 for r in by_route["/sleep/{ms}"]] == [True] * 3
    assert set(by_route) == {"/sleep/{ms}"}
    for _ in range(5):  # another route has a bound of its own
        await call(mw, path="/broken/no")
    assert [r.route for r in layer(mw).archive.records()].count("__unmatched__") == 3
    assert layer(mw).stats()["kept"] == 6


def test_the_archive_keeps_the_slowest_per_route_and_its_byte_bound() -> None:
    archive = ProfileArchive(keep=2, max_bytes=8 * 1024)

    def record(route: str, duration: float, kind: str = "sampled", size: int = 1000) -> Any:
        return ProfileRecord(
            f"{len(archive.records()):016x}", kind, "GET", route, 200, duration, 0.0, 1, b"x" * size
        )

    for duration in (0.1, 0.5, 0.2, 0.05):
        if archive.wants("sampled", "GET", "/a", duration):
            archive.add(record("/a", duration))
    assert sorted(r.duration for r in archive.records()) == [0.2, 0.5]
    assert not archive.wants("sampled", "GET", "/a", 0.15)
    assert archive.wants("demand", "GET", "/a", 0.0)

    for route in ("/b", "/c", "/d", "/e"):
        archive.add(record(route, 1.0))
    assert archive.bytes <= archive.max_bytes
    survivors = {r.route: r.duration for r in archive.records()}
    assert "/e" in survivors and "/a" not in survivors  # the fastest went first
    assert not archive.add(record("/huge", 9.0, size=9000))  # alone above the bound


def test_pack_session_merges_stacks_and_round_trips() -> None:
    session = {
        "start_time": 1.0,
        "duration": 0.5,
        "sample_count": 3,
        "frame_records": [(["a\x00f.py\x001", "b\x00f.py\x002"], 0.1)] * 200
        + [(["a\x00f.py\x001"], 0.2)],
    }
    data, samples = pack_session(dict(session))
    assert samples == 201 and len(data) < 400
    doc = unpack_session(data)
    assert sorted((tuple(s), round(t, 6)) for s, t in doc["frame_records"]) == [
        (("a\x00f.py\x001",), 0.2),
        (("a\x00f.py\x001", "b\x00f.py\x002"), 20.0),
    ]


# -- memory ---------------------------------------------------------------------------------------
async def test_memory_profile_shows_the_peak_and_the_allocation_site() -> None:
    if tracemalloc.is_tracing():
        pytest.skip("tracemalloc runs already (PYTHONTRACEMALLOC): memory profiling stands aside")
    _, mw = starlette(profiling=True, memory_profiling=True, expose_server_timing=TRUSTED)
    response = await call(mw, path="/allocate", headers=ASK)
    assert response.body == str(20 * 1024 * 1024).encode()
    assert not tracemalloc.is_tracing()  # started for the request only
    (record,) = layer(mw).archive.records()
    assert record.memory is not None
    assert record.memory["peak_bytes"] >= 20_000_000
    top = record.memory["sites"][0]
    source = pathlib.Path(__file__).read_text().splitlines()
    line = next(i for i, text in enumerate(source, 1) if "bytearray(20 * 1024 * 1024)" in text)
    assert (top["file"], top["line"]) == (__file__, line)
    assert top["bytes"] >= 20 * 1024 * 1024


async def test_a_tracemalloc_session_started_elsewhere_is_left_alone() -> None:
    _, mw = starlette(profiling=True, memory_profiling=True, expose_server_timing=TRUSTED)
    started_here = not tracemalloc.is_tracing()
    if started_here:
        tracemalloc.start()
    try:
        await call(mw, path="/sleep/1", headers=ASK)
        assert tracemalloc.is_tracing()
    finally:
        if started_here:
            tracemalloc.stop()
    (record,) = layer(mw).archive.records()
    assert record.memory == {
        "note": "memory not traced: tracemalloc was already running (started elsewhere)"
    }


async def test_one_request_is_memory_traced_at_a_time() -> None:
    if tracemalloc.is_tracing():
        pytest.skip("tracemalloc runs already (PYTHONTRACEMALLOC): memory profiling stands aside")
    _, mw = starlette(profiling=True, memory_profiling=True, expose_server_timing=TRUSTED)
    await asyncio.gather(*(call(mw, path="/allocate", headers=ASK) for _ in range(2)))
    memories = [r.memory or {} for r in layer(mw).archive.records()]
    assert sorted("peak_bytes" in m for m in memories) == [False, True]
    assert any("another request" in m.get("note", "") for m in memories)


# -- report pages ---------------------------------------------------------------------------------
async def test_report_pages_answer_unknown_ids_and_formats_clearly() -> None:
    _, mw = starlette(profiling=True, expose_server_timing=TRUSTED)
    profile_id = (await call(mw, path="/sleep/1", headers=ASK)).header("x-asgi-perf-profile-id")
    report = report_app()
    missing = await call(report, path="/profiles/0123456789abcdef")
    assert missing.status == 404 and b"no kept profile" in missing.body
    bad = await call(report, path=f"/profiles/{profile_id}", query="format=svg")
    assert bad.status == 400 and b"speedscope" in bad.body
    summary = orjson.loads(
        (await call(report, path=f"/profiles/{profile_id}/", query="format=json")).body
    )
    assert summary["id"] == profile_id
    head = await call(report, "HEAD", path="/profiles")
    assert head.status == 200 and head.body == b"" and int(head.header("content-length") or 0) > 0
    stats = orjson.loads((await call(report)).body)["stats"]
    assert any(entry["demand"] >= 1 for entry in stats["profiling"])


# -- off means off --------------------------------------------------------------------------------
def test_profiling_off_imports_nothing_and_adds_no_layer() -> None:
    code = """
import asyncio, sys
from asgi_perf.timing import TimingMiddleware
from tests.support import call

async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})

mw = TimingMiddleware(app, profile_sample_rate=0.5, memory_profiling=True)
assert mw.app is app
asyncio.run(call(mw, path="/x", headers=[("x-asgi-perf-profile", "1")]))
print(sorted(m for m in ("pyinstrument", "tracemalloc") if m in sys.modules))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


async def trivial(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def calls_per_request(app: Any) -> int:
    """Python calls (``sys.setprofile`` call + c_call events) of one warmed-up request."""

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        return None

    def scope() -> dict[str, Any]:
        return {"type": "http", "method": "GET", "path": "/items/1", "headers": [], "client": None}

    loop = asyncio.new_event_loop()
    try:
        for _ in range(50):
            loop.run_until_complete(app(scope(), receive, send))
    finally:
        loop.close()
    count = 0

    def profile(frame: Any, event: str, arg: Any) -> None:
        nonlocal count
        if event in ("call", "c_call"):
            count += 1

    # Twice, the first uncounted: the first request a process ever runs under a profile
    # function (without a running loop) was seen to report 2 calls more than any later one.
    for _ in range(2):
        count = 0
        coroutine = app(scope(), receive, send)
        sys.setprofile(profile)
        try:
            coroutine.send(None)  # nothing awaits for real: the whole request runs here
        except StopIteration:
            pass
        finally:
            sys.setprofile(None)
    return count


def test_profiling_off_and_unmatched_slos_do_not_move_the_call_count() -> None:
    base = calls_per_request(TimingMiddleware(trivial))
    off = calls_per_request(
        TimingMiddleware(
            trivial, profiling=False, profile_sample_rate=0.5, slos="GET /other/{id}: p95<1s"
        )
    )
    on = calls_per_request(TimingMiddleware(trivial, profiling=True, expose_server_timing=False))
    assert off == base
    assert on > base  # the counter does see a layer when there is one


# -- options --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", 0.0), ("0.01", 0.01), ("1%", 0.01), (" 100% ", 1.0), (1, 1.0), (0.5, 0.5)],
)
def test_sample_rate_accepts_fractions_and_percentages(value: object, expected: float) -> None:
    assert to_fraction(value, "rate") == pytest.approx(expected)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"profile_sample_rate": 1.5}, "profile_sample_rate"),
        ({"profile_sample_rate": "often"}, "profile_sample_rate"),
        ({"profile_sample_rate": True}, "profile_sample_rate"),
        ({"profile_keep": 0}, "profile_keep"),
        ({"profile_max_bytes": "1KB"}, "profile_max_bytes"),
        ({"profile_interval": "5s"}, "profile_interval"),
        ({"memory_profiling": "sometimes"}, "memory_profiling"),
        ({"profiling": "maybe"}, "profiling"),
    ],
)
def test_bad_profiling_options_name_the_option(options: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        TimingMiddleware(trivial, **options)
    assert info.value.name == named


def test_bad_profiling_variables_name_the_variable() -> None:
    env = {"ASGI_PERF_PROFILING_SAMPLE_RATE": "2"}
    with pytest.raises(ConfigError, match="ASGI_PERF_PROFILING_SAMPLE_RATE"):
        TimingMiddleware.from_env(trivial, environ=env)


def test_from_env_switches_profiling_on() -> None:
    env = {
        "ASGI_PERF_PROFILING_ENABLED": "true",
        "ASGI_PERF_PROFILING_SAMPLE_RATE": "1%",
        "ASGI_PERF_MEMORY_PROFILING_ENABLED": "yes",
        "ASGI_PERF_PROFILING_KEEP": "7",
        "ASGI_PERF_PROFILING_MAX_BYTES": "1MiB",
        "ASGI_PERF_SERVER_TIMING_TRUSTED": "127.0.0.1",
    }
    mw = TimingMiddleware.from_env(trivial, environ=env)
    options = layer(mw).options
    assert (options.sample_rate, options.memory, options.keep, options.max_bytes) == (
        0.01,
        True,
        7,
        1024 * 1024,
    )


def test_a_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyinstrument", None)
    with pytest.raises(ConfigError, match=r"asgi-perf\[profiling\]"):
        TimingMiddleware(trivial, profiling=True)
