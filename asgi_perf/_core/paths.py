"""A path's shape: numeric, UUID and long hex segments collapsed to placeholders.

``/users/42`` and ``/users/43`` are one route to whoever counts by route: Timing's statistics
series (when no framework names the route) and the cache's hint that a route answers
uncacheably (a REST path with a new id each time is never the same path twice).
"""

from __future__ import annotations

import re

__all__ = ["CACHE_SIZE", "MAX_TEMPLATE_LENGTH", "collapse_path", "memo"]

MAX_TEMPLATE_LENGTH = 200
_UUID = re.compile(
    r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
)
_HEX = re.compile(r"^(?=[a-fA-F]*[0-9])(?=[0-9]*[a-fA-F])[0-9a-fA-F]{16,}$")


def _collapse_segment(segment: str) -> str:
    if not segment:
        return segment
    if segment.isdigit():
        return "{id}"
    if len(segment) >= 32 and _UUID.match(segment):
        return "{uuid}"
    if len(segment) >= 16 and _HEX.match(segment):
        return "{hex}"
    return segment


memo: dict[str, str] = {}
CACHE_SIZE = 4096


def collapse_path(path: str) -> str:
    """``/users/42/orders/7f3c…`` → ``/users/{id}/orders/{uuid}`` (bounded in length).

    Memoised in a bounded dict (emptied when full): an app sees the same few paths again and
    again, and splitting costs more than the rest of the request bookkeeping.
    """
    template = memo.get(path)
    if template is None:
        template = "/".join(map(_collapse_segment, path.split("/")))[:MAX_TEMPLATE_LENGTH]
        if len(memo) >= CACHE_SIZE:
            memo.clear()
        memo[path] = template
    return template
