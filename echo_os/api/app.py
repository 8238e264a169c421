"""The app factory: `create_app(settings, ...)` -> a FastAPI app serving one workspace.

Nothing is global: the factory takes the settings and options, the lifespan opens the job store, the
event hub (on the running loop) and the worker thread, and routes reach them through `ApiState`, kept on
`app.state` and handed to each route by a dependency.

    POST /api/render                202 {job_id, status_url, events_url}
    POST /api/batch                 202 {job_id, ...}: a storyboard (+ bible) or a list of prompts
    POST /api/animatic              202 {job_id, ...}: a rendered story as an MP4 (echo_os.motion.animatic)
    POST /api/animate               202 {job_id, ...}: a clip from an image artifact by a video engine (echo-os animate)
    POST /api/evolve                202 {job_id, run_id, ...}: the improvement loop (echo_os.reflect.evolve)
    GET  /api/evolve/{run_id}       the loop's record: rounds, candidates, scores, gains
    POST /api/refine                202 {job_id, ...}: image-to-image from an artifact (echo-os refine)
    POST /api/compare               202 {job_id, cells, ...}: cells over up to three axes (resumed as the
                                    CLI resumes) and a grid sheet, the job's last artifact (grid_id)
    GET  /api/styles                POST /api/styles (named styles, styles.toml)
    GET  /api/jobs[?status=]        GET /api/jobs/{id}      GET /api/jobs/{id}/events (SSE)
    POST /api/jobs/{id}/cancel
    GET  /api/artifacts[?project=&model=&since=&limit=&offset=]
    GET  /api/artifacts/{id}        GET /api/artifacts/{id}/image   GET /api/artifacts/{id}/video
    GET  /api/workers               the render workers (processes: echo_os.api.processes; Ray actors:
                                    echo_os.api.ray_workers)
    POST /v1/images/generations     the OpenAI Images API (echo_os.api.openai_compat)
    GET  /health                    GET /openapi.json

Every POST that creates work takes an `Idempotency-Key` header (echo_os.api.idempotency).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import shutil
import sqlite3
import threading
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import date, datetime
from functools import partial
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from echo_os import __version__
from echo_os.api.deps import (
    IMAGE_TYPES,
    Api,
    ApiOptions,
    ApiState,
    CatalogReader,
    Submitter,
    api_message,
    artifact_image_path,
    artifact_video_path,
    cancel_if_unanswered,
    check_model,
    convert_image,
    field_error,
    option_field_error,
    prepare_body,
)
from echo_os.api.events import (
    FINAL_EVENTS,
    EventHub,
    JobCancelled,
    JobFailed,
    JobProgressed,
    JobQueued,
    JobStarted,
    JobSucceeded,
    image_url,
    sse_message,
)
from echo_os.api.idempotency import (
    IDEMPOTENCY_HEADER,
    REPLAYED_HEADER,
    IdempotencyHeader,
    WaitingClients,
    client_key,
    conflict_message,
    known,
)
from echo_os.api.jobs import (
    JOB_ID_PATTERN,
    Admission,
    AnimaticSpec,
    IdempotencyKey,
    Job,
    JobProgress,
    JobSpec,
    JobStatus,
    JobStore,
    StorySource,
    new_job_id,
    now_iso,
)
from echo_os.api.processes import WorkerPool, images_per_minute
from echo_os.api.ray_workers import RayWorkers
from echo_os.api.schemas import (
    AnimateBody,
    AnimaticBody,
    AnimaticSubmitted,
    ArtifactPage,
    ArtifactView,
    BatchBody,
    BatchSubmitted,
    CompareBody,
    CompareSubmitted,
    EvolveBody,
    EvolveSubmitted,
    Health,
    JobPage,
    JobView,
    RefineBody,
    RenderBody,
    StyleBody,
    StyleView,
    Submitted,
    WorkerList,
    WorkerView,
    error_responses,
)
from echo_os.api.security import Guard, GuardSettings, check_origins, resolve_inside
from echo_os.api.stalls import Stall, epoch_from_iso, judge
from echo_os.api.worker import EngineFactory, Worker, default_engine_factory
from echo_os.errors import DiskFullError, EchoError, NotFoundError, OptionError, UsageError, disk_full
from echo_os.render.kinds import output_fields
from echo_os.settings import Settings

log = logging.getLogger(__name__)

ARTIFACT_ID_PATTERN = r"^[0-9a-fA-F]{12,64}$"
SSE_PING_S = 15.0
# RenderRequest field -> the name /api/render takes it as
RENDER_BODY_NAMES = {"negative_prompt": "negative", "width": "size", "height": "size", "output": "type"}
RENDER_FIELDS = {"negative": "negative_prompt", "type": "output"}  # and back

JobId = Annotated[str, PathParam(pattern=JOB_ID_PATTERN, description="32 hex characters")]
ArtifactId = Annotated[str, PathParam(pattern=ARTIFACT_ID_PATTERN,
                                      description="An artifact id (sha256 hex) or a unique prefix of 12+")]


# ---- views ------------------------------------------------------------------------------------------

def job_view(job: Job, live: JobProgressed | None, stall: Stall | None = None) -> JobView:
    progress = JobProgress(images_done=len(job.artifact_ids), images_total=job.images_total)
    animatic = job.spec.animatic
    if live is not None and job.status == "running":
        progress.step, progress.total_steps = live.step, live.total_steps
        progress.frames_done, progress.frames_total = live.frames_done, live.frames_total
    elif job.status == "succeeded" and animatic is not None:  # every frame was encoded
        progress.frames_done = progress.frames_total = animatic.frames
    elif job.status == "succeeded" and job.spec.items:  # every step of the last call ran (not "step 0 of 0")
        progress.step = progress.total_steps = job.spec.items[-1].steps
    elif job.terminal:  # cancelled or failed: where it stopped
        progress.step, progress.total_steps = job.step, job.total_steps
    return JobView(id=job.id, kind=job.view_kind, status=job.status, progress=progress, attempts=job.attempts,
                   interruptions=job.interruptions, error=job.error, cancel_requested=job.cancel_requested, created=job.created,
                   started=job.started, finished=job.finished, timings=job.timings,
                   artifact_ids=job.artifact_ids, request=job.spec.items[0] if job.kind in ("render", "clip") else None,
                   title=job.spec.title, animatic=animatic, grid_id=job.grid_id,
                   scenes=animatic.scenes if animatic is not None else len(job.spec.items),
                   last_progress=stall.last_progress if stall else None, stalled=bool(stall and stall.stalled),
                   warning=stall.warning if stall else None)


def job_stall(api: ApiState, job: Job) -> Stall | None:
    """A running job's progress clock (kept by the hub from its events; since it started when this
    process has seen none yet) judged against the job's step time (echo_os.api.stalls)."""
    if job.status != "running":
        return None
    clock = api.hub.clock(job.id)
    if clock is not None:
        return clock.judge(api.options.stall_after_s, busy=True)
    started = epoch_from_iso(job.started) if job.started else None
    return judge(started, None, api.options.stall_after_s, busy=True)


