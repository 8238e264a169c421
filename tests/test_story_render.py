"""Story rendering on the tiny pipeline: scene order, meta, story.json, contact sheet, replay of batched
scenes, resume, OOM back-off, IP-Adapter with a tiny adapter and image encoder, the continuity report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from echo_os.settings import Settings
from tests.helpers import run_cli

REF_SCALE = 1.0

BIBLE = """---
title: Harbour Watch
model: tiny
defaults:
  steps: 2
  cfg: 5.0
  size: 64x64
  scheduler: euler
style:
  prompt: documentary photo
  negative: text
characters:
  keeper:
    name: Elias Marr
    description: an old keeper in a navy peacoat
    seed: 1868
    reference: refs/keeper.png
    ip_adapter_scale: 1.0
  gull:
    name: Gull
    description: a herring gull
    seed: 77
locations:
  quay: a stone quay
---
The keeper and the gull.
"""

CSV = """scene,slug,description,characters,location,camera,lighting,props,count
1,morning,he checks the lamp,keeper,quay,medium shot,golden light,,
2,squall,he watches the squall,keeper,quay,wide shot,grey light,,2
3,gull-alone,the gull on a bollard,gull,quay,close up,flat light,,
4,empty-quay,nobody on the quay at night,,quay,wide shot,moonlight,,
"""


run = run_cli  # `echo-os ...` in-process through the real error boundary


def write_story(folder: Path) -> Path:
    from PIL import Image

    (folder / "refs").mkdir(parents=True)
    noise = np.random.RandomState(7).randint(0, 256, size=(48, 48, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "refs" / "keeper.png")
    (folder / "STORY_BIBLE.md").write_text(BIBLE, encoding="utf-8")
    (folder / "story.csv").write_text(CSV, encoding="utf-8")
    return folder / "story.csv"


@pytest.fixture(scope="module")
def story_ws(tmp_path_factory, tiny_sdxl_dir):
    """A workspace with the tiny SDXL, a tiny IP-Adapter (tiny-ip) and a tiny CLIP (tiny-clip)."""
    from tests.tiny_models import TINY_IP_ADAPTER_FILE, save_tiny_clip, save_tiny_ip_adapter

    home = tmp_path_factory.mktemp("story-ws")
    save_tiny_ip_adapter(home / "tiny-ip", tiny_sdxl_dir / "unet")
    save_tiny_clip(home / "tiny-clip")
    (home / "models.toml").write_text(
        f'[models.tiny]\ntype = "sdxl"\npath = "{tiny_sdxl_dir.as_posix()}"\n\n'
        f'[models.tiny-ip]\ntype = "ip-adapter"\npath = "tiny-ip"\nweight_name = "{TINY_IP_ADAPTER_FILE}"\n\n'
        '[models.tiny-clip]\ntype = "clip"\npath = "tiny-clip"\n', encoding="utf-8")
    return Settings(home=home)


@pytest.fixture(scope="module")
def story_run(story_ws, tmp_path_factory):
    """The story rendered once through `echo-os batch --json` (5 images, 2 pipeline calls)."""
    csv = write_story(tmp_path_factory.mktemp("story"))
    with pytest.MonkeyPatch.context() as patch:  # the real HF cache must not offer a CLIP model
        patch.setenv("HF_HUB_CACHE", str(tmp_path_factory.mktemp("empty-hf")))
        code, out, err = run("--home", str(story_ws.home), "batch", "Harbour Watch", str(csv), "--ip-adapter",
                             "tiny-ip", "--json")
    assert code == 0, err
    return {"settings": story_ws, "csv": csv, "result": json.loads(out), "stderr": err}


def _meta(row: dict) -> dict:
    return json.loads((Path(row["path"]) / "meta.json").read_text(encoding="utf-8"))


def test_scenes_render_in_order_one_artifact_per_image(story_run):
    result = story_run["result"]
    assert "engine: cpu (" in story_run["stderr"]
    rows = result["artifacts"]
    assert [(r["scene"], r["slug"]) for r in rows] == [(1, "morning"), (2, "squall"), (2, "squall"),
                                                       (3, "gull-alone"), (4, "empty-quay")]
    for row in rows:
        name = Path(row["path"]).name
        assert re.fullmatch(rf"{row['scene']:03d}-{row['slug']}_\d{{4}}-\d\d-\d\d_\d\d-\d\d-\d\d(-\d+)?", name), name
        assert Path(row["path"]).parent.name == "harbour-watch"
    # count 2: two images of scene 2, seeds s and s+1
    assert rows[2]["seed"] == rows[1]["seed"] + 1
    assert result["rendered"] == 5 and result["resumed"] == 0
    # the most images one call rendered (5 images in 2 calls), not the CPU cap of 16
    assert result["batch_sizes"] == {"cpu": 3}


def test_meta_has_the_story_fields(story_run):
    rows = story_run["result"]["artifacts"]
    meta = _meta(rows[0])
    story = meta["story"]
    assert story["scene"] == 1 and story["slug"] == "morning" and story["characters"] == ["keeper"]
    assert story["location"] == "quay" and story["camera"] == "medium shot" and story["lighting"] == "golden light"
    assert story["props"] == [] and story["description"] == "he checks the lamp" and len(story["bible_hash"]) == 64
    assert meta["prompt"] == ("documentary photo, an old keeper in a navy peacoat, a stone quay, he checks the lamp, "
                              "medium shot, golden light")
    assert len(meta["request_key"]) == 64
    # the keeper's scenes carry the reference image, the others do not
    adapter = meta["request"]["ip_adapter"]
    assert adapter["model"] == "tiny-ip" and adapter["references"][0]["name"] == "keeper"
    assert adapter["references"][0]["scale"] == REF_SCALE and len(adapter["references"][0]["images"][0]["sha256"]) == 64
    assert meta["ip_adapter"]["name"] == "tiny-ip" and len(meta["ip_adapter"]["weights_sha256"]) == 64
    assert _meta(rows[3])["request"]["ip_adapter"] is None and _meta(rows[3])["ip_adapter"] is None
    # scenes 1 and 2 (same adapter set) shared one pipeline call of 3 images
    assert [_meta(r)["batch"]["size"] for r in rows] == [3, 3, 3, 2, 2]


def test_story_json_maps_scenes_to_artifacts(story_run):
    result = story_run["result"]
    story = json.loads(Path(result["story_json"]).read_text(encoding="utf-8"))
    assert Path(result["story_json"]).parent == Path(result["artifacts"][0]["path"]).parent
    assert [s["scene"] for s in story["scenes"]] == [1, 2, 3, 4]
    ids = [row["id"] for row in result["artifacts"]]
    assert [a for s in story["scenes"] for a in s["artifacts"]] == ids
    assert story["scenes"][1]["artifacts"] == ids[1:3]
    assert story["bible"]["sha256"] == _meta(result["artifacts"][0])["story"]["bible_hash"]
    settings = story["settings"]
    assert settings["engines"][0]["name"] == "cpu" and settings["sizes"] == ["64x64"] and settings["steps"] == [2]
    assert settings["ip_adapter"] == "tiny-ip" and settings["clip"] == "tiny-clip"
    assert story["contact_sheet"] == "contact-sheet.png"
    assert story["continuity"]["characters"][0]["id"] == "keeper"
    assert story["run"]["rendered"] == 5


def test_contact_sheet_shows_every_image(story_run):
    from PIL import Image

    from echo_os.story import contact_sheet as sheet

    path = Path(story_run["result"]["contact_sheet"])
    assert path.name == "contact-sheet.png" and path.parent == Path(story_run["result"]["story_json"]).parent
    with Image.open(path) as image:
        # 5 images: 4 columns, 2 rows of square cells
        assert image.width == 2 * sheet.MARGIN + 4 * (sheet.THUMB_WIDTH + 2 * sheet.PAD) + 3 * sheet.GAP
        assert image.height > 2 * sheet.THUMB_WIDTH
        assert image.mode == "RGB"


def test_continuity_report_with_a_tiny_clip(story_run):
    continuity = story_run["result"]["continuity"]
    assert continuity["model"] == "tiny-clip" and continuity["note"] is None
    keeper, gull = continuity["characters"]
    assert keeper["id"] == "keeper" and keeper["scenes"] == [1, 2] and keeper["images"] == 3
    assert keeper["scene_pairs"] == 2  # scene 1 with each image of scene 2; not the two images of scene 2
    for key in ("scene_similarity", "reference_similarity"):  # computed (not left None), and a cosine
        assert isinstance(keeper[key], float) and -1.0 <= keeper[key] <= 1.0, key
    assert gull["scene_similarity"] is None and gull["reference_similarity"] is None  # one scene, no reference


def test_replay_of_a_batched_scene_matches(story_run):
    """Scene 2's second image was rendered in a batch of 3 with the IP-Adapter; alone it is the same."""
    settings = story_run["settings"]
    row = story_run["result"]["artifacts"][2]
    code, out, err = run("--home", str(settings.home), "replay", row["id"], "--json")
    assert code == 0, err
    assert json.loads(out)["max_pixel_diff"] <= 1


