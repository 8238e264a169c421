"""POST /api/animatic and POST /api/animate: a rendered story as an MP4, a clip from an image."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from echo_os.api.deps import Api, ApiState, check_model, field_error
from echo_os.api.idempotency import IdempotencyHeader
from echo_os.api.jobs import Job, new_job_id, now_iso
from echo_os.api.routes.common import (
    admit,
    animatic_summary,
    replay_of,
    submit_responses,
    submitted,
    without_server_paths,
)
from echo_os.api.schemas import AnimateBody, AnimaticBody, AnimaticSubmitted, Submitted
from echo_os.api.specs import AnimaticJobSpec, AnimaticSpec, ClipSpec
from echo_os.errors import EchoError, OptionError, UsageError
from echo_os.render.requests import RenderRequest
from echo_os.settings import Settings

router = APIRouter()


@router.post("/api/animatic", status_code=202, response_model=AnimaticSubmitted, tags=["jobs"],
             responses=submit_responses(AnimaticSubmitted, 400, 403, 409, 413, 422))
async def submit_animatic(body: AnimaticBody, api: Api,
                          idempotency_key: IdempotencyHeader = None) -> JSONResponse:
    """Queue `echo-os animatic`: the project's newest rendered story as an MP4 (a video artifact).
    The story is checked now (it has scenes, their images, durations and the fade fit): a 422 names
    the field."""
    key, replayed = await replay_of(api, "/api/animatic", idempotency_key, body)
    if replayed is not None:
        return replayed
    spec = AnimaticJobSpec(animatic=await run_in_threadpool(animatic_spec, api.settings, body))
    job = Job(id=new_job_id(), kind="animatic", status="queued", spec=spec, created=now_iso())
    if (earlier := await admit(api, job, key)) is not None:  # the same key arrived meanwhile
        return earlier
    return submitted(job.id, AnimaticSubmitted, **animatic_summary(spec))


@router.post("/api/animate", status_code=202, response_model=Submitted, tags=["jobs"],
             responses=submit_responses(Submitted, 400, 403, 404, 409, 413, 422))
async def submit_animate(body: AnimateBody, api: Api, idempotency_key: IdempotencyHeader = None) -> JSONResponse:
    """Queue `echo-os animate`: a clip from an image artifact (a video artifact whose parent is the image),
    rendered by a video engine through the renderer: progress events, cancel and exactly-once as a render."""
    key, replayed = await replay_of(api, "/api/animate", idempotency_key, body)
    if replayed is not None:
        return replayed
    request = await run_in_threadpool(clip_body_request, api, body)
    job = Job(id=new_job_id(), kind="clip", status="queued", spec=ClipSpec(items=(request,)), created=now_iso())
    if (earlier := await admit(api, job, key)) is not None:  # the same key arrived meanwhile
        return earlier
    return submitted(job.id)


def clip_body_request(api: ApiState, body: AnimateBody) -> RenderRequest:
    """The clip's RenderRequest (echo_os.motion.plans.plan_clip: the checks `echo-os animate` makes before
    rendering); a 422 names the body field, a 404 an unknown artifact."""
    from echo_os.artifacts.store import Artifact
    from echo_os.motion.plans import plan_clip
    from echo_os.render.requests import ClipRequest, parse_size

    row = api.catalog.resolve(body.artifact_id)
    parent = Artifact.from_row(api.settings.artifacts_dir, row)
    width = height = None
    if body.size is not None:
        try:
            width, height = parse_size(body.size)
        except UsageError as error:
            raise field_error("size", str(error).replace("--size", "size"), body.size) from None
    check_model(api.settings, body.model, "auto")
    clip = ClipRequest(seed=parent.meta.seed if body.seed is None else body.seed, model=body.model, frames=body.frames,
                       fps=body.fps, motion_bucket=body.motion_bucket, noise_aug=body.noise_aug, steps=body.steps,
                       width=width, height=height, decode_chunk_size=body.decode_chunk_size,
                       cpu_offload=body.cpu_offload, device=body.device)
    try:
        return plan_clip(api.settings, parent, clip)
    except OptionError as error:
        if error.option == "artifact":
            raise field_error("artifact_id", str(error), body.artifact_id) from None
        if error.option == "model":
            raise field_error("model", str(error), body.model) from None
        raise field_error(error.option.replace("-", "_"), str(error).replace("--", "")) from None


# ---- animatics ----------------------------------------------------------------------------------------


def animatic_spec(settings: Settings, body: AnimaticBody) -> AnimaticSpec:
    """The animatic job's spec, after the checks `echo-os animatic` makes before encoding
    (echo_os.motion.plans.plan_animatic; a 422 naming the field: `size`, `fade`, or `project` for a project
    without a rendered story, a scene image gone, a bad duration in its story.csv)."""
    import re

    from echo_os.motion.animatic import AnimaticOptions
    from echo_os.motion.plans import plan_animatic
    from echo_os.render.requests import parse_size

    size = None
    if body.size is not None:
        try:
            size = parse_size(body.size)
        except UsageError as error:
            raise field_error("size", str(error).replace("--size", "size"), body.size) from None
    options = AnimaticOptions(fps=body.fps, size=size, fade=body.fade, captions=body.captions, clips=body.clips)
    try:
        plan = plan_animatic(settings, body.project, options)
    except EchoError as error:
        option = getattr(error, "option", None)
        message = re.sub(r"--(fps|size|fade|clips|captions)\b", r"\1",
                         without_server_paths(str(error), settings, settings.artifacts_dir / ".jobs"))
        raise field_error(option if option in AnimaticBody.model_fields else "project", message,
                          body.size if option == "size" else None) from None
    return AnimaticSpec(project=body.project, fps=body.fps, size=size, fade=body.fade, captions=body.captions,
                        clips=body.clips, scenes=plan.scenes, frames=plan.frames)
