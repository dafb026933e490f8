"""The environment and options as a new user meets them: a misspelled variable is reported with
the closest known name (an error in strict mode), an error names the variable (or the option and
the middleware), and a missing optional package says which extra to install."""

from __future__ import annotations

import logging
import sys
from typing import Any

import pytest

import asgi_perf
from asgi_perf import CompressionMiddleware, ConfigError, TimingMiddleware
from asgi_perf._core import config
from asgi_perf._stack import middleware_classes
from asgi_perf.compression import _codecs
from asgi_perf.queries import instrument_sqlalchemy


async def app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("not called")


@pytest.fixture(autouse=True)
def _fresh_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each name is reported once per process: give every test its own process memory."""
    monkeypatch.setattr(config, "_reported", set())


def _config_messages(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "asgi_perf.config"]


def test_misspelled_variable_is_reported_with_the_closest_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="asgi_perf.config"):
        asgi_perf.from_env(app, environ={"ASGI_PERF_CACHE_ENABLE": "true"})
        asgi_perf.from_env(app, environ={"ASGI_PERF_CACHE_ENABLE": "true"})
    [record] = _config_messages(caplog)  # once per process, not once per build or middleware
    message = record.getMessage()
    assert "ASGI_PERF_CACHE_ENABLE is not a variable asgi-perf reads" in message
    assert "did you mean ASGI_PERF_CACHE_ENABLED?" in message
    assert record.variable == "ASGI_PERF_CACHE_ENABLE"  # type: ignore[attr-defined]


def test_one_middleware_from_env_reports_it_too(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="asgi_perf.config"):
        CompressionMiddleware.from_env(app, {"ASGI_PERF_COMPRESION_MIN_SIZE": "100"})
    [record] = _config_messages(caplog)
    assert "did you mean ASGI_PERF_COMPRESSION_MIN_SIZE?" in record.getMessage()


def test_strict_mode_makes_an_unknown_variable_an_error() -> None:
    env = {"ASGI_PERF_CACHE_ENABLE": "true", "ASGI_PERF_ZZZ": "1", "ASGI_PERF_STRICT": "true"}
    with pytest.raises(ConfigError) as info:
        asgi_perf.from_env(app, environ=env)
    assert info.value.name == "ASGI_PERF_CACHE_ENABLE"
    text = str(info.value)
    assert "did you mean ASGI_PERF_CACHE_ENABLED?" in text and "ASGI_PERF_STRICT" in text
    assert "also unknown: ASGI_PERF_ZZZ" in text


def test_strict_mode_value_is_checked_and_known_names_pass() -> None:
    with pytest.raises(ConfigError, match="ASGI_PERF_STRICT='sure'"):
        asgi_perf.from_env(app, environ={"ASGI_PERF_STRICT": "sure"})
    env = {"ASGI_PERF_STRICT": "on", "ASGI_PERF_CACHE_ENABLED": "false", "REDIS_URL": ""}
    assert asgi_perf.from_env(app, environ=env) is not None


def test_every_variable_a_middleware_reads_is_known() -> None:
    names = {var.name for cls in middleware_classes() for var in cls.ENV_VARS}
    names |= {cls.ENV_ENABLED[0] for cls in middleware_classes() if cls.ENV_ENABLED}
    assert names <= config.known_variables()
    assert config.check_environment(dict.fromkeys(config.known_variables(), "")) == []


def test_option_error_names_the_option_and_the_middleware() -> None:
    with pytest.raises(ConfigError) as info:
        CompressionMiddleware(app, minimum_size="big")
    assert info.value.name == "minimum_size" and info.value.middleware == "CompressionMiddleware"
    assert str(info.value).startswith("CompressionMiddleware: minimum_size='big' is not valid")


def test_environment_error_names_the_variable_and_the_middleware() -> None:
    with pytest.raises(ConfigError) as info:
        asgi_perf.from_env(app, environ={"ASGI_PERF_SLOW_REQUEST_THRESHOLD": "soon"})
    assert str(info.value).startswith(
        "TimingMiddleware: ASGI_PERF_SLOW_REQUEST_THRESHOLD='soon' is not valid"
    )


def test_missing_brotli_names_the_variable_and_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check the constructor makes (is the coding installed?) is still said of the variable."""
    monkeypatch.setattr(_codecs, "_brotli", None)
    with pytest.raises(ConfigError) as info:
        CompressionMiddleware.from_env(app, {"ASGI_PERF_COMPRESSION_ENCODINGS": "br"})
    assert info.value.name == "ASGI_PERF_COMPRESSION_ENCODINGS" and info.value.value == "br"
    assert "pip install 'asgi-perf[brotli]'" in str(info.value)
    # given in code, the option is named even when the environment sets it too
    with pytest.raises(ConfigError) as info:
        CompressionMiddleware.from_env(
            app, {"ASGI_PERF_COMPRESSION_ENCODINGS": "gzip"}, encodings="br"
        )
    assert info.value.name == "encodings"


def test_partly_missing_codings_warn_with_the_extra(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_codecs, "_zstd", None)
    with caplog.at_level(logging.WARNING, logger="asgi_perf.compression"):
        mw = CompressionMiddleware(app, encodings="zstd,gzip")
    assert mw.encodings == ("gzip",)
    assert "zstd: pip install 'asgi-perf[zstd]'" in caplog.text


def test_missing_zlib_ng_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(_codecs._DEFLATE, "zlib-ng", None)
    with pytest.raises(ConfigError, match=r"pip install 'asgi-perf\[fast-gzip\]'"):
        CompressionMiddleware(app, gzip_backend="zlib-ng")
    with pytest.raises(ConfigError) as info:
        CompressionMiddleware.from_env(app, {"ASGI_PERF_GZIP_BACKEND": "zlib-ng"})
    assert info.value.name == "ASGI_PERF_GZIP_BACKEND"
    assert CompressionMiddleware(app).codecs["gzip"].description.startswith("gzip zlib ")


def test_missing_opentelemetry_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "asgi_perf.timing._otel", None)  # import fails
    with pytest.raises(ConfigError, match=r"pip install 'asgi-perf\[otel\]'"):
        TimingMiddleware(app, otel="on")
    with pytest.raises(ConfigError) as info:
        TimingMiddleware.from_env(app, {"ASGI_PERF_OTEL": "on"})
    assert info.value.name == "ASGI_PERF_OTEL"
    assert TimingMiddleware(app, otel="auto") is not None  # auto: simply off


def test_missing_sqlalchemy_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)
    with pytest.raises(ImportError, match=r"pip install 'asgi-perf\[sqlalchemy\]'"):
        instrument_sqlalchemy(object())
