"""Mesh and sound artifacts from the draft engines (no weights): the folders, what they record, catalog,
memory, replay, resume and the command line (`render --type 3d_model`, `--type audio --seconds`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest


def render_json(run_cli, home: Path, prompt: str, *extra: str) -> list[dict]:
    code, out, err = run_cli("--home", str(home), "render", prompt, "--seed", "3", "--json", *extra)
    assert code == 0, err
    return json.loads(out)


def test_render_3d_model_writes_a_placeholder_glb_with_its_counts(workspace, run_cli) -> None:
    import trimesh

    [shown] = render_json(run_cli, workspace.home, "sword design", "--type", "3d_model", "-o", "formats=obj")
    folder = Path(shown["path"])
    meta = json.loads((folder / "meta.json").read_text())
    assert (meta["kind"], meta["engine"]["name"], meta["placeholder"], meta["file"]) == (
        "mesh", "draft-mesh", True, "mesh.glb")
    glb = folder / "mesh.glb"
    assert meta["id"] == hashlib.sha256(glb.read_bytes()).hexdigest() == shown["id"]
    scene = trimesh.load(glb)
    assert scene.metadata["prompt"] == "sword design" and scene.metadata["placeholder"] is True
    mesh = scene.to_geometry() if hasattr(scene, "to_geometry") else scene.dump(concatenate=True)
    assert (len(mesh.vertices), len(mesh.faces)) == (meta["vertices"], meta["faces"]) and meta["faces"] > 12
    assert (folder / "mesh.obj").exists() and meta["request"]["seed"] == 3 and meta["request"]["output"] == "mesh"
    from PIL import Image

    with Image.open(folder / "image.png") as preview:  # the turntable sheet
        assert preview.size == (meta["width"], meta["height"]) and len(set(preview.convert("L").getdata())) > 10
    assert_turntable_mp4(folder, meta)


def assert_turntable_mp4(folder: Path, meta: dict) -> None:
    """turntable.mp4 decodes as H.264 with the frame count and rate meta.json records: one turn, the mesh
    seen from a different side in each quarter (the frames differ), the first and last frames a step apart."""
    from echo_os.artifacts.assets import TURNTABLE_FPS, TURNTABLE_FRAMES
    from echo_os.artifacts.encode import probe, read_frames

    assert (meta["turntable"], meta["turntable_frames"], meta["turntable_fps"]) == (
        "turntable.mp4", TURNTABLE_FRAMES, TURNTABLE_FPS)
    info = probe(folder / "turntable.mp4")
    assert (info["codec"], info["frames"], info["fps"]) == ("h264", TURNTABLE_FRAMES, TURNTABLE_FPS)
    frames = read_frames(folder / "turntable.mp4")
    quarter = TURNTABLE_FRAMES // 4
    assert len(frames) == TURNTABLE_FRAMES
    assert np.abs(frames[0].astype(int) - frames[quarter].astype(int)).mean() > 1.0
    assert frames[0].std() > 5  # the mesh is drawn, not an empty background


def test_render_audio_writes_a_quiet_flac_of_the_asked_length(workspace, run_cli) -> None:
    import soundfile

    from echo_os.artifacts.assets import samples_hash

    [shown] = render_json(run_cli, workspace.home, "rain on a tin roof, distant thunder", "--type", "audio",
                          "--seconds", "1.5", "-o", "sample_rate=8000")
    folder = Path(shown["path"])
    meta = json.loads((folder / "meta.json").read_text())
    samples, rate = soundfile.read(folder / "sound.flac", dtype="float32", always_2d=True)
    assert (meta["kind"], meta["placeholder"], meta["sample_rate"], meta["channels"]) == ("audio", True, 8000, 1)
    assert rate == 8000 and len(samples) == 12000 and meta["duration_s"] == 1.5
    assert 0.01 < np.abs(samples).max() < 0.08  # quiet: about -24 dBFS
    assert meta["content_sha256"] == samples_hash(samples)
    assert meta["id"] == hashlib.sha256((folder / "sound.flac").read_bytes()).hexdigest()


def test_bad_asset_options_are_one_line(workspace, run_cli) -> None:
    for args, words in ((("--seconds", "3"), "--seconds is the length of a sound"),
                        (("--type", "audio", "--seconds", "9999"), "--seconds"),
                        (("--type", "3d_model", "-o", "formats=fbx"), "fbx")):
        code, out, err = run_cli("--home", str(workspace.home), "render", "x", *args)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and words in err, err
    assert not list(workspace.home.rglob("meta.json"))


@pytest.mark.parametrize("kind", ["3d_model", "audio"])
def test_replay_gives_the_same_content_and_resume_finds_it(workspace, run_cli, kind) -> None:
    [first] = render_json(run_cli, workspace.home, "a lantern", "--type", kind)
    code, out, err = run_cli("--home", str(workspace.home), "replay", first["id"], "--json")
    assert code == 0, err
    report = json.loads(out)
    meta = json.loads((Path(first["path"]) / "meta.json").read_text())
    assert report["content_matches"] is True and report["content_sha256"] == meta["content_sha256"]
    assert report["max_pixel_diff"] == 0
    [again] = render_json(run_cli, workspace.home, "a lantern", "--type", kind)  # the same request: resumed
    assert again["id"] == first["id"] and again["already_rendered"] is True
    # another seed is another mesh or sound
    [other] = render_json(run_cli, workspace.home, "a lantern", "--type", kind, "--seed", "4")
    other_meta = json.loads((Path(other["path"]) / "meta.json").read_text())
    assert other_meta["content_sha256"] != meta["content_sha256"]


def test_assets_are_in_the_catalog_and_found_by_prompt_in_memory(workspace, run_cli) -> None:
    from echo_os.artifacts.store import ArtifactStore

    mesh = render_json(run_cli, workspace.home, "a bronze sword with a ruby pommel", "--type", "3d_model")[0]
    sound = render_json(run_cli, workspace.home, "rain on a tin roof, distant thunder", "--type", "audio",
                        "--seconds", "0.5")[0]
    store = ArtifactStore(workspace)
    try:
        assert store.open(mesh["id"]).meta.kind == "mesh" and store.open(sound["id"]).meta.kind == "audio"
        assert store.catalog.count() == 2
    finally:
        store.close()
    code, out, err = run_cli("--home", str(workspace.home), "memory", "search", "thunderstorm rain", "-k", "1",
                             "--json")
    assert code == 0, err
    assert json.loads(out)[0]["id"] == sound["id"]
    code, out, err = run_cli("--home", str(workspace.home), "memory", "search", "sword blade", "-k", "1", "--json")
    assert json.loads(out)[0]["id"] == mesh["id"]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_api_render_with_type_makes_a_mesh_and_a_sound(workspace, anyio_backend) -> None:
    from tests.api_helpers import api_client, wait_job

    async with api_client(workspace) as (client, _):
        bad = await client.post("/api/render", json={"prompt": "x", "type": "image", "seconds": 3})
        assert bad.status_code == 422 and "seconds" in bad.text, bad.text
        bad = await client.post("/api/render", json={"prompt": "x", "type": "hologram"})
        assert bad.status_code == 422 and "type" in bad.text
        kinds = {}
        for body in ({"prompt": "sword design", "type": "3d_model", "seed": 1, "count": 2},
                     {"prompt": "rain on a tin roof", "type": "audio", "seconds": 0.5, "seed": 1}):
            response = await client.post("/api/render", json=body)
            assert response.status_code == 202, response.text
            job = await wait_job(client, response.json()["job_id"])
            assert job["status"] == "succeeded", job
            for artifact_id in job["artifact_ids"]:
                meta = (await client.get(f"/api/artifacts/{artifact_id}")).json()["meta"]
                kinds.setdefault(meta["kind"], []).append(meta)
        assert [m["seed"] for m in kinds["mesh"]] == [1, 2] and kinds["audio"][0]["duration_s"] == 0.5
        assert kinds["mesh"][0]["engine"]["name"] == "draft-mesh" and kinds["audio"][0]["placeholder"] is True
        # the gallery served over HTTP serves what a mesh's and a sound's cards link (and nothing else new)
        page = await client.get("/api/gallery", follow_redirects=True)
        assert page.status_code == 200
        assert page.url.path == "/api/gallery/files/gallery/index.html"
        files = "/api/gallery/files/"
        mesh_folder = files + _artifact_folder(workspace, kinds["mesh"][0]["id"])
        served = {}
        for link in (f"{files}.cache/glb/{kinds['mesh'][0]['id']}.js", f"{mesh_folder}/turntable.mp4",
                     f"{mesh_folder}/mesh.glb", files + _artifact_folder(workspace, kinds["audio"][0]["id"]) + "/sound.flac"):
            response = await client.get(link)
            assert response.status_code == 200, link
            served[link.rsplit(".", 1)[-1]] = response.headers["content-type"]
        assert served == {"js": "text/javascript; charset=utf-8", "mp4": "video/mp4", "glb": "model/gltf-binary",
                          "flac": "audio/flac"}
        assert (await client.get("/api/gallery/files/catalog.db")).status_code == 404


def _artifact_folder(workspace, artifact_id: str) -> str:
    from echo_os.artifacts.store import ArtifactStore

    store = ArtifactStore(workspace)
    try:
        return store.open(artifact_id).path.relative_to(workspace.artifacts_dir).as_posix()
    finally:
        store.close()


@pytest.fixture(scope="module")
def tiny_shap_e_dir(tmp_path_factory):
    from tests.tiny_shap_e import save_tiny_shap_e

    return save_tiny_shap_e(tmp_path_factory.mktemp("tiny-shap-e") / "tiny-shap-e")


def test_shap_e_through_auto_writes_a_glb_with_its_counts_and_replays(workspace, run_cli, tiny_shap_e_dir) -> None:
    """With a `type = "3d"` entry here, auto takes shap-e over the placeholder; the GLB loads back in trimesh
    with the counts meta.json records, and replay gives the same vertices."""
    import trimesh

    with open(workspace.models_toml, "a", encoding="utf-8") as handle:
        handle.write(f'\n[models.tiny-shap-e]\ntype = "3d"\npath = "{tiny_shap_e_dir.as_posix()}"\n')
    [shown] = render_json(run_cli, workspace.home, "sword design", "--type", "3d_model", "--model", "tiny-shap-e",
                          "--steps", "2", "--cfg", "3", "--device", "cpu", "-o", "grid_size=16")
    meta = json.loads((Path(shown["path"]) / "meta.json").read_text())
    assert meta["engine"]["name"] == "shap-e" and meta["placeholder"] is False and meta["model"]["name"] == "tiny-shap-e"
    assert meta["settings"]["grid_size"] == 16 and meta["settings"]["guidance"] == 3.0
    mesh = trimesh.load(Path(shown["path"]) / "mesh.glb", force="mesh", process=False)
    assert (len(mesh.vertices), len(mesh.faces)) == (meta["vertices"], meta["faces"]) and meta["faces"] > 0
    assert_turntable_mp4(Path(shown["path"]), meta)
    code, out, err = run_cli("--home", str(workspace.home), "replay", shown["id"], "--json")
    assert code == 0 and json.loads(out)["content_matches"] is True, err


def test_lift_an_image_to_a_mesh_with_its_parent(workspace, run_cli, tmp_path_factory) -> None:
    """`echo-os lift ID` on a draft image through a tiny ShapEImg2ImgPipeline entry: the mesh's parent is the
    image (by id and bytes); the text-to-3D entry refuses an image in one line."""
    import trimesh

    from tests.tiny_shap_e import save_tiny_shap_e_img2img

    folder = save_tiny_shap_e_img2img(tmp_path_factory.mktemp("tiny-lift") / "tiny-lift")
    with open(workspace.models_toml, "a", encoding="utf-8") as handle:
        handle.write(f'\n[models.tiny-lift]\ntype = "3d"\npath = "{folder.as_posix()}"\n')
    code, out, err = run_cli("--home", str(workspace.home), "render", "a red lantern", "--engine", "draft",
                             "--size", "64x64", "--seed", "2", "--json")
    parent = json.loads(out)[0]
    code, out, err = run_cli("--home", str(workspace.home), "lift", parent["id"], "--model", "tiny-lift", "--steps",
                             "2", "--grid-size", "16", "--device", "cpu", "--json")
    assert code == 0, err
    shown = json.loads(out)
    meta = json.loads((Path(shown["path"]) / "meta.json").read_text())
    assert (meta["kind"], meta["parent_id"], meta["engine"]["name"]) == ("mesh", parent["id"], "shap-e")
    assert meta["request"]["init_image"]["sha256"] == parent["id"] and meta["seed"] == 2
    mesh = trimesh.load(Path(shown["mesh"]), force="mesh", process=False)
    assert len(mesh.vertices) == meta["vertices"] > 0
    code, out, err = run_cli("--home", str(workspace.home), "lift", shown["id"], "--model", "tiny-lift")
    assert code == 2 and "lift needs an image artifact" in err and len(err.strip().splitlines()) == 1, err


def test_gallery_shows_assets_by_their_preview_with_a_player(workspace, run_cli, tmp_path) -> None:
    """The gallery lists a mesh and a sound by their previews, links the GLB and FLAC, and (in headless
    Chromium, when installed) the sound's card holds an <audio> player and no picture is broken."""
    import re
    import shutil

    mesh = render_json(run_cli, workspace.home, "sword design", "--type", "3d_model")[0]
    sound = render_json(run_cli, workspace.home, "rain", "--type", "audio", "--seconds", "0.5")[0]
    code, out, err = run_cli("--home", str(workspace.home), "gallery")
    assert code == 0, err
    page = Path(out.strip())
    items = {item["id"]: item for item in json.loads(re.search(
        r'<script type="application/json" id="gallery-data">(.*?)</script>', page.read_text(), re.S).group(1))}
    assert items[mesh["id"]]["mesh"].endswith("/mesh.glb") and (page.parent / items[mesh["id"]]["mesh"]).is_file()
    assert items[sound["id"]]["audio"].endswith("/sound.flac") and items[sound["id"]]["placeholder"] is True
    assert items[mesh["id"]]["image"].endswith("/image.png") and items[mesh["id"]]["audio"] is None
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return
    from tests.test_gallery import _chromium

    dom = _chromium("--dump-dom", page.as_uri(), profile=tmp_path / "profile")
    assert re.search(r'<audio[^>]*src="[^"]*sound\.flac"', dom) and "3D model (GLB) · placeholder" in dom
    assert 'data-broken="0"' in dom


