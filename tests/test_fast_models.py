"""Few-step models for weak hardware: models.toml entries carry their own steps, guidance, scheduler, size
and distillation LoRA (SDXL-Turbo, Lightning, LCM-LoRA, TCD); the lcm, tcd and euler_trailing schedulers
reach the pipeline; the `fast` preset (`turbo` its old name). The entry's defaults apply wherever a request is
built (render, batch, refine, compare and the API routes), below what the user gave. Checked with the tiny SDXL
pipeline and a tiny LoRA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import run_cli


@pytest.mark.parametrize("name,cls,spacing", [("lcm", "LCMScheduler", None), ("tcd", "TCDScheduler", None),
                                              ("euler_trailing", "EulerDiscreteScheduler", "trailing")])
def test_few_step_schedulers_are_the_diffusers_classes(tiny_sdxl_dir, name, cls, spacing):
    from diffusers import EulerDiscreteScheduler

    from echo_os.engines.sdxl import make_scheduler

    base = EulerDiscreteScheduler.from_pretrained(tiny_sdxl_dir / "scheduler").config
    scheduler = make_scheduler(name, dict(base))
    assert type(scheduler).__name__ == cls
    if spacing:
        assert scheduler.config.timestep_spacing == spacing and base["timestep_spacing"] != spacing


@pytest.fixture
def fast_workspace(tiny_workspace, tiny_sdxl_dir):
    from tests.tiny_models import save_tiny_lora

    lora = save_tiny_lora(tiny_sdxl_dir / "unet", tiny_workspace.home / "distill.safetensors")
    with open(tiny_workspace.models_toml, "a", encoding="utf-8") as handle:
        handle.write(f'\n[models.tiny-distill]\ntype = "lora"\nfile = "{lora.as_posix()}"\n\n'
                     f'[models.tiny-lcm]\npath = "{tiny_sdxl_dir.as_posix()}"\nlora = "tiny-distill"\n'
                     'steps = 2\ncfg = 1.0\nscheduler = "lcm"\nsize = "64x48"\n\n'
                     f'[models.tiny-turbo]\npath = "{tiny_sdxl_dir.as_posix()}"\n'
                     'steps = 1\ncfg = 0.0\nscheduler = "euler_trailing"\nsize = "64x64"\n\n'
                     f'[models.tiny-few]\npath = "{tiny_sdxl_dir.as_posix()}"\nlora = "tiny-distill"\n'
                     'steps = 2\ncfg = 0\nscheduler = "euler_trailing"\nsize = "64x64"\n')
    return tiny_workspace


def _meta(out: str) -> dict:
    return json.loads((Path(json.loads(out)[0]["path"]) / "meta.json").read_text(encoding="utf-8"))


def test_an_entry_renders_with_its_own_defaults_and_lora(fast_workspace):
    home = str(fast_workspace.home)
    code, out, err = run_cli("--home", home, "render", "a fox", "--model", "tiny-lcm", "--device", "cpu",
                             "--seed", "3", "--no-memory", "--json")
    assert code == 0, err
    meta = _meta(out)
    assert (meta["steps"], meta["cfg"], meta["scheduler"]) == (2, 1.0, "lcm")
    assert (meta["width"], meta["height"]) == (64, 48)
    assert [lora["name"] for lora in meta["request"]["loras"]] == ["tiny-distill"]
    # An option given on the command line wins over the entry's default.
    code, out, err = run_cli("--home", home, "render", "a fox", "--model", "tiny-lcm", "--device", "cpu",
                             "--steps", "3", "--scheduler", "tcd", "--size", "64x64", "--no-memory", "--json")
    assert code == 0, err
    meta = _meta(out)
    assert (meta["steps"], meta["scheduler"], meta["cfg"], meta["width"]) == (3, "tcd", 1.0, 64)


def test_the_entry_defaults_give_the_pipeline_call_its_scheduler(fast_workspace):
    """The render equals a direct diffusers call with the scheduler the entry names (trailing spacing)."""
    import numpy as np
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from PIL import Image

    code, out, err = run_cli("--home", str(fast_workspace.home), "render", "a hare", "--model", "tiny-turbo",
                             "--device", "cpu", "--seed", "11", "--no-memory", "--json")
    assert code == 0, err
    meta = _meta(out)
    assert (meta["steps"], meta["scheduler"], meta["cfg"]) == (1, "euler_trailing", 0.0)
    from echo_os.models import load_registry

    folder = load_registry(fast_workspace).get("tiny-turbo").source
    pipe = StableDiffusionXLPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    direct = pipe("a hare", num_inference_steps=1, guidance_scale=0.0, width=64, height=64,
                  generator=torch.Generator("cpu").manual_seed(11)).images[0]
    with Image.open(json.loads(out)[0]["image"]) as ours:
        diff = np.abs(np.asarray(ours.convert("RGB"), dtype=np.int16) - np.asarray(direct, dtype=np.int16)).max()
    assert diff <= 1


def test_bad_entry_defaults_are_one_line(tiny_workspace, tiny_sdxl_dir):
    with open(tiny_workspace.models_toml, "a", encoding="utf-8") as handle:
        handle.write(f'\n[models.bad]\npath = "{tiny_sdxl_dir.as_posix()}"\nscheduler = "warp"\n')
    code, out, err = run_cli("--home", str(tiny_workspace.home), "render", "x", "--model", "tiny", "--no-memory")
    assert code == 2 and "models.bad.scheduler: unknown scheduler 'warp'" in err and len(err.strip().splitlines()) == 1


def test_the_fast_preset_names_the_few_step_model(fast_workspace):
    from echo_os.engines.presets import get_preset

    assert get_preset(fast_workspace, "fast").fields() == get_preset(fast_workspace, "turbo").fields() \
        == {"model": "sdxl-turbo"}
    from echo_os.models import load_registry

    turbo = load_registry(fast_workspace).get("sdxl-turbo").defaults
    assert (turbo.steps, turbo.cfg, turbo.scheduler, turbo.size) == (4, 0.0, "euler_trailing", "512x512")
    # With --model, the preset's model gives way and that entry's defaults apply.
    code, out, err = run_cli("--home", str(fast_workspace.home), "render", "x", "--preset", "fast", "--model",
                             "tiny-turbo", "--device", "cpu", "--no-memory", "--json")
    assert code == 0, err
    assert (_meta(out)["steps"], _meta(out)["request"]["model"]) == (1, "tiny-turbo")


def test_batch_on_the_cpu_uses_the_cpu_size(tiny_workspace, monkeypatch):
    """Like render: no --size and an engine with its own default size (cpu: ECHO_OS_CPU_SIZE) -> every
    scene at that size, said once; --size still wins."""
    monkeypatch.setenv("ECHO_OS_CPU_SIZE", "64x48")
    monkeypatch.setenv("ECHO_OS_NO_MEMORY", "1")  # embedding is not what this test is about
    prompts = tiny_workspace.home / "prompts.txt"
    # steps on the lines, not --steps: a --size or --steps on the command line means the user chose (issue 11)
    prompts.write_text("a fox --steps 2\na hare --seed 3 --steps 2\n", encoding="utf-8")
    home = str(tiny_workspace.home)
    code, out, err = run_cli("--home", home, "batch", "fast", f"@{prompts}", "--engine", "cpu", "--model", "tiny",
                             "--clip", "none", "--json")
    assert code == 0, err
    assert "64x48 by default with engine cpu" in err
    sizes = {(meta["width"], meta["height"]) for meta in
             (json.loads((Path(row["path"]) / "meta.json").read_text()) for row in json.loads(out)["artifacts"])}
    assert sizes == {(64, 48)}
    code, out, err = run_cli("--home", home, "batch", "fast", f"@{prompts}", "--engine", "cpu", "--model", "tiny",
                             "--steps", "2", "--size", "64x64", "--dry-run", "--json")
    assert code == 0 and "by default with engine cpu" not in err
    assert {(s["request"]["width"], s["request"]["height"]) for s in json.loads(out)["scenes"]} == {(64, 64)}


def _metas(out: str) -> list[dict]:
    return [json.loads((Path(row["path"]) / "meta.json").read_text(encoding="utf-8"))
            for row in json.loads(out)["artifacts"]]


def test_batch_uses_the_entry_defaults_below_the_rows_and_the_command_line(fast_workspace, monkeypatch):
    """steps=2, cfg=0, euler_trailing and the entry's LoRA reach meta.json through `echo-os batch`; a line's
    --steps beats them, an option on the command line beats both."""
    monkeypatch.setenv("ECHO_OS_NO_MEMORY", "1")
    prompts = fast_workspace.home / "prompts.txt"
    prompts.write_text("a fox\na hare --steps 3\n", encoding="utf-8")
    home = str(fast_workspace.home)
    code, out, err = run_cli("--home", home, "batch", "few", f"@{prompts}", "--engine", "cpu", "--model", "tiny-few",
                             "--clip", "none", "--no-score", "--json")
    assert code == 0, err
    fox, hare = sorted(_metas(out), key=lambda meta: meta["story"]["scene"])
    assert (fox["steps"], fox["cfg"], fox["scheduler"], fox["width"], fox["height"]) == (2, 0.0, "euler_trailing", 64, 64)
    assert [lora["name"] for lora in fox["request"]["loras"]] == ["tiny-distill"]
    assert (hare["steps"], hare["cfg"], hare["scheduler"]) == (3, 0.0, "euler_trailing")  # the line's steps win
    code, out, err = run_cli("--home", home, "batch", "few", f"@{prompts}", "--engine", "cpu", "--model", "tiny-few",
                             "--steps", "1", "--cfg", "7", "--scheduler", "euler", "--dry-run", "--json")
    assert code == 0, err
    requests = [scene["request"] for scene in json.loads(out)["scenes"]]
    assert {(r["steps"], r["cfg"], r["scheduler"]) for r in requests} == {(1, 7.0, "euler")}


def test_batch_precedence_row_bible_preset_entry(fast_workspace):
    """CLI > the preset > the row's cell > the bible's defaults > the model entry's defaults; the entry of a
    model other than the bible's comes before the bible's defaults."""
    folder = fast_workspace.home / "pipelines" / "presets"
    folder.mkdir(parents=True)
    (folder / "slow.toml").write_text('steps = 9\ncfg = 4.0\nscheduler = "euler"\n', encoding="utf-8")
    story = fast_workspace.home / "story"
    story.mkdir()
    (story / "story.csv").write_text("scene,description,steps\n1,a fox,5\n2,a hare,\n", encoding="utf-8")
    (story / "STORY_BIBLE.md").write_text("---\ntitle: T\nmodel: tiny-few\ndefaults: {cfg: 2.5}\n---\n",
                                          encoding="utf-8")
    home = str(fast_workspace.home)

    def requests(*extra):
        code, out, err = run_cli("--home", home, "batch", "t", str(story / "story.csv"), "--engine", "cpu",
                                 "--dry-run", "--json", *extra)
        assert code == 0, err
        return [(r["steps"], r["cfg"], r["scheduler"], r["width"])
                for r in (scene["request"] for scene in json.loads(out)["scenes"])]

    # no preset: row steps, else the entry's; the bible's cfg; the entry's scheduler and size
    assert requests() == [(5, 2.5, "euler_trailing", 64), (2, 2.5, "euler_trailing", 64)]
    # a preset is a bundle of command-line options: above the row and the bible
    assert requests("--preset", "slow") == [(9, 4.0, "euler", 64), (9, 4.0, "euler", 64)]
    # an option on the command line beats them all
    assert requests("--preset", "slow", "--steps", "1", "--cfg", "0") == [(1, 0.0, "euler", 64), (1, 0.0, "euler", 64)]
    # a bible written for another model: --model tiny-few brings its own steps and cfg over the bible's
    # (so `--preset fast` does not render 30 steps at cfg 6.5); the row's own cell still wins
    (story / "STORY_BIBLE.md").write_text("---\ntitle: T\nmodel: tiny\ndefaults: {cfg: 2.5, steps: 7}\n---\n",
                                          encoding="utf-8")
    assert [r[:3] for r in requests()] == [(5, 2.5, "euler"), (7, 2.5, "euler")]  # tiny: no entry defaults
    assert requests("--model", "tiny-few") == [(5, 0.0, "euler_trailing", 64), (2, 0.0, "euler_trailing", 64)]


# ---- the API routes: what the body leaves out (model_fields_set) takes the entry's defaults -------------

@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_api_render_and_openai_route_use_the_entry_defaults(fast_workspace):
    from tests.api_helpers import api_client, wait_job

    async with api_client(fast_workspace) as (client, app):
        submitted = await client.post("/api/render", json={"prompt": "a fox", "model": "tiny-few", "engine": "cpu",
                                                          "seed": 5})
        assert submitted.status_code == 202, submitted.text
        job = await wait_job(client, submitted.json()["job_id"], timeout=300)
        assert job["status"] == "succeeded", job
        meta = (await client.get(f"/api/artifacts/{job['artifact_ids'][0]}")).json()["meta"]
        assert (meta["steps"], meta["cfg"], meta["scheduler"], meta["width"], meta["height"]) == \
            (2, 0.0, "euler_trailing", 64, 64)
        assert [lora["name"] for lora in meta["request"]["loras"]] == ["tiny-distill"]
        # A field the client sent wins, even when it is the schema's own default (cfg 7, steps 30 are).
        explicit = await client.post("/api/render", json={"prompt": "a fox", "model": "tiny-few", "engine": "cpu",
                                                         "steps": 3, "cfg": 7.0, "size": "64x48"})
        assert explicit.status_code == 202, explicit.text
        request = app.state.api.jobs.get(explicit.json()["job_id"]).spec.items[0]
        assert (request.steps, request.cfg, request.scheduler, request.width, request.height) == \
            (3, 7.0, "euler_trailing", 64, 48)
        await wait_job(client, explicit.json()["job_id"], timeout=300)
        openai = await client.post("/v1/images/generations", json={"prompt": "a hare", "model": "tiny-few",
                                                                   "engine": "cpu", "seed": 2})
        assert openai.status_code == 200, openai.text
        request = app.state.api.jobs.get(openai.headers["X-Echo-Job-Id"]).spec.items[0]
        assert (request.steps, request.cfg, request.scheduler, request.size) == (2, 0.0, "euler_trailing", "64x64")
        bad = await client.post("/api/render", json={"prompt": "a fox", "model": "tiny-few", "steps": 0})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "steps"]


@pytest.mark.anyio
async def test_api_refine_and_compare_use_the_entry_defaults(fast_workspace):
    from tests.api_helpers import api_client, wait_job

    async with api_client(fast_workspace) as (client, app):
        parent = await client.post("/api/render", json={"prompt": "a harbour", "engine": "draft", "size": "64x64"})
        job = await wait_job(client, parent.json()["job_id"], timeout=300)
        # Refining with a few-step model: its steps, cfg, scheduler and LoRA, not the parent's 30 steps of euler.
        refine = await client.post("/api/refine", json={"artifact_id": job["artifact_ids"][0], "model": "tiny-few",
                                                       "strength": 1.0, "seed": 1})
        assert refine.status_code == 202, refine.text
        request = app.state.api.jobs.get(refine.json()["job_id"]).spec.items[0]
        assert (request.steps, request.cfg, request.scheduler) == (2, 0.0, "euler_trailing")
        assert [lora.name for lora in request.loras] == ["tiny-distill"] and request.width == 64
        await wait_job(client, refine.json()["job_id"], timeout=300)
        compare = await client.post("/api/compare", json={"prompt": "a harbour", "models": ["tiny-few"],
                                                         "engines": ["cpu"], "cfg": [0.0, 1.0], "seeds": [1]})
        assert compare.status_code == 202, compare.text
        cells = app.state.api.jobs.get(compare.json()["job_id"]).spec.items
        assert [(c.steps, c.cfg, c.scheduler, c.size) for c in cells] == \
            [(2, 0.0, "euler_trailing", "64x64"), (2, 1.0, "euler_trailing", "64x64")]
        sized = await client.post("/api/compare", json={"prompt": "a harbour", "models": ["tiny-few"], "engines": ["cpu"],
                                                       "steps": [1], "seeds": [1, 2], "size": "64x48"})
        assert sized.status_code == 202, sized.text
        assert {(c.steps, c.size) for c in app.state.api.jobs.get(sized.json()["job_id"]).spec.items} == {(1, "64x48")}
        for submitted in (compare, sized):
            await wait_job(client, submitted.json()["job_id"], timeout=300)


@pytest.mark.anyio
async def test_api_batch_on_the_cpu_uses_the_cpu_size_and_the_entry_defaults(fast_workspace):
    import dataclasses

    from tests.api_helpers import api_client

    settings = dataclasses.replace(fast_workspace, cpu_size="64x48")
    story = {"project": "P", "engine": "cpu", "model": "tiny", "prompts": ["a fox --steps 2", "a hare --steps 2"]}
    async with api_client(settings, start_worker=False) as (client, app):
        response = await client.post("/api/batch", json=story)
        assert response.status_code == 202, response.text
        assert any("64x48 by default with engine cpu" in w for w in response.json()["warnings"])
        items = app.state.api.jobs.get(response.json()["job_id"]).spec.items
        assert {(i.width, i.height) for i in items} == {(64, 48)}
        response = await client.post("/api/batch", json={**story, "size": "64x64"})  # a size given: kept
        assert response.status_code == 202, response.text
        assert {i.size for i in app.state.api.jobs.get(response.json()["job_id"]).spec.items} == {"64x64"}
        assert not any("by default" in w for w in response.json()["warnings"])
        few = await client.post("/api/batch", json={"project": "F", "engine": "cpu", "model": "tiny-few",
                                                   "prompts": ["a fox", "a hare --steps 3"]})
        assert few.status_code == 202, few.text
        first, second = app.state.api.jobs.get(few.json()["job_id"]).spec.items
        # The entry's steps, cfg and scheduler; its 64x64 is larger than the CPU size, which wins (as in render)
        assert (first.steps, first.cfg, first.scheduler, first.size) == (2, 0.0, "euler_trailing", "64x48")
        assert second.steps == 3 and [lora.name for lora in first.loras] == ["tiny-distill"]
        explicit = await client.post("/api/batch", json={"project": "G", "engine": "cpu", "model": "tiny-few",
                                                        "prompts": ["a fox"], "steps": 4, "cfg": 1.5})
        [item] = app.state.api.jobs.get(explicit.json()["job_id"]).spec.items
        assert (item.steps, item.cfg, item.scheduler) == (4, 1.5, "euler_trailing")


def test_cli_refine_and_compare_use_the_entry_defaults(fast_workspace):
    home = str(fast_workspace.home)
    code, out, err = run_cli("--home", home, "render", "a harbour", "--engine", "draft", "--size", "64x64", "--json")
    assert code == 0, err
    parent = json.loads(out)[0]["id"]
    # another model: its steps, cfg, scheduler and LoRA instead of the parent's (the draft card's 30 steps)
    code, out, err = run_cli("--home", home, "refine", parent, "--model", "tiny-few", "--strength", "1", "--seed", "2",
                             "--json")
    assert code == 0, err
    meta = _meta(out)
    assert (meta["steps"], meta["cfg"], meta["scheduler"], meta["width"]) == (2, 0.0, "euler_trailing", 64)
    assert [lora["name"] for lora in meta["request"]["loras"]] == ["tiny-distill"]
    code, out, err = run_cli("--home", home, "refine", parent, "--model", "tiny-few", "--strength", "1", "--seed", "2",
                             "--steps", "3", "--json")
    assert code == 0, err
    assert (_meta(out)["steps"], _meta(out)["scheduler"]) == (3, "euler_trailing")
    code, out, err = run_cli("--home", home, "compare", "a harbour", "--models", "tiny-few", "--engines", "cpu",
                             "--cfg", "0,1", "--seeds", "1", "--json")
    assert code == 0, err
    cells = [json.loads((Path(cell["image"]).parent / "meta.json").read_text()) for cell in json.loads(out)["cells"]]
    assert [(m["steps"], m["cfg"], m["scheduler"], m["width"]) for m in cells] == \
        [(2, 0.0, "euler_trailing", 64), (2, 1.0, "euler_trailing", 64)]
    code, out, err = run_cli("--home", home, "compare", "a harbour", "--models", "tiny-few", "--engines", "cpu",
                             "--steps", "1", "--seeds", "1,2", "--size", "64x48", "--json")
    assert code == 0, err
    cells = [json.loads((Path(cell["image"]).parent / "meta.json").read_text()) for cell in json.loads(out)["cells"]]
    assert {(m["steps"], m["width"], m["height"]) for m in cells} == {(1, 64, 48)}


def test_batch_of_a_saved_plan_on_the_cpu_uses_the_cpu_size(tiny_workspace, monkeypatch):
    """`echo-os batch PROJECT --count N` (the list `echo-os plan` wrote) takes the same CPU size rule."""
    monkeypatch.setenv("ECHO_OS_CPU_SIZE", "64x48")
    home = str(tiny_workspace.home)
    code, out, err = run_cli("--home", home, "plan", "Fractals", "warm fractal", "--count", "3", "--seed", "1", "--json")
    assert code == 0, err
    code, out, err = run_cli("--home", home, "batch", "Fractals", "--count", "2", "--engine", "cpu", "--model", "tiny",
                             "--dry-run", "--json")
    assert code == 0, err
    assert "64x48 by default with engine cpu" in err
    assert {(s["request"]["width"], s["request"]["height"]) for s in json.loads(out)["scenes"]} == {(64, 48)}


@pytest.mark.anyio
async def test_an_entry_lora_that_is_missing_is_a_422_on_model_and_one_line(fast_workspace):
    from tests.api_helpers import api_client

    with open(fast_workspace.models_toml, "a", encoding="utf-8") as handle:
        handle.write(f'\n[models.tiny-lost]\npath = "{load_source(fast_workspace)}"\nlora = "gone-lora"\nsteps = 2\n')
    async with api_client(fast_workspace, start_worker=False) as (client, _):
        for route, body in (("/api/render", {"prompt": "x", "model": "tiny-lost", "engine": "cpu"}),
                            ("/api/compare", {"prompt": "x", "models": ["tiny-lost"], "engines": ["cpu"]})):
            response = await client.post(route, json=body)
            assert response.status_code == 422, response.text
            detail = response.json()["detail"][0]
            assert detail["loc"][-1] in ("model", "models") and "gone-lora" in detail["msg"]
    code, out, err = run_cli("--home", str(fast_workspace.home), "compare", "x", "--models", "tiny-lost",
                             "--engines", "cpu")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "gone-lora" in err and not out


def load_source(settings) -> str:
    from echo_os.models import load_registry

    return load_registry(settings).get("tiny").source
