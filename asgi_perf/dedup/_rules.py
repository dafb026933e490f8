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
- :func:`fingerprint` (:mod:`asgi_perf._core.http`): an injective digest of the request's
  parts and body, so no request can shift a boundary to take on another's fingerprint.
- :data:`FINGERPRINTED` and :func:`replayable`: which request fields the fingerprint holds
  besides the ``vary_headers``, and which responses may be replayed to another request of the
  same fingerprint, with which fields (RFC 9111's answer for a shared cache, applied to a
  replay).
"""

from __future__ import annotations

from collections.abc import Iterable

from asgi_perf._core.asgi import LOWER, Headers, lower_name
from asgi_perf._core.http import PER_EXCHANGE, canonical_query, fingerprint

__all__ = [
    "FINGERPRINTED",
    "MAX_KEY_LENGTH",
    "PLAIN",
    "UNSAFE_METHODS",
    "InvalidKey",
    "canonical_query",
    "decode_record",
    "encode_record",
    "fingerprint",
    "parse_idempotency_key",
    "path_matches",
    "replayable",
]

MAX_KEY_LENGTH = 255
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Request fields every fingerprint holds, besides the ``vary_headers`` and the ``Host``:
#: the credentials (two sessions behind one address are never merged), the range (RFC 9110
#: §14.2: a 206 answers only its own range) and the conditionals (§13.1: a 304 or 412 answers
#: only the validators sent), and the origin a proxy says the client asked for (what apps
#: read to build absolute links and redirects).
FINGERPRINTED = (
    b"authorization",
    b"cookie",
    b"range",
    b"if-range",
    b"if-none-match",
    b"if-modified-since",
    b"if-match",
    b"if-unmodified-since",
    b"forwarded",
    b"x-forwarded-host",
    b"x-forwarded-proto",
)
_SPECIAL = PER_EXCHANGE | {b"set-cookie", b"cache-control", b"vary"}  # dropped, or can forbid
#: Common response fields, lowercase, that a replay carries as they are: a response with only
#: these needs no :func:`replayable` (the leader tests them inline).
PLAIN = frozenset(
    {
        b"content-type",
        b"content-length",
        b"content-encoding",
        b"content-language",
        b"content-disposition",
        b"date",
        b"etag",
        b"last-modified",
        b"expires",
        b"location",
        b"accept-ranges",
        b"server",
    }
)


def replayable(
    headers: Iterable[tuple[bytes, bytes]], held: frozenset[bytes], authenticated: bool
) -> Headers | None:
    """The fields a replay of this response carries to another request of its fingerprint,
    or ``None`` when it must not be replayed at all. One pass over the response's fields.

    Not replayed: a response with ``Set-Cookie`` (one client's session) or
    ``Cache-Control: no-store``; one marked ``private`` unless ``authenticated`` (the
    fingerprint holds a user key, not an address that everyone behind one NAT shares); one
    whose ``Vary`` names a request field outside ``held`` (the lowercase names the fingerprint
    holds), or is ``*``: it may depend on something two requests of one fingerprint do not
    share. Dropped from a replay: the fields that describe one exchange (:data:`PER_EXCHANGE`,
    the one list every layer that stores or replays uses).
    """
    if type(headers) is not list and type(headers) is not tuple:
        headers = [*headers]  # (sliced below)
    # A copy is made at the first field dropped (the fields before it, sliced): a response
    # refused, or with nothing to drop, appends nothing.
    kept: Headers | None = None
    seen = 0  # fields looked at before this one, while nothing is dropped
    for field in headers:
        name = field[0]
        if name not in PLAIN:  # (the usual fields, as apps spell them, need no more look-ups)
            lowered = LOWER[name] if name in LOWER else lower_name(name)
            if lowered in _SPECIAL:  # one look-up for the ordinary fields
                if lowered in PER_EXCHANGE:
                    if kept is None:
                        kept = [*headers[:seen]]
                    continue
                if lowered == b"set-cookie":
                    return None
                value = field[1]
                if lowered == b"vary":
                    for named in value.lower().split(b","):
                        named = named.strip()
                        if named and named not in held:
                            return None
                else:
                    verdict = _VERDICTS[value] if value in _VERDICTS else _cache_control(value)
                    if verdict is _NO_STORE or (verdict is _PRIVATE and not authenticated):
                        return None
        if kept is None:
            seen += 1
        else:
            kept.append(field)  # the field itself: no new tuple
    return [*headers] if kept is None else kept


_NO_STORE, _PRIVATE, _SHARED = "no-store", "private", ""
_VERDICTS: dict[bytes, str] = {}  # Cache-Control value -> what it says of a replay (bounded)


def _cache_control(value: bytes) -> str:
    """Whether a ``Cache-Control`` value forbids any replay (``no-store``) or one to another
    client (``private``), remembered: an app sends a few values again and again."""
    verdict = _SHARED
    for directive in value.lower().split(b","):
        token = directive.partition(b"=")[0].strip()
        if token == b"no-store":
            verdict = _NO_STORE
            break
        if token == b"private":
            verdict = _PRIVATE
    if len(_VERDICTS) < 256 and len(value) <= 256:
        _VERDICTS[value] = verdict
    return verdict


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
