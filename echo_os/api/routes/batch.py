"""POST /api/batch: a storyboard (+ bible) or a list of prompts, checked by the story planner, as a job."""

from __future__ import annotations

import shutil
from pathlib import Path

from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from echo_os.api.deps import Api, api_message, check_model, field_error, option_field_error
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
from echo_os.errors import EchoError, OptionError
from echo_os.settings import Settings

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
    """Check the story with the planner (which reads files: the texts go to artifacts/.jobs/<id>/),
    then return the job's requests, one per scene."""
    from echo_os.story import PlanOptions, StoryError, plan_prompt_list, plan_story

    if (body.storyboard is None) == (body.prompts is None):
        raise field_error("storyboard", "send either `storyboard` (story.csv text) or `prompts`, not both")
    if body.bible is not None and body.storyboard is None:
        raise field_error("bible", "a bible goes with a storyboard; a prompt list has none")
    if body.prompts is not None:
        for index, prompt in enumerate(body.prompts):
            if not prompt.strip() or "\n" in prompt or "\r" in prompt or "\x00" in prompt:
                raise field_error(("prompts", index), "each prompt is one non-empty line of text", prompt)
    folder = resolve_inside(settings.artifacts_dir, ".jobs", job_id)
    folder.mkdir(parents=True, exist_ok=True)
    from echo_os.models.defaults import all_render_defaults
    from echo_os.render.styles import style_table

    # The body's fields are the command line's options: they beat the rows and the bible, which beat the
    # model entry's render defaults (echo_os.story.plan).
    options = PlanOptions(model=body.model, engine=body.engine, steps=body.steps, cfg=body.cfg, size=body.size,
                          scheduler=body.scheduler, seed=body.seed, styles=style_table(settings),
                          model_defaults=all_render_defaults(settings))
    notes: list[str] = []
    try:
        bible = None
        if body.prompts is not None:
            source = folder / "prompts.txt"
            source.write_text("\n".join(body.prompts) + "\n", encoding="utf-8")
        else:
            source = folder / "story.csv"
            source.write_text(body.storyboard or "", encoding="utf-8")  # set: checked above
            if body.bible is not None:
                bible = folder / "STORY_BIBLE.md"
                bible.write_text(body.bible, encoding="utf-8")

        from echo_os.story.tokens import workspace_tokenizer_loader

        tokens = workspace_tokenizer_loader(settings)  # the CLI's counter: the same counts and warnings

        def make_plan(options: PlanOptions):
            if body.prompts is not None:
                return plan_prompt_list(body.project, source, options=options, tokenizer_loader=tokens)
            return plan_story(body.project, source, bible=bible, options=options, workspace=settings.home,
                              tokenizer_loader=tokens)

        plan = make_plan(options)
        _check_plan_paths(settings, plan)
        for model, engine in dict.fromkeys((scene.request.model, scene.request.engine) for scene in plan.scenes):
            check_model(settings, model, engine, "model" if body.model else "bible")
        if plan.scenes:  # the engine and the CPU size rule through the front door's tail, as `echo-os batch`
            prepared = _prepare_plan(settings, plan, size_given=body.size is not None or body.steps is not None)
            if prepared.size is not None:
                options = options.model_copy(update={"size": prepared.size})
                plan = make_plan(options)
                notes.append(api_message(prepared.note))
            _check_plan(settings, plan, prepared.engine)
        requests = _story_requests(settings, plan, body)
    except StoryError as error:
        shutil.rmtree(folder, ignore_errors=True)
        raise RequestValidationError([{"type": "value_error", "loc": ("body", _problem_field(problem.file)),
                                       "msg": _public_problem(problem, settings, folder), "input": None}
                                      for problem in error.problems]) from None
    except OptionError as error:  # an override the planner refused, named as BatchBody names it
        shutil.rmtree(folder, ignore_errors=True)
        raise field_error(error.option if error.option in BatchBody.model_fields else "storyboard",
                          without_server_paths(str(error), settings, folder)) from None
    except RequestValidationError as error:
        shutil.rmtree(folder, ignore_errors=True)
        raise RequestValidationError([{**item, "msg": without_server_paths(str(item.get("msg", "")), settings,
                                                                            folder)}
                                      for item in error.errors()]) from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    story = StorySource(project=body.project, kind="prompts" if body.prompts is not None else "storyboard",
                        source=str(source), bible=str(bible) if body.prompts is None and bible else None,
                        options=options, ip_adapter=_adapter_for(plan, body))
    return BatchSpec(items=tuple(requests), title=plan.title, warnings=(*plan.warnings, *notes), story=story,
                   again=body.again)


