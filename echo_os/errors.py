"""Errors meant for users.

Anything raised as an EchoError is turned into one line at the CLI boundary (exit 2 for UsageError,
exit 1 otherwise) and into a 4xx/5xx with the same text in the API. Everything else is a bug and
gets a log entry.
"""

from __future__ import annotations


class EchoError(Exception):
    """A failure the user can act on. The message is one line naming what was wrong and what to do."""

    exit_code = 1


class UsageError(EchoError):
    """Bad input: an option, a file, an id. Nothing was written."""

    exit_code = 2


class OptionError(UsageError):
    """A bad option value; `option` names it as the CLI and the API call it (e.g. "size", "steps")."""

    def __init__(self, message: str, option: str):
        super().__init__(message)
        self.option = option


class ModelError(EchoError):
    """Weights missing, corrupt, or in a refused format."""

    exit_code = 2


class NotFoundError(EchoError):
    """An id or name that does not exist in this workspace."""

    exit_code = 2


class CancelledError(EchoError):
    """A render was cancelled through its cancel flag."""

    exit_code = 1
