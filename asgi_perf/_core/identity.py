"""Who sent a request: the client IP (behind trusted proxies) and the user key.

Shared by rate limiting and deduplication, so both count the same client the same way.

- The IP is ``scope["client"]``; ``X-Forwarded-For`` and RFC 7239 ``Forwarded`` are believed
  only when the direct peer is a trusted proxy, and are walked right to left past trusted hops
  (the leftmost entries are whatever the client chose to write). The walk reads the field from
  its end and stops at the first untrusted hop, so a client that pads its own header with
  thousands of hops changes neither the answer nor the work (at most ``MAX_HOPS`` read).
- IPv6 addresses are grouped by prefix (a /64 belongs to one host, who can rotate through it).
- Anything malformed falls back to the peer address; nothing here raises on client input.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache
from typing import Any

from asgi_perf._core.asgi import Scope, get_header_values
from asgi_perf._core.config import ConfigError, EnvVar, to_choice

__all__ = [
    "PROXY_HEADER_ENV",
    "TRUSTED_PROXIES_ENV",
    "ClientIP",
    "UserKey",
    "clean_key",
    "default_user_key",
    "hash_secret",
    "header_user_key",
    "parse_forwarded",
    "parse_networks",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
UserKey = Callable[[Scope], "str | None"]

PROXY_HEADERS = ("x-forwarded-for", "forwarded")
#: The variable every middleware that resolves client IPs reads for its ``proxy_header``.
PROXY_HEADER_ENV = EnvVar(
    "ASGI_PERF_PROXY_HEADER", "proxy_header", lambda v, n: to_choice(v, n, PROXY_HEADERS)
)
MAX_HOPS = 64  # more trusted hops than this in a row is not a real proxy chain
MAX_KEY_LENGTH = 256


def parse_networks(
    value: Iterable[str] | str, name: str = "trusted_proxies"
) -> tuple[IPNetwork, ...]:
    """IPs and CIDRs (``10.0.0.0/8``, ``::1``) into networks; ``ConfigError`` on a bad one."""
    items = value.split(",") if isinstance(value, str) else list(value)
    networks: list[IPNetwork] = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ConfigError(
                name, text, "IP addresses or CIDR networks, comma-separated"
            ) from None
    return tuple(networks)


#: The variable every middleware that resolves client IPs reads for ``trusted_proxies``;
#: checked here, so a bad address is reported under the variable's name.
TRUSTED_PROXIES_ENV = EnvVar(
    "ASGI_PERF_TRUSTED_PROXIES",
    "trusted_proxies",
    lambda v, n: tuple(str(net) for net in parse_networks(v, n)),
)


def _parse_ip(text: str) -> IPAddress | None:
    text = text.strip().strip('"')
    if not text or len(text) > 64:
        return None
    if text.startswith("["):  # RFC 7239 "[2001:db8::1]:4711"
        end = text.find("]")
        if end == -1:
            return None
        text = text[1:end]
    elif text.count(":") == 1:  # "192.0.2.1:8080"
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _forwarded_for(element: bytes) -> bytes:
    """The ``for=`` value of one RFC 7239 ``Forwarded`` element (``b""`` if it has none)."""
    for pair in element.split(b";"):
        key, sep, value = pair.partition(b"=")
        if sep and key.strip().lower() == b"for":
            return value.strip().strip(b'"')
    return b""


def parse_forwarded(value: str) -> list[str]:
    """The ``for=`` values of an RFC 7239 ``Forwarded`` field, in order."""
    hops = (_forwarded_for(e) for e in value.encode("latin-1", "replace").split(b","))
    return [hop.decode("latin-1") for hop in hops if hop]


def _hops_from_right(values: list[bytes], forwarded: bool) -> Iterator[bytes]:
    """The hops of forwarding field lines, rightmost first, at most ``MAX_HOPS`` of them.

    Each element is found with ``rfind`` from the end of the last line, so the work is the
    hops read, never the length of what a client wrote to their left. Empty elements are
    skipped but counted (``",,,,"`` costs no more than ``MAX_HOPS`` steps).
    """
    read = 0
    for value in reversed(values):
        end = len(value)
        while end >= 0:
            if read == MAX_HOPS:
                return
            read += 1
            start = value.rfind(b",", 0, end)
            element = value[start + 1 : end]
            end = start
            hop = _forwarded_for(element) if forwarded else element.strip()
            if hop:
                yield hop


class ClientIP:
    """Resolve and group client addresses: ``ClientIP(trusted_proxies)(scope) -> str``."""

    def __init__(
        self,
        trusted_proxies: Iterable[str] | str = (),
        ipv6_prefix: int = 64,
        proxy_header: str = "x-forwarded-for",
    ) -> None:
        self.trusted = parse_networks(trusted_proxies)
        header = proxy_header.strip().lower() if isinstance(proxy_header, str) else proxy_header
        if header not in PROXY_HEADERS:
            raise ConfigError("proxy_header", proxy_header, "x-forwarded-for or forwarded")
        # Only the header the trusted proxy writes is read: a proxy that appends to
        # X-Forwarded-For passes a client's own Forwarded through untouched, so reading both
        # would let the client choose its address.
        self.proxy_header = header.encode("latin-1")
        if not 1 <= ipv6_prefix <= 128:
            raise ConfigError("ipv6_prefix", ipv6_prefix, "a whole number from 1 to 128")
        self.ipv6_prefix = ipv6_prefix
        self._group = lru_cache(maxsize=4096)(self._group_uncached)

    def _is_trusted(self, ip: IPAddress) -> bool:
        return any(ip.version == net.version and ip in net for net in self.trusted)

    def _group_uncached(self, text: str) -> str:
        ip = _parse_ip(text)
        if ip is None:
            return text[:MAX_KEY_LENGTH] or "unknown"
        if ip.version == 6:
            mapped = ip.ipv4_mapped  # type: ignore[union-attr]
            if mapped is not None:
                return str(mapped)
            net = ipaddress.IPv6Network((int(ip), self.ipv6_prefix), strict=False)
            return f"{net.network_address}/{self.ipv6_prefix}"
        return str(ip)

    def peer(self, scope: Scope) -> str:
        client = scope.get("client")
        if client:
            return str(client[0])
        return "unknown"

    def resolve(self, scope: Scope) -> str:
        """The address to count the client by, before grouping."""
        peer = self.peer(scope)
        if not self.trusted:
            return peer
        peer_ip = _parse_ip(peer)
        if peer_ip is None or not self._is_trusted(peer_ip):
            return peer
        values = get_header_values(scope.get("headers") or (), self.proxy_header)
        for hop in _hops_from_right(values, self.proxy_header == b"forwarded"):
            ip = _parse_ip(hop.decode("latin-1"))
            if ip is None:
                return peer  # a garbled hop: the chain cannot be trusted past it
            if not self._is_trusted(ip):
                return str(ip)  # the rightmost untrusted hop: what our proxy saw
        return peer

    def __call__(self, scope: Scope) -> str:
        return self._group(self.resolve(scope))


def hash_secret(value: str | bytes) -> str:
    """A key that identifies a secret (an API key, a token) without storing it."""
    data = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _clean(key: object) -> str | None:
    if key is None:
        return None
    text = str(key)
    if not text or len(text) > MAX_KEY_LENGTH or not text.isprintable():
        return "h:" + hash_secret(text)  # never a raw control character in a store key
    return text


def clean_key(key: object) -> str | None:
    """A user key fit for a store key: as it is if short and printable, else hashed."""
    return _clean(key)


def default_user_key(scope: Scope) -> str | None:
    """An authenticated ``scope["user"]``, else ``scope["state"]["user_id"]``, else ``None``.

    ``None`` for a scope with neither ``user`` nor a non-empty ``state``: the layers that key
    every request by client (dedup's request parts, the rate limit's gate) test that inline
    and skip the call; a change here must keep it true."""
    # ``in`` and ``type()`` rather than ``get``/``isinstance``: this runs on every request of
    # every layer that keys by client, and most requests carry no user at all.
    if "user" in scope:
        user: Any = scope["user"]
        if user is not None and getattr(user, "is_authenticated", False):
            identity = getattr(user, "identity", None) or getattr(user, "display_name", None)
            if identity:
                return _clean(identity)
    if "state" in scope:
        state = scope["state"]
        if (type(state) is dict or isinstance(state, dict)) and "user_id" in state:
            user_id = state["user_id"]
            if user_id is not None:
                return _clean(user_id)
    return None


def header_user_key(header: str) -> UserKey:
    """A user key from a request header (an API key, a bearer token), hashed before use."""
    name = header.lower().encode("latin-1")

    def key(scope: Scope) -> str | None:
        for k, v in scope.get("headers") or ():
            if k.lower() == name and v:
                return "h:" + hash_secret(v)
        return None

    return key
