"""pfjax's exceptions and warnings."""
from __future__ import annotations


class PfjaxError(Exception):
    """Base class of pfjax errors."""


class CompileError(PfjaxError):
    """The system compiler failed; carries the command and its output."""

    def __init__(self, command: list[str], output: str, source_path: str | None = None):
        self.command = command
        self.output = output
        self.source_path = source_path
        super().__init__(f"kernel compilation failed: {' '.join(command)}\n{output[-4000:]}")


class PfjaxWarning(UserWarning):
    """pfjax fell back to XLA for some work (it still runs, unfused)."""
