"""POST /api/render and POST /api/refine: one RenderRequest through the front door, queued as a job."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from echo_os.api.deps import Api, ApiState, option_field_error, prepare_body
from echo_os.api.idempotency import IdempotencyHeader
from echo_os.api.jobs import Job, new_job_id, now_iso
from echo_os.api.routes.common import admit, replay_of, submit_responses, submitted
from echo_os.api.schemas import RefineBody, RenderBody, Submitted
from echo_os.api.specs import RefineSpec, RenderSpec
from echo_os.errors import OptionError
from echo_os.render.kinds import output_fields

router = APIRouter()


# RenderRequest field -> the name /api/render takes it as
RENDER_BODY_NAMES = {"negative_prompt": "negative", "width": "size", "height": "size", "output": "type"}
RENDER_FIELDS = {"negative": "negative_prompt", "type": "output"}  # and back


@router.post("/api/render", status_code=202, response_model=Submitted, tags=["jobs"],
             responses=submit_responses(Submitted, 400, 403, 409, 413, 422))
async def submit_render(body: RenderBody, api: Api, idempotency_key: IdempotencyHeader = None) -> JSONResponse:
    """Queue `echo-os render` with these parameters."""
    key, replayed = await replay_of(api, "/api/render", idempotency_key, body)
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
    job = Job(id=new_job_id(), kind="render", status="queued", spec=RenderSpec(items=(request,), again=body.again),
              created=now_iso())
    if (earlier := await admit(api, job, key)) is not None:  # the same key arrived meanwhile
        return earlier
    return submitted(job.id)


@router.post("/api/refine", status_code=202, response_model=Submitted, tags=["jobs"],
             responses=submit_responses(Submitted, 400, 403, 404, 409, 413, 422))
async def submit_refine(body: RefineBody, api: Api, idempotency_key: IdempotencyHeader = None) -> JSONResponse:
    """Queue `echo-os refine`: image-to-image from an artifact, recorded as its child."""
    key, replayed = await replay_of(api, "/api/refine", idempotency_key, body)
    if replayed is not None:
        return replayed
    request = await run_in_threadpool(refine_body_request, api, body)
    job = Job(id=new_job_id(), kind="render", status="queued", spec=RefineSpec(items=(request,)),
              created=now_iso())
    if (earlier := await admit(api, job, key)) is not None:  # the same key arrived meanwhile
        return earlier
    return submitted(job.id)


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
