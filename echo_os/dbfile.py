"""Opening a workspace SQLite file that may be corrupt: detect it, move it aside, start a fresh one.

catalog.db is a cache of the meta.json folders and jobs.db is the job queue; either can be damaged by a
disk error, a bad copy or a stray write. `open_or_quarantine` wraps whatever opens the file (connect,
pragmas, migrations): when SQLite says the file is not a database or is malformed (SQLITE_NOTADB,
SQLITE_CORRUPT), or it is SQLite with tables echo-os did not make (sqlite.ForeignSchemaError), or it
is a folder, the file and its -wal/-shm companions are renamed to `<name>.corrupt-<UTC time>` next
to it (kept for recovery with `sqlite3 FILE .recover`), and the opener runs again on a fresh file. Other
errors (locked, read-only, no such folder) are not corruption and are raised as they are.

What happens after a quarantine is the caller's rule: the catalog rebuilds itself from the folders; the
job queue starts empty and says so loudly (see echo_os/api/app.py).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Generic, TypeVar

from filelock import FileLock

T = TypeVar("T")

# SQLite primary result codes meaning "this file's contents are not a usable database".
_CORRUPTION_CODES = frozenset({11, 26})  # SQLITE_CORRUPT, SQLITE_NOTADB
_COMPANIONS = ("-wal", "-shm", "-journal")


def is_corruption(error: BaseException) -> bool:
    """True for SQLite errors that mean a damaged file, not a busy or unreadable one; a file that is SQLite
    but not ours (ForeignSchemaError) counts: it cannot be used either, and is moved aside the same way."""
    from echo_os.sqlite import ForeignSchemaError

    if isinstance(error, ForeignSchemaError):
        return True
    if not isinstance(error, sqlite3.DatabaseError):
        return False
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in _CORRUPTION_CODES
    text = str(error)
    return "file is not a database" in text or "malformed" in text


@dataclass(frozen=True)
class Opened(Generic[T]):
    value: T
    quarantined: Path | None = None  # where the corrupt file went, when it was moved aside
    reason: str = ""  # SQLite's words for what was wrong with it


def open_or_quarantine(path: Path, opener: Callable[[Path], T]) -> Opened[T]:
    """`opener(path)`; if the file is corrupt, move it aside (under a lock, so two processes move it once)
    and return `opener(path)` on a fresh file. `opener` must close what it opened before raising.
    Something at `path` that is not a file (a folder named catalog.db) is moved aside the same way."""
    if path.exists() and not path.is_file():
        with FileLock(str(path) + ".repair.lock"):
            if path.exists() and not path.is_file():
                moved = quarantine(path)
                return Opened(opener(path), quarantined=moved, reason="it was a folder, not a database file")
    try:
        return Opened(opener(path))
    except sqlite3.DatabaseError as error:
        if not is_corruption(error):
            raise
        first_error = error
    with FileLock(str(path) + ".repair.lock"):
        try:  # another process may have repaired it while this one waited for the lock
            return Opened(opener(path))
        except sqlite3.DatabaseError as error:
            if not is_corruption(error):
                raise
        moved = quarantine(path)
        return Opened(opener(path), quarantined=moved, reason=str(first_error))


def quarantine(path: Path) -> Path:
    """Rename `path` and its -wal/-shm/-journal files to `<name>.corrupt-<UTC time>[...]`; returns the new path."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 2
    while target.exists():
        target, n = path.with_name(f"{path.name}.corrupt-{stamp}-{n}"), n + 1
    for suffix in _COMPANIONS:  # companions first: a stale WAL must never be applied to the fresh file
        companion = path.with_name(path.name + suffix)
        if companion.exists():
            companion.rename(target.with_name(target.name + suffix))
    path.rename(target)
    return target
