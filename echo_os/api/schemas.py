"""Request bodies and responses of the HTTP API (they are what /openapi.json describes).

Bodies carry the CLI's names and bounds (echo_os.render.requests); each is turned into a RenderRequest, which
stays the one place a bound is enforced, and whose errors come back as a 422 naming the body field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from echo_os.api.jobs import JobProgress, JobStatus
from echo_os.api.specs import AnimaticSpec, JobViewKind
from echo_os.artifacts.meta import ArtifactKind
from echo_os.engines import check_engine_name
from echo_os.errors import OptionError
from echo_os.render.requests import (  # the option Literals, defined once there
    MAX_COUNT,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_STEPS,
    Attention,
    Device,
    Dtype,
    OptionValue,
    RenderRequest,
    Scheduler,
)


def _registered_engine(name: str) -> str:
    try:
        return check_engine_name(name)
    except OptionError as error:
        raise ValueError(str(error)) from None


# Engines come from plugins, so the schema cannot list them; an unknown name is a 422 listing the known.
EngineName = Annotated[str, Field(min_length=1, max_length=100,
                                  description="auto (the workspace's engine order) or a registered engine."),
                       AfterValidator(_registered_engine)]
SIZE_PATTERN = r"^\s*\d{1,5}\s*[xX×]\s*\d{1,5}\s*$"
MAX_TEXT = MAX_PROMPT_CHARS  # characters of a prompt, negative prompt or style: the CLI's limit
MAX_PROMPTS = 1_000
MAX_SCENES = 100_000  # a batch's `count`: more than any story's scenes
MAX_STORY_TEXT = 2 * 1024 * 1024  # characters of a storyboard or bible sent in a body


class RenderBody(BaseModel):
    """`echo-os render`, as JSON. `size` is WIDTHxHEIGHT (multiples of 8, at most 4096 a side)."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={
        "examples": [{"prompt": "warm fractal", "style": "digital art", "seed": 42, "steps": 30, "cfg": 7,
                      "size": "1024x1024", "count": 1, "project": "Fractals"}]})

    prompt: str = Field(min_length=1, max_length=MAX_TEXT)
    negative: str = Field(default="", max_length=MAX_TEXT, description="Negative prompt.")
    style: str = Field(default="", max_length=MAX_TEXT,
                       description="A named style (GET /api/styles) or style words appended to the prompt.")
    model: str = Field(default="sdxl", min_length=1, max_length=200, description="A model name from models.toml.")
    engine: EngineName = "auto"
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="Seed of image 0; image i uses seed+i. "
                                                                         "Default: random.")
    steps: int = Field(default=30, ge=1, le=MAX_STEPS)
    cfg: float = Field(default=7.0, ge=0.0, le=100.0, allow_inf_nan=False)
    size: str | None = Field(default=None, pattern=SIZE_PATTERN,
                             description="WIDTHxHEIGHT, multiples of 8. Default: the preset's or the model entry's, "
                                         "else 1024x1024; 512x512 when the cpu engine renders (ECHO_OS_CPU_SIZE).")
    count: int = Field(default=1, ge=1, le=MAX_COUNT, description="Images, rendered in one batched call.")
    scheduler: Scheduler = "euler"
    device: Device = "auto"
    dtype: Dtype = "auto"
    attention: Attention = "sdpa"
    options: dict[str, OptionValue] = Field(default_factory=dict, max_length=50,
                                            description="Options of the chosen engine (its own Options model).")
    project: str = Field(default="default", min_length=1, max_length=200)
    parent_id: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    preset: str | None = Field(default=None, min_length=1, max_length=200,
                               description="A render preset (pipelines/presets: draft, fast, quick, quality): its "
                                           "values for every field not sent, as `echo-os render --preset`.")
    tile: Literal["x", "y", "xy"] | None = Field(default=None, description="Seamless texture: the image wraps "
                                                                           "left-right (x), top-bottom (y) or both.")
    again: bool = Field(default=False, description="Render anew even when the same request was rendered "
                        "before (the CLI's --again). Default: an image the project already has (same request "
                        "key, folder on disk) is answered as the job's image (`resumed`), not rendered again.")
    type: Literal["image", "texture", "3d_model", "audio"] = Field(
        default="image", description="What to make: an image, a seamless texture, a 3D model (GLB) or a sound (FLAC).")
    seconds: float | None = Field(default=None, gt=0, le=600, allow_inf_nan=False,
                                  description="type audio: the sound's length in seconds.")


