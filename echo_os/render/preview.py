"""Live previews of a render while it denoises: the latents turned into a small JPEG data URL.

SDXL's VAE latent has 4 channels; a fixed linear map (4 -> RGB, plus a bias) is close enough to what the
VAE would decode to show composition and colour, costs one small matrix product and needs no extra
weights. The numbers are the widely used least-squares fit of SDXL latents to their decoded pixels.

`PreviewThrottle` decides when a step gets a preview: at most one every `min_interval_s` seconds and
every `every_steps` steps, never the last step (the real image follows), so a preview costs well under
a few percent of a step (benchmarks/bench_previews.py measures it).
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# rows: latent channels 0..3; columns: R, G, B
SDXL_LATENT_RGB = ((0.3651, 0.4232, 0.4341),
                   (-0.2533, -0.0042, 0.1068),
                   (0.1076, 0.1111, -0.0362),
                   (-0.3165, -0.2492, -0.2188))
SDXL_LATENT_RGB_BIAS = (0.1084, -0.0256, -0.0665)
PREVIEW_MAX_SIDE = 192  # pixels; a preview is a thumbnail in the page, not the image
PREVIEW_JPEG_QUALITY = 70


@dataclass
class PreviewThrottle:
    """`due(step, total)`: whether this step should send a preview."""

    min_interval_s: float = 0.5
    every_steps: int = 1
    clock: Callable[[], float] = time.monotonic
    _last: float | None = field(default=None, init=False)

    def due(self, step: int, total_steps: int) -> bool:
        if step >= total_steps or step % max(1, self.every_steps):
            return False
        now = self.clock()
        if self._last is not None and now - self._last < self.min_interval_s:
            return False
        self._last = now
        return True


def latent_preview(latents: "torch.Tensor") -> str | None:
    """The first image of a (batch, 4, h, w) latent tensor as a `data:image/jpeg;base64,...` URL, at
    most PREVIEW_MAX_SIDE pixels a side (the latent is 1/8 of the image, so 1024x1024 gives 128x128); None
    for a latent that is not SDXL's 4 channels (the map would mean nothing)."""
    import torch
    from PIL import Image

    with torch.no_grad():
        latent = latents[0].detach().float().cpu()  # (4, h, w)
        if latent.ndim != 3 or latent.shape[0] != 4:
            return None
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
