"""Option and environment parsing: one set of converters for keyword arguments and variables.

Every converter takes the raw value and the *name* the user wrote (the keyword option or the
environment variable), so a :class:`ConfigError` always says which setting was wrong, what
was given and what is accepted. Nothing falls back to a default silently.

Every middleware class is an :class:`EnvConfigurable`, which gives it, in one place instead of
six: ``from_env``; errors that name the middleware (and the variable, when the bad value came
from the environment); the registry of variables, against which :func:`check_environment`
reports an ``ASGI_PERF_*`` name nothing reads; and the layering check (a warning when a layer
that must be outermost, Timing, is built inside another).
"""

from __future__ import annotations

import difflib
import functools
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from asgi_perf._core.logs import install_fallback

__all__ = [
    "KEY_PREFIX_ENV",
    "STRICT_ENV",
    "ConfigError",
    "EnvConfigurable",
    "EnvVar",
    "check_environment",
    "install_hint",
    "known_variables",
    "register_variables",
    "storage_url_from_env",
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
#: ``true``: an ``ASGI_PERF_*`` variable that nothing reads is an error, not a warning.
STRICT_ENV = ENV_PREFIX + "STRICT"

logger = logging.getLogger("asgi_perf.config")


class ConfigError(ValueError):
    """A bad option or environment value, named, with what is accepted.

    ``middleware`` is the class whose option it is (set for every error raised while a
    middleware is built); ``name`` is the keyword option, or the environment variable when
    the value came from the environment.
    """

    __module__ = "asgi_perf"  # where users import it from: tracebacks say asgi_perf.ConfigError

    def __init__(
        self, name: str, value: object, accepted: str, middleware: str | None = None
    ) -> None:
        self.name = name
        self.value = value
        self.accepted = accepted
        self.middleware = middleware
        where = f"{middleware}: " if middleware else ""
        super().__init__(f"{where}{name}={value!r} is not valid: expected {accepted}")

    def located(self, middleware: str, variable: tuple[str, object] | None = None) -> ConfigError:
        """The same error, said of ``middleware`` (and of ``variable``'s name and raw value)."""
        name, value = variable if variable is not None else (self.name, self.value)
        return ConfigError(name, value, self.accepted, self.middleware or middleware)


def install_hint(extra: str) -> str:
    """What to run for a missing optional dependency: ``pip install 'asgi-perf[extra]'``."""
    return f"pip install 'asgi-perf[{extra}]'"


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


def _storage_from_env(environ: Mapping[str, str]) -> tuple[str, str] | None:
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
    found = _storage_from_env(environ)
    return "memory://" if found is None else found[1]


@dataclass(frozen=True, slots=True)
class EnvVar:
    """One environment variable feeding one keyword option through one converter."""

    name: str
    option: str
    convert: Callable[[str, str], Any]


#: The variable every store-backed middleware reads for its ``key_prefix``.
KEY_PREFIX_ENV = EnvVar("ASGI_PERF_KEY_PREFIX", "key_prefix", lambda v, n: v.strip())

# -- the variables asgi-perf reads ------------------------------------------------------------
# Filled as middleware classes are defined (``import asgi_perf`` defines all six), plus what
# other modules register; ``check_environment`` reports any other ``ASGI_PERF_*`` name.
_KNOWN: set[str] = {ENV_PREFIX + "STORAGE_URL", STRICT_ENV}
_reported: set[str] = set()


def register_variables(*names: str) -> None:
    """Declare variables read outside a middleware's ``ENV_VARS`` (so they are not "unknown")."""
    _KNOWN.update(names)


def known_variables() -> frozenset[str]:
    """Every ``ASGI_PERF_*`` variable some part of asgi-perf reads."""
    return frozenset(_KNOWN)


def check_environment(environ: Mapping[str, str] | None = None) -> list[str]:
    """Report ``ASGI_PERF_*`` variables that nothing reads (a typo reads as "not set").

    Each is logged once per process at WARNING on ``asgi_perf.config`` with the closest known
    name; with ``ASGI_PERF_STRICT=true`` the first one raises :class:`ConfigError` instead.
    Returns the unknown names.
    """
    env = os.environ if environ is None else environ
    raw_strict = env.get(STRICT_ENV, "")
    strict = to_bool(raw_strict, STRICT_ENV) if raw_strict.strip() else False
    unknown = sorted(name for name in env if name.startswith(ENV_PREFIX) and name not in _KNOWN)
    if not unknown:
        return []
    hints = {name: _closest(name) for name in unknown}
    if strict:
        others = f"; also unknown: {', '.join(unknown[1:])}" if len(unknown) > 1 else ""
        raise ConfigError(
            unknown[0],
            env[unknown[0]],
            f"a variable asgi-perf reads{hints[unknown[0]]} ({STRICT_ENV} is on){others}",
        )
    for name in unknown:
        if name not in _reported:
            _reported.add(name)
            logger.warning(
                "%s is not a variable asgi-perf reads, so it has no effect%s",
                name,
                hints[name],
                extra={"variable": name},
            )
    return unknown


def _closest(name: str) -> str:
    match = difflib.get_close_matches(name, sorted(_KNOWN), n=1, cutoff=0.6)
    return f": did you mean {match[0]}?" if match else ""


# -- building a middleware --------------------------------------------------------------------
_ORDER_REPORTED: set[tuple[str, str]] = set()
_MAX_DEPTH = 64


def _check_layering(outer: EnvConfigurable) -> None:
    """Warn once per pair when a layer that must be outermost is built inside ``outer``.

    Built inside out (Starlette's ``add_middleware`` too), each layer can see everything
    inside it through the ``.app`` attributes ASGI middlewares keep: a few attribute reads
    at construction, nothing per request.
    """
    if outer.OUTERMOST:
        return
    seen: set[int] = set()
    inner = getattr(outer, "app", None)
    for _ in range(_MAX_DEPTH):
        if inner is None or id(inner) in seen:
            return
        seen.add(id(inner))
        if isinstance(inner, EnvConfigurable) and inner.OUTERMOST:
            pair = (type(outer).__name__, type(inner).__name__)
            if pair not in _ORDER_REPORTED:
                _ORDER_REPORTED.add(pair)
                logger.warning(
                    "%s is inside %s: its total misses %s's time and Server-Timing entry. "
                    "With add_middleware the layer added last is the outermost: add %s "
                    "last, or add the whole stack with asgi_perf.install(app)",
                    pair[1],
                    pair[0],
                    pair[0],
                    pair[1],
                    extra={"outer": pair[0], "inner": pair[1]},
                )
            return
        inner = getattr(inner, "app", None)


def _building(init: Callable[..., None]) -> Callable[..., None]:
    """``__init__`` that names the middleware in its ``ConfigError`` and checks the layering."""

    @functools.wraps(init)
    def __init__(self: EnvConfigurable, *args: Any, **kwargs: Any) -> None:
        try:
            init(self, *args, **kwargs)
        except ConfigError as exc:
            if exc.middleware is not None:
                raise
            raise exc.located(type(self).__name__).with_traceback(exc.__traceback__) from None
        _check_layering(self)

    return __init__


M = TypeVar("M", bound="EnvConfigurable")


class EnvConfigurable:
    """Mixin giving a middleware ``from_env``, named errors and the layering check.

    A middleware lists its variables in ``ENV_VARS``; ``ENV_ENABLED`` names the variable that
    switches it on in :func:`asgi_perf.from_env` with its default; ``ENV_STORAGE`` says whether
    it takes the shared store URL as its ``storage`` option; ``OUTERMOST`` that it must wrap
    every other layer (a warning is logged when it is built inside one).
    """

    ENV_VARS: ClassVar[tuple[EnvVar, ...]] = ()
    ENV_ENABLED: ClassVar[tuple[str, bool] | None] = None
    ENV_STORAGE: ClassVar[bool] = False
    OUTERMOST: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        install_fallback()  # a middleware exists: its warnings must not lose level and time
        register_variables(*(var.name for var in cls.ENV_VARS))
        if cls.ENV_ENABLED is not None:
            register_variables(cls.ENV_ENABLED[0])
        if "__init__" in cls.__dict__:
            cls.__init__ = _building(cls.__dict__["__init__"])  # type: ignore[method-assign]

    @classmethod
    def _env_options(
        cls, env: Mapping[str, str]
    ) -> tuple[dict[str, Any], dict[str, tuple[str, str]]]:
        """The options the environment sets, and for each the variable and raw value."""
        options: dict[str, Any] = {}
        origins: dict[str, tuple[str, str]] = {}
        if cls.ENV_STORAGE:
            found = _storage_from_env(env)
            options["storage"] = "memory://" if found is None else found[1]
            if found is not None:
                origins["storage"] = found
        for var in cls.ENV_VARS:
            raw = env.get(var.name)
            if raw is not None and raw.strip() != "":
                options[var.option] = var.convert(raw, var.name)
                origins[var.option] = (var.name, raw)
        return options, origins

    @classmethod
    def options_from_env(cls, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
        return cls._env_options(os.environ if environ is None else environ)[0]

    @classmethod
    def enabled_in_env(cls, environ: Mapping[str, str] | None = None) -> bool:
        if cls.ENV_ENABLED is None:
            return False
        env = os.environ if environ is None else environ
        name, default = cls.ENV_ENABLED
        raw = env.get(name)
        if raw is None or raw.strip() == "":
            return default
        return to_bool(raw, name)

    @classmethod
    def from_env(
        cls: type[M], app: Any, environ: Mapping[str, str] | None = None, **options: Any
    ) -> M:
        """Build with options from the environment; keyword ``options`` win over it.

        An ``ASGI_PERF_*`` variable nothing reads is reported (:func:`check_environment`);
        a value the middleware rejects is reported under the variable it came from.
        """
        env = os.environ if environ is None else environ
        check_environment(env)
        try:
            merged, origins = cls._env_options(env)
        except ConfigError as exc:
            raise exc.located(cls.__name__).with_traceback(exc.__traceback__) from None
        merged.update(options)
        try:
            return cls(app, **merged)  # type: ignore[call-arg]
        except ConfigError as exc:
            # "storage max_bytes", "rules['GET /']": an error about a part of an option
            option = exc.name.split(" ", 1)[0].split("[", 1)[0]
            origin = None if option in options else origins.get(option)
            if origin is None:
                raise
            variable, raw = origin
            where = (
                (variable, raw)
                if exc.name == option
                else (variable + exc.name[len(option) :], exc.value)
            )
            raise exc.located(cls.__name__, where).with_traceback(exc.__traceback__) from None
