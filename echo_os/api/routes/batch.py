"""POST /api/batch: a storyboard (+ bible) or a list of prompts, checked by the story planner, as a job."""

from __future__ import annotations

import shutil
from pathlib import Path

from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from echo_os.api.deps import Api, api_message, field_error
from echo_os.api.idempotency import IdempotencyHeader
from echo_os.api.jobs import Job, new_job_id, now_iso
from echo_os.api.routes.common import (
    answer_earlier,
    batch_summary,
    replay_of,
    submit_responses,
    submitted,
    without_server_paths,
)
from echo_os.api.schemas import BatchBody, BatchSubmitted
from echo_os.api.security import resolve_inside
from echo_os.api.specs import BatchSpec, StorySource
from echo_os.errors import OptionError
from echo_os.settings import Settings
from echo_os.story.batch import REFERENCE_REFUSED

router = APIRouter()


@router.post("/api/batch", status_code=202, response_model=BatchSubmitted, tags=["jobs"],
             responses=submit_responses(BatchSubmitted, 400, 403, 409, 413, 422))
async def submit_batch(body: BatchBody, api: Api, idempotency_key: IdempotencyHeader = None) -> JSONResponse:
    """Queue a story: `storyboard` (story.csv text) with an optional `bible`, or `prompts`."""
    key, replayed = await replay_of(api, "/api/batch", idempotency_key, body)
    if replayed is not None:
        return replayed
    job_id = new_job_id()
    spec = await run_in_threadpool(plan_batch, api.settings, body, job_id)
    job = Job(id=job_id, kind="batch", status="queued", spec=spec, created=now_iso())
    admission = await api.submitter.submit(job, key)
    if admission.outcome != "stored":  # the same key arrived meanwhile: this plan's files go
        await run_in_threadpool(shutil.rmtree, resolve_inside(api.settings.artifacts_dir, ".jobs", job_id), True)
        return await answer_earlier(api, admission)
    return submitted(job.id, BatchSubmitted, **batch_summary(spec, body.project))


# ---- batches --------------------------------------------------------------------------------------------


def _problem_field(label: str) -> str:
    return {"STORY_BIBLE.md": "bible", "prompts.txt": "prompts"}.get(label, "storyboard")


def plan_batch(settings: Settings, body: BatchBody, job_id: str) -> BatchSpec:
    """The story planned as `echo-os batch` plans it (echo_os.story.batch: its texts go to
    artifacts/.jobs/<id>/), as the job's spec, one request per scene; an error is a 422 on the body field."""
    from echo_os.story import StoryError
    from echo_os.story.batch import batch_options
    from echo_os.story.batch import plan_batch as plan_story_batch

    folder = resolve_inside(settings.artifacts_dir, ".jobs", job_id)
    try:
        options = batch_options(settings, model=body.model, engine=body.engine, steps=body.steps, cfg=body.cfg,
                                size=body.size, scheduler=body.scheduler, seed=body.seed, style=body.style,
                                preset=body.preset, engine_given="engine" in body.model_fields_set)
        planned = plan_story_batch(settings, project=body.project, folder=folder, options=options,
                                   storyboard=body.storyboard, bible=body.bible, prompts=body.prompts,
                                   ip_adapter=body.ip_adapter, count=body.count)
    except StoryError as error:
        shutil.rmtree(folder, ignore_errors=True)
        raise RequestValidationError([{"type": "value_error", "loc": ("body", _problem_field(problem.file)),
                                       "msg": _public_problem(problem, settings, folder), "input": None}
                                      for problem in error.problems]) from None
    except OptionError as error:  # named as BatchBody names it ("prompts.N": a prompt line)
        shutil.rmtree(folder, ignore_errors=True)
        head, *rest = error.option.split(".")
        loc = (head if head in BatchBody.model_fields else "storyboard", *(int(p) if p.isdigit() else p for p in rest))
        raise field_error(loc, api_message(without_server_paths(str(error), settings, folder))) from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    story = StorySource(project=body.project, kind=planned.kind, source=str(planned.source),
                        bible=str(planned.bible) if planned.bible else None, options=planned.prepared.options,
                        ip_adapter=planned.ip_adapter, count=body.count)
    notes = [api_message(planned.prepared.note)] if planned.prepared.note else []
    return BatchSpec(items=tuple(planned.requests), title=planned.plan.title,
                     warnings=(*planned.plan.warnings, *notes), story=story, again=body.again)


def _is_reference_key(key: str | None) -> bool:
    return key is not None and key.startswith("characters.") and ".reference" in key


def _public_problem(problem, settings: Settings, folder: Path) -> str:
    """A story problem as a client may see it: no server paths, and the same words for every reference
    image the planner refused, whatever the reason."""
    if _is_reference_key(problem.key):
        return f"{problem.file}, key {problem.key}: {REFERENCE_REFUSED}"
    return without_server_paths(str(problem), settings, folder)


