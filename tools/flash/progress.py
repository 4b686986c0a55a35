"""A one-line progress bar per file on stderr (redrawn in place on a terminal)."""

from __future__ import annotations

import sys
from typing import TextIO

_WIDTH = 24


class Bar:
    """``name  [#####-----]  512/2048 B``; on a non-terminal only the final line.

    Args:
        name: what is being copied (the board path).
        total: its size in bytes.
        out: where to draw (stderr).
    """

    def __init__(self, name: str, total: int, out: TextIO | None = None) -> None:
        self.name = name
        self.size = total
        self.out = out or sys.stderr
        self.tty = self.out.isatty()

    def _line(self, done: int) -> str:
        fill = done * _WIDTH // self.size if self.size else _WIDTH  # empty: done at once
        return f"  {self.name:<28} [{'#' * fill}{'-' * (_WIDTH - fill)}] {done}/{self.size} B"

    def update(self, done: int, _total: int = 0) -> None:
        """Bytes written so far (mpremote's progress callback: written, size)."""
        if self.tty:
            self.out.write("\r" + self._line(done))
            self.out.flush()

    def finish(self) -> None:
        self.out.write(("\r" if self.tty else "") + self._line(self.size) + "\n")
        self.out.flush()
