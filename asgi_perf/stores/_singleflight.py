"""Single flight over a store: one leader per key does the work, the others wait for its record.

Shared by the cache (stampede protection) and deduplication (in-flight coalescing), on the
memory store within one process and on Redis across processes and machines:

1. the leader wins ``claim`` (``SET NX PX``) with a random token and a lease that it renews
   while it works (:class:`Lease`), so a long handler is not taken over and a crashed
   leader's claim simply expires; ``join(check_first=True)`` reads an existing record and
   claims in one step (``get_or_claim``, one round trip);
2. it ends with ``fulfil`` (record stored, claim released, waiters notified, atomically),
   ``release`` (nothing to share: waiters go and do their own work), or hands its claim
   (``ending``) to a store call that writes its records and releases it in one round trip;
3. a waiter subscribes *before* reading the record, so no wake-up is lost, and re-reads on
   every wake-up and on a jittered, growing poll (the fallback where pub/sub is missing or
   dropped) until the record appears, the claim is gone, or its deadline passes.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

from asgi_perf.stores._base import Store, Stored

__all__ = ["Lease", "Outcome", "SingleFlight"]


class Lease:
    """The leader's claim; ``async with lease:`` renews it in the background while working.

    Renewal is every third of the lease; a failed renewal (a slow or restarting store) is
    retried after a twelfth, so only a run of failures loses the claim; and a leader whose
    loop stalled past its lease takes the claim back at once if nobody else took it, so the
    waiters do not start a second run of the work while the first still goes on.
    """

    # (slots: one is made on every miss and every leader's run)
    __slots__ = ("_ended", "_renewer", "_timer", "key", "store", "token", "ttl")

    def __init__(self, store: Store, key: str, token: str, ttl: float) -> None:
        self.store = store
        self.key = key
        self.token = token
        self.ttl = ttl
        self._timer: asyncio.TimerHandle | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._ended = False

    async def _renew(self) -> None:
        while not self._ended:
            pause = self.ttl / 3
            try:
                held = await self.store.renew(self.key, self.token, self.ttl)
                if not held and not self._ended:  # lapsed while this loop stalled
                    await self.store.claim(self.key, self.token, self.ttl)
            except Exception:  # retried soon; a lapse is safe (the claim just expires)
                pause = self.ttl / 12
            await asyncio.sleep(pause)

    def _start_renewing(self) -> None:
        self._timer = None
        self._renewer = asyncio.get_running_loop().create_task(self._renew())

    async def __aenter__(self) -> Lease:
        # A timer, not a task: most work ends before the first renewal is due, and a task
        # created and cancelled per lease costs more than the rest of a cache fill.
        self._timer = asyncio.get_running_loop().call_later(self.ttl / 3, self._start_renewing)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._ended = True  # the work is over: a straggling renewer must not claim again
        renewer = self._renewer
        if renewer is not None:
            self._renewer = None
            renewer.cancel()
            # Bounded: a store call that swallows the cancellation (redis-py's cluster client
            # can retry through it) must not hold the leader's response; the task ends on its
            # own at its next check of ``_ended`` or store timeout.
            await asyncio.wait({renewer}, timeout=self.ttl)

    async def fulfil(self, record_key: str, value: bytes, ttl: float) -> None:
        """Publish the record and free the claim in one atomic step."""
        self._ended = True
        await self.store.fulfil(self.key, self.token, record_key, value, ttl)

    def ending(self) -> tuple[str, str]:
        """The claim (key, token), for a store call that releases it with the leader's last
        writes (:meth:`Store.set_many`): the lease is over."""
        self._ended = True
        return self.key, self.token

    async def release(self) -> None:
        """Free the claim without a record: waiters then do their own work."""
        self._ended = True
        await self.store.release(self.key, self.token)


@dataclass(slots=True)
class Outcome:
    """``record``: the value is there; ``leader``: do the work and end the lease;
    ``released``: the leader gave up, do your own work; ``timeout``: waited long enough."""

    kind: Literal["record", "leader", "released", "timeout"]
    value: Stored | None = None
    lease: Lease | None = None


class SingleFlight:
    """``await flight.join(claim_key, record_key)`` → who does the work for this key.

    A caller that read and claimed by itself (a store's in-process fast path) and lost the
    claim calls :meth:`wait` instead."""

    def __init__(
        self,
        store: Store,
        *,
        lease_ttl: float = 10.0,
        wait_timeout: float = 10.0,
        poll_min: float = 0.005,
        poll_max: float = 0.25,
    ) -> None:
        self.store = store
        self.lease_ttl = lease_ttl
        self.wait_timeout = wait_timeout
        self.poll_min = poll_min
        self.poll_max = poll_max

    async def join(self, claim_key: str, record_key: str, check_first: bool = True) -> Outcome:
        """Lead, or wait for the leader. ``check_first``: a record already there is the
        outcome (read and claimed in one step: :meth:`Store.get_or_claim`)."""
        store = self.store
        token = os.urandom(16).hex()  # as unique as uuid4().hex, a third of the cost
        if check_first:
            value, won = await store.get_or_claim(record_key, claim_key, token, self.lease_ttl)
            if value is not None:
                return Outcome("record", value)
        else:
            won = await store.claim(claim_key, token, self.lease_ttl)
        if won:
            return Outcome("leader", lease=Lease(store, claim_key, token, self.lease_ttl))
        return await self.wait(claim_key, record_key)

    async def wait(self, claim_key: str, record_key: str) -> Outcome:
        """Wait for the holder of ``claim_key`` (a claim we just lost) to end its lease."""
        store = self.store
        deadline = time.monotonic() + self.wait_timeout
        delay = self.poll_min
        async with store.subscribe(claim_key) as subscription:
            while True:
                value = await store.get(record_key)
                if value is not None:
                    return Outcome("record", value)
                if await store.holder(claim_key) is None:
                    # The leader may have fulfilled between our two reads: look once more.
                    value = await store.get(record_key)
                    if value is not None:
                        return Outcome("record", value)
                    return Outcome("released")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return Outcome("timeout")
                await subscription.wait(min(remaining, delay * random.uniform(0.5, 1.5)))
                delay = min(delay * 2, self.poll_max)
