"""The schema of jobs.db (echo_os.api.jobs): named migrations, applied in order on every open
(echo_os.sqlite.Migrations). A new one goes at the end, under a new name (the next is m011)."""

from __future__ import annotations

import re
import sqlite3

from echo_os.sqlite import Migrations

# ---- schema --------------------------------------------------------------------------------------

MIGRATIONS = Migrations()  # in order; a new one goes at the end, under a new name


@MIGRATIONS
def m001_jobs(db: sqlite3.Connection) -> None:
    db.execute("""
        CREATE TABLE jobs (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL CHECK (kind IN ('render', 'batch')),
            status TEXT NOT NULL
                CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
            request TEXT NOT NULL,
            coalesce_key TEXT,
            images_total INTEGER NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            cancel_requested INTEGER NOT NULL DEFAULT 0,
            solo INTEGER NOT NULL DEFAULT 0,
            timings TEXT NOT NULL DEFAULT '{}',
            created TEXT NOT NULL,
            started TEXT,
            finished TEXT
        )""")
    db.execute("CREATE INDEX jobs_status ON jobs(status, seq)")
    db.execute("CREATE INDEX jobs_coalesce ON jobs(status, coalesce_key, seq)")
    db.execute("""
        CREATE TABLE job_images (
            job_id TEXT NOT NULL REFERENCES jobs(id),
            image INTEGER NOT NULL,
            artifact_id TEXT NOT NULL,
            saved TEXT NOT NULL,
            PRIMARY KEY (job_id, image)
        )""")
    db.execute("CREATE INDEX job_images_artifact ON job_images(artifact_id)")



@MIGRATIONS
def m002_idempotency_keys(db: sqlite3.Connection) -> None:
    db.execute("""
        CREATE TABLE idempotency_keys (
            key TEXT PRIMARY KEY,
            fingerprint TEXT NOT NULL,
            job_id TEXT NOT NULL REFERENCES jobs(id),
            created TEXT NOT NULL
        )""")
    db.execute("CREATE INDEX idempotency_keys_created ON idempotency_keys(created)")


OLD_KIND_CHECK = "CHECK (kind IN ('render', 'batch'))"
KIND_CHECK = "CHECK (kind IN ('render', 'batch', 'animatic'))"


@MIGRATIONS
def m003_animatic_jobs(db: sqlite3.Connection) -> None:
    """`kind` may be 'animatic'. SQLite cannot change a CHECK in place, so the table is rebuilt the way
    https://www.sqlite.org/lang_altertable.html#otheralter says: create the new table, copy the rows, drop
    the old one, rename the new one, recreate the indexes (all inside migrate's transaction).

    The new table is made from the jobs table's own CREATE statement with only the CHECK changed, and the
    indexes from their own, so columns or indexes another migration added before this one are kept.
    Foreign keys are not enforced on these connections, so the drop does not touch job_images or
    idempotency_keys; their REFERENCES jobs(id) name the renamed table afterwards (checked below)."""
    widen_kind_check(db, OLD_KIND_CHECK, KIND_CHECK)


def widen_kind_check(db: sqlite3.Connection, old: str, new: str) -> None:
    """Rebuild the jobs table with CHECK `old` replaced by `new` (m003_animatic_jobs says how and why)."""
    (create,) = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'jobs'").fetchone()
    if old not in create:
        raise RuntimeError(f"jobs.db: the jobs table has no {old} to widen: {create}")
    indexes = [row[0] for row in db.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'jobs' AND sql IS NOT NULL")]
    sequence = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'jobs'").fetchone()
    new_create = create.replace(old, new, 1)
    # after a rebuild SQLite keeps the name as the rename wrote it: CREATE TABLE "jobs"
    new_create = re.sub(r'^CREATE TABLE\s+"?jobs"?', "CREATE TABLE jobs_new", new_create, count=1)
    if not new_create.startswith("CREATE TABLE jobs_new"):
        raise RuntimeError(f"jobs.db: unexpected CREATE statement for jobs: {create}")
    db.execute(new_create)
    db.execute("INSERT INTO jobs_new SELECT * FROM jobs")
    db.execute("DROP TABLE jobs")  # drops its indexes too
    db.execute("ALTER TABLE jobs_new RENAME TO jobs")
    for sql in indexes:
        db.execute(sql)
    if sequence is not None:  # seq never goes back: AUTOINCREMENT's high-water mark survives the copy
        copied = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'jobs'").fetchone()
        db.execute("DELETE FROM sqlite_sequence WHERE name = 'jobs'")
        db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('jobs', ?)",
                   (max(sequence[0], copied[0] if copied else 0),))
    broken = db.execute("PRAGMA foreign_key_check").fetchall()
    if broken:
        raise RuntimeError(f"jobs.db: foreign keys broken by the jobs table rebuild: {broken[:5]}")