def test_ip_adapter_changes_the_image_and_its_embedding_is_cached(story_run):
    from echo_os.engines import ip_adapter
    from echo_os.engines.sdxl import SDXLEngine
    from echo_os.render.requests import RenderRequest

    settings = story_run["settings"]
    cache = sorted((settings.cache_dir / ip_adapter.CACHE_FOLDER).glob("*.safetensors"))
    assert len(cache) == 1  # one reference image, encoded once for all three images of the keeper
    mtime = cache[0].stat().st_mtime_ns

    meta = _meta(story_run["result"]["artifacts"][0])
    with_reference = RenderRequest.model_validate(meta["request"])
    without = with_reference.model_copy(update={"ip_adapter": None})
    engine = SDXLEngine(settings, name="cpu", force_device="cpu")
    loaded = engine.loaded(with_reference)
    loaded.ip_adapter.embeddings.clear()  # force a read from disk
    encodes = []  # calls that encode an image (the pipeline itself calls it to lay out given embeddings)
    real_prepare = loaded.pipe.prepare_ip_adapter_image_embeds

    def counting_prepare(*args, **kwargs):
        if kwargs.get("ip_adapter_image", args[0] if args else None) is not None:
            encodes.append(1)
        return real_prepare(*args, **kwargs)

    loaded.pipe.prepare_ip_adapter_image_embeds = counting_prepare
    try:
        before = engine.render([without])[0].images[0].image
        conditioned = engine.render([with_reference])[0].images[0].image
        after = engine.render([without])[0].images[0].image
    finally:
        del loaded.pipe.prepare_ip_adapter_image_embeds
    pixels = lambda image: np.asarray(image, dtype=np.int16)  # noqa: E731 - a one-line helper local to this test
    assert np.abs(pixels(conditioned) - pixels(before)).max() > 10, "the reference image had no effect"
    assert np.abs(pixels(after) - pixels(before)).max() == 0, "unloading the adapter did not restore the pipeline"
    assert encodes == [] and cache[0].stat().st_mtime_ns == mtime  # the cached embedding was reused


