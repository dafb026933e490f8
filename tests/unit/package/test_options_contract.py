"""The options/environment contract, checked for every variable of every middleware.

For each ``EnvVar`` of each middleware (and of the CacheWarmer): a valid value converts and
``from_env`` hands the converted value to the option, building the middleware for real (so a
variable mapped to an option the constructor does not take fails here); a bad value raises
``ConfigError`` naming the variable from the environment, and naming the option and the
middleware as a keyword; a keyword wins over the environment. What each middleware then does
with its options is tested next to the middleware.
"""

from __future__ import annotations

from typing import Any

import pytest

from asgi_perf import ConfigError
from asgi_perf._core.config import EnvConfigurable, EnvVar
from asgi_perf._stack import middleware_classes
from asgi_perf._warm import CacheWarmer


async def app(scope: Any, receive: Any, send: Any) -> None:  # never called: only built
    raise AssertionError("the contract only builds middlewares")


#: variable -> (a valid value, another valid value converting differently, bad values).
#: An empty bad tuple means every string is valid (the reason is on the line).
SAMPLES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    # shared by several middlewares
    "ASGI_PERF_TRUSTED_PROXIES": ("10.0.0.0/8, ::1", "127.0.0.1", ("10.0.0.300",)),
    "ASGI_PERF_PROXY_HEADER": ("forwarded", "x-forwarded-for", ("x-real-ip",)),
    "ASGI_PERF_KEY_PREFIX": ("app1:", "app2:", ()),  # any string is a prefix
    # timing
    "ASGI_PERF_SERVER_TIMING": ("off", "on", ("maybe",)),
    "ASGI_PERF_SERVER_TIMING_TRUSTED": ("10.0.0.0/8", "::1", ("not-an-ip",)),
    "ASGI_PERF_RESPONSE_TIME_HEADER": ("X-Took", "off", ("X Took",)),
    "ASGI_PERF_SLOW_REQUEST_THRESHOLD": ("250ms", "off", ("fast", "-1")),
    "ASGI_PERF_OTEL": ("off", "on", ("sometimes",)),
    "ASGI_PERF_TIMING_MAX_ROUTES": ("10", "3", ("0", "ten")),
    "ASGI_PERF_TIMING_ROUTE_FROM_SCOPE": ("false", "true", ("perhaps",)),
    "ASGI_PERF_PROFILING_ENABLED": ("on", "off", ("maybe",)),
    "ASGI_PERF_PROFILING_SAMPLE_RATE": ("0.5", "1", ("2", "half")),
    "ASGI_PERF_MEMORY_PROFILING_ENABLED": ("yes", "no", ("maybe",)),
    "ASGI_PERF_PROFILING_KEEP": ("3", "9", ("0",)),
    "ASGI_PERF_PROFILING_MAX_BYTES": ("1MiB", "64KiB", ("lots",)),
    "ASGI_PERF_PROFILING_INTERVAL": ("5ms", "10ms", ("often",)),
    "ASGI_PERF_SLO": ("GET /a: p95<200ms", "GET /b: p99<1s", ("GET /a: p95 under 1s",)),
    "ASGI_PERF_SLO_WINDOWS": ("1m,30m", "5m,1h", ("soon", "1h,5m")),
    # rate limiting
    "ASGI_PERF_RATE_LIMIT": ("10/second;100/minute", "5/minute", ("fast",)),
    "ASGI_PERF_RATE_LIMIT_USER": ("50/second", "7/hour", ("lots",)),
    "ASGI_PERF_RATE_LIMIT_STRATEGY": ("GCRA", "fixed-window", ("bucket",)),
    "ASGI_PERF_RATE_LIMIT_RULES": ("POST /login=5/minute", "GET /a=1/second", ("/login",)),
    "ASGI_PERF_RATE_LIMIT_EXEMPT_PATHS": ("/health", "/metrics,/ready", ("health",)),
    "ASGI_PERF_RATE_LIMIT_USER_HEADER": ("X-Api-Key", "X-User", ("X Api Key",)),
    "ASGI_PERF_RATE_LIMIT_HEADERS": ("off", "on", ("maybe",)),
    "ASGI_PERF_RATE_LIMIT_FAIL_OPEN": ("no", "yes", ("maybe",)),
    "ASGI_PERF_RATE_LIMIT_IPV6_PREFIX": ("56", "48", ("200", "0")),
    "ASGI_PERF_RATE_LIMIT_STORAGE_TIMEOUT": ("20ms", "1s", ("-1", "0")),
    "ASGI_PERF_RATE_LIMIT_DEFER": ("1", "0", ("later",)),
    # dedup / Idempotency-Key
    "ASGI_PERF_DEDUP_WINDOW": ("2s", "1s", ("soon",)),
    "ASGI_PERF_DEDUP_METHODS": ("post, put", "GET", ("GET,P0ST",)),
    "ASGI_PERF_DEDUP_MAX_BODY_SIZE": ("64KiB", "1KB", ("lots",)),
    "ASGI_PERF_DEDUP_VARY_HEADERS": ("accept,x-tenant", "accept", ("bad header",)),
    "ASGI_PERF_DEDUP_WAIT_TIMEOUT": ("500ms", "2s", ("0",)),
    "ASGI_PERF_IDEMPOTENCY_HEADER": ("X-Request-Key", "Idem-Key", ("Bad Header",)),
    "ASGI_PERF_IDEMPOTENCY_TTL": ("1h", "10m", ("0",)),
    "ASGI_PERF_IDEMPOTENCY_REQUIRED": ("/pay,/v1/*", "/orders", ("pay",)),
    "ASGI_PERF_IDEMPOTENCY_STORAGE": ("memory://?max_entries=7", "memory://", ("postgres://db",)),
    # cache
    "ASGI_PERF_CACHE_DEFAULT_TTL": ("2m", "5s", ("soon",)),
    "ASGI_PERF_CACHE_PATHS": ("/items/{id}, /static/*", "/a", ("items",)),
    "ASGI_PERF_CACHE_MAX_ENTRIES": ("50", "7", ("0",)),
    "ASGI_PERF_CACHE_MAX_BYTES": ("1MiB", "64KiB", ("lots",)),
    "ASGI_PERF_CACHE_MAX_BODY_SIZE": ("10KB", "1KB", ("lots",)),
    "ASGI_PERF_CACHE_METHODS": ("GET", "GET,HEAD", ("G E T",)),
    "ASGI_PERF_CACHE_KEY_HEADERS": ("X-Tenant, Accept-Language", "x-a", ("bad header",)),
    "ASGI_PERF_CACHE_AUTHENTICATED": ("yes", "no", ("maybe",)),
    "ASGI_PERF_CACHE_STALE_WHILE_REVALIDATE": ("30s", "1m", ("soon",)),
    "ASGI_PERF_CACHE_STALE_IF_ERROR": ("1h", "0", ("-1",)),
    "ASGI_PERF_CACHE_MAX_STALE_KEEP": ("10m", "1h", ("later",)),
    "ASGI_PERF_CACHE_LOCK_TIMEOUT": ("1s", "2s", ("0",)),
    "ASGI_PERF_CACHE_HIT_FOR_MISS_TTL": ("5s", "30s", ("0",)),
    "ASGI_PERF_CACHE_LOCAL_TTL": ("1s", "0", ("-5",)),
    "ASGI_PERF_CACHE_BYPASS_HEADERS": ("x-debug", "x-a,x-b", ("x debug",)),
    "ASGI_PERF_CACHE_CDN_CACHE_CONTROL": ("off", "on", ("maybe",)),
    "ASGI_PERF_CACHE_TARGETED_FIELD": ("Edge-Control", "Surrogate-Control", ("Edge Control",)),
    "ASGI_PERF_CACHE_NAME": ("edge-1", "edge-2", ("café",)),
    "ASGI_PERF_CACHE_STATUS_KEY": ("on", "off", ("maybe",)),
    # compression
    "ASGI_PERF_COMPRESSION_MIN_SIZE": ("1KiB", "10", ("-5",)),
    "ASGI_PERF_COMPRESSION_ENCODINGS": ("gzip, br", "zstd", ("gzip,lz4",)),
    "ASGI_PERF_GZIP_LEVEL": ("9", "1", ("11",)),
    "ASGI_PERF_BROTLI_QUALITY": ("5", "11", ("high",)),
    "ASGI_PERF_ZSTD_LEVEL": ("1", "19", ("99",)),
    "ASGI_PERF_GZIP_BACKEND": ("zlib", "auto", ("pigz",)),
    "ASGI_PERF_COMPRESSION_TYPES": ("text/*,application/json", "text/html", ("json",)),
    "ASGI_PERF_COMPRESSION_EXCLUDE_PATHS": ("/metrics", "/a,/b/*", ("metrics",)),
    "ASGI_PERF_COMPRESSION_SSE": ("off", "on", ("sometimes",)),
    "ASGI_PERF_COMPRESSION_THREAD_MIN_SIZE": ("1MiB", "64KiB", ("big",)),
    "ASGI_PERF_COMPRESSION_DICTIONARIES": ("/api/items/*;id=items", "/js/*", ("/x(y)",)),
    "ASGI_PERF_COMPRESSION_DICTIONARY_MAX_COUNT": ("7", "100", ("0",)),
    "ASGI_PERF_COMPRESSION_DICTIONARY_MAX_SIZE": ("64KiB", "1MiB", ("huge",)),
    "ASGI_PERF_COMPRESSION_DICTIONARY_TTL": ("10m", "1h", ("-1",)),
    # N+1 queries
    "ASGI_PERF_N_PLUS_ONE_THRESHOLD": ("3", "10", ("1", "five")),
    "ASGI_PERF_N_PLUS_ONE_MIN_DURATION": ("20ms", "1s", ("-1",)),
    "ASGI_PERF_N_PLUS_ONE_ACTION": ("RAISE", "log", ("explode",)),
    "ASGI_PERF_DUPLICATE_QUERY_THRESHOLD": ("2", "4", ("1",)),
    "ASGI_PERF_SLOW_QUERY_THRESHOLD": ("250ms", "1s", ("soon",)),
    "ASGI_PERF_QUERIES_HEADER": ("on", "off", ("maybe",)),
    "ASGI_PERF_QUERIES_IGNORE": ("select 1; site:migrations/", "from x", ("select (",)),
    # cache warming
    "ASGI_PERF_CACHE_WARM": ("/a; /b", "/c", ("no-slash",)),
    "ASGI_PERF_CACHE_WARM_CONCURRENCY": ("8", "2", ("0", "257")),
    "ASGI_PERF_CACHE_WARM_TIMEOUT": ("30s", "1s", ("later",)),
}


