"""POST /v1/images/generations: the OpenAI Images API, answered by this machine.

The official `openai` client works unchanged with `base_url="http://127.0.0.1:8000/v1"`. The request is
queued like any render job (so it is durable, batched with compatible jobs, and visible in /api/jobs);
the response waits for it, as OpenAI's does.

Fields: prompt, model, n, size, response_format (b64_json, the default, or url), output_format
(png, jpeg, webp), output_compression, style; and ours: seed, negative_prompt, steps, cfg, scheduler,
project, engine. `style` follows /api/render's rule (echo_os.render.styles): a named style (styles.toml or a
built-in, any case), else free text appended to the prompt; a one-word value naming no style is a 422 on
`style`. OpenAI's dall-e-3 values `vivid` and `natural` are built-in styles, so a client that sends them
gets that look. Other OpenAI fields (quality, background, moderation, user) are accepted and ignored.
Model names: a name from models.toml is used as is; OpenAI's names (dall-e-*, gpt-image-*,
chatgpt-image-*) and no model mean the server's default model (`serve --model`).
`size: "auto"` is 1024x1024. The artifact ids are in the `X-Echo-Artifact-Ids` response header
(comma-separated) and the job id in `X-Echo-Job-Id`.
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from echo_os.api.deps import Api, ApiState, artifact_image_path, convert_image, prepare_body
from echo_os.api.idempotency import REPLAYED_HEADER, IdempotencyHeader, client_key, conflict_message, derived_key, known
from echo_os.api.jobs import Admission, IdempotencyKey, Job, new_job_id, now_iso
from echo_os.api.schemas import EngineName, error_responses
from echo_os.api.specs import RenderSpec
from echo_os.errors import DISK_FULL_MESSAGE, DISK_IO_MESSAGE
from echo_os.render.requests import MAX_COUNT, MAX_PROMPT_CHARS, MAX_SEED, MAX_STEPS, RenderRequest, Scheduler

router = APIRouter(tags=["openai"])

OPENAI_MODEL_PREFIXES = ("dall-e", "gpt-image", "chatgpt-image")
# The openai client retries 409 and 5xx answers unless told not to; a job that failed (after the worker's
# own retries) or was cancelled would answer a retry the same.
NO_RETRY = {"x-should-retry": "false"}
DISCONNECT_POLL_S = 0.25  # how often a waiting request looks whether its client is still there
# RenderRequest field -> the name this route takes it as
OPENAI_NAMES = {"count": "n", "width": "size", "height": "size"}


class ImageGenerationBody(BaseModel):
    """OpenAI's `images.generate` parameters, plus echo-os's own (seed, negative_prompt, steps, cfg)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    model: str | None = Field(default=None, max_length=200)
    n: int | None = Field(default=1, ge=1, le=MAX_COUNT)
    size: str | None = Field(default="auto", pattern=r"^(auto|\s*\d{1,5}\s*[xX×]\s*\d{1,5}\s*)$")
    response_format: Literal["b64_json", "url"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    output_compression: int | None = Field(default=None, ge=0, le=100)
    stream: bool | None = None
    style: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS,
                              description="A named style (GET /api/styles; OpenAI's vivid and natural are "
                                          "built-ins) or style words appended to the prompt, as in /api/render.")
    # echo-os extensions (send with the client's extra_body=)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    negative_prompt: str = Field(default="", max_length=MAX_PROMPT_CHARS)
    steps: int | None = Field(default=None, ge=1, le=MAX_STEPS)
    cfg: float | None = Field(default=None, ge=0.0, le=100.0, allow_inf_nan=False)
    scheduler: Scheduler | None = None
    project: str = Field(default="default", min_length=1, max_length=200)
    engine: EngineName = "auto"
    preset: str | None = Field(default=None, min_length=1, max_length=200,
                               description="A render preset (pipelines/presets), as in /api/render.")


class ImageData(BaseModel):
    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    output_format: Literal["png", "jpeg", "webp"] = "png"
    size: str


def openai_error(status: int, message: str, kind: str, headers: dict[str, str] | None = None,
                 param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None},
                         "detail": message}, status_code=status, headers=headers)


def model_for(name: str | None, default: str) -> str:
    if not name or name.startswith(OPENAI_MODEL_PREFIXES):
        return default
    return name


@router.post("/v1/images/generations", response_model=ImagesResponse,
             responses={**error_responses(400, 403, 409, 413, 422), 500: {"description": "The render failed"},
                        503: {"description": "The server is stopping"}})
