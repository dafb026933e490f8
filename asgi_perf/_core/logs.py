"""Where asgi_perf's log records go when the application set up nothing that receives them.

Python hands a record that reaches no handler to its "last resort": the bare message on stderr,
without level, logger name or time. That is what every asgi_perf warning looked like under
uvicorn, whose logging config sets up its own loggers and leaves the root logger alone.

:func:`install_fallback` puts one handler on the ``asgi_perf`` logger that writes such records
as ``2026-11-30 09:55:46,874 WARNING asgi_perf.queries: …`` on stderr, and steps aside for any
record another handler receives (the root logger's, an ``asgi_perf`` handler of the app's, a
test runner's), so it never duplicates or overrides the application's logging.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["FORMAT", "LOGGER_NAMES", "install_fallback"]

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: The loggers asgi_perf writes to (all under ``asgi_perf``), for the documentation.
LOGGER_NAMES = (
    "asgi_perf.cache",
    "asgi_perf.compression",
    "asgi_perf.config",
    "asgi_perf.dedup",
    "asgi_perf.queries",
    "asgi_perf.ratelimit",
    "asgi_perf.timing",
)


class _Fallback(logging.Handler):
    """The last resort, with level, logger and time; only for records no one else receives."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.setFormatter(logging.Formatter(FORMAT))

    def handle(self, record: logging.LogRecord) -> bool:
        if self._others_receive(record):
            return False
        return super().handle(record)

    def _others_receive(self, record: logging.LogRecord) -> bool:
        node: logging.Logger | None = logging.getLogger(record.name)
        while node is not None:
            for handler in node.handlers:
                if handler is not self and record.levelno >= handler.level:
                    return True
            if not node.propagate:
                return False
            node = node.parent
        return False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")  # the stream of the moment, as Python's
        except Exception:
            self.handleError(record)


_FALLBACK = _Fallback()


def install_fallback() -> None:
    """Add the fallback handler to the ``asgi_perf`` logger (once)."""
    root = logging.getLogger("asgi_perf")
    if _FALLBACK not in root.handlers:
        root.addHandler(_FALLBACK)