def test_stable_audio_through_auto_writes_the_asked_length_and_replays(workspace, run_cli, tmp_path_factory) -> None:
    import soundfile

    from tests.tiny_stable_audio import save_tiny_stable_audio

    folder = save_tiny_stable_audio(tmp_path_factory.mktemp("tiny-sa") / "tiny-sa")
    with open(workspace.models_toml, "a", encoding="utf-8") as handle:
        handle.write(f'\n[models.tiny-sa]\ntype = "audio"\npath = "{folder.as_posix()}"\n')
    common = ("--type", "audio", "--model", "tiny-sa", "--steps", "2", "--cfg", "3", "--device", "cpu")
    [shown] = render_json(run_cli, workspace.home, "rain on a tin roof", *common, "--seconds", "0.3")
    meta = json.loads((Path(shown["path"]) / "meta.json").read_text())
    assert meta["engine"]["name"] == "stable-audio" and meta["placeholder"] is False
    samples, rate = soundfile.read(Path(shown["path"]) / "sound.flac", always_2d=True)
    assert (rate, samples.shape) == (1000, (300, 2)) and (meta["sample_rate"], meta["channels"]) == (1000, 2)
    code, out, err = run_cli("--home", str(workspace.home), "replay", shown["id"], "--json")
    assert code == 0 and json.loads(out)["content_matches"] is True, err
    code, out, err = run_cli("--home", str(workspace.home), "render", "rain", *common, "--seconds", "5",
                             "--engine", "stable-audio")
    assert code == 2 and "longer than tiny-sa makes (0.512 s at most)" in err and len(err.strip().splitlines()) == 1
    # auto passes over it to the placeholder, and says why
    code, out, err = run_cli("--home", str(workspace.home), "render", "rain", *common, "--seconds", "5")
    assert code == 0 and "engine: draft-audio" in err and "longer than tiny-sa makes" in err, err


