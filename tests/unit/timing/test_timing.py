"""TimingMiddleware: Server-Timing (checked by a W3C grammar parser), X-Response-Time, what is
measured (to the last body message, with an injected clock), 499/500, slow-request log,
restriction of Server-Timing, bounded series, configuration."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asgi_perf._core.config import ConfigError
from asgi_perf._core.context import SCOPE_KEY, add_timing
from asgi_perf.timing import TimingMiddleware
from tests.support import Response, call, make_scope

# -- a parser of the W3C Server-Timing grammar ------------------------------------------------
# Server-Timing             = #server-timing-metric
# server-timing-metric      = metric-name *( OWS ";" OWS server-timing-param )
# metric-name               = token
# server-timing-param       = server-timing-param-name OWS "=" OWS server-timing-param-value
# server-timing-param-name  = token
# server-timing-param-value = token / quoted-string
# (token, quoted-string, OWS and the #list rule from RFC 9110 §5.6)
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = r'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_OWS = r"[ \t]*"


def parse_server_timing(value: str) -> list[tuple[str, dict[str, str]]]:
    """Parse a Server-Timing field value; raise ``ValueError`` on anything off-grammar."""
    metrics: list[tuple[str, dict[str, str]]] = []
    pos = 0
    expect_metric = True
    while pos < len(value):
        m = re.compile(_OWS).match(value, pos)
        assert m is not None
        pos = m.end()
        if not expect_metric:
            if value[pos : pos + 1] != ",":
                raise ValueError(f"expected ',' at {pos} in {value!r}")
            pos += 1
            expect_metric = True
            continue
        m = re.compile(_TOKEN).match(value, pos)
        if m is None:
            raise ValueError(f"expected a metric name at {pos} in {value!r}")
        name, pos = m.group(), m.end()
        params: dict[str, str] = {}
        while True:
            m = re.compile(_OWS + ";" + _OWS).match(value, pos)
            if m is None:
                break
            pos = m.end()
            m = re.compile(f"({_TOKEN}){_OWS}={_OWS}({_TOKEN}|{_QUOTED})").match(value, pos)
            if m is None:
                raise ValueError(f"bad parameter at {pos} in {value!r}")
            raw = m.group(2)
            if raw.startswith('"'):
                raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
            params.setdefault(m.group(1).lower(), raw)
            pos = m.end()
        metrics.append((name, params))
        expect_metric = False
    if not metrics:
        raise ValueError("empty Server-Timing")
    return metrics


def test_parser_rejects_bad_syntax() -> None:
    for bad in ("", "a;", "a;dur", 'a;desc="x', "a b", "a;dur=1 2", ",", "a,,"):
        with pytest.raises(ValueError):
            parse_server_timing(bad)
    assert parse_server_timing('a;dur=1.5, b;desc="x\\"y" ,c') == [
        ("a", {"dur": "1.5"}),
        ("b", {"desc": 'x"y'}),
        ("c", {}),
    ]


# -- apps and inner layers ---------------------------------------------------------------------
class FakeClock:
    """Seconds that move only when a test moves them."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def hello(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-app", b"1")]})
    await send({"type": "http.response.body", "body": b"hello"})


class Contributes:
    """An inner layer that reports a Server-Timing entry before forwarding the start."""

    def __init__(self, app: Any, name: str, dur: float | None, desc: str | None) -> None:
        self.app, self.entry = app, (name, dur, desc)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def wrapped(message: Any) -> None:
            if message["type"] == "http.response.start":
                add_timing(scope, *self.entry)
            await send(message)

        await self.app(scope, receive, wrapped)


def route_stats(mw: TimingMiddleware, route: str, method: str = "GET") -> dict[str, Any]:
    for entry in mw.stats()["routes"]:
        if entry["route"] == route and entry["method"] == method:
            return entry
    raise AssertionError(f"no series {method} {route}: {mw.stats()['routes']}")


