"""The one interface of the render workers' hosts, whichever runs them: the in-process thread
(echo_os.api.worker.Worker, `serve --workers 0`), worker processes (echo_os.api.processes.WorkerPool,
`--workers N`) and Ray actors (echo_os.api.ray_workers.RayWorkers, `--ray`). The server starts and stops
its host, wakes it when a job is queued, passes cancels on, and shows its workers (GET /api/workers).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Protocol

from echo_os.api.jobs import WorkerRow
from echo_os.api.schemas import WorkerView
from echo_os.api.stalls import Stall


class WorkerHost(Protocol):
    def start(self) -> None:
        """Start rendering queued jobs."""
        ...

    def stop(self, timeout: float = 30.0) -> None:
        """Stop at the next step; jobs in flight go back to the queue without losing an attempt."""
        ...

    def wake(self) -> None:
        """A job was queued: look now instead of at the next poll."""
        ...

    def cancel(self, job_id: str) -> None:
        """Stop `job_id` at its next step if it is rendering (the store already has cancel_requested)."""
        ...

    @property
    def alive(self) -> bool:
        """False once every worker has stopped: queued jobs would wait forever (GET /health says so)."""
        ...

    def views(self, stall_after_s: float) -> list[WorkerView]:
        """The workers as GET /api/workers shows them, each with its progress clock judged against
        `stall_after_s` (echo_os.api.stalls): slow or stuck."""
        ...


def images_per_minute(row: WorkerRow, now: float | None = None) -> float | None:
    """Images saved per minute of wall time since the worker's first job (None before it has one)."""
    if row.first_job is None:
        return None
    started = datetime.fromisoformat(row.first_job).timestamp()
    minutes = max((now if now is not None else datetime.now(timezone.utc).timestamp()) - started, 1.0) / 60
    return round(row.images_done / minutes, 2)


def worker_view(row: WorkerRow, stall: Stall, *, heartbeat: str | None = None, calls_done: int | None = None,
                models: list[str] | None = None) -> WorkerView:
    """A worker's row and its judged progress clock as GET /api/workers shows them."""
    return WorkerView(slot=row.slot, pid=row.pid, device=row.device, model=row.model, jobs_done=row.jobs_done,
                      images_done=row.images_done, images_per_min=images_per_minute(row),
                      last_error=row.last_error, restarts=row.restarts, state=row.state,
                      heartbeat=heartbeat if heartbeat is not None else row.heartbeat, calls_done=calls_done,
                      models=models, last_progress=stall.last_progress, step_s=stall.step_s, stalled=stall.stalled,
                      warning=stall.warning)
