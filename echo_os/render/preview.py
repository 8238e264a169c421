"""Live previews of a render while it denoises: the latents turned into a small JPEG data URL.

SDXL's VAE latent has 4 channels; a fixed linear map (4 -> RGB, plus a bias) is close enough to what the
VAE would decode to show composition and colour, costs one small matrix product and needs no extra
weights. The numbers are the widely used least-squares fit of SDXL latents to their decoded pixels.

With a `taesd` entry in models.toml whose weights are on this machine (TAESD-XL, madebyollin/taesdxl: a
tiny distilled VAE, diffusers' AutoencoderTiny, about 10 MB), previews are decoded by it instead: real
decoded pixels, sharper than the linear map. The latent is first shrunk to the preview's size / 8 (TAESD
upsamples by 8), so the decode makes a PREVIEW_MAX_SIDE image directly and costs a small fraction of
decoding the full latent. `preview_decoder` loads it once per process through the model cache.

`PreviewThrottle` decides when a step gets a preview: at most one every `min_interval_s` seconds and
every `every_steps` steps, never the last step (the real image follows), so a preview costs well under
a few percent of a step (benchmarks/previews.py measures it). It also keeps the time previews took within
PREVIEW_BUDGET of the render's time so far: a TAESD decode is used only when its measured cost fits
(`affords`), else that step's preview is the linear map's. On a GPU a TAESD preview costs about a
millisecond and always fits; on a CPU it costs the better part of a second (benchmarks/RESULTS.md), so a
CPU render gets a sharp preview only now and then and stays within the budget.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from echo_os.settings import Settings

# rows: latent channels 0..3; columns: R, G, B
SDXL_LATENT_RGB = ((0.3651, 0.4232, 0.4341),
                   (-0.2533, -0.0042, 0.1068),
                   (0.1076, 0.1111, -0.0362),
                   (-0.3165, -0.2492, -0.2188))
SDXL_LATENT_RGB_BIAS = (0.1084, -0.0256, -0.0665)
PREVIEW_MAX_SIDE = 192  # pixels; a preview is a thumbnail in the page, not the image
PREVIEW_JPEG_QUALITY = 70
PREVIEW_BUDGET = 0.03  # previews may take at most this share of the render's time so far (issue 30: <= 5%)
TAESD_TYPE = "taesd"  # models.toml type of a preview decoder (AutoencoderTiny folder)
TAESD_CACHE_KIND = "taesd"


@dataclass
class PreviewThrottle:
    """`due(step, total)`: whether this step should send a preview."""

    min_interval_s: float = 0.5
    every_steps: int = 1
    clock: Callable[[], float] = time.monotonic
    budget: float = PREVIEW_BUDGET
    _last: float | None = field(default=None, init=False)
    _started: float | None = field(default=None, init=False)
    _spent: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        self._started = self.clock()

    def affords(self, cost_s: float) -> bool:
        """Whether a preview costing `cost_s` keeps all previews within `budget` of the time so far."""
        elapsed = self.clock() - (self._started or 0.0)
        return self._spent + cost_s <= self.budget * elapsed

    def spend(self, seconds: float) -> None:
        """Record the time a preview took."""
        self._spent += seconds

    def due(self, step: int, total_steps: int) -> bool:
        if step >= total_steps or step % max(1, self.every_steps):
            return False
        now = self.clock()
        if self._last is not None and now - self._last < self.min_interval_s:
            return False
        self._last = now
        return True


def latent_preview(latents: "torch.Tensor", decoder: Any = None) -> str | None:
    """The first image of a (batch, 4, h, w) latent tensor as a `data:image/jpeg;base64,...` URL, at
    most PREVIEW_MAX_SIDE pixels a side (the latent is 1/8 of the image, so 1024x1024 gives 128x128); None
    for a latent that is not SDXL's 4 channels (the map would mean nothing). `decoder`: a TAESD
    (AutoencoderTiny, from preview_decoder) to decode with instead of the linear map."""
    import torch
    from PIL import Image

    with torch.no_grad():
        if latents.ndim != 4 or latents.shape[1] != 4:
            return None
        if decoder is not None:
            pixels = _taesd_pixels(latents[:1].detach(), decoder)
        else:
            latent = latents[0].detach().float().cpu()  # (4, h, w)
            factors = torch.tensor(SDXL_LATENT_RGB)
            bias = torch.tensor(SDXL_LATENT_RGB_BIAS)
            rgb = torch.einsum("chw,cr->hwr", latent, factors) + bias  # roughly -1..1
            pixels = ((rgb + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    image = Image.fromarray(pixels, "RGB")
    if max(image.size) > PREVIEW_MAX_SIDE:
        image.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=PREVIEW_JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _taesd_pixels(latent: "torch.Tensor", decoder: Any) -> Any:
    """(h, w, 3) uint8 pixels of a (1, 4, h, w) latent decoded by TAESD, the latent first shrunk so that the
    decoded image is at most PREVIEW_MAX_SIDE a side (a preview is a thumbnail; the decode's cost grows
    with its output's area). TAESD takes the pipeline's latents as they are (its scaling factor is 1)."""
    import torch

    height, width = latent.shape[-2:]
    scale = min(1.0, PREVIEW_MAX_SIDE / 8 / max(height, width))
    if scale < 1.0:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        latent = torch.nn.functional.interpolate(latent.float(), size=size, mode="area")
    parameter = next(decoder.parameters())
    decoded = decoder.decode(latent.to(device=parameter.device, dtype=parameter.dtype)).sample[0]  # -1..1
    return ((decoded.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


@dataclass
class PreviewDecoder:
    """A loaded TAESD and what one preview decode costs on its device (measured when loaded, then updated
    by each use), which PreviewThrottle.affords weighs."""

    model: Any
    cost_s: float

    def decode(self, latents: "torch.Tensor") -> str | None:
        """latent_preview with this decoder, its cost measured."""
        started = time.perf_counter()
        url = latent_preview(latents, self.model)
        self.cost_s = 0.5 * self.cost_s + 0.5 * (time.perf_counter() - started)
        return url


def preview_decoder(settings: "Settings", device: str, dtype: "torch.dtype") -> PreviewDecoder | None:
    """The first `taesd` entry of models.toml whose weights are on this machine, loaded (once per process,
    through the model cache) on `device` in `dtype`, with the cost of one preview decode timed on a
    preview-sized latent; None when there is none (previews use the linear map). A taesd entry that is
    present but cannot be loaded raises, as any other model would."""
    from echo_os.errors import EchoError
    from echo_os.models import load_registry
    from echo_os.render.cache import CacheKey, model_cache, weights_bytes

    registry = load_registry(settings)
    found: tuple[str, str] | None = None  # (entry name, weights folder)
    for entry in sorted((e for e in registry.entries() if e.type == TAESD_TYPE), key=lambda e: e.name):
        try:
            found = entry.name, str(registry.resolve(entry.name).local_path)
            break
        except EchoError:  # not pulled: the next one, else the linear map
            continue
    if found is None:
        return None
    name, folder = found

    def load() -> PreviewDecoder:
        import torch
        from diffusers import AutoencoderTiny

        model = AutoencoderTiny.from_pretrained(  # type: ignore[no-untyped-call]
            folder, torch_dtype=dtype, local_files_only=True).to(device).eval()
        sample = torch.zeros(1, 4, PREVIEW_MAX_SIDE // 8, PREVIEW_MAX_SIDE // 8)
        latent_preview(sample, model)  # the first call pays for allocations: time the second
        started = time.perf_counter()
        latent_preview(sample, model)
        return PreviewDecoder(model=model, cost_s=time.perf_counter() - started)

    decoder: PreviewDecoder = model_cache().get(CacheKey(TAESD_CACHE_KIND, folder, device, (str(dtype),)), load,
                                                label=name, settings=settings, estimate_bytes=weights_bytes(folder))
    return decoder
