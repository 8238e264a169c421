"""What the routers share: path parameters, the 202 of a queued job, the Idempotency-Key replay."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import HTTPException
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from echo_os.api.deps import ApiState
from echo_os.api.idempotency import REPLAYED_HEADER, client_key, conflict_message, known
from echo_os.api.jobs import JOB_ID_PATTERN, Admission, IdempotencyKey, Job
from echo_os.api.schemas import (
    AnimaticSubmitted,
    BatchSubmitted,
    CompareSubmitted,
    EvolveSubmitted,
    Submitted,
    error_responses,
)
from echo_os.api.specs import AnimaticJobSpec, BatchSpec, EvolveJobSpec
from echo_os.settings import Settings

ARTIFACT_ID_PATTERN = r"^[0-9a-fA-F]{12,64}$"
SSE_PING_S = 15.0

JobId = Annotated[str, PathParam(pattern=JOB_ID_PATTERN, description="32 hex characters")]
ArtifactId = Annotated[str, PathParam(pattern=ARTIFACT_ID_PATTERN,
                                      description="An artifact id (sha256 hex) or a unique prefix of 12+")]


def submitted(job_id: str, model: type[Submitted] = Submitted, **extra: Any) -> JSONResponse:
    body = model(job_id=job_id, status_url=f"/api/jobs/{job_id}", events_url=f"/api/jobs/{job_id}/events",
                 **extra)
    return JSONResponse(body.model_dump(mode="json"), status_code=202, headers={"Location": body.status_url})


def batch_summary(spec: BatchSpec, project: str) -> dict[str, Any]:
    return dict(title=spec.title or project, scenes=len(spec.items), images=spec.images_total,
                warnings=list(spec.warnings))


def animatic_summary(spec: AnimaticJobSpec) -> dict[str, Any]:
    animatic = spec.animatic
    return dict(project=animatic.project, scenes=animatic.scenes, frames=animatic.frames, fps=animatic.fps)


def evolve_summary(spec: EvolveJobSpec) -> dict[str, Any]:
    loop = spec.evolve
    return dict(run_id=loop.run_id, start=loop.start, record_url=f"/api/evolve/{loop.run_id}")


FirstAnswer = tuple[type[Submitted], dict[str, Any]]
# What the 202 of each kind of job says besides its urls, by spec kind: a replay answers the same.
FIRST_ANSWERS: dict[str, Callable[[Any], FirstAnswer]] = {
    "render": lambda spec: (Submitted, {}),
    "refine": lambda spec: (Submitted, {}),
    "clip": lambda spec: (Submitted, {}),
    "batch": lambda spec: (BatchSubmitted, batch_summary(spec, spec.items[0].project)),
    "compare": lambda spec: (CompareSubmitted, {"cells": len(spec.items)}),
    "animatic": lambda spec: (AnimaticSubmitted, animatic_summary(spec)),
    "evolve": lambda spec: (EvolveSubmitted, evolve_summary(spec)),
}


async def replay_of(api: ApiState, route: str, idempotency_key: str | None,
                   body) -> tuple[IdempotencyKey | None, JSONResponse | None]:
    """(the request's key, the answer when the key already made a job (replayed or conflicting)), looked
    up before any work is done; the answer is None for a new request."""
    key = client_key(route, idempotency_key, body)
    if key is None:
        return None, None
    earlier = known(await run_in_threadpool(api.jobs.find_key, key.key), key)
    return key, (None if earlier is None else await answer_earlier(api, earlier))


def submit_responses(model: type, *codes: int) -> dict:
    """The OpenAPI responses of a route that queues a job: 200 for a replayed Idempotency-Key, and errors."""
    return {200: {"model": model, "description": "The job an earlier request with this Idempotency-Key made"},
            **error_responses(*codes)}


async def admit(api: ApiState, job: Job, key) -> JSONResponse | None:
    """Store `job` under `key`; None when stored, else the answer for the job the same key made meanwhile."""
    admission = await api.submitter.submit(job, key)
    return None if admission.outcome == "stored" else await answer_earlier(api, admission)


async def answer_earlier(api: ApiState, admission: Admission) -> JSONResponse:
    """409 for a key used with another body; else 200 with the key's job, as its first answer said it."""
    if admission.outcome == "conflict":
        return JSONResponse({"detail": conflict_message(admission.job_id)}, status_code=409)
    job = await run_in_threadpool(api.jobs.get, admission.job_id)
    if job is None:  # cannot happen: a key is stored with its job
        raise HTTPException(status_code=404, detail=f"no job {admission.job_id}")
    model, extra = FIRST_ANSWERS[job.spec.kind](job.spec)
    response = submitted(job.id, model, status=job.status, **extra)
    response.status_code = 200
    response.headers[REPLAYED_HEADER] = "true"
    return response


def without_server_paths(text: str, settings: Settings, folder: Path) -> str:
    """Server folders in a message, as the client knows them: the job's own folder as nothing (its files
    are the texts the client sent), the workspace as `<workspace>`."""
    for path, shown in ((folder, ""), (settings.artifacts_dir.resolve(), "<workspace>/artifacts"),
                        (settings.home.resolve(), "<workspace>")):
        text = text.replace(f"{path}{os.sep}", f"{shown}/" if shown else "").replace(str(path), shown or ".")
    return text
