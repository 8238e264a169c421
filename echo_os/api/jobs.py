"""The durable job queue: jobs and the images they have saved, in their own SQLite file.

`artifacts/jobs.db`, WAL, synchronous=FULL (a 202 means the job is on disk), named migrations applied on every
open (echo_os.sqlite, like the catalog). The server's store checkpoints the WAL on a thread of its own
(`checkpoint_in_background`), so no submission's commit pays for a checkpoint. Writes go through one
connection behind one lock; readers get their own connection per thread, which WAL lets read while the writer
writes.

A job is a list of RenderRequests (`items`): one for `/api/render`, one per planned scene for
`/api/batch`; an `/api/animatic` job has none, only its AnimaticSpec (its one artifact is the video).
Image k of a job is the k-th image counting through the items in order; each saved image is
recorded against (job id, k) right after ArtifactStore.save, so a job that runs again after a crash
skips the images it already has. A comparison (`/api/compare`) records its grid sheet as the image after
its cells, so the sheet is the last of its artifact ids (`Job.grid_id`).

Idempotency: a submission may carry an IdempotencyKey (the client's `Idempotency-Key` header, or one the
OpenAI route derives for a retried request). The key, a fingerprint of the route and body, and the job id
are stored in the same transaction as the job, so the same key always answers with the same job, and a
different body under the same key is a conflict. Keys expire after IDEMPOTENCY_TTL_S.

Claiming is one atomic `UPDATE ... WHERE seq IN (SELECT ...) RETURNING`, so two claimers can never take
the same job. Compatible render jobs (same `coalesce_key`) are claimed together for one batched call.

Several worker processes share the file (`echo-os serve --workers N`, echo_os.api.processes): a claim
names its worker and a lease (`lease_until`) that the worker's heartbeat extends. A job whose lease ran
out (its worker was killed, or the whole server) goes back to the queue through `requeue_expired`, the
same rule as `recover`. Worker processes write their job events to `job_events`, which the HTTP process
tails into its event hub, and their figures to `workers` (GET /api/workers).
"""

from __future__ import annotations

import builtins
import json
import sqlite3
import threading
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Literal

from echo_os.api.job_types import (
    JOB_STATUSES,
    TERMINAL_STATUSES,
    Admission,
    IdempotencyKey,
    Job,
    JobProgress,
    JobStatus,
    Recovery,
    SavedImage,
    WorkerRow,
)
from echo_os.api.migrations import MIGRATIONS
from echo_os.api.specs import parse_spec
from echo_os.dbfile import open_or_quarantine
from echo_os.render.requests import RenderRequest
from echo_os.sqlite import BackgroundCheckpointer, check_columns, connect, rollback

JOB_ID_PATTERN = r"^[0-9a-f]{32}$"

DEFAULT_MAX_ATTEMPTS = 3
# An outage of the machinery (a worker process or Ray actor dying, not the job's own error) spends no
# attempt; a job interrupted this many times is failed all the same, so one that brings its worker down
# every time is not retried forever.
MAX_INTERRUPTIONS = 10
# A job sent back to the queue after a failure or an outage waits before it can be claimed again (so the
# worker that just failed does not take it straight back): REQUEUE_BACKOFF_S, doubled per earlier try.
REQUEUE_BACKOFF_S = 0.5
REQUEUE_BACKOFF_MAX_S = 30.0
# How long an Idempotency-Key is remembered (as Stripe does): a retry comes within minutes; a day covers
# a client that queues offline and replays later.
IDEMPOTENCY_TTL_S = 24 * 3600


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def new_job_id() -> str:
    return uuid.uuid4().hex


def coalesce_key(request: RenderRequest) -> str:
    """Render jobs with equal keys may share one pipeline call: the engine asked for plus the
    request's batch key (model, size, steps, cfg, scheduler, device, dtype, attention)."""
    return json.dumps([request.engine, *request.batch_key()])


_COLUMNS = ("id, kind, status, request, attempts, error, cancel_requested, solo, timings, created, started, "
            "finished, interruptions, step, total_steps")
_CLAIMABLE = "status = 'queued' AND (not_before IS NULL OR not_before <= ?)"


