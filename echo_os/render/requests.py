"""RenderRequest and its validation: the one typed value every edge (CLI, API, story planner) builds.

Bounds live here once; the CLI turns a ValidationError into one line and exit 2, the API into a 422
naming the field.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import secrets
from dataclasses import dataclass
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from echo_os.errors import OptionError, UsageError
from echo_os.render.text import MAX_PROMPT_CHARS as MAX_PROMPT_CHARS  # re-exported: the older import path
from echo_os.render.text import check_prompt_text as check_prompt_text

MAX_SIDE = 4096
MAX_STEPS = 200
MAX_COUNT = 64
MAX_SEED = 2**32 - 1

# Each option list is one Literal; the tuples the CLI's click.Choice and the docs use are derived from it
# (the API schemas use the Literals). Scheduler names are mapped to diffusers classes by the sdxl engine;
# listed here so validation does not import diffusers. Engine names come from the engine registry.
# lcm, tcd and euler_trailing are for few-step distilled models (LCM-LoRA, TCD, SDXL-Turbo/Lightning).
Scheduler = Literal["euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "ddim", "heun", "unipc", "lcm", "tcd",
                    "euler_trailing"]
Device = Literal["auto", "cuda", "cpu", "mps"]
Dtype = Literal["auto", "bfloat16", "float16", "float32"]
Attention = Literal["sdpa", "xformers"]
SCHEDULERS: tuple[str, ...] = get_args(Scheduler)
DEVICES: tuple[str, ...] = get_args(Device)
DTYPES: tuple[str, ...] = get_args(Dtype)
ATTENTIONS: tuple[str, ...] = get_args(Attention)
# Values of an engine's own options (`--option KEY=VALUE`); the engine's Options model checks them.
OptionValue = str | int | float | bool | None

# The rules of prompt text (a length limit, no control characters) live in render.text, below the styles.
_SIZE_RE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")


def parse_size(text: str) -> tuple[int, int]:
    """'1024x768' -> (1024, 768). Bounds are checked by RenderRequest, not here."""
    match = _SIZE_RE.match(text or "")
    if not match:
        raise UsageError(f"--size must look like WIDTHxHEIGHT (for example 1024x1024), got {text!r}.")
    return int(match.group(1)), int(match.group(2))


def random_seed() -> int:
    return secrets.randbelow(MAX_SEED + 1)


class StoryFields(BaseModel):
    """Where an image sits in a story; filled by the story planner, empty for a plain render."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    scene: int | None = None
    slug: str | None = None
    description: str | None = None
    characters: tuple[str, ...] = ()
    location: str | None = None
    props: tuple[str, ...] = ()
    camera: str | None = None
    lighting: str | None = None
    time_of_day: str | None = None
    mood: str | None = None
    bible_hash: str | None = None


class IPAdapterImage(BaseModel):
    """One reference image: where it is, and the sha256 of its bytes (what the embedding cache is keyed by)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class IPAdapterReference(BaseModel):
    """One IP-Adapter in the pipeline call: a character's reference images and how strongly they count."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str  # the character id, for people reading meta.json
    images: tuple[IPAdapterImage, ...] = Field(min_length=1)
    scale: float = Field(default=0.6, ge=0.0, le=2.0, allow_inf_nan=False)


class IPAdapterInput(BaseModel):
    """Reference-image conditioning: one adapter (a models.toml `ip-adapter` entry) per reference, in order."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    references: tuple[IPAdapterReference, ...] = Field(min_length=1)

    def batch_key(self) -> tuple[object, ...]:
        """Only requests with the same adapter set (same images, same scales) share a pipeline call:
        the pipeline takes one embedding per adapter for the whole batch."""
        return (self.model, tuple((tuple(image.sha256 for image in ref.images), ref.scale)
                                  for ref in self.references))


class LoraInput(BaseModel):
    """One LoRA applied to the UNet and text encoders for this request."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str  # the models.toml entry, or the path as the bible gave it, for people reading meta.json
    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    scale: float = Field(default=1.0, ge=0.0, le=2.0, allow_inf_nan=False)


class InitImage(BaseModel):
    """The image an img2img request starts from (`echo-os refine`): the parent artifact, where its PNG is,
    the sha256 of those bytes (checked before rendering, so a replay starts from the same pixels) and how
    much of it is repainted (strength 1: all of it; A1111's "Denoising strength")."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    artifact_id: str | None = None
    path: str  # relative to the workspace's artifacts folder when the image is inside it
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    strength: float = Field(gt=0.0, le=1.0, allow_inf_nan=False)


class RefinerInput(BaseModel):
    """SDXL's base+refiner: the base denoises the first `switch` of the schedule (denoising_end) and hands
    its latents to the refiner (a models.toml sdxl entry, e.g. the SDXL refiner), which does the rest
    (denoising_start)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(min_length=1)
    switch: float = Field(default=0.8, gt=0.0, lt=1.0, allow_inf_nan=False)


