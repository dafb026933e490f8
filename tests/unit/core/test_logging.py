"""asgi_perf's log records: level, logger and time even when only uvicorn's loggers are set up
(never Python's bare last-resort output), never doubled when the app configures logging,
structured ``extra`` fields, and streams judged slow by their first byte."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from asgi_perf.queries import QueryMiddleware, record_query
from asgi_perf.timing import TimingMiddleware
from tests.support import call, free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[3]
STAMPED = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING asgi_perf\.\w+: ")


def _python(code: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return proc.stderr


def test_without_any_logging_setup_records_carry_level_logger_and_time() -> None:
    err = _python("""
        import logging, asgi_perf
        logging.getLogger("asgi_perf.queries").warning("N+1 queries: %d", 8)
        logging.getLogger("asgi_perf.queries").info("not shown: below WARNING")
    """)
    [line] = err.splitlines()
    assert STAMPED.match(line) and line.endswith("asgi_perf.queries: N+1 queries: 8"), line


def test_steps_aside_when_the_app_configures_logging() -> None:
    err = _python("""
        import logging, asgi_perf
        logging.basicConfig(format="APP %(name)s %(message)s")
        logging.getLogger("asgi_perf.timing").warning("slow")
    """)
    assert err.splitlines() == ["APP asgi_perf.timing slow"]  # once, in the app's format


@pytest.mark.slow
def test_under_uvicorn_findings_are_not_last_resort_output(tmp_path: Path) -> None:
    (tmp_path / "n1app.py").write_text(
        textwrap.dedent("""
        from asgi_perf import QueryMiddleware
        from asgi_perf.queries import record_query

        async def inner(scope, receive, send):
            if scope["type"] != "http":
                return
            for i in range(6):
                record_query("SELECT * FROM books WHERE author_id = ?", 0.001, (i,))
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

        app = QueryMiddleware(inner)
        """)
    )
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "n1app:app", "--port", str(port), "--lifespan", "off"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_port(port, timeout=30)
        assert httpx.get(f"http://127.0.0.1:{port}/authors").status_code == 200
        time.sleep(0.2)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    lines = [line for line in err.splitlines() if "N+1" in line]
    assert len(lines) == 1 and STAMPED.match(lines[0]), err
    assert "GET /authors: N+1 queries: 6 executions" in lines[0]


async def test_query_findings_carry_structured_fields(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        for i in range(5):
            record_query("SELECT * FROM books WHERE author_id = ?", 0.002, (i,))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    with caplog.at_level(logging.WARNING, logger="asgi_perf.queries"):
        await call(QueryMiddleware(app), path="/authors/42/books")
    [record] = [r for r in caplog.records if r.name == "asgi_perf.queries"]
    fields = {
        name: getattr(record, name)
        for name in ("http_method", "http_route", "url_path", "finding", "query_count")
    }
    assert fields == {
        "http_method": "GET",
        "http_route": "/authors/{id}/books",
        "url_path": "/authors/42/books",
        "finding": "n+1",
        "query_count": 5,
    }
    assert record.statement == "select * from books where author_id = ?"  # type: ignore[attr-defined]
    assert record.duration_seconds == pytest.approx(0.01)  # type: ignore[attr-defined]
    assert record.call_site.startswith(__file__)  # type: ignore[attr-defined]


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_a_stream_is_slow_only_when_its_first_byte_is_late(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = _Clock()

    def events(first_after: float) -> Any:
        async def app(scope: Any, receive: Any, send: Any) -> None:
            headers = [(b"content-type", b"text/event-stream")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            clock.now += first_after
            for i in range(5):
                await send(
                    {"type": "http.response.body", "body": b"data: %d\n\n" % i, "more_body": True}
                )
                clock.now += 10.0  # the stream stays open: long, but not slow
            await send({"type": "http.response.body", "body": b""})

        return app

    open_stream = TimingMiddleware(events(0.01), clock=clock, slow_threshold=1.0)
    late_stream = TimingMiddleware(events(2.0), clock=clock, slow_threshold=1.0)
    with caplog.at_level(logging.WARNING, logger="asgi_perf.timing"):
        await call(open_stream, path="/events")
        assert caplog.records == []
        await call(late_stream, path="/events")
    [record] = caplog.records
    assert "GET /events -> 200 first byte after 2.000s" in record.getMessage()
    assert record.ttfb_seconds == pytest.approx(2.0)  # type: ignore[attr-defined]
    assert record.duration_seconds == pytest.approx(52.0)  # type: ignore[attr-defined]
    assert open_stream.stats()["routes"][0]["slow"] == 0
    assert late_stream.stats()["routes"][0]["slow"] == 1
