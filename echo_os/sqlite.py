"""The one SQLite helper for catalog.db and jobs.db: connect with the pragmas, apply migrations by name.

Migrations are functions registered in order on a `Migrations` list (the shape of simonw/llm's
llm/migrations.py): `migrate(db)` runs, in one IMMEDIATE transaction, each one whose name is not yet in
the `_migrations` table, and records it there. Databases made before migrations had names carry their
count in `PRAGMA user_version` (the numbered scheme): on their first open, that many migrations from the
front of the list are recorded as applied without running again. user_version is still kept equal to the
number applied, so an echo-os from before this change opening a newer file does not redo them.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

Migration = Callable[[sqlite3.Connection], None]

BUSY_TIMEOUT_S = 30


def connect(path: Path, *, synchronous: Literal["NORMAL", "FULL"] = "NORMAL") -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, shared across threads by its owner.

    synchronous=FULL where a write must survive a power cut once acknowledged (the job queue: a 202 means
    the job is on disk); NORMAL where the data can be rebuilt (the catalog, from the folders)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
    return db


class ForeignSchemaError(sqlite3.DatabaseError):
    """An SQLite file whose tables are not the ones echo-os made (`create table artifacts(x)`): treated
    as a corrupt file (echo_os.dbfile moves it aside and starts a fresh one)."""


# What SQLite says when a migration meets tables it did not make.
_SCHEMA_CLASH = re.compile(r"already exists|no such (table|column)|duplicate column|has no column")


def check_columns(db: sqlite3.Connection, table: str, expected: Iterable[str]) -> None:
    """ForeignSchemaError unless `table` exists with every column in `expected` (after the migrations:
    a file whose _migrations table says all is done, with other tables, is not ours either)."""
    found = {row[1] for row in db.execute(f"PRAGMA table_xinfo({table})")}
    missing = sorted(set(expected) - found)
    if missing:
        raise ForeignSchemaError(f"its table {table} is not echo-os's (no column {', '.join(missing[:5])})")


def rollback(db: sqlite3.Connection) -> None:
    """ROLLBACK when a transaction is still open. SQLite rolls back by itself after some errors (a full
    disk: SQLITE_FULL, SQLITE_IOERR); a ROLLBACK then fails with "cannot rollback - no transaction is
    active" and would hide the error that matters."""
    if db.in_transaction:
        db.execute("ROLLBACK")


class Migrations:
    """An ordered list of named schema migrations; use as a decorator."""

    def __init__(self) -> None:
        self._functions: list[Migration] = []

    def __call__(self, function: Migration) -> Migration:
        if any(f.__name__ == function.__name__ for f in self._functions):
            raise ValueError(f"two migrations named {function.__name__}")
        self._functions.append(function)
        return function

    def __iter__(self) -> Iterator[Migration]:
        return iter(self._functions)

    def __len__(self) -> int:
        return len(self._functions)

    def __getitem__(self, index: int) -> Migration:
        return self._functions[index]

    @property
    def names(self) -> list[str]:
        return [function.__name__ for function in self._functions]

    def before(self, name: str) -> "Migrations":
        """The migrations that come before `name` (to build an older schema: upgrade tests, benchmarks)."""
        if name not in self.names:
            raise ValueError(f"no migration named {name}")
        older = Migrations()
        for function in self._functions[:self.names.index(name)]:
            older(function)
        return older

    def migrate(self, db: sqlite3.Connection) -> list[str]:
        """Apply the migrations `db` has not had; returns their names. All or nothing."""
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied TEXT NOT NULL)")
            done = {row[0] for row in db.execute("SELECT name FROM _migrations")}
            if not done:  # a file from the numbered scheme (or a new one: user_version 0)
                legacy = db.execute("PRAGMA user_version").fetchone()[0]
                for function in self._functions[:legacy]:
                    _record(db, function.__name__, "numbered migration (user_version)")
                    done.add(function.__name__)
            applied = []
            for function in self._functions:
                if function.__name__ in done:
                    continue
                try:
                    function(db)
                except sqlite3.OperationalError as error:
                    if not _SCHEMA_CLASH.search(str(error)):
                        raise  # busy, read-only, full disk: not about whose file it is
                    raise ForeignSchemaError(f"its tables are not echo-os's (migration {function.__name__}: "
                                             f"{error})") from error
                _record(db, function.__name__, datetime.now(timezone.utc).isoformat(timespec="seconds"))
                applied.append(function.__name__)
            db.execute(f"PRAGMA user_version = {len(done) + len(applied)}")
            db.execute("COMMIT")
        except BaseException:
            rollback(db)
            raise
        return applied


def _record(db: sqlite3.Connection, name: str, applied: str) -> None:
    db.execute("INSERT INTO _migrations (name, applied) VALUES (?, ?)", (name, applied))


def applied_migrations(db: sqlite3.Connection) -> list[str]:
    """The names recorded in `db`, in the order they were applied."""
    return [row[0] for row in db.execute("SELECT name FROM _migrations ORDER BY rowid")]
