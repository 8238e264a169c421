"""A full disk at every point an image or a job is written: the artifact folder, the catalog row, jobs.db
and the memory index. Each ends in one state, saved and recorded or neither, with one line that says
what to do (the CLI exits 1, the API answers 507), and the in-process worker thread outlives it.

No test machine offers a full disk (a small tmpfs or loop mount needs root, which CI lacks): where SQLite
can be made full for real, it is (`PRAGMA max_page_count`: SQLite's own SQLITE_FULL, with its own
automatic rollback); elsewhere the exact call that would meet ENOSPC or SQLITE_FULL raises what the OS or
SQLite raises there, as each test says.
"""

from __future__ import annotations

import errno
import json
import sqlite3

import pytest

from echo_os.api import ApiOptions
from echo_os.artifacts.catalog import Catalog
from tests.api_helpers import api_client, wait_job

DRAFT = {"engine": "draft", "size": "64x64"}


@pytest.fixture
def anyio_backend():
    return "asyncio"


def _image_folders(settings):
    return sorted(settings.artifacts_dir.glob("*/*/*/image.png"))


def _catalog_rows(settings) -> list[str]:
    db = sqlite3.connect(settings.catalog_path)
    try:
        return [row[0] for row in db.execute("SELECT id FROM artifacts")]
    finally:
        db.close()


@pytest.mark.parametrize("said, raised", [
    ("the disk is full: nothing was saved", sqlite3.OperationalError("database or disk is full")),
    ("the disk is full or cannot be written", sqlite3.OperationalError("disk I/O error")),
])
def test_a_catalog_that_cannot_grow_keeps_neither_folder_nor_row(run_cli, workspace, monkeypatch, said, raised):
    """Red-team finding: with 100-140 KB free the CLI said "nothing was saved" although the folder was
    saved, without its catalog row; with less, the line was SQLite's bare "disk I/O error". The catalog
    insert raises what SQLite raises on a full disk (injected at Catalog.upsert: a real full disk needs
    root): the folder renamed into place goes again, and the line says what to do."""
    code, _, err = run_cli("--home", str(workspace.home), "render", "before", "--engine", "draft", "--size", "64x64")
    assert code == 0, err
    before = (_image_folders(workspace), _catalog_rows(workspace))

    def full(self, meta, relative_path):
        raise raised

    monkeypatch.setattr(Catalog, "upsert", full)
    code, _, err = run_cli("--home", str(workspace.home), "render", "a lamp", "--engine", "draft", "--size", "64x64")
    errors = [line for line in err.splitlines() if line.startswith("Error")]
    assert code == 1 and len(errors) == 1 and said in errors[0], err
    assert "Traceback" not in err and "disk I/O error\n" not in err
    monkeypatch.undo()
    assert (_image_folders(workspace), _catalog_rows(workspace)) == before  # neither folder nor row
    assert not any((workspace.artifacts_dir / ".tmp").glob("*/"))
    code, _, err = run_cli("--home", str(workspace.home), "artifacts", "reindex")
    assert code == 0 and _catalog_rows(workspace) == before[1], err  # nothing to repair


def test_a_rebuild_that_fills_the_disk_reports_it_not_a_failed_rollback(workspace):
    """Red-team finding: "cannot rollback - no transaction is active" hid the full disk. A real SQLITE_FULL
    (the catalog may not grow past its size: PRAGMA max_page_count), during the one-transaction rebuild
    (replace_all), rolls back by SQLite's own rule; the error that reaches the user is the full disk."""
    from echo_os.errors import disk_full

    catalog = Catalog(workspace.catalog_path)
    pages = catalog.db.execute("PRAGMA page_count").fetchone()[0]
    catalog.db.execute(f"PRAGMA max_page_count = {pages}")
    meta = {"id": "", "created": "2026-01-01T00:00:00+00:00", "project": "p", "model": {"name": "m"},
            "engine": {"name": "draft"}, "prompt": "x" * 3000, "seed": 1, "width": 64, "height": 64}
    rows = [({**meta, "id": f"{n:064x}"}, f"2026-01-01/p/{n:03d}") for n in range(1, 40)]
    with pytest.raises(sqlite3.Error) as raised:
        catalog.replace_all(rows)
    assert "rollback" not in str(raised.value) and disk_full(raised.value) is not None, raised.value
    assert catalog.db.execute("SELECT COUNT(*) FROM artifacts").fetchone()[0] == 0
    catalog.close()


