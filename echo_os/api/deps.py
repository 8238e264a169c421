"""What the routes share: the options, ApiState (handed to routes by a dependency), request
validation that names the body's fields, and reading artifact images from inside the workspace."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable

from fastapi import Depends, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from echo_os.api.events import EventHub
from echo_os.api.jobs import DEFAULT_MAX_ATTEMPTS, Job, JobStore
from echo_os.api.processes import DEFAULT_LEASE_S, WorkerPool
from echo_os.api.security import DEFAULT_MAX_BODY_BYTES, resolve_inside
from echo_os.api.worker import Worker
from echo_os.errors import NotFoundError, OptionError, UsageError
from echo_os.requests import RenderRequest, parse_size
from echo_os.settings import Settings

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
    # Render worker processes (echo_os.api.processes); 0 renders on a thread in the HTTP process.
    workers: int = 0
    lease_s: float = DEFAULT_LEASE_S  # a worker process's claim lasts this long unless renewed
    worker_log_level: str = "INFO"


class Submitter:
    """Stores jobs through one writer thread; jobs that arrive while it writes share the next commit
    (group commit: one fsync for many submissions)."""

    def __init__(self, jobs: JobStore, on_stored: Callable[[list[Job]], None]):
        self.jobs = jobs
        self.on_stored = on_stored
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="echo-os-jobs-writer")
        self._pending: list[tuple[Job, asyncio.Future]] = []
        self._flushing = False
        self._flush_task: asyncio.Task | None = None  # held: the loop keeps only weak references to tasks

    async def submit(self, job: Job) -> None:
        loop = asyncio.get_running_loop()
        stored = loop.create_future()
        self._pending.append((job, stored))
        if not self._flushing:
            self._flushing = True
            self._flush_task = loop.create_task(self._flush())
        await stored

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    await loop.run_in_executor(self._executor, self.jobs.insert, [job for job, _ in batch])
                except Exception as error:  # noqa: BLE001 - each waiting request gets the error
                    for _, stored in batch:
                        if not stored.done():
                            stored.set_exception(error)
                    continue
                self.on_stored([job for job, _ in batch])
                for _, stored in batch:
                    if not stored.done():
                        stored.set_result(None)
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

    @property
    def worker_status(self) -> str:
        if not self.started_worker:
            return "disabled"
        return "running" if self.worker is not None and self.worker.alive else "stopped"


class CatalogReader:
    """The artifact catalog for the routes: one connection, one reader at a time."""

    def __init__(self, settings: Settings):
        from echo_os.artifacts.catalog import Catalog

        self._catalog = Catalog(settings.catalog_path)
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


def api_state(request: Request) -> ApiState:
    return request.app.state.api


Api = Annotated[ApiState, Depends(api_state)]


# ---- validation -----------------------------------------------------------------------------------

def field_error(field_name: str | tuple, message: str, value: Any = None) -> RequestValidationError:
    loc = ("body", *field_name) if isinstance(field_name, tuple) else ("body", field_name)
    return RequestValidationError([{"type": "value_error", "loc": loc, "msg": message, "input": value}])


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
                         names: dict[str, str]) -> RenderRequest:
    """RenderRequest from a body's fields and its "WxH" size, or a 422 naming the body's field."""
    size_name = names.get("width", "size")
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

        try:
            engine_options(get_engine(request.engine), request)
        except OptionError as error:
            raise field_error(tuple(error.option.split(".")), str(error), dict(request.options)) from None
    return request


def artifact_image_path(api: ApiState, artifact_id: str) -> Path:
    from echo_os.artifacts.store import IMAGE_NAME

    row = api.catalog.resolve(artifact_id)
    path = resolve_inside(api.settings.artifacts_dir, row.path, IMAGE_NAME)
    if not path.is_file():
        raise HTTPException(status_code=404, detail=f"the image of artifact {row.id[:12]} is missing on disk; "
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
