"""The SQLite catalog: a cache of every artifact's meta.json, rebuilt by `echo-os artifacts reindex`.

WAL mode so the CLI and the server read while one writes; schema changes are named migrations applied
on every open (echo_os.sqlite, llm's migrations.py habit). `num` is a stable int64 taken from the artifact id, so the same
folder always gets the same row number (and the same vector id in Echo Memory), even after a rebuild.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from echo_os.errors import NotFoundError, UsageError
from echo_os.sqlite import Migrations, connect

MIN_PREFIX = 12


def artifact_num(artifact_id: str) -> int:
    """Stable positive int64 from the sha256 hex id (first 60 bits)."""
    return int(artifact_id[:15], 16)


MIGRATIONS = Migrations()  # in order; a new one goes at the end, under a new name


@MIGRATIONS
def m001_artifacts(db: sqlite3.Connection) -> None:
    db.execute("""
        CREATE TABLE artifacts (
            num INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            created TEXT NOT NULL,
            project TEXT NOT NULL,
            model TEXT,
            engine TEXT NOT NULL,
            prompt TEXT NOT NULL,
            seed INTEGER NOT NULL,
            width INTEGER NOT NULL,
            height INTEGER NOT NULL,
            scene INTEGER,
            parent_id TEXT,
            path TEXT NOT NULL,
            meta TEXT NOT NULL
        )""")
    db.execute("CREATE INDEX artifacts_project ON artifacts(project, created)")
    db.execute("CREATE INDEX artifacts_created ON artifacts(created)")
    db.execute("CREATE INDEX artifacts_model ON artifacts(model)")


@MIGRATIONS
def m002_request_key(db: sqlite3.Connection) -> None:
    """The resume key of each image (meta.json `request_key`), indexed per project for batch re-runs."""
    db.execute("ALTER TABLE artifacts ADD COLUMN request_key TEXT")
    db.execute("UPDATE artifacts SET request_key = json_extract(meta, '$.request_key')")
    db.execute("CREATE INDEX artifacts_request_key ON artifacts(project, request_key)")


@dataclass(frozen=True)
class CatalogRow:
    num: int
    id: str
    created: str
    project: str
    model: str | None
    engine: str
    prompt: str
    seed: int
    width: int
    height: int
    scene: int | None
    parent_id: str | None
    path: str  # relative to the artifacts folder
    meta: dict

    def summary(self) -> dict:
        return {"id": self.id, "created": self.created, "project": self.project, "model": self.model,
                "engine": self.engine, "seed": self.seed, "size": f"{self.width}x{self.height}",
                "scene": self.scene, "prompt": self.prompt, "path": self.path}


_COLUMNS = "num, id, created, project, model, engine, prompt, seed, width, height, scene, parent_id, path, meta"


def _row(values: tuple) -> CatalogRow:
    *head, meta = values
    return CatalogRow(*head, meta=json.loads(meta))


class Catalog:
    def __init__(self, path: Path):
        self.path = path
        self.db = connect(path)
        MIGRATIONS.migrate(self.db)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Catalog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes -------------------------------------------------------------------------------
    def upsert(self, meta: dict, relative_path: str) -> int:
        artifact_id = meta["id"]
        num = artifact_num(artifact_id)
        self.db.execute(
            f"INSERT OR REPLACE INTO artifacts ({_COLUMNS}, request_key) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (num, artifact_id, meta["created"], meta["project"], (meta.get("model") or {}).get("name"),
             meta["engine"]["name"], meta["prompt"], meta["seed"], meta["width"], meta["height"],
             (meta.get("story") or {}).get("scene"), meta.get("parent_id"), relative_path,
             json.dumps(meta, ensure_ascii=False, sort_keys=True), meta.get("request_key")))
        return num

    def delete(self, artifact_id: str) -> None:
        self.db.execute("DELETE FROM artifacts WHERE id = ?", (artifact_id,))

    def replace_all(self, rows: list[tuple[dict, str]]) -> None:
        """Swap the whole table for `rows` in one transaction (readers never see it half-built)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute("DELETE FROM artifacts")
            for meta, relative_path in rows:
                self.upsert(meta, relative_path)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    # -- reads --------------------------------------------------------------------------------
    def resolve_id(self, prefix: str) -> CatalogRow:
        """A full id or a unique prefix of at least 12 hex characters."""
        prefix = prefix.strip().lower()
        if len(prefix) < MIN_PREFIX or any(c not in "0123456789abcdef" for c in prefix):
            raise UsageError(f"artifact id {prefix!r} must be at least {MIN_PREFIX} hex characters "
                             "(see `echo-os artifacts list`).")
        rows = self.db.execute(f"SELECT {_COLUMNS} FROM artifacts WHERE id >= ? AND id < ? LIMIT 2",
                               (prefix, prefix + "g")).fetchall()
        if not rows:
            raise NotFoundError(f"no artifact with id {prefix!r} in this workspace (see `echo-os artifacts list`).")
        if len(rows) > 1:
            raise UsageError(f"artifact id prefix {prefix!r} matches several artifacts; give more characters.")
        return _row(rows[0])

    def get_num(self, num: int) -> CatalogRow | None:
        row = self.db.execute(f"SELECT {_COLUMNS} FROM artifacts WHERE num = ?", (num,)).fetchone()
        return _row(row) if row else None

    def query(self, *, project: str | None = None, model: str | None = None, since: str | None = None,
              limit: int | None = None, offset: int = 0, newest_first: bool = True) -> list[CatalogRow]:
        where, params = [], []
        if project:
            where.append("project = ?")
            params.append(project)
        if model:
            where.append("model = ?")
            params.append(model)
        if since:
            where.append("created >= ?")
            params.append(since)
        sql = f"SELECT {_COLUMNS} FROM artifacts"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY created {'DESC' if newest_first else 'ASC'}, id"
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            params += [limit, offset]
        return [_row(row) for row in self.db.execute(sql, params)]

    def by_request_keys(self, project: str, keys: list[str]) -> dict[str, CatalogRow]:
        """The project's artifacts whose request_key is one of `keys`: key -> row (the newest if several)."""
        found: dict[str, CatalogRow] = {}
        unique = sorted(set(keys))
        for start in range(0, len(unique), 500):  # stay under SQLite's bound-parameter limit
            chunk = unique[start:start + 500]
            rows = self.db.execute(
                f"SELECT {_COLUMNS}, request_key FROM artifacts WHERE project = ? AND request_key IN "
                f"({','.join('?' * len(chunk))}) ORDER BY created", [project, *chunk])
            for *values, key in rows:
                found[key] = _row(tuple(values))
        return found

    def children(self, artifact_id: str) -> list[CatalogRow]:
        """Artifacts whose parent is `artifact_id` (refined from it, or replays saved from it), oldest first."""
        return [_row(row) for row in self.db.execute(
            f"SELECT {_COLUMNS} FROM artifacts WHERE parent_id = ? ORDER BY created, id", (artifact_id,))]

    def get(self, artifact_id: str) -> CatalogRow | None:
        row = self.db.execute(f"SELECT {_COLUMNS} FROM artifacts WHERE id = ?", (artifact_id,)).fetchone()
        return _row(row) if row else None

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM artifacts").fetchone()[0]

    def nums(self) -> set[int]:
        return {row[0] for row in self.db.execute("SELECT num FROM artifacts")}

    def dump(self) -> Iterator[tuple]:
        """Every row in num order, for comparing two catalogs."""
        yield from self.db.execute(f"SELECT {_COLUMNS} FROM artifacts ORDER BY num")