def test_missing_adapter_fails_before_anything_renders(story_run):
    settings = story_run["settings"]
    before = sorted(settings.artifacts_dir.glob("*/*/*/image.png"))
    code, out, err = run("--home", str(settings.home), "batch", "Other", str(story_run["csv"]),
                         "--ip-adapter", "no-such-adapter")
    assert code == 2
    assert "reference images need the IP-Adapter model 'no-such-adapter'" in err and "--ip-adapter none" in err
    assert sorted(settings.artifacts_dir.glob("*/*/*/image.png")) == before


def test_rerun_renders_nothing_twice(story_run):
    """Last in this module: the same command again finds every image (and writes story.json again)."""
    settings = story_run["settings"]
    first = story_run["result"]
    code, out, err = run("--home", str(settings.home), "batch", "Harbour Watch", str(story_run["csv"]),
                         "--ip-adapter", "tiny-ip", "--clip", "none", "--json")
    assert code == 0, err
    again = json.loads(out)
    assert again["rendered"] == 0 and again["resumed"] == 5
    assert [r["id"] for r in again["artifacts"]] == [r["id"] for r in first["artifacts"]]
    assert all(r["resumed"] for r in again["artifacts"])
    assert again["continuity"]["note"] == "--clip none"
    assert len(list(settings.artifacts_dir.glob("*/harbour-watch/*/image.png"))) == 5


