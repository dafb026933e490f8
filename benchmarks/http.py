"""HTTP mode: the app under a real server on loopback, driven by ``wrk`` or a built-in generator.

The server runs in a subprocess (``benchmarks.server``) so it never shares an event loop, nor a
GIL, with the load generator. The built-in generator is an asyncio ``Protocol`` per keep-alive
HTTP/1.1 connection (no stream objects, no parsing beyond the status line, Content-Length and
chunked framing), so it costs the client as little as Python allows; its CPU use is reported, and
a run where it was the bottleneck is flagged, because then the ratios understate the difference.
Rounds are interleaved (bare, config, bare, config …) and each config is compared with the mean
of the bare segments around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from .progress import Progress

__all__ = ["HTTPResult", "HTTPSettings", "complete_response", "load", "parse_wrk", "run_http"]

ACCEPT = b"gzip, deflate, br, zstd"


@dataclass
class HTTPSettings:
    servers: tuple[str, ...] = ("uvicorn",)
    connections: int = 16
    duration: float = 2.0  # seconds per segment
    warmup: float = 1.0
    rounds: int = 3
    peers: bool = False
    use_wrk: bool = True


@dataclass
class Segment:
    requests: int
    seconds: float
    errors: int
    latencies: list[float] = field(default_factory=list)
    client_cpu: float = 0.0  # fraction of one core the generator used
    rps_override: float | None = None  # from wrk
    p50_override: float | None = None
    p99_override: float | None = None

    @property
    def rps(self) -> float:
        if self.rps_override is not None:
            return self.rps_override
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float | None:
        if q == 50 and self.p50_override is not None:
            return self.p50_override
        if q == 99 and self.p99_override is not None:
            return self.p99_override
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))] * 1e3


@dataclass
class HTTPResult:
    server: str
    config: str
    status: str = "ok"
    reason: str = ""
    rps: float | None = None  # median over rounds
    bare_rps: float | None = None
    ratio: float | None = None  # median of per-round rps / bare rps
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int = 0
    client_cpu: float | None = None
    generator: str = ""
    rounds: list[dict[str, float]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# -- the built-in load generator ------------------------------------------------------------------
class _Connection(asyncio.Protocol):
    def __init__(self, run: _Run) -> None:
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.started = 0.0
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def send(self) -> None:
        run = self.run
        if not run.running or self.transport is None:
            if self.transport is not None:
                self.transport.close()
            return
        run.sent += 1
        self.started = time.perf_counter()
        self.transport.write(run.template % run.sent)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            used = complete_response(self.buffer)
            if used is None:
                return
            status = int(self.buffer[9:12])
            del self.buffer[:used]
            self.run.record(status, time.perf_counter() - self.started)
            self.send()


def complete_response(buffer: bytearray) -> int | None:
    """Bytes of the first complete response in ``buffer``, or None while it is incomplete."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buffer[:end]).lower()
    match = re.search(rb"\r\ncontent-length:\s*(\d+)", head)
    if match:
        total = end + 4 + int(match.group(1))
        return total if len(buffer) >= total else None
    if b"chunked" in head:
        pos = end + 4
        while True:
            line_end = buffer.find(b"\r\n", pos)
            if line_end < 0:
                return None
            size = int(bytes(buffer[pos:line_end]).split(b";")[0], 16)
            pos = line_end + 2 + size + 2
            if len(buffer) < pos:
                return None
            if size == 0:
                return pos
    return end + 4  # no body (204, 304)


def _unique(path: str) -> str:
    """How requests to ``path`` differ: a path id for a ``-paths`` configuration, else the
    query."""
    return f"{path}/" if path.endswith("-paths") else f"{path}?n="


