"""What the routes share: the options, ApiState (handed to routes by a dependency), request
validation that names the body's fields, and reading artifact images from inside the workspace."""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable

from fastapi import Depends, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from echo_os.api.events import EventHub, JobCancelled
from echo_os.api.idempotency import WaitingClients
from echo_os.api.jobs import DEFAULT_MAX_ATTEMPTS, Admission, IdempotencyKey, Job, JobStore
from echo_os.api.processes import DEFAULT_LEASE_S, WorkerPool
from echo_os.api.security import DEFAULT_MAX_BODY_BYTES, resolve_inside
from echo_os.api.stalls import DEFAULT_STALL_AFTER_S
from echo_os.api.worker import Worker
from echo_os.errors import ModelError, NotFoundError, OptionError, UsageError
from echo_os.render.requests import RenderRequest, parse_size
from echo_os.settings import Settings

log = logging.getLogger(__name__)

IMAGE_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


@dataclass(frozen=True)
class ApiOptions:
    """How the server behaves; `echo-os serve` fills this from its options."""

    max_batch: int = 8  # images per pipeline call; 1 turns dynamic batching off
    batch_window_ms: int = 25  # how long the worker waits for compatible jobs to batch with
    default_model: str = "sdxl"  # for the OpenAI route when the model is omitted or an OpenAI name
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    allowed_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    # How long the job of a synchronous request whose client disconnected waits for a retry to attach
    # before it is cancelled: the openai client's backoff between tries is at most 8 s.
    abandoned_grace_s: float = 10.0
    # Render worker processes (echo_os.api.processes); 0 renders on a thread in the HTTP process.
    workers: int = 0
    lease_s: float = DEFAULT_LEASE_S  # a worker process's claim lasts this long unless renewed
    worker_log_level: str = "INFO"
    worker_nice: int | None = None  # niceness of worker processes; None: 0 (CPU_WORKER_NICE)
    # A busy worker or running job with no progress for max(this, STALL_STEPS x its step time) is shown as
    # stalled (echo_os.api.stalls).
    stall_after_s: float = DEFAULT_STALL_AFTER_S
    # `serve --ray`: render on Ray actors (echo_os.api.ray_workers). "local" starts a Ray instance on this
    # machine, "auto" or host:port joins a cluster; None: no Ray. ray_actors None: one per GPU, else 2.
    ray_address: str | None = None
    ray_actors: int | None = None


class Submitter:
    """Stores jobs through one writer thread; jobs that arrive while it writes share the next commit
    (group commit: one fsync for many submissions)."""

    def __init__(self, jobs: JobStore, on_stored: Callable[[list[Job]], None]):
        self.jobs = jobs
        self.on_stored = on_stored
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="echo-os-jobs-writer")
        self._pending: list[tuple[Job, IdempotencyKey | None, asyncio.Future]] = []
        self._flushing = False
        self._flush_task: asyncio.Task | None = None  # held: the loop keeps only weak references to tasks

    async def submit(self, job: Job, key: IdempotencyKey | None = None) -> Admission:
        """Store `job`, unless `key` is live: then the key's job is answered (see JobStore.admit)."""
        loop = asyncio.get_running_loop()
        stored = loop.create_future()
        self._pending.append((job, key, stored))
        if not self._flushing:
            self._flushing = True
            self._flush_task = loop.create_task(self._flush())
        return await stored

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    admissions = await loop.run_in_executor(self._executor, self.jobs.admit,
                                                            [(job, key) for job, key, _ in batch])
                except Exception as error:  # noqa: BLE001 - each waiting request gets the error
                    for _, _, stored in batch:
                        if not stored.done():
                            stored.set_exception(error)
                    continue
                new = [job for (job, _, _), admission in zip(batch, admissions) if admission.outcome == "stored"]
                if new:
                    self.on_stored(new)
                for (_, _, stored), admission in zip(batch, admissions):
                    if not stored.done():
                        stored.set_result(admission)
        finally:
            self._flushing = False

    def close(self) -> None:
        self._executor.shutdown(wait=True)


@dataclass
class ApiState:
    """What the routes use, opened by the lifespan."""

    settings: Settings
    options: ApiOptions
    jobs: JobStore
    hub: EventHub
    submitter: Submitter
    catalog: "CatalogReader"
    worker: Worker | WorkerPool | None = None
    started_worker: bool = False
    waiting: WaitingClients | None = None  # clients of the synchronous route, per job

    @property
    def worker_status(self) -> str:
        if not self.started_worker:
            return "disabled"
        return "running" if self.worker is not None and self.worker.alive else "stopped"


