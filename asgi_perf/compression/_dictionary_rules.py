"""RFC 9842 (Compression Dictionary Transport) rules as pure functions: no I/O, no state.

- The ``dictionaries`` option: which paths offer their responses as dictionaries, as rules
  (a URL pattern for ``match``, optional ``match-dest`` and ``id``), checked at construction.
- URL patterns (RFC 9842 §2.1.1, the WHATWG URL Pattern without regular expressions): a path
  starting with ``/`` made of literal text, ``*`` (any characters, ``/`` included) and
  ``:name`` (one path segment). Anything else (groups, modifiers, ``?`` or ``#`` parts, other
  origins) is refused with a ``ConfigError``: the server must be able to check a request path
  against the pattern exactly as the browser does.
- The request fields: ``Available-Dictionary`` (an RFC 8941 Byte Sequence holding a SHA-256)
  and ``Dictionary-ID`` (a String). Malformed values are ``None``, never an error.
- The response fields: ``Use-As-Dictionary`` (a Dictionary) and the ``Vary`` tokens.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from asgi_perf._core.config import ConfigError

__all__ = [
    "Rule",
    "compile_match",
    "parse_available_dictionary",
    "parse_rules",
    "parse_sf_string",
    "sf_string",
]

_DIGEST_SIZE = 32  # SHA-256
_MAX_ID = 1024  # RFC 9842 §2.1.3
_VARY_BASE = (b"Accept-Encoding", b"Available-Dictionary")
_NAME = re.compile(r":([A-Za-z_][A-Za-z0-9_]*)")
_DEST = re.compile(r"[a-z]*")  # a Fetch destination; "" is fetch()/XHR (mapping form only)
# Pattern characters with a URL Pattern meaning this subset does not support (groups,
# modifiers, the search and hash parts, escapes), plus what cannot travel in a String.
_UNSUPPORTED = frozenset('(){}?+#\\"')
_ACCEPTED_PATTERN = (
    "a path pattern starting with '/' made of literal text, '*' (anything) and ':name' "
    "(one segment), e.g. /api/items* or /app/*/main.js"
)
_ACCEPTED_RULES = (
    "URL patterns separated by commas, each optionally followed by ';id=<text>' and "
    "';match-dest=<destination>|<destination>' (e.g. '/api/items*;match-dest=empty'), "
    "or a list of such strings or of mappings with 'match', 'id', 'match_dest'"
)


def compile_match(pattern: str) -> re.Pattern[str] | None:
    """The regular expression a request path must fully match, or ``None`` if the pattern
    is outside the supported subset (see the module docstring)."""
    if not pattern.startswith("/") or not pattern.isascii() or not pattern.isprintable():
        return None
    if any(ch in _UNSUPPORTED or ch.isspace() for ch in pattern):
        return None
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == ":":
            name = _NAME.match(pattern, i)
            if name is None:
                return None
            i = name.end()
            if pattern.startswith("*", i):  # ':name*' would be a modifier
                return None
            out.append("[^/]+")
            continue
        if ch == "*":
            if pattern.startswith("*", i + 1):  # '**': the second '*' would be a modifier
                return None
            out.append(".*")
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def sf_string(text: str) -> bytes:
    """``text`` as an RFC 8941 String (printable ASCII; ``"`` and ``\\`` escaped)."""
    return b'"' + text.replace("\\", "\\\\").replace('"', '\\"').encode("ascii") + b'"'


def parse_sf_string(value: bytes) -> str | None:
    """An RFC 8941 String field value, or ``None`` when malformed."""
    value = value.strip(b" \t")
    if len(value) < 2 or value[:1] != b'"' or value[-1:] != b'"':
        return None
    out: list[str] = []
    escaped = False
    for byte in value[1:-1]:
        if escaped:
            if byte not in (0x22, 0x5C):
                return None
            out.append(chr(byte))
            escaped = False
        elif byte == 0x5C:
            escaped = True
        elif byte == 0x22 or byte < 0x20 or byte > 0x7E:
            return None
        else:
            out.append(chr(byte))
    return None if escaped else "".join(out)


@functools.lru_cache(maxsize=256)  # a polled resource: many requests name the same few
def parse_available_dictionary(value: bytes) -> bytes | None:
    """The SHA-256 an ``Available-Dictionary`` value names (an RFC 8941 Byte Sequence,
    ``:base64:``), or ``None`` when it is malformed or not 32 bytes."""
    value = value.strip(b" \t")
    if len(value) < 2 or value[:1] != b":" or value[-1:] != b":":
        return None
    encoded = value[1:-1]
    encoded += b"=" * (-len(encoded) % 4)  # RFC 8941 §3.3.5: padding may be missing
    try:
        digest = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None
    return digest if len(digest) == _DIGEST_SIZE else None


@dataclass(frozen=True)
class Rule:
    """One ``dictionaries`` entry: responses on ``match`` paths are offered as dictionaries,
    and requests on them may be answered with one."""

    match: str
    match_dest: tuple[str, ...] = ()
    id: str = ""
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)
    header: bytes = field(init=False, repr=False, compare=False)
    vary: tuple[bytes, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        regex = compile_match(self.match)
        if regex is None:
            raise ValueError(self.match)
        object.__setattr__(self, "regex", regex)
        parts = [b"match=" + sf_string(self.match)]
        if self.match_dest:
            dests = b" ".join(sf_string(dest) for dest in self.match_dest)
            parts.append(b"match-dest=(" + dests + b")")
        if self.id:
            parts.append(b"id=" + sf_string(self.id))
        object.__setattr__(self, "header", b", ".join(parts))
        # With an id, the answer depends on Dictionary-ID too (RFC 9110 §12.5.5).
        vary = (*_VARY_BASE, b"Dictionary-ID") if self.id else _VARY_BASE
        object.__setattr__(self, "vary", vary)


def _rule(item: object, name: str, value: object) -> Rule:
    if isinstance(item, Rule):  # already parsed (from the environment)
        return item
    match: object
    dests: object = ()
    ident: object = ""
    if isinstance(item, Mapping):
        unknown = set(item) - {"match", "match_dest", "match-dest", "id"}
        if unknown:
            raise ConfigError(name, value, _ACCEPTED_RULES)
        match = item.get("match")
        dests = item.get("match_dest", item.get("match-dest", ()))
        ident = item.get("id", "")
    elif isinstance(item, str):
        match, *params = (part.strip() for part in item.split(";"))
        for param in params:
            key, sep, arg = param.partition("=")
            key = key.strip().lower()
            if not sep or key not in ("id", "match-dest"):
                raise ConfigError(name, value, _ACCEPTED_RULES)
            if key == "id":
                ident = arg.strip()
            else:
                dests = tuple(d.strip() for d in arg.split("|") if d.strip())
    else:
        raise ConfigError(name, value, _ACCEPTED_RULES)
    if isinstance(dests, str):
        dests = (dests,)
    if not isinstance(match, str) or compile_match(match) is None:
        raise ConfigError(name, value, _ACCEPTED_PATTERN)
    if not isinstance(dests, Iterable) or not all(
        isinstance(d, str) and _DEST.fullmatch(d) for d in dests
    ):
        raise ConfigError(name, value, "match-dest: request destinations such as document, script")
    if (
        not isinstance(ident, str)
        or len(ident) > _MAX_ID
        or not (ident.isascii() and ident.isprintable())
    ):
        raise ConfigError(name, value, f"id: printable ASCII text of at most {_MAX_ID} characters")
    return Rule(match, tuple(dests), ident)


def parse_rules(value: object, name: str) -> tuple[Rule, ...]:
    """The ``dictionaries`` option (or its environment variable) as rules, in order."""
    if isinstance(value, str):
        items: list[object] = [part.strip() for part in value.split(",") if part.strip()]
    elif isinstance(value, Mapping):
        items = [value]
    elif isinstance(value, Iterable):
        items = list(value)
    else:
        raise ConfigError(name, value, _ACCEPTED_RULES)
    return tuple(_rule(item, name, value) for item in items)
