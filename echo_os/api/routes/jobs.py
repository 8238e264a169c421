"""/api/jobs: list, view, cancel, and the Server-Sent Events of a job."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from echo_os.api.deps import Api, ApiState
from echo_os.api.events import (
    FINAL_EVENTS,
    JobCancelled,
    JobFailed,
    JobProgressed,
    JobQueued,
    JobStarted,
    JobSucceeded,
    sse_message,
)
from echo_os.api.jobs import Job, JobProgress, JobStatus
from echo_os.api.routes.common import SSE_PING_S, JobId
from echo_os.api.schemas import JobPage, JobView, error_responses
from echo_os.api.stalls import Stall, epoch_from_iso, judge

router = APIRouter()


def job_view(job: Job, live: JobProgressed | None, stall: Stall | None = None) -> JobView:
    progress = JobProgress(images_done=len(job.artifact_ids), images_total=job.images_total)
    animatic = job.spec.animatic_options
    items = job.spec.render_items()
    if live is not None and job.status == "running":
        progress.step, progress.total_steps = live.step, live.total_steps
        progress.frames_done, progress.frames_total = live.frames_done, live.frames_total
    elif job.status == "succeeded" and animatic is not None:  # every frame was encoded
        progress.frames_done = progress.frames_total = animatic.frames
    elif job.status == "succeeded" and items:  # every step of the last call ran (not "step 0 of 0")
        progress.step = progress.total_steps = items[-1].steps
    elif job.terminal:  # cancelled or failed: where it stopped
        progress.step, progress.total_steps = job.step, job.total_steps
    return JobView(id=job.id, kind=job.view_kind, status=job.status, progress=progress, attempts=job.attempts,
                   interruptions=job.interruptions, error=job.error, cancel_requested=job.cancel_requested, created=job.created,
                   started=job.started, finished=job.finished, timings=job.timings,
                   artifact_ids=job.artifact_ids, request=items[0] if job.view_kind in ("render", "clip") else None,
                   title=job.spec.title_text, animatic=animatic, grid_id=job.grid_id, scenes=job.spec.scenes,
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


# -- jobs ----------------------------------------------------------------------------------------------


@router.get("/api/jobs", response_model=JobPage, tags=["jobs"])
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


@router.get("/api/jobs/{job_id}", response_model=JobView, tags=["jobs"], responses=error_responses(404, 422))
async def get_job(job_id: JobId, api: Api) -> JobView:
    job = await find_job(api, job_id)
    view = job_view(job, api.hub.progress(job_id), job_stall(api, job))
    from echo_os.api.engine_notice import engines_of

    view.engines = await run_in_threadpool(engines_of, api, job.artifact_ids)
    return view


@router.post("/api/jobs/{job_id}/cancel", response_model=JobView, tags=["jobs"],
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


@router.get("/api/jobs/{job_id}/events", tags=["jobs"], response_class=StreamingResponse,
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


async def _event_stream(api: ApiState, job: Job, first: list, queue: asyncio.Queue) -> AsyncIterator[str]:
    try:
        for event in first:
            yield sse_message(event)
        if job.terminal:
            return
        state = (job.status, job.attempts)
        # Images the snapshot showed (a running job's started event lists them); a queued job's snapshot
        # shows none, so its images saved before are sent when it runs again (Worker._run_claimed).
        seen = set(job.artifact_ids) if job.status == "running" else set()
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