class _Run:
    def __init__(self, path: str) -> None:
        self.template = (
            f"GET {_unique(path)}%d HTTP/1.1\r\nHost: bench\r\nUser-Agent: asgi-perf-bench\r\n"
            f"Accept: application/json\r\nAccept-Encoding: {ACCEPT.decode()}\r\n\r\n"
        ).encode()
        self.running = True
        self.sent = 0
        self.done = 0
        self.errors = 0
        self.latencies: list[float] = []

    def record(self, status: int, latency: float) -> None:
        self.done += 1
        self.latencies.append(latency)
        if status >= 400:
            self.errors += 1


async def load(port: int, path: str, connections: int, duration: float) -> Segment:
    """Keep ``connections`` keep-alive connections busy on ``path`` for ``duration`` seconds."""
    loop = asyncio.get_running_loop()
    run = _Run(path)
    cpu0 = time.process_time()
    conns = []
    for _ in range(connections):
        _, protocol = await loop.create_connection(lambda: _Connection(run), "127.0.0.1", port)
        conns.append(protocol)
    t0 = time.perf_counter()
    await asyncio.sleep(duration)
    run.running = False
    elapsed = time.perf_counter() - t0
    done = run.done
    cpu = time.process_time() - cpu0
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(c.closed for c in conns)), 5)
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    return Segment(done, elapsed, run.errors, run.latencies, cpu / elapsed)


# -- wrk ------------------------------------------------------------------------------------------
WRK_SCRIPT = """
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", wrk.path .. UNIQUE .. counter,
                    {["Accept-Encoding"] = "gzip, deflate, br, zstd",
                     ["Accept"] = "application/json"})
end
"""


def _wrk_time(value: str, unit: str) -> float:
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


async def load_wrk(port: int, path: str, connections: int, duration: float) -> Segment:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT.replace("UNIQUE", '"' + _unique(path)[len(path) :] + '"'))
    try:
        proc = await asyncio.create_subprocess_exec(
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            "--latency",
            "-s",
            script.name,
            f"http://127.0.0.1:{port}{path}",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, _ = await proc.communicate()
    finally:
        os.unlink(script.name)
    return parse_wrk(out.decode(), max(1, round(duration)))


def parse_wrk(text: str, seconds: float) -> Segment:
    """The figures of ``wrk --latency`` output."""
    rps = re.search(r"Requests/sec:\s*([\d.]+)", text)
    p50 = re.search(r"^\s*50%\s+([\d.]+)(us|ms|s|m)\b", text, re.M)
    p99 = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s|m)\b", text, re.M)
    total = re.search(r"(\d+) requests in", text)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
    errors = re.search(r"Socket errors:.*?(\d+).*?(\d+).*?(\d+).*?(\d+)", text)
    if not rps or not total:
        raise RuntimeError(f"could not parse wrk output: {text[-300:]!r}")
    failed = int(non2xx.group(1)) if non2xx else 0
    if errors:
        failed += sum(int(g) for g in errors.groups())
    return Segment(
        int(total.group(1)),
        seconds,
        failed,
        rps_override=float(rps.group(1)),
        p50_override=_wrk_time(*p50.groups()) if p50 else None,
        p99_override=_wrk_time(*p99.groups()) if p99 else None,
    )


