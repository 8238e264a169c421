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


class OutageError(EchoError):
    """The machinery that renders failed, not the request: a Ray actor died or stayed unreachable while
    restarting, a worker process died, a node was lost. A job interrupted by one goes back to the queue
    without spending an attempt (echo_os.api.worker); the CLI shows the one line."""

    exit_code = 1


class DiskFullError(EchoError):
    """The workspace's disk is full: what was being written was not kept (HTTP 507)."""

    exit_code = 1

    def __init__(self, message: str = ""):
        super().__init__(message or DISK_FULL_MESSAGE)


DISK_FULL_MESSAGE = "the disk is full: nothing was saved; free some space in the workspace and try again"
DISK_IO_MESSAGE = ("the disk is full or cannot be written (SQLite: disk I/O error): nothing was saved; free some "
                   "space in the workspace and try again")


def disk_full(error: BaseException) -> DiskFullError | None:
    """`error` as a DiskFullError when it says the disk is full (ENOSPC or EDQUOT from the OS, SQLITE_FULL
    from SQLite), else None."""
    import errno
    import sqlite3

    if isinstance(error, DiskFullError):
        return error
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError()
    if isinstance(error, sqlite3.Error) and (getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
                                             or "database or disk is full" in str(error)):
        return DiskFullError()
    # With a few KB free, SQLite fails to grow its WAL or shared-memory file and says "disk I/O error"
    # (SQLITE_IOERR_*) instead: one line that says what to do, not the bare SQLite words.
    if isinstance(error, sqlite3.Error) and ((getattr(error, "sqlite_errorcode", 0) or 0) & 0xFF == 10
                                             or "disk I/O error" in str(error)):
        return DiskFullError(DISK_IO_MESSAGE)
    return None


def is_out_of_memory(error: BaseException) -> bool:
    """True for CUDA out-of-memory (the scheduler's and the video engine's back-off look for it)."""
    import sys

    torch = sys.modules.get("torch")  # an engine that ran out of GPU memory has imported torch
    return torch is not None and isinstance(error, torch.cuda.OutOfMemoryError)


def connection_words(error: BaseException) -> str:
    """What happened to a connection, in words (not an exception's name), for one-line errors: the hosted
    engines' servers, `models pull`'s Hub. httpx's errors are told apart by class name, so the copy of
    httpx huggingface_hub carries (`httpx2`) is read the same way."""
    names = {cls.__name__ for cls in type(error).__mro__}
    text = str(error)
    if "RemoteProtocolError" in names and "complete message body" in text:
        return "the connection closed halfway through the answer" + (
            f" ({text[text.index('(received'):].strip('()')})" if "(received" in text else "")
    if "TimeoutException" in names:
        return "no answer in time"
    if "ConnectError" in names:
        return "cannot connect"
    if "HTTPStatusError" in names:
        response = getattr(error, "response", None)
        return f"HTTP {getattr(response, 'status_code', '?')}"
    if names & {"RemoteProtocolError", "ReadError", "WriteError", "NetworkError"}:
        return "the connection dropped"
    if isinstance(error, ConnectionResetError):
        return "the connection was reset"
    if isinstance(error, OSError):
        return error.strerror or "a network error"
    if any("WebSocket" in name for name in names):
        return "the websocket closed"
    return "".join(c if c.isprintable() else "?" for c in text)[:120] or "a network error"
