"""User-facing errors: one line naming the file, the problem and the fix."""
from __future__ import annotations


class DfkdError(Exception):
    """An error caused by the user's input (bad file, bad option), not by a bug.

    The CLI prints ``str(err)`` on one line and exits with ``exit_code``; no traceback.
    """

    exit_code = 1

    def __init__(self, message: str, *, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(DfkdError):
    """Bad invocation or an input path that cannot be used at all (exit 2)."""

    exit_code = 2
