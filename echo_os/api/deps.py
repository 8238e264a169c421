"""What the routes share: the options, ApiState (handed to routes by a dependency), request
validation that names the body's fields, and reading artifact images from inside the workspace."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError

from echo_os.api.events import EventHub, JobCancelled
from echo_os.api.hosts import WorkerHost
from echo_os.api.idempotency import WaitingClients
from echo_os.api.inputs import with_input_images
from echo_os.api.jobs import Admission, IdempotencyKey, Job, JobStore
from echo_os.api.options import ApiOptions
from echo_os.api.security import resolve_inside
from echo_os.errors import OptionError
from echo_os.render.requests import RenderRequest
from echo_os.settings import Settings
from echo_os.studio.swatches import SwatchRenderer

if TYPE_CHECKING:
    from echo_os.render.prepare import Prepared

log = logging.getLogger(__name__)

IMAGE_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


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
        """Store `job`, unless `key` is live: then the key's job is answered (see JobStore.admit). A job
        over a work or memory limit (echo_os.render.work) is a 422 on the body field to lower."""
        refuse_over_limits(job)
        loop = asyncio.get_running_loop()
        stored = loop.create_future()
        self._pending.append((job, key, stored))
        if not self._flushing:
            self._flushing = True
            self._flush_task = loop.create_task(self._flush())
        try:
            return await stored
        except Exception:  # jobs.db refused it (a full disk: 507) and rolled back: its plan goes too
            drop_plan(job)
            raise

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


def refuse_over_limits(job: Job) -> None:
    """Every job kind's work and memory bound, at the one place jobs are accepted; the plan folder a
    refused batch wrote (artifacts/.jobs/<id>/) goes with it."""
    from echo_os.render.work import WorkLimitError, check_job_work

    try:
        check_job_work(job.kind, job.spec)
    except WorkLimitError as error:
        drop_plan(job)
        raise field_error(error.option, api_message(str(error))) from None


def drop_plan(job: Job) -> None:
    """Remove the plan folder a batch submission wrote (artifacts/.jobs/<id>/) for a job never stored."""
    import shutil

    story = getattr(job.spec, "story", None)  # a batch's; no other kind writes a plan folder
    if story is not None and Path(story.source).parent.name == job.id:
        shutil.rmtree(Path(story.source).parent, ignore_errors=True)


@dataclass
class ApiState:
    """What the routes use, opened by the lifespan."""

    settings: Settings
    options: ApiOptions
    jobs: JobStore
    hub: EventHub
    submitter: Submitter
    catalog: "CatalogReader"
    worker: WorkerHost | None = None
    started_worker: bool = False
    waiting: WaitingClients | None = None  # clients of the synchronous route, per job
    swatches: SwatchRenderer = field(default_factory=SwatchRenderer)  # the studio's style samples, one at a time

    @property
    def worker_status(self) -> Literal["running", "stopped", "disabled"]:
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


def option_field_error(error: OptionError, names: dict[str, str], value: Any = None) -> RequestValidationError:
    """A prepare() OptionError as a 422 on the body field that carries it (`names`: RenderRequest field ->
    body field). The message is prepare's, with the command line's `--name` spelled as the field."""
    head, *rest = error.option.split(".")
    return field_error((names.get(head, head), *rest), api_message(str(error)), value)


def api_message(message: str) -> str:
    """The one presentation rule between the CLI and the API: an option's `--name` is the field `name`."""
    import re

    return re.sub(r"(?<![\w-])--([a-z][a-z0-9-]*)", lambda m: m.group(1).replace("-", "_"), message)


def check_model(settings: Settings, model: str, engine: str, where: str | tuple = "model") -> None:
    """A model name must be in models.toml whatever the engine (echo_os.render.prepare.check_model_name)."""
    from echo_os.render.prepare import check_model_name

    try:
        check_model_name(settings, model, engine)
    except OptionError as error:
        raise field_error(where, api_message(str(error)), model) from None


def prepare_body(settings: Settings, values: dict[str, Any], explicit: set[str], *, names: dict[str, str],
                 preset: str | None = None, choose: bool = True) -> "Prepared":
    """The API's adapter to the front door (echo_os.render.prepare): a body's values in RenderRequest
    names and the ones the client sent (`model_fields_set`), or a 422 on the body field at fault."""
    from echo_os.render.prepare import prepare

    try:
        # an image option names an artifact or carries bytes, never a server path (api.inputs)
        values = with_input_images(settings, values)
        prepared = prepare(settings, values, explicit, preset=preset, choose=choose)
    except OptionError as error:
        raise option_field_error(error, names) from None
    check_runtime(settings, prepared.request)
    return prepared


def check_runtime(settings: Settings, request: RenderRequest) -> None:
    """What the engine would refuse on this machine (a device it lacks, a missing package: the engine's own
    check_runtime), refused here too (422 on that field), instead of a job that fails later."""
    from echo_os.engines import check_runtime as engine_check_runtime

    try:
        engine_check_runtime(settings, request)
    except OptionError as error:
        raise field_error(error.option, str(error), getattr(request, error.option, None)) from None


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

    with Image.open(io.BytesIO(png)) as opened:
        image = opened.convert("RGB") if format == "jpeg" else opened
        out = io.BytesIO()
        image.save(out, format=format.upper(), quality=quality if quality is not None else 90)
        return out.getvalue()
