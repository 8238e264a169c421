"""The studio over HTTP: `/` redirects to /api/studio, the page (under /api/ so the session cookie covers
it and every fetch it makes); its files; and two small read-only helpers the page needs that the other
routes do not give: the models and engines to pick from (with why `auto` picks what it picks) and a
project's storyboard as rendered (its newest story.json, scene order).

With `serve --token`, a browser signs in once with GET /api/studio?token=T (api/security.py), as for the
gallery. The page holds no secret: the cookie is HttpOnly and the page never sees the token.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path
from fastapi.responses import RedirectResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from echo_os.api.deps import Api
from echo_os.api.schemas import error_responses

router = APIRouter()

STUDIO_PATH = "/api/studio"
# Only this page's own files and the API: no inline script, no other origin, images from the API or data:
# URLs (the live previews).
STUDIO_CSP = ("default-src 'self'; img-src 'self' data: blob:; media-src 'self'; style-src 'self'; "
              "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


@router.get("/", include_in_schema=False)
async def root() -> RedirectResponse:
    return RedirectResponse(STUDIO_PATH, status_code=307)


def _static(name: str) -> Response:
    from echo_os.studio import read_static

    found = read_static(name)
    if found is None:
        raise HTTPException(status_code=404, detail=f"the studio has no file {name!r}")
    body, content_type = found
    return Response(body, media_type=content_type,
                    headers={"Content-Security-Policy": STUDIO_CSP, "Cache-Control": "no-cache",
                             "Referrer-Policy": "no-referrer"})


@router.get(STUDIO_PATH, tags=["studio"], response_class=Response)
async def studio_page() -> Response:
    """The studio page (render, queue, results, story, search). `?token=T` signs a browser in."""
    return _static("index.html")


@router.get(STUDIO_PATH + "/static/{name}", tags=["studio"], response_class=Response,
            responses=error_responses(404))
async def studio_file(name: Annotated[str, Path(pattern=r"^[a-z0-9_-]+\.(css|js|svg)$")]) -> Response:
    return _static(name)


class EngineChoice(BaseModel):
    name: str
    reason: str  # for `auto`: which engine it would pick for this model and why; else what it lacks
    available: bool


class ModelChoice(BaseModel):
    name: str
    type: str
    auto: EngineChoice  # what `auto` picks for this model


class StudioOptions(BaseModel):
    models: list[ModelChoice]
    engines: list[str]  # registered engines, besides auto
    default_model: str


def _auto_choice(settings, model: str) -> EngineChoice:
    from echo_os.engines import choose_engine
    from echo_os.errors import EchoError
    from echo_os.render.requests import build_request

    try:
        request = build_request(prompt="studio", model=model, engine="auto")
        name, reason = choose_engine(settings, request)
        return EngineChoice(name=name, reason=reason, available=True)
    except EchoError as error:
        return EngineChoice(name="none", reason=str(error), available=False)


def studio_options(settings, default_model: str) -> StudioOptions:
    from echo_os.engines import engine_names
    from echo_os.models.registry import load_registry

    registry = load_registry(settings)
    models = [ModelChoice(name=entry.name, type=entry.type, auto=_auto_choice(settings, entry.name))
              for entry in registry.entries() if entry.type == "sdxl"]
    return StudioOptions(models=models, engines=list(engine_names()), default_model=default_model)


@router.get(STUDIO_PATH + "/options", response_model=StudioOptions, tags=["studio"])
async def options(api: Api) -> StudioOptions:
    """Models to render with (models.toml) and, for each, the engine `auto` would pick and why."""
    return await run_in_threadpool(studio_options, api.settings, api.options.default_model)


class StoryScene(BaseModel):
    scene: int
    slug: str
    description: str
    characters: list[str]
    artifacts: list[str]  # kept images, best first
    siblings: list[str]  # candidates not kept (best-of)
    flags: list[dict]  # drift flags on this scene (resonance)


class StoryView(BaseModel):
    project: str
    title: str
    created: str
    scenes: list[StoryScene]


@router.get(STUDIO_PATH + "/story/{project}", response_model=StoryView, tags=["studio"],
            responses=error_responses(404, 422))
async def story(project: Annotated[str, Path(min_length=1, max_length=200)], api: Api) -> StoryView:
    """The project's newest rendered storyboard, in scene order, with its drift flags."""
    from echo_os.resonance.story import load_story_json

    document = await run_in_threadpool(load_story_json, api.settings, project)
    if document is None:
        raise HTTPException(status_code=404, detail=f"project {project!r} has no rendered story; render one "
                                                    "with POST /api/batch or `echo-os batch`")
    flags = ((document.get("resonance") or {}).get("flags") or [])
    scenes = [StoryScene(scene=s["scene"], slug=s.get("slug", ""), description=s.get("description") or "",
                         characters=list(s.get("characters") or []), artifacts=list(s.get("artifacts") or []),
                         siblings=list(s.get("siblings") or []),
                         flags=[f for f in flags if f.get("scene") == s["scene"]])
              for s in sorted(document.get("scenes") or [], key=lambda s: s["scene"])]
    return StoryView(project=project, title=document.get("title") or project,
                     created=document.get("created") or "", scenes=scenes)
