"""Log a failing dependency once per outage, count every failure, notice recovery.

A store that is down fails every request; logging each one would bury the log and cost as
much as the request. One warning when the outage starts, one info line when it ends, and a
counter for the rest.
"""

from __future__ import annotations

import logging

__all__ = ["Outage"]


class Outage:
    """Track one dependency (``"redis store"``, ``"zstd codec"``) of one middleware."""

    __slots__ = ("down", "failures", "incidents", "logger", "what")

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self.logger = logger
        self.what = what
        self.down = False
        self.failures = 0
        self.incidents = 0

    def failed(self, exc: BaseException) -> None:
        self.failures += 1
        if not self.down:
            self.down = True
            self.incidents += 1
            self.logger.warning(
                "%s unavailable (%s: %s); degrading until it recovers",
                self.what,
                type(exc).__name__,
                exc,
            )

    def ok(self) -> None:
        if self.down:
            self.down = False
            self.logger.info("%s recovered after %d failed calls", self.what, self.failures)

    def stats(self) -> dict[str, int | bool]:
        return {"down": self.down, "failures": self.failures, "incidents": self.incidents}
