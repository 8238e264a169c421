"""--refiner NAME --switch F: SDXL base+refiner, equal to the direct two-stage diffusers call."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import register_model


def test_base_and_refiner_equal_the_direct_two_stage_call(run_cli, tiny_workspace, tiny_sdxl_dir, tmp_path):
    import torch
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    from tests.tiny_models import save_tiny_sdxl

    refiner_dir = save_tiny_sdxl(tmp_path / "tiny-refiner", seed=1)
    register_model(tiny_workspace, "tiny-refiner", refiner_dir)
    home = str(tiny_workspace.home)
    code, out, err = run_cli("--home", home, "render", "a lighthouse", "--model", "tiny", "--refiner", "tiny-refiner",
                             "--switch", "0.5", "--steps", "4", "--cfg", "5", "--size", "64x64", "--seed", "9",
                             "--no-memory", "--json")
    assert code == 0, err
    [artifact] = json.loads(out)
    meta = json.loads((Path(artifact["path"]) / "meta.json").read_text())
    assert meta["request"]["refiner"] == {"model": "tiny-refiner", "switch": 0.5}

    base = StableDiffusionXLPipeline.from_pretrained(str(tiny_sdxl_dir), local_files_only=True)
    refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(str(refiner_dir), local_files_only=True)
    for pipe in (base, refiner):
        pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator("cpu").manual_seed(9)
    latents = base(prompt="a lighthouse", num_inference_steps=4, guidance_scale=5.0, width=64, height=64,
                   denoising_end=0.5, output_type="latent", generator=generator).images
    direct = refiner(prompt="a lighthouse", image=latents, num_inference_steps=4, guidance_scale=5.0,
                     denoising_start=0.5, generator=generator).images[0]
    with Image.open(artifact["image"]) as ours:
        pixels = np.asarray(ours.convert("RGB"), dtype=np.int16)
        assert "Refiner: tiny-refiner" in ours.info["parameters"]
        assert "Refiner switch at: 0.5" in ours.info["parameters"]
    assert np.abs(pixels - np.asarray(direct, dtype=np.int16)).max() <= 1

    # the base alone gives another image (the refiner stage did something)
    code, out, err = run_cli("--home", home, "render", "a lighthouse", "--model", "tiny", "--steps", "4", "--cfg", "5",
                             "--size", "64x64", "--seed", "9", "--no-memory", "--json")
    with Image.open(json.loads(out)[0]["image"]) as alone:
        assert np.abs(pixels - np.asarray(alone.convert("RGB"), dtype=np.int16)).max() > 10


def test_bad_switch_and_unknown_refiner_exit_2(run_cli, tiny_workspace):
    home = str(tiny_workspace.home)
    code, out, err = run_cli("--home", home, "render", "x", "--model", "tiny", "--refiner", "tiny", "--switch", "1.0")
    assert code == 2 and "--switch" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli("--home", home, "render", "x", "--model", "tiny", "--refiner", "nosuch")
    assert code == 2 and "nosuch" in err and len(err.strip().splitlines()) == 1
