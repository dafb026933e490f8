"""Clients that go away: mid-request-body, before the response, mid-response, or by the server
cancelling the request's task — with compression, a cache fill and a dedup leadership in flight.

Each test proves three things:

- **no task left behind**: the set of ``asyncio.all_tasks()`` returns to what it was before
  the request (lease renewers, background refreshes and codec threads' waiters all end);
- **no waiter hanging**: requests queued behind the departed leader finish promptly — they are
  released by the leader, not by their ``lock_timeout``/``wait_timeout`` (set to a minute here,
  while the test's own bound is a few seconds), and the timeout counters stay at zero;
- **no half entry stored**: the next request gets the full, correct body (decoded where it is
  compressed) and the app runs again for it: nothing truncated was kept.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from asgi_perf._stack import from_env
from asgi_perf.cache import CacheMiddleware
from asgi_perf.compression import CompressionMiddleware
from asgi_perf.dedup import DedupMiddleware
from tests.support import Response, call, make_scope

BOUND = 10.0  # seconds a request may take here before it counts as hanging (timeouts are 60 s)
PATIENCE = 60  # lock_timeout / wait_timeout of the middlewares under test

# Compressible chunks, the middle one past the 128 KiB mark where compression moves to a thread.
CHUNKS = [b"chunk %d " % i * 2000 for i in range(3)]
CHUNKS[1] = b"big chunk " * 16_000
FULL = b"".join(CHUNKS)


class ClientGone(OSError):
    """What an ASGI 2.4 server raises from ``send`` once the client has disconnected."""


class StreamApp:
    """Streams ``CHUNKS`` (cacheable, compressible); can hold its response until released and
    can read the request body first, giving up (like Starlette's ``ClientDisconnect``) if the
    client leaves mid-body."""

    def __init__(self, read_body: bool = False, single: bool = False) -> None:
        self.calls = 0
        self.single = single  # the whole body in one message (what dedup may share)
        self.gate: asyncio.Event | None = None
        self.read_body = read_body
        self.bodies: list[list[dict[str, Any]]] = []
        self.streaming = asyncio.Event()  # set once a response's first chunk went out

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.calls += 1
        if self.read_body:
            messages = []
            while True:
                message = await receive()
                messages.append(message)
                if message["type"] == "http.disconnect":
                    self.bodies.append(messages)
                    raise ClientGone("client disconnected while sending its body")
                if not message.get("more_body", False):
                    break
            self.bodies.append(messages)
        if self.gate is not None:
            await self.gate.wait()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/plain"),
                    (b"cache-control", b"public, max-age=60"),
                ],
            }
        )
        if self.single:
            await send({"type": "http.response.body", "body": FULL})
            return
        for chunk in CHUNKS:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            self.streaming.set()
            await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": b""})


async def departing(
    app: Any,
    path: str = "/r",
    *,
    method: str = "GET",
    headers: Sequence[tuple[str, str]] = (),
    body: Sequence[bytes] = (),
    leave_mid_body: bool = False,
    fail_send_at_body: int | None = None,
) -> list[dict[str, Any]]:
    """One request whose client leaves: after ``body`` (with ``more_body`` still set) when
    ``leave_mid_body``, or by ``send`` raising on body message number ``fail_send_at_body``.
    Returns the messages that reached the client; the app's exception, if any, propagates."""
    pending = [
        {"type": "http.request", "body": chunk, "more_body": leave_mid_body or i < len(body) - 1}
        for i, chunk in enumerate(body or [b""])
    ]
    gone = asyncio.Event()
    if leave_mid_body:
        gone.set()

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        await gone.wait()
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []
    bodies = 0

    async def send(message: dict[str, Any]) -> None:
        nonlocal bodies
        if gone.is_set():
            raise ClientGone("send after disconnect")
        if message["type"] == "http.response.body":
            bodies += 1
            if bodies == fail_send_at_body:
                gone.set()
                raise ClientGone("client disconnected mid-response")
        sent.append(message)

    scope = make_scope(method, path, headers=[("accept-encoding", "gzip"), *headers])
    await app(scope, receive, send)
    return sent


def decoded(response: Response) -> bytes:
    if response.header("content-encoding") == "gzip":
        return zlib.decompress(response.body, 16 + zlib.MAX_WBITS)
    assert response.header("content-encoding") is None
    return response.body


async def get(app: Any, path: str = "/r", **kwargs: Any) -> Response:
    return await asyncio.wait_for(
        call(app, "GET", path, headers=[("accept-encoding", "gzip")], **kwargs), BOUND
    )


@pytest.fixture
async def no_task_left() -> AsyncIterator[None]:
    """Fails the test if a task started during it is still alive (after a bounded settle)."""
    before = set(asyncio.all_tasks())
    yield
    leftover: set[asyncio.Task[Any]] = set()
    for _ in range(300):  # up to ~3 s for tasks that end on their own (pub/sub reader)
        leftover = {t for t in asyncio.all_tasks() - before if not t.done()}
        leftover.discard(asyncio.current_task())  # type: ignore[arg-type]
        if not leftover:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"tasks left behind: {leftover}")


