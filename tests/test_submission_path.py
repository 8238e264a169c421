"""The submission path (issue 25, section 4): the server's jobs.db commits never run a WAL checkpoint
(a thread of its own does, echo_os.sqlite.BackgroundCheckpointer), and every job answered 202 is still
in jobs.db after kill -9 of the server in the middle of a burst of submissions."""

from __future__ import annotations

import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from echo_os.api.jobs import Job, JobStore, new_job_id, now_iso
from echo_os.api.specs import RenderSpec
from echo_os.render.requests import RenderRequest
from tests.test_api_server import TINY, start_server, tiny_home


def _job(i: int) -> Job:
    return Job(id=new_job_id(), kind="render", status="queued", created=now_iso(),
               spec=RenderSpec(items=(RenderRequest(prompt=f"a lighthouse {i}", model="tiny"),)))


def test_commits_leave_checkpoints_to_the_background_thread(tmp_path):
    path = tmp_path / "jobs.db"
    store = JobStore(path, checkpoint_in_background=True)
    try:
        assert store._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0  # no commit checkpoints
        before = path.stat().st_size
        for i in range(150):  # about 1,300 WAL pages: SQLite's auto-checkpoint would have run in a commit
            store.insert([_job(i)])
        deadline = time.monotonic() + 30
        while path.stat().st_size < before + 150 * 600:  # the jobs' rows reached the main file
            assert time.monotonic() < deadline, "the background checkpointer never moved the WAL into jobs.db"
            time.sleep(0.1)
    finally:
        store.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 150
    db.close()


def test_every_accepted_job_survives_kill_9_during_a_burst(tmp_path_factory, tiny_sdxl_dir):
    """200 submissions from 10 clients (background checkpoints run meanwhile), kill -9 at once after
    the last answer: every job id answered 202 is in jobs.db."""
    home = tiny_home(tmp_path_factory, tiny_sdxl_dir, "burst")
    server = start_server(home, "--workers", "0")
    accepted: list[str] = []
    try:
        def submit(n: int) -> list[str]:
            with httpx.Client(base_url=server.url, timeout=60) as http:
                ids = []
                for i in range(20):
                    response = http.post("/api/render", json={"prompt": f"burst {n} {i}", **TINY})
                    assert response.status_code == 202, response.text
                    ids.append(response.json()["job_id"])
                return ids

        with ThreadPoolExecutor(10) as pool:
            for ids in pool.map(submit, range(10)):
                accepted += ids
    finally:
        server.kill()
    db = sqlite3.connect(home / "artifacts" / "jobs.db")
    stored = {row[0] for row in db.execute("SELECT id FROM jobs")}
    db.close()
    assert len(accepted) == 200 and set(accepted) <= stored
