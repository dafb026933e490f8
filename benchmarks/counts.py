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
from types import FrameType
from typing import Any

from .driver import ASGIApp, Request, receiver

__all__ = ["COUNTED", "calls_per_request"]

COUNTED = 512  # requests counted (two histogram batches)
WARMUP = 64  # requests first, uncounted: memoised routes, header kinds, lazy imports


async def calls_per_request(
    app: ASGIApp, request: Request, start: int = 0, count: int = COUNTED, warmup: int = WARMUP
) -> float:
    """Python ``call`` + ``c_call`` events per request over ``count`` requests, after a
    warm-up; scopes and receivers are made before counting, so only the app is counted."""
    make = request.scope_factory()

    async def send(message: Any) -> None:
        return None

    for n in range(start, start + warmup):
        await app(make(n), receiver(request.body), send)
    start += warmup
    scopes = [make(n) for n in range(start, start + count)]
    receivers = [receiver(request.body) for _ in range(count)]
    events = 0

    def profile(frame: FrameType, event: str, arg: object) -> None:
        nonlocal events
        if event == "call" or event == "c_call":
            events += 1

    enabled = gc.isenabled()
    gc.disable()  # a collection would run finalizers and weakref callbacks at random points
    sys.setprofile(profile)
    try:
        for scope, receive in zip(scopes, receivers, strict=True):
            await app(scope, receive, send)
    finally:
        sys.setprofile(None)
        if enabled:
            gc.enable()
    return events / count