# ---- resume after a kill ---------------------------------------------------------------------------

def test_resume_renders_only_what_is_missing(workspace):
    from echo_os.artifacts.store import ArtifactStore

    prompts = workspace.home / "prompts.txt"
    prompts.write_text("a fox in the snow\na hare at dusk --seed 3\na heron in fog\n", encoding="utf-8")
    home = str(workspace.home)
    code, out, err = run("--home", home, "batch", "animals", f"@{prompts}", "--engine", "draft", "--json")
    assert code == 0, err
    first = json.loads(out)
    assert first["rendered"] == 3

    # A kill before scene 2 was saved: its folder is not there (and the catalog is rebuilt from disk).
    victim = Path(first["artifacts"][1]["path"])
    victim_key = _meta(first["artifacts"][1])["request_key"]
    for child in victim.iterdir():
        child.unlink()
    victim.rmdir()
    store = ArtifactStore(workspace)
    store.reindex()
    store.close()

    code, out, err = run("--home", home, "batch", "animals", f"@{prompts}", "--engine", "draft", "--json")
    assert code == 0, err
    second = json.loads(out)
    assert (second["rendered"], second["resumed"]) == (1, 2)
    assert [r["resumed"] for r in second["artifacts"]] == [True, False, True]
    assert _meta(second["artifacts"][1])["request_key"] == victim_key  # the same image, made again
    folders = sorted(p.parent.name for p in workspace.artifacts_dir.glob("*/animals/*/image.png"))
    assert [name[:3] for name in folders] == ["001", "002", "003"]

    # A kill between the folder's rename and its catalog row: the folder is found, not rendered again.
    store = ArtifactStore(workspace)
    store.catalog.delete(first["artifacts"][2]["id"])
    store.close()
    code, out, err = run("--home", home, "batch", "animals", f"@{prompts}", "--engine", "draft", "--json")
    assert code == 0, err
    assert json.loads(out)["rendered"] == 0
    store = ArtifactStore(workspace)
    assert store.catalog.count() == 3
    store.close()


# ---- OOM back-off ----------------------------------------------------------------------------------

def _oom_engine(settings, *, fits: int, needs_tiling: bool = False):
    """The real sdxl engine with a fault injected: CUDA out-of-memory for calls above `fits` images
    (or for any call without VAE tiling, which comes with each call)."""
    import torch

    from echo_os.engines.sdxl import SDXLEngine

    class OutOfMemoryEngine(SDXLEngine):
        calls: list[tuple[int, bool]] = []

        def render(self, requests, **kwargs):
            images = sum(r.count for r in requests)
            tiling = kwargs.get("vae_tiling", False)
            self.calls.append((images, tiling))
            if images > fits or (needs_tiling and not tiling):
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return super().render(requests, **kwargs)

    return OutOfMemoryEngine(settings, name="cpu", reason="fault injection", force_device="cpu")


TINY = dict(model="tiny", width=64, height=64, steps=2, cfg=5.0, engine="cpu", device="cpu", project="oom")


def _render_buoys(settings, engine, count: int, batch_size: int):
    """`count` images of one request through the scheduler with `engine`, into the workspace's store."""
    from echo_os.artifacts.store import ArtifactStore
    from echo_os.render.requests import RenderRequest
    from echo_os.render.scheduler import render_requests

    store = ArtifactStore(settings)
    try:
        return render_requests(settings, [RenderRequest(prompt="a red buoy", seed=10, count=count, **TINY)],
                               store=store, batch_size=batch_size, engine=engine)
    finally:
        store.close()


def test_out_of_memory_halves_the_batch_and_loses_nothing(tiny_workspace):
    engine = _oom_engine(tiny_workspace, fits=2)
    outcome = _render_buoys(tiny_workspace, engine, count=5, batch_size=4)
    assert engine.calls == [(4, False), (2, False), (2, False), (1, False)]
    assert sorted(a.meta.seed for a in outcome.artifacts) == [10, 11, 12, 13, 14]
    assert outcome.notes == ["out of GPU memory with 4 images per call; retrying with 2"]


