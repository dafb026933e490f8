"""Log a failing dependency once per incident, count every failure, notice recovery, and
decide when to stop calling it (a circuit breaker).

A store that is down fails every request; logging each one would bury the log and cost as
much as the request. One warning when an incident starts (the first failure after a success),
one info line when it ends, and counters for the rest.

The breaker: one slow or failed call is one request's problem, never a reason to stop calling a
healthy store (a single timeout under load must not switch rate limiting off for everybody). The
circuit opens only after ``threshold`` failures in a row, timeouts and errors alike: the run, not
the kind, tells a store that is gone from one that stumbled. While it is open :meth:`allow` skips
calls (the caller degrades at once instead of waiting on a dead host) but lets one call through
as a probe every ``probe_every`` calls, or after ``probe_interval`` seconds when traffic is
light, so a store that came back is used again within a few requests or milliseconds. Only one
probe is in flight at a time (a probe that neither succeeded nor failed within
``probe_timeout`` — its task was cancelled — frees the slot): against a black hole each probe
waits its full timeout, and a share of a busy server's requests doing so at once would pile up
on the connection pool. A success closes the circuit.

There is no ratio trip: failures scattered among successes either form runs soon enough (at
60% failures, a run of five comes within a few dozen calls) or are rare, and then checking the
store for the other requests is worth the occasional timeout. All methods are synchronous, so
on one event loop they are atomic; with several loops in threads the counters are approximate
and at most a few extra probes go through.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["Outage"]

THRESHOLD = 5  # failures in a row that open the circuit
PROBE_EVERY = 20  # while open, one call in this many goes to the store …
PROBE_INTERVAL = 0.05  # … and at least one every this many seconds
PROBE_TIMEOUT = 5.0  # a probe that never reported back frees the slot after this long


class Outage:
    """Track one dependency (``"redis store"``, ``"zstd codec"``) of one middleware.

    Callers ask :meth:`allow` before a call (only the store-backed layers do; a codec is
    always tried) and report :meth:`failed` or :meth:`ok` after it.
    """

    __slots__ = (
        "_failures_before",
        "_opened",
        "_probe_at",
        "_probe_until",
        "_since_probe",
        "clock",
        "down",
        "failures",
        "incidents",
        "logger",
        "probe_every",
        "probe_interval",
        "probe_timeout",
        "probes",
        "skipped",
        "streak",
        "threshold",
        "trips",
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
        probe_timeout: float = PROBE_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.what = what
        self.threshold = threshold
        self.probe_every = probe_every
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self.clock = clock
        self.down = False  # an incident is open (logged, not yet recovered)
        self.failures = 0  # calls that failed or were skipped: each request that degraded
        self.skipped = 0  # calls the open circuit did not make
        self.incidents = 0
        self.trips = 0  # times the circuit opened
        self.probes = 0  # calls let through while open
        self.streak = 0  # failures in a row
        self._failures_before = 0  # ``failures`` when the current incident began
        self._opened = False  # the circuit: calls are skipped but for probes
        self._since_probe = 0  # calls asked for since the last probe
        self._probe_at = 0.0  # a probe is due at this time even if few calls came
        self._probe_until = 0.0  # a probe is in flight until it reports (or this time)

    @property
    def open(self) -> bool:
        return self._opened

    def allow(self) -> bool:
        """Call the dependency now? ``False`` while the circuit is open, but for probes; a
        skipped call counts as a failure (the caller degrades as for one)."""
        if not self._opened:
            return True
        now = self.clock()
        self._since_probe += 1
        due = self._since_probe >= self.probe_every or now >= self._probe_at
        if due and now >= self._probe_until:
            self._since_probe = 0
            self._probe_at = now + self.probe_interval
            self._probe_until = now + self.probe_timeout
            self.probes += 1
            return True
        self.skipped += 1
        self.failures += 1
        return False

    def failed(self, exc: BaseException) -> None:
        self.failures += 1
        self.streak += 1
        self._probe_until = 0.0
        if not self.down:
            self.down = True
            self.incidents += 1
            self._failures_before = self.failures - 1
            self.logger.warning(
                "%s unavailable (%s: %s); degrading until it recovers",
                self.what,
                type(exc).__name__,
                exc,
            )
        if self.streak >= self.threshold and not self._opened:
            self._opened = True
            self.trips += 1
            self._since_probe = 0
            self._probe_at = self.clock() + self.probe_interval

    def ok(self) -> None:
        """A call succeeded: close the circuit. Callers skip this call while ``down`` is
        false (nothing to do then)."""
        if self.down:
            self.down = False
            self.streak = 0
            self._opened = False
            self._probe_until = 0.0
            failed = self.failures - self._failures_before
            self.logger.info("%s recovered after %d failed calls", self.what, failed)

    def stats(self) -> dict[str, int | bool]:
        return {
            "down": self.down,
            "open": self._opened,
            "failures": self.failures,
            "skipped": self.skipped,
            "incidents": self.incidents,
            "trips": self.trips,
            "probes": self.probes,
        }
