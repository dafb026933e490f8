"""Request fingerprints and Idempotency-Key rules, as pure functions (tested by tables).

- :func:`parse_idempotency_key`: draft-ietf-httpapi-idempotency-key-header §2 defines the
  field as an RFC 8941 *sf-string* (§3.3.3: ``"`` ... ``"`` with ``\\"`` and ``\\\\`` as the
  only escapes, printable ASCII inside). Clients in the wild (Stripe's SDKs, curl scripts)
  send the bare value, so a bare run of visible ASCII is accepted too. Either way the key is
  1-255 printable characters; anything else is :class:`InvalidKey` (the middleware answers 400).
- :func:`canonical_query`: parameters sorted by *name* with a stable sort, so ``?a=1&b=2`` and
  ``?b=2&a=1`` are one request while ``?a=1&a=2`` and ``?a=2&a=1`` (a list whose order an app
  may read) stay two. Bytes are compared as sent (``%41`` is not ``A``): when unsure, two
  requests are kept apart, which only costs a second execution, never a wrong answer.
- :func:`encode_record` / :func:`decode_record`: what a used key stores: the fingerprint of the
  payload that used it (a retry with another payload is 422, §2.6) and the response it got, or
  a marker that the request completed with a response too large to keep.
- :func:`fingerprint`: a BLAKE2b digest of the parts joined by NUL (when no part holds one,
  which HTTP fields, raw paths and queries cannot) or else of their ``repr``, then the body.
  Either encoding is injective, so no request can shift a boundary (say, craft a path that
  ends with another client's identity) to take on another request's fingerprint. For an
  in-process store a request without a body may use that encoding itself as its key
  (``raw=True``): distinct requests keep distinct keys without the cost of a digest.
"""

from __future__ import annotations

from collections.abc import Iterable

from asgi_perf._core.http import canonical_query, fingerprint

__all__ = [
    "MAX_KEY_LENGTH",
    "UNSAFE_METHODS",
    "InvalidKey",
    "canonical_query",
    "decode_record",
    "encode_record",
    "fingerprint",
    "parse_idempotency_key",
    "path_matches",
]

MAX_KEY_LENGTH = 255
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class InvalidKey(ValueError):
    """An Idempotency-Key that is not an sf-string or bare token of 1-255 printable chars."""


def _parse_sf_string(text: str) -> str:
    """RFC 8941 §4.2.5: parse a String; the whole field must be that one String."""
    out: list[str] = []
    i = 1
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            if i + 1 >= n or text[i + 1] not in '"\\':
                raise InvalidKey('only \\" and \\\\ may be escaped in an sf-string')
            out.append(text[i + 1])
            i += 2
            continue
        if c == '"':
            if i != n - 1:
                raise InvalidKey("characters after the closing quote")
            return "".join(out)
        if not " " <= c <= "~":
            raise InvalidKey("non-printable character in the key")
        out.append(c)
        i += 1
    raise InvalidKey("unterminated sf-string")


def parse_idempotency_key(values: list[bytes]) -> str:
    """The key carried by the ``Idempotency-Key`` field lines ``values`` (at least one).

    Several field lines are rejected: a list of keys has no meaning (§2, "Item").
    """
    if len(values) != 1:
        raise InvalidKey("more than one Idempotency-Key field")
    try:
        text = values[0].decode("ascii").strip(" \t")
    except UnicodeDecodeError:
        raise InvalidKey("non-ASCII key") from None
    if text.startswith('"'):
        key = _parse_sf_string(text)
    else:
        if not text or not all("!" <= c <= "~" and c not in '",;' for c in text):
            raise InvalidKey("a bare key must be visible ASCII without quotes, commas or ';'")
        key = text
    if not key:
        raise InvalidKey("empty key")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKey(f"key longer than {MAX_KEY_LENGTH} characters")
    return key


def path_matches(path: str, patterns: Iterable[str]) -> bool:
    """``path`` is one of ``patterns`` (exact), or starts with a pattern ending in ``*``."""
    for pattern in patterns:
        if pattern.endswith("*"):
            if path.startswith(pattern[:-1]):
                return True
        elif path == pattern:
            return True
    return False


_FP_LEN = 32  # hex digits of :func:`fingerprint`


def encode_record(payload: str, response: bytes | None) -> bytes:
    """A used key: ``payload`` fingerprint, then ``R`` + encoded response or ``-`` (not kept)."""
    return payload.encode("ascii") + (b"-" if response is None else b"R" + response)


def decode_record(value: bytes) -> tuple[str, bytes | None] | None:
    """``(payload, response or None)``, or ``None`` when ``value`` is not a record."""
    kind = value[_FP_LEN : _FP_LEN + 1]
    if kind not in (b"R", b"-"):
        return None
    payload = value[:_FP_LEN].decode("ascii", "replace")
    return payload, (value[_FP_LEN + 1 :] if kind == b"R" else None)