def test_stable_audio_keeps_the_scheduler_stable_audio_open_ships(workspace, tmp_path_factory) -> None:
    """The tiny folder names CosineDPMSolverMultistepScheduler with Stable Audio Open's config, as the real one
    does; the engine loads and renders with it (its SDE noise seeded from the generator: same seed, same sound)."""
    from echo_os.engines import create_engine
    from echo_os.render.requests import RenderRequest
    from tests.tiny_stable_audio import SCHEDULER_CONFIG, save_tiny_stable_audio

    folder = save_tiny_stable_audio(tmp_path_factory.mktemp("tiny-sa-sched") / "tiny-sa")
    saved = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert saved["_class_name"] == "CosineDPMSolverMultistepScheduler"
    with open(workspace.models_toml, "a", encoding="utf-8") as handle:
        handle.write(f'\n[models.tiny-sa]\ntype = "audio"\npath = "{folder.as_posix()}"\n')
    engine = create_engine(workspace, "stable-audio", "test")
    request = RenderRequest(prompt="rain on a tin roof", output="audio", engine="stable-audio", model="tiny-sa",
                            steps=3, cfg=3.0, device="cpu", seed=4, options={"seconds": 0.2})
    scheduler = engine.loaded(request).pipe.scheduler
    assert type(scheduler).__name__ == "CosineDPMSolverMultistepScheduler"
    assert {key: scheduler.config[key] for key in SCHEDULER_CONFIG} == SCHEDULER_CONFIG
    [first] = engine.render([request])
    [again] = engine.render([request])
    [other] = engine.render([request.model_copy(update={"seed": 5})])
    sound = first.images[0].asset.data
    assert np.array_equal(sound, again.images[0].asset.data) and not np.array_equal(sound, other.images[0].asset.data)