def test_out_of_memory_at_one_image_turns_on_vae_tiling(tiny_workspace):
    from echo_os.iterate.replay import replay_artifact

    engine = _oom_engine(tiny_workspace, fits=16, needs_tiling=True)
    outcome = _render_buoys(tiny_workspace, engine, count=2, batch_size=2)
    assert engine.calls == [(2, False), (1, False), (1, True), (1, True)]
    assert not hasattr(engine, "vae_tiling")  # per call, never state on the shared engine
    # The back-off was for that group: the next render with the same engine tries a whole decode first again.
    engine.calls.clear()
    _render_buoys(tiny_workspace, engine, count=1, batch_size=1)
    assert engine.calls == [(1, False), (1, True)]
    assert len(outcome.artifacts) == 2 and all(a.meta.vae_tiling for a in outcome.artifacts)
    assert outcome.notes[-1] == "out of GPU memory with 1 image per call; retrying with VAE tiling"
    assert replay_artifact(tiny_workspace, outcome.artifacts[1].id).max_pixel_diff == 0


def _overlapping(engine, slow_first: float = 0.0):
    """Wrap engine.render to count the calls running at once (engine.peak); the first call waits
    `slow_first` seconds before it renders, so the calls after it finish first."""
    import threading
    import time

    render, lock = engine.render, threading.Lock()
    engine.peak, running, started = 0, [0], [0]

    def counted(requests, **kwargs):
        with lock:
            running[0] += 1
            started[0] += 1
            first = started[0] == 1
            engine.peak = max(engine.peak, running[0])
        try:
            if first:
                time.sleep(slow_first)
            return render(requests, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    engine.render = counted
    return engine


def test_an_engine_with_concurrent_calls_gets_them_at_once_and_they_are_saved_in_call_order(tiny_workspace):
    """An engine with `concurrent_calls` (serve --ray's RayEngine: one per actor) is given that many pipeline
    calls at once; the images are saved in call order although a later call finishes first, and a call
    out of memory is rendered again, smaller, before the calls after it are saved."""
    engine = _overlapping(_oom_engine(tiny_workspace, fits=2), slow_first=0.5)
    engine.concurrent_calls = 2
    outcome = _render_buoys(tiny_workspace, engine, count=5, batch_size=2)
    assert engine.peak == 2 and sorted(engine.calls) == [(1, False), (2, False), (2, False)]
    assert [a.meta.seed for a in outcome.artifacts] == [10, 11, 12, 13, 14]
    folders = [a.path.name for a in outcome.artifacts]
    assert folders == sorted(folders)

    # Four images out of memory while the call of the fifth runs: the four go again, two by two, first.
    engine = _oom_engine(tiny_workspace, fits=2)
    engine.concurrent_calls = 2
    outcome = _render_buoys(tiny_workspace, engine, count=5, batch_size=4)
    assert sorted(engine.calls) == [(1, False), (2, False), (2, False), (4, False)]
    assert engine.calls.index((4, False)) < engine.calls.index((2, False))
    assert [a.meta.seed for a in outcome.artifacts] == [10, 11, 12, 13, 14]
    folders = [a.path.name for a in outcome.artifacts]
    assert folders == sorted(folders)
    assert outcome.notes == ["out of GPU memory with 4 images per call; retrying with 2"]
    assert len(list(tiny_workspace.artifacts_dir.glob("*/*/*/image.png"))) == 10  # each image once, both runs


def test_out_of_memory_with_tiling_stops_with_one_line(tiny_workspace):
    from echo_os.artifacts.store import ArtifactStore
    from echo_os.render.requests import RenderRequest
    from echo_os.render.scheduler import OutOfMemoryError, render_requests

    engine = _oom_engine(tiny_workspace, fits=0)
    store = ArtifactStore(tiny_workspace)
    try:
        with pytest.raises(OutOfMemoryError, match="even with VAE tiling.*run the same command again"):
            render_requests(tiny_workspace, [RenderRequest(prompt="a red buoy", seed=10, count=2, **TINY)],
                            store=store, batch_size=2, engine=engine)
    finally:
        store.close()
    assert engine.calls == [(2, False), (1, False), (1, True)]


# ---- pieces ----------------------------------------------------------------------------------------

def test_draft_fallback_renders_the_example_story(workspace):
    """No weights: `auto` falls back to draft cards; the story still gets its sheet and story.json."""
    example = Path(__file__).resolve().parent.parent / "prompts" / "lighthouse-keeper" / "story.csv"
    code, out, err = run("--home", str(workspace.home), "batch", "Lighthouse Keeper", str(example))
    assert code == 0, err
    assert "engine: draft (auto: first available in the order sdxl, comfyui, openai, cpu, draft" in err
    assert "no weights for model 'sdxl'" in err
    lines = out.splitlines()
    assert [line[:3] for line in lines[:4]] == ["001", "002", "003", "004"]
    assert lines[4].startswith("4 rendered, 0 already rendered")
    story_json = Path(lines[5].removeprefix("story: "))
    sheet = Path(lines[6].removeprefix("contact sheet: "))
    assert story_json.is_file() and sheet.is_file() and sheet.parent == story_json.parent
    assert lines[7] == "continuity: skipped (the images are draft cards, not diffusion renders)"
    story = json.loads(story_json.read_text(encoding="utf-8"))
    assert [s["slug"] for s in story["scenes"]] == ["golden-morning", "storm-approach", "storm-climax", "calm-dawn"]
    assert story["settings"]["ip_adapter"] is None


def test_no_clip_model_skips_the_report_with_a_note(workspace):
    from echo_os.story.continuity import find_clip_model

    name, folder, note = find_clip_model(workspace, None)
    assert name is None and folder is None
    assert note.startswith("no CLIP model on this machine (clip-vit-l-14: not in the local Hugging Face cache")
    assert "echo-os models pull clip-vit-l-14" in note
    assert find_clip_model(workspace, "none") == (None, None, "--clip none")


def test_continuity_numbers_from_an_embedder():
    from PIL import Image

    from echo_os.story.continuity import CastEntry, CastImage, continuity_report

    red, also_red, blue = (Image.new("RGB", (8, 8), colour) for colour in ((250, 10, 10), (240, 20, 10), (10, 10, 250)))

    def mean_colour(images):
        return np.stack([np.asarray(image, dtype=np.float64).mean(axis=(0, 1)) for image in images])

    cast = [CastEntry(id="a", name="A", images=[CastImage(1, red), CastImage(2, also_red), CastImage(2, red)],
                      references=[blue])]
    [result] = continuity_report(cast, mean_colour, model="colour").characters
    assert result.scene_pairs == 2 and result.scene_similarity > 0.99
    assert result.reference_similarity < 0.2


def test_auto_batch_size_from_free_memory():
    from echo_os.engines.base import BaseEngine, Capabilities
    from echo_os.engines.sdxl import MemoryInfo
    from echo_os.render.requests import RenderRequest
    from echo_os.render.scheduler import GIB, auto_batch_size, estimate_batch_size

    assert estimate_batch_size(4 * GIB, 1024, 1024) == 1
    assert estimate_batch_size(40 * GIB, 1024, 1024) == 8
    assert estimate_batch_size(40 * GIB, 512, 512) > estimate_batch_size(40 * GIB, 1024, 1024)

    class Engine(BaseEngine):
        name = "fake"
        capabilities = Capabilities(max_batch=16)

        def __init__(self, free):
            self.free = free

        def free_memory(self, request):
            return None if self.free is None else MemoryInfo(free_bytes=self.free, dtype="bfloat16")

    request = RenderRequest(prompt="x", width=1024, height=1024)
    assert auto_batch_size(Engine(None), request) == 16
    assert 1 <= auto_batch_size(Engine(40 * GIB), request) <= 16
    assert auto_batch_size(Engine(1 * GIB), request) == 1


def test_auto_batch_size_on_cpu_is_one_above_tiny_sizes(tmp_path):
    """The CPU engine batches only tiny images, where batching measured faster (benchmarks/RESULTS.md)."""
    from echo_os.engines.draft import DraftEngine
    from echo_os.engines.sdxl import SDXLEngine
    from echo_os.render.requests import RenderRequest
    from echo_os.render.scheduler import CPU_BATCH_MAX_PIXELS, auto_batch_size
    from echo_os.settings import load_settings

    engine = SDXLEngine(load_settings(tmp_path, env={}), name="cpu", force_device="cpu")
    assert engine.runs_on_cpu(RenderRequest(prompt="x"))
    assert auto_batch_size(engine, RenderRequest(prompt="x", width=512, height=512)) == 1
    assert auto_batch_size(engine, RenderRequest(prompt="x", width=128, height=128)) == 1
    assert 64 * 64 <= CPU_BATCH_MAX_PIXELS < 128 * 128
    assert auto_batch_size(engine, RenderRequest(prompt="x", width=64, height=64)) == engine.capabilities.max_batch
    draft = DraftEngine()
    assert auto_batch_size(draft, RenderRequest(prompt="x", width=512, height=512)) == draft.capabilities.max_batch


def test_catalog_migration_backfills_request_keys(tmp_path):
    """A catalog made before the request_key column gets it, filled from each row's meta.json copy."""
    import sqlite3

    from echo_os.artifacts import catalog as catalog_module

    path = tmp_path / "catalog.db"
    db = sqlite3.connect(path, isolation_level=None)
    catalog_module.MIGRATIONS[0](db)  # as the numbered scheme made it
    db.execute("PRAGMA user_version = 1")
    meta = {"id": "ab" * 32, "request_key": "cd" * 32, "project": "p"}
    db.execute("INSERT INTO artifacts (num, id, created, project, engine, prompt, seed, width, height, path, meta) "
               "VALUES (1, ?, '2026-01-01', 'p', 'draft', 'x', 1, 8, 8, 'a/p/001-x', ?)", (meta["id"], json.dumps(meta)))
    db.close()
    catalog = catalog_module.Catalog(path)
    try:
        assert catalog.db.execute("PRAGMA user_version").fetchone()[0] == len(catalog_module.MIGRATIONS)
        found = catalog.by_request_keys("p", ["cd" * 32, "ef" * 32])
        assert list(found) == ["cd" * 32] and found["cd" * 32].id == "ab" * 32
        assert catalog.by_request_keys("other", ["cd" * 32]) == {}
    finally:
        catalog.close()


def test_a_count_preview_keeps_the_whole_story_in_story_json_and_the_contact_sheet(workspace, tmp_path):
    """Issue 24, bug 10: `batch story.csv --count 2` after a full run (or before one) does not shrink
    story.json or the contact sheet to 2 scenes, so the next animatic still has every rendered scene."""
    import json

    from PIL import Image

    from tests.helpers import run_cli

    csv = tmp_path / "story.csv"
    csv.write_text("scene,slug,description\n1,dawn,the quay at dawn\n2,noon,the quay at noon\n"
                   "3,dusk,the quay at dusk\n4,night,the quay at night\n", encoding="utf-8")

    def batch(*extra: str) -> dict:
        code, out, err = run_cli("--home", str(workspace.home), "batch", "quay", str(csv), "--engine", "draft",
                                 "--size", "64x64", "--ip-adapter", "none", "--json", *extra)
        assert code == 0, err
        return json.loads(out)

    preview = batch("--count", "2")
    story = json.loads(Path(preview["story_json"]).read_text(encoding="utf-8"))
    assert [s["scene"] for s in story["scenes"]] == [1, 2]  # nothing else is rendered yet
    full = batch()
    with Image.open(full["contact_sheet"]) as whole:
        whole_size = whole.size
    again = batch("--count", "2")
    assert (again["rendered"], again["resumed"]) == (0, 2)
    story = json.loads(Path(again["story_json"]).read_text(encoding="utf-8"))
    assert [s["scene"] for s in story["scenes"]] == [1, 2, 3, 4]
    assert [s["artifacts"] for s in story["scenes"]] == [s["artifacts"] for s in json.loads(
        Path(full["story_json"]).read_text(encoding="utf-8"))["scenes"]]
    with Image.open(again["contact_sheet"]) as sheet:
        assert sheet.size == whole_size  # four scenes drawn, not two
