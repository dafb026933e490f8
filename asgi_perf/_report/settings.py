"""The report's settings, from keyword options or the environment (options win).

- ``ASGI_PERF_REPORT_PATH`` (``/__perf__``): where the report is mounted; the stack sends
  requests under it straight to the app (no rate limit, cache, dedup or statistics). ``off``.
- ``ASGI_PERF_REPORT_TOKEN`` (unset): a bearer token the report requires.
- ``ASGI_PERF_REPORT_PUBLISH_INTERVAL`` (``5s``): how often each process publishes its
  statistics for the fleet report. ``off``.
- ``ASGI_PERF_STATS_DIR`` (unset): a directory the processes of one machine share, for the
  fleet report without Redis.

The store (``ASGI_PERF_STORAGE_URL``, else ``REDIS_URL``) and ``ASGI_PERF_KEY_PREFIX`` are the
middlewares' own: with a Redis store the fleet report needs nothing else.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from asgi_perf._core.config import (
    KEY_PREFIX_ENV,
    ConfigError,
    EnvVar,
    register_variables,
    storage_variable,
    to_duration,
)
from asgi_perf.stores import Store, in_process

__all__ = ["DEFAULT_INTERVAL", "DEFAULT_PATH", "ReportSettings"]

DEFAULT_PATH = "/__perf__"
DEFAULT_INTERVAL = 5.0
_OFF = frozenset({"off", "none", "false", "no", "0"})
_TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")  # RFC 6750 b64token


def to_path(value: object, name: str) -> str | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in _OFF):
        return None
    if isinstance(value, str) and value.strip().startswith("/") and value.strip() != "/":
        return value.strip().rstrip("/")
    raise ConfigError(name, value, "an absolute path such as /__perf__ (not /), or off")


def to_token(value: object, name: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str) and _TOKEN.match(value.strip()):
        return value.strip()
    raise ConfigError(name, "<hidden>", "a bearer token: letters, digits and -._~+/ (then =)")


def to_interval(value: object, name: str) -> float | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in _OFF):
        return None
    seconds = to_duration(value, name)
    if seconds <= 0:
        raise ConfigError(name, value, "a period > 0 such as 5s or 500ms, or off")
    return seconds


def to_directory(value: object, name: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str | os.PathLike):
        return os.fspath(value)
    raise ConfigError(name, value, "a directory path")


ENV_VARS = (
    EnvVar("ASGI_PERF_REPORT_PATH", "path", to_path),
    EnvVar("ASGI_PERF_REPORT_TOKEN", "token", to_token),
    EnvVar("ASGI_PERF_REPORT_PUBLISH_INTERVAL", "publish_interval", to_interval),
    EnvVar("ASGI_PERF_STATS_DIR", "stats_dir", to_directory),
    KEY_PREFIX_ENV,
)
register_variables(*(var.name for var in ENV_VARS))  # read outside a middleware

_CONVERT = {var.option: var.convert for var in ENV_VARS if var.option != "key_prefix"}


@dataclass(frozen=True)
class ReportSettings:
    path: str | None = DEFAULT_PATH
    token: str | None = None
    publish_interval: float | None = DEFAULT_INTERVAL
    stats_dir: str | None = None
    key_prefix: str = "asgi_perf:"
    storage: str | Store = "memory://"

    @classmethod
    def resolve(cls, environ: Mapping[str, str] | None = None, **options: Any) -> ReportSettings:
        """Settings from ``environ`` (default ``os.environ``), then ``options`` over them."""
        env = os.environ if environ is None else environ
        found = storage_variable(env)
        if found is not None:
            in_process(found[1], found[0])  # an unknown scheme: ConfigError naming the variable
        values: dict[str, Any] = {"storage": "memory://" if found is None else found[1]}
        for var in ENV_VARS:
            raw = env.get(var.name)
            if raw is not None and raw.strip() != "":
                values[var.option] = var.convert(raw, var.name)
        known = {f.name for f in fields(cls)}
        for option, value in options.items():
            if option not in known:
                raise TypeError(f"unknown report option {option!r}")
            if value is None:
                continue  # not given: the environment's value (or the default) stands
            if option == "storage" and not isinstance(value, Store):
                if not isinstance(value, str):
                    raise ConfigError("storage", value, "a store URL or a Store")
                in_process(value, "storage")  # an unknown scheme: ConfigError
            elif option == "key_prefix" and not isinstance(value, str):
                raise ConfigError("key_prefix", value, "a string such as 'asgi_perf:'")
            convert = _CONVERT.get(option)
            values[option] = convert(value, option) if convert else value
        return cls(**values)
