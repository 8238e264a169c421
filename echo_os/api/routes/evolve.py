"""POST /api/evolve and GET /api/evolve/{run_id}: the improvement loop (echo_os.reflect.evolve)."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, HTTPException
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from echo_os.api.deps import Api, field_error
from echo_os.api.idempotency import IdempotencyHeader
from echo_os.api.jobs import Job, new_job_id, now_iso
from echo_os.api.routes.common import admit, evolve_summary, replay_of, submit_responses, submitted
from echo_os.api.schemas import EvolveBody, EvolveSubmitted, error_responses
from echo_os.api.specs import EvolveJobSpec, EvolveSpec
from echo_os.errors import NotFoundError, UsageError
from echo_os.settings import Settings

router = APIRouter()


@router.post("/api/evolve", status_code=202, response_model=EvolveSubmitted, tags=["jobs"],
             responses=submit_responses(EvolveSubmitted, 400, 403, 404, 409, 413, 422))
async def submit_evolve(body: EvolveBody, api: Api, idempotency_key: IdempotencyHeader = None) -> JSONResponse:
    """Queue `echo-os evolve`: rounds of variations of the target's best image, scored, the best kept.
    Its candidates are the job's images as each round ends; the record is at record_url."""
    key, replayed = await replay_of(api, "/api/evolve", idempotency_key, body)
    if replayed is not None:
        return replayed
    spec = await run_in_threadpool(plan_evolve, api.settings, body)
    job = Job(id=new_job_id(), kind="evolve", status="queued", spec=spec, created=now_iso())
    if (earlier := await admit(api, job, key)) is not None:
        return earlier
    return submitted(job.id, EvolveSubmitted, **evolve_summary(spec))


@router.get("/api/evolve/{run_id}", tags=["jobs"], responses=error_responses(403, 404, 422))
async def evolve_record(run_id: Annotated[str, PathParam(pattern=r"^[0-9a-f]{16}$")], api: Api) -> JSONResponse:
    """An evolve run's record: rounds, candidates, their scores, the gain per round and overall."""

    from echo_os.reflect.evolve import run_path

    path = run_path(api.settings, run_id)
    if not path.is_file():
        raise HTTPException(status_code=404, detail=f"no evolve run {run_id} (it starts when its job runs)")
    return JSONResponse(json.loads(await run_in_threadpool(path.read_text, "utf-8")))


# ---- evolve -------------------------------------------------------------------------------------------


def plan_evolve(settings: Settings, body: EvolveBody) -> EvolveJobSpec:
    """The job spec of an /api/evolve body, checked now: a 422 names the field (404: no such target)."""
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
    return EvolveJobSpec(evolve=EvolveSpec(start=start.id, run_id=run_id_of(start.id, options), rounds=body.rounds,
                                     per_round=body.per_round, objective=dict(objective.weights), scorer=body.scorer,
                                     min_gain=body.min_gain, strengths=tuple(body.strengths), seed=body.seed))