class BatchBody(BaseModel):
    """A story: `storyboard` (story.csv text) with an optional `bible` (STORY_BIBLE.md text), or a list of
    `prompts` (lines in the @prompts.txt syntax). Options override the files, as `echo-os batch` does."""

    model_config = ConfigDict(extra="forbid", strict=True)

    project: str = Field(min_length=1, max_length=200)
    storyboard: str | None = Field(default=None, min_length=1, max_length=MAX_STORY_TEXT)
    bible: str | None = Field(default=None, min_length=1, max_length=MAX_STORY_TEXT)
    prompts: list[str] | None = Field(default=None, min_length=1, max_length=MAX_PROMPTS)
    engine: EngineName = "auto"
    model: str | None = Field(default=None, min_length=1, max_length=200)
    steps: int | None = Field(default=None, ge=1, le=MAX_STEPS)
    cfg: float | None = Field(default=None, ge=0.0, le=100.0, allow_inf_nan=False)
    size: str | None = Field(default=None, pattern=SIZE_PATTERN)
    scheduler: Scheduler | None = None
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    preset: str | None = Field(default=None, min_length=1, max_length=200,
                               description="A render preset (pipelines/presets: draft, fast, quick, quality), as "
                                           "`echo-os batch --preset`: its engine when `engine` is not sent, and its "
                                           "values below the fields sent, above the rows and the bible.")
    style: str | None = Field(default=None, max_length=MAX_TEXT,
                              description="A named style (GET /api/styles) or free words for every scene's "
                                          "composed prompt, as `echo-os batch --style` (the bible's `style` "
                                          "otherwise).")
    ip_adapter: str | None = Field(default=None, min_length=1, max_length=200,
                                   description="IP-Adapter entry for characters with reference images; 'none' "
                                               "leaves them out (as `echo-os batch --ip-adapter`). Default: the "
                                               "bible's `ip_adapter`, else ip-adapter-sdxl.")
    count: int | None = Field(default=None, ge=1, le=MAX_SCENES,
                              description="Render only the first `count` scenes or prompts, as `echo-os batch "
                                          "--count`; story.json and the contact sheet still describe every scene "
                                          "of the story rendered so far. Default: all of them.")
    again: bool = Field(default=False, description="Render anew even when the same request was rendered "
                        "before (the CLI's --again). Default: an image the project already has (same request "
                        "key, folder on disk) is answered as the job's image (`resumed`), not rendered again.")


class AnimaticBody(BaseModel):
    """`echo-os animatic`, as JSON: the project's newest rendered story (by `POST /api/batch` or
    `echo-os batch`) as an MP4, each scene for its story.csv `duration` under its `motion`."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={
        "examples": [{"project": "Lighthouse Keeper", "fps": 24, "size": "1024x576", "fade": 0.5,
                      "captions": True}]})

    project: str = Field(min_length=1, max_length=200)
    fps: int = Field(default=24, ge=1, le=120, description="Frames per second.")
    size: str | None = Field(default=None, pattern=SIZE_PATTERN,
                             description="WIDTHxHEIGHT, even sides. Default: the first scene image's size.")
    fade: float = Field(default=0.5, ge=0.0, le=3600.0, allow_inf_nan=False,
                        description="Crossfade at each cut, seconds (0: hard cuts); at most the shortest scene.")
    captions: bool = Field(default=False, description="Burn each scene's description in and write an .srt.")
    clips: bool = Field(default=False, description="Play a scene's newest clip (`echo-os animate`) instead of "
                                                   "its still.")


class AnimateBody(BaseModel):
    """`echo-os animate`, as JSON: a clip from an image artifact, by an engine whose output kind is video
    (Stable Video Diffusion). Fields mean what the command's options mean."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={
        "examples": [{"artifact_id": "3f9a1c2b7d4e", "model": "svd", "frames": 14, "fps": 7}]})

    artifact_id: str = Field(pattern=r"^[0-9a-fA-F]{12,64}$", description="The image to animate (id or 12+ prefix).")
    model: str = Field(default="svd", min_length=1, description="Image-to-video model (models.toml, type video).")
    frames: int = Field(default=14, description="Frames to generate.")
    fps: int = Field(default=7, description="Frame rate of the clip (also conditions SVD).")
    motion_bucket: int = Field(default=127, description="SVD's amount of motion (0-1023).")
    noise_aug: float = Field(default=0.02, allow_inf_nan=False, description="Noise added to the image first.")
    steps: int = Field(default=25, description="Denoising steps.")
    seed: int | None = Field(default=None, description="Seed (default: the image's own).")
    size: str | None = Field(default=None, pattern=SIZE_PATTERN,
                             description="WIDTHxHEIGHT (default: the image's, rounded down to multiples of 64).")
    decode_chunk_size: int | None = Field(default=None, description="Frames per VAE decode (default: all).")
    cpu_offload: bool = Field(default=False, description="Keep only the running model on the GPU.")
    device: Literal["auto", "cuda", "cpu", "mps"] = "auto"


