"""Test harness: an in-process ASGI driver, real Redis servers, and a real uvicorn server.

Imported by ``conftest.py`` and by test modules (``from tests.support import call``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from asgi_perf._core.context import RequestContext, open_context

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


# -- in-process ASGI driver -------------------------------------------------------------------
@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    messages: list[dict[str, Any]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode()
        for k, v in self.headers:
            if k.lower() == wanted:
                return v.decode("latin-1")
        return None

    def header_list(self, name: str) -> list[str]:
        wanted = name.lower().encode()
        return [v.decode("latin-1") for k, v in self.headers if k.lower() == wanted]

    def text(self) -> str:
        return self.body.decode()


def make_scope(
    method: str = "GET",
    path: str = "/",
    query: str = "",
    headers: Iterable[tuple[str, str]] = (),
    client: tuple[str, int] | None = ("127.0.0.1", 50000),
    **extra: Any,
) -> dict[str, Any]:
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        "client": client,
        "server": ("testserver", 80),
        "state": {},
        "extensions": {},
    }
    scope.update(extra)
    return scope


def reader(app: Any) -> tuple[Any, list[RequestContext]]:
    """``app`` behind a reader of the per-request context (as Timing is): the context of each
    request, in order, to test what the layers inside report."""
    contexts: list[RequestContext] = []

    async def read(scope: dict[str, Any], receive: Any, send: Any) -> None:
        contexts.append(open_context(scope))
        await app(scope, receive, send)

    return read, contexts


async def call(
    app: Any,
    method: str = "GET",
    path: str = "/",
    *,
    query: str = "",
    headers: Iterable[tuple[str, str]] = (),
    body: bytes | Sequence[bytes] = b"",
    client: tuple[str, int] | None = ("127.0.0.1", 50000),
    scope: dict[str, Any] | None = None,
    disconnect_after_body: bool = False,
) -> Response:
    """Call ``app`` once and collect what it sends. ``body`` may be a list of chunks."""
    if scope is None:
        scope = make_scope(method, path, query, headers, client)
    chunks = [body] if isinstance(body, bytes) else list(body)
    pending: list[dict[str, Any]] = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks or [b""])
    ]
    done = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        if not disconnect_after_body:
            await done.wait()
        return {"type": "http.disconnect"}

    messages: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            done.set()

    await app(scope, receive, send)
    done.set()
    start = next(m for m in messages if m["type"] == "http.response.start")
    body_chunks = [m.get("body", b"") for m in messages if m["type"] == "http.response.body"]
    return Response(
        status=start["status"],
        headers=list(start.get("headers", [])),
        body=b"".join(body_chunks),
        messages=messages,
        chunks=body_chunks,
    )


# -- worker processes -------------------------------------------------------------------------
async def wait_until(
    ready: Callable[[], bool | Awaitable[bool]], timeout: float, step: float = 0.005
) -> None:
    """Poll ``ready`` (sync or async) every ``step`` seconds until it holds;
    ``asyncio.TimeoutError`` after ``timeout`` (``asyncio.timeout`` is Python 3.11+)."""

    async def poll() -> None:
        while True:
            result = ready()
            if await result if isinstance(result, Awaitable) else result:
                return
            await asyncio.sleep(step)

    await asyncio.wait_for(poll(), timeout)


def run_processes(
    target: Any,
    args: Sequence[Any],
    processes: int,
    results_per_process: int = 1,
    timeout: float = 90.0,
) -> tuple[list[Any], list[int | None]]:
    """Run ``target(*args, barrier, results)`` in ``processes`` spawned workers.

    The shared barrier lets the workers start their requests together; each puts
    ``results_per_process`` items on ``results``. Returns the items (fewer when a worker hung
    or died: the caller's count assertions then fail) and the workers' exit codes.
    """
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(processes)
    results = ctx.Queue()
    workers = [ctx.Process(target=target, args=(*args, barrier, results)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    collected: list[Any] = []
    try:
        for _ in range(processes * results_per_process):
            collected.append(results.get(timeout=timeout))
    except queue.Empty:
        pass
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():  # pragma: no cover - a hung worker
                worker.kill()
                worker.join()
    return collected, [worker.exitcode for worker in workers]


# -- free ports and real Redis ----------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    while True:
        port = free_port()
        if port < 55000:
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


class RedisServer:
    """A ``redis-server`` this test run owns: start, stop (kill), start again on one port."""

    def __init__(self, port: int | None = None, extra: Sequence[str] = ()) -> None:
        self.port = port or free_port()
        self.extra = list(extra)
        self.dir = tempfile.mkdtemp(prefix="asgi-perf-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def fill_redis(url: str) -> None:
    """Make a Redis of this test run full: ~2 MB of ballast, then ``maxmemory`` below it with
    ``noeviction``, so every write fails with ``OOM`` (and a read still answers)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        for i in range(20):
            client.set(f"ballast:{i}", b"x" * 100_000)
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", "1mb")
    finally:
        client.close()


def redis_server_available() -> bool:
    return shutil.which("redis-server") is not None


def ping(url: str) -> bool:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def skip_or_fail(reason: str) -> None:
    """Skip with ``reason``; under CI a missing Redis suite is a failure, not a skip."""
    if IN_CI:
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


def unique_prefix(label: str = "t") -> str:
    return f"asgi_perf_test:{label}:{uuid.uuid4().hex[:12]}:"


class RedisCluster:
    """Three masters on free loopback ports, from ``redis-server --cluster-enabled yes``."""

    def __init__(self, masters: int = 3) -> None:
        self.servers = [
            RedisServer(
                port=cluster_port(),
                extra=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "2000",
                    "--cluster-config-file",
                    f"nodes-{uuid.uuid4().hex[:6]}.conf",
                ],
            )
            for _ in range(masters)
        ]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in self.servers)

    def start(self) -> RedisCluster:
        for server in self.servers:
            server.start()
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *[f"127.0.0.1:{s.port}" for s in self.servers],
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
        )
        import redis

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            ok = True
            for server in self.servers:
                client = redis.Redis(port=server.port)
                info = client.execute_command("CLUSTER INFO")
                client.close()
                ok = ok and (info.get("cluster_state") if isinstance(info, dict) else None) == "ok"
            if ok:
                return self
            time.sleep(0.1)
        raise TimeoutError("cluster did not reach cluster_state:ok")

    def cleanup(self) -> None:
        for server in self.servers:
            server.cleanup()


