"""What the cache reads from a request, in one pass over its headers, and the keys it maps to.

:class:`RequestReader` classifies header names once per spelling (a request usually has a
dozen fields, most of no interest), validates and memoises hosts, negotiates the content
coding a CompressionMiddleware would pick, and builds the keys of
:mod:`asgi_perf.cache._keys`; :class:`Request` is the result for one request.
"""

from __future__ import annotations

from typing import Any

from asgi_perf._core.asgi import Headers, Scope
from asgi_perf._core.http import fingerprint, single_host
from asgi_perf._core.identity import hash_secret
from asgi_perf._core.negotiation import choose_encoding
from asgi_perf.cache._entries import AE_ONLY
from asgi_perf.cache._keys import entry_key, headers_variant, stem, stem_tail, target_parts
from asgi_perf.cache._rules import RequestDirectives, parse_cache_control, request_directives

__all__ = ["AE", "BYPASS", "HOST", "Request", "RequestReader", "Resource"]

# Request header kinds read in one pass (0: of no interest).
HOST, AE, CC, PRAGMA, INM, IMS, CRED, KEYED, BYPASS, RANGE = range(1, 11)
_KINDS_MAX = 1024  # distinct header spellings / hosts / Accept-Encoding values memoised
_NO_DIRECTIVES = RequestDirectives()
_CONDITIONAL = frozenset({b"if-none-match", b"if-modified-since", b"range"})
# Preconditions are the app's business (RFC 9110 §13.1): such requests go straight to it.
_PRECONDITIONS = (b"if-range", b"if-match", b"if-unmodified-since")


class Request:
    """What the cache needs from one request."""

    __slots__ = (
        "accept_encoding",
        "as_sent",
        "base",
        "credentials",
        "directives",
        "head",
        "headers",
        "host",
        "if_modified_since",
        "if_none_match",
        "path",
        "plain_key",
        "query",
        "range",
        "scope",
        "stem",
    )

    def __init__(
        self, scope: Scope, resource: Resource | None = None, accept: bytes | None = None
    ) -> None:
        """Empty facts for :meth:`RequestReader.read` to fill in; or, with ``resource`` (its
        keys) and ``accept`` (its ``Accept-Encoding``), those of a plain request: no
        directive, conditional, credential, range or keyed field (what the middleware's fast
        path checked)."""
        self.scope = scope
        self.headers: Headers = scope["headers"]
        self.head = scope["method"] == "HEAD"
        if resource is None:
            self.host = ""  # lowercased Host, validated
            self.path = ""  # the raw path as it appears in keys (escaped, bounded)
            self.stem = ""  # "{path}scheme|host|identity|keyed headers": no "?" in it
            self.query = ""  # canonical query string, always last in a key
            self.base = ""  # stem + "?" + query: the resource (its Vary record)
            self.plain_key: str | None = None  # the entry key when nothing varies, once made
            self.as_sent = False  # (for_app decides)
        else:
            self.host = resource.host
            self.path = resource.path
            self.stem = resource.stem
            self.query = resource.query
            self.base = resource.base
            self.plain_key = resource.key
            #: a plain GET: :meth:`for_app` would give the app this very scope
            self.as_sent = not self.head and scope["method"] == "GET"
        self.credentials = False
        self.directives = _NO_DIRECTIVES
        self.if_none_match: bytes | None = None
        self.if_modified_since: bytes | None = None
        self.accept_encoding = accept
        self.range: bytes | None = None

    def for_app(self, validators: Headers) -> Scope:
        """This request as the app gets it on a fill: a ``GET`` (the entry serves ``HEAD``
        too), without the client's own conditionals (the cache answers them), with the
        stored entry's ``validators`` when it revalidates one."""
        original = self.scope
        if (
            original["method"] == "GET"
            and not validators
            and self.if_none_match is None  # (read from the fields: none of _CONDITIONAL)
            and self.if_modified_since is None
            and self.range is None
        ):
            # Nothing to change: the app gets the request's own scope, so what the framework
            # writes into it (Starlette's route, FastAPI's state) reaches the outer layers
            # (Timing's route templates) as it does without a cache.
            return original
        headers = [(k, v) for k, v in self.headers if k.lower() not in _CONDITIONAL]
        scope = dict(original)
        scope["method"] = "GET"
        headers.extend(validators)
        scope["headers"] = headers
        return scope

    def adopt(self, app_scope: Scope) -> None:
        """After the app ran on a copy (:meth:`for_app`): the keys the framework added to it
        (the route it matched, its state) join the request's own scope."""
        original = self.scope
        if app_scope is not original:
            for key, value in app_scope.items():
                if key not in original:
                    original[key] = value


