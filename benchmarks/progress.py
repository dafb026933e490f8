"""A progress bar on stderr, no dependency: redrawn in place on a terminal, one line per step
otherwise (logs, CI)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    def __init__(self, total: int, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self.started = time.monotonic()
        self._label = ""

    def add(self, steps: int) -> None:
        """More work discovered (a scenario's request count is known only once it is calibrated)."""
        self.total += steps

    def step(self, label: str, steps: int = 1) -> None:
        self.done = min(self.done + steps, self.total)
        if label != self._label or self.tty:
            self._label = label
            self._draw(label)

    def _draw(self, label: str) -> None:
        if not self.enabled:
            return
        width = 30
        filled = int(width * self.done / self.total)
        elapsed = time.monotonic() - self.started
        line = (
            f"[{'#' * filled}{'.' * (width - filled)}] {100 * self.done // self.total:3d}% "
            f"{elapsed:5.0f}s  {label}"
        )
        if self.tty:
            self.stream.write("\r\x1b[2K" + line[:120])
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