# -- a real HTTP server -----------------------------------------------------------------------
class UvicornThread:
    """uvicorn serving ``app`` on a free loopback port in a thread of this process."""

    def __init__(self, app: Any, **config: Any) -> None:
        import uvicorn

        self.port = free_port()
        options = {
            "host": "127.0.0.1",
            "port": self.port,
            "log_level": "warning",
            "lifespan": "auto",
        }
        options.update(config)
        self.server = uvicorn.Server(uvicorn.Config(app, **options))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> UvicornThread:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextlib.contextmanager
def server_process(
    command: Sequence[str],
    port: int,
    env: dict[str, str] | None = None,
    forbid: Sequence[bytes] = (),
) -> Iterator[str]:
    """``with server_process([...], port) as url:`` — a server started by ``command`` from the
    repository root, listening on ``port``; on exit it is stopped and must not have logged a
    traceback (nor any of ``forbid``)."""
    proc = subprocess.Popen(
        list(command), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_for_port(port, timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert b"Traceback" not in err, err.decode(errors="replace")[-3000:]
    for text in forbid:
        assert text not in err, err.decode(errors="replace")[-3000:]


def uvicorn_command(app: str, port: int, *options: str) -> list[str]:
    """The command line of uvicorn serving ``app`` on ``port`` (a worker process of its own)."""
    return [sys.executable, "-m", "uvicorn", app, "--port", str(port), "--log-level", "warning",
            *options]  # fmt: skip


@contextlib.contextmanager
def serve(app: Any, **config: Any) -> Iterator[str]:
    """``with serve(app) as url:`` — the app under uvicorn for the block."""
    with UvicornThread(app, **config) as server:
        yield server.url


# -- headless Chromium driven over the DevTools protocol ----------------------------------------
CHROMIUM = "/usr/bin/chromium"


class Chromium:
    """Headless Chromium on a throwaway profile, driven over the DevTools protocol (CDP).

    For browser tests that need real time to pass between page actions (``--dump-dom`` with
    ``--virtual-time-budget`` fast-forwards timers, so work the browser does asynchronously,
    such as storing a compression dictionary, has not happened yet when the next fetch runs).
    """

    def __init__(self, *flags: str) -> None:
        from websockets.sync.client import connect

        self.profile = tempfile.TemporaryDirectory(ignore_cleanup_errors=True)
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={self.profile.name}", "--remote-debugging-port=0", *flags,
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        active = os.path.join(self.profile.name, "DevToolsActivePort")
        deadline = time.monotonic() + 60
        lines: list[str] = []
        while len(lines) < 2:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.05)
            with contextlib.suppress(OSError), open(active) as file:
                lines = file.read().split()
        self.exits = contextlib.ExitStack()
        self.ws = self.exits.enter_context(
            connect(f"ws://127.0.0.1:{lines[0]}{lines[1]}", max_size=None)
        )
        self.next_id = 0

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        while True:
            reply = json.loads(self.ws.recv(timeout=60))
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return dict(reply["result"])

    def open(self, url: str) -> str:
        """A new tab at ``url`` (loaded); returns its session id."""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        session = str(
            self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        )
        self.call("Page.navigate", session, url=url)
        self.evaluate(session, "new Promise(r => document.readyState === 'complete' ? r() :"
                               " addEventListener('load', () => r()))")  # fmt: skip
        return session

    def evaluate(self, session: str, expression: str) -> Any:
        """The value of ``expression`` in the page (promises awaited)."""
        result = self.call(
            "Runtime.evaluate", session, expression=expression, awaitPromise=True,
            returnByValue=True,
        )  # fmt: skip
        if "exceptionDetails" in result:
            raise RuntimeError(str(result["exceptionDetails"]))
        return result["result"].get("value")

    def close(self) -> None:
        if getattr(self, "exits", None) is not None:
            with contextlib.suppress(Exception):
                self.exits.close()
        self.proc.kill()
        self.proc.wait()
        self.profile.cleanup()

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- real server processes --------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(os.path.join(entry.path, "stat")) as stat_file:
                    stat = stat_file.read()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def worker_pids(server: subprocess.Popen[bytes]) -> list[int]:
    """uvicorn's worker processes (not multiprocessing's resource tracker)."""
    pids = []
    for pid in _children(server.pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if b"resource_tracker" in cmdline.read():
                    continue
        except OSError:
            continue  # gone meanwhile
        pids.append(pid)
    return sorted(pids)


def rss(pid: int) -> int:
    """The resident set size of ``pid`` in bytes (``VmRSS``)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def tcp_connections(pid: int, remote_port: int) -> int:
    """How many established TCP connections ``pid`` holds to ``remote_port`` (a Redis)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    count = 0
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as connections:
            next(connections)  # the header
            for line in connections:
                fields = line.split()
                remote, state, inode = fields[2], fields[3], fields[9]
                established = state == "01"
                if established and int(remote.rpartition(":")[2], 16) == remote_port:
                    count += inode in inodes
    return count


#: glibc returns freed heap to the system past 128 KiB (what the README suggests for steady RSS):
#: RSS then shows what a worker keeps, not what the allocator held on to after a burst.
STEADY_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


@dataclass
class ServerProcess:
    port: int
    proc: subprocess.Popen[bytes]
    log: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        with open(self.log, errors="replace") as log:
            return log.read()

    def workers(self) -> list[int]:
        return worker_pids(self.proc)


@contextlib.contextmanager
def uvicorn_process(
    app: str, env: dict[str, str], log: str, workers: int = 0, extra: Sequence[str] = ()
) -> Iterator[ServerProcess]:
    """``python -m uvicorn <app>`` on a free port, with ``workers`` worker processes (0: the
    app in the server process itself); stopped after the block, whose log must hold no
    traceback. The log is a file, not a pipe: a full pipe would stall the workers."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)]
    if workers:
        command += ["--workers", str(workers)]
    command += ["--log-level", "warning", "--no-access-log", *extra]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            command, cwd=root, env={**os.environ, **env}, stdout=log_file, stderr=log_file
        )
        server = ServerProcess(port, proc, log)
        try:
            wait_for_port(port, timeout=30)
            deadline = time.monotonic() + 30
            while workers and len(server.workers()) < workers and time.monotonic() < deadline:
                time.sleep(0.1)
            yield server
        finally:
            # The workers as they are now (a test may have killed one and the server started
            # another): none may outlive the server, whatever its shutdown did.
            children = _children(proc.pid)
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    text = server.log_text()
    assert "Traceback" not in text, text[-4000:]


async def cancel_at_each_pass(
    start: Callable[[], Awaitable[Any]], passes: int, check: Callable[[int], Awaitable[None]]
) -> None:
    """Start ``start()`` and cancel it after 0, 1, … ``passes - 1`` passes of the event
    loop, running ``check(passes)`` after each: every point a cancellation can land on."""
    for n in range(passes):
        call = asyncio.ensure_future(start())
        for _ in range(n):
            await asyncio.sleep(0)
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await call
        await check(n)
