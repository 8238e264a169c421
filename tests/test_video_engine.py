"""The `video` engine (Stable Video Diffusion) on a tiny random-weight pipeline loaded through models.toml,
and `echo-os animate` / `echo-os animatic --clips` on top of it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import run_cli
from tests.test_animatic import FPS, PROJECT, SIZE, write_csv

STEPS, FRAMES = 2, 3


@pytest.fixture(scope="module")
def tiny_svd_dir(tmp_path_factory) -> Path:
    from tests.tiny_video import save_tiny_svd

    return save_tiny_svd(tmp_path_factory.mktemp("tiny-svd") / "tiny-svd")


@pytest.fixture(scope="module")
def video_home(tmp_path_factory, tiny_svd_dir) -> Path:
    """A workspace naming the tiny pipeline `tiny-svd` (type video), with a draft-rendered story."""
    home = tmp_path_factory.mktemp("video") / "ws"
    home.mkdir()
    (home / "models.toml").write_text(f'[models.tiny-svd]\ntype = "video"\npath = "{tiny_svd_dir.as_posix()}"\n',
                                      encoding="utf-8")
    csv_path = write_csv(home / "story")
    code, _, err = run_cli("--home", str(home), "batch", PROJECT, str(csv_path), "--engine", "draft",
                           "--size", f"{SIZE[0]}x{SIZE[1]}", "--clip", "none")
    assert code == 0, err
    return home


def test_engine_clip_equals_a_direct_pipeline_call(video_home, tiny_svd_dir):
    import torch
    from diffusers import StableVideoDiffusionPipeline

    from echo_os.engines.video import VideoEngine
    from echo_os.render.requests import ClipRequest
    from echo_os.settings import Settings

    image = torch.rand(1, 3, 32, 32, generator=torch.Generator("cpu").manual_seed(0))
    request = ClipRequest(seed=7, model="tiny-svd", frames=FRAMES, fps=7, steps=STEPS, width=32, height=32,
                          decode_chunk_size=2, device="cpu")
    steps_seen = []
    clip = VideoEngine(Settings(home=video_home)).render_clip(image, request, progress=lambda e: steps_seen.append(e.step))
    assert steps_seen == [1, 2]
    assert len(clip.frames) == FRAMES and clip.frames[0].size == (32, 32)
    assert clip.runtime.model.name == "tiny-svd" and clip.runtime.model.weights_sha256

    direct = StableVideoDiffusionPipeline.from_pretrained(tiny_svd_dir, local_files_only=True)
    direct.set_progress_bar_config(disable=True)
    expected = direct(image, height=32, width=32, num_frames=FRAMES, num_inference_steps=STEPS, fps=7,
                      motion_bucket_id=127, noise_aug_strength=0.02, decode_chunk_size=2,
                      generator=torch.Generator("cpu").manual_seed(7), output_type="pil").frames[0]
    for ours, theirs in zip(clip.frames, expected):
        assert np.array_equal(np.asarray(ours), np.asarray(theirs))


def test_cancel_stops_the_clip(video_home):
    import threading

    import torch

    from echo_os.engines.video import VideoEngine
    from echo_os.errors import CancelledError
    from echo_os.render.requests import ClipRequest
    from echo_os.settings import Settings

    cancel = threading.Event()
    cancel.set()
    with pytest.raises(CancelledError):
        VideoEngine(Settings(home=video_home)).render_clip(
            torch.rand(1, 3, 32, 32), ClipRequest(seed=1, model="tiny-svd", frames=2, steps=STEPS, width=32,
                                                  height=32, device="cpu"), cancel=cancel)


def _story(home: Path) -> dict:
    return json.loads(next((home / "artifacts").glob("*/*/story.json")).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def animated(video_home):
    scene_one = _story(video_home)["scenes"][0]["artifacts"][0]
    code, out, err = run_cli("--home", str(video_home), "animate", scene_one[:12], "--model", "tiny-svd",
                             "--frames", str(FRAMES), "--steps", str(STEPS), "--size", "32x32", "--fps", "6",
                             "--device", "cpu")
    assert code == 0, err
    clip_id = out.split()[0]
    return video_home, scene_one, clip_id


def test_animate_makes_a_clip_artifact_with_its_parent(animated):
    from echo_os.artifacts.encode import probe
    from echo_os.artifacts.store import ArtifactStore
    from echo_os.settings import Settings

    home, parent, clip_id = animated
    store = ArtifactStore(Settings(home=home))
    try:
        clip = store.open(clip_id)
    finally:
        store.close()
    meta = clip.meta
    assert meta.kind == "video" and meta.video_kind == "clip" and meta.parent_id == parent
    parent_meta = json.loads((home / "artifacts" / _story(home)["scenes"][0]["paths"][0] / "meta.json").read_text())
    assert parent_meta["id"] == parent
    assert meta.seed == parent_meta["seed"]  # no --seed: the image's own
    assert meta.story.scene == 1 and meta.model.name == "tiny-svd" and meta.settings["frames"] == FRAMES
    info = probe(clip.path / "clip.mp4")
    assert (info["codec"], info["pix_fmt"], info["width"], info["height"], info["frames"], info["fps"]) == \
        ("h264", "yuv420p", 32, 32, FRAMES, 6)
    assert clip.path.name.startswith("001-") and (clip.path / "poster.png").is_file()


def test_animatic_with_clips_plays_the_clip(animated):
    from echo_os.artifacts.encode import read_frames

    home, parent, clip_id = animated
    code, out, err = run_cli("--home", str(home), "animatic", PROJECT, "--fps", str(FPS), "--fade", "0",
                             "--clips", "--json")
    assert code == 0, err
    meta = json.loads(out)
    first = meta["scenes"][0]
    assert first["clip"].startswith(clip_id) and first["motion"] == "clip" and first["source"] == parent
    assert first["clip"] in meta["sources"]
    assert all(scene["clip"] is None for scene in meta["scenes"][1:])
    video = next(p for p in (home / "artifacts").glob("*/*/animatic_*/animatic.mp4")
                 if json.loads((p.parent / "meta.json").read_text())["id"] == meta["id"])
    frames = read_frames(video)
    clip_frames = read_frames(next((home / "artifacts").glob("*/*/001-*-clip_*/clip.mp4")))
    from PIL import Image

    def scaled(array):
        return np.asarray(Image.fromarray(array).resize(SIZE, Image.Resampling.BILINEAR), dtype=np.float32)

    # scene 1 lasts 1 s at 12 fps over a 6 fps clip of 3 frames: frame 0 shows clip frame 0, frame 11 the last.
    still = np.asarray(Image.open(next((home / "artifacts").glob("*/*/001-*/image.png"))).convert("RGB"),
                       dtype=np.float32)
    assert np.abs(frames[0] - scaled(clip_frames[0])).mean() < np.abs(frames[0] - still).mean()
    assert np.abs(frames[11] - scaled(clip_frames[-1])).mean() < 12


def test_animate_bad_input_exits_2(video_home, tmp_path):
    scene_one = _story(video_home)["scenes"][0]["artifacts"][0]
    for args, named in ((["--frames", "1"], "--frames"), (["--motion-bucket", "5000"], "--motion-bucket"),
                        (["--size", "30x30"], "--size"), (["--model", "sdxl"], "not an image-to-video")):
        code, out, err = run_cli("--home", str(video_home), "animate", scene_one[:12], "--device", "cpu", *args)
        assert code == 2 and out == "" and named in err and err.count("\n") == 1, (args, err)


def test_video_model_entry_rules(tmp_path):
    from echo_os.errors import UsageError
    from echo_os.models.registry import parse_models_document

    entries = parse_models_document({"models": {"v": {"type": "video", "hf": "org/svd"}}}, tmp_path / "m.toml")
    assert entries["v"].type == "video"
    with pytest.raises(UsageError, match="a video model is a diffusers pipeline folder"):
        parse_models_document({"models": {"v": {"type": "video", "file": "x.safetensors"}}}, tmp_path / "m.toml")


def test_verify_and_pull_know_video_pipelines(video_home):
    from echo_os.models.pull import select_pull_files
    from echo_os.models.registry import load_registry
    from echo_os.settings import Settings

    code, out, err = run_cli("--home", str(video_home), "models", "verify", "tiny-svd")
    assert code == 0, err
    assert "pipeline class StableVideoDiffusionPipeline" in out and out.rstrip().endswith("OK")

    svd = load_registry(Settings(home=video_home)).get("svd")  # variant fp16
    index = {"_class_name": "StableVideoDiffusionPipeline", "feature_extractor": ["transformers", "CLIPImageProcessor"],
             "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
             "scheduler": ["diffusers", "EulerDiscreteScheduler"],
             "unet": ["diffusers", "UNetSpatioTemporalConditionModel"], "vae": ["diffusers", "AutoencoderKLTemporalDecoder"]}
    repo = ["model_index.json", "svd.safetensors", "feature_extractor/preprocessor_config.json",
            "image_encoder/config.json", "image_encoder/model.fp16.safetensors", "image_encoder/model.safetensors",
            "scheduler/scheduler_config.json", "unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors",
            "unet/diffusion_pytorch_model.safetensors", "vae/config.json", "vae/diffusion_pytorch_model.fp16.safetensors"]
    assert sorted(select_pull_files(svd, repo, index)) == sorted([
        "model_index.json", "feature_extractor/preprocessor_config.json", "image_encoder/config.json",
        "image_encoder/model.fp16.safetensors", "scheduler/scheduler_config.json", "unet/config.json",
        "unet/diffusion_pytorch_model.fp16.safetensors", "vae/config.json", "vae/diffusion_pytorch_model.fp16.safetensors"])


def test_out_of_memory_while_decoding_halves_the_chunk(video_home, monkeypatch):
    """An OOM in the VAE decode (simulated: the real decode refuses chunks over 1) is retried with half the
    chunk, without denoising again; the runtime records the chunk that worked."""
    import torch

    from echo_os.engines.video import VideoEngine
    from echo_os.render.requests import ClipRequest
    from echo_os.settings import Settings

    engine = VideoEngine(Settings(home=video_home))
    request = ClipRequest(seed=3, model="tiny-svd", frames=FRAMES, steps=1, width=32, height=32,
                          decode_chunk_size=FRAMES, device="cpu")
    pipe = engine.loaded(request).pipe
    real_decode, chunks, steps = pipe.decode_latents, [], []

    def decode_latents(latents, num_frames, decode_chunk_size):
        chunks.append(decode_chunk_size)
        if decode_chunk_size > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_decode(latents, num_frames, decode_chunk_size)

    monkeypatch.setattr(pipe, "decode_latents", decode_latents)
    clip = engine.render_clip(torch.rand(1, 3, 32, 32), request, progress=lambda event: steps.append(event.step))
    assert chunks == [3, 1] and clip.runtime.decode_chunk_size == 1
    assert steps == [1] and len(clip.frames) == FRAMES  # denoised once


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_animate_is_an_api_job_with_progress(video_home):
    """POST /api/animate: a clip job (kind "clip") rendered by the video engine through the renderer, with
    step progress events, the clip recorded as the job's artifact; bad fields are 422s naming them."""
    import asyncio

    from echo_os.settings import Settings
    from tests.api_helpers import api_client, parse_sse, wait_job

    scene_two = _story(video_home)["scenes"][1]["artifacts"][0]
    body = {"artifact_id": scene_two, "model": "tiny-svd", "frames": FRAMES, "steps": STEPS, "size": "32x32",
            "fps": 6, "device": "cpu", "seed": 4}
    async with api_client(Settings(home=video_home)) as (client, _):
        for patch, field in (({"frames": 1}, "frames"), ({"motion_bucket": 5000}, "motion_bucket"),
                             ({"model": "nosuch"}, "model"), ({"size": "30x30"}, "size")):
            response = await client.post("/api/animate", json={**body, **patch})
            assert response.status_code == 422, (patch, response.text)
            assert response.json()["detail"][0]["loc"] == ["body", field], response.text
        response = await client.post("/api/animate", json=body)
        assert response.status_code == 202, response.text
        events, job = await asyncio.gather(client.get(response.json()["events_url"]),
                                           wait_job(client, response.json()["job_id"], timeout=300))
        assert job["status"] == "succeeded" and job["kind"] == "clip", job
        [clip_id] = job["artifact_ids"]
        meta = (await client.get(f"/api/artifacts/{clip_id}")).json()["meta"]
        clip_again = await client.post("/api/animate", json={**body, "artifact_id": clip_id})
    assert meta["kind"] == "video" and meta["video_kind"] == "clip" and meta["parent_id"] == scene_two
    assert meta["engine"]["name"] == "video" and meta["seed"] == 4 and meta["frames"] == FRAMES
    steps = [data["step"] for name, data in parse_sse(events.text) if name == "progress"]
    assert steps and steps[-1] == STEPS and steps == sorted(steps)
    assert clip_again.status_code == 422 and clip_again.json()["detail"][0]["loc"] == ["body", "artifact_id"]