@pytest.mark.anyio
async def test_a_full_catalog_fails_the_job_at_once_with_507_on_the_openai_route(workspace, monkeypatch):
    """A worker whose catalog cannot grow (injected at Catalog.upsert, as above): the job fails once with
    the full-disk line (not three attempts, not a 500), nothing is kept; the SQLite "disk I/O error" form
    answers 507 on /v1 too."""
    def io_error(self, meta, relative_path):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(Catalog, "upsert", io_error)
    async with api_client(workspace, options=ApiOptions(batch_window_ms=0)) as (client, _):
        job_id = (await client.post("/api/render", json={"prompt": "x", **DRAFT})).json()["job_id"]
        job = await wait_job(client, job_id)
        assert job["status"] == "failed" and job["attempts"] == 1, job
        assert job["error"].startswith("the disk is full or cannot be written") and "\n" not in job["error"]
        response = await client.post("/v1/images/generations", json={"prompt": "y", "size": "64x64",
                                                                     "engine": "draft"})
        assert response.status_code == 507, response.text
        health = await client.get("/health")
        assert health.status_code == 200 and health.json()["worker"] == "running"
    assert _image_folders(workspace) == []


@pytest.mark.anyio
async def test_the_worker_thread_outlives_a_full_jobs_db(workspace, monkeypatch):
    """Red-team finding: with `--workers 0` the worker thread died for good (its error handler wrote to a
    full jobs.db) while /health said ok, and jobs stayed queued. jobs.db refuses the write that records a
    job's end and the requeue after it (injected at JobStore.finish and JobStore.requeue, twice each:
    what SQLite raises when the disk is full); then space is back. The thread lives on, puts the job back
    (no attempt spent on the machinery) and renders it; the image is saved once."""
    from echo_os.api.jobs import JobStore

    real_finish, real_requeue = JobStore.finish, JobStore.requeue
    failures = {"finish": 2, "requeue": 2}

    def flaky(name, real):
        def call(self, *args, **kwargs):
            if failures[name] > 0:
                failures[name] -= 1
                raise sqlite3.OperationalError("database or disk is full")
            return real(self, *args, **kwargs)
        return call

    monkeypatch.setattr(JobStore, "finish", flaky("finish", real_finish))
    monkeypatch.setattr(JobStore, "requeue", flaky("requeue", real_requeue))
    async with api_client(workspace, options=ApiOptions(batch_window_ms=0)) as (client, app):
        job_id = (await client.post("/api/render", json={"prompt": "x", "seed": 5, **DRAFT})).json()["job_id"]
        job = await wait_job(client, job_id, timeout=30)
        assert job["status"] == "succeeded", job
        health = await client.get("/health")
        assert health.status_code == 200 and health.json()["worker"] == "running", health.text
        assert failures == {"finish": 0, "requeue": 0}
        workers = (await client.get("/api/workers")).json()["items"]
        assert any("disk is full" in (row.get("last_error") or "") for row in workers), workers
    assert len(_image_folders(workspace)) == 1  # exactly once, though the job ran twice


@pytest.mark.anyio
async def test_health_says_so_when_the_worker_thread_is_gone(workspace):
    """A worker the server started that is no longer alive: /health answers 503, status degraded."""
    async with api_client(workspace) as (client, app):
        assert (await client.get("/health")).json()["status"] == "ok"
        from echo_os.api.deps import ApiState

        api: ApiState = app.state.api
        api.worker.stop()
        health = await client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "degraded", health.text
        assert health.json()["worker"] == "stopped"


def test_a_full_disk_while_the_memory_index_saves_keeps_the_image(run_cli, workspace, monkeypatch):
    """The memory index is a cache (rebuilt by `memory reindex`): a full disk while it writes is one
    warning, the image stays saved and recorded, and the next save of the index succeeds. The index's
    file write meets ENOSPC (injected at os.replace of the index's own files: a real full disk needs root)."""
    import os

    from echo_os.memory import index_files as index_module

    real_replace = os.replace

    def full(src, dst, *args, **kwargs):
        if "memory" in str(dst):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(index_module.os, "replace", full)
    code, out, err = run_cli("--home", str(workspace.home), "render", "a lamp", "--engine", "draft", "--size",
                             "64x64", "--json")
    assert code == 0, err
    [row] = json.loads(out)
    assert _catalog_rows(workspace) == [row["id"]] and len(_image_folders(workspace)) == 1


