"""Few-step models for weak hardware: models.toml entries carry their own steps, guidance, scheduler, size
and distillation LoRA (SDXL-Turbo, Lightning, LCM-LoRA, TCD); the lcm, tcd and euler_trailing schedulers
reach the pipeline; the `turbo` preset. Checked with the tiny SDXL pipeline and a tiny LoRA."""

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
                     'steps = 1\ncfg = 0.0\nscheduler = "euler_trailing"\nsize = "64x64"\n')
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


def test_the_turbo_preset_names_the_few_step_model(fast_workspace):
    from echo_os.engines.presets import get_preset

    assert get_preset(fast_workspace, "turbo").fields() == {"model": "sdxl-turbo"}
    from echo_os.models import load_registry

    turbo = load_registry(fast_workspace).get("sdxl-turbo").defaults
    assert (turbo.steps, turbo.cfg, turbo.scheduler, turbo.size) == (4, 0.0, "euler_trailing", "512x512")
    # With --model, the preset's model gives way and that entry's defaults apply.
    code, out, err = run_cli("--home", str(fast_workspace.home), "render", "x", "--preset", "turbo", "--model",
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