class RequestReader:
    """Reads requests for one cache (its ``key_headers``, ``bypass_headers`` …)."""

    def __init__(
        self, key_headers: tuple[bytes, ...], bypass: frozenset[bytes], authenticated: bool
    ) -> None:
        self.key_headers = key_headers
        self.authenticated = authenticated
        self.boring: set[bytes] = set()
        self.hosts: dict[bytes, str] = {}
        # (Host, scheme) -> (host key, stem tail) of plain requests; None: not a valid host
        self.origins: dict[tuple[bytes, str | None], tuple[str, str] | None] = {}
        self.codings: dict[bytes | None, str] = {}
        self.kinds: dict[bytes, int] = {
            b"accept-encoding": AE,
            b"cache-control": CC,
            b"pragma": PRAGMA,
            b"if-none-match": INM,
            b"if-modified-since": IMS,
            b"authorization": CRED,
            b"cookie": CRED,
            b"host": HOST,
            b"range": RANGE,
        }
        for name in (*bypass, *_PRECONDITIONS):
            self.kinds[name] = BYPASS
        for name in key_headers:
            self.kinds.setdefault(name, KEYED)
        self._encodings: tuple[str, ...] | None = None

    def classify(self, name: bytes) -> int:
        """The kind of a header name spelled this way; names of no interest are remembered
        (bounded), so the loop over request headers skips them with one set lookup."""
        kind = self.kinds.get(name.lower(), 0)
        if len(self.boring) + len(self.kinds) < _KINDS_MAX:
            if kind:
                self.kinds[name] = kind  # another spelling of an interesting name
            else:
                self.boring.add(name)
        return kind

    def host_key(self, value: bytes) -> str | None:
        """``Host`` for the key, lowercased; ``None`` when it is not a valid host (whose
        characters could fake the key's separators, or that a framework reads otherwise)."""
        known = self.hosts.get(value)
        if known is None:
            valid = single_host(((b"host", value),))
            if valid is None:
                return None
            known = valid.decode("ascii")
            if len(self.hosts) < _KINDS_MAX:
                self.hosts[value] = known
        return known

    def origin(self, host: bytes, scheme: str | None) -> tuple[str, str] | None:
        """The host key and the :func:`stem_tail` of a plain request from ``host`` by
        ``scheme`` (``None``: not a valid host), memoised (bounded)."""
        key = self.host_key(host)
        known = None if key is None else (key, stem_tail(scheme, key))
        if len(self.origins) < _KINDS_MAX:
            self.origins[host, scheme] = known
        return known

    def read(self, scope: Scope) -> Request | None:
        """The request's facts; ``None`` when it must bypass the cache (an unkeyed header
        that changes the response, several or an invalid ``Host``, ``no-store``, a
        precondition). One loop over the headers with a branch per kind: long, but one pass."""
        req = Request(scope)
        kinds = self.kinds
        boring = self.boring
        cc: list[bytes] = []
        accept: list[bytes] = []
        pragma: bytes | None = None
        host: bytes | None = None
        creds: list[bytes] = []
        keyed: list[bytes] = []
        for name, value in req.headers:
            if name in boring:
                continue
            kind = kinds.get(name) or self.classify(name)
            if not kind:
                continue
            if kind == CC:
                cc.append(value)
            elif kind == AE:
                accept.append(value)
            elif kind == INM:
                req.if_none_match = value
            elif kind == IMS:
                req.if_modified_since = value
            elif kind == CRED:
                creds.append(value)
            elif kind == HOST:
                if host is not None:
                    # Several Host lines: the app may read another one than the key would
                    # (RFC 9112 §3.2 makes it a 400; some servers pass it on).
                    return None
                host = value
            elif kind == PRAGMA:
                pragma = value
            elif kind == KEYED:
                keyed.append(name.lower() + b":" + value)
            elif kind == RANGE:
                req.range = value
            else:
                return None
        if cc or pragma is not None:
            directives = request_directives(
                parse_cache_control([(b"cache-control", v) for v in cc]), pragma
            )
            if directives.no_store:
                return None
            req.directives = directives
        host_key = self.host_key(b"" if host is None else host)
        if host_key is None:
            return None
        if accept:
            req.accept_encoding = accept[0] if len(accept) == 1 else b",".join(accept)
        identity = ""
        if creds:
            if self.authenticated:
                identity = hash_secret(b"\x00".join(creds))
            else:
                req.credentials = True
        req.host = host_key
        req.path, req.query = target_parts(
            scope.get("raw_path") or scope["path"], scope.get("query_string", b"")
        )
        keyed_part = fingerprint(sorted(keyed))[:16] if keyed else ""
        req.stem = stem(req.path, scope.get("scheme"), host_key, identity, keyed_part)
        req.base = req.stem + "?" + req.query
        return req

    # -- keys -------------------------------------------------------------------------------
    def preference(self) -> tuple[str, ...]:
        if self._encodings is None:
            from asgi_perf.compression._codecs import available_encodings

            self._encodings = available_encodings()
        return self._encodings

    def coding(self, accept: bytes | None) -> str:
        """The coding a CompressionMiddleware would pick for ``accept`` (memoised, bounded)."""
        known = self.codings.get(accept)
        if known is not None:
            return known
        coding = choose_encoding(accept, self.preference())
        if len(self.codings) < _KINDS_MAX and (accept is None or len(accept) <= 256):
            self.codings[accept] = coding
        return coding

    def variant(self, names: tuple[str, ...], headers: Headers, accept: bytes | None) -> str:
        """The part of the key chosen by the learned ``Vary`` names."""
        if not names:
            return ""
        if names is AE_ONLY or names == AE_ONLY:  # the usual case, kept readable: "ae=gzip"
            return "ae=" + self.coding(accept)
        coding = self.coding(accept) if "accept-encoding" in names else None
        return headers_variant(names, headers, coding)

    def entry_key(self, req: Request, names: tuple[str, ...]) -> str:
        if names:
            return entry_key(
                req.stem, self.variant(names, req.headers, req.accept_encoding), req.query
            )
        key = req.plain_key  # made once per request (a lookup, then the fill's store)
        if key is None:
            key = req.plain_key = entry_key(req.stem, "", req.query)
        return key

    def accepts(self, accept: bytes | None, coding: str | None) -> bool:
        """Whether a client with ``accept`` may receive a body in content ``coding``."""
        return coding is None or choose_encoding(accept, (coding,)) == coding


class Resource:
    """A plain request's keys, memoised by (raw path, query, host, scheme), with a reference
    to its resource's Vary cell (shared with :attr:`Entries.vary`). Its parts are made in one
    frame, :meth:`CacheMiddleware._resource`, which fills them in (no ``__init__``: one call
    less per new resource)."""

    __slots__ = ("base", "host", "key", "path", "query", "stem", "variants", "vary")

    stem: str  # "{path}scheme|host|identity|keyed headers"
    path: str  # the raw path as it appears in keys
    host: str
    query: str  # canonical query string
    base: str  # stem + "?" + query: the resource (its Vary record)
    key: str  # the entry key when nothing varies
    vary: list[Any]  # [names or None, expiry]
    variants: dict[str, str]  # negotiated coding -> entry key (Vary: A-E)

    def variant(self, coding: str) -> str:
        key = self.variants[coding] = entry_key(self.stem, "ae=" + coding, self.query)
        return key
