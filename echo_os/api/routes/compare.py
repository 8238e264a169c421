"""POST /api/compare: cells over up to three axes and their grid sheet, as `echo-os compare`."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from echo_os.api.deps import Api, field_error, option_field_error
from echo_os.api.idempotency import IdempotencyHeader
from echo_os.api.jobs import Job, new_job_id, now_iso
from echo_os.api.routes.common import admit, replay_of, submit_responses, submitted
from echo_os.api.schemas import CompareBody, CompareSubmitted
from echo_os.api.specs import CompareAxis, CompareSource, CompareSpec
from echo_os.errors import OptionError
from echo_os.settings import Settings

router = APIRouter()


@router.post("/api/compare", status_code=202, response_model=CompareSubmitted, tags=["jobs"],
             responses=submit_responses(CompareSubmitted, 400, 403, 404, 409, 413, 422))
async def submit_compare(body: CompareBody, api: Api, idempotency_key: IdempotencyHeader = None) -> JSONResponse:
    """Queue `echo-os compare`: one image per cell, then the labelled grid sheet (an artifact). As on the
    CLI, cells already rendered in the project (same request) are taken, not rendered again; the job's
    `artifact_ids` are the cells in order, then the sheet (`grid_id`)."""
    key, replayed = await replay_of(api, "/api/compare", idempotency_key, body)
    if replayed is not None:
        return replayed
    spec = await run_in_threadpool(compare_spec, api.settings, body)
    job = Job(id=new_job_id(), kind=spec.row_kind, status="queued", spec=spec, created=now_iso())
    if (earlier := await admit(api, job, key)) is not None:  # the same key arrived meanwhile
        return earlier
    return submitted(job.id, CompareSubmitted, cells=len(spec.items))


def compare_spec(settings: Settings, body: CompareBody) -> CompareSpec:
    """The body's cells, each through the front door (echo_os.iterate.compare.plan_compare, as `echo-os
    compare`), and its grid sheet's axes; a 422 names the body field at fault."""
    from echo_os.iterate.compare import check_distinct, compare_title, plan_compare
    from echo_os.render.requests import random_seed

    lists = {"models": tuple(body.models), "schedulers": tuple(body.schedulers), "cfg": tuple(body.cfg),
             "steps": tuple(body.steps), "seeds": tuple(body.seeds) or (random_seed(),),
             "styles": tuple(body.styles), "engines": tuple(body.engines)}
    try:
        check_distinct(lists)
    except OptionError as error:
        raise field_error(error.option, str(error), list(lists[error.option])) from None
    base = {"prompt": body.prompt, "negative_prompt": body.negative or None, "size": body.size,
            "project": body.project}
    try:
        plan = plan_compare(settings, base, {k: v for k, v in lists.items() if v}, max_cells=body.max_cells,
                            given=body.model_fields_set & {"size"})
    except OptionError as error:
        where = {"max-cells": "max_cells", "negative_prompt": "negative", "width": "size", "height": "size"}
        raise option_field_error(error, where) from None
    title = compare_title(body.prompt, plan)
    source = CompareSource(title=title, axes=tuple(CompareAxis(option=a.option, values=a.values) for a in plan.axes),
                           cells=tuple(cell.values for cell in plan.cells))
    return CompareSpec(items=tuple(cell.request for cell in plan.cells), title=title, compare=source)