class RefineBody(BaseModel):
    """`echo-os refine`, as JSON: image-to-image from an artifact. Fields left out take the parent's values
    (prompt, style, negative, steps, cfg, scheduler, model, project); the seed is random when left out."""

    model_config = ConfigDict(extra="forbid", strict=True)

    artifact_id: str = Field(pattern=r"^[0-9a-fA-F]{12,64}$", description="The artifact to refine (id or 12+ prefix).")
    prompt: str | None = Field(default=None, min_length=1, max_length=MAX_TEXT)
    strength: float = Field(default=0.35, gt=0.0, le=1.0, allow_inf_nan=False,
                            description="How much of the image is repainted (A1111's denoising strength).")
    style: str | None = Field(default=None, max_length=MAX_TEXT)
    negative: str | None = Field(default=None, max_length=MAX_TEXT)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    steps: int | None = Field(default=None, ge=1, le=MAX_STEPS)
    cfg: float | None = Field(default=None, ge=0.0, le=100.0, allow_inf_nan=False)
    scheduler: Scheduler | None = None
    model: str | None = Field(default=None, min_length=1, max_length=200)
    engine: EngineName = "auto"
    options: dict[str, OptionValue] = Field(default_factory=dict, max_length=50,
                                            description="The engine's own options (docs/engines.md), over the "
                                                        "parent's when the engine is the parent's or auto.")
    count: int = Field(default=1, ge=1, le=MAX_COUNT)
    project: str | None = Field(default=None, min_length=1, max_length=200)


class CompareBody(BaseModel):
    """`echo-os compare`, as JSON: every combination of the lists given more than one value (up to three)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(min_length=1, max_length=MAX_TEXT)
    negative: str = Field(default="", max_length=MAX_TEXT)
    models: list[str] = Field(default_factory=list, max_length=64)
    schedulers: list[Scheduler] = Field(default_factory=list, max_length=64)
    cfg: list[float] = Field(default_factory=list, max_length=64)
    steps: list[int] = Field(default_factory=list, max_length=64)
    seeds: list[int] = Field(default_factory=list, max_length=64)
    styles: list[str] = Field(default_factory=list, max_length=64)
    engines: list[EngineName] = Field(default_factory=list, max_length=64)
    size: str | None = Field(default=None, pattern=SIZE_PATTERN,
                             description="WIDTHxHEIGHT for every cell. Default: the model entry's, else 1024x1024; "
                                         "512x512 when the cpu engine renders.")
    project: str = Field(default="compare", min_length=1, max_length=200)
    max_cells: int = Field(default=64, ge=1, le=1024)


class StyleBody(BaseModel):
    """A named style for styles.toml: {prompt} in `prompt` marks where the prompt goes."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1, max_length=100)
    prompt: str = Field(default="", max_length=MAX_TEXT)
    negative: str = Field(default="", max_length=MAX_TEXT)
    replace: bool = False


class StyleView(BaseModel):
    name: str
    prompt: str
    negative: str
    builtin: bool
    learned: dict | None = None  # a learned style's provenance (echo_os.render.styles.StyleSource)
    reference: dict | None = None  # its IP-Adapter reference image (StyleReference)


class Submitted(BaseModel):
    """202: the job is stored and will run; follow it at status_url or events_url."""

    job_id: str
    status: JobStatus = "queued"
    status_url: str
    events_url: str


class CompareSubmitted(Submitted):
    cells: int


class BatchSubmitted(Submitted):
    title: str
    scenes: int
    images: int
    warnings: list[str] = Field(default_factory=list)


class AnimaticSubmitted(Submitted):
    project: str
    scenes: int
    frames: int = Field(description="Frames the video will have (the story as it was when queued).")
    fps: int


