"""The one small interface every engine implements, what it declares about itself, and a base class
with the defaults.

An engine plugin registers an engine *class* (see echo_os/engines/hookspecs.py and docs/engines.md).
Before an engine is created, the chooser reads the class: its `capabilities`, its `Options` model and
its `availability(settings, request)`. `create(settings, reason)` then makes the instance that renders.

The values that cross the boundary (RenderResult, RuntimeInfo, ModelInfo, ...) live in echo_os/render/results.py
and are re-exported here.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict

from echo_os.render.results import (  # re-exported: the older import path
    MemoryInfo,
    ModelInfo,
    ProgressCallback,
    ProgressEvent,
    RenderedImage,
    RenderResult,
    RuntimeInfo,
    Timings,
)

if TYPE_CHECKING:
    from echo_os.render.requests import RenderRequest
    from echo_os.settings import Settings

_T = TypeVar("_T", bound=BaseModel)

# What an engine can produce (Capabilities.output). A new modality adds its kind here and an engine for it.
OUTPUT_KINDS: tuple[str, ...] = ("image", "video", "mesh", "audio")

__all__ = [
    "BaseEngine", "Capabilities", "Engine", "EngineOptions", "EnginePlugin",
    # re-exported from echo_os.render.results
    "MemoryInfo", "ModelInfo", "ProgressCallback", "ProgressEvent", "RenderedImage", "RenderResult", "RuntimeInfo",
    "Timings",
]


@dataclass(frozen=True)
class Capabilities:
    """What an engine can do. Read by `choose_engine` (output kind, weights, network, text/reference images,
    LoRAs, sizes), by the scheduler (max_batch, tiled_decode) and by replay (deterministic)."""

    output: str = "image"  # what it produces: one of OUTPUT_KINDS; the chooser asks only engines of the kind asked
    needs_weights: bool = True  # renders `request.model` from local weights (models.toml must resolve it)
    network: bool = False  # opens network connections: only with `[engines] allow_network = true`
    txt2img: bool = True
    img2img: bool = False  # takes an init image and a strength (request.init_image: `echo-os refine`)
    # img2img denoises steps x strength of the schedule (diffusers), so steps x strength < 1 runs no step;
    # False: it runs all `steps` over the last `strength` of the schedule (ComfyUI's KSampler denoise)
    img2img_scales_steps: bool = True
    refiner: bool = False  # hands the base's latents to a refiner model (request.refiner: --refiner)
    reference_images: bool = False  # IP-Adapter reference images (request.ip_adapter)
    loras: bool = False
    deterministic: bool = True  # the same request and seed give the same pixels (batched or alone)
    max_batch: int = 1
    sizes: tuple[tuple[int, int], ...] | None = None  # the only (width, height) it renders; None: any
    # render() takes `vae_tiling=True` (decode tile by tile): the OOM back-off's last step, and replay of an
    # image decoded that way. Engines without it are never passed the keyword.
    tiled_decode: bool = False
    tiling: bool = False  # seamless textures (RenderRequest.tile), engines/tiling.py

    def unmet(self, request: "RenderRequest") -> str | None:
        """Why an engine with these capabilities cannot render `request`, or None when it can."""
        found = self.unmet_field(request)
        return found[1] if found else None

    def unmet_field(self, request: "RenderRequest") -> tuple[str, str] | None:
        """(the request field at fault, why) when an engine with these capabilities cannot render
        `request`, else None. The field is what a host names in its error (render.prepare)."""
        wanted = getattr(request, "output", "image")
        if self.output != wanted:
            plural = {"mesh": "3D models", "audio": "sounds"}
            return "engine", f"it makes {plural.get(self.output, self.output + 's')}, not {plural.get(wanted, wanted + 's')}"
        if not self.txt2img and request.init_image is None:
            return "engine", "it does not render from a text prompt"
        if request.init_image is not None and not self.img2img:
            return "engine", "it does not refine an image (no img2img)"
        if request.refiner is not None and not self.refiner:
            return "refiner", "it takes no refiner model"
        if request.ip_adapter is not None and not self.reference_images:
            return "ip_adapter", "it takes no reference images"
        if request.loras and not self.loras:
            return "lora", "it takes no LoRAs"
        if request.tile is not None and not self.tiling:
            return "tile", "--tile needs an engine that renders seamless tiles (one with model weights)"
        if self.sizes is not None and (request.width, request.height) not in self.sizes:
            allowed = ", ".join(f"{w}x{h}" for w, h in self.sizes)
            return "size", f"it renders only the sizes {allowed}, not {request.width}x{request.height}"
        return None


def table_settings(settings: "Settings", name: str, model: type[_T]) -> _T:
    """The workspace's `[engines.NAME]` table in echo-os.toml validated by `model`; a bad value is one
    UsageError line naming the file, the table and the key (openai and comfyui use it)."""
    from pydantic import ValidationError

    from echo_os.errors import UsageError

    try:
        return model.model_validate(settings.engine_table(name))
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        key = ".".join(str(p) for p in first.get("loc", ())) or name
        message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        raise UsageError(f"{settings.config_toml}: [engines.{name}] {key}: {message}.") from None


class EngineOptions(BaseModel):
    """Options only one engine understands (`--option KEY=VALUE`, the API's `options`). Each engine
    subclasses this, the way each llm model has its own Options; unknown keys are an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Options of a parent image that a refine does not carry over (they choose what a txt2img render is,
    # e.g. ComfyUI's `workflow`: a refine takes the engine's own refine template instead).
    refine_drops: ClassVar[tuple[str, ...]] = ()


class Engine(Protocol):
    """Requests in (already found compatible), one result per request out.

    `progress` is called once per denoising step; `cancel` is checked between steps and makes the
    engine raise echo_os.errors.CancelledError without returning partial images.
    """

    name: str
    reason: str  # why it was chosen: recorded in meta.json
    capabilities: Capabilities
    Options: type[EngineOptions]
    # pipeline calls the renderer may run at once, each on a thread of its own (echo_os.render.ray.RayEngine:
    # one per Ray actor); 1 for an engine that renders on the caller's thread
    concurrent_calls: int

    def render(
        self,
        requests: "list[RenderRequest]",
        *,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> list[RenderResult]:
        """Engines whose capabilities say tiled_decode also take `vae_tiling: bool = False` (per call)."""
        ...

    def free_memory(self, request: "RenderRequest") -> MemoryInfo | None:
        """Free accelerator memory once `request`'s model is loaded; None when memory does not limit
        the batch (the scheduler then uses max_batch, or one image per call on the CPU)."""
        ...

    def runs_on_cpu(self, request: "RenderRequest") -> bool:
        """Whether `request` would run on the CPU (batching is slower there above tiny sizes)."""
        ...

    def release(self, request: "RenderRequest") -> None:
        """Free what is kept loaded for `request`'s model (compare renders one model at a time)."""
        ...


class EnginePlugin(Protocol):
    """What a plugin registers: an engine class (or any object with these members)."""

    name: str
    capabilities: Capabilities
    Options: type[EngineOptions]

    def availability(self, settings: "Settings", request: "RenderRequest") -> str | None:
        """None when this engine can render `request` here; else the one-line reason it cannot. May raise
        a UsageError for a request that is wrong whatever the engine (e.g. --device cuda with no GPU)."""
        ...

    def create(self, settings: "Settings", reason: str) -> Engine: ...

    def default_size(self, settings: "Settings") -> tuple[int, int] | None:
        """The size to render at when the user gave none; None for the usual default."""
        ...


class BaseEngine:
    """Defaults for an engine class: subclass it, set `name` and `capabilities`, write `render`."""

    name: str = ""  # set by each engine class; an instance may carry another (SDXLEngine(name="cpu"))
    capabilities: ClassVar[Capabilities] = Capabilities()
    Options: ClassVar[type[EngineOptions]] = EngineOptions
    concurrent_calls: int = 1

    def __init__(self, settings: "Settings", reason: str = ""):
        self.settings = settings
        self.reason = reason or f"chosen with --engine {self.name}"

    @classmethod
    def availability(cls, settings: "Settings", request: "RenderRequest") -> str | None:
        return None

    @classmethod
    def knows_model(cls, settings: "Settings", model: str) -> bool:
        """Whether `model`, a name models.toml lacks, is one this engine takes itself (a hosted engine's
        own models); otherwise an unknown model is an error whatever the engine (render.prepare)."""
        return False

    @classmethod
    def check_request(cls, settings: "Settings", request: "RenderRequest", options: EngineOptions) -> None:
        """Raise an OptionError (naming the option) for a request this engine refuses on any machine,
        beyond what `capabilities` says (a hosted model's allowed sizes). Checked before availability."""

    @classmethod
    def check_runtime(cls, settings: "Settings", request: "RenderRequest") -> None:
        """Raise an OptionError (naming the request field) for what this machine lacks to run `request` with
        this engine (a device, a package), so a server refuses it before queueing. Default: nothing; an
        engine that needs no device, like one that draws cards, keeps the default."""

    @classmethod
    def create(cls, settings: "Settings", reason: str) -> "BaseEngine":
        return cls(settings, reason)

    @classmethod
    def default_size(cls, settings: "Settings") -> tuple[int, int] | None:
        return None

    def free_memory(self, request: "RenderRequest") -> MemoryInfo | None:
        return None

    def template_digest(self, request: "RenderRequest") -> str | None:
        """The sha256 of what renders `request` beyond the request itself (a ComfyUI template), recorded as
        provenance `template_sha256`; an earlier image recorded under another digest is rendered again,
        and replay says the template changed since. None: nothing outside the request."""
        return None

    def runs_on_cpu(self, request: "RenderRequest") -> bool:
        return False

    def release(self, request: "RenderRequest") -> None:
        """Free what is kept loaded for `request`'s model (compare renders one model at a time). Default: nothing."""

    def render(self, requests: "list[RenderRequest]", *, progress: ProgressCallback | None = None,
               cancel: threading.Event | None = None) -> list[RenderResult]:
        raise NotImplementedError