def worker_views(api: ApiState) -> list[WorkerView]:
    """Worker processes from their rows in jobs.db; the in-process thread from its own figures; Ray actors
    from their Worker threads and the actors' own figures. Each with its progress clock judged: a worker
    rendering with no progress for far longer than its steps take is `stalled` (echo_os.api.stalls)."""
    from echo_os.api.jobs import WorkerRow, now_iso

    floor = api.options.stall_after_s
    if isinstance(api.worker, RayWorkers):
        views = []
        for (row, stats), worker in zip(api.worker.rows(), api.worker.workers):
            stall = worker.stats.clock.judge(floor, busy=row.state == "rendering")
            views.append(WorkerView(slot=row.slot, pid=row.pid, device=row.device, model=row.model,
                                    jobs_done=row.jobs_done, images_done=row.images_done,
                                    images_per_min=images_per_minute(row), last_error=row.last_error,
                                    restarts=row.restarts, state=row.state, heartbeat=now_iso(),
                                    calls_done=stats["calls_done"] if stats else None,
                                    models=stats["models"] if stats else None, last_progress=stall.last_progress,
                                    step_s=stall.step_s, stalled=stall.stalled, warning=stall.warning))
        return views
    if isinstance(api.worker, WorkerPool):
        rows = api.worker.rows()
        stalls = [judge(epoch_from_iso(row.last_progress) if row.last_progress else None, row.step_s, floor,
                        busy=row.state == "rendering") for row in rows]
    elif isinstance(api.worker, Worker):
        stats = api.worker.stats
        import os

        state = stats.state if api.worker.alive else "stopped"
        rows = [WorkerRow(slot=0, worker="thread", pid=os.getpid(), device="in-process", model=stats.model,
                          jobs_done=stats.jobs_done, images_done=stats.images_done, first_job=stats.first_job,
                          last_error=stats.last_error, state=state)]
        stalls = [stats.clock.judge(floor, busy=state == "rendering")]
    else:
        rows, stalls = [], []
    return [WorkerView(slot=row.slot, pid=row.pid, device=row.device, model=row.model, jobs_done=row.jobs_done,
                       images_done=row.images_done, images_per_min=images_per_minute(row),
                       last_error=row.last_error, restarts=row.restarts, state=row.state, heartbeat=row.heartbeat,
                       last_progress=stall.last_progress, step_s=stall.step_s, stalled=stall.stalled,
                       warning=stall.warning)
            for row, stall in zip(rows, stalls)]


def artifact_view(row, *, with_meta: bool = False) -> ArtifactView:
    from echo_os.artifacts.meta import artifact_kind

    return ArtifactView(id=row.id, created=row.created, project=row.project, model=row.model, engine=row.engine,
                        prompt=row.prompt, seed=row.seed, size=f"{row.width}x{row.height}", scene=row.scene,
                        parent_id=row.parent_id, kind=artifact_kind(row.meta), image_url=image_url(row.id),
                        meta=row.meta if with_meta else None)


def submitted(job_id: str, model=Submitted, **extra: Any) -> JSONResponse:
    body = model(job_id=job_id, status_url=f"/api/jobs/{job_id}", events_url=f"/api/jobs/{job_id}/events",
                 **extra)
    return JSONResponse(body.model_dump(mode="json"), status_code=202, headers={"Location": body.status_url})


def batch_summary(job: Job, project: str) -> dict[str, Any]:
    spec = job.spec
    return dict(title=spec.title or project, scenes=len(spec.items), images=spec.images_total,
                warnings=list(spec.warnings))


def animatic_summary(job: Job) -> dict[str, Any]:
    spec = job.spec.animatic
    return dict(project=spec.project, scenes=spec.scenes, frames=spec.frames, fps=spec.fps)


def evolve_summary(job: Job) -> dict[str, Any]:
    spec = job.spec.evolve
    return dict(run_id=spec.run_id, start=spec.start, record_url=f"/api/evolve/{spec.run_id}")


async def _earlier(api: ApiState, route: str, idempotency_key: str | None,
                   body) -> tuple[IdempotencyKey | None, JSONResponse | None]:
    """(the request's key, the answer when the key already made a job (replayed or conflicting)), looked
    up before any work is done; the answer is None for a new request."""
    key = client_key(route, idempotency_key, body)
    if key is None:
        return None, None
    earlier = known(await run_in_threadpool(api.jobs.find_key, key.key), key)
    return key, (None if earlier is None else await _answer_earlier(api, earlier))


def _submit_responses(model: type, *codes: int) -> dict:
    """The OpenAPI responses of a route that queues a job: 200 for a replayed Idempotency-Key, and errors."""
    return {200: {"model": model, "description": "The job an earlier request with this Idempotency-Key made"},
            **error_responses(*codes)}


async def _admit(api: ApiState, job: Job, key) -> JSONResponse | None:
    """Store `job` under `key`; None when stored, else the answer for the job the same key made meanwhile."""
    admission = await api.submitter.submit(job, key)
    return None if admission.outcome == "stored" else await _answer_earlier(api, admission)


async def _answer_earlier(api: ApiState, admission: Admission) -> JSONResponse:
    """409 for a key used with another body; else 200 with the key's job, as its first answer said it."""
    if admission.outcome == "conflict":
        return JSONResponse({"detail": conflict_message(admission.job_id)}, status_code=409)
    job = await run_in_threadpool(api.jobs.get, admission.job_id)
    if job is None:  # cannot happen: a key is stored with its job
        raise HTTPException(status_code=404, detail=f"no job {admission.job_id}")
    if job.kind == "animatic":
        model, extra = AnimaticSubmitted, animatic_summary(job)
    elif job.kind == "evolve":
        model, extra = EvolveSubmitted, evolve_summary(job)
    elif job.spec.compare is not None:
        model, extra = CompareSubmitted, {"cells": len(job.spec.items)}
    else:
        model, extra = (Submitted, {}) if job.kind in ("render", "clip") else \
            (BatchSubmitted, batch_summary(job, job.spec.items[0].project))
    response = submitted(job.id, model, status=job.status, **extra)
    response.status_code = 200
    response.headers[REPLAYED_HEADER] = "true"
    return response


def snapshot_events(job: Job, live: JobProgressed | None) -> list:
    """What a client that connects now is told first: the job's current state."""
    if job.status == "queued":
        return [JobQueued(job_id=job.id, attempts=job.attempts, error=job.error)]
    if job.status == "running":
        events: list = [JobStarted(job_id=job.id, attempt=job.attempts, images_done=len(job.artifact_ids),
                                   images_total=job.images_total, artifact_ids=job.artifact_ids)]
        if live is not None:
            events.append(live.model_copy(update={"images_done": len(job.artifact_ids)}))
        return events
    if job.status == "succeeded":
        return [JobSucceeded(job_id=job.id, artifact_ids=job.artifact_ids, timings=job.timings, grid_id=job.grid_id)]
    if job.status == "failed":
        return [JobFailed(job_id=job.id, error=job.error or "failed", attempts=job.attempts,
                          artifact_ids=job.artifact_ids)]
    return [JobCancelled(job_id=job.id, artifact_ids=job.artifact_ids)]


# ---- the app ------------------------------------------------------------------------------------------

def jobs_db_path(settings: Settings) -> Path:
    return settings.artifacts_dir / "jobs.db"


