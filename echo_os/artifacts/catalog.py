"""The SQLite catalog: a cache of every artifact's meta.json, rebuilt by `echo-os artifacts reindex`.

WAL mode so the CLI and the server read while one writes; schema changes are named migrations applied
on every open (echo_os.sqlite, llm's migrations.py habit). `num` is a stable int64 taken from the artifact id, so the same
folder always gets the same row number (and the same vector id in Echo Memory), even after a rebuild.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from echo_os.artifacts.meta import artifact_kind
from echo_os.artifacts.slugs import slugify
from echo_os.errors import NotFoundError, UsageError
from echo_os.sqlite import Migrations, check_columns, connect, rollback

MIN_PREFIX = 12

log = logging.getLogger(__name__)


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


@MIGRATIONS
def m003_resonance(db: sqlite3.Connection) -> None:
    """Scores and ratings (issue 16) as columns generated from meta.json's `scores` and `rating`, so they
    are always in step with the meta column and a reindex needs nothing new. VIRTUAL: computed on read."""
    for column, kind, path in (("alignment", "REAL", "$.scores.alignment"),
                               ("character_consistency", "REAL", "$.scores.character_consistency"),
                               ("style", "REAL", "$.scores.style"),
                               ("aesthetic", "REAL", "$.scores.aesthetic"),
                               ("rating", "INTEGER", "$.rating.value")):
        db.execute(f"ALTER TABLE artifacts ADD COLUMN {column} {kind} GENERATED ALWAYS AS "
                   f"(json_extract(meta, '{path}')) VIRTUAL")
    db.execute("CREATE INDEX artifacts_rating ON artifacts(project, rating)")


@MIGRATIONS
def m004_versions(db: sqlite3.Connection) -> None:
    """Version history of a project (issue 28, echo_os/reflect/versions.py): one immutable row per
    `echo-os commit`; the record (selection, hashes, scores) is JSON. Triggers refuse UPDATE and DELETE,
    so a version, once written, is never changed; `reindex` replaces artifacts rows only."""
    db.execute("""
        CREATE TABLE versions (
            project TEXT NOT NULL,
            number INTEGER NOT NULL,
            created TEXT NOT NULL,
            message TEXT NOT NULL,
            minutes REAL,
            record TEXT NOT NULL,
            PRIMARY KEY (project, number)
        )""")
    for action in ("UPDATE", "DELETE"):
        db.execute(f"CREATE TRIGGER versions_no_{action.lower()} BEFORE {action} ON versions "
                   "BEGIN SELECT RAISE(ABORT, 'versions are immutable'); END")


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
                "scene": self.scene, "prompt": self.prompt, "path": self.path, "kind": artifact_kind(self.meta)}


_COLUMNS = "num, id, created, project, model, engine, prompt, seed, width, height, scene, parent_id, path, meta"


def project_slug(project: str) -> str:
    """The folder name of a project (artifacts/<date>/<project-slug>/): what identifies it."""
    return slugify(project, fallback="default")


def _row(values: tuple[Any, ...]) -> CatalogRow:
    """A CatalogRow from a `SELECT {_COLUMNS}` row: the columns in field order, meta last as JSON text."""
    num, id_, created, project, model, engine, prompt, seed, width, height, scene, parent_id, path, meta = values
    return CatalogRow(num, id_, created, project, model, engine, prompt, seed, width, height, scene, parent_id, path,
                      json.loads(meta))


def _open(path: Path) -> tuple[sqlite3.Connection, bool]:
    """Connect with the pragmas and migrate; (connection, whether the file was new or empty)."""
    db = connect(path)
    try:
        # Projects are matched by slug, the name of their folder: "Fog Tests", "fog tests" and "fog-tests"
        # are one project (one folder, one numbering); each row keeps the display name it was made with.
        db.create_function("project_slug", 1, project_slug, deterministic=True)
        applied = MIGRATIONS.migrate(db)
        check_columns(db, "artifacts", [*_COLUMNS.split(", "), "request_key"])  # a file that is not ours
        return db, MIGRATIONS.names[0] in applied
    except BaseException:
        db.close()
        raise


class Catalog:
    """One connection to catalog.db. A corrupt file is moved aside and a fresh one made (echo_os.dbfile):
    `quarantined` says where it went, `fresh` that the table started empty (new, 0 bytes or quarantined);
    artifacts.store.open_catalog then refills it from the folders."""

    def __init__(self, path: Path):
        from echo_os.dbfile import open_or_quarantine

        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        opened = open_or_quarantine(path, _open)
        self.db, self.fresh = opened.value
        self.quarantined = opened.quarantined
        self.corruption = opened.reason

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
        """Swap the whole table for `rows` in one transaction (readers never see it half-built). A row
        SQLite cannot hold (a number beyond 64 bits in a hand-made or old meta.json) is left out with a
        warning naming its folder: one bad folder never stops a rebuild (nor hides the others)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute("DELETE FROM artifacts")
            for meta, relative_path in rows:
                try:
                    self.upsert(meta, relative_path)
                except (OverflowError, KeyError, TypeError, ValueError) as error:
                    log.warning("catalog: left out %s: its meta.json cannot be a catalog row (%s: %s)",
                                relative_path, type(error).__name__, str(error)[:200])
            self.db.execute("COMMIT")
        except BaseException:
            rollback(self.db)
            raise

    # -- reads --------------------------------------------------------------------------------
    def resolve_id(self, prefix: str) -> CatalogRow:
        """A full id or a unique prefix of at least 12 hex characters."""
        prefix = prefix.strip().lower()
        not_hex = sorted({c for c in prefix if c not in "0123456789abcdef"})
        if not_hex:
            shown = ", ".join(repr(c) for c in not_hex[:5])
            raise UsageError(f"artifact id {prefix!r} is not hexadecimal (it holds {shown}); an id is the image's "
                             "sha256, 0-9 and a-f (see `echo-os artifacts list`).")
        if len(prefix) < MIN_PREFIX:
            raise UsageError(f"artifact id {prefix!r} is too short: give at least {MIN_PREFIX} hex characters of it "
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
              limit: int | None = None, offset: int = 0, newest_first: bool = True,
              min_rating: int | None = None) -> list[CatalogRow]:
        where: list[str] = []
        params: list[object] = []
        if min_rating is not None:  # meta.json `rating.value` (the generated column); unrated rows never match
            where.append("rating >= ?")
            params.append(min_rating)
        if project:
            where.append("project_slug(project) = ?")
            params.append(project_slug(project))
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
                f"SELECT {_COLUMNS}, request_key FROM artifacts WHERE project_slug(project) = ? AND request_key IN "
                f"({','.join('?' * len(chunk))}) ORDER BY created", [project_slug(project), *chunk])
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

    def image_nums(self) -> set[int]:
        """The rows that are images (rendered or imported): what memory embeds. Not a video (meta kind
        "video") nor a compare grid sheet (engine "compare", meta.grid): echo_os.artifacts.meta.artifact_kind."""
        return {row[0] for row in self.db.execute(
            "SELECT num FROM artifacts WHERE COALESCE(json_extract(meta, '$.kind'), '') != 'video' "
            "AND engine != 'compare' AND json_extract(meta, '$.grid') IS NULL")}

    def nums(self) -> set[int]:
        return {row[0] for row in self.db.execute("SELECT num FROM artifacts")}

    def dump(self) -> Iterator[tuple]:
        """Every row in num order, for comparing two catalogs."""
        yield from self.db.execute(f"SELECT {_COLUMNS} FROM artifacts ORDER BY num")
