"""Live previews decoded by TAESD-XL (echo_os.render.preview) when models.toml has a `taesd` entry here: a tiny
random-weight AutoencoderTiny built by the fixture, saved with save_pretrained and loaded back through the real
registry and model cache, as a pulled madebyollin/taesdxl would be."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image


def save_tiny_taesd(folder):
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    model = AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                            num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1), latent_channels=4)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_taesd_dir(tmp_path_factory):
    return save_tiny_taesd(tmp_path_factory.mktemp("tiny-taesd") / "tiny-taesd")


def register_taesd(settings, folder) -> None:
    with open(settings.models_toml, "a", encoding="utf-8") as handle:
        handle.write(f'\n[models.taesd-tiny]\ntype = "taesd"\npath = "{folder.as_posix()}"\n')


def jpeg_size(url: str) -> tuple[int, int]:
    assert url.startswith("data:image/jpeg;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size


def test_no_taesd_here_means_the_linear_map(workspace):
    import torch

    from echo_os.render.preview import preview_decoder

    # the default registry names taesdxl (madebyollin/taesdxl), not pulled on this machine
    assert preview_decoder(workspace, "cpu", torch.float32) is None


def test_a_taesd_entry_is_loaded_once_and_decodes_the_preview(workspace, tiny_taesd_dir):
    import torch
    from diffusers import AutoencoderTiny

    from echo_os.render.preview import latent_preview, preview_decoder

    register_taesd(workspace, tiny_taesd_dir)
    loaded = preview_decoder(workspace, "cpu", torch.float32)
    assert loaded is not None and isinstance(loaded.model, AutoencoderTiny) and loaded.cost_s > 0
    assert preview_decoder(workspace, "cpu", torch.float32) is loaded  # the model cache keeps it
    decoder = loaded.model
    direct = AutoencoderTiny.from_pretrained(tiny_taesd_dir)
    assert all(torch.equal(a, b) for a, b in zip(decoder.state_dict().values(), direct.state_dict().values()))

    latents = torch.randn(1, 4, 128, 96, generator=torch.Generator().manual_seed(1))  # a 1024x768 image
    url = latent_preview(latents, decoder)
    assert jpeg_size(url) == (144, 192)  # decoded straight at preview size: the latent shrunk to 24x18 first
    shrunk = torch.nn.functional.interpolate(latents, size=(24, 18), mode="area")
    with torch.no_grad():
        want = ((direct.decode(shrunk).sample[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    got = torch.tensor(np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",")[1])))))
    assert (got.permute(2, 0, 1).int() - want.int()).abs().float().mean() < 8  # JPEG's loss only
    assert latent_preview(latents, None) != url


def test_the_engine_sends_taesd_previews_when_the_entry_is_there(tiny_workspace, tiny_taesd_dir):
    from echo_os.engines.sdxl import SDXLEngine
    from echo_os.render.requests import RenderRequest

    request = RenderRequest(prompt="a red lighthouse", model="tiny", steps=4, width=64, height=64, seed=3)

    def previews() -> list[str]:
        engine = SDXLEngine(tiny_workspace, name="cpu", force_device="cpu")
        engine.preview_budget = 1.0  # a tiny render is over before 3% of it would pay for a decode (see below)
        events: list = []
        engine.render([request], progress=events.append)
        return [e.preview for e in events if e.preview]

    linear = previews()
    # The tiny VAE downsamples by 2, so the 64x64 image's latent is 32x32: the linear map gives one pixel per
    # latent cell; TAESD upsamples by 8, so it decodes that latent (shrunk to 24x24) to the preview's 192x192.
    assert linear and {jpeg_size(url) for url in linear} == {(32, 32)}
    register_taesd(tiny_workspace, tiny_taesd_dir)
    sharp = previews()
    assert sharp and {jpeg_size(url) for url in sharp} == {(192, 192)}


def test_the_budget_keeps_previews_within_their_share_of_the_render():
    from echo_os.render.preview import PreviewThrottle

    now = [0.0]
    throttle = PreviewThrottle(min_interval_s=0.0, clock=lambda: now[0], budget=0.03)
    now[0] = 1.0
    assert throttle.affords(0.03) and not throttle.affords(0.031)  # 3% of one second
    throttle.spend(0.9)  # a slow (CPU) TAESD decode
    now[0] = 10.0
    assert not throttle.affords(0.001)  # 0.9 s spent of the 0.3 s ten seconds allow: linear previews only
    now[0] = 40.0
    assert throttle.affords(0.3) and not throttle.affords(0.31)


def test_a_taesd_entry_is_a_folder(workspace, tmp_path):
    from echo_os.errors import UsageError
    from echo_os.models import load_registry

    (tmp_path / "t.safetensors").write_bytes(b"x")
    workspace.models_toml.write_text(f'[models.bad]\ntype = "taesd"\nfile = "{(tmp_path / "t.safetensors").as_posix()}"\n')
    with pytest.raises(UsageError, match="taesd model is a folder"):
        load_registry(workspace)

