"""Every converter: good values, and bad ones that name the setting and what is accepted."""

from __future__ import annotations

from typing import Any

import pytest

from asgi_perf._core.config import (
    ConfigError,
    EnvConfigurable,
    EnvVar,
    storage_url_from_env,
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


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("0", False),
        ("TRUE", True),
        ("false", False),
        (" Yes ", True),
        ("no", False),
        ("On", True),
        ("OFF", False),
        (True, True),
        (False, False),
    ],
)
def test_bool_good(raw: Any, expected: bool) -> None:
    assert to_bool(raw, "ASGI_PERF_X") is expected


@pytest.mark.parametrize("raw", ["", "maybe", "2", "tru", 1, None])
def test_bool_bad(raw: Any) -> None:
    with pytest.raises(ConfigError, match=r"ASGI_PERF_X.*boolean"):
        to_bool(raw, "ASGI_PERF_X")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("500ms", 0.5),
        ("5s", 5.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1.5", 1.5),
        (" 250MS ", 0.25),
        (3, 3.0),
        (0.1, 0.1),
        ("0", 0.0),
        (".5s", 0.5),
    ],
)
def test_duration_good(raw: Any, expected: float) -> None:
    assert to_duration(raw, "ASGI_PERF_D") == pytest.approx(expected)


@pytest.mark.parametrize("raw", ["", "5 minutes", "-1", "1d", "abc", -3, float("nan"), True])
def test_duration_bad(raw: Any) -> None:
    with pytest.raises(ConfigError) as info:
        to_duration(raw, "ASGI_PERF_D")
    assert "ASGI_PERF_D" in str(info.value) and "500ms" in str(info.value)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("64MiB", 64 * 1024**2),
        ("500KB", 500_000),
        ("1024", 1024),
        ("1kib", 1024),
        ("2MB", 2_000_000),
        ("1GiB", 1024**3),
        (4096, 4096),
        ("10 B", 10),
    ],
)
def test_size_good(raw: Any, expected: int) -> None:
    assert to_size(raw, "ASGI_PERF_S") == expected


@pytest.mark.parametrize("raw", ["", "64 megabytes", "-1", "1TB", "lots", -5, 1.5])
def test_size_bad(raw: Any) -> None:
    with pytest.raises(ConfigError, match=r"ASGI_PERF_S.*MiB"):
        to_size(raw, "ASGI_PERF_S")


def test_int_bounds() -> None:
    assert to_int("7", "n", minimum=1, maximum=9) == 7
    assert to_int(3.0, "n") == 3
    for bad in ("0", "10", "3.5", "x", True):
        with pytest.raises(ConfigError, match=">= 1 and <= 9"):
            to_int(bad, "n", minimum=1, maximum=9)


def test_float() -> None:
    assert to_float("0.25", "f") == 0.25
    with pytest.raises(ConfigError, match="f="):
        to_float("-1", "f")


def test_list() -> None:
    assert to_list("zstd, br ,,gzip", "l") == ("zstd", "br", "gzip")
    assert to_list(["a", " b "], "l") == ("a", "b")
    assert to_list("", "l") == ()
    with pytest.raises(ConfigError, match="comma-separated"):
        to_list(5, "l")
    with pytest.raises(ConfigError):
        to_list([1, 2], "l")


def test_choice() -> None:
    assert to_choice("GCRA", "s", ("gcra", "fixed-window")) == "gcra"
    with pytest.raises(ConfigError, match="one of gcra, fixed-window"):
        to_choice("token-bucket", "s", ("gcra", "fixed-window"))


def test_shared_option_converters() -> None:
    """One converter per kind of option, used by every middleware that has one."""
    assert to_methods("get, Post,M-SEARCH", "m") == {"GET", "POST", "M-SEARCH"}
    assert to_methods("", "m") == frozenset()
    assert to_methods(["head"], "m", allowed=("GET", "HEAD")) == {"HEAD"}
    assert to_paths("/a, /b/*", "p") == ("/a", "/b/*")
    assert to_header_names("X-A, x-a,Accept", "h") == (b"x-a", b"accept")
    assert to_header_name(" X-API-Key ", "h") == "X-API-Key"
    assert to_header_name(None, "h") is None and to_header_name("  ", "h") is None
    assert to_positive_duration("500ms", "d") == 0.5


@pytest.mark.parametrize(
    ("convert", "value", "accepted"),
    [
        (lambda v, n: to_methods(v, n), "GET,P0ST", "HTTP method names"),
        (lambda v, n: to_methods(v, n, allowed=("GET", "HEAD")), "GET,POST", "GET, HEAD"),
        (lambda v, n: to_methods(v, n, allowed=("GET", "HEAD")), "", "GET, HEAD"),
        (to_paths, "/a,b", "starting with '/'"),
        (to_header_names, "X-A,Bad Header", "HTTP header names"),
        (to_header_names, "X-A:1", "HTTP header names"),
        (to_header_name, "X Key", "header name"),
        (to_header_name, 42, "header name"),
        (to_positive_duration, "0s", "above 0"),
    ],
)
def test_shared_option_converters_refuse(convert: Any, value: Any, accepted: str) -> None:
    with pytest.raises(ConfigError) as info:
        convert(value, "ASGI_PERF_SOMETHING")
    assert info.value.name == "ASGI_PERF_SOMETHING" and accepted in info.value.accepted