@MIGRATIONS
def m004_worker_leases(db: sqlite3.Connection) -> None:
    db.execute("ALTER TABLE jobs ADD COLUMN worker TEXT")
    db.execute("ALTER TABLE jobs ADD COLUMN lease_until TEXT")
    db.execute("""
        CREATE TABLE job_events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id TEXT NOT NULL,
            body TEXT NOT NULL
        )""")
    db.execute("""
        CREATE TABLE workers (
            slot INTEGER PRIMARY KEY,
            worker TEXT NOT NULL,
            pid INTEGER,
            device TEXT NOT NULL,
            model TEXT,
            jobs_done INTEGER NOT NULL DEFAULT 0,
            images_done INTEGER NOT NULL DEFAULT 0,
            first_job TEXT,
            last_error TEXT,
            restarts INTEGER NOT NULL DEFAULT 0,
            state TEXT NOT NULL,
            heartbeat TEXT
        )""")


@MIGRATIONS
def m005_requeue_backoff(db: sqlite3.Connection) -> None:
    """Outages counted apart from attempts, and a time before which a requeued job is not claimed."""
    db.execute("ALTER TABLE jobs ADD COLUMN interruptions INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE jobs ADD COLUMN not_before TEXT")


@MIGRATIONS
def m006_evolve_jobs(db: sqlite3.Connection) -> None:
    """`kind` may be 'evolve' (issue 28), the same rebuild as m003_animatic_jobs (it keeps the columns
    m004 and m005 added)."""
    widen_kind_check(db, KIND_CHECK, "CHECK (kind IN ('render', 'batch', 'animatic', 'evolve'))")


@MIGRATIONS
def m007_stopped_at_step(db: sqlite3.Connection) -> None:
    """The step a cancelled or failed job stopped at, so its view does not fall back to "step 0 of 0"."""
    db.execute("ALTER TABLE jobs ADD COLUMN step INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE jobs ADD COLUMN total_steps INTEGER NOT NULL DEFAULT 0")


@MIGRATIONS
def m008_clip_jobs(db: sqlite3.Connection) -> None:
    """`kind` may be 'clip' (POST /api/animate: a clip from an image, rendered by a video engine)."""
    widen_kind_check(db, "CHECK (kind IN ('render', 'batch', 'animatic', 'evolve'))",
                     "CHECK (kind IN ('render', 'batch', 'animatic', 'evolve', 'clip'))")


@MIGRATIONS
def m009_idempotent_answers(db: sqlite3.Connection) -> None:
    """The first answer of a POST that makes no job (POST /api/styles), kept under its Idempotency-Key so
    a repeat gets the same answer (idempotency_keys holds only keys of jobs)."""
    db.execute("""
        CREATE TABLE idempotent_answers (
            key TEXT PRIMARY KEY,
            fingerprint TEXT NOT NULL,
            status INTEGER NOT NULL,
            body TEXT NOT NULL,
            created TEXT NOT NULL
        )""")


@MIGRATIONS
def m010_worker_progress(db: sqlite3.Connection) -> None:
    """When a worker process last made progress, and its recent step time (issue 25: a stalled worker
    is told from a slow one, echo_os.api.stalls)."""
    db.execute("ALTER TABLE workers ADD COLUMN last_progress TEXT")
    db.execute("ALTER TABLE workers ADD COLUMN step_s REAL")