def requeue_backoff_s(tries: int) -> float:
    """How long a job sent back after `tries` tries (attempts and interruptions) waits to be claimed."""
    return min(REQUEUE_BACKOFF_MAX_S, REQUEUE_BACKOFF_S * 2 ** max(0, tries - 1))


def _connect(path: Path, synchronous: Literal["NORMAL", "FULL"] = "FULL") -> sqlite3.Connection:
    return connect(path, synchronous=synchronous)


def _open_migrated(path: Path, synchronous: Literal["NORMAL", "FULL"] = "FULL") -> sqlite3.Connection:
    db = _connect(path, synchronous)
    try:
        MIGRATIONS.migrate(db)
        check_columns(db, "jobs", _COLUMNS.split(", "))  # a file that is SQLite but not ours
    except BaseException:
        db.close()
        raise
    return db


class JobStore:
    """The jobs table and its one writer. Thread-safe: every write holds `_write_lock`."""

    def __init__(self, path: Path, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                 synchronous: Literal["NORMAL", "FULL"] = "FULL", checkpoint_in_background: bool = False):
        """synchronous=FULL where a commit is a promise (the server: a 202 means the job is on disk);
        a worker process opens it NORMAL (see echo_os.api.processes). checkpoint_in_background: the
        server's store, whose commits a 202 waits for, leaves WAL checkpoints to a thread of its own
        (echo_os.sqlite.BackgroundCheckpointer)."""
        self.path = path
        self.synchronous = synchronous
        self.max_attempts = max_attempts
        path.parent.mkdir(parents=True, exist_ok=True)
        self._write_lock = threading.Lock()
        self._readers = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        # A corrupt jobs.db is moved aside and a fresh queue started; `quarantined` names where it went and
        # the server says so loudly at start (the jobs in it are not run: they cannot be rebuilt).
        opened = open_or_quarantine(path, lambda file: _open_migrated(file, synchronous))
        self._db = opened.value
        self.quarantined = opened.quarantined
        self.corruption = opened.reason
        self._checkpointer: BackgroundCheckpointer | None = None
        if checkpoint_in_background:
            BackgroundCheckpointer.take_over(self._db)
            self._checkpointer = BackgroundCheckpointer(path)
            self._checkpointer.start()

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
        with self._write_lock, self._readers_lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()
            self._db.close()

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._readers, "conn", None)
        if conn is None:
            conn = _connect(self.path)
            self._readers.conn = conn
            with self._readers_lock:
                self._reader_conns.append(conn)
        return conn

    # ---- rows ---------------------------------------------------------------------------------
    @staticmethod
    def _job(row: tuple, images: dict[str, list[str]] | None = None) -> Job:
        (job_id, kind, status, request, attempts, error, cancel_requested, solo, timings, created, started,
         finished, interruptions, step, total_steps) = row
        return Job(id=job_id, kind=kind, status=status, spec=parse_spec(request, kind),
                   attempts=attempts, interruptions=interruptions, error=error,
                   cancel_requested=bool(cancel_requested), solo=bool(solo),
                   timings=json.loads(timings), created=created, started=started, finished=finished,
                   step=step, total_steps=total_steps, artifact_ids=(images or {}).get(job_id, []))

    @staticmethod
    def _artifacts_of(db: sqlite3.Connection, job_ids: list[str]) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for start in range(0, len(job_ids), 500):
            chunk = job_ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for job_id, artifact_id in db.execute(
                    f"SELECT job_id, artifact_id FROM job_images WHERE job_id IN ({marks}) ORDER BY job_id, image",
                    chunk):
                found.setdefault(job_id, []).append(artifact_id)
        return found

    def _jobs(self, db: sqlite3.Connection, rows: list[tuple]) -> list[Job]:
        images = self._artifacts_of(db, [row[0] for row in rows])
        return [self._job(row, images) for row in rows]

    # ---- submitting ---------------------------------------------------------------------------
    def insert(self, jobs: Iterable[Job]) -> None:
        """Add jobs in one transaction: one fsync however many arrive together (group commit)."""
        self.admit([(job, None) for job in jobs])

    def admit(self, submissions: Iterable[tuple[Job, IdempotencyKey | None]]) -> list[Admission]:
        """Add jobs in one transaction (group commit); a job whose live key is already stored is not added
        but answered with the key's job (`replayed`, or `conflict` for another body)."""
        admissions: list[Admission] = []
        stamp = now_iso()
        with self._write_lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM idempotency_keys WHERE created < ?", (_key_cutoff(),))
                for job, key in submissions:
                    if key is not None and not key.replace:
                        row = self._db.execute("SELECT fingerprint, job_id FROM idempotency_keys WHERE key = ?",
                                               (key.key,)).fetchone()
                        if row is not None:
                            admissions.append(Admission(row[1], "replayed" if row[0] == key.fingerprint
                                                        else "conflict"))
                            continue
                    self._db.execute(
                        "INSERT INTO jobs (id, kind, status, request, coalesce_key, images_total, created) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (job.id, job.kind, job.status, job.spec.model_dump_json(),
                         coalesce_key(job.spec.render_items()[0]) if job.kind == "render" else None, job.images_total,
                         job.created))
                    if key is not None:
                        self._db.execute("INSERT OR REPLACE INTO idempotency_keys (key, fingerprint, job_id, created) "
                                         "VALUES (?, ?, ?, ?)", (key.key, key.fingerprint, job.id, stamp))
                    admissions.append(Admission(job.id, "stored"))
                self._db.execute("COMMIT")
            except BaseException:
                rollback(self._db)
                raise
        self._committed()
        return admissions

    def find_key(self, key: str) -> tuple[str, str] | None:
        """(fingerprint, job id) of a live idempotency key, or None."""
        row = self._reader().execute("SELECT fingerprint, job_id FROM idempotency_keys WHERE key = ? AND created >= ?",
                                     (key, _key_cutoff())).fetchone()
        return (row[0], row[1]) if row else None

    def find_answer(self, key: str) -> tuple[str, int, str] | None:
        """(fingerprint, status, JSON body) of the live first answer stored under `key`, or None."""
        row = self._reader().execute("SELECT fingerprint, status, body FROM idempotent_answers WHERE key = ? "
                                     "AND created >= ?", (key, _key_cutoff())).fetchone()
        return (row[0], int(row[1]), row[2]) if row else None

    def keep_answer(self, key: str, fingerprint: str, status: int, body: str) -> None:
        """Store the first answer of a POST that makes no job under its key (expired keys go first)."""
        with self._write_lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM idempotent_answers WHERE created < ?", (_key_cutoff(),))
                self._db.execute("INSERT OR REPLACE INTO idempotent_answers (key, fingerprint, status, body, created) "
                                 "VALUES (?, ?, ?, ?, ?)", (key, fingerprint, status, body, now_iso()))
                self._db.execute("COMMIT")
            except BaseException:
                rollback(self._db)
                raise

    # ---- reading ------------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        db = self._reader()
        row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._jobs(db, [row])[0] if row else None

    def list(self, *, status: str | None = None, limit: int = 50, offset: int = 0,
             newest_first: bool = True) -> list[Job]:
        db = self._reader()
        sql = f"SELECT {_COLUMNS} FROM jobs"
        params: builtins.list[str | int] = []
        if status:
            sql += " WHERE status = ?"
            params.append(status)
        sql += f" ORDER BY seq {'DESC' if newest_first else 'ASC'} LIMIT ? OFFSET ?"
        params += [limit, offset]
        return self._jobs(db, db.execute(sql, params).fetchall())

    def counts(self) -> dict[str, int]:
        found = dict.fromkeys(JOB_STATUSES, 0)
        for status, count in self._reader().execute("SELECT status, COUNT(*) FROM jobs GROUP BY status"):
            found[status] = count
        return found

    def has_queued(self) -> bool:
        """A job a worker may claim now (queued, its back-off over)."""
        return self._reader().execute(f"SELECT 1 FROM jobs WHERE {_CLAIMABLE} LIMIT 1",
                                      (now_iso(),)).fetchone() is not None

    def saved_images(self, job_id: str) -> builtins.list[SavedImage]:
        rows = self._reader().execute(
            "SELECT image, artifact_id FROM job_images WHERE job_id = ? ORDER BY image", (job_id,))
        return [SavedImage(index, artifact_id) for index, artifact_id in rows]

    def recorded_artifact_ids(self, artifact_ids: Iterable[str]) -> set[str]:
        ids = list(artifact_ids)
        found: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(row[0] for row in self._reader().execute(
                f"SELECT artifact_id FROM job_images WHERE artifact_id IN ({marks})", chunk))
        return found

    # ---- the worker's side ----------------------------------------------------------------------
    def _write(self, sql: str, params: tuple | builtins.list = ()) -> builtins.list[tuple]:
        with self._write_lock:
            rows = self._db.execute(sql, params).fetchall()
        self._committed()
        return rows

    def _committed(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.committed()

    def claim_next(self, worker: str | None = None, lease_s: float | None = None) -> Job | None:
        """The oldest claimable job (queued, its back-off over), now running (attempts + 1), held by `worker`
        until its lease runs out."""
        now = now_iso()
        rows = self._write(
            f"UPDATE jobs SET status = 'running', attempts = attempts + 1, error = NULL, not_before = NULL, "
            f"started = COALESCE(started, ?), worker = ?, lease_until = ? "
            f"WHERE seq = (SELECT seq FROM jobs WHERE {_CLAIMABLE} ORDER BY seq LIMIT 1) "
            f"RETURNING {_COLUMNS}", (now, worker, lease_end(lease_s), now))
        return self._jobs(self._reader(), rows)[0] if rows else None

    def claim_compatible(self, key: str, max_images: int, worker: str | None = None,
                         lease_s: float | None = None) -> builtins.list[Job]:
        """Queued render jobs with this coalesce key, oldest first, while their images fit in max_images."""
        if max_images <= 0:
            return []
        now = now_iso()
        rows = self._write(
            f"UPDATE jobs SET status = 'running', attempts = attempts + 1, error = NULL, not_before = NULL, "
            f"started = COALESCE(started, ?), worker = ?, lease_until = ? "
            f"WHERE seq IN (SELECT seq FROM ("
            f"    SELECT seq, SUM(images_total) OVER (ORDER BY seq) AS running_total FROM jobs"
            f"    WHERE {_CLAIMABLE} AND kind = 'render' AND solo = 0 AND coalesce_key = ?)"
            f"  WHERE running_total <= ?) "
            f"RETURNING {_COLUMNS}", (now, worker, lease_end(lease_s), now, key, max_images))
        jobs = self._jobs(self._reader(), rows)
        return sorted(jobs, key=lambda job: job.created)

    def record_image(self, job_id: str, index: int, artifact_id: str) -> None:
        self._write("INSERT OR IGNORE INTO job_images (job_id, image, artifact_id, saved) VALUES (?, ?, ?, ?)",
                    (job_id, index, artifact_id, now_iso()))

    def cancel_requested(self, job_ids: Iterable[str]) -> set[str]:
        ids = list(job_ids)
        if not ids:
            return set()
        marks = ",".join("?" * len(ids))
        return {row[0] for row in self._reader().execute(
            f"SELECT id FROM jobs WHERE id IN ({marks}) AND cancel_requested = 1", ids)}

    def finish(self, job_id: str, status: Literal["succeeded", "failed", "cancelled"], *,
               error: str | None = None, timings: dict[str, float] | None = None,
               step: tuple[int, int] = (0, 0)) -> Job | None:
        """`step`: (step, total_steps) the job's latest pipeline call reached."""
        rows = self._write(
            f"UPDATE jobs SET status = ?, error = ?, finished = ?, timings = ?, step = ?, total_steps = ? "
            f"WHERE id = ? AND status = 'running' RETURNING {_COLUMNS}",
            (status, error, now_iso(), json.dumps(timings or {}), step[0], step[1], job_id))
        return self._jobs(self._reader(), rows)[0] if rows else None

    def requeue(self, job_id: str, *, error: str | None = None, count_attempt: bool = True,
                solo: bool | None = None, outage: bool = False, backoff: bool = False) -> Job | None:
        """Back to queued: after a failure that may pass (count_attempt), or after an interruption that
        was not the job's fault (a batch mate cancelled, the server shutting down). outage: the machinery
        failed (a Ray actor or worker process gone): no attempt spent, an interruption counted. backoff:
        not claimable for requeue_backoff_s(its tries so far), so the worker that just failed does not
        take it straight back."""
        not_before = None
        if backoff:
            job = self.get(job_id)
            if job is not None:
                # its tries so far: the attempts (this one's included, even when an outage gives it back)
                # and the outages before
                not_before = _after(requeue_backoff_s(job.attempts + job.interruptions))
        rows = self._write(
            f"UPDATE jobs SET status = 'queued', error = ?, attempts = attempts - ?, "
            f"interruptions = interruptions + ?, solo = COALESCE(?, solo), not_before = ?, "
            f"worker = NULL, lease_until = NULL "
            f"WHERE id = ? AND status = 'running' RETURNING {_COLUMNS}",
            (error, 0 if count_attempt and not outage else 1, int(outage), None if solo is None else int(solo),
             not_before, job_id))
        return self._jobs(self._reader(), rows)[0] if rows else None

    # ---- cancelling ------------------------------------------------------------------------------
    def request_cancel(self, job_id: str) -> Job | None:
        """A queued job is cancelled at once; a running one is flagged for the worker. None: no such job."""
        with self._write_lock:
            rows = self._db.execute(
                f"UPDATE jobs SET status = 'cancelled', finished = ? WHERE id = ? AND status = 'queued' "
                f"RETURNING {_COLUMNS}", (now_iso(), job_id)).fetchall()
            if not rows:
                rows = self._db.execute(
                    f"UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = 'running' "
                    f"RETURNING {_COLUMNS}", (job_id,)).fetchall()
        if rows:
            return self._jobs(self._reader(), rows)[0]
        return self.get(job_id)

    # ---- after a crash ---------------------------------------------------------------------------
    def recover(self) -> Recovery:
        """Jobs left `running` by a process that died: cancelled if that was asked, else queued again (their
        saved images are kept and skipped). A crash is an outage, not the job's error (issue 25): no attempt
        spent, an interruption counted (failed after MAX_INTERRUPTIONS), a back-off before the next claim.
        Jobs whose lease has not run out yet are left to `requeue_expired`: a worker of the server that died
        may still be stopping (it requeues its own jobs when it notices)."""
        return self._take_back("lease_until IS NULL OR lease_until < ?", (now_iso(),),
                               "the server stopped while rendering", outage=True)

    def requeue_expired(self) -> Recovery:
        """Running jobs whose worker stopped renewing the lease (killed, or frozen): as `recover`, an outage."""
        return self._take_back("lease_until < ?", (now_iso(),), "its worker stopped answering", outage=True)

    def requeue_worker(self, worker: str) -> Recovery:
        """The jobs of a worker process that has exited (the supervisor saw it go): an outage, so as
        `recover` but spending no attempt (an interruption counted, up to MAX_INTERRUPTIONS) and with a
        back-off before they are claimed again."""
        return self._take_back("worker = ?", (worker,), "its worker process died", outage=True)

    def renew_leases(self, worker: str, lease_s: float) -> int:
        """The heartbeat: extend the lease of every job `worker` holds; returns how many it holds."""
        return len(self._write("UPDATE jobs SET lease_until = ? WHERE status = 'running' AND worker = ? "
                               "RETURNING id", (lease_end(lease_s), worker)))

    def held_by(self, job_ids: Iterable[str], worker: str) -> set[str]:
        """Which of `job_ids` are still running under `worker` (not taken back after a lost lease)."""
        ids = list(job_ids)
        if not ids:
            return set()
        marks = ",".join("?" * len(ids))
        return {row[0] for row in self._reader().execute(
            f"SELECT id FROM jobs WHERE id IN ({marks}) AND status = 'running' AND worker = ?", [*ids, worker])}

    def _take_back(self, where: str, params: tuple, why: str, *, outage: bool = False) -> Recovery:
        stamp = now_iso()
        running = f"status = 'running' AND ({where})"
        limit, spent = (MAX_INTERRUPTIONS, "interruptions + 1") if outage else (self.max_attempts, "attempts")
        with self._write_lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cancelled = self._db.execute(
                    f"UPDATE jobs SET status = 'cancelled', finished = ? "
                    f"WHERE {running} AND cancel_requested = 1 RETURNING id", (stamp, *params)).fetchall()
                failed = self._db.execute(
                    f"UPDATE jobs SET status = 'failed', finished = ?, error = ?, "
                    f"interruptions = interruptions + ?, attempts = attempts - ? "
                    f"WHERE {running} AND {spent} >= ? RETURNING id",
                    (stamp, f"{why} {limit} times; giving up (see the server log)", int(outage), int(outage),
                     *params, limit)).fetchall()
                if outage:  # no attempt spent: the claim's is given back; each waits its back-off
                    requeued = []
                    for job_id, attempts, interruptions in self._db.execute(
                            f"SELECT id, attempts, interruptions FROM jobs WHERE {running}", params).fetchall():
                        requeued += self._db.execute(
                            "UPDATE jobs SET status = 'queued', worker = NULL, lease_until = NULL, "
                            "attempts = attempts - 1, interruptions = interruptions + 1, not_before = ?, "
                            f"error = 'interrupted: {why}; running again' WHERE id = ? RETURNING id",
                            (_after(requeue_backoff_s(attempts + interruptions)), job_id)).fetchall()
                else:
                    requeued = self._db.execute(
                        f"UPDATE jobs SET status = 'queued', worker = NULL, lease_until = NULL, "
                        f"error = 'interrupted: {why}; running again' WHERE {running} RETURNING id",
                        params).fetchall()
                self._db.execute("COMMIT")
            except BaseException:
                rollback(self._db)
                raise
        return Recovery(requeued=[r[0] for r in requeued], failed=[r[0] for r in failed],
                        cancelled=[r[0] for r in cancelled])

    # ---- events and figures of worker processes ------------------------------------------------
    def events_after(self, last_id: int, limit: int = 1000) -> builtins.list[tuple[int, str]]:
        return self._reader().execute("SELECT id, body FROM job_events WHERE id > ? ORDER BY id LIMIT ?",
                                      (last_id, limit)).fetchall()

    def last_event_id(self) -> int:
        return self._reader().execute("SELECT COALESCE(MAX(id), 0) FROM job_events").fetchone()[0]

    def drop_events(self, up_to_id: int) -> None:
        self._write("DELETE FROM job_events WHERE id <= ?", (up_to_id,))

    def set_worker_row(self, row: WorkerRow, *, only_if_same_worker: bool = False) -> None:
        """The supervisor sets a slot's row; a worker updates it only while the slot is still its own (an
        orphaned worker stopping after its server was killed must not overwrite its successor's row)."""
        guard = " WHERE workers.worker = excluded.worker" if only_if_same_worker else ""
        self._write("INSERT INTO workers (slot, worker, pid, device, model, jobs_done, images_done, "
                    "first_job, last_error, restarts, state, heartbeat, last_progress, step_s) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT(slot) DO UPDATE SET worker = excluded.worker, pid = excluded.pid, "
                    "device = excluded.device, model = excluded.model, jobs_done = excluded.jobs_done, "
                    "images_done = excluded.images_done, first_job = excluded.first_job, "
                    "last_error = excluded.last_error, restarts = excluded.restarts, state = excluded.state, "
                    "heartbeat = excluded.heartbeat, last_progress = excluded.last_progress, "
                    "step_s = excluded.step_s" + guard,
                    (row.slot, row.worker, row.pid, row.device, row.model, row.jobs_done, row.images_done,
                     row.first_job, row.last_error, row.restarts, row.state, row.heartbeat, row.last_progress,
                     row.step_s))

    def worker_rows(self) -> builtins.list[WorkerRow]:
        return [WorkerRow(*row) for row in self._reader().execute(
            "SELECT slot, worker, pid, device, model, jobs_done, images_done, first_job, last_error, restarts, "
            "state, heartbeat, last_progress, step_s FROM workers ORDER BY slot")]

    def clear_workers(self) -> None:
        self._write("DELETE FROM workers")


def lease_end(lease_s: float | None) -> str | None:
    if lease_s is None:
        return None
    return _after(lease_s)


def _after(seconds: float) -> str:
    """now_iso() `seconds` from now."""
    return (datetime.now(timezone.utc) + timedelta(seconds=seconds)).isoformat(timespec="microseconds")


def _key_cutoff() -> str:
    return (datetime.now(timezone.utc) - timedelta(seconds=IDEMPOTENCY_TTL_S)).isoformat(timespec="microseconds")


__all__ = ["JOB_STATUSES", "TERMINAL_STATUSES", "Admission", "IdempotencyKey", "Job", "JobProgress", "JobStatus",
           "JobStore", "Recovery", "SavedImage", "WorkerRow"]  # the values live in echo_os.api.job_types