class RenderRequest(BaseModel):
    """One prompt rendered `count` times; image i uses seed + i through its own generator."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    # None: no negative prompt given, so the model's own rule applies (SDXL base zeroes the negative
    # embedding: force_zeros_for_empty_prompt). "" is what artifacts made before that rule recorded, and
    # their replay passes "" again.
    negative_prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    style: str = Field(default="", max_length=MAX_PROMPT_CHARS)
    style_name: str | None = None  # the named style `style` came from (styles.toml or a built-in)
    seed: int = Field(default_factory=random_seed, ge=0, le=MAX_SEED)
    steps: int = Field(default=30, ge=1, le=MAX_STEPS)
    cfg: float = Field(default=7.0, ge=0.0, le=100.0)
    width: int = Field(default=1024, gt=0, le=MAX_SIDE)
    height: int = Field(default=1024, gt=0, le=MAX_SIDE)
    count: int = Field(default=1, ge=1, le=MAX_COUNT)
    scheduler: Scheduler = "euler"
    model: str = "sdxl"
    engine: str = Field(default="auto", min_length=1)  # "auto" or a registered engine (echo_os.engines)
    device: Device = "auto"
    dtype: Dtype = "auto"
    attention: Attention = "sdpa"
    options: dict[str, OptionValue] = Field(default_factory=dict)  # the engine's own (its Options model)
    project: str = "default"
    parent_id: str | None = None
    story: StoryFields = Field(default_factory=StoryFields)
    ip_adapter: IPAdapterInput | None = None
    loras: tuple[LoraInput, ...] = ()
    # Seamless tiling (engines/tiling.py): the image wraps left-right ("x"), top-bottom ("y") or both.
    tile: Literal["x", "y", "xy"] | None = None
    init_image: InitImage | None = None  # img2img: start from this image (echo-os refine)
    refiner: RefinerInput | None = None  # base+refiner (--refiner NAME --switch 0.8)
    # What to make (echo_os.engines.base.OUTPUT_KINDS): only engines of this kind are asked. "video": a clip
    # from `init_image` (echo-os animate), one per seed. "mesh": a 3D model (GLB), "audio": a sound (FLAC);
    # both saved by echo_os.artifacts.assets with a preview image.
    output: Literal["image", "video", "mesh", "audio"] = "image"

    @field_validator("prompt")
    @classmethod
    def _prompt_not_empty(cls, value: str) -> str:
        if not value or not value.strip():
            raise ValueError("the prompt is empty; give a description of the image")
        return value

    @field_validator("prompt", "negative_prompt", "style")
    @classmethod
    def _plain_text(cls, value: str | None) -> str | None:
        return value if value is None else check_prompt_text(value)

    @field_validator("cfg")
    @classmethod
    def _cfg_finite(cls, value: float) -> float:
        if math.isnan(value) or math.isinf(value):
            raise ValueError("cfg must be a finite number between 0 and 100")
        return value

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError(f"must be a multiple of 8 (got {value}); try {max(8, value - value % 8)}")
        return value

    @field_validator("project")
    @classmethod
    def _project_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the project name is empty")
        return value.strip()

    @property
    def full_prompt(self) -> str:
        """The text the model sees: the style with the prompt in its {prompt} place, else the prompt then
        ", " and the style (echo_os.render.styles.expand_prompt)."""
        from echo_os.render.styles import expand_prompt

        return expand_prompt(self.style, self.prompt) if self.style.strip() else self.prompt

    @property
    def seeds(self) -> list[int]:
        return [(self.seed + i) % (MAX_SEED + 1) for i in range(self.count)]

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"

    def batch_key(self) -> tuple[object, ...]:
        """Requests with equal keys can share one batched pipeline call."""
        return (self.model, self.width, self.height, self.steps, self.cfg, self.scheduler,
                self.device, self.dtype, self.attention,
                self.ip_adapter.batch_key() if self.ip_adapter is not None else None,
                tuple((lora.sha256, lora.scale) for lora in self.loras),
                self.negative_prompt is None, tuple(sorted(self.options.items())),
                (self.init_image.sha256, self.init_image.strength) if self.init_image is not None else None,
                (self.refiner.model, self.refiner.switch) if self.refiner is not None else None, self.tile,
                self.output)

    def image_requests(self) -> list["RenderRequest"]:
        """One request per image (count 1, its own seed): what meta.json records and replay renders."""
        return [self.model_copy(update={"seed": seed, "count": 1}) for seed in self.seeds]


# Reference image and LoRA paths are where the files happen to be; their sha256 is what they are.
_IP_ADAPTER_PATHS = {"references": {"__all__": {"images": {"__all__": {"path"}}}}}


def image_request_key(request: RenderRequest) -> str:
    """The resume key of a one-image request: sha256 of its canonical JSON (reference paths left out).

    Two requests with the same key make the same image with the same engine, so a batch re-run skips
    images whose key is already in the project (see scheduler.render_requests, resume=True).
    """
    if request.count != 1:
        raise ValueError(f"image_request_key takes a one-image request, got count {request.count}")
    # keys from before LoRAs stay
    exclude: dict[str, Any] = {"loras": {"__all__": {"path"}}} if request.loras else {"loras": True}
    if not request.options:
        exclude["options"] = True  # and from before engine options
    if request.ip_adapter:
        exclude["ip_adapter"] = _IP_ADAPTER_PATHS
    if request.tile is None:
        exclude["tile"] = True  # keys from before tiling stay
    # Keys from before named styles and img2img stay the same; an init image is keyed by its sha256, not path.
    if request.style_name is None:
        exclude["style_name"] = True
    exclude["init_image"] = {"path"} if request.init_image is not None else True
    if request.refiner is None:
        exclude["refiner"] = True
    if request.output == "image":
        exclude["output"] = True  # keys from before output kinds stay
    fields = request.model_dump(mode="json", exclude=exclude)
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def describe_validation_error(error: ValidationError) -> str:
    """One line naming the first bad field and what is allowed, for the CLI."""
    first = error.errors()[0]
    field = ".".join(str(part) for part in first.get("loc", ())) or "request"
    message = first.get("msg", "invalid value")
    message = message.removeprefix("Value error, ")
    if first.get("type") == "literal_error":
        allowed = first.get("ctx", {}).get("expected", "")
        message = f"got {first.get('input')!r}; allowed values: {allowed}"
    return f"invalid {field}: {message}"


def build_request(**fields: Any) -> RenderRequest:
    """Build a RenderRequest or raise UsageError with one line naming the field."""
    try:
        return RenderRequest(**fields)
    except ValidationError as error:
        raise UsageError(describe_validation_error(error)) from None


# ---- clips -----------------------------------------------------------------------------------------
# An image-to-video clip in the terms its host gives (`echo-os animate`, POST /api/animate): the render core's
# type, as RenderRequest is; echo_os.motion.clips turns it into the video RenderRequest the renderer renders,
# and the video engine (engines/video.py) reads it back from that request (video.clip_request).

DEFAULT_VIDEO_MODEL = "svd"
MAX_FRAMES = 128


@dataclass(frozen=True)
class ClipRequest:
    """One image-to-video render. width/height None: the source image's size, rounded down to a multiple of 64
    (SVD was trained at 1024x576). decode_chunk_size None: every frame in one VAE call."""

    seed: int
    model: str = DEFAULT_VIDEO_MODEL
    frames: int = 14
    fps: int = 7
    motion_bucket: int = 127
    noise_aug: float = 0.02
    steps: int = 25
    min_cfg: float = 1.0
    max_cfg: float = 3.0
    width: int | None = None
    height: int | None = None
    decode_chunk_size: int | None = None
    cpu_offload: bool = False
    device: str = "auto"
    dtype: str = "auto"

    def check(self) -> None:
        """Every value checked before any weights move; OptionError names the option."""
        def need(ok: bool, option: str, message: str) -> None:
            if not ok:
                raise OptionError(f"--{option} {message}.", option)

        need(0 <= self.seed <= MAX_SEED, "seed", f"must be between 0 and {MAX_SEED}, got {self.seed}")
        need(2 <= self.frames <= MAX_FRAMES, "frames", f"must be between 2 and {MAX_FRAMES}, got {self.frames}")
        need(1 <= self.fps <= 60, "fps", f"must be between 1 and 60, got {self.fps}")
        need(0 <= self.motion_bucket <= 1023, "motion-bucket", f"must be between 0 and 1023, got {self.motion_bucket}")
        need(math.isfinite(self.noise_aug) and 0.0 <= self.noise_aug <= 1.0, "noise-aug",
             f"must be between 0 and 1, got {self.noise_aug:g}")
        need(1 <= self.steps <= 200, "steps", f"must be between 1 and 200, got {self.steps}")
        need(math.isfinite(self.min_cfg) and math.isfinite(self.max_cfg) and 0 <= self.min_cfg <= self.max_cfg <= 30,
             "cfg", f"must satisfy 0 <= min <= max <= 30, got {self.min_cfg:g}..{self.max_cfg:g}")
        if self.decode_chunk_size is not None:
            need(1 <= self.decode_chunk_size <= self.frames, "decode-chunk-size",
                 f"must be between 1 and --frames ({self.frames}), got {self.decode_chunk_size}")
        for option, side in (("width", self.width), ("height", self.height)):
            if side is not None:
                need(16 <= side <= 2048 and side % 8 == 0, "size",
                     f"sides must be multiples of 8 between 16 and 2048, got {option} {side}")