def hold_server_lock(settings: Settings):
    """The workspace's server lock, held until released (or the process dies); UsageError if taken."""
    from filelock import FileLock, Timeout

    settings.artifacts_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(jobs_db_path(settings)) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise UsageError(f"another echo-os server is serving {settings.home}; stop it first "
                         "(one server per workspace owns its job queue)") from None
    return lock


def importing_first(make_engine):
    """The engine factory, after the ML libraries are imported under ml_imports' lock: the worker thread
    and the memory routes' threads must not import transformers at the same time (issue 11)."""
    from echo_os.engines import AUTO, get_engine
    from echo_os.ml_imports import import_ml_libraries

    def make(request):
        # An engine that renders from local weights loads them with the ML libraries; one without (cards,
        # hosted services) imports none. `auto` may pick either: import first.
        if request.engine == AUTO or get_engine(request.engine).capabilities.needs_weights:
            import_ml_libraries()
        return make_engine(request)

    return make


def create_app(settings: Settings, *, token: str | None = None, start_worker: bool = True,
               options: ApiOptions | None = None, make_engine: EngineFactory | None = None) -> FastAPI:
    """A FastAPI app for one workspace. `make_engine(request) -> Engine` replaces the CLI's engine
    choice (tests pass fakes); `start_worker=False` stores jobs without rendering them."""
    options = options or ApiOptions()
    allowed_origins = check_origins(options.allowed_origins)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as cleanup:  # closes what was opened, in reverse, even after a failure
            # One server per workspace: a second one would take the first one's running jobs for crashed ones.
            cleanup.callback(hold_server_lock(settings).release)
            jobs = JobStore(jobs_db_path(settings), max_attempts=options.max_attempts, checkpoint_in_background=True)
            cleanup.callback(jobs.close)
            if jobs.quarantined is not None:
                log.error("jobs.db was corrupt (%s): moved it to %s; the queue starts EMPTY and the jobs in the "
                          "old file will not run (recover them with `sqlite3 %s .recover`)",
                          jobs.corruption, jobs.quarantined, jobs.quarantined)
            recovery = jobs.recover()
            if recovery.requeued or recovery.failed or recovery.cancelled:
                log.warning("recovered jobs left running by a stopped server: %d queued again, %d failed, "
                            "%d cancelled", len(recovery.requeued), len(recovery.failed), len(recovery.cancelled))
            catalog = CatalogReader(settings)
            cleanup.callback(catalog.close)
            hub = EventHub(asyncio.get_running_loop())
            worker: Worker | WorkerPool | RayWorkers | None = None
            if start_worker and options.ray_address is not None:
                if make_engine is not None or options.workers > 0:
                    raise ValueError("with ray_address the render workers are Ray actors: no make_engine, workers=0")
                worker = RayWorkers(settings, jobs, hub.publish_threadsafe, options)
            elif start_worker and options.workers > 0:
                if make_engine is not None:
                    raise ValueError("make_engine runs in this process; it needs options.workers=0")
                worker = WorkerPool(settings, jobs, hub.publish_threadsafe, options, count=options.workers,
                                    log_level=options.worker_log_level)
            elif start_worker:
                from echo_os.artifacts.store import ArtifactStore

                store = ArtifactStore(settings)
                cleanup.callback(store.close)
                # Images are embedded into Echo Memory by the next /api/memory request (its reconcile), not
                # on the worker (issue 11).
                from echo_os.resonance.listener import attach_scorer

                attach_scorer(store)  # scores as the worker saves, when a CLIP model is here
                worker = Worker(jobs, store, hub.publish_threadsafe,
                                make_engine=make_engine or importing_first(default_engine_factory(settings)),
                                max_batch=options.max_batch, batch_window_ms=options.batch_window_ms)

            def on_stored(stored: list[Job]) -> None:
                for job in stored:
                    hub.publish(JobQueued(job_id=job.id))
                if worker is not None:
                    worker.wake()

            submitter = Submitter(jobs, on_stored)
            cleanup.callback(submitter.close)
            state = app.state.api = ApiState(settings=settings, options=options, jobs=jobs, hub=hub,
                                             submitter=submitter, catalog=catalog, worker=worker,
                                             started_worker=start_worker)
            state.waiting = WaitingClients(options.abandoned_grace_s, partial(cancel_if_unanswered, state))
            cleanup.callback(state.waiting.close)
            if worker is not None:
                worker.start()
                cleanup.push_async_callback(asyncio.to_thread, worker.stop)
            cleanup.callback(hub.close)  # first: SSE streams and waiting OpenAI requests end
            yield

    app = FastAPI(title="echo-os", version=__version__, lifespan=lifespan, responses=error_responses(401),
                  docs_url=None, redoc_url=None,  # /docs is served offline by _add_docs
                  description="Render images on this machine's GPU. Jobs are durable; every image is an "
                              "artifact (PNG + meta.json). The OpenAI Images API is at /v1/images/generations.")
    app.add_middleware(Guard, settings=GuardSettings(token=token, allowed_origins=allowed_origins,
                                                      allowed_hosts=options.allowed_hosts,
                                                      max_body_bytes=options.max_body_bytes))
    if allowed_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(allowed_origins),
                           allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", IDEMPOTENCY_HEADER],
                           expose_headers=[REPLAYED_HEADER])

    _add_error_handlers(app)
    _add_routes(app)
    _add_docs(app)
    from echo_os.api.memory_routes import name_search_operations
    from echo_os.api.memory_routes import router as memory_router
    from echo_os.api.openai_compat import router as openai_router

    app.include_router(openai_router)
    app.include_router(memory_router)
    from echo_os.api.resonance_routes import router as resonance_router

    app.include_router(resonance_router)
    from echo_os.api.studio_routes import router as studio_router

    app.include_router(studio_router)
    name_search_operations(app)
    return app


# Swagger UI's files, served from the swagger-ui-bundle-v2 package (Swagger UI 5: OpenAPI 3.1, which FastAPI
# writes) instead of FastAPI's default CDN, so /docs works on an air-gapped machine. ReDoc has no packaged
# copy, so /redoc is off.
DOCS_ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
               "favicon-32x32.png": "image/png"}


