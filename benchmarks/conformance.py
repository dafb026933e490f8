"""python -m benchmarks.conformance: the public HTTP caching conformance suite against the cache.

The suite (https://github.com/http-tests/cache-tests, Node, no dependencies for this mode) runs
in reverse-proxy mode: its origin server on one port; in front of it, on another, a small httpx
reverse proxy wrapped in ``CacheMiddleware`` (its defaults, or ``--options``, on ``--storage``);
the suite's client talks to the proxy. Prints how many required and optimal tests pass and
names the ones that do not (``--json`` writes every result).

Examples:

    git clone https://github.com/http-tests/cache-tests /tmp/cache-tests
    python -m benchmarks.conformance --suite /tmp/cache-tests
    python -m benchmarks.conformance --suite /tmp/cache-tests --storage redis://127.0.0.1:6379/15
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from asgi_perf._core.http import HOP_BY_HOP

__all__ = ["main", "proxy_app", "summarize"]

#: Request fields a proxy does not forward (RFC 9110 §7.6.1), and Host (the origin's own).
_HOP = HOP_BY_HOP | {b"host"}

#: Response fields of the origin's framing, which the proxy replaces with its own.
_FRAMING = {b"transfer-encoding", b"content-length"}

#: Run by Node inside the suite: each test's kind and result as the suite's own site judges it.
_SUMMARY_MJS = """
import tests from './tests/index.mjs'
import { determineTestResult } from './test-engine/lib/results.mjs'
import fs from 'fs'
const results = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'))
const out = {}
for (const suite of tests) {
  for (const test of suite.tests) {
    const verdict = determineTestResult(tests, test.id, results)
    out[test.id] = [test.kind || 'required', verdict[2], test.name || '']
  }
}
console.log(JSON.stringify(out))
"""


def proxy_app(origin: str, transport: Any = None) -> Any:
    """An ASGI reverse proxy to ``origin``: the request forwarded as it came (hop-by-hop
    fields dropped), the response given back with its own fields and bytes, undecoded
    (``transport``: an httpx transport, for tests)."""
    import httpx

    # A connection per request: some of the suite's responses are framed wrongly on purpose,
    # and bytes they leave on a kept-alive connection would corrupt another test's response.
    client = httpx.AsyncClient(
        base_url=origin,
        timeout=30.0,
        transport=transport,
        limits=httpx.Limits(max_keepalive_connections=0),
    )
    for name in list(client.headers):  # httpx's own defaults (Accept-Encoding…): none added
        del client.headers[name]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _HOP]
        target = scope.get("raw_path") or scope["path"].encode()
        if scope["query_string"]:
            target += b"?" + scope["query_string"]
        request = client.build_request(
            scope["method"], target.decode("latin-1"), headers=headers, content=body
        )
        response = await client.send(request, stream=True)
        try:
            raw = b"".join([chunk async for chunk in response.aiter_raw()])  # not decoded
        finally:
            await response.aclose()
        # Every field as the origin sent it, Connection and the other hop-by-hop ones too:
        # what is stored or forwarded is the cache's to decide (RFC 9111 §3.1), not the
        # proxy's. Only the framing is made anew (the body arrived whole).
        out = [(k, v) for k, v in response.headers.raw if k.lower() not in _FRAMING]
        if response.status_code not in (204, 304) and scope["method"] != "HEAD":
            out.append((b"content-length", str(len(raw)).encode("ascii")))
        elif "content-length" in response.headers:
            out.append((b"content-length", response.headers["content-length"].encode("ascii")))
        await send({"type": "http.response.start", "status": response.status_code, "headers": out})
        await send({"type": "http.response.body", "body": raw})

    return app


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port}")


def summarize(verdicts: dict[str, list[str]]) -> dict[str, Any]:
    """Counts by kind (``required``, ``optimal``; ``check`` tests are informational) of the
    tests this mode runs (browser-only ones are untested: ``-``) and the ids of those that did
    not pass."""
    out: dict[str, Any] = {}
    for kind in ("required", "optimal"):
        ids = [i for i, (k, verdict, _) in verdicts.items() if k == kind and verdict != "-"]
        passed = [i for i in ids if verdicts[i][1] == "✅"]
        out[kind] = {
            "passed": len(passed),
            "total": len(ids),
            "not_passed": sorted(set(ids) - set(passed)),
        }
    return out


def _serve(args: argparse.Namespace) -> None:
    from asgi_perf import CacheMiddleware

    from .server import run_uvicorn

    options = json.loads(args.options)
    app = CacheMiddleware(proxy_app(args.origin), storage=args.storage, **options)
    # the origin's Date is the one the suite checks: the server adds none of its own
    run_uvicorn(app, args.port, date_header=False, server_header=False)


def run(suite: Path, storage: str, options: str, log: Path | None = None) -> dict[str, list[str]]:
    """Each test's [kind, verdict symbol, name] from one run of the suite (the proxy's own
    output, warnings of the cache included, to ``log``)."""
    node = shutil.which("node")
    if node is None:
        raise SystemExit("python -m benchmarks.conformance: needs node (>= 18) on PATH")
    origin_port, proxy_port = _free_port(), _free_port()
    env = {**os.environ, "npm_config_protocol": "http", "npm_config_port": str(origin_port)}
    with tempfile.TemporaryDirectory() as tmp, open(log or Path(tmp) / "proxy.log", "wb") as out:
        env["npm_config_pidfile"] = str(Path(tmp) / "origin.pid")
        origin = subprocess.Popen(
            [node, "test-engine/server/server.mjs"], cwd=suite, env=env, stdout=subprocess.DEVNULL
        )
        proxy = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.conformance",
                "--serve",
                "--port",
                str(proxy_port),
                "--origin",
                f"http://127.0.0.1:{origin_port}",
                "--storage",
                storage,
                "--options",
                options,
            ],
            cwd=Path(__file__).resolve().parents[1],
            stderr=out,
        )
        try:
            _wait_for(origin_port, origin, "the suite's origin server")
            _wait_for(proxy_port, proxy, "the caching proxy")
            client_env = {**env, "npm_config_base": f"http://127.0.0.1:{proxy_port}"}
            client_env["npm_config_id"] = client_env["npm_package_config_id"] = ""  # all
            done = subprocess.run(
                [node, "--no-warnings", "test-engine/cli.mjs"],
                cwd=suite,
                env=client_env,
                capture_output=True,
                text=True,
                timeout=900,
                check=True,
            )
            results = Path(tmp) / "results.json"
            results.write_text(done.stdout)
            script = suite / ".asgi-perf-summary.mjs"
            script.write_text(_SUMMARY_MJS)
            try:
                judged = subprocess.run(
                    [node, "--no-warnings", str(script), str(results)],
                    cwd=suite,
                    capture_output=True,
                    text=True,
                    check=True,
                )
            finally:
                script.unlink()
            verdicts: dict[str, list[str]] = json.loads(judged.stdout)
            return verdicts
        finally:
            for proc in (proxy, origin):
                proc.terminate()
                proc.wait(10)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.conformance",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--suite", type=Path, help="a checkout of http-tests/cache-tests")
    parser.add_argument("--storage", default="memory://")
    parser.add_argument("--options", default="{}", help="CacheMiddleware options, as JSON")
    parser.add_argument("--json", type=Path, help="write every test's verdict here")
    parser.add_argument("--log", type=Path, help="write the caching proxy's output here")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--origin", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        _serve(args)
        return
    if args.suite is None or not (args.suite / "test-engine" / "cli.mjs").is_file():
        parser.error("--suite must name a checkout of github.com/http-tests/cache-tests")
    verdicts = run(args.suite.resolve(), args.storage, args.options, args.log)
    summary = summarize(verdicts)
    if args.json:
        args.json.write_text(json.dumps({"verdicts": verdicts, "summary": summary}, indent=1))
    for kind in ("required", "optimal"):
        got = summary[kind]
        share = 100.0 * got["passed"] / got["total"] if got["total"] else 0.0
        print(f"{kind}: {got['passed']}/{got['total']} ({share:.1f}%)")
        for test_id in got["not_passed"]:
            print(f"  not passed: {test_id} ({verdicts[test_id][1]})")


if __name__ == "__main__":
    main()
