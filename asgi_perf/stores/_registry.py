"""Store URL schemes, each registered by the store that owns it (as ``limits``' storages do).

Neither the core nor a middleware knows a scheme: ``create_store`` looks the URL's up here,
and a bad one is reported with the schemes registered. A store module registers its schemes
when it is imported (``asgi_perf.stores`` imports the bundled ones); a third-party store
registers its own the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from asgi_perf._core.config import ConfigError, to_int, to_size
from asgi_perf.stores._base import Store

__all__ = ["StoreFactory", "StoreOptions", "factory_for", "in_process", "register_scheme"]


@dataclass(frozen=True, slots=True)
class StoreOptions:
    """What a middleware asks of its store; a factory takes what applies to it.

    ``prefix`` namespaces a shared store's keys; ``max_entries``/``max_bytes`` bound an
    in-process one (``?max_entries=100&max_bytes=1MiB`` in the URL win); ``timeout`` bounds a
    remote call; ``name`` is the option or variable a ``ConfigError`` names.
    """

    prefix: str = "asgi_perf:"
    max_entries: int = 10_000
    max_bytes: int = 64 * 1024 * 1024
    timeout: float = 0.25
    name: str = "storage"
    keep: bool = False  # entries are promises: never evicted by an in-process store

    def with_url(self, url: str) -> StoreOptions:
        """These options with the bounds the URL's query gives, checked."""
        query = parse_qs(urlsplit(url).query)
        max_entries, max_bytes = self.max_entries, self.max_bytes
        if "max_entries" in query:
            max_entries = to_int(query["max_entries"][0], self.name + " max_entries", minimum=1)
        if "max_bytes" in query:
            max_bytes = to_size(query["max_bytes"][0], self.name + " max_bytes")
        return StoreOptions(self.prefix, max_entries, max_bytes, self.timeout, self.name, self.keep)


StoreFactory = Callable[[str, StoreOptions], Store]


@dataclass(frozen=True, slots=True)
class _Scheme:
    factory: StoreFactory
    in_process: bool


_SCHEMES: dict[str, _Scheme] = {}


def register_scheme(factory: StoreFactory, *schemes: str, in_process: bool = False) -> None:
    """Make ``scheme://…`` URLs build stores with ``factory``. ``in_process``: the store lives
    in this process (what several workers do not share, and what may count in-process)."""
    for scheme in schemes:
        _SCHEMES[scheme.lower()] = _Scheme(factory, in_process)


def _scheme(url: str, name: str) -> _Scheme:
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    found = _SCHEMES.get(scheme)
    if found is None:
        accepted = "a URL starting with " + ", ".join(s + "://" for s in _SCHEMES)
        raise ConfigError(name, url, accepted)
    return found


def factory_for(url: str, name: str) -> StoreFactory:
    """The factory of ``url``'s scheme; ``ConfigError`` naming ``name`` if none registered it."""
    return _scheme(url, name).factory


def in_process(url: str, name: str) -> bool:
    """Is ``url``'s store one of this process (checked as :func:`factory_for` does)?"""
    return _scheme(url, name).in_process
