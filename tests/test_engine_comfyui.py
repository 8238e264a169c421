"""The comfyui engine against the fake ComfyUI (tests/fake_comfyui.py, real uvicorn + websocket on
127.0.0.1): the message sequence the fake replays is the real one, errors are one line naming the node,
cached nodes, cancel through /interrupt, init images through /upload/image, user workflows with
bindings, what `auto` does, and a story where every scene is rendered once."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from echo_os.engines import choose_engine, create_engine
from echo_os.errors import CancelledError, UsageError
from echo_os.render.requests import RenderRequest
from tests.fake_comfyui import comfy_workspace, fake_comfyui
from tests.helpers import run_cli


@pytest.fixture
def fake():
    with fake_comfyui() as server:
        yield server


@pytest.fixture
def comfy(tmp_path, fake):
    return comfy_workspace(tmp_path, fake.url, 'workflow = "solid-colour"\n')


def _render(settings, *args):
    code, out, err = run_cli("--home", str(settings.home), "render", "a lamp", *args, "--no-memory", "--json")
    return code, (json.loads(out) if code == 0 else out), err


def _meta(row) -> dict:
    return json.loads((Path(row["path"]) / "meta.json").read_text(encoding="utf-8"))


def _types(client, prompt_id):
    seen = []
    while True:
        message = client.receive(5)
        seen.append(message["type"])
        data = message["data"]
        if message["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
            return seen


def test_the_fake_speaks_the_sequence_a_real_comfyui_sent(fake):
    """The sequences seen from ComfyUI 0.12.1 on 127.0.0.1:8188 (EmptyImage -> SaveImage), first run and
    the same prompt again (every node cached)."""
    from echo_os.engines.comfyui_client import ComfyClient

    client = ComfyClient(fake.url, 10, 2)
    try:
        client.connect()
        first = client.receive(5)
        assert first["type"] == "status" and first["data"]["sid"] == client.client_id
        graph = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 2, "color": 1}},
                 "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}}}
        run = _types(client, client.submit(graph))
        assert [t for t in run if t != "progress_state"] == [
            "status", "execution_start", "execution_cached", "executing", "executing", "executed",
            "execution_success", "status", "executing"]
        again = _types(client, client.submit(graph))
        assert [t for t in again if t != "progress_state"] == [
            "status", "execution_start", "execution_cached", "executed", "execution_success", "status", "executing"]
    finally:
        client.close()


def test_an_execution_error_is_one_line_naming_the_node(comfy):
    folder = comfy.home / "pipelines" / "comfyui"
    folder.mkdir(parents=True)
    (folder / "blend.json").write_text(json.dumps({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 2, "color": 1}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 3, "color": 2}},
        "3": {"class_type": "ImageBlend", "inputs": {"image1": ["1", 0], "image2": ["2", 0], "blend_factor": 0.5,
                                                     "blend_mode": "normal"}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "e"}}}))
    (folder / "blend.toml").write_text('[bindings]\nwidth = "1.width"\n')
    code, out, err = _render(comfy, "-o", "workflow=blend", "--size", "32x32")
    assert code == 1 and err.splitlines()[-1] == (
        "Error: engine comfyui: node 3 (ImageBlend) failed: RuntimeError: The size of tensor a (2) must match the "
        "size of tensor b (3) at non-singleton dimension 0")
    assert not list(comfy.artifacts_dir.rglob("image.png"))


def test_node_errors_are_one_line_naming_the_node(comfy, fake):
    # named: sent, and ComfyUI's refusal is one line (with auto, availability passes over it: see below)
    code, out, err = _render(comfy, "-o", "workflow=sdxl-txt2img", "-o", "checkpoint=missing.safetensors",
                             "--size", "64x64", "--engine", "comfyui")
    assert code == 1 and err.splitlines()[-1] == (
        "Error: engine comfyui: ComfyUI refused the workflow: node 4 (CheckpointLoaderSimple): Value not in list "
        "(ckpt_name: 'missing.safetensors' not in ['sd_xl_base_1.0.safetensors'])")


def test_seeds_prompt_and_settings_reach_the_bound_inputs(comfy, fake):
    code, rows, err = _render(comfy, "-o", "workflow=sdxl-txt2img", "-o", "checkpoint=sd_xl_base_1.0.safetensors",
                              "--size", "64x64", "--seed", "41", "--count", "2", "--steps", "3", "--cfg", "4.5",
                              "--scheduler", "dpmpp_2m_karras", "--negative", "blur")
    assert code == 0, err
    graphs = [post["prompt"] for post in fake.posts]
    assert [g["3"]["inputs"]["seed"] for g in graphs] == [41, 42]  # one prompt per image, each its own seed
    first = graphs[0]
    assert first["6"]["inputs"]["text"] == "a lamp" and first["7"]["inputs"]["text"] == "blur"
    assert (first["3"]["inputs"]["steps"], first["3"]["inputs"]["cfg"]) == (3, 4.5)
    assert (first["3"]["inputs"]["sampler_name"], first["3"]["inputs"]["scheduler"]) == ("dpmpp_2m", "karras")
    assert (first["5"]["inputs"]["width"], first["5"]["inputs"]["batch_size"]) == (64, 1)
    meta = _meta(rows[1])
    assert meta["seed"] == 42 and meta["provenance"]["graph"]["3"]["inputs"]["seed"] == 42
    assert meta["provenance"]["workflow"] == "sdxl-txt2img" and meta["provenance"]["reproducible"] is True


def test_cached_nodes_are_reported_and_counted_as_progress(comfy):
    engine = create_engine(comfy, "comfyui", "test")
    request = RenderRequest(prompt="x", width=64, height=48, seed=9, engine="comfyui")
    [first] = engine.render([request])
    events = []
    [again] = engine.render([request], progress=events.append)
    assert first.images[0].provenance["cached_nodes"] == [] and again.images[0].provenance["cached_nodes"] == ["1", "2"]
    assert [e.step for e in events] == [1, 2] and events[-1].total_steps == 2
    assert list(again.images[0].image.getdata()) == list(first.images[0].image.getdata())


def test_cancel_while_running_interrupts_comfyui(tmp_path):
    with fake_comfyui(step_s=0.2) as slow:
        settings = comfy_workspace(tmp_path, slow.url, 'checkpoint = "sd_xl_base_1.0.safetensors"\n')
        engine = create_engine(settings, "comfyui", "test")
        cancel = threading.Event()

        def progress(event):
            if event.step >= 3:  # ComfyUI is running the KSampler now
                cancel.set()

        with pytest.raises(CancelledError):
            engine.render([RenderRequest(prompt="x", width=64, height=64, steps=50, engine="comfyui")],
                          progress=progress, cancel=cancel)
        assert slow.interrupt_flag.is_set()
        [entry] = slow.history.values()
        assert entry["status"]["messages"][-1] == "execution_interrupted"


def test_an_init_image_is_uploaded_and_bound(comfy, fake, tmp_path):
    from PIL import Image

    init = comfy.home / "init.png"  # a path is read only from inside the workspace
    Image.new("RGB", (40, 30), (200, 30, 30)).save(init)
    code, rows, err = _render(comfy, "-o", "workflow=upload-scale", "-o", f"init_image={init}", "--size", "80x64")
    assert code == 0, err
    assert "init.png" in fake.uploads and fake.posts[0]["prompt"]["1"]["inputs"]["image"] == "init.png"
    with Image.open(rows[0]["image"]) as image:
        assert image.size == (80, 64) and image.getpixel((5, 5)) == (200, 30, 30)
    code, out, err = _render(comfy, "-o", "workflow=upload-scale", "--size", "80x64")
    assert code == 2 and "needs an init image: -o init_image=PATH" in err and len(err.strip().splitlines()) == 1


def test_no_server_file_outside_the_workspace_is_uploaded(comfy, fake, tmp_path):
    """Red-team finding: `-o init_image=/etc/hostname` was uploaded to the ComfyUI. A path is a CLI
    convenience, read only inside the workspace and only when it decodes as an image; the engine checks it
    again when it renders (a job stored before the check, or made by hand)."""
    from PIL import Image

    outside = tmp_path / "outside.png"
    Image.new("RGB", (8, 8)).save(outside)
    not_an_image = comfy.home / "notes.png"
    not_an_image.write_text("secret", encoding="utf-8")
    truncated = comfy.home / "cut.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:-40])
    for path, said in (("/etc/hostname", "outside the workspace"), (outside, "outside the workspace"),
                       (not_an_image, "not an image"), (truncated, "not an image")):
        code, out, err = _render(comfy, "-o", "workflow=upload-scale", "-o", f"init_image={path}", "--size", "80x64",
                                 "--engine", "comfyui")
        assert code == 2 and said in err and len(err.strip().splitlines()) == 1, (path, err)
    engine = create_engine(comfy, "comfyui", "test")
    with pytest.raises(UsageError, match="outside the workspace"):
        engine.render([RenderRequest(prompt="x", width=80, height=64, engine="comfyui",
                                     options={"workflow": "upload-scale", "init_image": "/etc/hostname"})])
    engine.close()
    assert fake.uploads == {} and fake.posts == []


def test_an_api_caller_names_an_artifact_or_sends_bytes_never_a_path(comfy, fake, monkeypatch):
    """Through the API, options.init_image is an artifact id or a data: URL: a path (even one inside the
    workspace) is a 422 on options.init_image and nothing reaches the ComfyUI."""
    import asyncio
    import base64
    import io

    from PIL import Image

    from tests.api_helpers import api_client, wait_job

    monkeypatch.setenv("ECHO_OS_NO_MEMORY", "1")
    inside = comfy.home / "inside.png"
    Image.new("RGB", (8, 8)).save(inside)
    sent_png = io.BytesIO()
    Image.new("RGB", (40, 30), (20, 200, 30)).save(sent_png, format="PNG")
    data_url = "data:image/png;base64," + base64.b64encode(sent_png.getvalue()).decode()
    body = {"prompt": "a lamp", "engine": "comfyui", "size": "80x64", "options": {"workflow": "upload-scale"}}

    async def go():
        async with api_client(comfy) as (client, _app):
            for value in ("/etc/hostname", str(inside), "../../etc/hostname", "data:image/png;base64,AAAA", 7):
                answer = await client.post("/api/render", json={**body, "options": {**body["options"],
                                                                                    "init_image": value}})
                assert answer.status_code == 422, (value, answer.text)
                assert answer.json()["detail"][0]["loc"][-2:] == ["options", "init_image"], answer.text
            sent = await client.post("/api/render", json={**body, "options": {**body["options"],
                                                                              "init_image": data_url}})
            assert sent.status_code == 202, sent.text
            first = await wait_job(client, sent.json()["job_id"])
            parent = first["artifacts"][0]["id"] if first.get("artifacts") else None
            return first, parent

    job, _ = asyncio.run(go())
    assert job["status"] == "succeeded", job
    assert list(fake.uploads.values()) == [sent_png.getvalue()]
    # An artifact by id: its own PNG is what is uploaded.
    code, rows, err = _render(comfy, "--size", "32x32")
    assert code == 0, err
    artifact = rows[0]

    async def by_id():
        async with api_client(comfy) as (client, _app):
            sent = await client.post("/api/render", json={**body, "options": {**body["options"],
                                                                              "init_image": artifact["id"]}})
            assert sent.status_code == 202, sent.text
            return await wait_job(client, sent.json()["job_id"])

    job = asyncio.run(by_id())
    assert job["status"] == "succeeded", job
    assert Path(artifact["image"]).read_bytes() in fake.uploads.values()


def test_a_user_workflow_is_registered_by_its_files(comfy, fake):
    folder = comfy.home / "pipelines" / "comfyui"
    folder.mkdir(parents=True)
    (folder / "mine.json").write_text(json.dumps({
        "10": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "11": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "m"}}}))
    (folder / "mine.toml").write_text('[bindings]\nwidth = "10.width"\nheight = "10.height"\n'
                                      'seed = { input = "10.color", modulo = 256 }\n')
    code, rows, err = _render(comfy, "-o", "workflow=mine", "--size", "24x16", "--seed", "300")
    assert code == 0, err
    assert fake.posts[-1]["prompt"]["10"]["inputs"] == {"width": 24, "height": 16, "batch_size": 1, "color": 44}
    (folder / "mine.toml").write_text('[bindings]\nwidth = "10.wide"\n')
    code, out, err = _render(comfy, "-o", "workflow=mine", "--size", "24x16")
    assert code == 2 and "binding width names 10.wide, which is not an input" in err
    code, out, err = _render(comfy, "-o", "workflow=nope", "--size", "24x16")
    assert code == 2 and "no ComfyUI workflow 'nope'; known: " in err and "sdxl-txt2img" in err


def test_auto_asks_comfyui_only_when_allowed_configured_and_reachable(tmp_path, fake):
    request = RenderRequest(prompt="x", width=64, height=64)
    home = tmp_path / "a"
    home.mkdir()
    from echo_os.settings import load_settings

    for toml, words in [
        ("", "comfyui: it sends requests over the network; set allow = true under [engines.comfyui]"),
        ("[engines.comfyui]\nallow = true\n", "comfyui: no url under [engines.comfyui]"),
        ('[engines.comfyui]\nallow = true\nurl = "http://127.0.0.1:9"\nconnect_timeout_s = 0.5\n',
         "comfyui: ComfyUI at http://127.0.0.1:9 does not answer (ConnectError)"),
    ]:
        (home / "echo-os.toml").write_text(toml)
        name, reason = choose_engine(load_settings(home, env={}), request)
        assert name == "draft" and words in reason, reason
    (home / "echo-os.toml").write_text(f'[engines.comfyui]\nallow = true\nurl = "{fake.url}"\n')
    assert choose_engine(load_settings(home, env={}), request)[0] == "comfyui"
    (home / "echo-os.toml").write_text(f'[engines.comfyui]\nallow = true\nurl = "{fake.url}"\nworkflw = "x"\n')
    with pytest.raises(UsageError, match=r"\[engines.comfyui\] workflw"):
        choose_engine(load_settings(home, env={}), request)


def test_auto_passes_over_a_comfyui_without_the_templates_checkpoint(tmp_path):
    """Issue 24, bug 13: /system_stats answering is not enough; the default sdxl-txt2img template needs its
    checkpoint on the server (GET /object_info/CheckpointLoaderSimple lists them)."""
    from echo_os.settings import load_settings

    request = RenderRequest(prompt="x", width=64, height=64)
    with fake_comfyui(checkpoints=("some_other_model.safetensors",)) as bare:
        settings = comfy_workspace(tmp_path, bare.url)
        name, reason = choose_engine(settings, request)
        assert name != "comfyui"
        assert "has no ckpt_name 'sd_xl_base_1.0.safetensors' for workflow sdxl-txt2img" in reason, reason
        assert "some_other_model.safetensors" in reason
        settings = comfy_workspace(tmp_path, bare.url, 'checkpoint = "some_other_model.safetensors"\n')
        assert choose_engine(settings, request)[0] == "comfyui"
        # a template whose nodes the server has, needing no checkpoint
        settings = comfy_workspace(tmp_path, bare.url, 'workflow = "solid-colour"\n')
        assert choose_engine(load_settings(settings.home, env={}), request)[0] == "comfyui"


def test_auto_moves_on_when_the_chosen_comfyui_fails_before_any_image(tmp_path):
    """The server was fine when asked, then failed the first image: `auto` renders with the next engine of
    the order and says so in one line; an engine the user named is not replaced."""
    with fake_comfyui() as server:
        settings = comfy_workspace(tmp_path, server.url, 'workflow = "solid-colour"\n')
        server.faults.append("error")
        code, rows, err = _render(settings, "--size", "64x64", "--seed", "1")
        assert code == 0, err
        assert rows[0]["engine"] != "comfyui"
        [line] = [line for line in err.splitlines() if "moved on to" in line]
        assert "auto: comfyui failed before any image" in line and "failed:" in line
        server.faults.append("error")
        code, out, err = _render(settings, "--size", "64x64", "--seed", "2", "--engine", "comfyui")
        assert code == 1 and "moved on" not in err and "Error: engine comfyui: node 1" in err, err


def test_a_story_renders_every_scene_once_and_resumes(comfy, fake):
    prompts = comfy.home / "prompts.txt"
    prompts.write_text("a fox\na hare\na heron\n", encoding="utf-8")
    args = ("--home", str(comfy.home), "batch", "animals", f"@{prompts}", "--engine", "comfyui", "--size", "32x32",
            "--json")
    fake.faults.extend(["ok", "error"])  # scene 2 fails in ComfyUI
    code, out, err = run_cli(*args)
    assert code == 1 and "node 1 (EmptyImage) failed: RuntimeError: injected fault" in err.splitlines()[-1]
    assert len(list(comfy.artifacts_dir.rglob("image.png"))) == 1 and len(fake.posts) == 2
    code, out, err = run_cli(*args)
    assert code == 0, err
    result = json.loads(out)
    assert (result["rendered"], result["resumed"]) == (2, 1) and len(fake.posts) == 4
    seeds = [post["prompt"]["1"]["inputs"]["color"] for post in fake.posts]
    assert seeds[1] == seeds[2] and len(set(seeds)) == 3  # scene 2 asked again with the same seed, each once more
    code, out, err = run_cli(*args)
    assert code == 0 and json.loads(out)["resumed"] == 3 and len(fake.posts) == 4


def test_the_api_renders_through_comfyui_with_progress(comfy, monkeypatch):
    import asyncio

    from tests.api_helpers import api_client, wait_job

    monkeypatch.setenv("ECHO_OS_NO_MEMORY", "1")

    async def go():
        async with api_client(comfy) as (client, _app):
            sent = await client.post("/api/render", json={"prompt": "a kite", "engine": "comfyui", "seed": 4,
                                                          "count": 2, "size": "32x32"})
            assert sent.status_code == 202, sent.text
            return await wait_job(client, sent.json()["job_id"])

    job = asyncio.run(go())
    assert job["status"] == "succeeded", job
    assert job["progress"]["images_done"] == job["progress"]["images_total"] == 2


def test_sampling_steps_move_the_progress(tmp_path):
    """The KSampler's `progress` messages count too: 7 nodes + 5 steps, in order, with the sampling steps
    arriving while ComfyUI samples (before the image is saved)."""
    with fake_comfyui(step_s=0.01) as server:
        settings = comfy_workspace(tmp_path, server.url, 'checkpoint = "sd_xl_base_1.0.safetensors"\n')
        engine = create_engine(settings, "comfyui", "test")
        events = []
        engine.render([RenderRequest(prompt="x", width=64, height=64, steps=5, engine="comfyui")],
                      progress=lambda e: events.append((e.step, e.total_steps, len(server.files))))
    assert [step for step, _, _ in events] == list(range(1, 13)) and {total for _, total, _ in events} == {12}
    assert sum(1 for _, _, saved in events if saved == 0) >= 9  # 4 loader/encoder/latent nodes + KSampler + 5 steps


# ---- refine (img2img) ------------------------------------------------------------------------------

def _parent(settings, *args) -> dict:
    code, rows, err = _render(settings, "--size", "64x48", "--seed", "7", *args)
    assert code == 0, err
    return rows[0]


def _refine(settings, parent_id: str, *args):
    code, out, err = run_cli("--home", str(settings.home), "refine", parent_id, *args, "--json")
    return code, (json.loads(out) if code == 0 else out), err


def test_refine_through_comfyui_uploads_the_parent_and_records_lineage(comfy, fake):
    import hashlib

    from PIL import Image

    parent = _parent(comfy)  # solid-colour, the workspace's default workflow
    code, rows, err = _refine(comfy, parent["id"], "--engine", "comfyui", "-o", "workflow=upload-scale",
                              "--strength", "0.4", "--seed", "3")
    assert code == 0, err
    [child] = rows
    name = f"echo-os-init-{parent['id'][:16]}.png"
    assert hashlib.sha256(fake.uploads[name]).hexdigest() == parent["id"]  # the parent's PNG bytes, uploaded
    graph = fake.posts[-1]["prompt"]
    assert graph["1"]["inputs"]["image"] == name and (graph["2"]["inputs"]["width"], graph["2"]["inputs"]["height"]) \
        == (64, 48)
    with Image.open(child["image"]) as ours, Image.open(parent["image"]) as original:
        assert list(ours.convert("RGB").getdata()) == list(original.convert("RGB").getdata())
    meta = _meta(child)
    assert meta["parent_id"] == parent["id"] and meta["strength"] == 0.4 and meta["parent_sha256"] == parent["id"]
    p = meta["provenance"]
    assert p["workflow"] == "upload-scale" and p["strength"] == 0.4 and p["strength_bound"] is False
    code, out, err = run_cli("--home", str(comfy.home), "artifacts", "tree", child["id"])
    assert code == 0 and parent["id"][:12] in out and child["id"][:12] in out, err
    posts = len(fake.posts)
    code, out, err = run_cli("--home", str(comfy.home), "replay", child["id"], "--json")
    assert code == 0 and len(fake.posts) == posts + 1, err
    assert json.loads(out)["max_pixel_diff"] == 0, out


def test_refine_takes_the_refine_workflow_and_binds_the_strength_to_denoise(tmp_path, fake):
    import numpy as np
    from PIL import Image

    settings = comfy_workspace(tmp_path, fake.url, 'workflow = "solid-colour"\n'
                                                   'checkpoint = "sd_xl_base_1.0.safetensors"\n')
    parent = _parent(settings)
    code, rows, err = _refine(settings, parent["id"], "a lamp at night", "--engine", "comfyui", "--strength", "0.5",
                              "--steps", "4", "--seed", "9")
    assert code == 0, err
    graph = fake.posts[-1]["prompt"]
    assert graph["3"]["class_type"] == "KSampler" and graph["3"]["inputs"]["denoise"] == 0.5
    assert (graph["3"]["inputs"]["seed"], graph["3"]["inputs"]["steps"]) == (9, 4)
    assert graph["6"]["inputs"]["text"] == "a lamp at night"
    assert graph["10"]["inputs"]["image"] == f"echo-os-init-{parent['id'][:16]}.png"
    assert graph["11"] == {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    meta = _meta(rows[0])
    assert meta["provenance"]["workflow"] == "sdxl-img2img" and meta["provenance"]["strength_bound"] is True
    # strength 1 repaints everything: the sampler's own image; at 0.5 the fake (like a sampler starting
    # from the encoded image) keeps half of the parent: 0.5 x parent + 0.5 x the strength-1 image
    code, full, err = _refine(settings, parent["id"], "a lamp at night", "--engine", "comfyui", "--strength", "1",
                              "--steps", "4", "--seed", "9")
    assert code == 0, err

    def pixels(row):
        with Image.open(row["image"]) as image:
            return np.asarray(image.convert("RGB"), dtype=float)

    half, whole, original = pixels(rows[0]), pixels(full[0]), pixels(parent)
    assert half.shape == original.shape == (48, 64, 3)
    assert np.abs(half - (0.5 * original + 0.5 * whole)).max() <= 1.0
    assert np.abs(half - whole).max() > 10 and np.abs(half - original).max() > 10


def test_refine_with_a_workflow_that_binds_no_init_image_is_one_line(comfy, fake):
    parent = _parent(comfy)
    posts = len(fake.posts)
    code, out, err = _refine(comfy, parent["id"], "--engine", "comfyui", "-o", "workflow=solid-colour")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "workflow solid-colour binds no init_image, so it cannot refine" in err
    code, out, err = _refine(comfy, parent["id"], "--engine", "comfyui", "-o", f"init_image={parent['image']}")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "-o init_image is for render" in err, err
    assert len(fake.posts) == posts and not fake.uploads


def test_a_refine_of_a_solid_colour_parent_takes_the_refine_workflow_and_any_strength(tmp_path, fake):
    """Issue 24, bug 13: the parent's `-o workflow=solid-colour` is a txt2img template, not carried to the
    refine (refine_workflow is used, as docs/engines.md says); and ComfyUI runs all --steps, so the
    diffusers rule "steps x strength >= 1" does not apply (2 steps at strength 0.2 is a real refine there)."""
    settings = comfy_workspace(tmp_path, fake.url, 'refine_workflow = "upload-scale"\n')
    parent = _parent(settings, "--engine", "comfyui", "-o", "workflow=solid-colour")
    code, rows, err = _refine(settings, parent["id"], "--engine", "comfyui", "--steps", "2", "--strength", "0.2")
    assert code == 0, err
    assert _meta(rows[0])["provenance"]["workflow"] == "upload-scale"
    assert "workflow" not in _meta(rows[0])["request"]["options"]


# ---- a websocket that drops mid-prompt ------------------------------------------------------------

def _pixels(image):
    return list(image.convert("RGB").getdata())


@pytest.mark.parametrize("how", ["reset", "close"])
def test_a_dropped_websocket_reconnects_and_the_prompt_finishes_once(tmp_path, how):
    """The socket is cut at the KSampler's first step (an RST, or a FIN without a close frame): the engine
    reconnects with the same clientId, reads /history, follows the rest, and gets the image a render
    without the drop gets, having submitted the prompt once."""
    with fake_comfyui(step_s=0.05) as server:
        settings = comfy_workspace(tmp_path, server.url, 'checkpoint = "sd_xl_base_1.0.safetensors"\n')
        request = RenderRequest(prompt="x", width=64, height=64, steps=8, seed=21, engine="comfyui")
        [reference] = create_engine(settings, "comfyui", "test").render([request])
        server._cache.clear()  # the next run executes every node again (nothing from ComfyUI's cache)
        server.posts.clear()
        server.drop_socket("progress", how)
        engine = create_engine(settings, "comfyui", "test")
        events = []
        [result] = engine.render([request], progress=events.append)
    assert len(server.posts) == 1
    image = result.images[0]
    assert image.provenance["reconnects"] == 1 and image.provenance["cached_nodes"] == []
    assert _pixels(image.image) == _pixels(reference.images[0].image)
    assert events[-1].step == events[-1].total_steps == 7 + 8  # the bar still reaches its end


@pytest.mark.parametrize("fault", ["ok", "error"])
def test_a_prompt_that_ends_while_the_socket_is_down_is_read_from_history(tmp_path, fault):
    """The network stays down (handshakes refused) while ComfyUI finishes: the reconnect backs off until
    it is up, and the outputs, or the error, come from /history."""
    with fake_comfyui() as server:
        settings = comfy_workspace(tmp_path, server.url, 'workflow = "solid-colour"\n')
        server.faults.append(fault)
        server.drop_socket("executing", "reset", away_s=0.6)
        engine = create_engine(settings, "comfyui", "test")
        request = RenderRequest(prompt="x", width=32, height=32, seed=0x102030, engine="comfyui")
        if fault == "error":
            from echo_os.engines.comfyui_client import ComfyUIError

            with pytest.raises(ComfyUIError, match="^engine comfyui: the workflow failed: injected fault$"):
                engine.render([request])
        else:
            [result] = engine.render([request])
            assert result.images[0].image.convert("RGB").getpixel((3, 3)) == (0x10, 0x20, 0x30)
            assert result.images[0].provenance["reconnects"] == 1
    assert server.refused_handshakes >= 1 and len(server.posts) == 1


def test_history_errors_in_both_formats_are_one_line():
    from echo_os.engines.comfyui_client import history_failure

    upstream = {"status": {"status_str": "error", "completed": False, "messages": [
        ["execution_start", {"prompt_id": "p"}],
        ["execution_error", {"node_id": "3", "node_type": "KSampler", "exception_type": "RuntimeError",
                             "exception_message": "out of memory\n"}]]}}
    assert history_failure(upstream) == "engine comfyui: node 3 (KSampler) failed: RuntimeError: out of memory"
    fork = {"status": {"status_str": "error", "messages": ["execution_start", "execution_error: boom\n"]}}
    assert history_failure(fork) == "engine comfyui: the workflow failed: boom"
    assert history_failure({"status": {"status_str": "success", "messages": []}}) is None


def test_a_comfyui_that_restarts_mid_prompt_is_one_line_not_a_hang(tmp_path):
    """Every socket reset and the prompt gone from the queue and the history (both in memory in ComfyUI):
    after reconnecting, the engine says the prompt was lost instead of waiting for timeout_s."""
    import time

    with fake_comfyui() as server:
        settings = comfy_workspace(tmp_path, server.url, 'workflow = "solid-colour"\n')
        server.faults.append("restart")
        engine = create_engine(settings, "comfyui", "test")
        started = time.monotonic()
        from echo_os.engines.comfyui_client import ComfyUIError

        with pytest.raises(ComfyUIError, match=r"no longer knows prompt \S+ \(restarted while the websocket was down\?\)"):
            engine.render([RenderRequest(prompt="x", width=32, height=32, seed=1, engine="comfyui")])
        assert time.monotonic() - started < 10 and len(server.posts) == 1


def test_a_server_lost_during_image_2_names_image_1_which_was_saved(tmp_path):
    """Issue 24, bug 13: `--count 2`, the server restarts when it takes the second prompt: image 1 is kept
    and its id is printed with the one-line error."""
    import sqlite3

    with fake_comfyui() as server:
        settings = comfy_workspace(tmp_path, server.url, 'workflow = "solid-colour"\n')
        server.faults.extend(["ok", "restart"])
        code, out, err = _render(settings, "--size", "64x64", "--seed", "5", "--count", "2", "--engine", "comfyui")
    assert code == 1, err
    with sqlite3.connect(settings.catalog_path) as db:
        [(saved_id,)] = db.execute("SELECT id FROM artifacts").fetchall()
    assert f"saved before the error: {saved_id[:12]}" in err, err


def test_an_edited_template_is_rendered_again_and_replay_says_it_changed(tmp_path):
    """Issue 24, bug 13: meta.json records the template's sha256 (provenance.template_sha256); after the
    template is edited the "already rendered" check renders anew, saying why, and replay names the cause."""
    import shutil

    from echo_os.settings import REPO_ROOT

    with fake_comfyui() as server:
        settings = comfy_workspace(tmp_path, server.url)
        own = settings.home / "pipelines" / "comfyui"
        own.mkdir(parents=True)
        for suffix in (".json", ".toml"):
            shutil.copy(REPO_ROOT / "echo_os" / "pipelines" / "comfyui" / f"solid-colour{suffix}", own / f"mine{suffix}")
        args = ("--engine", "comfyui", "-o", "workflow=mine", "--seed", "100000", "--size", "64x64")
        code, [first], err = _render(settings, *args)
        assert code == 0, err
        assert len(_meta(first)["provenance"]["template_sha256"]) == 64
        code, [again], err = _render(settings, *args)
        assert code == 0 and again["id"] == first["id"] and again["already_rendered"], err
        toml = own / "mine.toml"
        toml.write_text(toml.read_text(encoding="utf-8").replace("16777216", "65536"), encoding="utf-8")
        posts = len(server.posts)
        code, [edited], err = _render(settings, *args)
        assert code == 0 and edited["id"] != first["id"] and not edited["already_rendered"], err
        assert len(server.posts) == posts + 1 and "the template changed since" in err, err
        code, out, err = run_cli("--home", str(settings.home), "replay", first["id"])
        assert code == 0 and "the template changed since it was rendered" in out, out + err


def test_a_hostile_comfyui_answer_is_one_line_naming_it(comfy, fake):
    """Red-team findings: non-image bytes from ComfyUI were reported as "lost ComfyUI" (it had answered),
    and an image of another size was saved with the asked size in meta.json. Non-image bytes, or an image
    over 4096 a side, are one line naming the server and what it sent; a smaller image is kept at the size
    that arrived."""
    import io

    from PIL import Image

    from tests.fake_openai import _header_only_png

    for answer, said in ((b"<html>an error page</html>", "not an image"),
                         (_header_only_png(12000, 12000), "12000x12000")):
        fake.view_answers.append(answer)
        code, out, err = _render(comfy, "--size", "32x32", "--engine", "comfyui")
        errors = [line for line in err.splitlines() if line.startswith("Error")]
        assert code != 0 and len(errors) == 1, err
        assert said in errors[0] and fake.url in errors[0] and "lost ComfyUI" not in errors[0], errors
    odd = io.BytesIO()
    Image.new("RGB", (17, 23), (1, 2, 3)).save(odd, format="PNG")
    fake.view_answers.append(odd.getvalue())
    code, rows, err = _render(comfy, "--size", "32x32", "--engine", "comfyui")
    assert code == 0, err
    meta = _meta(rows[0])
    assert (meta["width"], meta["height"]) == (17, 23) and (meta["request"]["width"], meta["request"]["height"]) == (32, 32)


@pytest.mark.parametrize("answer, said", [({}, "no 'prompt_id'"), (b"<html>busy</html>", "not JSON"),
                                          ([1, 2], "wrong type"), ({"prompt_id": None, "x": 1}, "wrong type")])
def test_a_malformed_comfyui_answer_is_one_line_naming_it(comfy, fake, answer, said):
    """Red-team finding: malformed answers surfaced as Python exception names. One line each, naming the
    server and what was wrong with its answer."""
    fake.prompt_answers.append(answer)
    code, out, err = _render(comfy, "--size", "32x32", "--engine", "comfyui")
    errors = [line for line in err.splitlines() if line.startswith("Error")]
    assert code != 0 and len(errors) == 1 and fake.url in errors[0] and said in errors[0], err
    for name in ("KeyError", "TypeError", "JSONDecodeError", "IndexError", "AttributeError", "Traceback"):
        assert name not in err, err


# ---- floods and drops (issue 25, "not yet tried") -----------------------------------------------------

def test_a_websocket_flood_keeps_memory_bounded_and_progress_moving(tmp_path):
    """A ComfyUI that floods the websocket: per sampling step 400 repeated `progress` messages and 400
    binary previews of 64 KB (ComfyUI's PREVIEW_IMAGE frames), 1,600 of each, 100 MB in all. The engine
    reads through them without holding them (its peak Python allocation stays under 8 MB), without a
    hang, and reports each step once, in order, to the end; the image is the one a quiet server gives."""
    import time
    import tracemalloc

    with fake_comfyui() as server:
        settings = comfy_workspace(tmp_path, server.url, 'checkpoint = "sd_xl_base_1.0.safetensors"\n')
        request = RenderRequest(prompt="x", width=64, height=64, steps=4, seed=3, engine="comfyui")
        [quiet] = create_engine(settings, "comfyui", "test").render([request])
        server._cache.clear()
        server.flood, server.flood_bytes = 400, 64 * 1024
        engine = create_engine(settings, "comfyui", "test")
        steps = []
        started = time.monotonic()
        tracemalloc.start()
        try:
            [flooded] = engine.render([request], progress=lambda event: steps.append(event.step))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert time.monotonic() - started < 60
    assert peak < 8 * 1024 * 1024, peak
    assert steps == list(range(1, 7 + 4 + 1))  # 7 nodes and 4 steps, each once, in order
    assert _pixels(flooded.images[0].image) == _pixels(quiet.images[0].image)


def test_an_image_download_cut_halfway_is_asked_again_then_one_line(comfy, fake):
    """An HTTP drop mid-download: GET /view promises the whole PNG and the connection closes halfway. The
    image is on the server, so it is asked again (no second prompt) and the render succeeds; when every
    try is cut, one line naming the server and the file, in words (no exception name), and nothing saved."""
    code, rows, err = _render(comfy, "--size", "32x32", "--engine", "comfyui")
    assert code == 0, err
    fake.view_truncations, views, posts = 1, fake.views, len(fake.posts)
    code, rows, err = _render(comfy, "--size", "32x32", "--seed", "9", "--engine", "comfyui")
    assert code == 0, err
    assert fake.views == views + 2 and len(fake.posts) == posts + 1
    folders = sorted(comfy.artifacts_dir.glob("*/*/*/image.png"))
    fake.view_truncations = 3
    code, out, err = _render(comfy, "--size", "32x32", "--seed", "10", "--engine", "comfyui")
    errors = [line for line in err.splitlines() if line.startswith("Error")]
    assert code == 1 and len(errors) == 1, err
    assert fake.url in errors[0] and "halfway" in errors[0] and "3 tries" in errors[0], errors
    for name in ("RemoteProtocolError", "Traceback", "httpx"):
        assert name not in err, err
    assert sorted(comfy.artifacts_dir.glob("*/*/*/image.png")) == folders  # nothing half-saved
    assert not any((comfy.artifacts_dir / ".tmp").glob("*"))  # no staging folder left either
