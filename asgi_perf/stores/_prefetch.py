"""Several layers' first store operation for one request, sent in one round trip.

On Redis each round trip costs the worker more than a whole in-process layer, and the full
stack's first operations (the rate-limit check, dedup's claim, the cache's lookup and claim)
depend on the request alone. :class:`~asgi_perf._prefetch.Prefetcher` asks each layer for
them before the first layer runs, sends them in one pipeline and leaves the replies here, in
a context variable of the request; when a layer makes the same call (same script, keys and
arguments) the store answers it from here instead of asking Redis again.

A claim needs its holder's token: a layer asks :func:`request_token` for it, which is the
same for every layer of a prefetched request (each claims another key) and random otherwise.
A reply no layer took (a refused request never reaches the cache) is undone by the
prefetcher: a claim won for nothing is released.

The layers' last writes of such a request (dedup's record and the cache's entry, each with
the release of its claim) are held in :attr:`Prefetch.deferred` while the response moves out
through the layers, and sent in one pipeline before it reaches the client: waiters are
woken, and the next request finds the records, as if each layer had written on its own.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, NamedTuple

__all__ = [
    "LOCAL_TOKENS",
    "MISSING",
    "PREFETCH",
    "Prefetch",
    "PrefetchOp",
    "deferred_writes",
    "request_token",
    "take",
]

#: Claim tokens for an in-process store, ``next(LOCAL_TOKENS)``: unique in this process, which
#: is all such a claim needs (one call, where a random token costs two).
LOCAL_TOKENS = map(str, itertools.count())
#: What :func:`take` returns when the call was not prefetched.
MISSING: Any = object()


class PrefetchOp(NamedTuple):
    """One store call to send ahead: a Lua script, its keys and arguments."""

    key: tuple[Any, ...]  # what the layer's own call looks it up by
    store: Any  # the RedisStore whose client runs it
    source: str  # the script
    keys: list[str]
    args: list[Any]
    decode: Callable[[Any], Any]  # the raw reply -> what the store method returns
    undo: Callable[[Any], tuple[str, str] | None] | None = None  # the claim to release


class Prefetch:
    """The prefetched replies of one request (by :attr:`PrefetchOp.key`) and its token."""

    __slots__ = ("deferred", "ops", "results", "token")

    def __init__(self, token: str) -> None:
        self.token = token
        self.results: dict[tuple[Any, ...], Any] = {}
        self.ops: dict[tuple[Any, ...], PrefetchOp] = {}
        # (store, a function queueing the write on a pipeline of its client), while the
        # prefetcher holds writes back (``None``: it does not, the store writes at once)
        self.deferred: list[tuple[Any, Callable[[Any], None]]] | None = None

    def unclaimed(self) -> list[tuple[Any, tuple[str, str]]]:
        """(store, (claim key, token)) of every claim a reply won that no layer took."""
        out = []
        for key, result in self.results.items():
            op = self.ops.get(key)  # none for a failure
            if op is not None and op.undo is not None:
                claim = op.undo(result)
                if claim is not None:
                    out.append((op.store, claim))
        return out


PREFETCH: ContextVar[Prefetch | None] = ContextVar("asgi_perf_prefetch", default=None)


def request_token() -> str:
    """The token a claim of this request holds: the prefetched request's, else a new one."""
    prefetch = PREFETCH.get()
    return prefetch.token if prefetch is not None else os.urandom(16).hex()


def take(key: tuple[Any, ...]) -> Any:
    """The prefetched reply of the call ``key`` (once), or :data:`MISSING`; a prefetch that
    failed raises its :class:`StoreUnavailable` here, as the call itself would have."""
    prefetch = PREFETCH.get()
    if prefetch is None:
        return MISSING
    result = prefetch.results.pop(key, MISSING)
    if isinstance(result, BaseException):  # the StoreUnavailable of the whole round trip
        raise result
    return result


def deferred_writes() -> list[tuple[Any, Callable[[Any], None]]] | None:
    """Where a store puts a write of this request to be sent with the others, or ``None``:
    write now."""
    prefetch = PREFETCH.get()
    return None if prefetch is None else prefetch.deferred