@pytest.fixture(params=["memory", "redis"])
def storage(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://"
    return str(request.getfixturevalue("redis_url"))


async def close(mw: Any) -> None:
    await mw.store.close()


# -- compression -------------------------------------------------------------------------------
@pytest.mark.usefixtures("no_task_left")
async def test_compression_client_gone_mid_response() -> None:
    app = StreamApp()
    mw = CompressionMiddleware(app)
    with pytest.raises(ClientGone):
        await departing(mw, fail_send_at_body=2)  # while the big chunk is being compressed
    response = await get(mw)
    assert response.header("content-encoding") == "gzip"
    assert decoded(response) == FULL


@pytest.mark.usefixtures("no_task_left")
async def test_compression_task_cancelled_mid_response() -> None:
    """The server cancels the request while a big chunk is compressed in a worker thread."""
    app = StreamApp()
    mw = CompressionMiddleware(app)
    sent: list[dict[str, Any]] = []
    big_started = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if len(sent) == 2:  # the first body chunk left; the next one is the big one
            big_started.set()

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    task = asyncio.ensure_future(
        mw(make_scope(headers=[("accept-encoding", "gzip")]), receive, send)
    )
    await asyncio.wait_for(big_started.wait(), BOUND)
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    response = await get(mw)
    assert decoded(response) == FULL


# -- cache fill in flight ----------------------------------------------------------------------
async def _leader_and_waiters(mw: Any, app: StreamApp, leave: Any) -> list[Response]:
    """Start a leader (held by the app's gate), queue three waiters behind it, let the leader
    go and have its client ``leave``; return what the waiters got."""
    app.gate = asyncio.Event()
    leader = asyncio.ensure_future(leave())
    while app.calls < 1:
        await asyncio.sleep(0.005)
    waiters = [asyncio.ensure_future(get(mw)) for _ in range(3)]
    for _ in range(20):  # let them queue behind the leader's claim
        await asyncio.sleep(0.005)
    app.gate.set()
    app.gate = None
    with pytest.raises((ClientGone, asyncio.CancelledError)):
        await asyncio.wait_for(leader, BOUND)
    return list(await asyncio.wait_for(asyncio.gather(*waiters), BOUND))


@pytest.mark.usefixtures("no_task_left")
async def test_cache_fill_leader_gone_mid_response(storage: str, key_prefix: str) -> None:
    app = StreamApp()
    mw = CacheMiddleware(app, storage=storage, key_prefix=key_prefix, lock_timeout=PATIENCE)
    try:
        got = await _leader_and_waiters(mw, app, lambda: departing(mw, fail_send_at_body=2))
        assert [r.body for r in got] == [FULL] * 3
        assert mw.stats()["lock_timeouts"] == 0
        calls = app.calls
        again = await get(mw)
        assert again.body == FULL and again.header("x-cache") == "HIT"
        assert app.calls == calls  # the waiters' own fill is what got stored, in full
    finally:
        await close(mw)


@pytest.mark.usefixtures("no_task_left")
async def test_cache_fill_leader_cancelled(storage: str, key_prefix: str) -> None:
    """The server cancels the filling request: the claim is released, not left to expire."""
    app = StreamApp()
    mw = CacheMiddleware(app, storage=storage, key_prefix=key_prefix, lock_timeout=PATIENCE)
    try:

        async def leave() -> None:
            task = asyncio.ensure_future(departing(mw))
            # cancel once the first chunk is out (the fill is mid-response)
            await app.streaming.wait()
            task.cancel()
            await task

        got = await _leader_and_waiters(mw, app, leave)
        assert [r.body for r in got] == [FULL] * 3
        assert mw.stats()["lock_timeouts"] == 0
    finally:
        await close(mw)


@pytest.mark.usefixtures("no_task_left")
async def test_cache_client_gone_before_response(storage: str, key_prefix: str) -> None:
    """A GET whose client leaves before the app answers (the app notices and gives up)."""
    app = StreamApp(read_body=True)
    mw = CacheMiddleware(app, storage=storage, key_prefix=key_prefix, lock_timeout=PATIENCE)
    try:
        with pytest.raises(ClientGone):
            await asyncio.wait_for(departing(mw, body=[b""], leave_mid_body=True), BOUND)
        response = await get(mw)
        assert response.body == FULL and response.header("x-cache") == "MISS"
        assert app.calls == 2
        assert (await get(mw)).header("x-cache") == "HIT"
    finally:
        await close(mw)


# -- dedup leadership in flight ----------------------------------------------------------------
@pytest.mark.usefixtures("no_task_left")
async def test_dedup_leader_gone_mid_response(storage: str, key_prefix: str) -> None:
    app = StreamApp()
    mw = DedupMiddleware(app, storage=storage, key_prefix=key_prefix, wait_timeout=PATIENCE)
    try:
        got = await _leader_and_waiters(mw, app, lambda: departing(mw, fail_send_at_body=2))
        assert [r.body for r in got] == [FULL] * 3
        assert all(r.header("x-dedup") is None for r in got)  # each ran its own request
        stats = mw.stats()
        assert stats["timeouts"] == 0 and stats["hits"] == stats["coalesced"] == 0
    finally:
        await close(mw)


@pytest.mark.usefixtures("no_task_left")
async def test_dedup_leader_cancelled(storage: str, key_prefix: str) -> None:
    app = StreamApp()
    mw = DedupMiddleware(app, storage=storage, key_prefix=key_prefix, wait_timeout=PATIENCE)
    try:

        async def leave() -> None:
            task = asyncio.ensure_future(departing(mw))
            await app.streaming.wait()
            task.cancel()
            await task

        got = await _leader_and_waiters(mw, app, leave)
        assert [r.body for r in got] == [FULL] * 3
        assert mw.stats()["timeouts"] == 0
    finally:
        await close(mw)


@pytest.mark.usefixtures("no_task_left")
async def test_dedup_client_gone_mid_request_body(storage: str, key_prefix: str) -> None:
    """The body is passed through as received (disconnect included) and nothing is claimed:
    the same request, sent in full, runs at once as a new leader and is recorded."""
    app = StreamApp(read_body=True, single=True)
    mw = DedupMiddleware(app, storage=storage, key_prefix=key_prefix, wait_timeout=PATIENCE)
    try:
        with pytest.raises(ClientGone):
            await asyncio.wait_for(
                departing(mw, method="POST", body=[b"part one,", b"part two"], leave_mid_body=True),
                BOUND,
            )
        assert [m.get("body") for m in app.bodies[0]] == [b"part one,", b"part two", None]
        assert app.bodies[0][-1]["type"] == "http.disconnect"
        full = [b"part one,", b"part two"]
        first = await asyncio.wait_for(call(mw, "POST", "/r", body=full), BOUND)
        second = await asyncio.wait_for(call(mw, "POST", "/r", body=full), BOUND)
        assert first.body == second.body == FULL
        assert first.header("x-dedup") is None and second.header("x-dedup") == "hit"
        assert app.calls == 2
    finally:
        await close(mw)


@pytest.mark.usefixtures("no_task_left")
async def test_idempotency_key_free_again_after_client_gone(storage: str, key_prefix: str) -> None:
    """A keyed request whose client left mid-response leaves no record and no claim: the
    retry runs (no 409 'in progress' forever) and is then what gets replayed."""
    app = StreamApp()
    mw = DedupMiddleware(app, storage=storage, key_prefix=key_prefix, wait_timeout=PATIENCE)
    key = [("idempotency-key", '"order-1"')]
    try:
        with pytest.raises(ClientGone):
            await departing(mw, method="POST", headers=key, body=[b"{}"], fail_send_at_body=2)
        retry = await asyncio.wait_for(call(mw, "POST", "/r", headers=key, body=b"{}"), BOUND)
        assert retry.status == 200 and retry.body == FULL
        assert retry.header("idempotent-replayed") is None
        replay = await asyncio.wait_for(call(mw, "POST", "/r", headers=key, body=b"{}"), BOUND)
        assert replay.body == FULL and replay.header("idempotent-replayed") == "true"
        assert app.calls == 2
    finally:
        await close(mw)


# -- the whole stack ---------------------------------------------------------------------------
def _stack(app: Any, storage: str, key_prefix: str) -> Any:
    return from_env(
        app,
        environ={
            "ASGI_PERF_STORAGE_URL": storage,
            "ASGI_PERF_KEY_PREFIX": key_prefix,
            "ASGI_PERF_RATE_LIMIT_ENABLED": "true",
            "ASGI_PERF_RATE_LIMIT": "100000/minute",
            "ASGI_PERF_DEDUP_ENABLED": "true",
            "ASGI_PERF_DEDUP_WAIT_TIMEOUT": str(PATIENCE),
            "ASGI_PERF_CACHE_ENABLED": "true",
            "ASGI_PERF_CACHE_LOCK_TIMEOUT": str(PATIENCE),
            "ASGI_PERF_QUERIES_ENABLED": "true",
        },
    )


async def _close_stack(stack: Any) -> None:
    """Close every store the stack opened (their connections belong to this test's loop), and
    stop the fleet publisher it started."""
    layer = stack
    while hasattr(layer, "app"):
        publisher = getattr(layer, "publisher", None)
        if publisher is not None:
            await publisher.stop()
        for owner in (layer, getattr(layer, "limiter", None)):
            store = getattr(owner, "store", None)
            if store is not None:
                await store.close()
        layer = layer.app


@pytest.mark.usefixtures("no_task_left")
async def test_full_stack_leader_gone_mid_response(storage: str, key_prefix: str) -> None:
    app = StreamApp()
    stack = _stack(app, storage, key_prefix)
    try:
        got = await _leader_and_waiters(stack, app, lambda: departing(stack, fail_send_at_body=2))
        assert [decoded(r) for r in got] == [FULL] * 3
        again = await get(stack)
        assert decoded(again) == FULL
    finally:
        await _close_stack(stack)


@pytest.mark.usefixtures("no_task_left")
async def test_full_stack_client_gone_mid_request_body(storage: str, key_prefix: str) -> None:
    """Through every layer: the partial body and the disconnect reach the app as sent, and
    the same request sent in full afterwards is answered in full."""
    app = StreamApp(read_body=True, single=True)
    stack = _stack(app, storage, key_prefix)
    try:
        with pytest.raises(ClientGone):
            await asyncio.wait_for(
                departing(stack, method="POST", body=[b"half", b" a body"], leave_mid_body=True),
                BOUND,
            )
        assert b"".join(m.get("body", b"") for m in app.bodies[0]) == b"half a body"
        assert app.bodies[0][-1]["type"] == "http.disconnect"
        full = await asyncio.wait_for(
            call(stack, "POST", "/r", headers=[("accept-encoding", "gzip")], body=b"whole"),
            BOUND,
        )
        assert full.status == 200 and decoded(full) == FULL
        assert [m.get("body") for m in app.bodies[1]] == [b"whole"]
    finally:
        await _close_stack(stack)