def test_rates() -> None:
    (one,) = to_rates("100/minute", "r")
    assert (one.amount, one.get_expiry()) == (100, 60)
    assert [r.amount for r in to_rates("10/second;1000/hour", "r")] == [10, 1000]
    assert [r.amount for r in to_rates(["5/minute", "50/hour"], "r")] == [5, 50]
    for bad in ("", "lots", "0/minute", "100/fortnight", 7):
        with pytest.raises(ConfigError, match="limits"):
            to_rates(bad, "ASGI_PERF_RATE_LIMIT")


def test_storage_url_fallbacks() -> None:
    assert storage_url_from_env({}) == "memory://"
    assert storage_url_from_env({"REDIS_URL": "redis://r"}) == "redis://r"
    env = {"REDIS_URL": "redis://r", "ASGI_PERF_STORAGE_URL": "redis://mine"}
    assert storage_url_from_env(env) == "redis://mine"


class _Thing(EnvConfigurable):
    ENV_ENABLED = ("ASGI_PERF_THING_ENABLED", False)
    ENV_STORAGE = True
    ENV_VARS = (
        EnvVar("ASGI_PERF_THING_SIZE", "size", lambda v, n: to_size(v, n)),
        EnvVar("ASGI_PERF_THING_WINDOW", "window", lambda v, n: to_duration(v, n)),
    )

    def __init__(self, app: Any, *, size: int = 1, window: float = 1.0, storage: str = "") -> None:
        self.app, self.size, self.window, self.storage = app, size, window, storage


def test_from_env_reads_variables_and_code_wins() -> None:
    env = {
        "ASGI_PERF_THING_SIZE": "1KiB",
        "ASGI_PERF_THING_WINDOW": "500ms",
        "REDIS_URL": "redis://x",
    }
    thing = _Thing.from_env("app", environ=env)
    assert (thing.size, thing.window, thing.storage) == (1024, 0.5, "redis://x")
    assert _Thing.from_env("app", environ=env, size=7).size == 7
    assert _Thing.from_env("app", environ={"ASGI_PERF_THING_SIZE": ""}).size == 1


def test_from_env_bad_value_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        _Thing.from_env("app", environ={"ASGI_PERF_THING_WINDOW": "soon"})
    assert info.value.name == "ASGI_PERF_THING_WINDOW"
    assert info.value.value == "soon"
    assert "ASGI_PERF_THING_WINDOW='soon'" in str(info.value)


def test_enabled_in_env() -> None:
    assert _Thing.enabled_in_env({}) is False
    assert _Thing.enabled_in_env({"ASGI_PERF_THING_ENABLED": "yes"}) is True
    with pytest.raises(ConfigError, match="ASGI_PERF_THING_ENABLED"):
        _Thing.enabled_in_env({"ASGI_PERF_THING_ENABLED": "sometimes"})


class _Checked(EnvConfigurable):
    """Rejects a bad value in its constructor, as the middlewares do."""

    ENV_STORAGE = True
    ENV_VARS = (EnvVar("ASGI_PERF_CHECKED_WINDOW", "window", lambda v, n: to_duration(v, n)),)

    def __init__(self, app: Any, *, window: float = 1.0, storage: str = "memory://") -> None:
        if window <= 0:
            raise ConfigError("window", window, "a duration above 0")
        if not storage.startswith("memory://"):
            raise ConfigError("storage max_bytes", storage, "memory://")


def test_constructor_errors_name_the_variable_that_gave_the_value() -> None:
    with pytest.raises(ConfigError) as info:
        _Checked.from_env("app", environ={"ASGI_PERF_CHECKED_WINDOW": "0s"})
    assert info.value.name == "ASGI_PERF_CHECKED_WINDOW"
    with pytest.raises(ConfigError) as info:
        _Checked.from_env("app", environ={"REDIS_URL": "redis://x"})
    assert info.value.name == "REDIS_URL max_bytes"
    with pytest.raises(ConfigError) as info:  # a keyword option wins, and is named as such
        _Checked.from_env("app", environ={"ASGI_PERF_CHECKED_WINDOW": "1s"}, window=0)
    assert info.value.name == "window"


@pytest.mark.parametrize("module", ["ratelimit", "dedup", "cache"])
def test_bad_storage_url_names_its_variable(module: str) -> None:
    """The core knows no store scheme; the store registry rejects the URL where the store is
    made, and ``from_env`` names the variable it came from."""
    from asgi_perf import _stack as stack

    classes = stack.middleware_classes()
    cls = next(c for c in classes if c.__module__.startswith(f"asgi_perf.{module}."))
    for env, name in [
        ({"ASGI_PERF_STORAGE_URL": "ftp://x"}, "ASGI_PERF_STORAGE_URL"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL"),
    ]:
        with pytest.raises(ConfigError) as info:
            cls.from_env(lambda *a: None, environ=env)
        assert info.value.name == name and "memory://" in info.value.accepted
    with pytest.raises(ConfigError, match="ASGI_PERF_STORAGE_URL='ftp://x'"):
        stack.from_env(
            lambda *a: None,
            environ={"ASGI_PERF_RATE_LIMIT_ENABLED": "1", "ASGI_PERF_STORAGE_URL": "ftp://x"},
        )
