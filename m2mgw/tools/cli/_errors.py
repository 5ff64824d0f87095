"""The one exception of the ``m2mgw`` command line: an exit status and a reason."""

from __future__ import annotations


class CliError(Exception):
    """Ends the command: ``code`` is the exit status, the message goes to stderr."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