def _add_docs(app: FastAPI) -> None:
    from fastapi.openapi.docs import get_swagger_ui_html

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} API",
                                   swagger_js_url="/docs/assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs/assets/swagger-ui.css",
                                   swagger_favicon_url="/docs/assets/favicon-32x32.png")

    @app.get("/docs/assets/{name}", include_in_schema=False)
    async def docs_asset(name: str) -> Response:
        if name not in DOCS_ASSETS:
            raise HTTPException(404, "not found")
        from swagger_ui_bundle import swagger_ui_path

        return Response((swagger_ui_path / name).read_bytes(), media_type=DOCS_ASSETS[name],
                        headers={"cache-control": "public, max-age=86400"})


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(EchoError)
    async def echo_error(request: Request, error: EchoError) -> JSONResponse:
        status = 404 if isinstance(error, NotFoundError) else 422 if isinstance(error, UsageError) else \
            507 if isinstance(error, DiskFullError) else 500
        return JSONResponse({"detail": str(error)}, status_code=status)

    async def storage_error(request: Request, error: Exception) -> JSONResponse:
        """A full disk while storing a job or a story's files: 507 and one line; anything else is a bug."""
        full = disk_full(error)
        if full is None:
            raise error
        return JSONResponse({"detail": str(full)}, status_code=507)

    app.add_exception_handler(OSError, storage_error)
    app.add_exception_handler(sqlite3.Error, storage_error)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        # The input is echoed back; NaN or 1e999 (inf) in it would make the JSON encoder refuse the answer.
        errors = finite_json(jsonable_encoder(error.errors(), custom_encoder={
            Exception: str, bytes: lambda b: b.decode("utf-8", "replace")}))
        body: dict[str, Any] = {"detail": errors}
        if request.url.path.startswith("/v1/"):
            # The OpenAI client reads `error.message` and `error.param`.
            first = errors[0] if errors else {}
            param = ".".join(str(part) for part in first.get("loc", ())[1:]) or None
            body["error"] = {"message": f"{param}: {first.get('msg')}" if param else str(first.get("msg")),
                             "type": "invalid_request_error", "param": param, "code": None}
        return JSONResponse(body, status_code=422)


