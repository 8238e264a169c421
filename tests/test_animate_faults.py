"""`echo-os animate` (and POST /api/animate) under faults (issue 25, "not yet tried"): an engine error
mid-clip, an encoder that fails halfway through the MP4, and a worker process killed with SIGKILL while
it denoises a clip. Each ends with nothing half-written (no clip folder, no catalog row, no partial MP4,
no staging folder) and, where the job is durable, the clip made exactly once."""

from __future__ import annotations

import errno
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from echo_os.settings import Settings
from tests.helpers import run_cli

STEPS, FRAMES = 2, 3
CLIP = ["--model", "tiny-svd", "--frames", str(FRAMES), "--size", "32x32", "--fps", "6", "--device", "cpu"]


@pytest.fixture(scope="module")
def tiny_svd_dir(tmp_path_factory) -> Path:
    from tests.tiny_video import save_tiny_svd

    return save_tiny_svd(tmp_path_factory.mktemp("tiny-svd") / "tiny-svd")


@pytest.fixture
def video_home(tmp_path, tiny_svd_dir) -> tuple[Path, str]:
    """A workspace naming the tiny pipeline `tiny-svd`, with one draft image to animate: (home, its id)."""
    home = tmp_path / "ws"
    home.mkdir()
    (home / "models.toml").write_text(f'[models.tiny-svd]\ntype = "video"\npath = "{tiny_svd_dir.as_posix()}"\n',
                                      encoding="utf-8")
    code, out, err = run_cli("--home", str(home), "render", "a harbour at dawn", "--engine", "draft", "--size",
                             "64x64", "--seed", "3")
    assert code == 0, err
    return home, out.split()[0]


def _state(home: Path) -> tuple[list[str], list[str], list[str]]:
    """(artifact folders, catalog rows, files under the staging folder and stray MP4s)."""
    artifacts = home / "artifacts"
    folders = sorted(str(path.parent.relative_to(artifacts)) for path in artifacts.glob("*/*/*/meta.json"))
    with sqlite3.connect(artifacts / "catalog.db") as db:
        rows = sorted(row[0] for row in db.execute("SELECT id FROM artifacts"))
    stray = sorted(str(path) for path in (artifacts / ".tmp").rglob("*")) if (artifacts / ".tmp").exists() else []
    stray += [str(path) for path in artifacts.rglob("*.mp4") if not (path.parent / "meta.json").exists()]
    return folders, rows, stray


def _clips(home: Path) -> list[Path]:
    return sorted((home / "artifacts").glob("*/*/*/clip.mp4"))


