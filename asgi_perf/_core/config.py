"""Option and environment parsing. The converters (:mod:`~asgi_perf._core.converters`) and
:class:`ConfigError` (:mod:`~asgi_perf._core.errors`) are re-exported here, so a middleware
imports its configuration from one place.

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
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from asgi_perf._core.converters import (
    ENV_PREFIX,
    storage_url_from_env,
    storage_variable,
    to_bool,
    to_choice,
    to_duration,
    to_float,
    to_header_name,
    to_header_names,
    to_int,
    to_list,
    to_methods,
    to_paths,
    to_positive_duration,
    to_rates,
    to_size,
)
from asgi_perf._core.errors import ConfigError, install_hint
from asgi_perf._core.logs import install_fallback

__all__ = [
    "ENV_PREFIX",
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

#: ``true``: an ``ASGI_PERF_*`` variable that nothing reads is an error, not a warning.
STRICT_ENV = ENV_PREFIX + "STRICT"

logger = logging.getLogger("asgi_perf.config")


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
            found = storage_variable(env)
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
