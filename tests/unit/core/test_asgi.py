"""Header helpers on raw ASGI header lists, and the per-request context."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from asgi_perf._core import context
from asgi_perf._core.asgi import (
    READY,
    get_header,
    get_header_values,
    header_tokens,
    merge_vary,
    problem_body,
    remove_headers,
    send_response,
    set_header,
    without,
)
from tests.support import make_scope

H = [(b"content-type", b"text/plain"), (b"Vary", b"Cookie"), (b"vary", b"Accept, Origin")]


def test_get_header_is_case_insensitive() -> None:
    assert get_header(H, b"vary") == b"Cookie"
    assert get_header(H, b"missing") is None
    assert get_header_values(H, b"vary") == [b"Cookie", b"Accept, Origin"]
    assert header_tokens(H, b"vary") == [b"cookie", b"accept", b"origin"]


@pytest.mark.parametrize(
    ("headers", "kept"),
    [
        ([(b"a", b"1"), (b"cache-tag", b"x")], [(b"a", b"1")]),
        ([(b"Cache-Tag", b"x"), (b"a", b"1"), (b"CACHE-TAG", b"y")], [(b"a", b"1")]),
        ([(b"a", b"1"), (b"b", b"2")], [(b"a", b"1"), (b"b", b"2")]),
        ([], []),
    ],
)
def test_without_drops_fields_in_any_case(
    headers: list[tuple[bytes, bytes]], kept: list[tuple[bytes, bytes]]
) -> None:
    for _ in range(2):  # the second time from the memo of lowercased names
        copy = without(headers, frozenset({b"cache-tag"}))
        assert copy == kept and copy is not headers


def test_set_and_remove() -> None:
    assert set_header(H, b"vary", b"*") == [(b"content-type", b"text/plain"), (b"vary", b"*")]
    assert remove_headers(H, b"vary") == [(b"content-type", b"text/plain")]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], b"Accept-Encoding"),
        ([(b"vary", b"Cookie")], b"Cookie, Accept-Encoding"),
        ([(b"vary", b"accept-encoding")], b"accept-encoding"),
        ([(b"Vary", b"Cookie"), (b"vary", b"Origin")], b"Cookie, Origin, Accept-Encoding"),
        ([(b"vary", b"*")], b"*"),
        ([(b"vary", b"")], b"Accept-Encoding"),
    ],
)
def test_merge_vary(headers: list[tuple[bytes, bytes]], expected: bytes) -> None:
    merged = merge_vary(headers, b"Accept-Encoding")
    assert get_header_values(merged, b"vary") == [expected]


def test_ready_is_done_every_time_it_is_awaited() -> None:
    """A wrapper hands back READY for a message it holds: awaiting it never suspends the
    awaiting coroutine and never wears out, however many requests share it."""

    async def hold(times: int) -> int:
        for _ in range(times):
            assert await READY is None
        return times

    for times in (1, 3, 1000):
        coro = hold(times)
        with pytest.raises(StopIteration) as done:
            coro.send(None)  # one step runs it to its end: no await suspended it
        assert done.value.value == times


async def test_send_response_and_problem() -> None:
    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    body = problem_body(429, "Too Many Requests", "slow down", "x#quota", retry_after=3)
    await send_response(send, 429, body, [(b"retry-after", b"3")], b"application/problem+json")
    assert sent[0]["status"] == 429
    assert (b"content-length", str(len(body)).encode()) in sent[0]["headers"]  # type: ignore[operator]
    assert orjson.loads(sent[1]["body"]) == {  # type: ignore[arg-type]
        "type": "x#quota",
        "title": "Too Many Requests",
        "status": 429,
        "detail": "slow down",
        "retry_after": 3,
    }


def test_context_is_a_no_op_without_a_reader() -> None:
    scope = make_scope()
    before = dict(scope)
    context.add_timing(scope, "cache", desc="hit")
    assert context.context_of(scope) is None
    assert scope == before


async def test_context_collects_for_its_request_only() -> None:
    async def request(name: str) -> list[tuple[str, float | None, str | None]]:
        scope = make_scope()
        ctx = context.open_context(scope)
        await asyncio.sleep(0)
        context.add_timing(scope, name, 1.5)
        await asyncio.sleep(0)
        context.add_timing(scope, name, desc="again")  # a constant: the shared entry
        return [(e.name, e.dur, e.desc) for e in ctx.timings]

    assert await asyncio.gather(request("a"), request("b")) == [
        [("a", 1.5, None), ("a", None, "again")],
        [("b", 1.5, None), ("b", None, "again")],
    ]


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ([context.TimingEntry("total", 12.3456)], b"total;dur=12.346"),
        ([context.TimingEntry("cache", None, "hit")], b'cache;desc="hit"'),
        ([context.TimingEntry("db", 4.0, '7 "q"')], b'db;dur=4;desc="7 \\"q\\""'),
        ([context.TimingEntry("a b", 0.0), context.TimingEntry("c")], b"a-b;dur=0, c"),
        ([context.TimingEntry("x", None, "line\nbreak")], b'x;desc="linebreak"'),
    ],
)
def test_server_timing_format(entries: list[context.TimingEntry], expected: bytes) -> None:
    for _ in range(2):  # the second time, entries without a duration come from the memo
        assert context.format_server_timing(entries) == expected
