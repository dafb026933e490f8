"""Content codings prepared once: one-shot compression and flushing stream compressors.

A :class:`Codec` holds everything that can be computed when the middleware is built (the
deflate implementation, levels, one reusable zstd context per thread); per response it either
compresses a whole body in one call or hands out a :class:`StreamCompressor` whose every call
ends with a sync flush, so the client can decode each chunk the app sends as it arrives.

gzip backends, fastest first: ``zlib-ng`` (the ``zlib-ng`` package, output within 1% of
stdlib zlib at the same level and about 1.5-2x faster), ``isal`` (ISA-L via the ``isal``
package: faster still, but it only has levels 0-3 and its output is ~10% larger than zlib
level 6, so ``auto`` never picks it; choose it with ``gzip_backend="isal"``, levels map
``(level + 1) // 3`` capped at 3) and ``zlib`` (stdlib, always there). ``auto`` means
``zlib-ng`` when installed, else ``zlib``.

brotli (``brotli`` package) and zstd (``zstandard`` package) are optional extras; a coding
whose package is missing is simply not in :func:`available_encodings`.

Dictionary codings (RFC 9842): ``dcz`` with ``zstandard`` (:class:`ZstdDictionary`). ``dcb``
needs a brotli encoder that takes a custom (raw) dictionary, which no released Python binding
offers: ``brotli`` 1.2.1 (``Compressor(mode, quality, lgwin, lgblock)``) and ``brotlicffi``
1.2.1.0 (same, and its library exposes no ``BrotliEncoderAttachPreparedDictionary``), so
:func:`dictionary_encodings` never lists ``dcb``.
"""

from __future__ import annotations

import functools
import gzip as _gzip
import importlib
import threading
import zlib
from types import ModuleType
from typing import Any, Protocol

from asgi_perf._core.config import ConfigError, install_hint

__all__ = [
    "GZIP_BACKENDS",
    "INSTALL",
    "BrotliCodec",
    "Codec",
    "GzipCodec",
    "StreamCompressor",
    "ZstdCodec",
    "ZstdDictionary",
    "available_encodings",
    "available_gzip_backends",
    "dictionary_encodings",
    "make_codec",
]