@pytest.mark.anyio
async def test_a_submission_that_meets_a_disk_io_error_is_507(workspace, monkeypatch):
    """Red-team finding: the API answered 500 when jobs.db could not grow (SQLite says "disk I/O error"
    with a few KB free). Injected at JobStore.admit, the one write of a submission."""
    from echo_os.api.jobs import JobStore

    def io_error(self, submissions):
        raise sqlite3.OperationalError("disk I/O error")

    async with api_client(workspace, start_worker=False) as (client, _):
        monkeypatch.setattr(JobStore, "admit", io_error)
        response = await client.post("/api/render", json={"prompt": "x", **DRAFT})
        assert response.status_code == 507, response.text
        assert response.json()["detail"].startswith("the disk is full or cannot be written")
        monkeypatch.undo()
        assert (await client.get("/api/jobs")).json()["items"] == []


@pytest.mark.anyio
async def test_a_real_full_jobs_db_answers_507_and_records_nothing_half(workspace):
    """A full disk on jobs.db for real: SQLite's own SQLITE_FULL (the server's jobs.db may not grow past
    its size: PRAGMA max_page_count on its writer connection). A batch submission, which needs new pages,
    answers 507 with one line; no job, no idempotency key and no plan folder is left; the server stays up
    (/health ok, reads answer); once space is back the same submission under the same key is a 202."""
    async with api_client(workspace, start_worker=False) as (client, app):
        jobs = app.state.api.jobs
        pages = jobs._db.execute("PRAGMA page_count").fetchone()[0]
        jobs._db.execute(f"PRAGMA max_page_count = {pages}")
        body = {"project": "full", "prompts": [f"scene {n}: " + "a long quiet harbour at dawn " * 6
                                               for n in range(300)], "engine": "draft", "size": "64x64"}
        headers = {"Idempotency-Key": "full-disk-1"}
        response = await client.post("/api/batch", json=body, headers=headers)
        assert response.status_code == 507, response.text
        detail = response.json()["detail"]
        assert detail.startswith("the disk is full") and "\n" not in detail, detail
        assert (await client.get("/api/jobs")).json()["items"] == []
        assert not [p for p in (workspace.artifacts_dir / ".jobs").iterdir() if p.is_dir()]  # no plan folder left
        health = await client.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "ok", health.text
        jobs._db.execute("PRAGMA max_page_count = 1073741823")  # space is back
        response = await client.post("/api/batch", json=body, headers=headers)
        assert response.status_code == 202, response.text
        assert len((await client.get("/api/jobs")).json()["items"]) == 1


@pytest.mark.parametrize("failing", ["ids-", "index-", "manifest.json"])
def test_a_full_disk_while_a_memory_command_saves_the_index_is_one_line_and_rebuildable(run_cli, workspace,
                                                                                       monkeypatch, failing):
    """The index is saved by the memory commands (a render only records the artifact). A full disk at any
    file of the save (the vectors' ids, the FAISS index, the manifest that commits them; ENOSPC injected
    at os.replace of that file): one line naming the memory index and `memory reindex`, not the generic
    "nothing was saved"; no temporary or half-generation file is left beside the index; the artifact is
    still saved and recorded; once space is back the next memory command finds it, with no repair."""
    import os

    from echo_os.memory import index_files as index_module

    code, out, err = run_cli("--home", str(workspace.home), "render", "a lamp", "--engine", "draft", "--size",
                             "64x64", "--json")
    assert code == 0, err
    [row] = json.loads(out)
    real_replace = os.replace

    def full(src, dst, *args, **kwargs):
        if "memory" in str(dst) and failing in os.path.basename(str(dst)):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(index_module.os, "replace", full)
    code, out, err = run_cli("--home", str(workspace.home), "memory", "search", "lamp")
    errors = [line for line in err.splitlines() if line.startswith("Error")]
    assert code == 1 and len(errors) == 1 and "memory index" in errors[0] and "memory reindex" in errors[0], err
    assert "Traceback" not in err and "nothing was saved" not in err
    left = [path.name for path in (workspace.artifacts_dir / "memory").rglob("*") if path.is_file()]
    assert not [name for name in left if ".tmp" in name or name.endswith((".npy", ".faiss"))], left
    assert _catalog_rows(workspace) == [row["id"]] and len(_image_folders(workspace)) == 1
    monkeypatch.undo()
    code, out, err = run_cli("--home", str(workspace.home), "memory", "search", "lamp", "--json")
    assert code == 0 and json.loads(out)[0]["id"] == row["id"], err
    assert "repaired" not in err, err
