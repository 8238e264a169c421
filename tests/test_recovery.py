"""Crash recovery: staging folders owned by their writer, a corrupt catalog or jobs.db, a lost meta.json."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from echo_os.artifacts import store as store_module
from echo_os.artifacts.store import ArtifactStore
from tests.helpers import save_draft


@pytest.fixture
def anyio_backend():
    return "asyncio"


# ---- item 4: reindex during a render ---------------------------------------------------------------

def test_reindex_during_a_render_keeps_its_staging_folder(workspace, monkeypatch):
    """A render in another thread is half way through writing its staging folder when reindex runs."""
    store = ArtifactStore(workspace)
    save_draft(store, "already here")
    writing, reindexed = threading.Event(), threading.Event()
    real_write = store_module._write_durably

    def slow_write(path, data):
        if path.name == "image.png" and not writing.is_set():
            writing.set()
            assert reindexed.wait(30)
        return real_write(path, data)

    monkeypatch.setattr(store_module, "_write_durably", slow_write)
    outcome: dict = {}

    def render_in_background():
        try:
            outcome["saved"] = save_draft(ArtifactStore(workspace), "in progress", count=2)
        except BaseException as error:  # noqa: BLE001 - reported to the test below
            outcome["error"] = error

    thread = threading.Thread(target=render_in_background)
    thread.start()
    assert writing.wait(30)
    other = ArtifactStore(workspace)  # a second store (as `echo-os artifacts reindex` makes) cleans on start too
    assert other.reindex() == 1
    reindexed.set()
    thread.join(60)
    assert "error" not in outcome, outcome.get("error")
    assert len(outcome["saved"]) == 2
    assert other.reindex() == 3
    assert [p.name for p in (workspace.artifacts_dir / ".tmp").iterdir()] == []
    other.close()
    store.close()


_HOLD_STAGING = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from echo_os.artifacts.store import staging_folder
    with staging_folder(Path(sys.argv[1])) as folder:
        (folder / "image.png").write_bytes(b"half")
        print(folder, flush=True)
        time.sleep(600)
""")


def test_staging_of_a_live_process_survives_and_of_a_killed_one_is_cleaned_on_start(workspace):
    staging = workspace.artifacts_dir / ".tmp"
    process = subprocess.Popen([sys.executable, "-c", _HOLD_STAGING, str(staging)], stdout=subprocess.PIPE,
                               text=True)
    try:
        folder = type(staging)(process.stdout.readline().strip())
        assert folder.is_dir() and folder.name.startswith(f"{process.pid}-")
        store = ArtifactStore(workspace)  # start: cleans orphans only
        assert store.reindex() == 0
        assert folder.is_dir(), "reindex removed the staging folder of a live writer"
        store.close()
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    ArtifactStore(workspace).close()  # a fresh start after the kill -9
    assert not folder.exists()
    assert list(staging.iterdir()) == []


# ---- item 5: a corrupt catalog.db or jobs.db ---------------------------------------------------------

def _two_artifacts(workspace) -> list[str]:
    store = ArtifactStore(workspace)
    ids = [artifact.id for artifact in save_draft(store, "a keeper's lamp", count=2)]
    store.close()
    return ids


