"""The full stack under real servers (uvicorn, hypercorn, granian) and a real client (httpx):
1,000 requests at 50 concurrent keep-alive connections, zero errors, every body verified
against the checksum the app computed before any middleware touched it."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import sys
from collections.abc import Iterator

import httpx
import pytest

from tests.support import free_port, server_process

pytestmark = pytest.mark.slow

SERVERS = {
    "uvicorn": lambda port: [
        sys.executable,
        "-m",
        "uvicorn",
        "tests.apps.fullstack:app",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ],
    "hypercorn": lambda port: [
        sys.executable,
        "-m",
        "hypercorn",
        "tests.apps.fullstack:app",
        "--bind",
        f"127.0.0.1:{port}",
        "--log-level",
        "warning",
    ],
    "granian": lambda port: [
        sys.executable,
        "-m",
        "granian",
        "--interface",
        "asgi",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "tests.apps.fullstack:app",
    ],
}


@pytest.fixture(params=list(SERVERS))
def server(request: pytest.FixtureRequest) -> Iterator[str]:
    name = request.param
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not installed")
    port = free_port()
    with server_process(SERVERS[name](port), port) as url:
        yield url


ACCEPTS = ["gzip", "br", "zstd", "identity", "gzip, br, zstd", "br;q=0.5, gzip;q=0.9"]
PATHS = ["/small", "/large", "/private", "/stream"]


async def test_thousand_requests_fifty_concurrent(server: str) -> None:
    limits = httpx.Limits(max_connections=50, max_keepalive_connections=50)
    errors: list[str] = []
    async with httpx.AsyncClient(base_url=server, limits=limits, timeout=30) as client:
        semaphore = asyncio.Semaphore(50)

        async def one(i: int) -> None:
            path = PATHS[i % len(PATHS)]
            headers = {"accept-encoding": ACCEPTS[i % len(ACCEPTS)]}
            async with semaphore:
                response = await client.get(path, headers=headers)
            body = response.content  # httpx decodes gzip, br and zstd
            if response.status_code != 200:
                errors.append(f"{path}: {response.status_code}")
            elif hashlib.sha256(body).hexdigest() != response.headers.get("x-checksum"):
                errors.append(f"{path} ({headers}): body does not match its checksum")

        await asyncio.gather(*(one(i) for i in range(1000)))
    assert errors == []