# -- Server-Timing -------------------------------------------------------------------------------
async def test_server_timing_total_and_inner_entries_parse() -> None:
    app = Contributes(
        Contributes(Contributes(hello, "db", 4.1, "7 queries"), "ratelimit", 0.2, None),
        "cache",
        None,
        "hit",
    )
    clock = FakeClock()

    async def slow_start(scope: Any, receive: Any, send: Any) -> None:
        clock.now += 0.0123
        await app(scope, receive, send)

    mw = TimingMiddleware(slow_start, clock=clock)
    scope = make_scope()
    response = await call(mw, scope=scope)
    assert response.status == 200 and response.body == b"hello"
    [value] = response.header_list("server-timing")
    metrics = parse_server_timing(value)
    assert metrics[0] == ("total", {"dur": "12.3"})
    assert metrics[1:] == [
        ("db", {"dur": "4.1", "desc": "7 queries"}),
        ("ratelimit", {"dur": "0.2"}),
        ("cache", {"desc": "hit"}),
    ]
    assert response.header("x-response-time") == "12.300ms"
    assert response.header("x-app") == "1"
    assert SCOPE_KEY not in scope  # the context left the scope with the request


@settings(max_examples=60, deadline=None)
@given(
    name=st.text(min_size=0, max_size=20),
    desc=st.one_of(st.none(), st.text(max_size=30)),
    dur=st.one_of(st.none(), st.floats(min_value=0, max_value=1e6)),
)
async def test_any_inner_entry_still_yields_valid_syntax(
    name: str, desc: str | None, dur: float | None
) -> None:
    mw = TimingMiddleware(Contributes(hello, name, dur, desc), response_time_header=None)
    response = await call(mw)
    metrics = parse_server_timing(response.header("server-timing") or "")
    assert metrics[0][0] == "total" and len(metrics) == 2
    if desc is not None:
        kept = "".join(c for c in desc if c >= " " and c != "\x7f")
        if kept.isascii():
            assert metrics[1][1]["desc"] == kept


async def test_app_server_timing_is_kept_as_another_field_line() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"server-timing", b"app;dur=3")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"x"})

    response = await call(TimingMiddleware(app))
    values = response.header_list("server-timing")
    assert values[0] == "app;dur=3" and values[1].startswith("total;dur=")
    assert len(parse_server_timing(", ".join(values))) == 2


async def test_start_message_headers_list_is_not_mutated() -> None:
    headers = [(b"content-type", b"text/plain")]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"x"})

    response = await call(TimingMiddleware(app))
    assert total_only(response)
    assert headers == [(b"content-type", b"text/plain")]


async def test_headers_can_be_switched_off_and_renamed() -> None:
    mw = TimingMiddleware(hello, server_timing=False, response_time_header=None)
    response = await call(mw)
    assert response.header("server-timing") is None and response.header("x-response-time") is None
    assert route_stats(mw, "/")["count"] == 1  # the statistics still record
    response = await call(TimingMiddleware(hello, response_time_header="X-Elapsed"))
    assert re.fullmatch(r"\d+\.\d{3}ms", response.header("x-elapsed") or "")
    assert response.header("x-response-time") is None


def total_only(response: Response) -> bool:
    """The Server-Timing of an app with no entries of its own: the total, in milliseconds."""
    return (
        re.fullmatch(r"total;dur=\d+(\.\d+)?", response.header("server-timing") or "") is not None
    )


async def test_expose_server_timing_to_trusted_networks_only() -> None:
    mw = TimingMiddleware(
        hello, expose_server_timing="10.0.0.0/8, ::1", trusted_proxies="127.0.0.1"
    )
    inside = await call(mw, client=("10.1.2.3", 5000))
    outside = await call(mw, client=("192.0.2.7", 5000))
    proxied = await call(mw, client=("127.0.0.1", 1), headers=[("x-forwarded-for", "10.9.9.9")])
    spoofed = await call(mw, client=("192.0.2.7", 1), headers=[("x-forwarded-for", "10.9.9.9")])
    garbage = await call(mw, client=None)
    assert total_only(inside) and total_only(proxied)
    assert outside.header("server-timing") is None
    assert spoofed.header("server-timing") is None
    assert garbage.header("server-timing") is None
    assert re.fullmatch(r"\d+\.\d{3}ms", outside.header("x-response-time") or "")  # not restricted
    assert route_stats(mw, "/")["count"] == 5


