"""The stack's first store calls in one round trip (see :mod:`asgi_perf.stores._prefetch`).

:func:`asgi_perf.from_env` puts :class:`Prefetcher` just outside the layers that keep state
(rate limiting, dedup, cache) when two or more of them use a store that can take several
calls at once (Redis). For a ``GET``/``HEAD`` it asks each for the call it is about to make
(the rate-limit check, dedup's claim, the cache's lookup and claim), sends them in one
pipeline, and runs the layers, which find their replies instead of asking the store. Each
layer used alone, or in any other stack, makes its own calls as before.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any, Protocol, TypeVar

from asgi_perf._core.asgi import ASGIApp, Message, Receive, Scope, Send
from asgi_perf._core.outage import Outage
from asgi_perf.stores import StoreUnavailable
from asgi_perf.stores._prefetch import PREFETCH, Prefetch, PrefetchOp

__all__ = ["Prefetcher", "prefetching"]

logger = logging.getLogger("asgi_perf.stores")
T = TypeVar("T")


class Prefetching(Protocol):
    """A layer whose first store call can be sent ahead."""

    prefetchable: bool

    def prefetch_ops(self, scope: Scope) -> list[PrefetchOp]: ...


def prefetching(app: ASGIApp, layers: Sequence[Any]) -> ASGIApp:
    """``app`` behind a :class:`Prefetcher` of ``layers`` when two or more can prefetch."""
    able = [layer for layer in layers if getattr(layer, "prefetchable", False)]
    return Prefetcher(app, able) if len(able) >= 2 else app


class Prefetcher:
    """Sends the first store call of each of ``layers`` for a request in one round trip."""

    def __init__(self, app: ASGIApp, layers: Sequence[Prefetching]) -> None:
        self.app = app
        self.layers = tuple(layers)
        self.outage = Outage(logger, "store (the stack's held-back writes)")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)  # a body comes first: nothing known yet
            return
        prefetch = Prefetch(os.urandom(16).hex())
        reset = PREFETCH.set(prefetch)  # the layers' claims hold this request's token
        try:
            ops = [op for layer in self.layers for op in layer.prefetch_ops(scope)]
        except BaseException:
            PREFETCH.reset(reset)
            raise
        if len(ops) < 2:  # nothing to save: each layer asks by itself
            PREFETCH.reset(reset)
            await self.app(scope, receive, send)
            return
        prefetch.deferred = []  # the layers' last writes, sent together (see flushing)

        async def flushing(message: Message) -> None:
            if prefetch.deferred:  # before the client sees what they were written for
                await self._write(prefetch.deferred)
                prefetch.deferred = []
            await send(message)

        try:
            for store, group in _by_client((op.store, op) for op in ops):
                await store.prefetch(group, prefetch)
            await self.app(scope, receive, flushing)
        finally:
            PREFETCH.reset(reset)
            held, prefetch.deferred = prefetch.deferred or [], None  # (tasks write at once)
            # The claims a prefetched reply won that no layer took (a refused request never
            # reaches the cache): their waiters would otherwise wait for the lease to expire.
            for store, (key, token) in prefetch.unclaimed():
                held.append((store, partial(store.release_queued, key, token)))
            if held:
                await self._write(held)

    async def _write(self, held: list[tuple[Any, Callable[[Any], None]]]) -> None:
        """One round trip per client for the writes ``held`` back; a failure is counted and
        logged once by this stack's outage record (the claims expire with their leases)."""
        for store, queues in _by_client(held):
            try:
                await store.write_deferred(queues)
            except StoreUnavailable as exc:
                self.outage.failed(exc)
            else:
                if self.outage.down:
                    self.outage.ok()


def _by_client(items: Iterable[tuple[Any, T]]) -> list[tuple[Any, list[T]]]:
    """``(store, item)`` pairs grouped by the stores' Redis client, each group with one of its
    stores: what one pipeline, one round trip, can carry."""
    groups: dict[int, tuple[Any, list[T]]] = {}
    for store, item in items:
        groups.setdefault(id(store.client), (store, []))[1].append(item)
    return list(groups.values())