def finite_json(value: Any) -> Any:
    """`value` with every NaN or infinite float replaced by its name ("NaN", "Infinity", "-Infinity"), so
    strict JSON can carry it. Python's json reads NaN, Infinity and 1e999 in a body; a response may not."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(item) for item in value]
    return value


def _add_routes(app: FastAPI) -> None:
    @app.get("/health", response_model=Health, tags=["server"],
             responses={503: {"model": Health, "description": "The render worker the server started is gone"}})
    async def health(api: Api) -> JSONResponse:
        counts = await run_in_threadpool(api.jobs.counts)
        worker = api.worker_status  # "stopped": started, and no longer alive: queued jobs would wait forever
        health = Health(status="degraded" if worker == "stopped" else "ok", version=__version__, worker=worker,
                        jobs=counts)
        return JSONResponse(health.model_dump(), status_code=503 if worker == "stopped" else 200)

    @app.get("/api/workers", response_model=WorkerList, tags=["server"])
    async def list_workers(api: Api) -> WorkerList:
        """The render workers: device, model loaded, jobs done, images/min, last error."""
        return WorkerList(items=await run_in_threadpool(worker_views, api))

    # -- submitting ----------------------------------------------------------------------------------
    @app.post("/api/render", status_code=202, response_model=Submitted, tags=["jobs"],
              responses=_submit_responses(Submitted, 400, 403, 409, 413, 422))
    async def submit_render(body: RenderBody, api: Api, idempotency_key: IdempotencyHeader = None) -> JSONResponse:
        """Queue `echo-os render` with these parameters."""
        key, replayed = await _earlier(api, "/api/render", idempotency_key, body)
        if replayed is not None:
            return replayed
        values = body.model_dump(exclude={"negative", "seed", "preset", "again", "type", "seconds"}, exclude_none=True)
        values.update(output_fields(body.type, body.seconds, values.get("options")))  # 3d_model, audio
        if body.type == "texture":
            values["tile"] = "xy"
        values["negative_prompt"] = body.negative or None  # none given: the model's own rule (see requests.py)
        if body.seed is not None:
            values["seed"] = body.seed
        explicit = {RENDER_FIELDS.get(name, name) for name in body.model_fields_set}
        prepared = await run_in_threadpool(prepare_body, api.settings, values, explicit, names=RENDER_BODY_NAMES,
                                           preset=body.preset)
        request = prepared.request
        job = Job(id=new_job_id(), kind="render", status="queued", spec=JobSpec(items=(request,), again=body.again),
                  created=now_iso())
        if (earlier := await _admit(api, job, key)) is not None:  # the same key arrived meanwhile
            return earlier
        return submitted(job.id)

    @app.post("/api/batch", status_code=202, response_model=BatchSubmitted, tags=["jobs"],
              responses=_submit_responses(BatchSubmitted, 400, 403, 409, 413, 422))
    async def submit_batch(body: BatchBody, api: Api, idempotency_key: IdempotencyHeader = None) -> JSONResponse:
        """Queue a story: `storyboard` (story.csv text) with an optional `bible`, or `prompts`."""
        key, replayed = await _earlier(api, "/api/batch", idempotency_key, body)
        if replayed is not None:
            return replayed
        job_id = new_job_id()
        spec = await run_in_threadpool(plan_batch, api.settings, body, job_id)
        job = Job(id=job_id, kind="batch", status="queued", spec=spec, created=now_iso())
        admission = await api.submitter.submit(job, key)
        if admission.outcome != "stored":  # the same key arrived meanwhile: this plan's files go
            await run_in_threadpool(shutil.rmtree, resolve_inside(api.settings.artifacts_dir, ".jobs", job_id), True)
            return await _answer_earlier(api, admission)
        return submitted(job.id, BatchSubmitted, **batch_summary(job, body.project))

    @app.post("/api/animatic", status_code=202, response_model=AnimaticSubmitted, tags=["jobs"],
              responses=_submit_responses(AnimaticSubmitted, 400, 403, 409, 413, 422))
    async def submit_animatic(body: AnimaticBody, api: Api,
                              idempotency_key: IdempotencyHeader = None) -> JSONResponse:
        """Queue `echo-os animatic`: the project's newest rendered story as an MP4 (a video artifact).
        The story is checked now (it has scenes, their images, durations and the fade fit): a 422 names
        the field."""
        key, replayed = await _earlier(api, "/api/animatic", idempotency_key, body)
        if replayed is not None:
            return replayed
        spec = await run_in_threadpool(plan_animatic, api.settings, body)
        job = Job(id=new_job_id(), kind="animatic", status="queued", spec=spec, created=now_iso())
        if (earlier := await _admit(api, job, key)) is not None:  # the same key arrived meanwhile
            return earlier
        return submitted(job.id, AnimaticSubmitted, **animatic_summary(job))

    @app.post("/api/animate", status_code=202, response_model=Submitted, tags=["jobs"],
              responses=_submit_responses(Submitted, 400, 403, 404, 409, 413, 422))
    async def submit_animate(body: AnimateBody, api: Api, idempotency_key: IdempotencyHeader = None) -> JSONResponse:
        """Queue `echo-os animate`: a clip from an image artifact (a video artifact whose parent is the image),
        rendered by a video engine through the renderer: progress events, cancel and exactly-once as a render."""
        key, replayed = await _earlier(api, "/api/animate", idempotency_key, body)
        if replayed is not None:
            return replayed
        request = await run_in_threadpool(clip_body_request, api, body)
        job = Job(id=new_job_id(), kind="clip", status="queued", spec=JobSpec(items=(request,)), created=now_iso())
        if (earlier := await _admit(api, job, key)) is not None:  # the same key arrived meanwhile
            return earlier
        return submitted(job.id)

    @app.post("/api/evolve", status_code=202, response_model=EvolveSubmitted, tags=["jobs"],
              responses=_submit_responses(EvolveSubmitted, 400, 403, 404, 409, 413, 422))
    async def submit_evolve(body: EvolveBody, api: Api, idempotency_key: IdempotencyHeader = None) -> JSONResponse:
        """Queue `echo-os evolve`: rounds of variations of the target's best image, scored, the best kept.
        Its candidates are the job's images as each round ends; the record is at record_url."""
        key, replayed = await _earlier(api, "/api/evolve", idempotency_key, body)
        if replayed is not None:
            return replayed
        spec = await run_in_threadpool(plan_evolve, api.settings, body)
        job = Job(id=new_job_id(), kind="evolve", status="queued", spec=spec, created=now_iso())
        if (earlier := await _admit(api, job, key)) is not None:
            return earlier
        return submitted(job.id, EvolveSubmitted, **evolve_summary(job))

    @app.get("/api/evolve/{run_id}", tags=["jobs"], responses=error_responses(403, 404, 422))
    async def evolve_record(run_id: Annotated[str, PathParam(pattern=r"^[0-9a-f]{16}$")], api: Api) -> JSONResponse:
        """An evolve run's record: rounds, candidates, their scores, the gain per round and overall."""
        import json

        from echo_os.reflect.evolve import run_path

        path = run_path(api.settings, run_id)
        if not path.is_file():
            raise HTTPException(status_code=404, detail=f"no evolve run {run_id} (it starts when its job runs)")
        return JSONResponse(json.loads(await run_in_threadpool(path.read_text, "utf-8")))

    @app.post("/api/refine", status_code=202, response_model=Submitted, tags=["jobs"],
              responses=_submit_responses(Submitted, 400, 403, 404, 409, 413, 422))
    async def submit_refine(body: RefineBody, api: Api, idempotency_key: IdempotencyHeader = None) -> JSONResponse:
        """Queue `echo-os refine`: image-to-image from an artifact, recorded as its child."""
        key, replayed = await _earlier(api, "/api/refine", idempotency_key, body)
        if replayed is not None:
            return replayed
        request = await run_in_threadpool(refine_body_request, api, body)
        job = Job(id=new_job_id(), kind="render", status="queued", spec=JobSpec(items=(request,)),
                  created=now_iso())
        if (earlier := await _admit(api, job, key)) is not None:  # the same key arrived meanwhile
            return earlier
        return submitted(job.id)

    @app.post("/api/compare", status_code=202, response_model=CompareSubmitted, tags=["jobs"],
              responses=_submit_responses(CompareSubmitted, 400, 403, 404, 409, 413, 422))
    async def submit_compare(body: CompareBody, api: Api, idempotency_key: IdempotencyHeader = None) -> JSONResponse:
        """Queue `echo-os compare`: one image per cell, then the labelled grid sheet (an artifact). As on the
        CLI, cells already rendered in the project (same request) are taken, not rendered again; the job's
        `artifact_ids` are the cells in order, then the sheet (`grid_id`)."""
        key, replayed = await _earlier(api, "/api/compare", idempotency_key, body)
        if replayed is not None:
            return replayed
        spec = await run_in_threadpool(compare_spec, api.settings, body)
        job = Job(id=new_job_id(), kind="batch", status="queued", spec=spec, created=now_iso())
        if (earlier := await _admit(api, job, key)) is not None:  # the same key arrived meanwhile
            return earlier
        return submitted(job.id, CompareSubmitted, cells=len(spec.items))

    # -- styles --------------------------------------------------------------------------------------
    @app.get("/api/styles", response_model=list[StyleView], tags=["styles"])
    async def list_styles(api: Api) -> list[StyleView]:
        from echo_os.render.styles import all_styles

        found = await run_in_threadpool(all_styles, api.settings)
        return [StyleView(**style.as_dict()) for style in sorted(found.values(), key=lambda s: s.name.casefold())]

    @app.post("/api/styles", status_code=201, response_model=StyleView, tags=["styles"],
              responses={200: {"model": StyleView, "description": "The answer an earlier request with this "
                                                                  "Idempotency-Key had"},
                         **error_responses(400, 403, 409, 413, 422)})
    async def add_style(body: StyleBody, api: Api, idempotency_key: IdempotencyHeader = None) -> JSONResponse:
        """Add (or with `replace`, overwrite) a named style. With an Idempotency-Key, a repeat of the same
        body answers as the first time (200, Idempotent-Replayed); another body under the key is a 409."""
        key = client_key("/api/styles", idempotency_key, body)
        status, answer, replayed = await run_in_threadpool(save_style_once, api, body, key)
        return JSONResponse(answer, status_code=status, headers={REPLAYED_HEADER: "true"} if replayed else None)

    @app.api_route("/api/styles", methods=["OPTIONS", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    async def styles_other_methods() -> JSONResponse:
        # Two routes share this path; Starlette's own 405 would name only the first one's method.
        return JSONResponse({"detail": "Method Not Allowed"}, status_code=405, headers={"Allow": "GET, POST"})

    # -- jobs ----------------------------------------------------------------------------------------------
    @app.get("/api/jobs", response_model=JobPage, tags=["jobs"])
    async def list_jobs(api: Api, status: JobStatus | None = None,
                        limit: Annotated[int, Query(ge=1, le=500)] = 50,
                        offset: Annotated[int, Query(ge=0, le=10**9)] = 0) -> JobPage:
        """Newest first."""
        jobs = await run_in_threadpool(lambda: api.jobs.list(status=status, limit=limit + 1, offset=offset))
        more = len(jobs) > limit
        items = [job_view(job, api.hub.progress(job.id), job_stall(api, job)) for job in jobs[:limit]]
        return JobPage(items=items, limit=limit, offset=offset, next_offset=offset + limit if more else None)

    async def find_job(api: ApiState, job_id: str) -> Job:
        job = await run_in_threadpool(api.jobs.get, job_id)
        if job is None:
            raise HTTPException(status_code=404, detail=f"no job {job_id}")
        return job

    @app.get("/api/jobs/{job_id}", response_model=JobView, tags=["jobs"], responses=error_responses(404, 422))
    async def get_job(job_id: JobId, api: Api) -> JobView:
        job = await find_job(api, job_id)
        view = job_view(job, api.hub.progress(job_id), job_stall(api, job))
        from echo_os.api.engine_notice import engines_of

        view.engines = await run_in_threadpool(engines_of, api, job.artifact_ids)
        return view

    @app.post("/api/jobs/{job_id}/cancel", response_model=JobView, tags=["jobs"],
              responses={202: {"model": JobView, "description": "Running: it stops at the next step"},
                         **error_responses(403, 404, 409, 422)})
    async def cancel_job(job_id: JobId, api: Api) -> JSONResponse:
        """A queued job is cancelled at once (200); a running one stops at its next denoising step and
        saves no unfinished image (202; the `cancelled` event follows)."""
        before = await find_job(api, job_id)
        if before.terminal:
            raise HTTPException(status_code=409, detail=f"job {job_id} already {before.status}")
        job = await run_in_threadpool(api.jobs.request_cancel, job_id)
        if job is None:
            raise HTTPException(status_code=404, detail=f"no job {job_id}")
        if job.status == "cancelled":
            if before.status == "queued":
                api.hub.publish(JobCancelled(job_id=job.id, artifact_ids=job.artifact_ids))
            status = 200
        elif job.status == "running":
            if api.worker is not None:
                api.worker.cancel(job_id)
            status = 202
        else:
            raise HTTPException(status_code=409, detail=f"job {job_id} already {job.status}")
        view = job_view(job, api.hub.progress(job_id))
        return JSONResponse(view.model_dump(mode="json"), status_code=status)

    @app.get("/api/jobs/{job_id}/events", tags=["jobs"], response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {}},
                              "description": "Server-Sent Events: queued, started, progress, artifact, "
                                             "then one of succeeded, failed, cancelled"},
                        **error_responses(404, 422)})
    async def job_events(job_id: JobId, api: Api) -> StreamingResponse:
        """The job's events as Server-Sent Events. The current state comes first; the stream ends after
        the final event."""
        queue = api.hub.subscribe(job_id)
        try:
            job = await find_job(api, job_id)
        except BaseException:
            api.hub.unsubscribe(job_id, queue)
            raise
        first = snapshot_events(job, api.hub.progress(job_id))
        return StreamingResponse(_event_stream(api, job, first, queue), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # -- artifacts -----------------------------------------------------------------------------------------
    @app.get("/api/artifacts", response_model=ArtifactPage, tags=["artifacts"])
    async def list_artifacts(api: Api, project: Annotated[str | None, Query(max_length=200)] = None,
                             model: Annotated[str | None, Query(max_length=200)] = None,
                             since: Annotated[str | None, Query(max_length=40, pattern=r"^\d{4}-\d{2}-\d{2}",
                                                                description="ISO date or time")] = None,
                             limit: Annotated[int, Query(ge=1, le=500)] = 50,
                             offset: Annotated[int, Query(ge=0, le=10**9)] = 0) -> ArtifactPage:
        """Newest first."""
        if since is not None:
            try:
                (datetime if "T" in since else date).fromisoformat(since)
            except ValueError:
                raise RequestValidationError([{"type": "value_error", "loc": ("query", "since"),
                                               "msg": f"{since!r} is not an ISO date like 2026-11-01",
                                               "input": since}]) from None
        rows = await run_in_threadpool(api.catalog.query, project=project, model=model, since=since,
                                       limit=limit + 1, offset=offset)
        more = len(rows) > limit
        return ArtifactPage(items=[artifact_view(row) for row in rows[:limit]], limit=limit, offset=offset,
                            next_offset=offset + limit if more else None)

    @app.get("/api/artifacts/{artifact_id}", response_model=ArtifactView, tags=["artifacts"],
             responses=error_responses(404, 422))
    async def get_artifact(artifact_id: ArtifactId, api: Api) -> ArtifactView:
        row = await run_in_threadpool(api.catalog.resolve, artifact_id.lower())
        return artifact_view(row, with_meta=True)

    @app.get("/api/artifacts/{artifact_id}/image", tags=["artifacts"], response_class=FileResponse,
             responses={200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}},
                        **error_responses(404, 422)})
    async def get_artifact_image(artifact_id: ArtifactId, api: Api,
                                 format: Annotated[str, Query(pattern="^(png|jpeg|webp)$")] = "png") -> Response:
        """The PNG as saved (its metadata chunks included), or converted to jpeg / webp."""
        path = await run_in_threadpool(artifact_image_path, api, artifact_id.lower())
        if format == "png":
            return FileResponse(path, media_type=IMAGE_TYPES["png"])
        data = await run_in_threadpool(convert_image, path.read_bytes(), format)
        return Response(data, media_type=IMAGE_TYPES[format])

    @app.get("/api/artifacts/{artifact_id}/video", tags=["artifacts"], response_class=FileResponse,
             responses={200: {"content": {"video/mp4": {}}}, **error_responses(404, 422)})
    async def get_artifact_video(artifact_id: ArtifactId, api: Api) -> Response:
        """The MP4 of a video artifact (an animatic from POST /api/animatic, a clip); range requests work,
        so a browser's <video> can seek. `/image` of a video artifact is its poster frame."""
        path = await run_in_threadpool(artifact_video_path, api, artifact_id.lower())
        return FileResponse(path, media_type="video/mp4")


