"""``report_app()``: the statistics of the fleet (every live process) or of this process, as JSON,
Prometheus text or OpenMetrics.

Mount it (Starlette/FastAPI ``app.mount("/__perf__", asgi_perf.report_app())``; Litestar, see
the README) at the path the stack exempts (``ASGI_PERF_REPORT_PATH``, default ``/__perf__``):
``asgi_perf.from_env`` then sends requests under it straight to the app, so the report is never
rate limited, cached, deduplicated, or counted in its own statistics. ``GET``/``HEAD`` only.

Pages (below the mount point; :data:`PAGES`, a table other pages join; ``/profiles`` lists
the profiles the timing layer kept, see :func:`profiles`):

- ``/``: JSON, or the Prometheus exposition when ``?format=prometheus``/``openmetrics`` or when
  ``Accept`` prefers ``text/plain`` or ``application/openmetrics-text`` to JSON (what a
  Prometheus scraper sends). ``?format=json`` forces JSON.
- ``/metrics``: the Prometheus exposition whatever ``Accept`` prefers (OpenMetrics 1.0.0 when
  it asks for it, else text format 0.0.4).

Scope. With a Redis store (``ASGI_PERF_STORAGE_URL``) or a stats directory
(``ASGI_PERF_STATS_DIR``), every process of a stack built by ``from_env`` publishes its
statistics every ``ASGI_PERF_REPORT_PUBLISH_INTERVAL`` (5 s), and the report answers for the
**fleet**: this process's live figures merged with the others' last snapshots (counts summed,
latency sketches merged, so the fleet's p50/p95/p99 are within the sketch's 0.5%).
``?scope=process`` answers for this process alone. Without a backend the report is per process
and says so (``"note"``).

JSON: ``{"scope": "fleet"|"process", "host", "pid", "time", "instances": [{"id", "host", "pid",
"started", "published"}], "fleet": {"backend", "publish_interval", "ttl"} | null, "note"?,
"stats": {kind: [stats of each instance]}}``; ``stats`` is what each middleware's ``stats()``
shows (:mod:`asgi_perf._core.stats`), so a middleware that registers appears without this module
knowing it.

Protection: with a token (``token=`` or ``ASGI_PERF_REPORT_TOKEN``) every request must carry
``Authorization: Bearer <token>`` (RFC 6750; 401 with ``WWW-Authenticate`` otherwise). The report
shows SQL statements, routes and call sites: set a token, or keep the path off the public network.
"""

from __future__ import annotations

import hmac
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import orjson

from asgi_perf._core.asgi import (
    ASGIApp,
    Receive,
    Scope,
    Send,
    get_header,
    problem_body,
    serve_lifespan,
)
from asgi_perf._core.stats import states
from asgi_perf._fleet import Publisher, publisher_for
from asgi_perf._fleet.merge import documents, merge
from asgi_perf._fleet.snapshot import this_instance
from asgi_perf._report.prometheus import (
    OPENMETRICS_CONTENT_TYPE,
    PROMETHEUS_CONTENT_TYPE,
    exposition,
)
from asgi_perf._report.settings import ReportSettings
from asgi_perf.stores import Store

__all__ = [
    "PROMETHEUS_CONTENT_TYPE",
    "negotiate",
    "render_prometheus",
    "report_app",
    "wants_prometheus",
]

_FORMATS = {
    "json": "json",
    "prometheus": "prometheus",
    "text": "prometheus",
    "openmetrics": "openmetrics",
}
_MEDIA = {"text/plain": "prometheus", "application/openmetrics-text": "openmetrics"}
_PER_PROCESS = (
    "statistics of this process only: with several workers, a Redis store "
    "(ASGI_PERF_STORAGE_URL) or ASGI_PERF_STATS_DIR gives the fleet's"
)

_SILENT = (
    "this process does not publish its statistics (its stack was not built by "
    "asgi_perf.from_env): the other processes do not see it"
)