@pytest.mark.parametrize("where", ["denoise", "decode", "encode"])
def test_an_error_mid_clip_leaves_nothing_half_written_and_the_rerun_makes_one(video_home, monkeypatch, where):
    """The engine fails while denoising (a step raises) or decoding (the VAE raises, not an out-of-memory
    the back-off handles), or the disk fills halfway through the MP4 (ENOSPC on the third frame): one line,
    exit 1, no folder, row, partial MP4 or staging file; the same command then makes exactly one clip."""
    from diffusers import StableVideoDiffusionPipeline

    from echo_os.artifacts import encode

    home, image_id = video_home
    before = _state(home)
    if where == "denoise":
        real = StableVideoDiffusionPipeline.__call__

        def failing_call(self, *args, **kwargs):
            def step_end(pipe, step, timestep, values):
                if step == 1:
                    raise RuntimeError("injected failure at step 2")
                return values
            return real(self, *args, **{**kwargs, "callback_on_step_end": step_end,
                                        "callback_on_step_end_tensor_inputs": ["latents"]})
        monkeypatch.setattr(StableVideoDiffusionPipeline, "__call__", failing_call)
    elif where == "decode":
        def failing_decode(self, *args, **kwargs):
            raise RuntimeError("injected VAE failure")
        monkeypatch.setattr(StableVideoDiffusionPipeline, "decode_latents", failing_decode)
    else:
        real_write, written = encode.Mp4Writer.write, [0]

        def failing_write(self, rgb):
            written[0] += 1
            if written[0] == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(self, rgb)
        monkeypatch.setattr(encode.Mp4Writer, "write", failing_write)
    code, out, err = run_cli("--home", str(home), "animate", image_id[:12], *CLIP, "--steps", str(STEPS))
    errors = [line for line in err.splitlines() if line.startswith("Error")]
    assert code == 1 and len(errors) == 1 and "Traceback" not in err, err
    if where == "encode":
        assert "disk is full" in errors[0], errors
    assert _state(home) == before and not _clips(home)
    monkeypatch.undo()
    code, out, err = run_cli("--home", str(home), "animate", image_id[:12], *CLIP, "--steps", str(STEPS))
    assert code == 0, err
    assert len(_clips(home)) == 1 and _state(home)[2] == []


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_an_api_clip_job_that_fails_mid_clip_is_retried_and_saved_once(video_home, monkeypatch):
    """POST /api/animate, the VAE failing once mid-clip: the job's next attempt makes the clip; one clip
    artifact, the job's only one, whose parent is the image; nothing left from the failed try."""
    from diffusers import StableVideoDiffusionPipeline

    from tests.api_helpers import api_client, wait_job

    home, image_id = video_home
    real, failures = StableVideoDiffusionPipeline.decode_latents, [1]

    def flaky(self, *args, **kwargs):
        if failures[0]:
            failures[0] -= 1
            raise RuntimeError("injected VAE failure")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(StableVideoDiffusionPipeline, "decode_latents", flaky)
    body = {"artifact_id": image_id, "model": "tiny-svd", "frames": FRAMES, "steps": STEPS, "size": "32x32",
            "fps": 6, "device": "cpu", "seed": 4}
    async with api_client(Settings(home=home)) as (client, _):
        response = await client.post("/api/animate", json=body)
        assert response.status_code == 202, response.text
        job = await wait_job(client, response.json()["job_id"], timeout=300)
        clips = [row for row in (await client.get("/api/artifacts", params={"limit": 50})).json()["items"]
                 if row.get("kind") == "video"]
    assert job["status"] == "succeeded" and job["attempts"] == 2 and failures == [0], job
    assert [row["id"] for row in clips] == job["artifact_ids"] and len(clips) == 1
    assert len(_clips(home)) == 1 and _state(home)[2] == []


@pytest.mark.slow  # a server and its worker process start twice on 2 shared cores (2-5 min under load)
@pytest.mark.timeout(900)
def test_kill_9_of_a_worker_mid_clip_makes_the_clip_exactly_once(video_home):
    """`serve --workers 1`, a clip job of 60 denoising steps; the worker process is killed with SIGKILL
    while it denoises (after its first progress event). The job goes back to the queue without spending an
    attempt, the restarted worker makes the clip, and there is exactly one clip: no half-written folder."""
    import httpx

    from tests.test_api_server import start_server, wait_jobs

    home, image_id = video_home
    server = start_server(home, "--workers", "1", "--max-batch", "1")
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            body = {"artifact_id": image_id, "model": "tiny-svd", "frames": FRAMES, "steps": 60, "size": "32x32",
                    "fps": 6, "device": "cpu", "seed": 4}
            response = http.post("/api/animate", json=body)
            assert response.status_code == 202, response.text
            job_id = response.json()["job_id"]
            deadline = time.monotonic() + 240
            while True:  # denoising: some steps done, the clip not saved
                job = http.get(f"/api/jobs/{job_id}").json()
                if job["status"] == "running" and (job["progress"].get("step") or 0) >= 1:
                    break
                assert time.monotonic() < deadline and job["status"] not in ("succeeded", "failed"), job
                time.sleep(0.02)
            assert not job["artifact_ids"], job
            worker_pid = http.get("/api/workers").json()["items"][0]["pid"]
            os.kill(worker_pid, signal.SIGKILL)
            done = wait_jobs(http, [job_id], timeout=600)[job_id]
            clips = [row for row in http.get("/api/artifacts", params={"limit": 50}).json()["items"]
                     if row.get("kind") == "video"]
    finally:
        server.stop()
    assert done["status"] == "succeeded" and (done["attempts"], done["interruptions"]) == (1, 1), done
    assert len(clips) == 1 and [row["id"] for row in clips] == done["artifact_ids"]
    assert len(_clips(home)) == 1 and _state(home)[2] == []
