"""The route template of a request: one statistics series per route, never per raw path.

Raw paths as metric labels grow without bound (``/users/1``, ``/users/2``, … and every scanner's
probe): the cardinality blow-up of ``starlette-exporter`` and ``prometheus-fastapi-instrumentator``
with unmatched routes. The template is found, in order:

1. Starlette / FastAPI: the router stores the matched route in ``scope["route"]`` while routing;
   read after the app ran. Under a ``Mount`` the inner route's ``path`` is relative to the mount,
   whose prefix the router appended to ``scope["root_path"]``, so the template is that prefix
   (minus the app's own ``app_root_path``) plus the route's path. A ``Mount`` that is itself the
   final match (static files, a foreign sub-app) gives ``<prefix>/{path}``.
2. Litestar: ``scope["path_template"]``, set by its router.
3. Otherwise the path itself with numeric, UUID and long hex segments collapsed to ``{id}``,
   ``{uuid}``, ``{hex}``.

A 404 that no framework route claimed is ``__unmatched__``: the paths of requests that matched
nothing are the unbounded part.
"""

from __future__ import annotations

import re

from asgi_perf._core.asgi import Scope

__all__ = [
    "KNOWN_METHODS",
    "UNMATCHED",
    "collapse_path",
    "method_label",
    "route_template",
    "template_of",
]

UNMATCHED = "__unmatched__"
# RFC 9110 §9 plus PATCH (RFC 5789): anything else is one "_OTHER" series, as in OTel semconv
KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
MAX_TEMPLATE_LENGTH = 200

# A segment is what lies between two slashes (or an end of the path): each alternative matches
# whole segments only, and they are tried in this order, as the segment rules read: all digits
# is an id even when 32 long, and a UUID is a UUID before it is hex. One scan of the path, one
# call per segment replaced (three scans before: 1.24 -> 1.08 µs for ``/items/123456``, and
# 1.98 -> 1.43 µs for a path with nothing to collapse).
_UUID = r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"
_HEX = r"(?=[a-fA-F]*[0-9])(?=[0-9]*[a-fA-F])[0-9a-fA-F]{16,}"
_COLLAPSE = re.compile(rf"(?<![^/])(?:(\d+)|({_UUID})|({_HEX}))(?![^/])")
_PLACEHOLDERS = ("", "{id}", "{uuid}", "{hex}")  # by the group that matched


def _placeholder(match: re.Match[str]) -> str:
    return _PLACEHOLDERS[match.lastindex or 0]


def method_label(method: str) -> str:
    """The method a series is labelled with: a registered one, else ``_OTHER``."""
    return method if method in KNOWN_METHODS else "_OTHER"


_cache: dict[str, str] = {}
CACHE_SIZE = 4096
_room = CACHE_SIZE  # paths the memo takes before it is emptied (counted: no len call)


def collapse_path(path: str) -> str:
    """``/users/42/orders/7f3c…`` → ``/users/{id}/orders/{uuid}`` (bounded in length).

    Memoised in a bounded dict (emptied when full): an app sees the same few paths again and
    again, and collapsing costs more than the rest of the request bookkeeping.
    """
    global _room
    if path in _cache:
        return _cache[path]
    template = _COLLAPSE.sub(_placeholder, path)[:MAX_TEMPLATE_LENGTH]
    if _room <= 0:
        _cache.clear()
        _room = CACHE_SIZE
    _room -= 1
    _cache[path] = template
    return template


def _framework_template(route: object, scope: Scope) -> str | None:
    path = getattr(route, "path", None)
    if isinstance(path, str):
        app_root = scope.get("app_root_path")  # only set once a Mount matched
        prefix = "" if app_root is None else (scope.get("root_path") or "")[len(app_root) :]
        if hasattr(route, "routes"):  # a Mount that was the final match
            return prefix.rstrip("/") + "/{path}"
        return prefix + path
    template = scope.get("path_template")
    if isinstance(template, str):
        return template
    return None


# id(route) -> (route, its template, whether it is a Mount), for routes outside any Mount
# (whose template depends on the route alone). The entry holds the route, so its id
# cannot be reused by another object while cached. Bounded like the path memo.
_by_route: dict[int, tuple[object, str, bool]] = {}


def route_template(scope: Scope, status: int, from_scope: bool = True) -> tuple[str, bool]:
    """``(template, from_framework)`` for a finished request with response ``status``.

    ``from_framework`` says the template came from the framework's router (so it may be used
    as OpenTelemetry's ``http.route``, which must not be guessed).
    """
    if from_scope:
        route = scope.get("route")
        if route is not None and "app_root_path" not in scope:
            cached = _by_route.get(id(route))
            if cached is None or cached[0] is not route:
                template = _framework_template(route, scope)
                if template is None or not isinstance(getattr(route, "path", None), str):
                    cached = None  # from path_template: depends on the scope, not cached
                else:
                    cached = (route, template, hasattr(route, "routes"))
                    if len(_by_route) >= CACHE_SIZE:
                        _by_route.clear()
                    _by_route[id(route)] = cached
            if cached is not None:
                if status == 404 and cached[2]:
                    return UNMATCHED, False  # a Mount matched but nothing inside it did
                return cached[1], True
        if route is not None or "path_template" in scope:
            template = _framework_template(route, scope)
            if template is not None:
                if status == 404 and hasattr(route, "routes"):
                    return UNMATCHED, False  # a Mount matched but nothing inside it did
                return template, True
    if status == 404:
        return UNMATCHED, False
    path = scope.get("path") or "/"
    return collapse_path(path), False


def template_of(scope: Scope, status: int, from_scope: bool = True) -> str:
    """Just the template of :func:`route_template`: what the statistics are keyed on.

    On the per-request path (Timing, the query log): a cached route or a memoised path costs
    a dictionary lookup here, without building the pair.
    """
    # ``in`` and subscripts, not ``get``: no call event on the path every request takes
    if from_scope:
        if "route" in scope and scope["route"] is not None:
            route = scope["route"]
            key = id(route)
            cached = _by_route[key] if key in _by_route else None
            if cached is not None and cached[0] is route and "app_root_path" not in scope:
                return UNMATCHED if status == 404 and cached[2] else cached[1]
            return route_template(scope, status)[0]
        if "path_template" in scope:
            return route_template(scope, status)[0]
    if status == 404:
        return UNMATCHED
    path = scope["path"] if "path" in scope and scope["path"] else "/"
    return _cache[path] if path in _cache else collapse_path(path)  # (a path seen: no call)
