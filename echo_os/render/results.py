"""The values that cross the engine boundary on the way out: progress, timings, model and runtime info,
rendered images and results.

They live next to the request types (echo_os/render/requests.py), below engines/, models/ and artifacts/, so
every package that reads or writes them imports downhill (tests/test_import_cycles.py keeps it so).
echo_os.engines.base re-exports them for code written against the older import path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL.Image import Image

    from echo_os.render.requests import RenderRequest


@dataclass(frozen=True)
class ProgressEvent:
    """One denoising step of one pipeline call (`images` is how many images that call renders); `preview`:
    now and then a small JPEG data URL of the first image so far (echo_os.render.preview), else None."""

    step: int
    total_steps: int
    images: int
    preview: str | None = None


ProgressCallback = Callable[[ProgressEvent], None]


@dataclass
class Timings:
    load_s: float = 0.0
    encode_s: float = 0.0
    denoise_s: float = 0.0
    decode_s: float = 0.0
    save_s: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {name: round(value, 4) for name, value in self.__dict__.items()}


@dataclass(frozen=True)
class ModelInfo:
    """What meta.json records about the weights."""

    name: str
    source: str
    kind: str
    weights_sha256: str | None = None


@dataclass(frozen=True)
class RuntimeInfo:
    """How the images were actually made: engine, why, and the numeric set-up."""

    engine: str
    reason: str
    device: str
    dtype: str
    attention: str
    model: ModelInfo | None = None
    ip_adapter: ModelInfo | None = None  # the adapter weights, when the request had reference images
    vae_tiling: bool = False  # decoded tile by tile (the OOM back-off's last step); changes pixels slightly
    profile: str | None = None  # the CUDA render profile (engines/cuda_profile.py), when one was applied


@dataclass(frozen=True)
class MemoryInfo:
    """Free memory on the engine's GPU once the weights are loaded, for the automatic batch size."""

    free_bytes: int
    dtype: str


@dataclass
class RenderedVideo:
    """The frames of one clip (an engine whose output kind is "video"), saved as a video artifact."""

    frames: list[Any]  # PIL images, in order
    fps: int
    settings: dict[str, Any] = field(default_factory=dict)  # every setting the clip was made with: meta.json `settings`


@dataclass
class RenderedAsset:
    """A mesh or a sound (an engine whose output kind is "mesh" or "audio"), saved by
    echo_os.artifacts.assets.save_asset; RenderedImage.image is its preview (turntable sheet, waveform)."""

    kind: str  # "mesh" | "audio"
    data: Any  # mesh: a trimesh.Trimesh; audio: float32 samples, shape (frames, channels), in [-1, 1]
    sample_rate: int = 0  # audio only
    placeholder: bool = False  # a draft engine's labelled stand-in, never a generated model or sound
    settings: dict[str, Any] = field(default_factory=dict)  # meta.json `settings`


@dataclass
class RenderedImage:
    """One output of a render call: an image, or for a video engine the clip's poster frame with `video`."""

    image: "Image"
    seed: int
    # Where a remote engine got the image (provider, model, response id, usage, revised prompt, cached,
    # reproducible): recorded as meta.json's `provenance`. None for local engines.
    provenance: dict[str, Any] | None = None
    video: RenderedVideo | None = None
    asset: RenderedAsset | None = None  # a mesh or a sound; `image` is then its preview


@dataclass
class RenderResult:
    request: "RenderRequest"
    images: list[RenderedImage]
    runtime: RuntimeInfo
    timings: Timings = field(default_factory=Timings)
