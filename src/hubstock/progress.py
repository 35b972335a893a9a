"""Telling the admin what is happening: step lines on a terminal, quiet in CI."""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO


def interactive(stream: TextIO | None = None) -> bool:
    """True on a terminal outside CI: that is where progress is shown."""
    stream = stream or sys.stderr
    return stream.isatty() and not os.environ.get("CI")


class Progress:
    """Step lines with elapsed time; shown when interactive or verbose, else silent."""

    def __init__(self, enabled: bool | None = None, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = interactive(self.stream) if enabled is None else enabled
        self._t0 = time.monotonic()

    @property
    def bars(self) -> bool:
        """Whether tools may draw their own progress bars (only on a terminal)."""
        return self.enabled and interactive(self.stream)

    def step(self, message: str) -> None:
        if self.enabled:
            elapsed = time.monotonic() - self._t0
            print(f"hubstock [{elapsed:6.1f}s] {message}", file=self.stream, flush=True)

    def warn(self, message: str) -> None:
        """A line the user must see even when progress is off (something was left out)."""
        print(f"hubstock: {message}", file=self.stream, flush=True)
