"""The sdxl engine on a tiny random-weight SDXL saved to disk and loaded through the real loading code."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from echo_os.engines.sdxl import SDXLEngine
from echo_os.errors import CancelledError
from echo_os.render.requests import RenderRequest

TINY = dict(model="tiny", width=64, height=64, steps=3, cfg=5.0, device="cpu")


def _pixels(image):
    return np.asarray(image, dtype=np.int16)


def test_batched_equals_single(tiny_workspace):
    engine = SDXLEngine(tiny_workspace, name="sdxl")
    [batched] = engine.render([RenderRequest(prompt="a lighthouse in a storm", seed=100, count=3, **TINY)])
    assert [i.seed for i in batched.images] == [100, 101, 102]
    for i, seed in enumerate((100, 101, 102)):
        [alone] = engine.render([RenderRequest(prompt="a lighthouse in a storm", seed=seed, **TINY)])
        diff = np.abs(_pixels(batched.images[i].image) - _pixels(alone.images[0].image)).max()
        assert diff <= 1, f"image {i} differs by {diff} between batch and single"
    # different seeds give different images (the test would pass trivially on a constant output otherwise)
    assert np.abs(_pixels(batched.images[0].image) - _pixels(batched.images[1].image)).max() > 10


def test_equals_a_direct_diffusers_call(tiny_workspace, tiny_sdxl_dir):
    import torch
    from diffusers import StableDiffusionXLPipeline

    request = RenderRequest(prompt="the keeper climbs the stairs", negative_prompt="blurry", seed=42, **TINY)
    [ours] = SDXLEngine(tiny_workspace).render([request])
    pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny_sdxl_dir), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    direct = pipe(prompt="the keeper climbs the stairs", negative_prompt="blurry",
                  generator=torch.Generator("cpu").manual_seed(42), num_inference_steps=3, guidance_scale=5.0,
                  width=64, height=64).images[0]
    assert np.abs(_pixels(ours.images[0].image) - _pixels(direct)).max() <= 1


@pytest.mark.parametrize("scheduler", ["euler_a", "dpmpp_2m_karras", "ddim"])
def test_named_schedulers_run(tiny_workspace, scheduler):
    engine = SDXLEngine(tiny_workspace)
    request = RenderRequest(prompt="fog", seed=1, scheduler=scheduler, **TINY)
    [result] = engine.render([request])
    assert result.images[0].image.size == (64, 64)
    used = engine.loaded(request).pipe.scheduler  # the scheduler the call ran with
    expected = {"euler_a": ("EulerAncestralDiscreteScheduler", False),
                "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", True), "ddim": ("DDIMScheduler", False)}[scheduler]
    assert (type(used).__name__, bool(used.config.get("use_karras_sigmas"))) == expected


def test_progress_and_cancel(tiny_workspace):
    engine = SDXLEngine(tiny_workspace)
    events = []
    engine.render([RenderRequest(prompt="rain", seed=1, count=2, **TINY)], progress=events.append)
    assert [(e.step, e.total_steps, e.images) for e in events] == [(1, 3, 2), (2, 3, 2), (3, 3, 2)]

    cancel = threading.Event()

    def cancel_after_first(event):
        cancel.set()

    with pytest.raises(CancelledError):
        engine.render([RenderRequest(prompt="rain", seed=1, **TINY)], progress=cancel_after_first, cancel=cancel)


def test_render_cli_records_everything_and_replays_to_zero(run_cli, tiny_workspace):
    home = str(tiny_workspace.home)
    code, out, err = run_cli("--home", home, "render", "warm fractal", "--model", "tiny", "--steps", "2",
                             "--size", "64x64", "--seed", "5", "--count", "2", "--json", "--style", "digital art")
    assert code == 0, err
    assert "engine: cpu" in err and "no CUDA GPU" in err
    first, second = json.loads(out)
    meta = json.loads((Path(first["path"]) / "meta.json").read_text())
    assert meta["engine"]["name"] == "cpu"
    assert meta["model"]["name"] == "tiny" and len(meta["model"]["weights_sha256"]) == 64
    assert meta["device"] == "cpu" and meta["dtype"] == "float32" and meta["attention"] == "sdpa"
    assert meta["full_prompt"] == "warm fractal, digital art"
    assert {"torch", "diffusers", "echo_os"} <= set(meta["versions"])
    assert meta["timings"]["denoise_s"] > 0 and meta["timings"]["decode_s"] > 0
    code, out, err = run_cli("--home", home, "replay", second["id"])
    assert code == 0, err
    # Rendered in a batch of 2, replayed alone: equal, or one level apart by rounding, and then it says so.
    assert "max pixel difference 0 (identical)" in out or (
        "max pixel difference 1 (differs by rounding only: it was rendered in a batch of 2" in out), out
    code, out, err = run_cli("--home", home, "render", "warm fractal", "--model", "tiny", "--steps", "2",
                             "--size", "64x64", "--seed", "11", "--json")
    assert code == 0, err
    [alone] = json.loads(out)
    code, out, err = run_cli("--home", home, "replay", alone["id"])
    assert code == 0, err
    assert "max pixel difference 0 (identical)" in out  # rendered alone, replayed alone: the same pixels


def test_cpu_default_size_is_512_and_only_for_the_cpu_engine(tiny_workspace):
    from echo_os.cli.render import engine_default_size as cpu_default_size
    from echo_os.engines import choose_engine
    from echo_os.render.requests import build_request

    full = build_request(prompt="x", model="tiny", width=1024, height=1024)
    request, note = cpu_default_size(tiny_workspace, full, choose_engine(tiny_workspace, full)[0])
    assert (request.width, request.height) == (512, 512)
    assert note == "512x512 by default with engine cpu; --size 1024x1024 for full size"
    draft = build_request(prompt="x", model="tiny", engine="draft", width=1024, height=1024)
    assert cpu_default_size(tiny_workspace, draft, choose_engine(tiny_workspace, draft)[0]) == (draft, None)


def test_render_without_size_on_the_cpu_uses_echo_os_cpu_size(run_cli, tiny_workspace, monkeypatch):
    """Without --size, SDXL on the CPU renders at ECHO_OS_CPU_SIZE (default 512x512) and says so."""
    home = str(tiny_workspace.home)
    monkeypatch.setenv("ECHO_OS_CPU_SIZE", "64x48")
    code, out, err = run_cli("--home", home, "render", "warm fractal", "--model", "tiny", "--steps", "1",
                             "--no-memory", "--json")
    assert code == 0, err
    assert "engine: cpu" in err and "64x48 by default with engine cpu; --size 1024x1024 for full size" in err
    [artifact] = json.loads(out)
    meta = json.loads((Path(artifact["path"]) / "meta.json").read_text())
    assert (meta["width"], meta["height"]) == (64, 48)

    monkeypatch.setenv("ECHO_OS_CPU_SIZE", "500x500")
    code, out, err = run_cli("--home", home, "render", "warm fractal", "--model", "tiny", "--steps", "1")
    assert code == 2 and err.strip().splitlines()[-1].count("ECHO_OS_CPU_SIZE") == 1 and "'500x500'" in err


def _broken_copy(tiny_sdxl_dir, tmp_path, content: bytes):
    import shutil

    broken = tmp_path / "broken-sdxl"
    shutil.copytree(tiny_sdxl_dir, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(content)
    return broken


@pytest.mark.parametrize("content,needle", [
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"a" * 64 + b"\nsize 10270\n", "LFS"),
    (b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":", "safetensors"),
])
def test_render_with_broken_weights_is_one_clear_line(run_cli, workspace, tiny_sdxl_dir, tmp_path, content, needle):
    from tests.conftest import register_model

    broken = _broken_copy(tiny_sdxl_dir, tmp_path, content)
    register_model(workspace, "broken", broken)
    code, out, err = run_cli("--home", str(workspace.home), "render", "x", "--model", "broken", "--size", "64x64",
                             "--steps", "2")
    assert code == 2, err
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert needle in err and "diffusion_pytorch_model.safetensors" in err
    assert not list(workspace.artifacts_dir.glob("*/*/*/image.png"))


def test_pickle_renamed_safetensors_is_refused(run_cli, workspace, tiny_sdxl_dir, tmp_path):
    import io

    import torch

    from tests.conftest import register_model

    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buffer)
    broken = _broken_copy(tiny_sdxl_dir, tmp_path, buffer.getvalue())
    register_model(workspace, "pickled", broken)
    code, _, err = run_cli("--home", str(workspace.home), "render", "x", "--model", "pickled", "--size", "64x64")
    assert code == 2 and "pickle" in err.lower() and "allow-pickle" in err


@pytest.fixture(scope="module")
def single_file_checkpoint(tmp_path_factory):
    """A tiny SDXL as a diffusers folder and as one original-layout (A1111/ComfyUI) safetensors file."""
    from tests.tiny_models import save_tiny_sdxl, save_tiny_sdxl_single_file

    root = tmp_path_factory.mktemp("single-file")
    folder = save_tiny_sdxl(root / "tiny-sdxl", text_encoder_2_hidden=48)
    return folder, save_tiny_sdxl_single_file(folder, root / "checkpoints" / "tiny_sdxl_v1.safetensors")


def test_single_file_checkpoint_renders_like_its_diffusers_folder(run_cli, workspace, single_file_checkpoint):
    """`file = ...` entries go through diffusers' from_single_file with the local configs: same weights, so
    the same image as the diffusers folder they were written from."""
    folder, checkpoint = single_file_checkpoint
    workspace.models_toml.write_text(
        f'[models.folder]\ntype = "sdxl"\npath = "{folder.as_posix()}"\n\n'
        f'[models.checkpoint]\ntype = "sdxl"\nfile = "{checkpoint.as_posix()}"\nconfig = "{folder.as_posix()}"\n')
    home = str(workspace.home)
    code, out, err = run_cli("--home", home, "models", "verify", "checkpoint")
    assert code == 0, err + out
    images = {}
    for name in ("folder", "checkpoint"):
        code, out, err = run_cli("--home", home, "render", "a lighthouse at dusk", "--model", name, "--seed", "9",
                                 "--steps", "2", "--size", "64x64", "--no-memory", "--json")
        assert code == 0, err
        [artifact] = json.loads(out)
        meta = json.loads((Path(artifact["path"]) / "meta.json").read_text())
        assert meta["model"]["name"] == name
        images[name] = np.asarray(Image.open(Path(artifact["path"]) / "image.png"), dtype=np.int16)
    assert meta["model"]["source"].endswith("tiny_sdxl_v1.safetensors")
    # The same weights; the converted ones may sit differently in memory (split fused qkv), so a CPU kernel
    # may round one level differently on some processors (seen on this project's 2-core machines).
    assert np.abs(images["folder"] - images["checkpoint"]).max() <= 1


def test_no_negative_prompt_lets_the_model_decide(tiny_workspace, tiny_sdxl_dir, run_cli):
    """The tiny pipeline's config has force_zeros_for_empty_prompt true (as SDXL base): a render without a
    negative prompt equals the model card's plain pipe(prompt=...); an old artifact, which recorded "",
    replays with "" (its own behaviour), and meta.json says which was passed."""
    import torch
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny_sdxl_dir), local_files_only=True)
    assert pipe.config.force_zeros_for_empty_prompt is True
    pipe.set_progress_bar_config(disable=True)
    direct = pipe(prompt="a quiet harbour", generator=torch.Generator("cpu").manual_seed(9), num_inference_steps=3,
                  guidance_scale=5.0, width=64, height=64).images[0]
    engine = SDXLEngine(tiny_workspace)
    [ours] = engine.render([RenderRequest(prompt="a quiet harbour", seed=9, **TINY)])
    [empty] = engine.render([RenderRequest(prompt="a quiet harbour", seed=9, negative_prompt="", **TINY)])
    assert np.abs(_pixels(ours.images[0].image) - _pixels(direct)).max() <= 1
    assert np.abs(_pixels(empty.images[0].image) - _pixels(direct)).max() > 1  # "" turns the zeros off

    home = str(tiny_workspace.home)
    code, out, err = run_cli("--home", home, "render", "a quiet harbour", "--model", "tiny", "--seed", "9",
                             "--steps", "3", "--cfg", "5", "--size", "64x64", "--device", "cpu", "--no-memory", "--json")
    assert code == 0, err
    folder = Path(json.loads(out)[0]["path"])
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["negative_prompt_passed"] == "none" and meta["request"]["negative_prompt"] is None
    assert np.abs(_pixels(Image.open(folder / "image.png")) - _pixels(direct)).max() <= 1

    # An artifact from before the rule: its request says "" and it has no negative_prompt_passed.
    old_meta = dict(meta, request=dict(meta["request"], negative_prompt=""))
    old_meta.pop("negative_prompt_passed")
    from echo_os.artifacts.meta import ArtifactMeta

    assert ArtifactMeta.model_validate(old_meta).replay_request().negative_prompt == ""
    from echo_os.artifacts.store import ArtifactStore

    store = ArtifactStore(tiny_workspace)
    try:  # `empty` above is what that replay request renders (negative_prompt ""), and it says so
        assert store.save(empty, 0).meta.negative_prompt_passed == "empty-string"
    finally:
        store.close()


def test_weights_holding_nan_fail_the_call_instead_of_saving_a_black_image(run_cli, workspace, tmp_path):
    """Red-team finding: weights with a valid header but all-NaN tensors rendered a black image saved with
    exit 0. NaN latents fail the call with one line; nothing is saved."""
    import torch
    from safetensors.torch import load_file, save_file

    from tests.conftest import register_model
    from tests.tiny_models import save_tiny_sdxl

    folder = save_tiny_sdxl(tmp_path / "nan-sdxl")
    [weights] = (folder / "unet").glob("*.safetensors")
    tensors = load_file(str(weights))
    tensors = {name: torch.full_like(tensor, float("nan")) if tensor.is_floating_point() else tensor
               for name, tensor in tensors.items()}
    save_file(tensors, str(weights))
    register_model(workspace, "nan", folder)
    code, out, err = run_cli("--home", str(workspace.home), "render", "a lamp", "--model", "nan", "--size", "64x64",
                             "--steps", "2", "--no-memory")
    errors = [line for line in err.splitlines() if line.startswith("Error")]
    assert code != 0 and len(errors) == 1 and "NaN" in errors[0] and "nothing was saved" in errors[0], err
    assert not list(workspace.artifacts_dir.glob("*/*/*/image.png"))