@pytest.fixture(scope="module")
def tiny_audioldm2_dir(tmp_path_factory):
    from tests.tiny_audioldm2 import save_tiny_audioldm2

    return save_tiny_audioldm2(tmp_path_factory.mktemp("tiny-aldm") / "tiny-aldm")


def test_audioldm2_through_auto_writes_16khz_mono_and_replays(workspace, run_cli, tiny_audioldm2_dir) -> None:
    import soundfile

    with open(workspace.models_toml, "a", encoding="utf-8") as handle:
        handle.write(f'\n[models.tiny-aldm]\ntype = "audio"\npath = "{tiny_audioldm2_dir.as_posix()}"\n')
    common = ("--type", "audio", "--model", "tiny-aldm", "--steps", "2", "--cfg", "3", "--device", "cpu")
    [shown] = render_json(run_cli, workspace.home, "rain on a tin roof", *common, "--seconds", "0.1")
    meta = json.loads((Path(shown["path"]) / "meta.json").read_text())
    assert meta["engine"]["name"] == "audioldm2" and meta["placeholder"] is False
    samples, rate = soundfile.read(Path(shown["path"]) / "sound.flac", always_2d=True)
    assert (rate, samples.shape) == (16000, (1600, 1)) and (meta["sample_rate"], meta["channels"]) == (16000, 1)
    assert np.abs(samples).max() > 1e-3  # a sound, not 16-bit silence
    code, out, err = run_cli("--home", str(workspace.home), "replay", shown["id"], "--json")
    assert code == 0 and json.loads(out)["content_matches"] is True, err
    # the Stable Audio engine refuses the folder in one line, naming the engine that renders it
    code, out, err = run_cli("--home", str(workspace.home), "render", "rain", *common, "--seconds", "0.1",
                             "--engine", "stable-audio")
    assert code == 2 and "use --engine audioldm2" in err and len(err.strip().splitlines()) == 1, err
    from echo_os.engines import create_engine
    from echo_os.errors import OptionError
    from echo_os.render.requests import RenderRequest

    with pytest.raises(OptionError, match=r"shorter than tiny-aldm makes \(0.0005 s at least\)"):
        create_engine(workspace, "audioldm2", "test").render([RenderRequest(
            prompt="rain", output="audio", model="tiny-aldm", steps=2, device="cpu", options={"seconds": 0.0001})])


