"""Response compression (zstd, brotli, gzip) negotiated per request, streaming-safe.

Pure ASGI, in the shape of Starlette's ``GZipMiddleware``: ``send`` is wrapped per request;
at ``http.response.start`` one pass over the response fields decides whether the response
could be encoded at all (a ``Content-Length`` below ``minimum_size`` ends it at once; field
names and lengths are memoised, bounded). Only then is ``Accept-Encoding`` negotiated
(:mod:`asgi_perf.negotiation`, memoised per header value) and a :class:`Responder` made,
which waits, when ``Content-Length`` does not tell the size, for the first body message.
Codecs come prepared from :mod:`asgi_perf.codecs`; a response that is not encoded never
creates a codec object.

Options (keyword / environment variable, default):

- ``encodings`` / ``ASGI_PERF_COMPRESSION_ENCODINGS``: server preference, ``zstd,br,gzip``
- ``minimum_size`` / ``ASGI_PERF_COMPRESSION_MIN_SIZE``: bytes, ``500``
- ``gzip_level`` / ``ASGI_PERF_GZIP_LEVEL`` (0-9, ``6``), ``brotli_quality`` /
  ``ASGI_PERF_BROTLI_QUALITY`` (0-11, ``4``), ``zstd_level`` / ``ASGI_PERF_ZSTD_LEVEL``
  (-131072..22, ``3``)
- ``gzip_backend`` / ``ASGI_PERF_GZIP_BACKEND``: ``auto`` (zlib-ng if installed, else
  stdlib zlib), ``zlib-ng``, ``isal``, ``zlib``; ``stats()["codecs"]`` says which is used
- ``compressible_types`` / ``ASGI_PERF_COMPRESSION_TYPES``: exact types, ``type/*`` and
  ``*+suffix`` patterns; default :data:`DEFAULT_COMPRESSIBLE_TYPES`
- ``exclude_paths`` / ``ASGI_PERF_COMPRESSION_EXCLUDE_PATHS``: path prefixes, none
- ``compress_event_stream`` / ``ASGI_PERF_COMPRESSION_SSE``: ``true``
- ``thread_minimum_size`` / ``ASGI_PERF_COMPRESSION_THREAD_MIN_SIZE``: ``128KiB``
- ``ASGI_PERF_COMPRESSION_ENABLED`` (for :func:`asgi_perf.from_env`): ``true``
- ``dictionaries`` / ``ASGI_PERF_COMPRESSION_DICTIONARIES``: RFC 9842 dictionary rules (URL
  patterns, each with optional ``;id=`` and ``;match-dest=a|b``), none; needs the zstd extra
- ``dictionary_max_count`` / ``ASGI_PERF_COMPRESSION_DICTIONARY_MAX_COUNT`` (``1000``),
  ``dictionary_max_size`` / ``ASGI_PERF_COMPRESSION_DICTIONARY_MAX_SIZE`` (``1MiB``),
  ``dictionary_ttl`` / ``ASGI_PERF_COMPRESSION_DICTIONARY_TTL`` (``24h``)
- ``storage`` (``ASGI_PERF_STORAGE_URL``, else ``REDIS_URL``; ``memory://``) and ``key_prefix``
  (``ASGI_PERF_KEY_PREFIX``): where dictionaries are kept, shared by every worker; not used
  without ``dictionaries``. A memory store holds at most ``dictionary_max_count`` of them
  and 64 MiB; Redis entries expire after ``dictionary_ttl``.

Choices where the spec is silent (documented for users):

- ``Vary: Accept-Encoding`` is merged into every response that *would* be encoded for a
  client accepting a coding (eligible status, type, headers and size), whatever this
  client sent, and into HEAD responses to such resources. Responses left alone for any
  other reason (too small, already encoded, ``no-transform``, 206, 1xx/204/205/304, a type
  outside the set, ``pathsend``, excluded path) go out byte-for-byte unchanged, no ``Vary``.
- A strong ``ETag`` of an encoded response is made weak (``W/"…"``, as nginx does), so
  ``If-None-Match`` from either representation still matches with weak comparison.
- ``Vary`` is added by giving the start message a new header list (the message dict is
  updated, the app's list is never mutated), as Timing does for its headers.
- Any ``Content-Encoding`` header set by the app (even ``identity``) means "leave it alone".
- A body whose encoded form is not smaller than itself is sent unencoded (with ``Vary``).
- HEAD responses are never encoded; their ``Content-Length`` stays the app's.
- ``text/event-stream`` (when in the compressible set, as ``text/*`` is by default) has its
  headers sent at once, encoded, and every event flushed; ``compress_event_stream=False``
  leaves event streams unencoded. Every other stream is flushed per chunk too.
- Chunks of ``thread_minimum_size`` (128 KiB) or more are compressed in the event loop's
  default executor; without a running asyncio loop (trio) they are compressed inline.
- ``exclude_paths`` are path prefixes matched on segment boundaries (``/metrics`` matches
  ``/metrics`` and ``/metrics/x``, not ``/metricsx``).
- ``encodings`` lists the server's preference; codings whose package is missing are dropped
  (a warning is logged when they were asked for explicitly).
- A codec failure before the headers leave sends the response unencoded; after they left
  (mid-stream) the error propagates. Both are logged once per incident and counted.
- Dictionaries (:mod:`._dictionaries`): on a rule's path ``Vary`` is ``Accept-Encoding,
  Available-Dictionary`` (and ``Dictionary-ID`` for a rule with an id); a request naming a
  dictionary the server has gets ``dcz`` whatever else it accepts; ``dcb`` is never sent (no
  Python brotli binding compresses with a custom dictionary: :mod:`._codecs`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Iterable
from typing import Any, ClassVar, Literal

from asgi_perf._core import stats as _stats
from asgi_perf._core.asgi import ASGIApp, Message, Receive, Scope, Send
from asgi_perf._core.config import (
    KEY_PREFIX_ENV,
    ConfigError,
    EnvConfigurable,
    EnvVar,
    to_bool,
    to_choice,
    to_int,
    to_list,
    to_paths,
)
from asgi_perf._core.config import to_size as _to_size
from asgi_perf._core.negotiation import IDENTITY, choose_encoding
from asgi_perf._core.outage import Outage
from asgi_perf.compression._codecs import (
    GZIP_BACKENDS,
    INSTALL,
    Codec,
    available_encodings,
    make_codec,
)
from asgi_perf.compression._dictionaries import (
    DictRequest,
    Offer,
    build_dictionaries,
    max_count,
    ttl,
)
from asgi_perf.compression._dictionary_rules import Rule, parse_rules
from asgi_perf.compression._responder import (
    VARY_FIELD,
    VARY_TOKENS,
    Responder,
    Shared,
    vary_field,
    with_vary,
)
from asgi_perf.stores import Store

__all__ = [
    "DEFAULT_COMPRESSIBLE_TYPES",
    "CompressionMiddleware",
]

logger = logging.getLogger("asgi_perf.compression")

DEFAULT_COMPRESSIBLE_TYPES = (
    "text/*",
    "application/json",
    "*+json",
    "application/javascript",
    "*+xml",
    "application/xml",
    "image/svg+xml",
    "application/wasm",
    "application/x-ndjson",
    "application/graphql-response+json",
)
_CODINGS = ("zstd", "br", "gzip")
_EVENT_STREAM = "text/event-stream"
_ZEROCOPY = "http.response.zerocopysend"

# Response fields the start-message scan looks at, by lowercase name.
_OTHER, _TYPE, _ENCODING, _CACHE_CONTROL, _RANGE, _LENGTH, _VARY = range(7)
_FIELDS = {
    b"content-type": _TYPE,
    b"content-encoding": _ENCODING,
    b"cache-control": _CACHE_CONTROL,
    b"content-range": _RANGE,
    b"content-length": _LENGTH,
    b"vary": _VARY,
}
# Statuses whose response is never encoded: 1xx (and anything below), 204, 205, 206, 304.
_UNCHANGED_STATUS = frozenset((*range(200), 204, 205, 206, 304))
# Content-type verdicts.
_NO, _YES, _SSE = 0, 1, 2
_TYPE_CACHE_SIZE = 512
# Memos of the start-message scan (response field name -> field above, Content-Length
# value -> int), bounded: names come from the app, lengths are few distinct sizes mostly.
_NAME_CACHE_SIZE = 256
_LENGTH_CACHE_SIZE = 1024
# Per-instance memo of Accept-Encoding value -> chosen coding: one dict lookup
# per request for the handful of values real clients send; junk cannot grow it unbounded.
_CHOICE_CACHE_SIZE = 1024
_CHOICE_KEY_SIZE = 256
_UNSEEN: Any = object()


def _encodings(value: object, name: str) -> tuple[str, ...]:
    accepted = "a comma-separated list of zstd, br, gzip (server preference order)"
    codings: list[str] = []
    for item in to_list(value, name):
        coding = item.lower()
        if coding not in _CODINGS:
            raise ConfigError(name, value, accepted)
        if coding not in codings:
            codings.append(coding)
    if not codings:
        raise ConfigError(name, value, accepted)
    return tuple(codings)


def _media_patterns(value: object, name: str) -> tuple[str, ...]:
    accepted = "media types like text/html, type wildcards like text/*, suffixes like *+json"
    patterns = tuple(item.lower() for item in to_list(value, name))
    for pattern in patterns:
        if pattern.startswith("*+"):
            valid = len(pattern) > 2 and "/" not in pattern and "*" not in pattern[1:]
        else:
            kind, slash, sub = pattern.partition("/")
            valid = (
                bool(slash and kind and sub) and "*" not in kind and sub in ("*", sub.strip("*"))
            )
        if not valid:
            raise ConfigError(name, value, accepted)
    return patterns


def _level(minimum: int, maximum: int) -> Any:
    return lambda value, name: to_int(value, name, minimum=minimum, maximum=maximum)


_GZIP_LEVEL = _level(0, 9)
_BROTLI_QUALITY = _level(0, 11)
_ZSTD_LEVEL = _level(-131072, 22)


def _gzip_backend(value: object, name: str) -> str:
    return to_choice(value, name, GZIP_BACKENDS)


class _Planned:
    """The responder of a response on a dictionary rule's path while its plan is made (the
    plan may read the store): the rest of the response goes to the responder the plan began,
    or unchanged to ``send`` when it began none."""

    __slots__ = ("send_next", "target")

    def __init__(self, send: Send) -> None:
        self.send_next = send
        self.target: Responder | None = None

    def send(self, message: Message) -> Awaitable[None]:
        target = self.target
        return self.send_next(message) if target is None else target.send(message)


class CompressionMiddleware(EnvConfigurable):
    """Encode responses with the best coding the client accepts (RFC 9110 §12.5.3)."""

    ENV_ENABLED: ClassVar[tuple[str, bool] | None] = ("ASGI_PERF_COMPRESSION_ENABLED", True)
    ENV_STORAGE: ClassVar[bool] = True  # for dictionaries only
    ENV_VARS: ClassVar[tuple[EnvVar, ...]] = (
        EnvVar("ASGI_PERF_COMPRESSION_MIN_SIZE", "minimum_size", _to_size),
        EnvVar("ASGI_PERF_COMPRESSION_ENCODINGS", "encodings", _encodings),
        EnvVar("ASGI_PERF_GZIP_LEVEL", "gzip_level", _GZIP_LEVEL),
        EnvVar("ASGI_PERF_BROTLI_QUALITY", "brotli_quality", _BROTLI_QUALITY),
        EnvVar("ASGI_PERF_ZSTD_LEVEL", "zstd_level", _ZSTD_LEVEL),
        EnvVar("ASGI_PERF_GZIP_BACKEND", "gzip_backend", _gzip_backend),
        EnvVar("ASGI_PERF_COMPRESSION_TYPES", "compressible_types", _media_patterns),
        EnvVar("ASGI_PERF_COMPRESSION_EXCLUDE_PATHS", "exclude_paths", to_paths),
        EnvVar("ASGI_PERF_COMPRESSION_SSE", "compress_event_stream", to_bool),
        EnvVar("ASGI_PERF_COMPRESSION_THREAD_MIN_SIZE", "thread_minimum_size", _to_size),
        EnvVar("ASGI_PERF_COMPRESSION_DICTIONARIES", "dictionaries", parse_rules),
        EnvVar("ASGI_PERF_COMPRESSION_DICTIONARY_MAX_COUNT", "dictionary_max_count", max_count),
        EnvVar("ASGI_PERF_COMPRESSION_DICTIONARY_MAX_SIZE", "dictionary_max_size", _to_size),
        EnvVar("ASGI_PERF_COMPRESSION_DICTIONARY_TTL", "dictionary_ttl", ttl),
        KEY_PREFIX_ENV,
    )

    def __init__(
        self,
        app: ASGIApp,
        *,
        encodings: Iterable[str] | str = _CODINGS,
        minimum_size: int | str = 500,
        gzip_level: int = 6,
        brotli_quality: int = 4,
        zstd_level: int = 3,
        compressible_types: Iterable[str] | str = DEFAULT_COMPRESSIBLE_TYPES,
        exclude_paths: Iterable[str] | str = (),
        gzip_backend: str = "auto",
        compress_event_stream: bool = True,
        thread_minimum_size: int | str = 128 * 1024,
        dictionaries: Iterable[Any] | str = (),
        dictionary_max_count: int | str = 1000,
        dictionary_max_size: int | str = 1024 * 1024,
        dictionary_ttl: float | str = 24 * 3600.0,
        storage: str | Store = "memory://",
        key_prefix: str = "asgi_perf:",
    ) -> None:
        """Long because it checks every option once, here, so that ``__call__`` checks nothing."""
        self.app = app
        installed = available_encodings()
        wanted = _encodings(encodings, "encodings")
        missing = [coding for coding in wanted if coding not in installed]
        to_install = "; ".join(f"{coding}: {INSTALL[coding]}" for coding in missing)
        if missing and wanted != _CODINGS:
            logger.warning("compression codings not installed, not offered (%s)", to_install)
        self.encodings = tuple(coding for coding in wanted if coding in installed)
        if not self.encodings:
            raise ConfigError(
                "encodings",
                encodings,
                f"at least one installed coding: {', '.join(installed)} ({to_install})",
            )
        self.minimum_size = _to_size(minimum_size, "minimum_size")
        self.thread_minimum_size = _to_size(thread_minimum_size, "thread_minimum_size")
        self.compress_event_stream = to_bool(compress_event_stream, "compress_event_stream")
        self.compressible_types = _media_patterns(compressible_types, "compressible_types")
        self.exclude_paths = to_paths(exclude_paths, "exclude_paths")
        levels = {
            "gzip_level": _GZIP_LEVEL(gzip_level, "gzip_level"),
            "gzip_backend": _gzip_backend(gzip_backend, "gzip_backend"),
            "brotli_quality": _BROTLI_QUALITY(brotli_quality, "brotli_quality"),
            "zstd_level": _ZSTD_LEVEL(zstd_level, "zstd_level"),
        }
        self.codecs: dict[str, Codec] = {
            coding: make_codec(coding, **levels) for coding in self.encodings
        }
        self._tokens = {coding: coding.encode("ascii") for coding in self.encodings}
        self._outages = {coding: Outage(logger, f"{coding} codec") for coding in self.encodings}
        self.dictionaries = build_dictionaries(
            parse_rules(dictionaries, "dictionaries"),
            storage,
            key_prefix,
            max_count=max_count(dictionary_max_count, "dictionary_max_count"),
            max_size=_to_size(dictionary_max_size, "dictionary_max_size"),
            ttl=ttl(dictionary_ttl, "dictionary_ttl"),
            level=levels["zstd_level"],
            logger=logger,
        )
        if self.dictionaries is not None:
            self._outages["dcz"] = self.dictionaries.codec_outage
            self._tokens["dcz"] = b"dcz"
        self._exact = frozenset(p for p in self.compressible_types if "*" not in p)
        self._prefixes = tuple(p[:-1] for p in self.compressible_types if p.endswith("/*"))
        self._suffixes = tuple(p[1:] for p in self.compressible_types if p.startswith("*+"))
        self._types: dict[bytes, int] = {}
        self._names: dict[bytes, int] = dict(_FIELDS)
        self._lengths: dict[bytes, int] = {}
        self._choices: dict[bytes, str] = {}
        self._excluded = tuple(
            (p.rstrip("/") or "/", p.rstrip("/") + "/") for p in self.exclude_paths
        )
        self.shared = Shared(
            self.minimum_size, self.thread_minimum_size, self._tokens, self._outages
        )
        _stats.register("compression", self)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Long on purpose: the response-header pass is inlined in ``send_wrapper`` (counted
        by ``tests/unit/package/test_budgets.py``); the rewrite itself is the responder's."""
        if scope["type"] != "http" or (self._excluded and self._is_excluded(scope["path"])):
            await self.app(scope, receive, send)
            return
        codec = _UNSEEN  # negotiated lazily: most responses never need it
        extensions = scope["extensions"] if "extensions" in scope else None
        if extensions and _ZEROCOPY in extensions:
            # it would bypass this middleware: hidden when the response may be encoded
            codec = self._codec_for(scope)
            if codec is not None:
                extensions = {k: v for k, v in extensions.items() if k != _ZEROCOPY}
                scope = {**scope, "extensions": extensions}
        # Before the start message: None; then False (passing through) or the responder
        # that owns the rest of an eligible response. No object is made for the common case.
        responder: Responder | _Planned | Literal[False] | None = None
        rule = self.dictionaries.rule_for(scope["path"]) if self.dictionaries else None

        def send_wrapper(message: Message) -> Awaitable[None]:
            # Long on purpose: the pass over the response fields, inlined (calls counted;
            # ``in`` and subscripts rather than ``get``: they make no call). A plain function
            # handing back the awaitable of what it forwards: no coroutine per message (a
            # coroutine budget holds it: ``tests/unit/package/test_budgets.py``).
            nonlocal responder
            if responder is False:
                return send(message)
            if responder is not None:
                return responder.send(message)
            if message["type"] != "http.response.start":  # extensions before it (early hints)
                return send(message)
            responder = False
            # The pass over the response fields, inline: for a small body it settles the
            # request (Content-Length below minimum_size: unchanged, whatever else is there).
            status = message["status"]
            if status in _UNCHANGED_STATUS:
                return send(message)
            content_type = None
            length = -1
            has_vary = False
            names = self._names
            headers = message["headers"] if "headers" in message else ()
            for key, value in headers:
                try:
                    field = names[key]
                except KeyError:
                    field = self._learn_name(key)
                if not field:
                    continue
                if field == _LENGTH:
                    try:
                        length = self._lengths[value]
                    except KeyError:
                        length = self._parse_length(value)
                    if 0 <= length < self.minimum_size:
                        return send(message)  # too small: nothing else matters, no Vary
                elif field == _TYPE:
                    content_type = value
                elif field == _VARY:
                    has_vary = True
                elif field != _CACHE_CONTROL or b"no-transform" in value.lower():
                    return send(message)  # Content-Encoding, Content-Range, no-transform
            if content_type is None:
                return send(message)
            try:
                verdict = self._types[content_type]
            except KeyError:
                verdict = self._classify(content_type)
            if verdict == _NO:
                return send(message)
            chosen = self._codec_for(scope) if codec is _UNSEEN else codec
            sse = verdict == _SSE
            if rule is not None:  # the plan may await the store: a coroutine of its own
                responder = planned = _Planned(send)
                return self._planned_start(
                    planned, scope, message, headers, length, sse, has_vary, rule, chosen
                )
            if chosen is None:
                responder = self._begin(
                    scope, send, message, headers, length, sse, has_vary, None, VARY_TOKENS, None
                )
                return send(message) if responder is False else responder.on_start(message)
            responder = Responder(self.shared, scope, chosen, send, has_vary, sse)  # (_begin's)
            return responder.on_start(message)

        await self.app(scope, receive, send_wrapper)

    def _begin(
        self,
        scope: Scope,
        send: Send,
        start: Message,
        headers: Iterable[tuple[bytes, bytes]],
        length: int,
        sse: bool,
        has_vary: bool,
        chosen: Codec | None,
        vary: tuple[bytes, ...],
        offer: Offer | None,
    ) -> Responder | Literal[False]:
        """An eligible response's start, as the pass over its fields found it: the responder
        that owns the rest of it, or ``False`` when ``start`` (given its ``Vary``) is all
        there is to send."""
        if chosen is None and (length >= 0 or sse or scope["method"] == "HEAD"):
            # Not encoded for this client, but it would be for another: say so, send at
            # once (a new header list: the app's is left as it was).
            if has_vary:
                start["headers"] = with_vary(list(headers), True, vary)
            else:
                start["headers"] = [
                    *headers,
                    VARY_FIELD if vary is VARY_TOKENS else vary_field(vary),
                ]
            return False
        return Responder(self.shared, scope, chosen, send, has_vary, sse, vary, offer)

    async def _planned_start(
        self,
        planned: _Planned,
        scope: Scope,
        start: Message,
        headers: Iterable[tuple[bytes, bytes]],
        length: int,
        sse: bool,
        has_vary: bool,
        rule: Rule,
        chosen: Codec | None,
    ) -> None:
        """The start of a response on a dictionary rule's path: its plan made (it may read
        the store), then begun as any other; the rest goes to what began it."""
        chosen, offer = await self._dictionary_plan(scope, rule, chosen, start)
        send = planned.send_next
        responder = self._begin(
            scope, send, start, headers, length, sse, has_vary, chosen, rule.vary, offer
        )
        if responder is False:
            await send(start)
        else:
            planned.target = responder
            await responder.on_start(start)

    def _codec_for(self, scope: Scope) -> Codec | None:
        """The codec to encode this request's response with, or None (identity, HEAD)."""
        if scope["method"] == "HEAD":
            return None
        accept: bytes | None = None
        for key, value in scope["headers"]:
            if key == b"accept-encoding" or (len(key) == 15 and key.lower() == b"accept-encoding"):
                accept = value if accept is None else accept + b"," + value
        if accept is None:
            return None
        choices = self._choices
        coding = choices[accept] if accept in choices else None  # (no get call)
        if coding is None:
            coding = choose_encoding(accept, self.encodings)
            if len(self._choices) < _CHOICE_CACHE_SIZE and len(accept) <= _CHOICE_KEY_SIZE:
                self._choices[accept] = coding
        return None if coding == IDENTITY else self.codecs[coding]

    async def _dictionary_plan(
        self, scope: Scope, rule: Rule, chosen: Codec | None, start: Message
    ) -> tuple[Codec | None, Offer | None]:
        """On a dictionary rule's path: the codec (``dcz`` when the request names a dictionary
        the server has, else ``chosen``) and whether this response is offered as one."""
        if scope["method"] == "HEAD":
            return chosen, None
        dictionaries = self.dictionaries
        assert dictionaries is not None
        request = DictRequest(scope)
        codec = await dictionaries.codec_for(request) or chosen
        if codec is None:
            return None, None  # a client accepting no coding: no dictionary either
        return codec, dictionaries.offer_for(request, rule, start["status"], start)

    def _learn_name(self, name: bytes) -> int:
        field = _FIELDS.get(name.lower(), _OTHER)
        if len(self._names) < _NAME_CACHE_SIZE:
            self._names[name] = field
        return field

    def _parse_length(self, value: bytes) -> int:
        """``Content-Length`` as an int; -1 (unknown) when malformed."""
        try:
            length = int(value)
        except ValueError:
            return -1
        if len(self._lengths) < _LENGTH_CACHE_SIZE:
            self._lengths[value] = length
        return length

    def _is_excluded(self, path: str) -> bool:
        return any(path == exact or path.startswith(prefix) for exact, prefix in self._excluded)

    def _classify(self, content_type: bytes) -> int:
        media = content_type.split(b";", 1)[0].strip().lower().decode("latin-1")
        matched = (
            media in self._exact
            or media.startswith(self._prefixes)
            or (bool(self._suffixes) and media.endswith(self._suffixes))
        )
        if not matched:
            verdict = _NO
        elif media == _EVENT_STREAM:
            verdict = _SSE if self.compress_event_stream else _NO
        else:
            verdict = _YES
        if len(self._types) < _TYPE_CACHE_SIZE:
            self._types[content_type] = verdict
        return verdict

    def stats(self) -> dict[str, Any]:
        shared = self.shared
        return {
            "encodings": list(self.encodings),
            "codecs": {name: codec.description for name, codec in self.codecs.items()},
            "compressed": dict(shared.compressed),
            "streams": shared.streams,
            "threaded": shared.threaded,
            "bytes_in": shared.bytes_in,
            "bytes_out": shared.bytes_out,
            "codec_errors": {name: outage.stats() for name, outage in self._outages.items()},
            "dictionaries": self.dictionaries.stats() if self.dictionaries else None,
        }
