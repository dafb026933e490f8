"""Client IP behind trusted proxies, IPv6 grouping, user keys: table tests."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from asgi_perf._core.config import ConfigError
from asgi_perf._core.identity import ClientIP, default_user_key, header_user_key, parse_forwarded
from tests.support import make_scope


def scope(peer: str, **headers: str) -> dict[str, object]:
    return make_scope(
        headers=[(k.replace("_", "-"), v) for k, v in headers.items()], client=(peer, 1)
    )


@pytest.mark.parametrize(
    ("trusted", "peer", "headers", "expected"),
    [
        ((), "203.0.113.9", {"x_forwarded_for": "1.2.3.4"}, "203.0.113.9"),  # not trusted: ignored
        (("10.0.0.0/8",), "10.0.0.1", {"x_forwarded_for": "1.2.3.4"}, "1.2.3.4"),
        (("10.0.0.0/8",), "10.0.0.1", {"x_forwarded_for": "6.6.6.6, 1.2.3.4, 10.0.0.7"}, "1.2.3.4"),
        (("10.0.0.0/8",), "192.0.2.1", {"x_forwarded_for": "1.2.3.4"}, "192.0.2.1"),
        (("10.0.0.0/8",), "10.0.0.1", {"x_forwarded_for": "garbage"}, "10.0.0.1"),
        (("10.0.0.0/8",), "10.0.0.1", {"x_forwarded_for": ", ,"}, "10.0.0.1"),
        # a client padding its own X-Forwarded-For is still the hop the proxy appended, never
        # the proxy: the field is read from the right, whatever its length
        (("10.0.0.0/8",), "10.0.0.1", {"x_forwarded_for": "1.1.1.1," * 10_000}, "1.1.1.1"),
        (("10.0.0.0/8",), "10.0.0.1", {"x_forwarded_for": "6.6.6.6, " * 65 + "1.2.3.4"}, "1.2.3.4"),
        (("10.0.0.0/8",), "10.0.0.1", {"x_forwarded_for": "x" * 100_000 + ", 1.2.3.4"}, "1.2.3.4"),
        (
            ("10.0.0.0/8",),
            "10.0.0.1",
            {"x_forwarded_for": "6.6.6.6, 1.2.3.4" + ", 10.0.0.9" * 3},
            "1.2.3.4",
        ),
        # more trusted hops in a row than any real chain has (MAX_HOPS): the peer
        (
            ("10.0.0.0/8",),
            "10.0.0.1",
            {"x_forwarded_for": "6.6.6.6" + ", 10.0.0.9" * 64},
            "10.0.0.1",
        ),
        (
            ("10.0.0.0/8",),
            "10.0.0.1",
            {"x_forwarded_for": "6.6.6.6" + ", 10.0.0.9" * 63},
            "6.6.6.6",
        ),
        # the proxy appends to X-Forwarded-For: a client's own Forwarded is not read
        (("10.0.0.0/8",), "10.0.0.1", {"forwarded": "for=6.6.6.6"}, "10.0.0.1"),
        (("10.0.0.0/8",), "10.0.0.1", {"x_forwarded_for": "1.2.3.4:5678"}, "1.2.3.4"),
        (("::1",), "::1", {"x_forwarded_for": "2001:db8:1:2:3:4:5:6"}, "2001:db8:1:2::/64"),
        ((), "2001:db8:aa:bb:1::1", {}, "2001:db8:aa:bb::/64"),
        ((), "::ffff:192.0.2.5", {}, "192.0.2.5"),
        ((), "not-an-ip", {}, "not-an-ip"),
    ],
)
def test_client_ip(
    trusted: tuple[str, ...], peer: str, headers: dict[str, str], expected: str
) -> None:
    assert ClientIP(trusted)(scope(peer, **headers)) == expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"forwarded": 'for=192.0.2.60;proto=http, for="[2001:db8::1]:4711"'}, "2001:db8::/64"),
        ({"forwarded": "for=unknown"}, "10.0.0.1"),
        ({"forwarded": "for=192.0.2.60", "x_forwarded_for": "6.6.6.6"}, "192.0.2.60"),
        ({"x_forwarded_for": "6.6.6.6"}, "10.0.0.1"),
        ({"forwarded": "for=6.6.6.6;proto=http, " * 1000 + "for=192.0.2.60"}, "192.0.2.60"),
    ],
)
def test_client_ip_behind_a_forwarded_proxy(headers: dict[str, str], expected: str) -> None:
    resolve = ClientIP("10.0.0.0/8", proxy_header="Forwarded")
    assert resolve(scope("10.0.0.1", **headers)) == expected


def test_no_client_in_scope() -> None:
    assert ClientIP()(make_scope(client=None)) == "unknown"


def test_bad_trusted_proxy_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"trusted_proxies='10\.0\.0\.300'"):
        ClientIP("10.0.0.300")
    with pytest.raises(ConfigError, match="ipv6_prefix"):
        ClientIP(ipv6_prefix=0)
    with pytest.raises(ConfigError, match="proxy_header"):
        ClientIP(proxy_header="x-real-ip")


def test_parse_forwarded() -> None:
    assert parse_forwarded('for=1.2.3.4, For="[::1]:80";by=x') == ["1.2.3.4", "[::1]:80"]


def test_default_user_key() -> None:
    user = SimpleNamespace(is_authenticated=True, identity="alice", display_name="Alice")
    assert default_user_key({"user": user}) == "alice"
    anon = SimpleNamespace(is_authenticated=False, identity="", display_name="")
    assert default_user_key({"user": anon}) is None
    assert default_user_key({"state": {"user_id": 42}}) == "42"
    assert default_user_key({}) is None
    hashed = default_user_key({"state": {"user_id": "bob\r\nX-Evil: 1"}})
    assert hashed is not None and hashed.startswith("h:") and "\n" not in hashed


def test_header_user_key_hashes_the_secret() -> None:
    key = header_user_key("X-API-Key")
    value = key(make_scope(headers=[("x-api-key", "sk_live_123")]))
    assert value is not None and "sk_live_123" not in value
    assert value == key(make_scope(headers=[("X-API-KEY", "sk_live_123")]))
    assert key(make_scope()) is None


@pytest.mark.parametrize("module", ["ratelimit", "dedup", "timing"])
def test_bad_trusted_proxies_variable_is_named(module: str) -> None:
    from asgi_perf import _stack as stack

    cls = next(
        c for c in stack.middleware_classes() if c.__module__.startswith(f"asgi_perf.{module}.")
    )
    with pytest.raises(ConfigError, match=r"ASGI_PERF_TRUSTED_PROXIES='10\.0\.0\.300'"):
        cls.from_env(lambda *a: None, environ={"ASGI_PERF_TRUSTED_PROXIES": "10.0.0.300"})
    good = cls.from_env(lambda *a: None, environ={"ASGI_PERF_TRUSTED_PROXIES": "10.0.0.0/8, ::1"})
    assert good is not None