async def _event_stream(api: ApiState, job: Job, first: list, queue: asyncio.Queue) -> AsyncIterator[str]:
    try:
        for event in first:
            yield sse_message(event)
        if job.terminal:
            return
        state = (job.status, job.attempts)
        seen = set(job.artifact_ids)
        # Progress already in the snapshot (events are numbered per job) is not sent twice.
        shown_progress = max((event.seq for event in first if event.event == "progress"), default=0)
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), SSE_PING_S)
            except asyncio.TimeoutError:
                yield ": ping\n\n"
                continue
            if event is None:  # the server is stopping
                return
            # The snapshot may already show what these events report (they raced with reading it).
            if event.event == "queued" and state == ("queued", event.attempts):
                continue
            if event.event == "started" and state == ("running", event.attempt):
                continue
            if event.event == "artifact" and event.artifact_id in seen:
                continue
            if event.event == "progress" and event.seq <= shown_progress:
                continue
            if event.event == "queued":
                state = ("queued", event.attempts)
            elif event.event == "started":
                state = ("running", event.attempt)
            elif event.event == "artifact":
                seen.add(event.artifact_id)
            yield sse_message(event)
            if event.event in FINAL_EVENTS:
                return
    finally:
        api.hub.unsubscribe(job.id, queue)


# ---- batches --------------------------------------------------------------------------------------------

def _problem_field(label: str) -> str:
    return {"STORY_BIBLE.md": "bible", "prompts.txt": "prompts"}.get(label, "storyboard")


def refine_body_request(api: ApiState, body: RefineBody):
    from echo_os.artifacts.store import Artifact
    from echo_os.iterate.refine import prepare_refine
    from echo_os.render.requests import random_seed

    parent = Artifact.from_row(api.settings.artifacts_dir, api.catalog.resolve(body.artifact_id))
    changes = {"steps": body.steps, "cfg": body.cfg, "scheduler": body.scheduler, "model": body.model,
               "engine": body.engine, "count": body.count, "project": body.project,
               "seed": body.seed if body.seed is not None else random_seed()}
    try:  # through the front door, as `echo-os refine`: an engine that cannot refine is a 422 on engine
        prepared = prepare_refine(api.settings, parent, strength=body.strength, prompt=body.prompt,
                                  style=body.style, negative=body.negative, changes=changes, options=body.options)
    except OptionError as error:
        raise option_field_error(error, {"negative_prompt": "negative"}) from None
    return prepared.request


