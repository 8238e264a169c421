"""GET /health and GET /api/workers: the server and its render workers."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from echo_os import __version__
from echo_os.api.deps import (
    Api,
    ApiState,
)
from echo_os.api.jobs import (
    now_iso,
)
from echo_os.api.processes import WorkerPool, images_per_minute
from echo_os.api.ray_workers import RayWorkers
from echo_os.api.schemas import (
    Health,
    WorkerList,
    WorkerView,
)
from echo_os.api.stalls import epoch_from_iso, judge
from echo_os.api.worker import Worker

log = logging.getLogger(__name__)

router = APIRouter()


def worker_views(api: ApiState) -> list[WorkerView]:
    """Worker processes from their rows in jobs.db; the in-process thread from its own figures; Ray actors
    from their Worker threads and the actors' own figures. Each with its progress clock judged: a worker
    rendering with no progress for far longer than its steps take is `stalled` (echo_os.api.stalls)."""
    from echo_os.api.jobs import WorkerRow

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


@router.get("/health", response_model=Health, tags=["server"],
            responses={503: {"model": Health, "description": "The render worker the server started is gone"}})
async def health(api: Api) -> JSONResponse:
    counts = await run_in_threadpool(api.jobs.counts)
    worker = api.worker_status  # "stopped": started, and no longer alive: queued jobs would wait forever
    health = Health(status="degraded" if worker == "stopped" else "ok", version=__version__, worker=worker,
                    jobs=counts)
    return JSONResponse(health.model_dump(), status_code=503 if worker == "stopped" else 200)

@router.get("/api/workers", response_model=WorkerList, tags=["server"])
async def list_workers(api: Api) -> WorkerList:
    """The render workers: device, model loaded, jobs done, images/min, last error."""
    return WorkerList(items=await run_in_threadpool(worker_views, api))