def negotiate(scope: Scope) -> str:
    """``"json"``, ``"prometheus"`` or ``"openmetrics"``: ``?format=`` wins, else ``Accept``."""
    query = scope.get("query_string") or b""
    if query:
        for key, value in parse_qsl(query.decode("latin-1")):
            if key == "format":
                return _FORMATS.get(value.lower(), "json")
    accept = get_header(scope.get("headers") or (), b"accept")
    if not accept:
        return "json"
    best, best_q, json_q = "json", 0.0, 0.0
    for media_range in accept.decode("latin-1").split(","):
        media, *params = media_range.split(";")
        media = media.strip().lower()
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0  # RFC 9110 §12.4.2: a malformed weight is no preference
        if media in _MEDIA and q > best_q:
            best, best_q = _MEDIA[media], q
        elif media == "application/json":
            json_q = max(json_q, q)
    return best if best_q > 0 and best_q > json_q else "json"


def wants_prometheus(scope: Scope) -> bool:
    """Whether the request asks for an exposition (either text format) rather than JSON."""
    return negotiate(scope) != "json"


def render_prometheus(
    stats: dict[str, list[dict[str, Any]]],
    *,
    openmetrics: bool = False,
    scope: str = "process",
    instances: int = 1,
) -> bytes:
    """The exposition of ``stats`` as :func:`asgi_perf._core.stats.states` gives them."""
    return exposition(stats, scope=scope, instances=instances, openmetrics=openmetrics)


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: bytes = b"application/json"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


@dataclass
class ReportRequest:
    """One request to the report, as a page sees it."""

    scope: Scope
    rest: str  # the path below the page's name ("<id>" of "/profiles/<id>")
    query: dict[str, str]
    settings: ReportSettings
    publisher: Publisher | None


def _problem(status: int, title: str, detail: str) -> Reply:
    return Reply(status, problem_body(status, title, detail), b"application/problem+json")


@dataclass
class _View:
    scope: str
    stats: dict[str, list[dict[str, Any]]]
    instances: list[dict[str, Any]]
    note: str | None = None


async def _view(request: ReportRequest) -> _View | Reply:
    """This process's statistics, merged with the fleet's unless ``?scope=process``."""
    publisher = request.publisher
    wanted = request.query.get("scope", "fleet" if publisher is not None else "process")
    if wanted not in ("fleet", "process"):
        return _problem(400, "Bad Request", "scope must be 'fleet' or 'process'")
    own = states()
    me = {**this_instance().describe(), "published": None}
    if publisher is None:
        return _View("process", own, [me], _PER_PROCESS)
    me["published"] = publisher.last_published
    if wanted == "process":
        return _View("process", own, [me])
    try:
        others = await publisher.others()
    except Exception as exc:  # the store or the directory: answer for this process
        detail = f"{type(exc).__name__}: {exc}"
        return _View("process", own, [me], f"fleet statistics unavailable ({detail})")
    try:
        merged = merge([own, *(document["stats"] for document in others)])
    except (KeyError, TypeError, ValueError) as exc:  # a snapshot of another asgi-perf version
        detail = f"{type(exc).__name__}: {exc}"
        return _View("process", own, [me], f"fleet statistics unreadable ({detail})")
    instances = [me] + [
        {**document["instance"], "published": document["published"]} for document in others
    ]
    return _View("fleet", merged, instances, None if publisher.running else _SILENT)


async def _exposition(request: ReportRequest, format_: str) -> Reply:
    view = await _view(request)
    if isinstance(view, Reply):
        return view
    openmetrics = format_ == "openmetrics"
    body = exposition(
        view.stats, scope=view.scope, instances=len(view.instances), openmetrics=openmetrics
    )
    return Reply(200, body, OPENMETRICS_CONTENT_TYPE if openmetrics else PROMETHEUS_CONTENT_TYPE)


async def overview(request: ReportRequest) -> Reply:
    """``/``: JSON, or the exposition when asked for (:func:`negotiate`)."""
    format_ = negotiate(request.scope)
    if format_ != "json":
        return await _exposition(request, format_)
    view = await _view(request)
    if isinstance(view, Reply):
        return view
    publisher = request.publisher
    document: dict[str, Any] = {
        "scope": view.scope,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "time": time.time(),
        "instances": view.instances,
        "fleet": None
        if publisher is None
        else {
            "backend": publisher.description,
            "publish_interval": publisher.interval,
            "ttl": publisher.snapshots.ttl,
        },
    }
    if view.note is not None:
        document["note"] = view.note
    document["stats"] = documents(view.stats)
    return Reply(200, orjson.dumps(document, default=str, option=orjson.OPT_NON_STR_KEYS))