def clip_body_request(api: ApiState, body: AnimateBody):
    """The clip's RenderRequest (echo_os.motion.clips.clip_render_request), after the checks `echo-os animate`
    makes before rendering; a 422 names the body field, a 404 an unknown artifact."""
    from echo_os.artifacts.store import Artifact
    from echo_os.artifacts.video import is_video_meta
    from echo_os.engines import check_runtime, choose_engine
    from echo_os.motion.clips import clip_render_request
    from echo_os.render.requests import ClipRequest, parse_size

    row = api.catalog.resolve(body.artifact_id)
    if is_video_meta(row.meta):
        raise field_error("artifact_id", f"artifact {row.id[:12]} is a video; a clip starts from an image artifact",
                          body.artifact_id)
    parent = Artifact.from_row(api.settings.artifacts_dir, row)
    width = height = None
    if body.size is not None:
        try:
            width, height = parse_size(body.size)
        except UsageError as error:
            raise field_error("size", str(error).replace("--size", "size"), body.size) from None
    check_model(api.settings, body.model, "auto")
    clip = ClipRequest(seed=parent.meta.seed if body.seed is None else body.seed, model=body.model, frames=body.frames,
                       fps=body.fps, motion_bucket=body.motion_bucket, noise_aug=body.noise_aug, steps=body.steps,
                       width=width, height=height, decode_chunk_size=body.decode_chunk_size,
                       cpu_offload=body.cpu_offload, device=body.device)
    try:
        request = clip_render_request(api.settings, parent, clip)
    except OptionError as error:
        raise field_error(error.option.replace("-", "_"), str(error).replace("--", "")) from None
    except UsageError as error:  # not an image
        raise field_error("artifact_id", str(error), body.artifact_id) from None
    try:  # a model no video engine renders (not a video entry, no weights here): the client's error
        choose_engine(api.settings, request)
        check_runtime(api.settings, request)
    except OptionError as error:
        raise field_error(error.option, str(error)) from None
    except UsageError as error:
        raise field_error("model", str(error), body.model) from None
    return request


def compare_spec(settings: Settings, body: CompareBody) -> JobSpec:
    from echo_os.api.jobs import CompareAxis, CompareSource
    from echo_os.iterate.compare import plan_compare
    from echo_os.render.requests import random_seed

    lists = {"models": tuple(body.models), "schedulers": tuple(body.schedulers), "cfg": tuple(body.cfg),
             "steps": tuple(body.steps), "seeds": tuple(body.seeds) or (random_seed(),),
             "styles": tuple(body.styles), "engines": tuple(body.engines)}
    for option, values in lists.items():
        if len(set(values)) != len(values):
            raise field_error(option, f"{option} lists a value twice", list(values))
    base = {"prompt": body.prompt, "negative_prompt": body.negative or None, "size": body.size,
            "project": body.project}
    try:  # each cell through the front door (echo_os.render.prepare), as `echo-os compare`
        plan = plan_compare(settings, base, {k: v for k, v in lists.items() if v}, max_cells=body.max_cells,
                            given=body.model_fields_set & {"size"})
    except OptionError as error:
        where = {"max-cells": "max_cells", "negative_prompt": "negative", "width": "size", "height": "size"}
        raise option_field_error(error, where) from None
    title = f"{body.prompt}: " + " x ".join(f"{a.label} ({len(a.values)})" for a in plan.axes) if plan.axes else body.prompt
    source = CompareSource(title=title, axes=tuple(CompareAxis(option=a.option, values=a.values) for a in plan.axes),
                           cells=tuple(cell.values for cell in plan.cells))
    return JobSpec(items=tuple(cell.request for cell in plan.cells), title=title, compare=source)


_STYLE_KEYS_LOCK = threading.Lock()  # one keyed style request at a time: a repeat sees the first's answer


def save_style_once(api: ApiState, body: StyleBody, key: IdempotencyKey | None) -> tuple[int, dict, bool]:
    """(status, answer, replayed) of POST /api/styles: without a key, save_style; with one, the answer
    stored under it when the body is the same (replayed), 409 for another body, else save and store."""
    if key is None:
        return 201, save_style(api.settings, body).model_dump(mode="json"), False
    with _STYLE_KEYS_LOCK:
        found = api.jobs.find_answer(key.key)
        if found is not None:
            fingerprint_, status, stored = found
            if fingerprint_ != key.fingerprint:
                return 409, {"detail": f"this {IDEMPOTENCY_HEADER} was used for a different request; send a new "
                                       "key for a new request"}, False
            return 200, json.loads(stored), True
        answer = save_style(api.settings, body).model_dump(mode="json")
        api.jobs.keep_answer(key.key, key.fingerprint, 201, json.dumps(answer))
        return 201, answer, False


def save_style(settings: Settings, body: StyleBody) -> StyleView:
    from echo_os.render.styles import (
        Style,
        check_name,
        check_style_text,
        read_workspace_styles,
        write_workspace_styles,
    )

    try:
        name = check_name(body.name)
    except OptionError as error:
        raise field_error("name", str(error)) from None
    for field_name in ("prompt", "negative"):  # the rules of prompt text: a style must stay usable
        try:
            check_style_text(getattr(body, field_name), field_name)
        except OptionError as error:
            raise field_error(field_name, str(error)) from None
    if not body.prompt.strip() and not body.negative.strip():
        raise field_error("prompt", "give the style's words (with {prompt} where the prompt goes)", body.prompt)
    current = read_workspace_styles(settings)
    if name.casefold() in current and not body.replace:
        raise field_error("name", f"style {current[name.casefold()].name!r} already exists; send replace: true "
                                  "to overwrite it", body.name)
    style = Style(name, body.prompt.strip(), body.negative.strip())
    current[name.casefold()] = style
    write_workspace_styles(settings, current)
    return StyleView(**style.as_dict())


def plan_batch(settings: Settings, body: BatchBody, job_id: str) -> JobSpec:
    """The story planned as `echo-os batch` plans it (echo_os.story.batch: its texts go to
    artifacts/.jobs/<id>/), as the job's spec, one request per scene; an error is a 422 on the body field."""
    from echo_os.story import StoryError
    from echo_os.story.batch import batch_options
    from echo_os.story.batch import plan_batch as plan_story_batch

    folder = resolve_inside(settings.artifacts_dir, ".jobs", job_id)
    try:
        options = batch_options(settings, model=body.model, engine=body.engine, steps=body.steps, cfg=body.cfg,
                                size=body.size, scheduler=body.scheduler, seed=body.seed, style=body.style,
                                preset=body.preset, engine_given="engine" in body.model_fields_set)
        planned = plan_story_batch(settings, project=body.project, folder=folder, options=options,
                                   storyboard=body.storyboard, bible=body.bible, prompts=body.prompts,
                                   ip_adapter=body.ip_adapter)
    except StoryError as error:
        shutil.rmtree(folder, ignore_errors=True)
        raise RequestValidationError([{"type": "value_error", "loc": ("body", _problem_field(problem.file)),
                                       "msg": _public_problem(problem, settings, folder), "input": None}
                                      for problem in error.problems]) from None
    except OptionError as error:  # named as BatchBody names it ("prompts.N": a prompt line)
        shutil.rmtree(folder, ignore_errors=True)
        head, *rest = error.option.split(".")
        loc = (head if head in BatchBody.model_fields else "storyboard", *(int(p) if p.isdigit() else p for p in rest))
        raise field_error(loc, api_message(_without_server_paths(str(error), settings, folder))) from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    story = StorySource(project=body.project, kind=planned.kind, source=str(planned.source),
                        bible=str(planned.bible) if planned.bible else None, options=planned.prepared.options,
                        ip_adapter=planned.ip_adapter)
    notes = [api_message(planned.prepared.note)] if planned.prepared.note else []
    return JobSpec(items=tuple(planned.requests), title=planned.plan.title, warnings=(*planned.plan.warnings, *notes),
                   story=story, again=body.again)