def _optional(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:  # pragma: no cover - depends on the installed extras
        return None


_brotli: Any = _optional("brotli")
_zstd: Any = _optional("zstandard")
# Deflate modules with the stdlib ``zlib`` interface (compressobj/flush constants).
_DEFLATE: dict[str, ModuleType | None] = {
    "zlib-ng": _optional("zlib_ng.zlib_ng"),
    "isal": _optional("isal.isal_zlib"),
    "zlib": zlib,
}
GZIP_BACKENDS = ("auto", *_DEFLATE)
#: What to install for a coding or gzip backend whose package is missing.
INSTALL = {
    "br": install_hint("brotli"),
    "zstd": install_hint("zstd"),
    "zlib-ng": install_hint("fast-gzip"),
    "isal": "pip install isal",
}
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # gzip container, 32 KiB window
#: RFC 9842 §5: a zstd skippable frame (magic 0x184D2A5E, little-endian) of 32 bytes.
DCZ_HEADER_MAGIC = b"\x5e\x2a\x4d\x18\x20\x00\x00\x00"


def available_encodings() -> tuple[str, ...]:
    """Installed codings in default preference order: zstd, br, gzip (gzip always)."""
    found: list[str] = []
    if _zstd is not None:
        found.append("zstd")
    if _brotli is not None:
        found.append("br")
    found.append("gzip")
    return tuple(found)


def dictionary_encodings() -> tuple[str, ...]:
    """Installed RFC 9842 dictionary codings: ``dcz`` with zstandard (never ``dcb``: above)."""
    return ("dcz",) if _zstd is not None else ()


def available_gzip_backends() -> tuple[str, ...]:
    """Installed deflate implementations, ``auto``'s order of choice first."""
    return tuple(name for name, module in _DEFLATE.items() if module is not None)


class StreamCompressor(Protocol):
    """One response's compressor. Every call returns bytes the client can decode now."""

    def compress(self, data: bytes) -> bytes:
        """Compress ``data`` and sync-flush."""

    def finish(self, data: bytes) -> bytes:
        """Compress ``data`` and end the stream."""


class Codec(Protocol):
    name: str
    """The ``Content-Encoding`` token."""
    description: str
    """Implementation and level, for stats and docs (``"gzip zlib-ng level 6"``)."""

    def compress(self, data: bytes) -> bytes:
        """A complete encoded body."""

    def stream(self) -> StreamCompressor:
        """A new flushing stream compressor."""


class _DeflateStream:
    __slots__ = ("_finish", "_obj", "_sync")

    def __init__(self, module: Any, level: int) -> None:
        self._obj = module.compressobj(level, module.DEFLATED, _GZIP_WBITS)
        self._sync = module.Z_SYNC_FLUSH
        self._finish = module.Z_FINISH

    def compress(self, data: bytes) -> bytes:
        obj = self._obj
        return bytes(obj.compress(data) + obj.flush(self._sync))

    def finish(self, data: bytes) -> bytes:
        obj = self._obj
        return bytes(obj.compress(data) + obj.flush(self._finish))


class GzipCodec:
    """gzip through the chosen deflate implementation."""

    name = "gzip"

    def __init__(self, level: int = 6, backend: str = "auto") -> None:
        if backend == "auto":
            backend = "zlib-ng" if _DEFLATE["zlib-ng"] is not None else "zlib"
        module = _DEFLATE.get(backend)
        if module is None:
            installed = ", ".join(("auto", *available_gzip_backends()))
            raise ConfigError(
                "gzip_backend", backend, f"one of {installed} ({backend}: {INSTALL[backend]})"
            )
        self.backend = backend
        self.level = min((level + 1) // 3, 3) if backend == "isal" else level
        self.description = f"gzip {backend} level {self.level}"
        self._module: Any = module
        if module is zlib:
            # gzip.compress(mtime=0) is zlib.compress(wbits=31) on 3.11+, and works on 3.10.
            self._oneshot = self._stdlib_oneshot
        else:
            self._oneshot = self._module_oneshot

    def _stdlib_oneshot(self, data: bytes) -> bytes:
        return _gzip.compress(data, self.level, mtime=0)

    def _module_oneshot(self, data: bytes) -> bytes:
        return bytes(self._module.compress(data, self.level, _GZIP_WBITS))

    def compress(self, data: bytes) -> bytes:
        return self._oneshot(data)

    def stream(self) -> StreamCompressor:
        return _DeflateStream(self._module, self.level)


class _BrotliStream:
    __slots__ = ("_obj",)

    def __init__(self, obj: Any) -> None:
        self._obj = obj

    def compress(self, data: bytes) -> bytes:
        obj = self._obj
        return bytes(obj.process(data) + obj.flush())

    def finish(self, data: bytes) -> bytes:
        obj = self._obj
        return bytes(obj.process(data) + obj.finish())


class BrotliCodec:
    """brotli (RFC 7932) at a fixed quality; the window is brotli's default 4 MiB."""

    name = "br"

    def __init__(self, quality: int = 4) -> None:
        if _brotli is None:  # pragma: no cover - guarded by available_encodings()
            raise ConfigError("encodings", "br", f"an installed coding ({INSTALL['br']})")
        self.quality = quality
        self.description = f"br quality {quality}"
        self._new = _brotli.Compressor

    def compress(self, data: bytes) -> bytes:
        obj = self._new(quality=self.quality)
        return bytes(obj.process(data) + obj.finish())

    def stream(self) -> StreamCompressor:
        return _BrotliStream(self._new(quality=self.quality))


class _ZstdStream:
    __slots__ = ("_block", "_end", "_obj")

    def __init__(self, obj: Any) -> None:
        self._obj = obj
        self._block = _zstd.COMPRESSOBJ_FLUSH_BLOCK
        self._end = _zstd.COMPRESSOBJ_FLUSH_FINISH

    def compress(self, data: bytes) -> bytes:
        obj = self._obj
        return bytes(obj.compress(data) + obj.flush(self._block))

    def finish(self, data: bytes) -> bytes:
        obj = self._obj
        return bytes(obj.compress(data) + obj.flush(self._end))


class ZstdCodec:
    """zstd (RFC 8878) at a fixed level.

    One-shot bodies reuse one ``ZstdCompressor`` per thread (its context is the expensive
    part; instances are not thread-safe). A stream needs a compressor of its own, because
    one context cannot drive two interleaved streams.
    """

    name = "zstd"

    def __init__(self, level: int = 3) -> None:
        if _zstd is None:  # pragma: no cover - guarded by available_encodings()
            raise ConfigError("encodings", "zstd", f"an installed coding ({INSTALL['zstd']})")
        self.level = level
        self.description = f"zstd level {level}"
        self._local = threading.local()

    def compress(self, data: bytes) -> bytes:
        try:
            compressor = self._local.compressor
        except AttributeError:
            compressor = self._local.compressor = self._new()
        return bytes(compressor.compress(data))

    def _new(self) -> Any:
        # By level, not fixed parameters: zstd then sizes its tables to each input.
        return _zstd.ZstdCompressor(level=self.level)

    def stream(self) -> StreamCompressor:
        return _ZstdStream(self._new().compressobj())


class _PrefixedStream:
    """A stream whose first output starts with ``prefix`` (the dcz header)."""

    __slots__ = ("_inner", "_prefix")

    def __init__(self, prefix: bytes, inner: StreamCompressor) -> None:
        self._prefix = prefix
        self._inner = inner

    def compress(self, data: bytes) -> bytes:
        out = self._inner.compress(data)
        if self._prefix and out:
            out, self._prefix = self._prefix + out, b""
        return out

    def finish(self, data: bytes) -> bytes:
        out = self._prefix + self._inner.finish(data)
        self._prefix = b""
        return out


# RFC 9842 §5: a dcz client decodes windows up to 8 MiB (or 1.25 x the dictionary): dcz
# never uses more than 8 MiB, and at most level 19 (levels above exist for larger windows).
_DCZ_MAX_LEVEL = 19
_DCZ_MAX_WINDOW_LOG = 23


@functools.lru_cache(maxsize=64)
def _dcz_params(level: int, size_log: int) -> Any:
    """zstd parameters for dictionaries (and bodies) of about ``2 ** size_log`` bytes, with
    tables at most an eighth of the window (see :class:`ZstdDictionary`)."""
    size = 1 << size_log
    sized = _zstd.ZstdCompressionParameters.from_level(level, source_size=size, dict_size=size)
    window_log = min(sized.window_log, _DCZ_MAX_WINDOW_LOG)
    cap = window_log - 3
    return _zstd.ZstdCompressionParameters(
        window_log=window_log,
        hash_log=min(sized.hash_log, cap),
        chain_log=min(sized.chain_log, cap),
        search_log=sized.search_log,
        min_match=sized.min_match,
        target_length=sized.target_length,
        strategy=sized.strategy,
    )


class ZstdDictionary:
    """One raw-content dictionary prepared for ``dcz`` (RFC 9842 §5); a :class:`Codec`.

    The output is the 40-byte header (a skippable frame holding the dictionary's SHA-256)
    then a zstd frame compressed with the dictionary as raw content. Parameters are sized for
    inputs like the dictionary (the next version of the same resource), tables at most an
    eighth of the window: loading the dictionary into them is the cost of a first use (about
    one compression of the dictionary), so they are kept small. The compressor (one per
    thread, as :class:`ZstdCodec`) keeps the loaded dictionary for every later use.

    Measured on the benchmark's polled 12 KB JSON (zstandard 0.25): the level's own matcher
    (double-fast at 3) is kept because zstd's lazy matchers, which make ``dcz`` 20-30% smaller
    there, cost 2-3x plain zstd's time even with the dictionary already loaded; long-distance
    matching (``enable_ldm``) finds nothing more; a precomputed dictionary
    (``precompute_compress``) costs the same as this load on first use.
    """

    name = "dcz"

    def __init__(self, content: bytes, digest: bytes, level: int = 3) -> None:
        level = min(level, _DCZ_MAX_LEVEL)
        self._params = _dcz_params(level, len(content).bit_length())
        self._dict = _zstd.ZstdCompressionDict(content, dict_type=_zstd.DICT_TYPE_RAWCONTENT)
        self._header = DCZ_HEADER_MAGIC + digest
        self._local = threading.local()
        self.description = f"dcz level {level}"

    def _new(self) -> Any:
        return _zstd.ZstdCompressor(dict_data=self._dict, compression_params=self._params)

    def compress(self, data: bytes) -> bytes:
        try:
            compressor = self._local.compressor
        except AttributeError:
            compressor = self._local.compressor = self._new()
        return self._header + bytes(compressor.compress(data))

    def stream(self) -> StreamCompressor:
        return _PrefixedStream(self._header, _ZstdStream(self._new().compressobj()))


def make_codec(
    name: str,
    *,
    gzip_level: int = 6,
    gzip_backend: str = "auto",
    brotli_quality: int = 4,
    zstd_level: int = 3,
) -> Codec:
    """The prepared codec for one coding name (``zstd``, ``br`` or ``gzip``)."""
    if name == "gzip":
        return GzipCodec(gzip_level, gzip_backend)
    if name == "br":
        return BrotliCodec(brotli_quality)
    if name == "zstd":
        return ZstdCodec(zstd_level)
    raise ConfigError("encodings", name, "zstd, br, gzip")