async def metrics(request: ReportRequest) -> Reply:
    """``/metrics``: the exposition, for scrapers configured with a metrics path."""
    format_ = negotiate(request.scope)
    return await _exposition(request, "openmetrics" if format_ == "openmetrics" else "prometheus")


async def profiles(request: ReportRequest) -> Reply:
    """``/profiles``, ``/profiles/<id>``: the profiles the timing layer kept (HTML,
    ``?format=speedscope``, ``?format=json``; :mod:`asgi_perf.timing._profiles`). This
    process's: a profile is a large document, not a statistic the fleet merges."""
    from asgi_perf.timing._profiles import profiles_page

    path = "/profiles" + ("/" + request.rest if request.rest else "")
    page = profiles_page(request.scope, path)
    if page is None:
        return _problem(404, "Not Found", "No such profiles page.")
    status, body, content_type = page
    return Reply(status, body, content_type, [(b"x-content-type-options", b"nosniff")])


Page = Callable[[ReportRequest], Awaitable[Reply]]
#: The report's pages by the first segment of the path below the mount point.
PAGES: dict[str, Page] = {"": overview, "metrics": metrics, "profiles": profiles}


def _authorized(scope: Scope, token: str) -> Reply | None:
    """``None`` when ``Authorization: Bearer <token>`` is there, else the 401 to send."""
    header = get_header(scope.get("headers") or (), b"authorization") or b""
    scheme, _, credentials = header.partition(b" ")
    challenge = b'Bearer realm="asgi-perf"'
    if scheme.lower() != b"bearer" or not credentials.strip():
        reply = _problem(401, "Unauthorized", "The report requires a bearer token.")
    elif hmac.compare_digest(credentials.strip(), token.encode("latin-1")):
        return None
    else:
        reply = _problem(401, "Unauthorized", "The bearer token is not the report's.")
        challenge += b', error="invalid_token"'
    reply.headers.append((b"www-authenticate", challenge))
    return reply


def _page_path(scope: Scope) -> tuple[str, str]:
    """(page name, the rest) of the path below the mount point."""
    path: str = scope.get("path") or "/"
    root: str = scope.get("root_path") or ""
    if root and path.startswith(root):
        path = path[len(root) :]
    name, _, rest = path.strip("/").partition("/")
    return name, rest


async def _answer(scope: Scope, settings: ReportSettings, publisher: Publisher | None) -> Reply:
    if settings.token is not None:
        refused = _authorized(scope, settings.token)
        if refused is not None:
            return refused
    if scope.get("method") not in ("GET", "HEAD"):
        reply = _problem(405, "Method Not Allowed", "The report answers GET and HEAD.")
        reply.headers.append((b"allow", b"GET, HEAD"))
        return reply
    name, rest = _page_path(scope)
    page = PAGES.get(name)
    if page is None:
        return _problem(404, "Not Found", f"The report has no page {name!r}.")
    query = dict(parse_qsl((scope.get("query_string") or b"").decode("latin-1")))
    return await page(ReportRequest(scope, rest, query, settings, publisher))


def report_app(
    *,
    token: str | None = None,
    storage: str | Store | None = None,
    stats_dir: str | None = None,
    publish_interval: float | str | None = None,
    key_prefix: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> ASGIApp:
    """The report as an ASGI app (see the module docstring).

    Options left ``None`` come from ``environ`` (default ``os.environ``), as the stack's do:
    ``ASGI_PERF_REPORT_TOKEN``, ``ASGI_PERF_STORAGE_URL``/``REDIS_URL``, ``ASGI_PERF_STATS_DIR``,
    ``ASGI_PERF_REPORT_PUBLISH_INTERVAL``, ``ASGI_PERF_KEY_PREFIX``. A bad value raises
    ``ConfigError`` now, naming it.
    """
    settings = ReportSettings.resolve(
        environ,
        token=token,
        storage=storage,
        stats_dir=stats_dir,
        publish_interval=publish_interval,
        key_prefix=key_prefix,
    )
    publisher = publisher_for(settings)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1000})
            return
        reply = await _answer(scope, settings, publisher)
        headers = [
            *reply.headers,
            (b"content-type", reply.content_type),
            (b"content-length", b"%d" % len(reply.body)),
            (b"cache-control", b"no-store"),
            (b"vary", b"Accept"),
        ]
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        body = b"" if scope.get("method") == "HEAD" else reply.body
        await send({"type": "http.response.body", "body": body})

    return app