def test_migration_lets_jobs_hold_clip_jobs_and_keeps_the_rows(tmp_path):
    """m008: a jobs.db from before clip jobs (its jobs table already rebuilt once by m003, so SQLite keeps
    its statement as CREATE TABLE "jobs") takes kind 'clip', keeping rows and indexes."""
    import sqlite3

    from echo_os.api import jobs as jobs_module
    from echo_os.api.jobs import Job, JobStore, now_iso
    from echo_os.api.specs import ClipSpec
    from echo_os.render.requests import RenderRequest
    from echo_os.sqlite import applied_migrations, connect

    path = tmp_path / "jobs.db"
    db = connect(path)
    jobs_module.MIGRATIONS.before("m008_clip_jobs").migrate(db)
    request = RenderRequest(prompt="an old job", engine="draft", width=64, height=64, steps=2)
    db.execute("INSERT INTO jobs (id, kind, status, request, coalesce_key, images_total, created) "
               "VALUES (?, 'render', 'queued', ?, ?, 1, '2026-01-01T00:00:00+00:00')",
               ("a" * 32, json.dumps({"items": [request.model_dump(mode="json")]}), jobs_module.coalesce_key(request)))
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("INSERT INTO jobs (id, kind, status, request, images_total, created) "
                   "VALUES ('x', 'clip', 'queued', '{}', 1, 'now')")
    db.close()
    store = JobStore(path)
    try:
        assert "m008_clip_jobs" in applied_migrations(store._db)
        assert {row[0] for row in store._db.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND "
                                                    "tbl_name = 'jobs' AND sql IS NOT NULL")} == {"jobs_status",
                                                                                                  "jobs_coalesce"}
        assert store.get("a" * 32).spec.items[0].prompt == "an old job"
        store.insert([Job(id="c" * 32, kind="clip", status="queued", created=now_iso(),
                          spec=ClipSpec(items=(request.model_copy(update={"prompt": "a clip"}),)))])
        assert store.get("c" * 32).kind == "clip"
    finally:
        store.close()