def _prepare_plan(settings: Settings, plan, *, size_given: bool):
    """echo_os.render.prepare.prepare_plan; an engine that cannot render the story is a 422 on `engine`."""
    from echo_os.render.prepare import prepare_plan

    try:
        return prepare_plan(settings, plan.requests, size_given=size_given)
    except OptionError as error:
        raise option_field_error(error, {"width": "size", "height": "size"}) from None


def _check_plan(settings: Settings, plan, engine) -> None:
    from echo_os.render.prepare import check_plan_requests

    try:
        check_plan_requests(settings, plan.requests, engine)
    except OptionError as error:
        raise option_field_error(error, {"width": "size", "height": "size"}) from None


# One answer whether the file exists outside the workspace, exists inside it unreadable, or does not
# exist: a client may not learn which files the server's machine has.
REFERENCE_REFUSED = ("reference image is missing, unreadable or outside the workspace; use an image file "
                     "inside the workspace folder")


def _is_reference_key(key: str | None) -> bool:
    return key is not None and key.startswith("characters.") and ".reference" in key


def _public_problem(problem, settings: Settings, folder: Path) -> str:
    """A story problem as a client may see it: no server paths, and the same words for every reference
    image the planner refused, whatever the reason."""
    if _is_reference_key(problem.key):
        return f"{problem.file}, key {problem.key}: {REFERENCE_REFUSED}"
    return without_server_paths(str(problem), settings, folder)


def _adapter_for(plan, body: BatchBody) -> str | None:
    """The body's `ip_adapter`, else the bible's, else the default (as `echo-os batch`); `none`: no references."""
    from echo_os.story.render import DEFAULT_IP_ADAPTER

    chosen = body.ip_adapter or plan.ip_adapter or DEFAULT_IP_ADAPTER
    return None if chosen == "none" else chosen


def _story_requests(settings: Settings, plan, body: BatchBody) -> list:
    """The scenes' requests as `echo-os batch` renders them (story.render.scene_requests); an adapter this
    machine lacks is a 422 on `ip_adapter`, a LoRA it cannot find one on `bible`."""
    from echo_os.engines.ip_adapter import AdapterMissing
    from echo_os.story.render import scene_requests

    try:
        return scene_requests(settings, plan, _adapter_for(plan, body))
    except AdapterMissing as error:
        raise field_error("ip_adapter", str(error)) from None
    except EchoError as error:
        raise field_error("bible", str(error)) from None


def _check_plan_paths(settings: Settings, plan) -> None:
    """A bible sent over HTTP may only point at files inside the workspace."""
    from echo_os.engines.lora import lora_path
    from echo_os.models import load_registry

    home = settings.home.resolve()
    registry = load_registry(settings)
    for scene in plan.scenes:
        for member in scene.cast:
            for index, reference in enumerate(member.references):
                if not Path(reference).resolve().is_relative_to(home):
                    raise field_error("bible", f"STORY_BIBLE.md, key characters.{member.id}.reference[{index}]: "
                                               f"{REFERENCE_REFUSED}")
            lora = member.lora.name if member.lora else None
            if lora is None or lora in registry:
                continue
            # The same rule resolve_lora reads the file by.
            if not lora_path(lora, plan.bible_path.parent).resolve().is_relative_to(home):
                raise field_error("bible", f"character {member.id}: lora {lora} is outside the workspace")