async def test_expose_server_timing_by_callable() -> None:
    mw = TimingMiddleware(
        hello, expose_server_timing=lambda scope: (b"x-debug", b"1") in scope["headers"]
    )
    assert total_only(await call(mw, headers=[("x-debug", "1")]))
    assert (await call(mw)).header("server-timing") is None
    assert (await call(TimingMiddleware(hello, expose_server_timing=False))).header(
        "server-timing"
    ) is None


# -- what is measured ------------------------------------------------------------------------------
async def test_duration_ends_at_last_body_message_not_app_return() -> None:
    clock = FakeClock()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        clock.now += 0.25
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})
        clock.now += 30.0  # background work after the response: must not count

    mw = TimingMiddleware(app, clock=clock, slow_threshold=1.0)
    response = await call(mw)
    assert parse_server_timing(response.header("server-timing") or "")[0][1]["dur"] == "250"
    stats = route_stats(mw, "/")
    assert stats["duration_seconds"]["max"] == pytest.approx(0.25)
    assert stats["slow"] == 0


async def test_starlette_background_tasks_do_not_count() -> None:
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    clock = FakeClock()

    def later() -> None:
        clock.now += 60.0

    async def endpoint(request: Any) -> PlainTextResponse:
        clock.now += 0.5
        return PlainTextResponse("ok", background=BackgroundTask(later))

    mw = TimingMiddleware(Starlette(routes=[Route("/job", endpoint)]), clock=clock)
    await call(mw, path="/job")
    assert clock.now == pytest.approx(160.5)  # the background task did run
    assert route_stats(mw, "/job")["duration_seconds"]["max"] == pytest.approx(0.5)


async def test_time_to_first_byte_of_a_streamed_response() -> None:
    clock = FakeClock()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        clock.now += 0.1
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        clock.now += 2.0
        await send({"type": "http.response.body", "body": b"b", "more_body": False})

    mw = TimingMiddleware(app, clock=clock)
    response = await call(mw)
    assert response.chunks == [b"a", b"b"]
    stats = route_stats(mw, "/")
    assert stats["ttfb_seconds"]["max"] == pytest.approx(0.1)
    assert stats["duration_seconds"]["max"] == pytest.approx(2.1)


async def test_pathsend_ends_the_measurement() -> None:
    clock = FakeClock()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        clock.now += 0.3
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.pathsend", "path": "/tmp/file"})
        clock.now += 5.0

    mw = TimingMiddleware(app, clock=clock)
    sent = await drive(mw, [])
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.pathsend"]
    assert route_stats(mw, "/upload")["duration_seconds"]["max"] == pytest.approx(0.3)


