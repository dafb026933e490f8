"""What a request's fingerprint holds, read from its scope in one pass over its headers.

:class:`RequestParts` gives the parts of the fingerprint but the body: method, raw path,
canonical query, identity (user key, else client IP), scheme and ``Host``
(:func:`~asgi_perf._core.http.single_host`: ``None`` for the parts when it is repeated or
invalid), then one slot per fingerprinted request field (the ``vary_headers`` and
:data:`~asgi_perf.dedup._rules.FINGERPRINTED`, repeats comma-joined). Duplicate suppression
fingerprints them all with the body; Idempotency-Key scopes a key by identity,
``Authorization``, scheme and host, and keys its payload by method, path, query and body.
"""

from __future__ import annotations

from collections.abc import Callable

from asgi_perf._core.asgi import Scope
from asgi_perf._core.http import canonical_query, single_host
from asgi_perf._core.identity import ClientIP
from asgi_perf.dedup._rules import FINGERPRINTED

__all__ = ["FIXED", "IDENTITY", "RequestParts"]

FIXED = 6  # parts before the header slots: method, path, query, identity, scheme, host
IDENTITY = 3  # the index of the identity part
_SCHEMES = {"http": b"http", "https": b"https"}
_FRAMING_NAMES = frozenset({b"content-length", b"transfer-encoding"})
_FRAMING = -2  # header slot: says the request has a body
_IGNORED = -1  # header slot: not part of the fingerprint


def _path(scope: Scope) -> bytes:
    raw = scope.get("raw_path")
    if isinstance(raw, bytes):
        return raw
    path: str = scope.get("root_path", "") + scope["path"]
    return path.encode("utf-8", "surrogatepass")


class RequestParts:
    """``parts(scope) -> (parts or None, the request frames a body)``."""

    def __init__(
        self,
        vary_headers: tuple[bytes, ...],
        identity: Callable[[Scope], str | None],
        client_ip: ClientIP,
    ) -> None:
        self.identity = identity
        self.client_ip = client_ip
        # Every header the fingerprint reads, with its slot: one pass over the request headers.
        names = dict.fromkeys((*vary_headers, *FINGERPRINTED))
        self._slots = {name: FIXED + i for i, name in enumerate(names)}  # index in parts
        #: The index of the ``Authorization`` part.
        self.auth = self._slots[b"authorization"]
        self._no_headers = [b""] * len(self._slots)
        #: The request fields a response's ``Vary`` may name and still be replayed.
        self.fingerprinted = frozenset((*self._slots, b"host"))
        # Any spelling of a header name seen -> its slot, _FRAMING or _IGNORED.
        self._names: dict[bytes, int] = {**dict.fromkeys(_FRAMING_NAMES, _FRAMING), **self._slots}
        self._peers: dict[str, bytes] = {}  # peer address -> identity part (no proxies)

    def who(self, scope: Scope) -> bytes:
        """The identity part: ``u:<user key>``, else ``ip:<client address>``."""
        # "surrogatepass": never fails on any str, and keeps distinct strings distinct
        user = self.identity(scope)
        if user is not None:
            return b"u:" + str(user).encode("utf-8", "surrogatepass")
        if self.client_ip.trusted:  # the address may come from the request's headers
            return b"ip:" + self.client_ip(scope).encode("utf-8", "surrogatepass")
        # Else it depends on the peer address alone: remember the last few thousand.
        client = scope.get("client")
        peer = client[0] if client else None
        if type(peer) is not str:
            return b"ip:" + self.client_ip(scope).encode("utf-8", "surrogatepass")
        who = self._peers.get(peer)
        if who is None:
            if len(self._peers) >= 4096:
                self._peers.clear()
            who = b"ip:" + self.client_ip(scope).encode("utf-8", "surrogatepass")
            self._peers[peer] = who
        return who

    def __call__(self, scope: Scope) -> tuple[list[bytes] | None, bool]:
        """The fingerprint's parts but the body: method, raw path, canonical query, identity,
        scheme, host (:data:`FIXED` parts), then the fingerprinted headers, each in its slot
        (repeats comma-joined); and whether the request says how its body is framed
        (Content-Length or Transfer-Encoding). ``None`` for the parts when the ``Host`` is
        repeated or invalid."""
        headers = scope["headers"]
        host = single_host(headers)
        if host is None:
            return None, False
        query = scope.get("query_string", b"")
        if b"&" in query:
            query = canonical_query(query)
        path = scope.get("raw_path")
        if type(path) is not bytes:
            path = _path(scope)
        scheme = scope.get("scheme") or "http"
        parts = [
            scope["method"].encode("ascii"),
            path,
            query,
            self.who(scope),
            _SCHEMES.get(scheme) or str(scheme).encode("utf-8", "surrogatepass"),
            host,
        ]
        parts += self._no_headers
        names = self._names
        framed = False
        for name, value in headers:
            i = names.get(name)
            if i is None:  # a spelling not seen yet: learn it (a bounded number of them)
                lowered = name.lower()
                i = self._slots.get(lowered, _FRAMING if lowered in _FRAMING_NAMES else _IGNORED)
                if len(names) < 1024:
                    names[name] = i
            if i >= 0:
                parts[i] = value if not parts[i] else parts[i] + b"," + value
            elif i == _FRAMING:
                framed = True
        return parts, framed
