"""Deterministic costs: Python calls per request (and, with ``driver.count_redis_round_trips``,
store round trips per request).

A call count does not depend on how busy the machine is: for one Python version the same code
makes the same calls. ``sys.setprofile`` sees every Python function call (``call``) and every
call into C (``c_call``); their sum over a run of requests, divided by the requests, is the
figure, and a variant's cost is its figure minus the bare app's. Averaging over ``COUNTED``
requests spreads work that happens once in a while (a histogram folded every 256 values) the
way it falls in real traffic.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from types import FrameType
from typing import Any

from .driver import ASGIApp, Request, receiver

__all__ = ["COUNTED", "WARMUP", "calls_per_request", "observed", "profiled"]

COUNTED = 512  # requests counted (two histogram batches)
WARMUP = 64  # requests first, uncounted: memoised routes, header kinds, lazy imports


class profiled:
    """``sys.setprofile(hook)`` for the length of a ``with`` block."""

    def __init__(self, hook: Callable[[FrameType, str, object], None]) -> None:
        self.hook = hook

    def __enter__(self) -> None:
        sys.setprofile(self.hook)

    def __exit__(self, *exc: object) -> None:
        sys.setprofile(None)


async def observed(
    app: ASGIApp,
    request: Request,
    during: AbstractContextManager[Any],
    start: int = 0,
    count: int = COUNTED,
    warmup: int = WARMUP,
) -> None:
    """``count`` requests inside ``during`` (what observes them), after ``warmup`` requests
    outside it; scopes and receivers are made before ``during`` starts, and the garbage
    collector is off inside it (a collection would run finalizers and weakref callbacks at
    random points), so only the app's own work for the requests is observed."""
    make = request.scope_factory()

    async def send(message: Any) -> None:
        return None

    for n in range(start, start + warmup):
        await app(make(n), receiver(request.body), send)
    start += warmup
    scopes = [make(n) for n in range(start, start + count)]
    receivers = [receiver(request.body) for _ in range(count)]
    enabled = gc.isenabled()
    gc.disable()
    try:
        with during:
            for scope, receive in zip(scopes, receivers, strict=True):
                await app(scope, receive, send)
    finally:
        if enabled:
            gc.enable()


async def calls_per_request(
    app: ASGIApp, request: Request, start: int = 0, count: int = COUNTED, warmup: int = WARMUP
) -> float:
    """Python ``call`` + ``c_call`` events per request over ``count`` requests, after a
    warm-up (:func:`observed`)."""
    events = 0

    def profile(frame: FrameType, event: str, arg: object) -> None:
        nonlocal events
        if event == "call" or event == "c_call":
            events += 1

    await observed(app, request, profiled(profile), start, count, warmup)
    return events / count
