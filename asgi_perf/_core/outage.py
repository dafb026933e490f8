"""Log a failing dependency once per outage, count every failure, notice recovery, and
decide when to stop calling it (a circuit breaker).

A store that is down fails every request; logging each one would bury the log and cost as
much as the request. One warning when the outage starts, one info line when it ends, and a
counter for the rest.

The breaker: one slow or failed call is one request's problem, never a reason to stop calling a
healthy store (a single timeout under load must not switch rate limiting off for everybody). The
circuit opens only after ``threshold`` failures in a row; while open, :meth:`Outage.allow` lets
one call in every ``probe_every`` through as a probe (and at least one per ``probe_interval``
seconds when traffic is light), so a store that came back is used again within a few requests,
not after a fixed pause. A success closes the circuit.
"""

from __future__ import annotations

import logging
import time

__all__ = ["Outage"]

THRESHOLD = 5  # failures in a row that open the circuit
PROBE_EVERY = 20  # while open, one call in this many goes to the store
PROBE_INTERVAL = 0.05  # … and at least one every this many seconds


class Outage:
    """Track one dependency (``"redis store"``, ``"zstd codec"``) of one middleware."""

    __slots__ = (
        "_opened",
        "_probe_at",
        "_skipped",
        "down",
        "failures",
        "incidents",
        "logger",
        "probe_every",
        "probe_interval",
        "streak",
        "threshold",
        "what",
    )

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        threshold: int = THRESHOLD,
        probe_every: int = PROBE_EVERY,
        probe_interval: float = PROBE_INTERVAL,
    ) -> None:
        self.logger = logger
        self.what = what
        self.threshold = threshold
        self.probe_every = probe_every
        self.probe_interval = probe_interval
        self.down = False  # an incident is open (logged, not yet recovered)
        self.failures = 0  # every failed or skipped call
        self.incidents = 0
        self.streak = 0  # failures in a row
        self._opened = False  # the circuit: calls are skipped but for probes
        self._skipped = 0
        self._probe_at = 0.0

    def allow(self) -> bool:
        """Call the dependency now? ``False`` while the circuit is open, but for probes; a
        skipped call counts as a failure (the caller degrades as for one)."""
        if not self._opened:
            return True
        self._skipped += 1
        now = time.monotonic()
        if self._skipped >= self.probe_every or now >= self._probe_at:
            self._skipped = 0
            self._probe_at = now + self.probe_interval
            return True
        self.failures += 1
        return False

    def failed(self, exc: BaseException) -> None:
        self.failures += 1
        self.streak += 1
        if not self.down:
            self.down = True
            self.incidents += 1
            self.logger.warning(
                "%s unavailable (%s: %s); degrading until it recovers",
                self.what,
                type(exc).__name__,
                exc,
            )
        if self.streak >= self.threshold and not self._opened:
            self._opened = True
            self._skipped = 0
            self._probe_at = time.monotonic() + self.probe_interval

    def ok(self) -> None:
        """A call succeeded: close the circuit (cheap when nothing was wrong)."""
        if self.down:
            self.down = False
            self.streak = 0
            self._opened = False
            self.logger.info("%s recovered after %d failed calls", self.what, self.failures)

    def stats(self) -> dict[str, int | bool]:
        return {
            "down": self.down,
            "open": self._opened,
            "failures": self.failures,
            "incidents": self.incidents,
        }
