"""RFC 9842 dictionaries over real servers with real clients: headless Chromium decoding ``dcz``
on localhost, and two uvicorn worker processes running the ``from_env`` stack on one Redis
(one offers a dictionary, the other uses it)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

import asgi_perf
from tests.apps.versions import bare, version
from tests.support import (
    CHROMIUM,
    Chromium,
    UvicornThread,
    free_port,
    server_process,
    uvicorn_command,
)
from tests.unit.compression.test_compression_dictionaries import available, undcz

pytestmark = pytest.mark.slow


def _recorded(app: Any, log: list[dict[str, str | None]]) -> Any:
    """``app`` with a log of what each request named and what its response was encoded with."""

    async def recorder(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        entry: dict[str, str | None] = {
            "path": scope["path"],
            "accept-encoding": headers.get("accept-encoding"),
            "available-dictionary": headers.get("available-dictionary"),
        }
        log.append(entry)

        async def record(message: Any) -> None:
            if message["type"] == "http.response.start":
                out = {k.decode().lower(): v.decode() for k, v in message["headers"]}
                entry["content-encoding"] = out.get("content-encoding")
            await send(message)

        await app(scope, receive, record)

    return recorder


# The page: fetch version 1 (offered as a dictionary), give the browser real time to store it,
# then fetch version 2 and report its Content-Encoding and exact text. Chromium stores a
# dictionary asynchronously, so a later version is tried if one went out before that.
SCRIPT = """
(async () => {
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  await (await fetch('/api/items/1')).text();
  const seen = [];
  for (let n = 2; n <= 5; n++) {
    await sleep(500 * n);
    const r = await fetch('/api/items/' + n);
    const text = await r.text();
    seen.push(r.headers.get('content-encoding'));
    if (r.headers.get('content-encoding') === 'dcz') return {n, text, seen};
  }
  return {n: null, text: null, seen};
})()
"""


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed")
@pytest.mark.timeout(180)
def test_chromium_decodes_dcz_and_sees_the_exact_body() -> None:
    """Chromium 156, no flags, plain HTTP on ``localhost`` (a secure context): it stores the
    dictionary only when the response has a freshness lifetime (``max-age`` > 0; with
    ``no-cache``, ``max-age=0`` or ``no-store`` it never sends ``Available-Dictionary``), and
    only after the response completed, asynchronously: hence CDP with real time passing, not
    ``--dump-dom`` with virtual time (which showed no ``Available-Dictionary`` at all)."""
    log: list[dict[str, str | None]] = []
    environ = {"ASGI_PERF_COMPRESSION_DICTIONARIES": "/api/items/*"}
    app = _recorded(asgi_perf.from_env(bare, environ=environ), log)
    with UvicornThread(app) as server, Chromium() as browser:
        session = browser.open(f"http://localhost:{server.port}/")
        result = browser.evaluate(session, SCRIPT)
    assert result["n"] is not None, (result, log)
    n = result["n"]
    assert result["text"] == version(n).decode()  # what the page sees, byte for byte
    used = next(e for e in log if e["path"] == f"/api/items/{n}")
    assert used["content-encoding"] == "dcz"
    assert "dcz" in (used["accept-encoding"] or "")
    assert used["available-dictionary"] == available(version(n - 1)), log


@pytest.fixture
def two_workers(redis_url: str, key_prefix: str) -> Iterator[tuple[str, str]]:
    """Two uvicorn processes serving ``tests.apps.versions:app`` (the ``from_env`` stack,
    cache on too) with their dictionaries in one Redis."""
    env = {
        **os.environ,
        "ASGI_PERF_STORAGE_URL": redis_url,
        "ASGI_PERF_KEY_PREFIX": key_prefix,
        "ASGI_PERF_COMPRESSION_DICTIONARIES": "/api/items*",
        "ASGI_PERF_CACHE_ENABLED": "true",
    }
    first, second = free_port(), free_port()
    with (
        server_process(uvicorn_command("tests.apps.versions:app", first), first, env) as one,
        server_process(uvicorn_command("tests.apps.versions:app", second), second, env) as two,
    ):
        yield one, two


@pytest.mark.redis
def test_one_worker_offers_another_uses(
    two_workers: tuple[str, str], redis_url: str, key_prefix: str
) -> None:
    first, second = two_workers
    ae = {"accept-encoding": "gzip, br, zstd, dcb, dcz"}
    with httpx.Client(timeout=30) as client:
        offered = client.get(first + "/api/items/1", headers=ae)
        assert offered.headers["use-as-dictionary"] == 'match="/api/items*"'
        digest = hashlib.sha256(version(1)).digest()
        stored = redis.Redis.from_url(redis_url)
        try:
            assert stored.exists(f"{key_prefix}dict:d:{digest.hex()}") == 1
        finally:
            stored.close()
        headers = {**ae, "available-dictionary": available(version(1))}
        used = client.get(second + "/api/items/2", headers=headers)
        assert used.headers["content-encoding"] == "dcz"
        assert "available-dictionary" in used.headers["vary"].lower()
        assert undcz(used.content, version(1)) == version(2)
        # the query form of the same resource, on the other worker, with the new dictionary
        headers = {**ae, "available-dictionary": available(version(2))}
        again = client.get(first + "/api/items?v=3", headers=headers)
        assert again.headers["content-encoding"] == "dcz"
        assert undcz(again.content, version(2)) == version(3)
        # a client without that dictionary gets plain zstd from the same stack
        plain = client.get(second + "/api/items/2", headers=ae)
        assert plain.headers["content-encoding"] == "zstd"
        assert plain.headers["x-checksum"] == hashlib.sha256(version(2)).hexdigest()
