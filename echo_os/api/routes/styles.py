"""GET and POST /api/styles: the named styles of styles.toml."""

from __future__ import annotations

import json
import threading

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from echo_os.api.deps import Api, ApiState, field_error
from echo_os.api.idempotency import IDEMPOTENCY_HEADER, REPLAYED_HEADER, IdempotencyHeader, client_key
from echo_os.api.jobs import IdempotencyKey
from echo_os.api.schemas import StyleBody, StyleView, error_responses
from echo_os.errors import OptionError
from echo_os.settings import Settings

router = APIRouter()


# -- styles --------------------------------------------------------------------------------------


@router.get("/api/styles", response_model=list[StyleView], tags=["styles"])
async def list_styles(api: Api) -> list[StyleView]:
    from echo_os.render.styles import all_styles

    found = await run_in_threadpool(all_styles, api.settings)
    return [StyleView.model_validate(style.as_dict()) for style in sorted(found.values(), key=lambda s: s.name.casefold())]


@router.post("/api/styles", status_code=201, response_model=StyleView, tags=["styles"],
             responses={200: {"model": StyleView, "description": "The answer an earlier request with this "
                                                                 "Idempotency-Key had"},
                        **error_responses(400, 403, 409, 413, 422)})
async def add_style(body: StyleBody, api: Api, idempotency_key: IdempotencyHeader = None) -> JSONResponse:
    """Add (or with `replace`, overwrite) a named style. With an Idempotency-Key, a repeat of the same
    body answers as the first time (200, Idempotent-Replayed); another body under the key is a 409."""
    key = client_key("/api/styles", idempotency_key, body)
    status, answer, replayed = await run_in_threadpool(save_style_once, api, body, key)
    return JSONResponse(answer, status_code=status, headers={REPLAYED_HEADER: "true"} if replayed else None)


@router.api_route("/api/styles", methods=["OPTIONS", "PUT", "PATCH", "DELETE"], include_in_schema=False)
async def styles_other_methods() -> JSONResponse:
    # Two routes share this path; Starlette's own 405 would name only the first one's method.
    return JSONResponse({"detail": "Method Not Allowed"}, status_code=405, headers={"Allow": "GET, POST"})


_STYLE_KEYS_LOCK = threading.Lock()  # one keyed style request at a time: a repeat sees the first's answer


def save_style_once(api: ApiState, body: StyleBody, key: IdempotencyKey | None) -> tuple[int, dict, bool]:
    """(status, answer, replayed) of POST /api/styles: without a key, save_style; with one, the answer
    stored under it when the body is the same (replayed), 409 for another body, else save and store."""
    if key is None:
        return 201, save_style(api.settings, body).model_dump(mode="json"), False
    with _STYLE_KEYS_LOCK:
        found = api.jobs.find_answer(key.key)
        if found is not None:
            fingerprint_, status, stored = found
            if fingerprint_ != key.fingerprint:
                return 409, {"detail": f"this {IDEMPOTENCY_HEADER} was used for a different request; send a new "
                                       "key for a new request"}, False
            return 200, json.loads(stored), True
        answer = save_style(api.settings, body).model_dump(mode="json")
        api.jobs.keep_answer(key.key, key.fingerprint, 201, json.dumps(answer))
        return 201, answer, False


def save_style(settings: Settings, body: StyleBody) -> StyleView:
    from echo_os.render.styles import (
        Style,
        check_name,
        check_style_text,
        read_workspace_styles,
        write_workspace_styles,
    )

    try:
        name = check_name(body.name)
    except OptionError as error:
        raise field_error("name", str(error)) from None
    for field_name in ("prompt", "negative"):  # the rules of prompt text: a style must stay usable
        try:
            check_style_text(getattr(body, field_name), field_name)
        except OptionError as error:
            raise field_error(field_name, str(error)) from None
    if not body.prompt.strip() and not body.negative.strip():
        raise field_error("prompt", "give the style's words (with {prompt} where the prompt goes)", body.prompt)
    current = read_workspace_styles(settings)
    if name.casefold() in current and not body.replace:
        raise field_error("name", f"style {current[name.casefold()].name!r} already exists; send replace: true "
                                  "to overwrite it", body.name)
    style = Style(name, body.prompt.strip(), body.negative.strip())
    current[name.casefold()] = style
    write_workspace_styles(settings, current)
    return StyleView.model_validate(style.as_dict())