async def drive(app: Any, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Call ``app`` with ``messages`` to receive (then wait forever); return what it sent."""
    sent: list[dict[str, Any]] = []
    pending = list(messages)

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(make_scope(path="/upload"), receive, send)
    return sent


async def test_client_disconnect_before_response_is_499() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        await hello(scope, receive, send)  # servers drop this; it still is a 499

    mw = TimingMiddleware(app)
    await drive(
        mw, [{"type": "http.request", "body": b"x", "more_body": True}, {"type": "http.disconnect"}]
    )
    stats = route_stats(mw, "/upload")
    assert stats["statuses"] == {"499": 1} and stats["errors"] == 0


async def test_disconnect_after_response_keeps_status() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await hello(scope, receive, send)
        await receive()

    mw = TimingMiddleware(app)
    await drive(mw, [{"type": "http.disconnect"}])
    assert route_stats(mw, "/upload")["statuses"] == {"200": 1}


async def test_cancelled_before_response_is_499_and_propagates() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()  # waits forever: the server cancels the task

    mw = TimingMiddleware(app)
    task = asyncio.ensure_future(drive(mw, []))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stats = route_stats(mw, "/upload")
    assert stats["statuses"] == {"499": 1} and mw.stats()["in_flight"] == 0


async def test_exception_before_response_is_500_error_and_reraised() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    mw = TimingMiddleware(app)
    with pytest.raises(RuntimeError):
        await call(mw, path="/x")
    stats = route_stats(mw, "/x")
    assert stats["statuses"] == {"500": 1} and stats["errors"] == 1


async def test_exception_after_start_keeps_status_counts_error() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("boom")

    mw = TimingMiddleware(app)
    with pytest.raises(RuntimeError):
        await drive(mw, [])
    stats = route_stats(mw, "/upload")
    assert stats["statuses"] == {"200": 1} and stats["errors"] == 1


async def test_5xx_counts_as_error() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 503, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    mw = TimingMiddleware(app)
    await call(mw, path="/down")
    assert route_stats(mw, "/down")["errors"] == 1


async def test_failing_bookkeeping_never_fails_the_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Route:
        @property
        def path(self) -> str:
            raise KeyError("a framework bug")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope["route"] = Route()
        await hello(scope, receive, send)

    mw = TimingMiddleware(app)
    with caplog.at_level(logging.ERROR, logger="asgi_perf.timing"):
        first = await call(mw)
        await call(mw)
    assert first.status == 200 and first.body == b"hello"
    assert mw.stats()["record_failures"] == 2
    assert len([r for r in caplog.records if r.name == "asgi_perf.timing"]) == 1


# -- slow requests -----------------------------------------------------------------------------
async def test_a_timing_inside_another_gives_the_outer_context_back() -> None:
    """Layers between two Timings report to the outer one, before and after the inner ran."""
    seen: list[Any] = []
    inner = TimingMiddleware(hello)

    async def between(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope[SCOPE_KEY])
        await inner(scope, receive, send)
        seen.append(scope[SCOPE_KEY])

    scope = make_scope()
    await call(TimingMiddleware(between), scope=scope)
    assert len(seen) == 2 and seen[0] is seen[1]
    assert SCOPE_KEY not in scope


async def test_slow_request_logged_once_with_details(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/orders/7":
            clock.now += 0.75
        add_timing(scope, "db", 700.0, "12 queries")
        await hello(scope, receive, send)

    mw = TimingMiddleware(app, clock=clock, slow_threshold="500ms")
    with caplog.at_level(logging.WARNING, logger="asgi_perf.timing"):
        await call(mw, path="/orders/7")
        await call(mw, path="/orders/8")  # fast: not logged
    records = [r for r in caplog.records if r.name == "asgi_perf.timing"]
    assert len(records) == 1
    message = records[0].getMessage()
    for part in ("GET", "/orders/{id}", "200", "0.750s", 'db;dur=700;desc="12 queries"'):
        assert part in message
    assert records[0].duration_seconds == pytest.approx(0.75)  # type: ignore[attr-defined]
    assert route_stats(mw, "/orders/{id}")["slow"] == 1


async def test_slow_log_can_be_disabled(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        clock.now += 100
        await hello(scope, receive, send)

    with caplog.at_level(logging.WARNING, logger="asgi_perf.timing"):
        await call(TimingMiddleware(app, clock=clock, slow_threshold=None))
    assert not caplog.records


# -- scopes, series, configuration ---------------------------------------------------------
async def test_lifespan_and_websocket_pass_through_untouched() -> None:
    seen: list[tuple[Any, Any, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope, receive, send))

    async def receive() -> dict[str, Any]:
        return {}

    async def send(message: Any) -> None:
        return None

    mw = TimingMiddleware(app)
    for kind in ("lifespan", "websocket"):
        scope = {"type": kind}
        await mw(scope, receive, send)
        assert seen[-1] == (scope, receive, send)
    assert mw.stats()["routes"] == []


async def test_unknown_methods_and_routes_are_bounded() -> None:
    mw = TimingMiddleware(hello, max_routes=2)
    for path in ("/a", "/b", "/c", "/d"):
        await call(mw, path=path)
    await call(mw, "BREW", "/a")
    routes = {(r["method"], r["route"]): r["count"] for r in mw.stats()["routes"]}
    assert routes == {
        ("GET", "/a"): 1,
        ("GET", "/b"): 1,
        ("GET", "__overflow__"): 2,
        ("_OTHER", "__overflow__"): 1,
    }
    assert mw.stats()["routes_overflowed"] == 3


async def test_in_flight_gauge() -> None:
    seen: list[int] = []
    mw: TimingMiddleware

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(mw.stats()["in_flight"])
        await asyncio.sleep(0)
        await hello(scope, receive, send)

    mw = TimingMiddleware(app)
    await asyncio.gather(call(mw), call(mw))
    assert sorted(seen) == [1, 2] and mw.stats()["in_flight"] == 0


def test_env_off_switches_a_header_and_the_slow_log_off() -> None:
    """``off`` for the two settings that take it (each variable arriving at its option:
    test_options_contract)."""
    mw = TimingMiddleware.from_env(hello, environ={"ASGI_PERF_RESPONSE_TIME_HEADER": "X-Took"})
    assert mw.response_time_header == b"x-took"
    assert TimingMiddleware.enabled_in_env({}) is True
    assert TimingMiddleware.enabled_in_env({"ASGI_PERF_TIMING_ENABLED": "no"}) is False
    off = TimingMiddleware.from_env(
        hello,
        environ={
            "ASGI_PERF_RESPONSE_TIME_HEADER": "off",
            "ASGI_PERF_SLOW_REQUEST_THRESHOLD": "off",
        },
    )
    assert off.response_time_header is None and off.slow_threshold is None


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("server_timing", "maybe"),
        ("response_time_header", "bad header"),
        ("slow_threshold", -1),
        ("otel", "yes please"),
        ("max_routes", 0),
        ("expose_server_timing", 42),
        ("expose_server_timing", "not-an-ip"),
        ("clock", 5),
    ],
)
def test_bad_options_name_the_option(option: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        TimingMiddleware(hello, **{option: value})
    assert option in str(info.value)


# -- under a real server ---------------------------------------------------------------------
@pytest.mark.slow
def test_under_uvicorn_headers_templates_and_disconnect_499() -> None:
    import socket
    import time

    import httpx
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    from tests.support import serve

    ran: list[str] = []

    async def user(request: Request) -> JSONResponse:
        return JSONResponse(
            {"id": request.path_params["uid"]}, background=BackgroundTask(ran.append, "bg")
        )

    async def upload(request: Request) -> PlainTextResponse:
        body = await request.body()  # the client leaves half-way
        return PlainTextResponse(str(len(body)))

    mw = TimingMiddleware(
        Starlette(routes=[Route("/users/{uid}", user), Route("/upload", upload, methods=["POST"])])
    )
    with serve(mw) as url:
        with httpx.Client(base_url=url) as client:
            for uid in ("1", "2"):
                response = client.get(f"/users/{uid}")
                assert response.status_code == 200
                metrics = parse_server_timing(response.headers["server-timing"])
                assert metrics[0][0] == "total"
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\npartial")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            routes = {(r["method"], r["route"]): r["statuses"] for r in mw.stats()["routes"]}
            if ("POST", "/upload") in routes:
                break
            time.sleep(0.02)
    assert routes[("GET", "/users/{uid}")] == {"200": 2}
    assert routes[("POST", "/upload")] == {"499": 1}
    assert ran == ["bg", "bg"]