class EvolveBody(BaseModel):
    """`echo-os evolve`, as JSON: vary the best image round after round (echo_os.reflect.evolve)."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={
        "examples": [{"target": "3f2a9c1b7d4e", "rounds": 3, "per_round": 4}]})

    target: str = Field(min_length=1, max_length=200, description="An artifact id (12+ hex) or a project.")
    rounds: int = Field(default=3, ge=1, le=100)
    per_round: int = Field(default=4, ge=1, le=64)
    objective: str | None = Field(default=None, max_length=200, description="Weights as for --best-of.")
    scorer: str = Field(default="clip", min_length=1, max_length=100,
                        description="clip or a plugin's scorer (ratings need a terminal: use the CLI).")
    min_gain: float = Field(default=0.001, ge=0.0, le=1000.0, allow_inf_nan=False)
    strengths: list[float] = Field(default=[0.3, 0.5, 0.7], min_length=1, max_length=8)
    seed: int = Field(default=0, ge=0, le=2**32 - 1)


class EvolveSubmitted(Submitted):
    run_id: str
    start: str
    record_url: str = Field(description="GET: the run's record (rounds, candidates, scores, gains).")


class JobView(BaseModel):
    id: str
    kind: JobViewKind
    status: JobStatus
    progress: JobProgress
    attempts: int
    interruptions: int = 0  # tries ended by an outage (a worker process or Ray actor died); not attempts
    error: str | None = None
    cancel_requested: bool = False
    created: str
    started: str | None = None
    finished: str | None = None
    timings: dict[str, float] = Field(default_factory=dict)
    artifact_ids: list[str] = Field(default_factory=list, description="In image order; a compare job's grid "
                                                                      "sheet comes last, after its cells.")
    grid_id: str | None = Field(default=None, description="A compare job: the grid sheet's artifact id (the last "
                                                          "of artifact_ids), once it is written.")
    request: RenderRequest | None = Field(default=None, description="What a render job renders.")
    title: str | None = Field(default=None, description="A batch job: the story's title.")
    animatic: AnimaticSpec | None = Field(default=None, description="An animatic job: what it encodes.")
    scenes: int = Field(description="Requests in the job: 1 for a render, one per scene for a batch, one per "
                                    "cell for a compare; an animatic's scenes.")
    engines: list[str] = Field(default_factory=list, description="GET /api/jobs/{id}: the engines that made its "
                               "artifacts so far; `draft` means storyboard cards, not renders (no weights here).")
    last_progress: str | None = Field(default=None, description="A running job: when it last started, took a "
                                                                "step or saved an image.")
    stalled: bool = Field(default=False, description="A running job with no progress for far longer than its "
                                                     "steps take (stuck, not slow): see `warning`.")
    warning: str | None = None


class JobPage(BaseModel):
    items: list[JobView]
    limit: int
    offset: int
    next_offset: int | None = None


class ArtifactView(BaseModel):
    id: str
    created: str
    project: str
    model: str | None = None
    engine: str
    prompt: str
    seed: int
    size: str
    scene: int | None = None
    parent_id: str | None = None
    kind: ArtifactKind = Field(default="image", description="image (rendered here), imported (memory import), "
                               "sheet (a compare grid sheet) or video (an animatic or a clip).")
    image_url: str
    meta: dict | None = Field(default=None, description="The artifact's meta.json (GET /api/artifacts/{id}).")


class ArtifactPage(BaseModel):
    items: list[ArtifactView]
    limit: int
    offset: int
    next_offset: int | None = None


class Health(BaseModel):
    status: Literal["ok", "degraded"] = "ok"  # degraded (HTTP 503): the worker the server started is gone
    version: str
    worker: Literal["running", "stopped", "disabled"]
    jobs: dict[str, int]


class ErrorBody(BaseModel):
    detail: str


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for the errors a route can answer with."""
    reasons = {400: "The body is not UTF-8 text", 401: "Missing or wrong bearer token (when the server has one)",
               403: "A cross-site browser request", 404: "No such job or artifact",
               409: "The job had already finished", 413: "The body is larger than the limit",
               422: "A field is out of bounds; `detail[].loc` names it"}
    return {status: {"model": ErrorBody if status != 422 else None, "description": reasons[status]}
            for status in statuses}


class WorkerView(BaseModel):
    """One render worker (GET /api/workers)."""

    slot: int
    pid: int | None
    device: str  # cuda:N (the GPU it is pinned to), cpu, in-process (--workers 0), or ray ... on NODE
    model: str | None  # the model of its latest engine
    jobs_done: int
    images_done: int
    images_per_min: float | None  # since its first job
    last_error: str | None
    restarts: int  # how often this slot's process died and was started again
    state: str  # starting, idle, rendering, stopped
    heartbeat: str | None
    calls_done: int | None = None  # pipeline calls rendered (Ray actors: `serve --ray`)
    models: list[str] | None = None  # the models a Ray actor keeps loaded, least recently used first
    last_progress: str | None = None  # when it last claimed a job, took a step or saved an image
    step_s: float | None = None  # its recent time per step (what "slow" means for it)
    stalled: bool = False  # rendering with no progress for far longer than its steps take: see `warning`
    warning: str | None = None


class WorkerList(BaseModel):
    items: list[WorkerView]
