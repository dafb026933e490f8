"""The converters of options and environment values, one per kind of setting.

Each takes the raw value and the *name* the user wrote (the keyword option or the environment
variable), so a :class:`~asgi_perf._core.errors.ConfigError` says which setting was wrong, what
was given and what is accepted. Nothing falls back to a default silently.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from asgi_perf._core.errors import ConfigError

__all__ = [
    "ENV_PREFIX",
    "storage_url_from_env",
    "storage_variable",
    "to_bool",
    "to_choice",
    "to_duration",
    "to_float",
    "to_header_name",
    "to_header_names",
    "to_int",
    "to_list",
    "to_methods",
    "to_paths",
    "to_positive_duration",
    "to_rates",
    "to_size",
]

ENV_PREFIX = "ASGI_PERF_"


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def to_bool(value: object, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    raise ConfigError(name, value, "a boolean: 1/0, true/false, yes/no, on/off (any case)")


def _number(value: object, name: str, accepted: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(name, value, accepted)
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise ConfigError(name, value, accepted) from None
    else:
        raise ConfigError(name, value, accepted)
    if not math.isfinite(number):
        raise ConfigError(name, value, accepted)
    return number


def to_int(value: object, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    lo = "" if minimum is None else f" >= {minimum}"
    hi = "" if maximum is None else f" <= {maximum}"
    accepted = f"a whole number{lo}{' and' if lo and hi else ''}{hi}"
    number = _number(value, name, accepted)
    if not number.is_integer():
        raise ConfigError(name, value, accepted)
    result = int(number)
    if (minimum is not None and result < minimum) or (maximum is not None and result > maximum):
        raise ConfigError(name, value, accepted)
    return result


def to_float(value: object, name: str, minimum: float = 0.0) -> float:
    accepted = f"a number >= {minimum:g}"
    number = _number(value, name, accepted)
    if number < minimum:
        raise ConfigError(name, value, accepted)
    return number


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def to_duration(value: object, name: str) -> float:
    """Seconds from a number or a string like ``500ms``, ``5s``, ``2m``, ``1h``."""
    accepted = "seconds >= 0 as a number or with a unit: 500ms, 5s, 2m, 1h"
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match is None:
            raise ConfigError(name, value, accepted)
        unit = (match.group(2) or "s").lower()
        return float(match.group(1)) * _DURATION_UNITS[unit]
    number = _number(value, name, accepted)
    if number < 0:
        raise ConfigError(name, value, accepted)
    return number


def to_positive_duration(value: object, name: str) -> float:
    """A duration above zero (a timeout, a TTL): as :func:`to_duration`, ``0`` refused."""
    seconds = to_duration(value, name)
    if seconds <= 0:
        raise ConfigError(name, value, "a duration above 0: 500ms, 5s, 2m, 1h")
    return seconds


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}


def to_size(value: object, name: str) -> int:
    """Bytes from a number or a string like ``64MiB``, ``500KB``, ``1024``."""
    accepted = "bytes >= 0 as a whole number or with a unit: B, KB, MB, GB, KiB, MiB, GiB"
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match is None:
            raise ConfigError(name, value, accepted)
        unit = (match.group(2) or "b").lower()
        return int(float(match.group(1)) * _SIZE_UNITS[unit])
    number = _number(value, name, accepted)
    if number < 0 or not number.is_integer():
        raise ConfigError(name, value, accepted)
    return int(number)


def to_list(value: object, name: str) -> tuple[str, ...]:
    """A comma-separated string or an iterable of strings, stripped, empties dropped."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, Iterable):
        items = tuple(value)
        if all(isinstance(item, str) for item in items):
            return tuple(item.strip() for item in items if item.strip())
    raise ConfigError(name, value, "a comma-separated string or a list of strings")


# RFC 9110 §5.6.2: a token, what a method and a field name are made of.
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _is_token(text: str) -> bool:
    return _TOKEN_RE.fullmatch(text) is not None