class CatalogReader:
    """The artifact catalog for the routes: one connection, one reader at a time."""

    def __init__(self, settings: Settings):
        from echo_os.artifacts.store import open_catalog

        self._catalog = open_catalog(settings)
        self._lock = threading.Lock()

    def resolve(self, artifact_id: str):
        with self._lock:
            return self._catalog.resolve_id(artifact_id)

    def query(self, **filters):
        with self._lock:
            return self._catalog.query(**filters)

    def close(self) -> None:
        with self._lock:
            self._catalog.close()


async def cancel_if_unanswered(api: ApiState, job_id: str) -> None:
    """The job of a synchronous request that no client waits for any more: cancelled, unless it has
    saved an image (then it finishes, and its images are in the catalog) or already ended."""
    from starlette.concurrency import run_in_threadpool

    job = await run_in_threadpool(api.jobs.get, job_id)
    if job is None or job.terminal or job.artifact_ids:
        return
    after = await run_in_threadpool(api.jobs.request_cancel, job_id)
    if after is None:
        return
    if after.status == "cancelled" and job.status == "queued":
        api.hub.publish(JobCancelled(job_id=job_id, artifact_ids=after.artifact_ids))
    elif after.status == "running" and api.worker is not None:
        api.worker.cancel(job_id)
    log.info("job %s: its client went away before any image was saved; cancelled", job_id)


def api_state(request: Request) -> ApiState:
    return request.app.state.api


Api = Annotated[ApiState, Depends(api_state)]


# ---- validation -----------------------------------------------------------------------------------

def field_error(field_name: str | tuple, message: str, value: Any = None) -> RequestValidationError:
    loc = ("body", *field_name) if isinstance(field_name, tuple) else ("body", field_name)
    return RequestValidationError([{"type": "value_error", "loc": loc, "msg": message, "input": value}])


def style_request_fields(settings: Settings, style: str | None, negative: str | None, where: str = "style") -> dict:
    """RenderRequest fields for a body's style (echo_os.render.styles.style_fields: a named style, else free text),
    or a 422 on `where` for a one-word value that names no style. /api/render, /api/refine and
    /v1/images/generations share this rule."""
    from echo_os.render.styles import style_fields

    try:
        return style_fields(settings, style, negative)
    except OptionError as error:
        raise field_error(where, str(error), style) from None


def request_errors(error: ValidationError, names: dict[str, str]) -> RequestValidationError:
    """A RenderRequest's ValidationError as a 422 naming the fields the client sent (`names` maps
    RenderRequest field -> body field)."""
    errors = []
    for item in error.errors(include_url=False):
        loc = tuple(names.get(str(part), part) for part in item.get("loc", ()))
        message = str(item.get("msg", "invalid value")).removeprefix("Value error, ")
        if not loc and "engine" in message:
            loc = ("engine",)
        errors.append({"type": item.get("type", "value_error"), "loc": ("body", *loc), "msg": message,
                       "input": item.get("input")})
    return RequestValidationError(jsonable_encoder(errors, custom_encoder={Exception: str}))


def check_model(settings: Settings, model: str, engine: str, where: str | tuple = "model") -> None:
    """A model name must be in models.toml (unless the engine named renders without weights)."""
    from echo_os.engines import AUTO, get_engine

    if engine != AUTO and not get_engine(engine).capabilities.needs_weights:
        return
    from echo_os.models import load_registry

    try:
        load_registry(settings).get(model)
    except NotFoundError as error:
        raise field_error(where, str(error), model) from None


def build_render_request(settings: Settings, fields: dict[str, Any], *, size: str,
                         names: dict[str, str], given: set[str] | None = None) -> RenderRequest:
    """RenderRequest from a body's fields and its "WxH" size, or a 422 naming the body's field.

    given: the RenderRequest fields the client sent ("size" for the size; from the body's
    `model_fields_set`); every other steps, cfg, scheduler and size takes the model entry's render
    default (echo_os.models.defaults), and the entry's LoRA is applied."""
    size_name = names.get("width", "size")
    if given is not None:
        fields, size = _with_model_defaults(settings, fields, size, given, names)
    try:
        width, height = parse_size(size)
    except UsageError as error:
        raise field_error(size_name, str(error).replace("--size", size_name), size) from None
    try:
        request = RenderRequest(**fields, width=width, height=height)
    except ValidationError as error:
        raise request_errors(error, names) from None
    check_model(settings, request.model, request.engine, names.get("model", "model"))
    if request.engine != "auto":  # the named engine's own options: a 422 on the bad one, before queueing
        from echo_os.engines import engine_options, get_engine

        plugin = get_engine(request.engine)
        try:
            options = engine_options(plugin, request)
        except OptionError as error:
            raise field_error(tuple(error.option.split(".")), str(error), dict(request.options)) from None
        check = getattr(plugin, "check_request", None)  # what it refuses on any machine (a hosted model's sizes)
        try:
            if check is not None:
                check(settings, request, options)
        except OptionError as error:
            head, *rest = error.option.split(".")
            head = size_name if head == "size" else names.get(head, head)
            raise field_error((head, *rest), str(error), size if head == size_name else None) from None
    check_runtime(request)
    return request