def test_gallery_lightbox_turns_the_glb_in_webgl(workspace, run_cli, tmp_path) -> None:
    """In headless Chromium, from the page opened from disk: a mesh's card plays its turntable MP4, and its
    lightbox draws the GLB in the shipped WebGL viewer (no network): the canvas holds non-background pixels,
    as many triangles as meta.json's faces, and the picture changes as the model turns."""
    import shutil

    from tests.test_gallery import CHROMIUM_FLAGS
    from tests.webdriver import CHROMEDRIVER, chromium_session

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None or CHROMEDRIVER is None:
        pytest.skip("chromium and chromedriver are not installed")
    from tests.test_api_server import free_port

    mesh = render_json(run_cli, workspace.home, "sword design", "--type", "3d_model")[0]
    render_json(run_cli, workspace.home, "a harbour at dusk", "--size", "64x64")
    meta = json.loads((Path(mesh["path"]) / "meta.json").read_text())
    code, out, err = run_cli("--home", str(workspace.home), "gallery")
    assert code == 0, err
    page = Path(out.strip())
    assert (workspace.home / "artifacts" / ".cache" / "glb" / f"{mesh['id']}.js").is_file()
    assert "cdn" not in page.read_text().lower() and "GlbViewer" in page.read_text()
    background = "return [235, 235, 240];"
    count_pixels = """
        const canvas = document.getElementById('lb-mesh'), copy = document.createElement('canvas');
        copy.width = canvas.width; copy.height = canvas.height;
        const context = copy.getContext('2d');
        context.drawImage(canvas, 0, 0);
        const data = context.getImageData(0, 0, copy.width, copy.height).data, bg = arguments[0];
        let count = 0, sum = 0;
        for (let i = 0; i < data.length; i += 4) {
          const off = Math.abs(data[i] - bg[0]) + Math.abs(data[i + 1] - bg[1]) + Math.abs(data[i + 2] - bg[2]);
          if (off > 12) { count++; sum += (i / 4) % copy.width; }
        }
        return [count, count ? sum / count : 0, copy.width * copy.height];"""
    with chromium_session(chromium, CHROMIUM_FLAGS, tmp_path / "profile", free_port()) as browser:
        browser.open(page.as_uri())
        browser.wait_for("return document.body.dataset.ready === 'true'")
        assert browser.run("return document.body.dataset.broken") == "0"
        assert browser.run("return document.body.dataset.videos") == "1"  # the turntable
        card = f'.card[data-id="{mesh["id"]}"]'
        assert browser.run(f"return document.querySelector('{card} video').getAttribute('src')").endswith(
            "/turntable.mp4")
        browser.wait_for("return document.body.dataset.playable === '1'")
        browser.click(card)
        state = browser.wait_for("const c = document.getElementById('lb-mesh'); "
                                 "return c.dataset.drawn || c.dataset.error")
        canvas = browser.run("return Object.assign({}, document.getElementById('lb-mesh').dataset)")
        assert state == "1" and canvas["renderer"] == "webgl", canvas
        assert int(canvas["triangles"]) == meta["faces"]
        bg = browser.run(background)
        drawn, centre, total = browser.run(count_pixels, bg)
        assert 0.02 * total < drawn < 0.9 * total, (drawn, total)
        import time

        time.sleep(1.0)
        later, later_centre, _ = browser.run(count_pixels, bg)
        assert (later, round(later_centre)) != (drawn, round(centre))  # it turns
        # the files line links the GLB and the turntable
        links = browser.run("return [...document.querySelectorAll('#lb-files a')].map(a => a.getAttribute('href'))")
        assert links[0].endswith("/mesh.glb") and links[1].endswith("/turntable.mp4")
        # an image's lightbox hides the viewer
        browser.run("document.getElementById('lb-close').click()")
        other = browser.run("return [...document.querySelectorAll('.card')].find(c => c.querySelector('img'))"
                            ".dataset.id")
        browser.click(f'.card[data-id="{other}"]')
        assert browser.run("return document.getElementById('lb-mesh').classList.contains('hidden')") is True