def _prepare_plan(settings: Settings, plan, *, size_given: bool):
    """echo_os.render.prepare.prepare_plan; an engine that cannot render the story is a 422 on `engine`."""
    from echo_os.render.prepare import prepare_plan

    try:
        return prepare_plan(settings, plan.requests, size_given=size_given)
    except OptionError as error:
        raise option_field_error(error, {"width": "size", "height": "size"}) from None


def _check_plan(settings: Settings, plan, engine) -> None:
    from echo_os.render.prepare import check_plan_requests

    try:
        check_plan_requests(settings, plan.requests, engine)
    except OptionError as error:
        raise option_field_error(error, {"width": "size", "height": "size"}) from None


# ---- evolve -------------------------------------------------------------------------------------------

def plan_evolve(settings: Settings, body: EvolveBody) -> JobSpec:
    """The job spec of an /api/evolve body, checked now: a 422 names the field (404: no such target)."""
    from echo_os.api.jobs import EvolveSpec
    from echo_os.artifacts.store import ArtifactStore
    from echo_os.reflect.evolve import EvolveOptions, find_scorer, resolve_start, run_id_of
    from echo_os.resonance.story import parse_objective

    def checked(field: str, make):
        try:
            return make()
        except NotFoundError:
            raise
        except UsageError as error:
            raise field_error(field, str(error)) from None

    objective = checked("objective", lambda: parse_objective(body.objective))
    options = EvolveOptions(rounds=body.rounds, per_round=body.per_round, objective=objective, scorer=body.scorer,
                            min_gain=body.min_gain, strengths=tuple(body.strengths), seed=body.seed)
    checked("strengths", options.check)
    if body.scorer == "ratings":
        raise field_error("scorer", "scorer 'ratings' asks for ratings in a terminal; use `echo-os evolve "
                                    "--scorer ratings`, or give clip or a plugin's scorer")
    checked("scorer", lambda: find_scorer(settings, body.scorer))
    store = ArtifactStore(settings)
    try:
        start = checked("target", lambda: resolve_start(settings, store, body.target, objective))
    finally:
        store.close()
    return JobSpec(evolve=EvolveSpec(start=start.id, run_id=run_id_of(start.id, options), rounds=body.rounds,
                                     per_round=body.per_round, objective=dict(objective.weights), scorer=body.scorer,
                                     min_gain=body.min_gain, strengths=tuple(body.strengths), seed=body.seed))


# ---- animatics ----------------------------------------------------------------------------------------

def plan_animatic(settings: Settings, body: AnimaticBody) -> JobSpec:
    """The animatic job's spec, after the checks `echo-os animatic` makes before encoding (a 422 naming the
    field: `size`, `fade`, or `project` for a project without a rendered story, a scene image gone, a bad
    duration in its story.csv)."""
    import re

    from echo_os.artifacts.encode import check_video_size
    from echo_os.motion.animatic import AnimaticOptions, check_animatic
    from echo_os.render.requests import parse_size

    size = None
    if body.size is not None:
        try:
            size = parse_size(body.size)
            check_video_size(*size, what="size")
        except UsageError as error:
            raise field_error("size", str(error).replace("--size", "size"), body.size) from None
    options = AnimaticOptions(fps=body.fps, size=size, fade=body.fade, captions=body.captions, clips=body.clips)
    try:
        plan = check_animatic(settings, body.project, options)
    except EchoError as error:
        option = getattr(error, "option", None)
        message = re.sub(r"--(fps|size|fade|clips|captions)\b", r"\1",
                         _without_server_paths(str(error), settings, settings.artifacts_dir / ".jobs"))
        raise field_error(option if option in AnimaticBody.model_fields else "project", message) from None
    return JobSpec(animatic=AnimaticSpec(project=body.project, fps=body.fps, size=size, fade=body.fade,
                                         captions=body.captions, clips=body.clips, scenes=plan.scenes,
                                         frames=plan.frames))


# One answer whether the file exists outside the workspace, exists inside it unreadable, or does not
# exist: a client may not learn which files the server's machine has.
REFERENCE_REFUSED = ("reference image is missing, unreadable or outside the workspace; use an image file "
                     "inside the workspace folder")


def _is_reference_key(key: str | None) -> bool:
    return key is not None and key.startswith("characters.") and ".reference" in key


def _public_problem(problem, settings: Settings, folder: Path) -> str:
    """A story problem as a client may see it: no server paths, and the same words for every reference
    image the planner refused, whatever the reason."""
    if _is_reference_key(problem.key):
        return f"{problem.file}, key {problem.key}: {REFERENCE_REFUSED}"
    return _without_server_paths(str(problem), settings, folder)


def _without_server_paths(text: str, settings: Settings, folder: Path) -> str:
    """Server folders in a message, as the client knows them: the job's own folder as nothing (its files
    are the texts the client sent), the workspace as `<workspace>`."""
    for path, shown in ((folder, ""), (settings.artifacts_dir.resolve(), "<workspace>/artifacts"),
                        (settings.home.resolve(), "<workspace>")):
        text = text.replace(f"{path}{os.sep}", f"{shown}/" if shown else "").replace(str(path), shown or ".")
    return text


def _adapter_for(plan, body: BatchBody) -> str | None:
    """The body's `ip_adapter`, else the bible's, else the default (as `echo-os batch`); `none`: no references."""
    from echo_os.story.render import DEFAULT_IP_ADAPTER

    chosen = body.ip_adapter or plan.ip_adapter or DEFAULT_IP_ADAPTER
    return None if chosen == "none" else chosen


def _story_requests(settings: Settings, plan, body: BatchBody) -> list:
    """The scenes' requests as `echo-os batch` renders them (story.render.scene_requests); an adapter this
    machine lacks is a 422 on `ip_adapter`, a LoRA it cannot find one on `bible`."""
    from echo_os.engines.ip_adapter import AdapterMissing
    from echo_os.story.render import scene_requests

    try:
        return scene_requests(settings, plan, _adapter_for(plan, body))
    except AdapterMissing as error:
        raise field_error("ip_adapter", str(error)) from None
    except EchoError as error:
        raise field_error("bible", str(error)) from None


def _check_plan_paths(settings: Settings, plan) -> None:
    """A bible sent over HTTP may only point at files inside the workspace."""
    from echo_os.engines.lora import lora_path
    from echo_os.models import load_registry

    home = settings.home.resolve()
    registry = load_registry(settings)
    for scene in plan.scenes:
        for member in scene.cast:
            for index, reference in enumerate(member.references):
                if not Path(reference).resolve().is_relative_to(home):
                    raise field_error("bible", f"STORY_BIBLE.md, key characters.{member.id}.reference[{index}]: "
                                               f"{REFERENCE_REFUSED}")
            lora = member.lora.name if member.lora else None
            if lora is None or lora in registry:
                continue
            # The same rule resolve_lora reads the file by.
            if not lora_path(lora, plan.bible_path.parent).resolve().is_relative_to(home):
                raise field_error("bible", f"character {member.id}: lora {lora} is outside the workspace")