async def create_image(body: ImageGenerationBody, request: Request, api: Api,
                       idempotency_key: IdempotencyHeader = None) -> JSONResponse:
    """Render `n` images and answer when they are saved (OpenAI's images.generate). A retry of the official
    client (same body, `x-stainless-retry-count` >= 1) waits on the first try's job instead of making one."""
    if body.stream:
        return openai_error(422, "stream: streaming is not supported here; follow GET /api/jobs/{id}/events "
                                 "of a POST /api/render job instead", "invalid_request_error", param="stream")
    route = "/v1/images/generations"
    key = client_key(route, idempotency_key, body) or derived_key(request, route, body)
    earlier = known(await run_in_threadpool(api.jobs.find_key, key.key), key)
    if earlier is not None and earlier.outcome == "conflict":
        return openai_error(409, conflict_message(earlier.job_id), "invalid_request_error", NO_RETRY)
    render_request: RenderRequest | None = None
    if earlier is None:
        size = (body.size or "auto").strip()
        values = dict(prompt=body.prompt, negative_prompt=body.negative_prompt or None,
                      model=model_for(body.model, api.options.default_model), engine=body.engine,
                      count=body.n or 1, project=body.project, style=body.style,
                      size=None if size == "auto" else size)
        for name in ("seed", "steps", "cfg", "scheduler"):
            if getattr(body, name) is not None:
                values[name] = getattr(body, name)
        # What the client left out (or sent as null, or size "auto") takes the preset's and the model
        # entry's values, then the engine's default size (echo_os.render.prepare).
        explicit: set[str] = {name for name in ("seed", "steps", "cfg", "scheduler", "engine")
                              if getattr(body, name) is not None and name in body.model_fields_set}
        if size != "auto":
            explicit.add("size")
        if body.model is not None and values["model"] == body.model:
            explicit.add("model")
        prepared = await run_in_threadpool(prepare_body, api.settings, values, explicit, names=OPENAI_NAMES,
                                           preset=body.preset)
        render_request = prepared.request

    job_id, ended, disconnected = await _wait_for_job(api, request, key, render_request, earlier)
    if disconnected:
        return JSONResponse({"detail": "the client went away"}, status_code=499)
    if ended is None:
        return openai_error(503, "the server is stopping; the job stays queued and runs after a restart",
                            "server_error")
    if ended.outcome == "conflict":
        return openai_error(409, conflict_message(ended.job_id), "invalid_request_error", NO_RETRY)
    job = await run_in_threadpool(api.jobs.get, job_id)
    if job is None:  # cannot happen: a job is never deleted
        return openai_error(500, f"job {job_id} is gone", "server_error")
    headers = {"X-Echo-Job-Id": job_id}
    if ended.outcome == "replayed":  # the job an earlier request with this key (or a retry's) made
        headers[REPLAYED_HEADER] = "true"
    if job.status == "failed" and job.error in (DISK_FULL_MESSAGE, DISK_IO_MESSAGE):
        return openai_error(507, job.error, "server_error", {**headers, **NO_RETRY})
    if job.status == "failed":  # already retried by the worker; another try would answer the same
        return openai_error(500, job.error or "the render failed", "server_error", {**headers, **NO_RETRY})
    if job.status == "cancelled":
        return openai_error(409, f"job {job_id} was cancelled", "invalid_request_error", {**headers, **NO_RETRY})
    headers["X-Echo-Artifact-Ids"] = ",".join(job.artifact_ids)
    from echo_os.api.engine_notice import engines_of

    # `draft` here means storyboard cards, not renders (a machine without the model's weights)
    headers["X-Echo-Engine"] = ",".join(await run_in_threadpool(engines_of, api, job.artifact_ids))
    output_format = body.output_format or "png"
    data = []
    for artifact_id in job.artifact_ids:
        if body.response_format == "url":
            suffix = "" if output_format == "png" else f"?format={output_format}"
            data.append(ImageData(url=f"{str(request.base_url).rstrip('/')}/api/artifacts/{artifact_id}/image{suffix}"))
        else:
            png = await run_in_threadpool(_read_image, api, artifact_id)
            encoded = await run_in_threadpool(convert_image, png, output_format, body.output_compression)
            data.append(ImageData(b64_json=base64.b64encode(encoded).decode("ascii")))
    response = ImagesResponse(created=int(time.time()), data=data, output_format=output_format,
                              size=job.spec.render_items()[0].size)
    return JSONResponse(response.model_dump(mode="json", exclude_none=True), headers=headers)


async def _wait_for_job(api: ApiState, request: Request, key: IdempotencyKey, render_request: RenderRequest | None,
                        earlier: Admission | None) -> tuple[str, Admission | None, bool]:
    """Submit the job (or take the key's earlier one) and wait until it ends: (job id, the admission or
    None when the server stops first, whether the client disconnected while waiting)."""
    job: Job | None = None
    if earlier is None:
        if render_request is None:
            raise ValueError("a new job needs its request")
        job = Job(id=new_job_id(), kind="render", status="queued", spec=RenderSpec(items=(render_request,)),
                  created=now_iso())
        job_id = job.id
    else:
        job_id = earlier.job_id
    queue = api.hub.subscribe(job_id)  # before submitting or reading, so no event is missed
    waiting = api.waiting
    attached: str | None = None
    disconnected = False
    admission: Admission | None
    try:
        if job is not None:
            admission = await api.submitter.submit(job, key)
            if admission.outcome != "stored":  # the same key arrived meanwhile: wait on its job instead
                if admission.outcome == "conflict":
                    return job_id, admission, False
                api.hub.unsubscribe(job_id, queue)
                job_id = admission.job_id
                queue = api.hub.subscribe(job_id)
        else:
            admission = earlier
        if waiting is not None:
            waiting.attach(job_id)
            attached = job_id
        current = await run_in_threadpool(api.jobs.get, job_id)
        if current is not None and current.terminal:
            return job_id, admission, False
        getter = asyncio.ensure_future(queue.get())
        try:
            while True:
                done, _ = await asyncio.wait({getter}, timeout=DISCONNECT_POLL_S)
                if not done:
                    if await request.is_disconnected():
                        disconnected = True
                        return job_id, admission, True
                    continue
                event = getter.result()
                if event is None:
                    return job_id, None, False
                if event.event in ("succeeded", "failed", "cancelled"):
                    return job_id, admission, False
                getter = asyncio.ensure_future(queue.get())
        finally:
            getter.cancel()
    finally:
        api.hub.unsubscribe(job_id, queue)
        if waiting is not None and attached is not None:
            waiting.detach(attached, disconnected=disconnected)


def _read_image(api: ApiState, artifact_id: str) -> bytes:
    return artifact_image_path(api, artifact_id).read_bytes()
