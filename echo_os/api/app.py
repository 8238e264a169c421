"""The app factory: `create_app(settings, ...)` -> a FastAPI app serving one workspace.

Nothing is global: the factory takes the settings and options, the lifespan opens the job store, the
event hub (on the running loop) and the worker thread, and routes reach them through `ApiState`, kept on
`app.state` and handed to each route by a dependency.

    POST /api/render                202 {job_id, status_url, events_url}
    POST /api/batch                 202 {job_id, ...}: a storyboard (+ bible) or a list of prompts
    GET  /api/jobs[?status=]        GET /api/jobs/{id}      GET /api/jobs/{id}/events (SSE)
    POST /api/jobs/{id}/cancel
    GET  /api/artifacts[?project=&model=&since=&limit=&offset=]
    GET  /api/artifacts/{id}        GET /api/artifacts/{id}/image
    GET  /api/workers               the render workers (processes: echo_os.api.processes)
    POST /v1/images/generations     the OpenAI Images API (echo_os.api.openai_compat)
    GET  /health                    GET /openapi.json
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, AsyncIterator

from fastapi import FastAPI, HTTPException, Path as PathParam, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from echo_os import __version__
from echo_os.api.deps import (
    IMAGE_TYPES, Api, ApiOptions, ApiState, CatalogReader, Submitter, artifact_image_path, build_render_request,
    check_model, convert_image, field_error,
)
from echo_os.api.events import (
    FINAL_EVENTS, EventHub, JobCancelled, JobFailed, JobProgressed, JobQueued, JobStarted, JobSucceeded,
    image_url, sse_message,
)
from echo_os.api.jobs import JOB_ID_PATTERN, Job, JobProgress, JobSpec, JobStatus, JobStore, StorySource, new_job_id, now_iso
from echo_os.api.schemas import (
    ArtifactPage, ArtifactView, BatchBody, BatchSubmitted, Health, JobPage, JobView, RenderBody, Submitted,
    WorkerList, WorkerView, error_responses,
)
from echo_os.api.security import Guard, GuardSettings, resolve_inside
from echo_os.api.processes import WorkerPool, images_per_minute
from echo_os.api.worker import EngineFactory, Worker, default_engine_factory
from echo_os.errors import EchoError, NotFoundError, OptionError, UsageError
from echo_os.settings import Settings

log = logging.getLogger(__name__)

ARTIFACT_ID_PATTERN = r"^[0-9a-fA-F]{12,64}$"
SSE_PING_S = 15.0
# RenderRequest field -> the name /api/render takes it as
RENDER_BODY_NAMES = {"negative_prompt": "negative", "width": "size", "height": "size"}

JobId = Annotated[str, PathParam(pattern=JOB_ID_PATTERN, description="32 hex characters")]
ArtifactId = Annotated[str, PathParam(pattern=ARTIFACT_ID_PATTERN,
                                      description="An artifact id (sha256 hex) or a unique prefix of 12+")]


# ---- views ------------------------------------------------------------------------------------------

def job_view(job: Job, live: JobProgressed | None) -> JobView:
    progress = JobProgress(images_done=len(job.artifact_ids), images_total=job.images_total)
    if live is not None and job.status == "running":
        progress.step, progress.total_steps = live.step, live.total_steps
    return JobView(id=job.id, kind=job.kind, status=job.status, progress=progress, attempts=job.attempts,
                   error=job.error, cancel_requested=job.cancel_requested, created=job.created,
                   started=job.started, finished=job.finished, timings=job.timings,
                   artifact_ids=job.artifact_ids, request=job.spec.items[0] if job.kind == "render" else None,
                   title=job.spec.title, scenes=len(job.spec.items))


def worker_views(api: ApiState) -> list[WorkerView]:
    """Worker processes from their rows in jobs.db; the in-process thread from its own figures."""
    from echo_os.api.jobs import WorkerRow

    if isinstance(api.worker, WorkerPool):
        rows = api.worker.rows()
    elif isinstance(api.worker, Worker):
        stats = api.worker.stats
        import os

        rows = [WorkerRow(slot=0, worker="thread", pid=os.getpid(), device="in-process", model=stats.model,
                          jobs_done=stats.jobs_done, images_done=stats.images_done, first_job=stats.first_job,
                          last_error=stats.last_error, state=stats.state if api.worker.alive else "stopped")]
    else:
        rows = []
    return [WorkerView(slot=row.slot, pid=row.pid, device=row.device, model=row.model, jobs_done=row.jobs_done,
                       images_done=row.images_done, images_per_min=images_per_minute(row),
                       last_error=row.last_error, restarts=row.restarts, state=row.state, heartbeat=row.heartbeat)
            for row in rows]


def artifact_view(row, *, with_meta: bool = False) -> ArtifactView:
    return ArtifactView(id=row.id, created=row.created, project=row.project, model=row.model, engine=row.engine,
                        prompt=row.prompt, seed=row.seed, size=f"{row.width}x{row.height}", scene=row.scene,
                        parent_id=row.parent_id, image_url=image_url(row.id),
                        meta=row.meta if with_meta else None)


def submitted(job_id: str, model=Submitted, **extra: Any) -> JSONResponse:
    body = model(job_id=job_id, status_url=f"/api/jobs/{job_id}", events_url=f"/api/jobs/{job_id}/events",
                 **extra)
    return JSONResponse(body.model_dump(mode="json"), status_code=202, headers={"Location": body.status_url})


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
        return [JobSucceeded(job_id=job.id, artifact_ids=job.artifact_ids, timings=job.timings)]
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


def create_app(settings: Settings, *, token: str | None = None, start_worker: bool = True,
               options: ApiOptions | None = None, make_engine: EngineFactory | None = None) -> FastAPI:
    """A FastAPI app for one workspace. `make_engine(request) -> Engine` replaces the CLI's engine
    choice (tests pass fakes); `start_worker=False` stores jobs without rendering them."""
    options = options or ApiOptions()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as cleanup:  # closes what was opened, in reverse, even after a failure
            # One server per workspace: a second one would take the first one's running jobs for crashed ones.
            cleanup.callback(hold_server_lock(settings).release)
            jobs = JobStore(jobs_db_path(settings), max_attempts=options.max_attempts)
            cleanup.callback(jobs.close)
            recovery = jobs.recover()
            if recovery.requeued or recovery.failed or recovery.cancelled:
                log.warning("recovered jobs left running by a stopped server: %d queued again, %d failed, "
                            "%d cancelled", len(recovery.requeued), len(recovery.failed), len(recovery.cancelled))
            catalog = CatalogReader(settings)
            cleanup.callback(catalog.close)
            hub = EventHub(asyncio.get_running_loop())
            worker: Worker | WorkerPool | None = None
            if start_worker and options.workers > 0:
                if make_engine is not None:
                    raise ValueError("make_engine runs in this process; it needs options.workers=0")
                worker = WorkerPool(settings, jobs, hub.publish_threadsafe, options, count=options.workers,
                                    log_level=options.worker_log_level)
            elif start_worker:
                from echo_os.artifacts.store import ArtifactStore

                from echo_os.memory.artifacts import attach

                store = ArtifactStore(settings)
                cleanup.callback(store.close)
                listener = attach(store)  # every image the server saves is embedded (ECHO_OS_NO_MEMORY=1: not)
                if listener is not None:
                    listener.start_preload()
                worker = Worker(jobs, store, hub.publish_threadsafe,
                                make_engine=make_engine or default_engine_factory(settings),
                                max_batch=options.max_batch, batch_window_ms=options.batch_window_ms)

            def on_stored(stored: list[Job]) -> None:
                for job in stored:
                    hub.publish(JobQueued(job_id=job.id))
                if worker is not None:
                    worker.wake()

            submitter = Submitter(jobs, on_stored)
            cleanup.callback(submitter.close)
            app.state.api = ApiState(settings=settings, options=options, jobs=jobs, hub=hub, submitter=submitter,
                                     catalog=catalog, worker=worker, started_worker=start_worker)
            if worker is not None:
                worker.start()
                cleanup.push_async_callback(asyncio.to_thread, worker.stop)
            cleanup.callback(hub.close)  # first: SSE streams and waiting OpenAI requests end
            yield

    app = FastAPI(title="echo-os", version=__version__, lifespan=lifespan, responses=error_responses(401),
                  description="Render images on this machine's GPU. Jobs are durable; every image is an "
                              "artifact (PNG + meta.json). The OpenAI Images API is at /v1/images/generations.")
    app.add_middleware(Guard, settings=GuardSettings(token=token, allowed_origins=options.allowed_origins,
                                                      allowed_hosts=options.allowed_hosts,
                                                      max_body_bytes=options.max_body_bytes))
    if options.allowed_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(options.allowed_origins),
                           allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"])

    _add_error_handlers(app)
    _add_routes(app)
    from echo_os.api.memory_routes import name_search_operations
    from echo_os.api.memory_routes import router as memory_router
    from echo_os.api.openai_compat import router as openai_router

    app.include_router(openai_router)
    app.include_router(memory_router)
    name_search_operations(app)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(EchoError)
    async def echo_error(request: Request, error: EchoError) -> JSONResponse:
        status = 404 if isinstance(error, NotFoundError) else 422 if isinstance(error, UsageError) else 500
        return JSONResponse({"detail": str(error)}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        errors = jsonable_encoder(error.errors(), custom_encoder={Exception: str, bytes: lambda b: b.decode("utf-8", "replace")})
        body: dict[str, Any] = {"detail": errors}
        if request.url.path.startswith("/v1/"):
            # The OpenAI client reads `error.message` and `error.param`.
            first = errors[0] if errors else {}
            param = ".".join(str(part) for part in first.get("loc", ())[1:]) or None
            body["error"] = {"message": f"{param}: {first.get('msg')}" if param else str(first.get("msg")),
                             "type": "invalid_request_error", "param": param, "code": None}
        return JSONResponse(body, status_code=422)


def _add_routes(app: FastAPI) -> None:
    @app.get("/health", response_model=Health, tags=["server"])
    async def health(api: Api) -> Health:
        counts = await run_in_threadpool(api.jobs.counts)
        return Health(version=__version__, worker=api.worker_status, jobs=counts)

    @app.get("/api/workers", response_model=WorkerList, tags=["server"])
    async def list_workers(api: Api) -> WorkerList:
        """The render workers: device, model loaded, jobs done, images/min, last error."""
        return WorkerList(items=await run_in_threadpool(worker_views, api))

    # -- submitting ----------------------------------------------------------------------------------
    @app.post("/api/render", status_code=202, response_model=Submitted, tags=["jobs"],
              responses=error_responses(400, 403, 413, 422))
    async def submit_render(body: RenderBody, api: Api) -> JSONResponse:
        """Queue `echo-os render` with these parameters."""
        fields = body.model_dump(exclude={"negative", "size", "seed"}, exclude_none=True)
        fields["negative_prompt"] = body.negative or None  # none given: the model's own rule (see requests.py)
        if body.seed is not None:
            fields["seed"] = body.seed
        # On the loop, not in a thread: it takes ~0.3 ms, and each thread hop costs a GIL hand-over while
        # the worker renders.
        request = build_render_request(api.settings, fields, size=body.size, names=RENDER_BODY_NAMES)
        job = Job(id=new_job_id(), kind="render", status="queued", spec=JobSpec(items=(request,)),
                  created=now_iso())
        await api.submitter.submit(job)
        return submitted(job.id)

    @app.post("/api/batch", status_code=202, response_model=BatchSubmitted, tags=["jobs"],
              responses=error_responses(400, 403, 413, 422))
    async def submit_batch(body: BatchBody, api: Api) -> JSONResponse:
        """Queue a story: `storyboard` (story.csv text) with an optional `bible`, or `prompts`."""
        job_id = new_job_id()
        spec = await run_in_threadpool(plan_batch, api.settings, body, job_id)
        job = Job(id=job_id, kind="batch", status="queued", spec=spec, created=now_iso())
        await api.submitter.submit(job)
        return submitted(job.id, BatchSubmitted, title=spec.title or body.project, scenes=len(spec.items),
                         images=spec.images_total, warnings=list(spec.warnings))

    # -- jobs ----------------------------------------------------------------------------------------------
    @app.get("/api/jobs", response_model=JobPage, tags=["jobs"])
    async def list_jobs(api: Api, status: JobStatus | None = None,
                        limit: Annotated[int, Query(ge=1, le=500)] = 50,
                        offset: Annotated[int, Query(ge=0, le=10**9)] = 0) -> JobPage:
        """Newest first."""
        jobs = await run_in_threadpool(lambda: api.jobs.list(status=status, limit=limit + 1, offset=offset))
        more = len(jobs) > limit
        items = [job_view(job, api.hub.progress(job.id)) for job in jobs[:limit]]
        return JobPage(items=items, limit=limit, offset=offset, next_offset=offset + limit if more else None)

    async def find_job(api: ApiState, job_id: str) -> Job:
        job = await run_in_threadpool(api.jobs.get, job_id)
        if job is None:
            raise HTTPException(status_code=404, detail=f"no job {job_id}")
        return job

    @app.get("/api/jobs/{job_id}", response_model=JobView, tags=["jobs"], responses=error_responses(404, 422))
    async def get_job(job_id: JobId, api: Api) -> JobView:
        job = await find_job(api, job_id)
        return job_view(job, api.hub.progress(job_id))

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


def plan_batch(settings: Settings, body: BatchBody, job_id: str) -> JobSpec:
    """Check the story with the planner (which reads files: the texts go to artifacts/.jobs/<id>/),
    then return the job's requests, one per scene."""
    from echo_os.story import PlanOptions, StoryError, plan_prompt_list, plan_story

    if (body.storyboard is None) == (body.prompts is None):
        raise field_error("storyboard", "send either `storyboard` (story.csv text) or `prompts`, not both")
    if body.bible is not None and body.storyboard is None:
        raise field_error("bible", "a bible goes with a storyboard; a prompt list has none")
    if body.prompts is not None:
        for index, prompt in enumerate(body.prompts):
            if not prompt.strip() or "\n" in prompt or "\r" in prompt or "\x00" in prompt:
                raise field_error(("prompts", index), "each prompt is one non-empty line of text", prompt)
    folder = resolve_inside(settings.artifacts_dir, ".jobs", job_id)
    folder.mkdir(parents=True, exist_ok=True)
    options = PlanOptions(model=body.model, engine=body.engine, steps=body.steps, cfg=body.cfg, size=body.size,
                          scheduler=body.scheduler, seed=body.seed)
    try:
        if body.prompts is not None:
            source = folder / "prompts.txt"
            source.write_text("\n".join(body.prompts) + "\n", encoding="utf-8")
            plan = plan_prompt_list(body.project, source, options=options)
        else:
            source = folder / "story.csv"
            source.write_text(body.storyboard, encoding="utf-8")
            bible = None
            if body.bible is not None:
                bible = folder / "STORY_BIBLE.md"
                bible.write_text(body.bible, encoding="utf-8")
            plan = plan_story(body.project, source, bible=bible, options=options)
        _check_plan_paths(settings, plan)
        for model, engine in dict.fromkeys((scene.request.model, scene.request.engine) for scene in plan.scenes):
            check_model(settings, model, engine, "model" if body.model else "bible")
        requests = _story_requests(settings, plan, body)
    except StoryError as error:
        shutil.rmtree(folder, ignore_errors=True)
        raise RequestValidationError([{"type": "value_error", "loc": ("body", _problem_field(problem.file)),
                                       "msg": str(problem), "input": None} for problem in error.problems]) from None
    except OptionError as error:  # an override the planner refused, named as BatchBody names it
        shutil.rmtree(folder, ignore_errors=True)
        raise field_error(error.option if error.option in BatchBody.model_fields else "storyboard", str(error)) \
            from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    story = StorySource(project=body.project, kind="prompts" if body.prompts is not None else "storyboard",
                        source=str(source), bible=str(bible) if body.prompts is None and bible else None,
                        options=options, ip_adapter=None if body.ip_adapter == "none" else body.ip_adapter)
    return JobSpec(items=tuple(requests), title=plan.title, warnings=plan.warnings, story=story)


def _story_requests(settings: Settings, plan, body: BatchBody) -> list:
    """The scenes' requests as `echo-os batch` renders them (story.render.scene_requests); an adapter this
    machine lacks is a 422 on `ip_adapter`, a LoRA it cannot find one on `bible`."""
    from echo_os.engines.ip_adapter import AdapterMissing
    from echo_os.story.render import scene_requests

    try:
        return scene_requests(settings, plan, None if body.ip_adapter == "none" else body.ip_adapter)
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
            for reference in member.references:
                if not Path(reference).resolve().is_relative_to(home):
                    raise field_error("bible", f"character {member.id}: reference image {reference} is outside "
                                               "the workspace; put it under the workspace folder")
            lora = member.lora.name if member.lora else None
            if lora is None or lora in registry:
                continue
            # The same rule resolve_lora reads the file by.
            if not lora_path(lora, plan.bible_path.parent).resolve().is_relative_to(home):
                raise field_error("bible", f"character {member.id}: lora {lora} is outside the workspace")