# -- the server and the rounds --------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Server:
    def __init__(self, server: str, peers: bool) -> None:
        self.server = server
        self.port = _free_port()
        args = [
            sys.executable,
            "-m",
            "benchmarks.server",
            "--server",
            server,
            "--port",
            str(self.port),
        ]
        if peers:
            args.append("--peers")
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
        )
        self.errors = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.errors, env=env)

    def start(self, timeout: float = 30.0) -> dict[str, str]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.server} did not start: {self._stderr()}")
        status: dict[str, str] = json.loads(line)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.server} exited: {self._stderr()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return status
            time.sleep(0.05)
        raise RuntimeError(f"{self.server} did not listen within {timeout} s")

    def _stderr(self) -> str:
        self.errors.seek(0)
        return self.errors.read().decode(errors="replace")[-800:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.errors.close()


def installed(server: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(server) is not None


def http_steps(settings: HTTPSettings, configs: int) -> int:
    return len(settings.servers) * (configs + settings.rounds * (2 * (configs - 1) + 1))


async def run_http(
    settings: HTTPSettings, configs: list[str], progress: Progress
) -> list[HTTPResult]:
    results: list[HTTPResult] = []
    for server in settings.servers:
        label = f"http {server}"
        if not installed(server):
            results += [
                HTTPResult(server, c, "not available", f"{server} not installed") for c in configs
            ]
            progress.step(label, len(configs) + settings.rounds * (2 * len(configs) - 1))
            continue
        proc = _Server(server, settings.peers)
        try:
            status = await asyncio.to_thread(proc.start)
            results += await _measure(proc.port, server, configs, status, settings, progress)
        except Exception as exc:
            results += [HTTPResult(server, c, "error", repr(exc)) for c in configs]
        finally:
            proc.stop()
    return results


async def _measure(
    port: int,
    server: str,
    configs: list[str],
    status: dict[str, str],
    settings: HTTPSettings,
    progress: Progress,
) -> list[HTTPResult]:
    wrk = settings.use_wrk and shutil.which("wrk") is not None
    generator = "wrk" if wrk else f"built-in asyncio ({settings.connections} connections)"
    driver = load_wrk if wrk else load
    label = f"http {server}"

    async def segment(config: str, duration: float) -> Segment:
        return await driver(port, "/" + config, settings.connections, duration)

    results = {c: HTTPResult(server, c, generator=generator) for c in configs}
    live = []
    for config in configs:
        result = results[config]
        state = status.get(config, "not available: not built")
        if state != "ok":
            result.status, result.reason = "not available", state.removeprefix("not available: ")
        else:
            try:
                warm = await segment(config, settings.warmup)
                if warm.requests == 0 or warm.errors == warm.requests:
                    raise RuntimeError("no successful response")
                live.append(config)
            except Exception as exc:
                result.status, result.reason = "error", repr(exc)
        progress.step(label)
    if "bare" not in live:
        for r in results.values():
            if r.status == "ok":
                r.status, r.reason = "error", "the bare app did not answer"
        return list(results.values())
    others = [c for c in live if c != "bare"]
    samples: dict[str, list[tuple[Segment, float]]] = {c: [] for c in configs}
    bare_segments: list[Segment] = []
    for round_no in range(settings.rounds):
        turn = round_no % len(others) if others else 0
        order = others[turn:] + others[:turn]
        before = await segment("bare", settings.duration)
        bare_segments.append(before)
        progress.step(label)
        for config in order:
            seg = await segment(config, settings.duration)
            after = await segment("bare", settings.duration)
            bare_segments.append(after)
            progress.step(label, 2)
            samples[config].append((seg, (before.rps + after.rps) / 2))
            before = after
    for config in others:
        _summarize(results[config], samples[config])
    _summarize(results["bare"], [(s, s.rps) for s in bare_segments])
    return list(results.values())


def _summarize(result: HTTPResult, samples: list[tuple[Segment, float]]) -> None:
    if not samples:
        return
    result.rps = statistics.median(s.rps for s, _ in samples)
    result.bare_rps = statistics.median(b for _, b in samples)
    result.ratio = statistics.median(s.rps / b for s, b in samples if b)
    p50 = [p for s, _ in samples if (p := s.percentile(50)) is not None]
    p99 = [p for s, _ in samples if (p := s.percentile(99)) is not None]
    result.p50_ms = statistics.median(p50) if p50 else None
    result.p99_ms = statistics.median(p99) if p99 else None
    result.errors = sum(s.errors for s, _ in samples)
    result.client_cpu = max(s.client_cpu for s, _ in samples)
    result.rounds = [{"rps": s.rps, "bare_rps": b, "client_cpu": s.client_cpu} for s, b in samples]
