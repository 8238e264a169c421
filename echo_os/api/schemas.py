"""Request bodies and responses of the HTTP API (they are what /openapi.json describes).

Bodies carry the CLI's names and bounds (echo_os.requests); each is turned into a RenderRequest, which
stays the one place a bound is enforced, and whose errors come back as a 422 naming the body field.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from echo_os.api.jobs import JobKind, JobProgress, JobStatus
from echo_os.engines import check_engine_name
from echo_os.errors import OptionError
from echo_os.requests import (  # noqa: F401  (the option Literals, defined once there)
    MAX_COUNT,
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
MAX_TEXT = 20_000  # characters of a prompt, negative prompt or style
MAX_PROMPTS = 1_000
MAX_STORY_TEXT = 2 * 1024 * 1024  # characters of a storyboard or bible sent in a body


class RenderBody(BaseModel):
    """`echo-os render`, as JSON. `size` is WIDTHxHEIGHT (multiples of 8, at most 4096 a side)."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={
        "examples": [{"prompt": "warm fractal", "style": "digital art", "seed": 42, "steps": 30, "cfg": 7,
                      "size": "1024x1024", "count": 1, "project": "Fractals"}]})

    prompt: str = Field(min_length=1, max_length=MAX_TEXT)
    negative: str = Field(default="", max_length=MAX_TEXT, description="Negative prompt.")
    style: str = Field(default="", max_length=MAX_TEXT, description="Style words appended to the prompt.")
    model: str = Field(default="sdxl", min_length=1, max_length=200, description="A model name from models.toml.")
    engine: EngineName = "auto"
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="Seed of image 0; image i uses seed+i. "
                                                                         "Default: random.")
    steps: int = Field(default=30, ge=1, le=MAX_STEPS)
    cfg: float = Field(default=7.0, ge=0.0, le=100.0, allow_inf_nan=False)
    size: str = Field(default="1024x1024", pattern=SIZE_PATTERN, description="WIDTHxHEIGHT, multiples of 8.")
    count: int = Field(default=1, ge=1, le=MAX_COUNT, description="Images, rendered in one batched call.")
    scheduler: Scheduler = "euler"
    device: Device = "auto"
    dtype: Dtype = "auto"
    attention: Attention = "sdpa"
    options: dict[str, OptionValue] = Field(default_factory=dict, max_length=50,
                                            description="Options of the chosen engine (its own Options model).")
    project: str = Field(default="default", min_length=1, max_length=200)
    parent_id: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


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
    ip_adapter: str = Field(default="ip-adapter-sdxl", min_length=1, max_length=200,
                            description="IP-Adapter entry for characters with reference images; 'none' leaves "
                                        "them out (as `echo-os batch --ip-adapter`)")


class Submitted(BaseModel):
    """202: the job is stored and will run; follow it at status_url or events_url."""

    job_id: str
    status: JobStatus = "queued"
    status_url: str
    events_url: str


class BatchSubmitted(Submitted):
    title: str
    scenes: int
    images: int
    warnings: list[str] = Field(default_factory=list)


class JobView(BaseModel):
    id: str
    kind: JobKind
    status: JobStatus
    progress: JobProgress
    attempts: int
    error: str | None = None
    cancel_requested: bool = False
    created: str
    started: str | None = None
    finished: str | None = None
    timings: dict[str, float] = Field(default_factory=dict)
    artifact_ids: list[str] = Field(default_factory=list)
    request: RenderRequest | None = Field(default=None, description="What a render job renders.")
    title: str | None = Field(default=None, description="A batch job: the story's title.")
    scenes: int = Field(description="Requests in the job: 1 for a render, one per scene for a batch.")


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
    image_url: str
    meta: dict | None = Field(default=None, description="The artifact's meta.json (GET /api/artifacts/{id}).")


class ArtifactPage(BaseModel):
    items: list[ArtifactView]
    limit: int
    offset: int
    next_offset: int | None = None


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str
    worker: Literal["running", "stopped", "disabled"]
    jobs: dict[str, int]


class ErrorBody(BaseModel):
    detail: str


def error_responses(*statuses: int) -> dict[int, dict]:
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
    device: str  # cuda:N (the GPU it is pinned to), cpu, or in-process (--workers 0)
    model: str | None  # the model of its latest engine
    jobs_done: int
    images_done: int
    images_per_min: float | None  # since its first job
    last_error: str | None
    restarts: int  # how often this slot's process died and was started again
    state: str  # starting, idle, rendering, stopped
    heartbeat: str | None


class WorkerList(BaseModel):
    items: list[WorkerView]