def test_animate_resumes_like_batch(video_home, tmp_path):
    """A clip cut short (Ctrl-C: the cancel path) leaves nothing; the same command then renders it; run again
    it is shown as already rendered (same id, no second folder); --again renders anew."""
    import shutil
    import threading

    from echo_os.artifacts.store import ArtifactStore
    from echo_os.errors import CancelledError
    from echo_os.motion.clips import make_clip
    from echo_os.render.requests import ClipRequest
    from echo_os.settings import Settings

    home = tmp_path / "ws"
    shutil.copytree(video_home, home)  # the module's workspace keeps its clips as they are
    scene_one = _story(home)["scenes"][0]["artifacts"][0]
    args = ("--home", str(home), "animate", scene_one[:12], "--model", "tiny-svd", "--frames", "2", "--steps",
            str(STEPS), "--size", "32x32", "--seed", "77", "--device", "cpu")

    def clips() -> list[Path]:
        return sorted(path.parent for path in (home / "artifacts").glob("*/*/*/clip.mp4")
                      if json.loads((path.parent / "meta.json").read_text())["seed"] == 77)

    cancel = threading.Event()
    store = ArtifactStore(Settings(home=home))
    try:
        with pytest.raises(CancelledError):
            make_clip(Settings(home=home), scene_one, ClipRequest(seed=77, model="tiny-svd", frames=2, steps=STEPS,
                                                                  width=32, height=32, device="cpu"),
                      store=store, cancel=cancel, progress=lambda event: cancel.set())
    finally:
        store.close()
    assert clips() == []
    code, out, err = run_cli(*args)
    assert code == 0 and "already rendered" not in out, err
    first = out.split()[0]
    assert len(clips()) == 1
    code, out, err = run_cli(*args)
    assert code == 0 and out.split()[0] == first and "(already rendered)" in out, (out, err)
    assert len(clips()) == 1
    code, out, err = run_cli(*args, "--again")
    assert code == 0 and "already rendered" not in out, err
    assert len(clips()) == 2