def _spoil(path, content: bytes) -> None:
    for suffix in ("-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    path.write_bytes(content)


GARBAGE = b"this is not a database at all\x00\xff" * 200


@pytest.mark.parametrize("command", [["artifacts", "list"], ["artifacts", "reindex"],
                                     ["render", "after the damage", "--engine", "draft", "--size", "64x64"]])
def test_garbage_catalog_is_moved_aside_and_rebuilt(run_cli, workspace, caplog, command):
    ids = _two_artifacts(workspace)
    _spoil(workspace.catalog_path, GARBAGE)
    code, out, err = run_cli("--home", str(workspace.home), *command)
    assert code == 0, err
    [moved] = workspace.artifacts_dir.glob("catalog.db.corrupt-*")
    assert moved.read_bytes() == GARBAGE
    warnings = [r.getMessage() for r in caplog.records if "catalog.db" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert moved.name in warnings[0] and "rebuilt" in warnings[0]
    code, out, err = run_cli("--home", str(workspace.home), "artifacts", "list", "--json")
    listed = {row["id"] for row in __import__("json").loads(out)}
    assert set(ids) <= listed


def test_empty_catalog_file_with_artifacts_is_rebuilt(run_cli, workspace, caplog):
    ids = _two_artifacts(workspace)
    _spoil(workspace.catalog_path, b"")
    code, out, err = run_cli("--home", str(workspace.home), "artifacts", "list")
    assert code == 0, err
    assert "no artifacts yet" not in err
    assert all(artifact_id[:12] in out for artifact_id in ids)
    assert any("missing or empty" in r.getMessage() for r in caplog.records)


def test_a_busy_catalog_is_not_taken_for_a_corrupt_one(workspace):
    """Only SQLITE_CORRUPT / SQLITE_NOTADB quarantine: a locked or unreadable file is someone else's problem."""
    import sqlite3

    from echo_os.dbfile import is_corruption

    assert not is_corruption(sqlite3.OperationalError("database is locked"))
    _two_artifacts(workspace)
    _spoil(workspace.catalog_path, GARBAGE)
    try:
        sqlite3.connect(workspace.catalog_path).execute("PRAGMA user_version")
    except sqlite3.DatabaseError as error:
        assert is_corruption(error)
    else:
        pytest.fail("garbage opened as a database")


def _foreign_sqlite(path, *, claims_migrated: bool = False) -> None:
    """An SQLite file that is not echo-os's: `create table artifacts(x)`; with claims_migrated, a
    _migrations table that says every migration ran (so only the columns tell)."""
    import sqlite3

    from echo_os.artifacts.catalog import MIGRATIONS

    for suffix in ("-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    path.unlink(missing_ok=True)
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE artifacts(x)")
    db.execute("CREATE TABLE jobs(x)")
    if claims_migrated:
        db.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied TEXT NOT NULL)")
        db.executemany("INSERT INTO _migrations VALUES (?, 'then')", [(name,) for name in MIGRATIONS.names])
    db.commit()
    db.close()


@pytest.mark.parametrize("damage", ["foreign", "foreign-migrated", "folder"])
@pytest.mark.parametrize("command", [["artifacts", "list", "--json"], ["artifacts", "reindex"]])
def test_a_catalog_that_is_not_ours_is_moved_aside_and_rebuilt(run_cli, workspace, caplog, damage, command):
    """Red-team finding: a catalog.db that is SQLite but not ours (`create table artifacts(x)`) blocked
    every command, `artifacts reindex` included; a folder named catalog.db gave rc 1 naming no path. Both
    are moved aside as a corrupt file is, and the catalog rebuilt from the folders."""
    import json

    ids = _two_artifacts(workspace)
    path = workspace.catalog_path
    if damage == "folder":
        for suffix in ("", "-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
        path.mkdir()
        (path / "inside.txt").write_text("kept", encoding="utf-8")
    else:
        _foreign_sqlite(path, claims_migrated=damage == "foreign-migrated")
    code, out, err = run_cli("--home", str(workspace.home), *command)
    assert code == 0, err
    [moved] = [found for found in workspace.artifacts_dir.glob("catalog.db.corrupt-*")
               if not found.name.endswith(("-wal", "-shm"))]
    assert (moved / "inside.txt").is_file() if damage == "folder" else moved.is_file()
    warnings = [r.getMessage() for r in caplog.records if "catalog.db" in r.getMessage()]
    assert len(warnings) == 1 and moved.name in warnings[0] and "rebuilt" in warnings[0], warnings
    code, out, err = run_cli("--home", str(workspace.home), "artifacts", "list", "--json")
    assert code == 0 and set(ids) <= {row["id"] for row in json.loads(out)}, err


def test_a_jobs_db_that_is_not_ours_is_moved_aside(workspace):
    from echo_os.api.jobs import JobStore

    jobs_db = workspace.artifacts_dir / "jobs.db"
    jobs_db.parent.mkdir(parents=True, exist_ok=True)
    _foreign_sqlite(jobs_db)
    store = JobStore(jobs_db)
    try:
        assert store.quarantined is not None and "not echo-os's" in store.corruption
        assert store.counts()["queued"] == 0
    finally:
        store.close()


@pytest.mark.anyio
async def test_corrupt_jobs_db_is_quarantined_and_the_server_says_so(workspace, caplog):
    from tests.api_helpers import api_client

    jobs_db = workspace.artifacts_dir / "jobs.db"
    jobs_db.parent.mkdir(parents=True, exist_ok=True)
    jobs_db.write_bytes(GARBAGE)
    async with api_client(workspace, start_worker=False) as (client, _):
        listed = await client.get("/api/jobs")
    assert listed.status_code == 200 and listed.json()["items"] == []
    [moved] = workspace.artifacts_dir.glob("jobs.db.corrupt-*")
    assert moved.read_bytes() == GARBAGE
    loud = [r for r in caplog.records if "jobs.db" in r.getMessage() and r.levelname == "ERROR"]
    assert len(loud) == 1 and moved.name in loud[0].getMessage() and "EMPTY" in loud[0].getMessage()


# ---- item 6: a missing meta.json ---------------------------------------------------------------------

def _batch(run_cli, home, prompts) -> dict:
    code, out, err = run_cli("--home", str(home), "batch", "animals", f"@{prompts}", "--engine", "draft", "--json")
    assert code == 0, err
    return __import__("json").loads(out)


def test_missing_meta_json_is_restored_by_show_from_the_png(run_cli, workspace):
    import json

    [artifact] = save_draft(ArtifactStore(workspace), "a heron in fog")
    original = json.loads(artifact.meta_path.read_text(encoding="utf-8"))
    artifact.meta_path.unlink()
    code, out, err = run_cli("--home", str(workspace.home), "artifacts", "show", artifact.id[:12])
    assert code == 0, err
    shown = json.loads(out)
    assert shown["id"] == artifact.id and shown["prompt"] == "a heron in fog"
    restored = json.loads(artifact.meta_path.read_text(encoding="utf-8"))
    for meta in (original, restored):  # save_s is measured after the PNG (and its chunk) is made
        meta["timings"].pop("save_s", None)
    assert restored == original


def test_show_refuses_to_restore_from_a_changed_png(run_cli, workspace):
    [artifact] = save_draft(ArtifactStore(workspace), "a heron in fog")
    artifact.meta_path.unlink()
    artifact.image_path.write_bytes(artifact.image_path.read_bytes() + b"tampered")
    code, out, err = run_cli("--home", str(workspace.home), "artifacts", "show", artifact.id[:12])
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "no longer matches" in err and "Traceback" not in err
    assert not artifact.meta_path.exists()


def test_reindex_refuses_to_restore_from_a_changed_png(run_cli, workspace, caplog):
    """Red-team finding: `artifacts reindex` restored meta.json from a modified PNG under a new id (the
    README says a changed PNG is not restored from). The catalog's id for the folder is the check."""
    [artifact, kept] = save_draft(ArtifactStore(workspace), "a heron in fog", count=2)
    artifact.meta_path.unlink()
    artifact.image_path.write_bytes(artifact.image_path.read_bytes() + b"tampered")
    code, out, err = run_cli("--home", str(workspace.home), "artifacts", "reindex")
    assert code == 0, err
    assert not artifact.meta_path.exists()  # nothing restored from it
    code, out, err = run_cli("--home", str(workspace.home), "artifacts", "list", "--json")
    assert [row["id"] for row in __import__("json").loads(out)] == [kept.id]
    assert any("no longer matches" in record.getMessage() for record in caplog.records)


def test_reindex_restores_meta_json_and_batch_does_not_render_it_again(run_cli, workspace):
    prompts = workspace.home / "prompts.txt"
    prompts.write_text("a fox in the snow\na hare at dusk\n", encoding="utf-8")
    first = _batch(run_cli, workspace.home, prompts)
    assert first["rendered"] == 2
    victim = first["artifacts"][1]
    meta_path = type(workspace.home)(victim["path"]) / "meta.json"
    meta_path.unlink()
    code, out, err = run_cli("--home", str(workspace.home), "artifacts", "reindex")
    assert code == 0, err
    assert "catalog rebuilt: 2 artifacts (1 meta.json restored)" in out
    assert f"restored {meta_path}" in err
    assert meta_path.is_file()
    second = _batch(run_cli, workspace.home, prompts)
    assert (second["rendered"], second["resumed"]) == (0, 2)
