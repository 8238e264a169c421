"""echo-os refine: img2img through the one renderer, equal to a direct StableDiffusionXLImg2ImgPipeline call,
with lineage in meta.json, the A1111 chunk, an exact replay and `artifacts tree`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def _render_parent(run_cli, home: str) -> dict:
    code, out, err = run_cli("--home", home, "render", "a lighthouse at dusk", "--model", "tiny", "--steps", "2",
                             "--size", "64x64", "--seed", "3", "--cfg", "5", "--no-memory", "--json")
    assert code == 0, err
    return json.loads(out)[0]


def test_refine_equals_a_direct_img2img_call_and_records_lineage(run_cli, tiny_workspace, tiny_sdxl_dir):
    import torch
    from diffusers import StableDiffusionXLImg2ImgPipeline

    home = str(tiny_workspace.home)
    parent = _render_parent(run_cli, home)
    code, out, err = run_cli("--home", home, "refine", parent["id"], "a lighthouse in fog", "--strength", "0.5",
                             "--steps", "4", "--seed", "7", "--no-memory", "--json")
    assert code == 0, err
    [child] = json.loads(out)
    meta = json.loads((Path(child["path"]) / "meta.json").read_text())
    assert meta["parent_id"] == parent["id"] and meta["parent_sha256"] == parent["id"]
    assert meta["strength"] == 0.5 and meta["prompt"] == "a lighthouse in fog"
    parent_folder = Path(parent["path"]).resolve().relative_to((tiny_workspace.home / "artifacts").resolve())
    assert meta["request"]["init_image"]["path"] == f"{parent_folder.as_posix()}/image.png"

    # the img2img pipeline runs on the loaded text-to-image pipeline's modules: no second copy of the weights
    from echo_os.engines import sdxl

    refining = [p for p in sdxl.loaded_pipelines() if p.img2img is not None]
    assert refining
    for loaded in refining:
        for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
            assert getattr(loaded.img2img, name) is getattr(loaded.pipe, name), name

    with Image.open(parent["image"]) as image:
        init = image.convert("RGB")
    pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(str(tiny_sdxl_dir), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    direct = pipe(prompt="a lighthouse in fog", image=init, strength=0.5, num_inference_steps=4, guidance_scale=5.0,
                  generator=torch.Generator("cpu").manual_seed(7)).images[0]
    with Image.open(child["image"]) as ours:
        ours_pixels = np.asarray(ours.convert("RGB"), dtype=np.int16)
        parameters = ours.info["parameters"]
    assert np.abs(ours_pixels - np.asarray(direct, dtype=np.int16)).max() <= 1
    # the refined image is not the parent (the comparison above would pass on a copy otherwise)
    assert np.abs(ours_pixels - np.asarray(init, dtype=np.int16)).max() > 10
    assert "Denoising strength: 0.5" in parameters

    code, out, err = run_cli("--home", home, "replay", child["id"])
    assert code == 0, err
    assert "max pixel difference 0" in out

    code, out, err = run_cli("--home", home, "artifacts", "tree", child["id"], "--json")
    assert code == 0, err
    assert json.loads(out) == {"id": child["id"], "ancestors": [parent["id"]], "descendants": []}
    code, out, err = run_cli("--home", home, "artifacts", "tree", parent["id"])
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(parent["id"][:12]) and lines[0].endswith("<- this")
    assert lines[1].startswith("  " + child["id"][:12]) and "strength 0.5" in lines[1]


def test_refine_bad_strength_and_an_engine_without_img2img(run_cli, tiny_workspace):
    home = str(tiny_workspace.home)
    parent = _render_parent(run_cli, home)
    for bad in ("0", "1.5", "-0.2"):
        code, out, err = run_cli("--home", home, "refine", parent["id"], "--strength", bad)
        assert code == 2 and "--strength" in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1
    code, out, err = run_cli("--home", home, "refine", parent["id"], "--strength", "0.2", "--steps", "2")
    assert code == 2 and "--strength 0.2 with 2 steps denoises no step" in err
    code, out, err = run_cli("--home", home, "refine", parent["id"], "--engine", "draft", "--strength", "0.5")
    assert code == 2, err
    assert err.strip() == ("Error: engine draft cannot render this request: it does not refine an image (no img2img).")
    artifacts = list(Path(home, "artifacts").glob("*/*/*/meta.json"))
    assert len(artifacts) == 1  # nothing written by the refused refines


def test_request_keys_from_before_refine_and_styles_are_unchanged():
    """Requests without the new fields (style_name, init_image, refiner) keep their resume keys."""
    from echo_os.render.requests import RenderRequest, image_request_key

    # computed with the code before this change (commit 3ee1462)
    assert image_request_key(RenderRequest(prompt="x", seed=1)) == \
        "80f5afb906e5b7d82e9043b7faa1a9b62cd898c32676c3a4e88a46fe71e8afe0"
