"""The one small interface every engine implements, and the values that cross it."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Protocol

if TYPE_CHECKING:
    from PIL.Image import Image

    from echo_os.requests import RenderRequest
    from echo_os.settings import Settings


@dataclass(frozen=True)
class Capabilities:
    """What an engine can do, so the scheduler and `auto` can choose."""

    txt2img: bool = True
    img2img: bool = False
    ip_adapter: bool = False
    max_batch: int = 1
    needs_weights: bool = True
    deterministic: bool = True
    tiling: bool = False  # seamless textures (RenderRequest.tile), engines/tiling.py


@dataclass(frozen=True)
class ProgressEvent:
    """One denoising step of one pipeline call (`images` is how many images that call renders)."""

    step: int
    total_steps: int
    images: int


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


@dataclass
class RenderedImage:
    image: "Image"
    seed: int


@dataclass
class RenderResult:
    request: "RenderRequest"
    images: list[RenderedImage]
    runtime: RuntimeInfo
    timings: Timings = field(default_factory=Timings)


class Engine(Protocol):
    """Requests in (already found compatible), one result per request out.

    `progress` is called once per denoising step; `cancel` is checked between steps and makes the
    engine raise echo_os.errors.CancelledError without returning partial images.
    """

    name: str
    capabilities: Capabilities

    def render(
        self,
        requests: "list[RenderRequest]",
        *,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> list[RenderResult]: ...


EngineFactory = Callable[["Settings", "RenderRequest"], Engine]
