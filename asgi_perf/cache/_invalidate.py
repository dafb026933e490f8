"""RFC 9111 §4.4: which stored responses a non-error response to an unsafe method voids.

The target URI's, and those of the ``Location`` and ``Content-Location`` it names when they
are of the same origin (another origin's entries are never touched by a request to this one,
so a client cannot use one site to purge another). Every variant of a URI carries one store
tag (:func:`asgi_perf.cache._keys.uri_tag`), so this costs a few store operations on those
URIs only, never a scan.
"""

from __future__ import annotations

from collections.abc import Iterable

from asgi_perf._core.asgi import Scope, get_header
from asgi_perf._core.http import single_host
from asgi_perf.cache._entries import Entries
from asgi_perf.cache._keys import raw_path, same_origin_target, target_parts, uri_tag
from asgi_perf.cache._request import RequestReader
from asgi_perf.stores import StoreUnavailable

__all__ = ["invalidate_targets"]


async def invalidate_targets(
    entries: Entries, reader: RequestReader, scope: Scope, headers: Iterable[tuple[bytes, bytes]]
) -> int:
    """Delete what is stored for the request's target URI and the same-origin URIs its
    response names; a store failure is counted as an outage, not raised (the response
    still reaches the client)."""
    host_value = single_host(scope["headers"])
    host = None if host_value is None else reader.host_key(host_value)
    if host is None:
        return 0
    scheme: str = scope.get("scheme") or "http"
    path = raw_path(scope)
    key_path, query = target_parts(path, scope.get("query_string", b""))
    tags = [uri_tag(scheme, host, key_path, query)]
    headers = list(headers)
    for name in (b"location", b"content-location"):
        value = get_header(headers, name)
        target = None if value is None else same_origin_target(value, scheme, host, path)
        if target is not None:
            target_path, target_query = target
            tags.append(
                uri_tag(scheme, host, *target_parts(target_path, target_query.encode("latin-1")))
            )
    try:
        deleted = await entries.invalidate(tags, key_path)
    except StoreUnavailable as exc:
        entries.outage.failed(exc)
        return 0
    return deleted
