"""Rate-limit response fields as pure functions (table-tested).

- ``RateLimit-Policy`` and ``RateLimit``: draft-ietf-httpapi-ratelimit-headers-10, both
  Structured Fields Lists (RFC 9651 §3.1) of Strings naming a policy, with parameters
  ``q`` (quota), ``w`` (window, seconds) on the policy and ``r`` (remaining), ``t`` (seconds
  until reset) on the current state: ``"default";q=100;w=60`` / ``"default";r=42;t=17``.
- ``Retry-After`` (RFC 9110 §10.2.3) as delay-seconds, never 0 on a refusal.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = [
    "delta_seconds",
    "policy_field",
    "policy_item",
    "ratelimit_template",
    "retry_after",
    "sf_string",
]


def sf_string(value: str) -> str:
    """An RFC 9651 §3.3.3 String: quoted, ``\\`` and ``"`` escaped, only printable ASCII."""
    text = "".join(c if " " <= c <= "~" else "?" for c in value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def delta_seconds(seconds: float) -> int:
    """Whole seconds rounded up (a client that waits this long is never early), >= 0."""
    return max(0, math.ceil(seconds - 1e-6))


def retry_after(seconds: float) -> int:
    """``Retry-After`` for a refusal: rounded up, at least 1 (``0`` invites a hot retry loop)."""
    return max(1, delta_seconds(seconds))


def policy_item(name: str, quota: int, window: float) -> str:
    """One ``RateLimit-Policy`` member: ``"name";q=quota;w=window``."""
    return f"{sf_string(name)};q={quota};w={delta_seconds(window)}"


def policy_field(items: Iterable[tuple[str, int, float]]) -> bytes:
    """``RateLimit-Policy`` listing every policy that applied (name, quota, window)."""
    return ", ".join(policy_item(*item) for item in items).encode("ascii")


def ratelimit_template(name: str) -> bytes:
    """``RateLimit`` for one policy, to fill with ``% (remaining, reset)``."""
    return sf_string(name).encode("ascii") + b";r=%d;t=%d"
