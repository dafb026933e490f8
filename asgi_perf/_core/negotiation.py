"""Content-coding negotiation (RFC 9110 §12.5.3 ``Accept-Encoding``) as pure functions.

Rules, each tested by the table in ``tests/unit/core/test_negotiation.py``:

- Codings are case-insensitive tokens (§8.4.1); ``x-gzip`` is ``gzip`` (§8.4.1.3).
- Each coding carries a weight ``q`` (§12.4.2, default 1); ``q=0`` means "not acceptable".
  The qvalue grammar allows at most three decimals; more are accepted (lenient), but a
  value outside 0..1 or not a number makes the whole header malformed.
- ``*`` gives its weight to every coding not listed by name, ``identity`` included.
- A coding listed twice keeps its *lowest* weight: a client that once said ``q=0`` is not
  sent that coding on the strength of another mention.
- The chosen coding is the server coding with the highest client weight; ties go to the
  server's preference order. ``identity`` competes only when the client weighted it
  (explicitly or through ``*``) and wins only with a strictly higher weight: a tie means
  the server may compress.
- An absent, empty or malformed header, or one that accepts none of the server's codings,
  yields ``"identity"`` (never an error, never 406: §12.5.3 lets the server send an
  uncoded response).
- Parameters other than ``q`` are ignored; empty list elements are allowed (§5.6.1).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

__all__ = ["IDENTITY", "choose_encoding", "parse_accept_encoding"]

IDENTITY = "identity"

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_QVALUE = re.compile(r"0(?:\.[0-9]*)?|1(?:\.0*)?")
_ALIASES = {"x-gzip": "gzip"}
# Headers longer than this are parsed every time rather than cached, so junk cannot
# fill the cache with large keys. Real browsers send well under 100 bytes.
_CACHEABLE_LENGTH = 256
_OWS = " \t"


def parse_accept_encoding(value: bytes) -> dict[str, float] | None:
    """Map each coding named in an ``Accept-Encoding`` value to its weight.

    Returns ``None`` for a malformed value. Codings are lowercased, aliases resolved.
    """
    weights: dict[str, float] = {}
    for element in value.decode("latin-1").split(","):
        coding, *params = element.split(";")
        coding = coding.strip(_OWS).lower()
        if not coding:
            if params:  # ";q=1" with no coding
                return None
            continue
        if _TOKEN.fullmatch(coding) is None:
            return None
        weight = 1.0
        for param in params:
            name, sep, raw = param.partition("=")
            name = name.strip(_OWS).lower()
            if not sep or _TOKEN.fullmatch(name) is None:
                return None
            if name == "q":
                raw = raw.strip(_OWS)
                if _QVALUE.fullmatch(raw) is None:
                    return None
                weight = float(raw)
        coding = _ALIASES.get(coding, coding)
        previous = weights.get(coding)
        weights[coding] = weight if previous is None else min(previous, weight)
    return weights


def _choose(value: bytes, preference: tuple[str, ...]) -> str:
    weights = parse_accept_encoding(value)
    if not weights:
        return IDENTITY
    star = weights.get("*")
    best = IDENTITY
    best_q = 0.0
    for coding in preference:
        q = weights.get(coding, star)
        if q is not None and q > best_q:
            best, best_q = coding, q
    if best_q <= 0.0:
        return IDENTITY
    identity_q = weights.get(IDENTITY, star)
    if identity_q is not None and identity_q > best_q:
        return IDENTITY
    return best


_choose_cached = lru_cache(maxsize=1024)(_choose)


def choose_encoding(accept_encoding: bytes | None, preference: Sequence[str]) -> str:
    """The content coding to send: a name from ``preference`` or ``"identity"``.

    ``accept_encoding`` is the raw header value (several field lines joined with ``,``);
    ``preference`` lists the codings the server can produce, most preferred first
    (typically :func:`asgi_perf.codecs.available_encodings`). Results are cached, so
    calling this per request costs one dictionary lookup for the usual browser headers.
    """
    if accept_encoding is None:
        return IDENTITY
    order = preference if isinstance(preference, tuple) else tuple(preference)
    if len(accept_encoding) > _CACHEABLE_LENGTH:
        return _choose(accept_encoding, order)
    return _choose_cached(accept_encoding, order)
