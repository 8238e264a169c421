"""Seamless tiling (--tile): circular convolutions for one call, recorded, replayed, and measured."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from echo_os.engines.sdxl import SDXLEngine
from echo_os.engines.tiling import seam_score, tiled_convolutions, tiled_preview
from echo_os.render.requests import RenderRequest, image_request_key

TINY = dict(model="tiny", width=64, height=64, steps=3, cfg=5.0, device="cpu")


def _pixels(image):
    return np.asarray(image, dtype=np.int16)


def test_tiled_render_equals_a_direct_diffusers_call_with_the_patched_pipeline(tiny_workspace):
    import torch

    request = RenderRequest(prompt="rusted iron plates", seed=7, tile="xy", **TINY)
    engine = SDXLEngine(tiny_workspace)
    [ours] = engine.render([request])
    pipe = engine.loaded(request).pipe  # the same diffusers pipeline, called directly
    pipe.scheduler = type(pipe.scheduler).from_config(engine.loaded(request).base_scheduler_config)

    def direct():
        return pipe(prompt="rusted iron plates", generator=torch.Generator("cpu").manual_seed(7),
                    num_inference_steps=3, guidance_scale=5.0, width=64, height=64).images[0]

    with tiled_convolutions(pipe, "xy") as patched:
        assert patched > 10  # the UNet's and the VAE's convolutions
        tiled = direct()
    untiled = direct()  # restored after the block
    assert np.abs(_pixels(ours.images[0].image) - _pixels(tiled)).max() <= 1
    assert np.abs(_pixels(tiled) - _pixels(untiled)).max() > 10  # tiling changed the image


def test_both_axes_equal_torch_circular_padding():
    """Per-axis padding with both axes wrapped computes what Conv2d(padding_mode="circular") computes."""
    import torch

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    circular = torch.nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular")
    circular.load_state_dict(conv.state_dict())
    pipe = type("Pipe", (), {"unet": conv, "vae": torch.nn.Identity()})()
    sample = torch.randn(1, 3, 8, 10)
    with torch.no_grad(), tiled_convolutions(pipe, "xy"):
        wrapped = conv(sample)
    assert torch.allclose(wrapped, circular(sample), atol=1e-6)
    with torch.no_grad(), tiled_convolutions(pipe, "x"):
        only_x = conv(sample)
    assert not torch.allclose(only_x, wrapped)  # rows now pad with zeros
    assert torch.allclose(conv(sample), torch.nn.functional.conv2d(sample, conv.weight, conv.bias, padding=1))


def test_tiled_render_has_a_lower_seam_than_the_same_seed_untiled_and_the_pipeline_is_restored(tiny_workspace):
    engine = SDXLEngine(tiny_workspace)
    [before] = engine.render([RenderRequest(prompt="cobblestones", seed=11, **TINY)])
    [tiled] = engine.render([RenderRequest(prompt="cobblestones", seed=11, tile="xy", **TINY)])
    [after] = engine.render([RenderRequest(prompt="cobblestones", seed=11, **TINY)])
    assert np.array_equal(_pixels(before.images[0].image), _pixels(after.images[0].image))  # restored
    untiled_seam = seam_score(before.images[0].image, "xy").worst
    tiled_seam = seam_score(tiled.images[0].image, "xy").worst
    assert tiled_seam < untiled_seam, (tiled_seam, untiled_seam)


def test_seam_score_of_a_known_image():
    ramp = np.tile(np.arange(0, 64, dtype=np.uint8) * 4, (64, 1))  # left-right ramp: the wrap edge jumps 252
    image = Image.fromarray(np.stack([ramp] * 3, axis=-1))
    score = seam_score(image, "xy")
    assert score.ratios["x"] == pytest.approx(252 / 4)
    assert score.seams["x"] == pytest.approx(math.log(63))
    assert score.ratios["y"] == 1.0 and score.seams["y"] == 0.0  # every row is the same: nothing to see
    assert score.worst == score.seams["x"]
    preview = tiled_preview(image, "xy")
    assert preview.size == (128, 128)
    assert np.array_equal(np.asarray(preview)[64:, 64:], np.asarray(image))


def test_tile_is_part_of_the_batch_key_and_the_request_key_only_when_set():
    plain = RenderRequest(prompt="p", seed=1, **TINY)
    tiled = plain.model_copy(update={"tile": "xy"})
    assert plain.batch_key() != tiled.batch_key()
    assert image_request_key(plain) != image_request_key(tiled)
    assert "tile" not in json.dumps(plain.model_dump(mode="json", exclude={"tile"}))
    # keys of untiled requests are what they were before tiling existed (no "tile" in the hashed JSON)
    import hashlib

    fields = plain.model_dump(mode="json", exclude={"loras": True, "options": True, "tile": True,
                                                    "style_name": True, "init_image": True, "refiner": True,
                                                    "output": True})  # an image's kind is left out too
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert image_request_key(plain) == hashlib.sha256(canonical.encode()).hexdigest()


def test_render_cli_tile_is_recorded_replayed_and_checked(run_cli, tiny_workspace):
    home = str(tiny_workspace.home)
    code, out, err = run_cli("--home", home, "render", "sword texture", "--type", "texture", "--model", "tiny",
                             "--steps", "2", "--size", "64x64", "--seed", "9", "--json", "--no-memory")
    assert code == 0, err
    [artifact] = json.loads(out)
    from echo_os.artifacts.store import ArtifactStore

    store = ArtifactStore(tiny_workspace)
    opened = store.open(artifact["id"])
    store.close()
    assert opened.meta.tile == "xy" and opened.meta.request["tile"] == "xy"
    with Image.open(opened.image_path) as png:
        assert "Tiling: True" in png.info["parameters"]
    code, out, err = run_cli("--home", home, "replay", artifact["id"], "--json")
    assert code == 0, err
    assert json.loads(out)["max_pixel_diff"] == 0

    code, out, err = run_cli("--home", home, "texture-check", artifact["id"][:12], "--json")
    assert code == 0, err
    report = json.loads(out)
    assert set(report["seam"]) == {"x", "y"} and report["tile"] == "xy"
    with Image.open(report["preview"]) as preview:
        assert preview.size == (128, 128)


def test_render_cli_tile_x_flag_value_and_draft_refusal(run_cli, tiny_workspace):
    home = str(tiny_workspace.home)
    code, out, err = run_cli("--home", home, "render", "wall", "--tile", "--engine", "draft", "--no-memory")
    assert code == 2 and "--tile needs an engine" in err and err.count("\n") == 1
    assert not any(tiny_workspace.artifacts_dir.glob("*/*/*/image.png"))


def test_gallery_thumbnail_of_a_tiled_artifact_is_a_2x2_preview_and_best_says_most_recent(workspace, run_cli):
    from echo_os.artifacts.store import ArtifactStore
    from echo_os.render.requests import build_request
    from echo_os.render.scheduler import render_requests

    store = ArtifactStore(workspace)
    try:
        outcome = render_requests(workspace, [build_request(prompt="brick wall", engine="draft", width=128,
                                                            height=96, seed=1, count=2)], store=store)
        plain = outcome.artifacts[0]
        # A texture made elsewhere (draft cards cannot tile): the same image, recorded as tiled.
        meta = plain.meta.model_copy(update={"tile": "xy", "seed": 2, "created": "2999-01-01T00:00:00.000000+00:00"})
        with Image.open(plain.image_path) as image:
            png = store.encode_png(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), meta)
        tiled = store.save_file(png, meta, scene_slug="brick-wall")
    finally:
        store.close()
    code, out, err = run_cli("--home", str(workspace.home), "gallery", "--filter", "best", "--limit", "2")
    assert code == 0, err
    assert "note: no scores or ratings yet, so best means most recent" in err and "2 artifacts" in err
    thumbs = workspace.cache_dir / "thumbs"
    with Image.open(thumbs / f"{tiled.id}.tiled.webp") as thumb:
        assert thumb.size == (256, 192)  # 2x2 of 128x96, within the 360px thumbnail bound
    assert not (thumbs / f"{plain.id}.tiled.webp").exists()
    page = (workspace.artifacts_dir / "gallery" / "index-best.html").read_text()  # its own page (issue 24)
    assert f"{tiled.id}.tiled.webp" in page
    assert sum(a.id in page for a in outcome.artifacts) == 1  # the older of the two plain cards is left out