def check_runtime(request: RenderRequest) -> None:
    """What `echo-os render` refuses before loading anything, refused here too (422), instead of a job
    that fails later: a device this machine lacks, xformers attention without the xformers package."""
    if request.engine == "draft":  # renders no pixels on any device
        return
    if request.device in ("cuda", "mps"):
        from echo_os.engines.sdxl import pick_device

        try:
            pick_device(request.device)  # the engine's own rule
        except UsageError as error:
            raise field_error("device", str(error).replace("--device", "device"), request.device) from None
    if request.attention == "xformers":
        import importlib.util

        if importlib.util.find_spec("xformers") is None:
            raise field_error("attention", "attention xformers needs the xformers package on the server "
                                           "(pip install 'echo-os[xformers]'); or use attention sdpa",
                              request.attention)


def artifact_image_path(api: ApiState, artifact_id: str) -> Path:
    """The artifact's PNG; for a video artifact (an animatic, a clip), its poster frame."""
    from echo_os.artifacts.store import IMAGE_NAME
    from echo_os.artifacts.video import POSTER_NAME, is_video_meta

    row = api.catalog.resolve(artifact_id)
    name = POSTER_NAME if is_video_meta(row.meta) else IMAGE_NAME
    path = resolve_inside(api.settings.artifacts_dir, row.path, name)
    if not path.is_file():
        raise HTTPException(status_code=404, detail=f"the image of artifact {row.id[:12]} is missing on disk; "
                                                    "run `echo-os artifacts reindex`")
    return path


def artifact_video_path(api: ApiState, artifact_id: str) -> Path:
    """The MP4 of a video artifact (an animatic, a clip); 404 for an image or a file gone from disk."""
    from echo_os.artifacts.video import is_video_meta

    row = api.catalog.resolve(artifact_id)
    if not is_video_meta(row.meta):
        raise HTTPException(status_code=404, detail=f"artifact {row.id[:12]} is an image, not a video; its PNG "
                                                    f"is at /api/artifacts/{row.id}/image")
    name = str(row.meta.get("video") or "")
    path = resolve_inside(api.settings.artifacts_dir, row.path, name) if name else None
    if path is None or not path.is_file():
        raise HTTPException(status_code=404, detail=f"the video of artifact {row.id[:12]} is missing on disk; "
                                                    "run `echo-os artifacts reindex`")
    return path


def convert_image(png: bytes, format: str, quality: int | None = None) -> bytes:
    """PNG bytes -> png/jpeg/webp bytes (jpeg has no alpha)."""
    if format == "png":
        return png
    import io

    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        if format == "jpeg":
            image = image.convert("RGB")
        out = io.BytesIO()
        image.save(out, format=format.upper(), quality=quality if quality is not None else 90)
        return out.getvalue()


def _with_model_defaults(settings: Settings, fields: dict[str, Any], size: str, given: set[str],
                         names: dict[str, str]) -> tuple[dict[str, Any], str]:
    from echo_os.engines.lora import model_lora_inputs
    from echo_os.models.defaults import fill_model_defaults, model_render_defaults

    model = fields.get("model", RenderRequest.model_fields["model"].default)
    try:
        entry = model_render_defaults(settings, model)
        loras = model_lora_inputs(settings, model)
    except (UsageError, ModelError, NotFoundError) as error:  # models.toml or the entry's LoRA: on the model field
        raise field_error(names.get("model", "model"), str(error), model) from None
    fields = fill_model_defaults(fields, entry, given)
    if "width" in fields:
        size = f"{fields.pop('width')}x{fields.pop('height')}"
    if loras and "loras" not in fields:
        fields["loras"] = loras
    return fields, size
