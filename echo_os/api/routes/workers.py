"""GET /health and GET /api/workers: the server and its render workers."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from echo_os import __version__
from echo_os.api.deps import Api, ApiState
from echo_os.api.schemas import Health, WorkerList, WorkerView

router = APIRouter()


def worker_views(api: ApiState) -> list[WorkerView]:
    """The render workers as their host shows them (echo_os.api.hosts.WorkerHost.views), each with its progress
    clock judged: a worker rendering with no progress for far longer than its steps take is `stalled`."""
    return api.worker.views(api.options.stall_after_s) if api.worker is not None else []


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
