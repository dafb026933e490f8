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
from asgi_perf._core.http import AMPERSAND, canonical_query, valid_host
from asgi_perf._core.identity import ClientIP, default_user_key
from asgi_perf.dedup._rules import FINGERPRINTED

__all__ = ["FIXED", "IDENTITY", "RequestParts"]

FIXED = 6  # parts before the header slots: method, path, query, identity, scheme, host
IDENTITY = 3  # the index of the identity part
_SCHEMES = {"http": b"http", "https": b"https"}
_NO_BODY_METHODS = frozenset({"GET", "HEAD"})
_HTTP1 = frozenset({"1.0", "1.1"})
_FRAMING_NAMES = frozenset({b"content-length", b"transfer-encoding"})
_HOST = -3  # header slot: the Host, checked after the pass
_FRAMING = -2  # header slot: says the request has a body
_IGNORED = -1  # header slot: not part of the fingerprint
_SPELLINGS = 1024  # header name spellings remembered, at most
_REMEMBERED = 4096  # peers and hosts remembered, at most (each)


def _path(scope: Scope) -> bytes:
    raw = scope.get("raw_path")
    if isinstance(raw, bytes):
        return raw
    path: str = scope.get("root_path", "") + scope["path"]
    return path.encode("utf-8", "surrogatepass")


class RequestParts:
    """``parts(scope) -> (parts or None, the request has no body)``.

    Every request runs this, so it reads the scope with ``in`` rather than ``get`` and
    remembers what it worked out for a value seen before (a header spelling, the identity of
    a peer, a ``Host``): a request like the last ones costs no call but the identity's (and
    not that one when the default user key would find neither ``user`` nor ``state``).
    """

    def __init__(
        self,
        vary_headers: tuple[bytes, ...],
        identity: Callable[[Scope], str | None],
        client_ip: ClientIP,
    ) -> None:
        self.identity = identity
        self._default_user = identity is default_user_key
        self.client_ip = client_ip
        # Every header the fingerprint reads, with its slot: one pass over the request headers.
        names = dict.fromkeys((*vary_headers, *FINGERPRINTED))
        self._slots = {name: FIXED + i for i, name in enumerate(names)}  # index in parts
        #: The index of the ``Authorization`` part.
        self.auth = self._slots[b"authorization"]
        self._blank = [b""] * (FIXED + len(self._slots))
        #: NULs in the parts joined by NUL when no part holds one.
        self.separators = len(self._blank) - 1
        #: The request fields a response's ``Vary`` may name and still be replayed.
        self.fingerprinted = frozenset((*self._slots, b"host"))
        # Any spelling of a header name seen -> its slot, _HOST, _FRAMING or _IGNORED. A Host
        # in ``vary_headers`` is checked as the Host and kept in its slot too.
        self._names: dict[bytes, int] = {
            **dict.fromkeys(_FRAMING_NAMES, _FRAMING),
            **self._slots,
            b"host": _HOST,
        }
        self._host_slot = self._slots.get(b"host", 0)
        self._peers: dict[str, bytes] = {}  # peer address -> identity part (no proxies)
        self._hosts: dict[bytes, bytes | None] = {}  # Host value -> single_host's answer
        self._methods: dict[str, bytes] = {}  # method -> its part

    def __call__(self, scope: Scope) -> tuple[list[bytes] | None, bool]:
        """The fingerprint's parts but the body: method, raw path, canonical query, identity,
        scheme, host (:data:`FIXED` parts), then the fingerprinted headers, each in its slot
        (repeats comma-joined); and whether the request has no body (RFC 9112 §6.3: an
        HTTP/1 GET or HEAD with neither Content-Length nor Transfer-Encoding), so nothing is
        read before the app. ``None`` for the parts when the ``Host`` is repeated or invalid
        (:func:`~asgi_perf._core.http.single_host`)."""
        names = self._names
        framed = False
        sent: bytes | None = None  # the Host field's value
        parts = [*self._blank]
        for name, value in scope["headers"]:
            i = names[name] if name in names else self._slot(name)  # a new spelling: learn it
            if i >= 0:
                parts[i] = value if not parts[i] else parts[i] + b"," + value
            elif i == _FRAMING:
                framed = True
            elif i == _HOST:
                if sent is not None:
                    return None, False
                sent = value
                if self._host_slot:
                    parts[self._host_slot] = value
        hosts = self._hosts
        if sent is None:
            host: bytes | None = b""
        elif sent in hosts:
            host = hosts[sent]
        else:
            if len(hosts) >= _REMEMBERED:
                hosts.clear()
            host = hosts[sent] = valid_host(sent)
        if host is None:
            return None, False
        method = scope["method"]
        methods = self._methods  # the few the middleware lets through
        method_part = methods[method] if method in methods else method.encode("ascii")
        methods[method] = method_part
        query = scope["query_string"] if "query_string" in scope else b""
        if AMPERSAND in query:
            query = canonical_query(query)
        path = scope["raw_path"] if "raw_path" in scope else None
        if type(path) is not bytes:
            path = _path(scope)
        scheme = scope["scheme"] if "scheme" in scope else None
        if scheme in _SCHEMES:
            scheme_part = _SCHEMES[scheme]
        else:
            scheme_part = str(scheme or "http").encode("utf-8", "surrogatepass")
        # The identity: ``u:<user key>``, else ``ip:<client address>``, which depends on the
        # peer alone without trusted proxies (remembered then). "surrogatepass": never fails
        # on any str, and keeps distinct strings distinct.
        if self._default_user and "user" not in scope and not ("state" in scope and scope["state"]):
            user = None  # what default_user_key says of a scope without user nor state, no call
        else:
            user = self.identity(scope)
        client = scope["client"] if "client" in scope else None
        peer = client[0] if client else None
        peers = self._peers
        if user is not None:
            who = b"u:" + str(user).encode("utf-8", "surrogatepass")
        elif type(peer) is str and peer in peers:
            who = peers[peer]
        else:
            who = b"ip:" + self.client_ip(scope).encode("utf-8", "surrogatepass")
            if not self.client_ip.trusted and type(peer) is str:
                if len(peers) >= _REMEMBERED:
                    peers.clear()
                peers[peer] = who
        parts[:FIXED] = (method_part, path, query, who, scheme_part, host)
        return parts, (
            not framed
            and method in _NO_BODY_METHODS
            and (scope["http_version"] if "http_version" in scope else None) in _HTTP1
        )

    def _slot(self, name: bytes) -> int:
        """The slot of a spelling not seen yet: its lowercase form's (all of them are known)."""
        i = self._names.get(name.lower(), _IGNORED)
        if len(self._names) < _SPELLINGS:
            self._names[name] = i
        return i