def to_methods(value: object, name: str, allowed: Iterable[str] | None = None) -> frozenset[str]:
    """HTTP method names (``GET,POST``), upper-cased; with ``allowed``, one or more of those."""
    methods = frozenset(m.upper() for m in to_list(value, name))
    if allowed is None:
        # Letters and '-' (GET, M-SEARCH): a method is a token, but a digit in one is a typo.
        if not all(m.isascii() and m.replace("-", "").isalpha() for m in methods):
            raise ConfigError(name, value, "HTTP method names such as GET,POST")
        return methods
    permitted = frozenset(allowed)
    if not methods or not methods <= permitted:
        raise ConfigError(name, value, "one or more of " + ", ".join(sorted(permitted)))
    return methods


def to_paths(value: object, name: str) -> tuple[str, ...]:
    """Paths or path prefixes (what each means is the option's), every one starting with '/'."""
    paths = to_list(value, name)
    if not all(path.startswith("/") for path in paths):
        raise ConfigError(name, value, "paths starting with '/', comma-separated")
    return paths


def to_header_names(value: object, name: str) -> tuple[bytes, ...]:
    """Header field names, lower-cased as they are compared, without repeats."""
    names = to_list(value, name)
    if not all(_is_token(item) for item in names):
        raise ConfigError(name, value, "HTTP header names (letters, digits, '-'), comma-separated")
    return tuple(dict.fromkeys(item.lower().encode("ascii") for item in names))


def to_header_name(value: object, name: str) -> str | None:
    """One header field name as written (for messages; compare it lower-cased), or ``None``
    for none (``None`` or blank)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str) and _is_token(value.strip()):
        return value.strip()
    raise ConfigError(
        name, value, "a header name such as X-API-Key (letters, digits, '-'), or None"
    )


def to_choice(value: object, name: str, choices: Iterable[str]) -> str:
    options = tuple(choices)
    if isinstance(value, str) and value.strip().lower() in options:
        return value.strip().lower()
    raise ConfigError(name, value, "one of " + ", ".join(options))


def to_rates(value: object, name: str) -> tuple[Any, ...]:
    """``limits`` rate strings (``"10/second;100/minute"``) into ``RateLimitItem`` objects."""
    from limits import RateLimitItem, parse_many

    accepted = "rates in `limits` syntax such as '100/minute' or '10/second;1000/hour'"
    if isinstance(value, RateLimitItem):
        return (value,)
    if isinstance(value, str):
        text = value
    elif isinstance(value, Iterable) and not isinstance(value, bytes | Mapping):
        items = tuple(value)
        if items and all(isinstance(i, RateLimitItem) for i in items):
            return items
        if not all(isinstance(i, str) for i in items):
            raise ConfigError(name, value, accepted)
        text = ";".join(items)
    else:
        raise ConfigError(name, value, accepted)
    try:
        parsed = tuple(parse_many(text.replace(",", ";")))
    except ValueError:
        raise ConfigError(name, value, accepted) from None
    if not parsed or any(item.amount < 1 for item in parsed):
        raise ConfigError(name, value, accepted)
    return parsed


def storage_variable(environ: Mapping[str, str]) -> tuple[str, str] | None:
    """``(variable, url)`` of the first of ``ASGI_PERF_STORAGE_URL`` and ``REDIS_URL`` set."""
    for name in (ENV_PREFIX + "STORAGE_URL", "REDIS_URL"):
        url = environ.get(name, "").strip()
        if url:
            return name, url
    return None


def storage_url_from_env(environ: Mapping[str, str]) -> str:
    """``ASGI_PERF_STORAGE_URL``, else ``REDIS_URL``, else ``memory://``.

    The URL is checked where the store is made (the store registry knows the schemes, this
    module none); ``from_env`` reports a bad one under the variable it came from.
    """
    found = storage_variable(environ)
    return "memory://" if found is None else found[1]