def _classes() -> list[type[EnvConfigurable]]:
    classes = middleware_classes()
    if CacheWarmer.ENV_VARS:
        classes.append(CacheWarmer)
    return classes


CASES = [
    pytest.param(cls, var, id=f"{cls.__name__}-{var.name}")
    for cls in _classes()
    for var in cls.ENV_VARS
]
BAD_CASES = [
    pytest.param(cls, var, bad, id=f"{cls.__name__}-{var.name}={bad}")
    for cls in _classes()
    for var in cls.ENV_VARS
    for bad in SAMPLES.get(var.name, ("", "", ()))[2]
]


class Spy:
    """Records the options ``from_env`` builds the middleware with; the build is real."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, cls: type[EnvConfigurable]) -> None:
        self.options: dict[str, Any] = {}
        build = cls.__init__

        def __init__(instance: Any, app: Any, **options: Any) -> None:
            self.options = options
            build(instance, app, **options)

        monkeypatch.setattr(cls, "__init__", __init__)


def test_every_variable_has_samples() -> None:
    names = {var.name for cls in _classes() for var in cls.ENV_VARS}
    assert sorted(names - SAMPLES.keys()) == []
    assert sorted(SAMPLES.keys() - names) == []  # no sample for a variable nothing reads


@pytest.mark.parametrize(("cls", "var"), CASES)
def test_from_env_passes_the_converted_value_to_the_option(
    cls: type[EnvConfigurable], var: EnvVar, monkeypatch: pytest.MonkeyPatch
) -> None:
    valid, other, _ = SAMPLES[var.name]
    converted = var.convert(valid, var.name)
    assert converted != var.convert(other, var.name)  # the samples can tell which one arrived
    spy = Spy(monkeypatch, cls)
    cls.from_env(app, {var.name: valid})
    assert var.option in spy.options
    assert spy.options[var.option] == converted


@pytest.mark.parametrize(("cls", "var"), CASES)
def test_the_keyword_wins_over_the_environment(
    cls: type[EnvConfigurable], var: EnvVar, monkeypatch: pytest.MonkeyPatch
) -> None:
    valid, other, _ = SAMPLES[var.name]
    keyword = var.convert(other, var.name)
    spy = Spy(monkeypatch, cls)
    cls.from_env(app, {var.name: valid}, **{var.option: keyword})
    assert spy.options[var.option] == keyword


@pytest.mark.parametrize(("cls", "var", "bad"), BAD_CASES)
def test_a_bad_environment_value_names_the_variable(
    cls: type[EnvConfigurable], var: EnvVar, bad: str
) -> None:
    with pytest.raises(ConfigError) as info:
        cls.from_env(app, {var.name: bad})
    assert (info.value.name, info.value.middleware) == (var.name, cls.__name__)
    assert f"{cls.__name__}: {var.name}=" in str(info.value)


@pytest.mark.parametrize(("cls", "var", "bad"), BAD_CASES)
def test_a_bad_keyword_names_the_option_and_the_middleware(
    cls: type[EnvConfigurable], var: EnvVar, bad: str
) -> None:
    with pytest.raises(ConfigError) as info:
        cls(app, **{var.option: bad})  # type: ignore[call-arg]
    # "storage max_bytes", "rules['GET /']": an error about a part of the option
    assert info.value.name.split(" ", 1)[0].split("[", 1)[0] == var.option
    assert info.value.middleware == cls.__name__
    assert str(info.value).startswith(f"{cls.__name__}: {info.value.name}=")
