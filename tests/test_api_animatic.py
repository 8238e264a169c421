"""POST /api/animatic: an animatic as a durable job (202, status, events, cancel, idempotency), the MP4
decoded back with PyAV; and the jobs.db migration that lets the jobs table hold animatic jobs."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import threading

import pytest

from echo_os.api import ApiOptions
from echo_os.settings import Settings
from tests.api_helpers import api_client, parse_sse, wait_job
from tests.helpers import run_cli

pytestmark = pytest.mark.anyio

PROJECT = "Night Ferry"
SIZE = "64x48"
FPS = 8
# scene, description, duration (seconds)
SCENES = [(1, "the ferry leaves the pier", "1"), (2, "lanterns on the water", "0.5"), (3, "fog closes in", "1.5")]
FRAMES = round((1 + 0.5 + 1.5) * FPS)


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
def story_home(tmp_path_factory):
    """A three-scene story rendered by `echo-os batch` with the draft engine (no weights)."""
    home = tmp_path_factory.mktemp("api-animatic") / "ws"
    (home / "story").mkdir(parents=True)
    lines = ["scene,description,duration,motion"] + [f'{n},"{text}",{duration},static' for n, text, duration in SCENES]
    csv_path = home / "story" / "story.csv"
    csv_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, _, err = run_cli("--home", str(home), "batch", PROJECT, str(csv_path), "--engine", "draft", "--size", SIZE,
                           "--clip", "none")
    assert code == 0, err
    return home


def options(**overrides) -> ApiOptions:
    return ApiOptions(**{"batch_window_ms": 0, **overrides})


def animatic_folders(home):
    return sorted((home / "artifacts").glob("*/*/animatic_*"))


async def test_animatic_job_encodes_the_story_and_lists_the_video(story_home):
    from echo_os.artifacts.encode import probe

    before = set(animatic_folders(story_home))
    async with api_client(Settings(home=story_home), options=options()) as (client, app):
        response = await client.post("/api/animatic", json={"project": PROJECT, "fps": FPS, "size": SIZE,
                                                            "fade": 0.25, "captions": True})
        assert response.status_code == 202, response.text
        body = response.json()
        assert (body["scenes"], body["frames"], body["fps"]) == (3, FRAMES, FPS)
        assert response.headers["location"] == body["status_url"] == f"/api/jobs/{body['job_id']}"
        events = parse_sse((await client.get(body["events_url"])).text)
        job = await wait_job(client, body["job_id"])
        assert job["status"] == "succeeded", job
        assert job["kind"] == "animatic" and job["scenes"] == 3 and job["animatic"]["fps"] == FPS
        assert job["progress"]["frames_done"] == job["progress"]["frames_total"] == FRAMES
        assert job["progress"]["images_done"] == job["progress"]["images_total"] == 1
        [artifact_id] = job["artifact_ids"]
        names = [name for name, _ in events]
        assert names[-1] == "succeeded" and names.count("artifact") <= 1, names
        frames_seen = [data["frames_done"] for name, data in events if name == "progress"]
        assert frames_seen == sorted(frames_seen) and (not frames_seen or frames_seen[-1] == FRAMES)
        assert {data["frames_total"] for name, data in events if name == "progress"} <= {FRAMES}
        meta = (await client.get(f"/api/artifacts/{artifact_id}")).json()["meta"]
        assert meta["video_kind"] == "animatic" and meta["frames"] == FRAMES and len(meta["scenes"]) == 3
        mp4 = await client.get(f"/api/artifacts/{artifact_id}/video")
        assert mp4.status_code == 200 and mp4.headers["content-type"] == "video/mp4"
        assert hashlib.sha256(mp4.content).hexdigest() == artifact_id
        part = await client.get(f"/api/artifacts/{artifact_id}/video", headers={"Range": "bytes=0-99"})
        assert part.status_code == 206 and part.content == mp4.content[:100]
        poster = await client.get(f"/api/artifacts/{artifact_id}/image")
        assert poster.status_code == 200 and poster.content.startswith(b"\x89PNG")
        an_image = json.loads(next(story_home.glob("artifacts/*/*/*/image.png")).with_name("meta.json").read_text())
        refused = await client.get(f"/api/artifacts/{an_image['id']}/video")
        assert refused.status_code == 404 and "is an image" in refused.json()["detail"]
    [folder] = set(animatic_folders(story_home)) - before
    video = folder / "animatic.mp4"
    assert hashlib.sha256(video.read_bytes()).hexdigest() == artifact_id
    info = probe(video)
    assert info["frames"] == FRAMES and (info["width"], info["height"]) == (64, 48) and info["fps"] == FPS
    assert info["codec"] == "h264" and (folder / "animatic.srt").is_file()


@pytest.mark.parametrize("patch, field", [
    ({"fps": 0}, "fps"), ({"fps": 500}, "fps"), ({"fps": "24"}, "fps"), ({"size": "65x48"}, "size"),
    ({"size": "big"}, "size"), ({"fade": -1}, "fade"), ({"fade": 2.0}, "fade"), ({"project": ""}, "project"),
    ({"project": "No Such Story"}, "project"), ({"captions": "yes"}, "captions"), ({"story": "/etc/x.csv"}, "story"),
])
async def test_bad_animatic_bodies_are_422_naming_the_field(story_home, patch, field):
    async with api_client(Settings(home=story_home), start_worker=False) as (client, _):
        jobs = (await client.get("/api/jobs")).json()["items"]
        response = await client.post("/api/animatic", json={"project": PROJECT, "fps": FPS, **patch})
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert detail[0]["loc"][:2] == ["body", field], detail
        assert str(story_home) not in response.text  # no server paths
        assert (await client.get("/api/jobs")).json()["items"] == jobs


def _story(home, durations) -> None:
    (home / "story").mkdir(parents=True)
    lines = ["scene,description,duration,motion"] + [f'{n},"scene {n}",{d},static' for n, d in enumerate(durations, 1)]
    (home / "story" / "story.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, _, err = run_cli("--home", str(home), "batch", PROJECT, str(home / "story" / "story.csv"), "--engine",
                           "draft", "--size", SIZE, "--clip", "none")
    assert code == 0, err


async def test_a_video_is_bounded_in_size_rate_length_and_work(story_home, tmp_path):
    """Red-team finding: 8192x8192 at 120 fps was accepted and the worker passed 5.5 GB within a minute.
    Size (and so encoder memory), pixels a second, seconds and pixels in all are bounded, each a 422 (a
    CLI exit 2) naming the field and the limit, before a job exists."""
    long_home, work_home = tmp_path / "long", tmp_path / "work"
    _story(long_home, ["600"] * 7)  # 4,200 s
    _story(work_home, ["500"] * 6)  # 3,000 s
    cases = [(story_home, {"size": "8192x8192", "fps": 120}, "size", "9,437,184"),
             (story_home, {"size": "8192x8192", "fps": 120}, "size", "GB"),
             (story_home, {"size": "3840x2160", "fps": 120}, "fps", "530,841,600"),
             (long_home, {"size": SIZE, "fps": 1}, "project", "at most 3600 s"),
             (work_home, {"size": "1920x1080", "fps": 60}, "fps", "an hour of 1920x1080 at 24 fps")]
    for home, patch, field, said in cases:
        async with api_client(Settings(home=home), start_worker=False) as (client, _):
            jobs = (await client.get("/api/jobs")).json()["items"]
            response = await client.post("/api/animatic", json={"project": PROJECT, **patch})
            assert response.status_code == 422, (patch, response.text)
            detail = response.json()["detail"][0]
            assert detail["loc"][:2] == ["body", field] and said in detail["msg"], (patch, detail)
            assert (await client.get("/api/jobs")).json()["items"] == jobs
    async with api_client(Settings(home=work_home), start_worker=False) as (client, _):  # within the limits
        assert (await client.post("/api/animatic", json={"project": PROJECT, "size": SIZE, "fps": 1})).status_code == 202
    before = animatic_folders(story_home)
    code, out, err = run_cli("--home", str(story_home), "animatic", PROJECT, "--size", "8192x8192", "--fps", "120")
    assert code == 2 and "9,437,184" in err and len(err.strip().splitlines()) == 1, err
    assert animatic_folders(story_home) == before


async def test_a_project_without_scenes_is_a_422_on_project(tmp_path):
    async with api_client(Settings(home=tmp_path), start_worker=False) as (client, _):
        response = await client.post("/api/animatic", json={"project": "Empty"})
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["body", "project"]
        assert "no rendered scenes" in response.json()["detail"][0]["msg"]


async def test_idempotency_key_replays_the_job_and_refuses_another_body(story_home):
    async with api_client(Settings(home=story_home), start_worker=False) as (client, _):
        jobs = len((await client.get("/api/jobs")).json()["items"])
        headers = {"Idempotency-Key": "animatic-1"}
        first = await client.post("/api/animatic", json={"project": PROJECT, "fps": FPS}, headers=headers)
        again = await client.post("/api/animatic", json={"fps": FPS, "project": PROJECT}, headers=headers)
        other = await client.post("/api/animatic", json={"project": PROJECT, "fps": 12}, headers=headers)
        assert first.status_code == 202 and again.status_code == 200
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json()["job_id"] == first.json()["job_id"] and again.json()["frames"] == FRAMES
        assert other.status_code == 409
        assert len((await client.get("/api/jobs")).json()["items"]) == jobs + 1
        await client.post(f"/api/jobs/{first.json()['job_id']}/cancel")  # not run by the tests after this one


@pytest.mark.parametrize("via", ["route", "store"])
async def test_cancel_while_encoding_stops_between_frames_and_writes_nothing(story_home, monkeypatch, via):
    """The encoder is held after its third frame (the real encoder otherwise): a cancel then stops the job
    before the next frame; no artifact, no folder, nothing left in artifacts/.tmp. `store`: the cancel is
    only in jobs.db (asked through another process), which the worker reads between frames."""
    from echo_os.artifacts import encode

    held, release = threading.Event(), threading.Event()
    real_write = encode.Mp4Writer.write

    def write_then_hold(self, rgb):
        real_write(self, rgb)
        if self.frames == 3:
            held.set()
            release.wait(30)

    monkeypatch.setattr(encode.Mp4Writer, "write", write_then_hold)
    before = set(animatic_folders(story_home))
    async with api_client(Settings(home=story_home), options=options()) as (client, app):
        listed = len((await client.get("/api/artifacts", params={"limit": 500})).json()["items"])
        job_id = (await client.post("/api/animatic", json={"project": PROJECT, "fps": FPS})).json()["job_id"]
        assert await asyncio.to_thread(held.wait, 30)
        if via == "route":
            response = await client.post(f"/api/jobs/{job_id}/cancel")
            assert response.status_code == 202 and response.json()["cancel_requested"] is True
        else:
            flagged = await asyncio.to_thread(app.state.api.jobs.request_cancel, job_id)
            assert flagged.status == "running" and flagged.cancel_requested
        stream = asyncio.create_task(client.get(f"/api/jobs/{job_id}/events"))
        release.set()
        job = await wait_job(client, job_id)
        events = parse_sse((await stream).text)
        assert job["status"] == "cancelled" and job["artifact_ids"] == []
        assert events[-1][0] == "cancelled"
        assert len((await client.get("/api/artifacts", params={"limit": 500})).json()["items"]) == listed
    assert set(animatic_folders(story_home)) == before
    assert not any((story_home / "artifacts" / ".tmp").iterdir())


async def test_a_story_gone_by_the_time_the_job_runs_fails_with_one_line(tmp_path):
    home = tmp_path / "ws"
    (home / "story").mkdir(parents=True)
    (home / "story" / "story.csv").write_text('scene,description\n1,"a quiet harbour"\n', encoding="utf-8")
    code, _, err = run_cli("--home", str(home), "batch", "Gone", str(home / "story" / "story.csv"), "--engine",
                           "draft", "--size", SIZE, "--clip", "none")
    assert code == 0, err
    async with api_client(Settings(home=home), start_worker=False) as (client, _):
        job_id = (await client.post("/api/animatic", json={"project": "Gone", "fps": 4})).json()["job_id"]
    for image in (home / "artifacts").glob("*/gone/*/image.png"):
        image.unlink()
    async with api_client(Settings(home=home), options=options()) as (client, _):
        job = await wait_job(client, job_id)
    assert job["status"] == "failed" and job["attempts"] == 1
    assert "\n" not in job["error"] and "missing" in job["error"]
    assert not list((home / "artifacts").glob("*/*/animatic_*"))


# ---- the migration -----------------------------------------------------------------------------------

def _jobs_db_before_animatics(path):
    """jobs.db as the migrations before m003_animatic_jobs left it, with a queued render job (holding an
    idempotency key) and a finished one with a recorded image."""
    from echo_os.api import jobs as jobs_module
    from echo_os.render.requests import RenderRequest
    from echo_os.sqlite import connect

    db = connect(path)
    jobs_module.MIGRATIONS.before("m003_animatic_jobs").migrate(db)
    request = RenderRequest(prompt="an old queued job", engine="draft", width=64, height=64, steps=2)
    spec = json.dumps({"items": [request.model_dump(mode="json")]})
    for seq, (job_id, status) in enumerate((("a" * 32, "succeeded"), ("b" * 32, "queued")), start=1):
        db.execute("INSERT INTO jobs (seq, id, kind, status, request, coalesce_key, images_total, created) "
                   "VALUES (?, ?, 'render', ?, ?, ?, 1, '2026-01-01T00:00:00+00:00')",
                   (seq + 40, job_id, status, spec, jobs_module.coalesce_key(request)))
    db.execute("INSERT INTO job_images VALUES (?, 0, ?, '2026-01-01T00:00:01+00:00')", ("a" * 32, "c" * 64))
    db.execute("INSERT INTO idempotency_keys VALUES ('client:k', 'f', ?, '2999-01-01T00:00:00+00:00')", ("b" * 32,))
    db.execute("UPDATE sqlite_sequence SET seq = 99 WHERE name = 'jobs'")  # rows 42..99 were never kept
    db.close()


def test_migration_lets_jobs_hold_animatics_and_keeps_rows_keys_and_indexes(tmp_path):
    from echo_os.api.jobs import JobStore
    from echo_os.sqlite import applied_migrations

    path = tmp_path / "jobs.db"
    _jobs_db_before_animatics(path)
    store = JobStore(path)
    try:
        db = store._db
        applied = applied_migrations(db)
        assert "m003_animatic_jobs" in applied and applied.index("m003_animatic_jobs") > applied.index("m002_idempotency_keys")
        assert "'animatic'" in db.execute("SELECT sql FROM sqlite_master WHERE name = 'jobs'").fetchone()[0]
        assert {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index' "
                                             "AND tbl_name = 'jobs' AND sql IS NOT NULL")} == {"jobs_status",
                                                                                                "jobs_coalesce"}
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        assert [row[2] for row in db.execute("PRAGMA foreign_key_list(job_images)")] == ["jobs"]
        assert [row[2] for row in db.execute("PRAGMA foreign_key_list(idempotency_keys)")] == ["jobs"]
        assert store.get("a" * 32).artifact_ids == ["c" * 64]
        assert store.find_key("client:k") == ("f", "b" * 32)
        with pytest.raises(sqlite3.IntegrityError):
            db.execute("INSERT INTO jobs (id, kind, status, request, images_total, created) "
                       "VALUES ('x', 'bogus', 'queued', '{}', 1, 'now')")
        claimed = store.claim_next()  # the old queued render job is still claimable
        assert claimed is not None and claimed.id == "b" * 32 and claimed.spec.items[0].prompt == "an old queued job"
        from echo_os.api.jobs import Job, now_iso
        from echo_os.api.specs import AnimaticJobSpec, AnimaticSpec

        store.insert([Job(id="d" * 32, kind="animatic", status="queued", created=now_iso(),
                          spec=AnimaticJobSpec(animatic=AnimaticSpec(project="p", fps=4, fade=0.0, scenes=1, frames=4)))])
        assert db.execute("SELECT seq FROM jobs WHERE id = ?", ("d" * 32,)).fetchone()[0] == 100  # never reused
        assert store.get("d" * 32).kind == "animatic" and store.get("d" * 32).images_total == 1
    finally:
        store.close()
    reopened = JobStore(path)  # applies nothing again
    try:
        assert applied_migrations(reopened._db).count("m003_animatic_jobs") == 1
    finally:
        reopened.close()


async def test_a_queued_job_from_before_the_migration_runs_then_an_animatic_runs(tmp_path, story_home):
    """A jobs.db from before animatic jobs, under a workspace with a rendered story: the server upgrades it,
    renders the old queued job, and runs a new animatic job."""
    home = tmp_path / "ws"
    import shutil

    shutil.copytree(story_home, home, ignore=shutil.ignore_patterns("jobs.db*", "animatic_*"))
    (home / "story").mkdir(exist_ok=True)
    _jobs_db_before_animatics(home / "artifacts" / "jobs.db")
    async with api_client(Settings(home=home), options=options()) as (client, _):
        old = await wait_job(client, "b" * 32)
        assert old["status"] == "succeeded" and old["kind"] == "render" and len(old["artifact_ids"]) == 1
        response = await client.post("/api/animatic", json={"project": PROJECT, "fps": 4, "fade": 0})
        assert response.status_code == 202, response.text
        job = await wait_job(client, response.json()["job_id"])
        assert job["status"] == "succeeded" and len(job["artifact_ids"]) == 1
