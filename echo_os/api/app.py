"""The app factory: `create_app(settings, ...)` -> a FastAPI app serving one workspace.

Nothing is global: the factory takes the settings and options, the lifespan opens the job store, the
event hub (on the running loop) and the worker thread, and routes reach them through `ApiState`, kept on
`app.state` and handed to each route by a dependency.

The routes are one APIRouter per resource under echo_os.api.routes (the README's API table lists them):

    workers     GET /health, GET /api/workers
    render      POST /api/render, POST /api/refine
    batch       POST /api/batch
    animatic    POST /api/animatic, POST /api/animate
    evolve      POST /api/evolve, GET /api/evolve/{run_id}
    compare     POST /api/compare
    styles      GET/POST /api/styles
    jobs        GET /api/jobs[/{id}[/events]], POST /api/jobs/{id}/cancel
    artifacts   GET /api/artifacts[/{id}[/image|/video]]
    openai      POST /v1/images/generations
    memory      /api/memory...   resonance: ratings, scores, reports   studio: /, /api/studio, /api/gallery

Every POST that creates work takes an `Idempotency-Key` header (echo_os.api.idempotency).
"""

from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response

from echo_os import __version__
from echo_os.api.deps import ApiOptions, ApiState, CatalogReader, Submitter, cancel_if_unanswered
from echo_os.api.events import EventHub, JobQueued
from echo_os.api.hosts import WorkerHost
from echo_os.api.idempotency import IDEMPOTENCY_HEADER, REPLAYED_HEADER, WaitingClients
from echo_os.api.jobs import Job, JobStore
from echo_os.api.processes import WorkerPool
from echo_os.api.ray_workers import RayWorkers
from echo_os.api.schemas import error_responses
from echo_os.api.security import Guard, GuardSettings, check_origins
from echo_os.api.worker import EngineFactory, Worker, default_engine_factory
from echo_os.errors import DiskFullError, EchoError, NotFoundError, UsageError, disk_full
from echo_os.settings import Settings

log = logging.getLogger(__name__)

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
            worker: WorkerHost | None = None
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
            cleanup.callback(state.swatches.shutdown)  # a swatch render still queued is dropped
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
    for router in routers():
        app.include_router(router)
    _add_docs(app)
    from echo_os.api.routes.memory import name_search_operations

    name_search_operations(app)
    return app


def routers() -> list[APIRouter]:
    """One router per resource, in the order the OpenAPI document lists them."""
    from echo_os.api.routes import (
        animatic,
        artifacts,
        batch,
        compare,
        evolve,
        jobs,
        memory,
        openai,
        render,
        resonance,
        studio,
        styles,
        workers,
    )

    return [workers.router, render.router, batch.router, animatic.router, evolve.router, compare.router,
            styles.router, jobs.router, artifacts.router, openai.router, memory.router, resonance.router,
            studio.router]


# Swagger UI's files, served from the swagger-ui-bundle-v2 package (Swagger UI 5: OpenAPI 3.1, which FastAPI
# writes) instead of FastAPI's default CDN, so /docs works on an air-gapped machine. ReDoc has no packaged
# copy, so /redoc is off.
DOCS_ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
               "favicon-32x32.png": "image/png"}


def _add_docs(app: FastAPI) -> None:
    from fastapi.openapi.docs import get_swagger_ui_html

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} API",
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


