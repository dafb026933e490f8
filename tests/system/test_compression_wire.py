"""CompressionMiddleware over a real server (uvicorn on loopback) with real clients:
httpx, ``curl --compressed`` and headless Chromium (skipped, with the reason, when absent)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from asgi_perf.compression import CompressionMiddleware
from tests.support import UvicornThread

pytestmark = pytest.mark.slow

BODY = orjson.dumps(
    {"items": [{"id": i, "name": f"user {i}", "email": f"u{i}@example.com"} for i in range(250)]}
)
PAGE = (
    b"<!doctype html><html><head><title>asgi-perf</title></head><body>"
    b'<pre id="out">pending</pre><script>'
    b"fetch('/json').then(r => r.json().then(d => {"
    b"document.getElementById('out').textContent = 'items=' + d.items.length"
    b" + ' encoding=' + r.headers.get('content-encoding');"
    b"}));</script>" + b"<!-- " + b"padding " * 200 + b"-->" + b"</body></html>"
)
NDJSON = [orjson.dumps({"n": i, "pad": "x" * (i * 7)}) + b"\n" for i in range(40)]
CHROMIUM = "/usr/bin/chromium"


class Site:
    """The app under test, plus a log of what each request sent and got."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.second_sent = threading.Event()
        self.log: list[tuple[str, str | None, str | None]] = []
        self.app = self._recorder(CompressionMiddleware(self._app))

    def _recorder(self, inner: Any) -> Any:
        async def app(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await inner(scope, receive, send)
                return
            accept = dict(scope["headers"]).get(b"accept-encoding")

            async def record(message: Any) -> None:
                if message["type"] == "http.response.start":
                    encoding = dict(message["headers"]).get(b"content-encoding")
                    self.log.append(
                        (
                            scope["path"],
                            accept and accept.decode(),
                            encoding and encoding.decode(),
                        )
                    )
                await send(message)

            await inner(scope, receive, record)

        return app

    async def _app(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            message = await receive()
            await send({"type": "lifespan.startup.complete"})
            message = await receive()
            assert message["type"] == "lifespan.shutdown"
            await send({"type": "lifespan.shutdown.complete"})
            return
        path = scope["path"]
        if path == "/sse":
            await self._sse(send)
            return
        if path == "/stream":
            await send(_start(b"application/x-ndjson"))
            for line in NDJSON:
                await send({"type": "http.response.body", "body": line, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        body, content_type = (
            (PAGE, b"text/html; charset=utf-8")
            if path == "/"
            else (
                BODY,
                b"application/json",
            )
        )
        await send(_start(content_type, len(body)))
        await send({"type": "http.response.body", "body": body})

    async def _sse(self, send: Any) -> None:
        self.release.clear()
        self.second_sent.clear()
        await send(_start(b"text/event-stream"))
        await send({"type": "http.response.body", "body": b"data: first\n\n", "more_body": True})
        deadline = time.monotonic() + 15
        while not self.release.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        self.second_sent.set()
        await send({"type": "http.response.body", "body": b"data: second\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _start(content_type: bytes, length: int | None = None) -> dict[str, Any]:
    headers = [(b"content-type", content_type)]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    return {"type": "http.response.start", "status": 200, "headers": headers}


@pytest.fixture(scope="module")
def site() -> Iterator[tuple[Site, str]]:
    site = Site()
    with UvicornThread(site.app) as server:
        yield site, server.url


@pytest.mark.parametrize("coding", ["zstd", "br", "gzip"])
def test_httpx_decodes_every_coding(site: tuple[Site, str], coding: str) -> None:
    _, url = site
    with httpx.Client(base_url=url, timeout=10) as client:
        res = client.get("/json", headers={"Accept-Encoding": coding})
        assert res.headers["content-encoding"] == coding
        assert res.headers["vary"] == "Accept-Encoding"
        assert int(res.headers["content-length"]) < len(BODY) // 2
        assert res.content == BODY
        with client.stream("GET", "/stream", headers={"Accept-Encoding": coding}) as stream:
            assert stream.headers["content-encoding"] == coding
            assert "content-length" not in stream.headers
            assert stream.read() == b"".join(NDJSON)
        plain = client.get("/json", headers={"Accept-Encoding": "identity"})
        assert "content-encoding" not in plain.headers
        assert plain.headers["vary"] == "Accept-Encoding"
        assert plain.content == BODY


@pytest.mark.parametrize("coding", ["zstd", "br", "gzip"])
def test_sse_first_event_arrives_before_the_second_is_sent(
    site: tuple[Site, str], coding: str
) -> None:
    app, url = site
    received: list[bytes] = []
    with (
        httpx.Client(base_url=url, timeout=20) as client,
        client.stream("GET", "/sse", headers={"Accept-Encoding": coding}) as res,
    ):
        assert res.headers["content-encoding"] == coding
        buffer = b""
        for chunk in res.iter_bytes():
            buffer += chunk
            if b"data: first\n\n" in buffer and not app.release.is_set():
                received.append(buffer)
                assert not app.second_sent.is_set()
                app.release.set()
    assert received == [b"data: first\n\n"]
    assert buffer == b"data: first\n\ndata: second\n\n"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("coding", [None, "zstd", "br", "gzip"])
def test_curl_compressed_decodes(site: tuple[Site, str], coding: str | None) -> None:
    _, url = site
    features = subprocess.run(["curl", "-V"], capture_output=True, text=True, check=True).stdout
    if coding == "zstd" and "zstd" not in features:
        pytest.skip("this curl has no zstd support")
    if coding == "br" and "brotli" not in features:
        pytest.skip("this curl has no brotli support")
    with tempfile.TemporaryDirectory() as tmp:
        headers_file = os.path.join(tmp, "headers")
        command = ["curl", "-sS", "--compressed", "--max-time", "20", "-D", headers_file]
        if coding is not None:
            command += ["-H", f"Accept-Encoding: {coding}"]
        out = subprocess.run([*command, url + "/json"], capture_output=True, check=True).stdout
        with open(headers_file, "rb") as file:
            headers = file.read().decode("latin-1").lower()
    assert out == BODY
    expected = coding or ("zstd" if "zstd" in features else "br")
    assert f"content-encoding: {expected}\r\n" in headers


# -- headless Chromium ------------------------------------------------------------------------
@contextlib.contextmanager
def _https(app: Any) -> Iterator[str]:
    """The app over HTTPS with a throwaway self-signed certificate for 127.0.0.1."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a certificate for the HTTPS browser test")
    with tempfile.TemporaryDirectory() as tmp:
        key, cert = os.path.join(tmp, "key.pem"), os.path.join(tmp, "cert.pem")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
             "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        with UvicornThread(app, ssl_keyfile=key, ssl_certfile=cert) as server:
            yield f"https://127.0.0.1:{server.port}"


def _chromium_dom(url: str) -> str:
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}", "--ignore-certificate-errors",
             "--virtual-time-budget=10000", "--dump-dom", url],
            capture_output=True, text=True, timeout=90,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed")
@pytest.mark.timeout(240)
def test_chromium_loads_page_and_json_with_zstd_or_br() -> None:
    """Over HTTPS (self-signed, --ignore-certificate-errors) and plain HTTP.

    Chromium advertises zstd and br to secure contexts; 127.0.0.1 counts as one, and
    Chromium 156 sends ``gzip, deflate, br, zstd`` on both legs. The HTTPS leg insists on
    zstd or br; the HTTP leg accepts whatever that browser version advertises there, and
    checks that the coding negotiated from it decodes to the right content.
    """
    site = Site()
    with _https(site.app) as url:
        dom = _chromium_dom(url + "/")
    sent = {path: (accept, encoding) for path, accept, encoding in site.log}
    assert set(sent) >= {"/", "/json"}, site.log
    page_accept, page_encoding = sent["/"]
    json_encoding = sent["/json"][1]
    assert page_accept is not None and ("zstd" in page_accept or "br" in page_accept), sent
    assert page_encoding in ("zstd", "br") and json_encoding in ("zstd", "br"), sent
    assert f"items=250 encoding={json_encoding}" in dom, dom[-2000:]

    plain = Site()
    with UvicornThread(plain.app) as server:
        dom = _chromium_dom(server.url + "/")
    accept, encoding = {p: (a, e) for p, a, e in plain.log}["/json"]
    assert f"items=250 encoding={encoding}" in dom, dom[-2000:]
    assert encoding == ("zstd" if "zstd" in (accept or "") else "br" if "br" in (accept or "")
                        else "gzip")  # fmt: skip
