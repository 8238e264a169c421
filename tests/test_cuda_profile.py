"""echo_os.engines.cuda_profile on CPU, with a tiny random-weight SDXL pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from echo_os.engines import cuda_profile
from echo_os.engines.cuda_profile import PROFILES, RenderProfile
from tests.helpers import load_gpu_harness

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "data" / "tiny_sdxl"
GiB = 2**30

harness = load_gpu_harness()


@pytest.fixture(scope="module")
def tokenizer_root(tmp_path_factory):
    return tmp_path_factory.mktemp("tokenizers")


@pytest.fixture
def make_pipe(tokenizer_root):
    """A fresh tiny SDXL pipeline, float32, same random weights every time."""
    return lambda: harness.build_random_sdxl(TINY, "cpu", seed=0, tokenizer_root=tokenizer_root)


def render(pipe, steps=2, cfg=5.0, seeds=(7,), **kwargs):
    import torch

    with torch.inference_mode():
        return pipe(prompt=["a red fox in snow"] * len(seeds), negative_prompt=["blurry"] * len(seeds),
                    num_inference_steps=steps, guidance_scale=cfg, width=64, height=64,
                    generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
                    output_type="np", **kwargs).images


def test_profile_table():
    default = PROFILES["default-cuda"]
    assert (default.dtype, default.channels_last, default.compile, default.compile_mode, default.fullgraph) == (
        "bfloat16", True, True, "max-autotune", True)
    assert default.sdpa_backend in ("flash", "cudnn")
    assert "not yet measured on a gpu" in default.description.lower()
    assert not PROFILES["eager"].compile and PROFILES["cpu"].dtype == "float32"
    assert PROFILES["cfg-cutoff"].image_changing and PROFILES["cfg-cutoff"].cfg_cutoff == 0.4
    assert not any(p.image_changing for p in (default, PROFILES["eager"], PROFILES["cpu"]))
    with pytest.raises(ValueError, match="unknown render profile"):
        cuda_profile.get_profile("turbo")


def test_profile_validation():
    with pytest.raises(ValueError, match="image_changing"):
        RenderProfile(name="x", cfg_cutoff=0.4)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        RenderProfile(name="x", cfg_cutoff=0.0, image_changing=True)
    with pytest.raises(ValueError, match="dtype"):
        RenderProfile(name="x", dtype="int8")
    with pytest.raises(ValueError, match="sdpa_backend"):
        RenderProfile(name="x", sdpa_backend="xformers")


def test_cpu_profile_keeps_the_image(make_pipe):
    direct = render(make_pipe())
    pipe = make_pipe()
    applied = cuda_profile.apply_profile(pipe, PROFILES["cpu"], "cpu")
    assert applied.compiled == [] and applied.dtype == "float32"
    np.testing.assert_array_equal(render(pipe), direct)


def test_eager_profile_equals_a_plain_bf16_pipeline(make_pipe):
    import torch

    plain = make_pipe().to(torch.bfloat16)
    pipe = make_pipe()
    applied = cuda_profile.apply_profile(pipe, PROFILES["eager"], "cpu")
    assert pipe.unet.dtype == torch.bfloat16 and applied.sdpa_backend is None
    with cuda_profile.sdpa_context(PROFILES["eager"], "cpu"):
        ours = render(pipe)
    np.testing.assert_array_equal(ours, render(plain))


def test_sdpa_kernel_choice_on_cpu(make_pipe):
    flash = RenderProfile(name="flash", sdpa_backend="flash")
    pipe = make_pipe()
    cuda_profile.apply_profile(pipe, flash, "cpu")
    with cuda_profile.sdpa_context(flash, "cpu"):
        flash_images = render(pipe)
    with cuda_profile.sdpa_backend_context("math"):
        math_images = render(pipe)
    assert np.abs(flash_images - math_images).max() <= harness.DEFAULT_DRIFT_TOL
    # No efficient-attention kernel on CPU: PyTorch's own choice, and a note saying so.
    backend, note = cuda_profile.resolve_sdpa_backend("efficient", "cpu")
    assert backend is None and "no CPU kernel" in note


def test_cudnn_attention_falls_back_to_flash_on_old_cudnn(monkeypatch):
    import torch

    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 90100)
    backend, note = cuda_profile.resolve_sdpa_backend("cudnn", "cuda")
    assert backend == "flash" and "90100" in note
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91600)
    assert cuda_profile.resolve_sdpa_backend("cudnn", "cuda") == ("cudnn", None)
    assert cuda_profile.resolve_sdpa_backend("flash", "cuda") == ("flash", None)


def test_cfg_cutoff_step():
    assert cuda_profile.cfg_cutoff_step(0.4, 30) == 12
    assert cuda_profile.cfg_cutoff_step(1.0, 30) == 30
    assert cuda_profile.cfg_cutoff_step(0.01, 30) == 1
    with pytest.raises(ValueError):
        cuda_profile.cfg_cutoff_callback(1.5)


def _latents_per_step(pipe, fraction, steps=4):
    """Render with an optional CFG cut-off, recording the latents after every step."""
    recorded = []

    def record(pipe_, step_index, timestep, callback_kwargs):
        recorded.append(callback_kwargs["latents"].clone())
        return callback_kwargs

    cutoff = cuda_profile.cfg_cutoff_callback(fraction) if fraction is not None else None
    images = render(pipe, steps=steps,
                    callback_on_step_end=cuda_profile.combine_step_callbacks(cutoff, record),
                    callback_on_step_end_tensor_inputs=["latents", *cuda_profile.CFG_CUTOFF_TENSOR_INPUTS])
    return images, recorded


def test_cfg_cutoff_changes_the_image_only_after_the_cutoff_step(make_pipe):
    import torch

    pipe = make_pipe()
    base_images, base = _latents_per_step(pipe, None)
    full_images, full = _latents_per_step(pipe, 1.0)
    np.testing.assert_array_equal(full_images, base_images)  # cut-off at 100%: nothing changes
    cut_images, cut = _latents_per_step(pipe, 0.5)  # 4 steps: steps 0-1 guided, 2-3 not
    for step in (0, 1):
        assert torch.equal(cut[step], base[step]), step
    assert not torch.equal(cut[2], base[2])
    assert np.abs(cut_images - base_images).max() > 0
    # The next call starts guided again.
    again_images, _ = _latents_per_step(pipe, None)
    np.testing.assert_array_equal(again_images, base_images)


def test_cfg_cutoff_is_a_no_op_without_cfg(make_pipe):
    pipe = make_pipe()
    kwargs = cuda_profile.profile_call_kwargs(PROFILES["cfg-cutoff"])
    np.testing.assert_array_equal(render(pipe, cfg=1.0, steps=3, **kwargs), render(pipe, cfg=1.0, steps=3))


def test_decode_latents_matches_the_pipeline(make_pipe):
    import torch

    pipe = make_pipe()
    whole = render(pipe, seeds=(1, 2))
    with torch.inference_mode():
        latents = pipe(prompt=["a red fox in snow"] * 2, negative_prompt=["blurry"] * 2, num_inference_steps=2,
                       guidance_scale=5.0, width=64, height=64, output_type="latent",
                       generator=[torch.Generator("cpu").manual_seed(s) for s in (1, 2)]).images
    one_by_one = cuda_profile.decode_latents(pipe, latents, vae_batch=1)
    np.testing.assert_allclose(one_by_one, whole, atol=1e-5)


@pytest.mark.slow  # 13 s on 2 cores
def test_warm_up_runs_every_batch_shape(make_pipe):
    pipe = make_pipe()
    profile = PROFILES["eager"]
    cuda_profile.apply_profile(pipe, profile, "cpu")
    records = cuda_profile.warm_up(pipe, profile, 64, 64, [1, 2], device="cpu")
    assert [r.batch_size for r in records] == [1, 2] and all(r.seconds > 0 for r in records)
    cut = RenderProfile(name="cut", cfg_cutoff=0.4, image_changing=True, vae_batch=1)
    assert len(cuda_profile.warm_up(pipe, cut, 64, 64, [2], device="cpu")) == 1


def test_apply_compile_profile_records_what_it_did(make_pipe, tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    pipe = make_pipe()
    applied = cuda_profile.apply_profile(pipe, PROFILES["default-cuda"], "cpu", cache_dir=tmp_path)
    assert applied.compiled == ["unet", "vae.decode"]
    assert applied.compile_mode == "default"  # max-autotune is for CUDA
    assert any("max-autotune" in note for note in applied.notes)
    assert applied.channels_last and applied.sdpa_backend is None
    import os

    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path.resolve() / "torchinductor")
    assert applied.as_dict()["profile"] == "default-cuda"


def test_compile_cache_goes_to_the_workspace_unless_the_user_chose(tmp_path, monkeypatch):
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    # torch writes its /tmp default into the variable once anything asks for the cache folder.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    assert cuda_profile.configure_compile_cache(tmp_path) == tmp_path.resolve() / "torchinductor"
    chosen = tmp_path / "mine"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(chosen))
    assert cuda_profile.configure_compile_cache(tmp_path / "other") == chosen


def test_pick_batch_size_is_monotone_and_bounded():
    sizes = [cuda_profile.pick_batch_size(free * GiB, 1024, 1024) for free in range(0, 200, 2)]
    assert sizes == sorted(sizes)
    assert set(sizes) <= {1, 2, 4, 8, 16}
    assert sizes[0] == 1 and sizes[-1] == 16
    assert cuda_profile.pick_batch_size(70 * GiB, 1024, 1024) == 16  # an H100 after the weights
    assert cuda_profile.pick_batch_size(8 * GiB, 1024, 1024) == 2
    for free in (6, 12, 24, 48):
        small = cuda_profile.pick_batch_size(free * GiB, 512, 512)
        big = cuda_profile.pick_batch_size(free * GiB, 1024, 1024)
        fp32 = cuda_profile.pick_batch_size(free * GiB, 1024, 1024, "float32")
        sliced = cuda_profile.pick_batch_size(free * GiB, 1024, 1024, vae_batch=1)
        assert small >= big >= fp32
        assert sliced >= big
    assert cuda_profile.pick_batch_size(10**15, 1024, 1024, max_batch=4) == 4
    assert cuda_profile.log2_batches(16) == [1, 2, 4, 8, 16]
    assert cuda_profile.max_batch_for(PROFILES["default-cuda"], 70 * GiB, 1024, 1024) == 16


def test_engine_profile_choice_is_cuda_only_and_exact(monkeypatch):
    from echo_os.engines.sdxl import choose_profile
    from echo_os.errors import UsageError

    assert choose_profile("cpu", "float32") is None
    assert choose_profile("cuda", "bfloat16").name == "default-cuda"
    assert choose_profile("cuda", "float16") is None  # the profile runs in bf16; an fp16 request keeps fp16
    monkeypatch.setenv("ECHO_OS_PROFILE", "eager")
    assert choose_profile("cuda", "bfloat16").compile is False
    monkeypatch.setenv("ECHO_OS_PROFILE", "cfg-cutoff")
    with pytest.raises(UsageError, match="changes the image"):
        choose_profile("cuda", "bfloat16")
    monkeypatch.setenv("ECHO_OS_PROFILE", "warp-speed")
    with pytest.raises(UsageError, match="not a render profile"):
        choose_profile("cuda", "bfloat16")
