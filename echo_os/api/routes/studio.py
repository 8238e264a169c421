"""The studio over HTTP: `/` redirects to /api/studio, the page (under /api/ so the session cookie covers
it and every fetch it makes); its files; and two small read-only helpers the page needs that the other
routes do not give: the models and engines to pick from (with why `auto` picks what it picks), a
project's storyboard as rendered (its newest story.json, scene order), and one scene's edit (description
or duration), written back to the story's story.csv and turned into the /api/batch body that re-renders
only that scene.

With `serve --token`, a browser signs in once with GET /api/studio?token=T (api/security.py), as for the
gallery. The page holds no secret: the cookie is HttpOnly and the page never sees the token.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path as Path_
from typing import Annotated, Any, get_args

from fastapi import APIRouter, HTTPException, Path
from fastapi.responses import FileResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from echo_os.api.deps import Api, field_error
from echo_os.api.schemas import MAX_TEXT, error_responses
from echo_os.errors import UsageError
from echo_os.render.requests import Scheduler

router = APIRouter()


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """error_responses, typed as FastAPI's `responses` parameter wants."""
    return {status: entry for status, entry in error_responses(*statuses).items()}

STUDIO_PATH = "/api/studio"
WRITTEN_HEADER = "X-Echo-Storyboard-Written"  # a scene edit: the story.csv it wrote
BACKUP_HEADER = "X-Echo-Storyboard-Backup"  # and where the text before the edit is kept
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
            responses=_errors(404))
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
    schedulers: list[str] = Field(default_factory=list)  # what a render or a compare axis may name
    scorers: list[str] = Field(default_factory=list)  # for variations (POST /api/evolve): clip when here, plugins


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
    return StudioOptions(models=models, engines=list(engine_names()), default_model=default_model,
                         schedulers=list(get_args(Scheduler)), scorers=_scorers(settings))


def _scorers(settings) -> list[str]:
    """The scorers variations can use: `clip` when a CLIP entry resolves here (found, not loaded), then the
    plugins' (`ratings` needs a terminal: not offered)."""
    from echo_os.memory.embedders import find_clip
    from echo_os.resonance.scorers import scorer_plugins

    names = ["clip"] if find_clip(settings, None).name is not None else []
    return names + sorted(scorer_plugins())


@router.get(STUDIO_PATH + "/options", response_model=StudioOptions, tags=["studio"])
async def options(api: Api) -> StudioOptions:
    """Models to render with (models.toml) and, for each, the engine `auto` would pick and why."""
    return await run_in_threadpool(studio_options, api.settings, api.options.default_model)


class StoryScene(BaseModel):
    scene: int
    slug: str
    description: str
    duration: float | None = None  # seconds in the animatic (story.csv `duration`), when the storyboard says
    characters: list[str]
    artifacts: list[str]  # kept images, best first
    siblings: list[str]  # candidates not kept (best-of)
    flags: list[dict]  # drift flags on this scene (resonance)


class StoryView(BaseModel):
    project: str
    title: str
    created: str
    kind: str  # storyboard or prompts
    editable: bool  # its story.csv lies in the workspace or a registered project: scenes can be edited
    scenes: list[StoryScene]


class SceneEdit(BaseModel):
    """A change to one scene of the project's storyboard (its newest story.json's story.csv)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    description: str | None = Field(default=None, min_length=1, max_length=MAX_TEXT)
    duration: float | None = Field(default=None, gt=0.0, le=3600.0, allow_inf_nan=False,
                                   description="Seconds the scene lasts in the animatic.")


class EditedStory(BaseModel):
    """The body to POST to /api/batch: the storyboard with the edit, its bible and the story's settings.
    The batch finds the scenes whose requests did not change already rendered and renders only the edited
    one (a duration alone changes no image: only the new story.json, which the animatic reads)."""

    project: str
    storyboard: str
    bible: str | None = None
    engine: str = "auto"
    size: str | None = None
    steps: int | None = None
    cfg: float | None = None


def _readable(settings, path_text: object) -> Path_ | None:
    """A story.json path the studio may read: inside the workspace or a registered project folder
    (echo_os.studio.projects); a broken [studio] table is a 422 that says what is wrong with it."""
    from echo_os.studio.projects import readable_story_file

    try:
        return readable_story_file(settings, path_text)
    except UsageError as error:
        raise field_error("project", str(error)) from None


def _storyboard_of(settings, document: dict) -> Path_ | None:
    return _readable(settings, document.get("source")) if document.get("kind") == "storyboard" else None


def _csv_rows(text: str) -> tuple[list[str], list[list[str]]]:
    rows = list(csv.reader(io.StringIO(text.lstrip("\ufeff"), newline=""), dialect="excel", strict=True))
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    return [cell.strip() for cell in rows[0]], rows[1:]


def _durations(text: str) -> dict[int, float]:
    header, rows = _csv_rows(text)
    if "duration" not in header or "scene" not in header:
        return {}
    found = {}
    for row in rows:
        try:
            found[int(row[header.index("scene")])] = float(row[header.index("duration")])
        except (ValueError, IndexError):
            continue
    return found


def edit_storyboard(text: str, scene: int, edit: SceneEdit) -> str:
    """story.csv text with scene `scene`'s description and/or duration replaced (a duration column is added
    when there is none); everything else as it was. UsageError when no row is that scene."""
    header, rows = _csv_rows(text)
    if "duration" in edit.model_fields_set and edit.duration is not None and "duration" not in header:
        header.append("duration")
    column = {name: index for index, name in enumerate(header)}
    target = next((row for row in rows if row and row[column["scene"]].strip() == str(scene)), None)
    if target is None:
        raise UsageError(f"the storyboard has no scene {scene}")
    for row in rows:  # every row as wide as the header (a new duration column)
        row.extend([""] * (len(header) - len(row)))
    if edit.description is not None:
        target[column["description"]] = edit.description
    if edit.duration is not None:
        target[column["duration"]] = f"{edit.duration:g}"
    out = io.StringIO()
    csv.writer(out, dialect="excel", lineterminator="\n").writerows([header, *rows])
    return out.getvalue()


def _only(values: Any) -> Any:
    return values[0] if isinstance(values, list) and len(values) == 1 else None


@router.post(STUDIO_PATH + "/story/{project}/scenes/{scene}", response_model=EditedStory, tags=["studio"],
             responses=_errors(403, 404, 413, 422))
async def edit_scene(project: Annotated[str, Path(min_length=1, max_length=200)],
                     scene: Annotated[int, Path(ge=1, le=100_000)], body: SceneEdit, api: Api,
                     response: Response) -> EditedStory:
    """Edit one scene's description or duration: writes it back to the story's story.csv (atomically, the
    text before kept as story.csv.bak; headers X-Echo-Storyboard-Written and -Backup name both files) and
    answers the batch to POST to /api/batch, which re-renders only that scene."""
    from echo_os.resonance.story import load_story_json

    if body.description is None and body.duration is None:
        raise field_error("description", "give a new description or duration")
    document = await run_in_threadpool(load_story_json, api.settings, project)
    if document is None:
        raise HTTPException(status_code=404, detail=f"project {project!r} has no rendered story")
    source = await run_in_threadpool(_storyboard_of, api.settings, document)
    if source is None:
        raise field_error("description", "this story has no story.csv the studio may read (a prompt list, or a "
                                         "storyboard outside the workspace: add its folder to [studio] projects in "
                                         "echo-os.toml, or edit it and run `echo-os batch`)")
    from echo_os.studio.projects import write_storyboard

    try:
        edited, backup = await run_in_threadpool(write_storyboard, source,
                                                 lambda text: edit_storyboard(text, scene, body))
    except UsageError as error:
        raise HTTPException(status_code=404, detail=str(error)) from None
    response.headers[WRITTEN_HEADER] = str(source)
    response.headers[BACKUP_HEADER] = str(backup)
    bible_path = await run_in_threadpool(_readable, api.settings, (document.get("bible") or {}).get("path"))
    settings = document.get("settings") or {}
    engines = settings.get("engines") or []
    return EditedStory(project=project, storyboard=edited,
                       bible=bible_path.read_text(encoding="utf-8") if bible_path else None,
                       engine=engines[0]["name"] if len(engines) == 1 else "auto",
                       size=_only(settings.get("sizes")), steps=_only(settings.get("steps")),
                       cfg=_only(settings.get("cfg")))


@router.get(STUDIO_PATH + "/story/{project}", response_model=StoryView, tags=["studio"],
            responses=_errors(404, 422))
async def story(project: Annotated[str, Path(min_length=1, max_length=200)], api: Api) -> StoryView:
    """The project's newest rendered storyboard, in scene order, with its drift flags."""
    from echo_os.resonance.story import load_story_json

    document = await run_in_threadpool(load_story_json, api.settings, project)
    if document is None:
        raise HTTPException(status_code=404, detail=f"project {project!r} has no rendered story; render one "
                                                    "with POST /api/batch or `echo-os batch`")
    flags = ((document.get("resonance") or {}).get("flags") or [])
    source = await run_in_threadpool(_storyboard_of, api.settings, document)
    durations = _durations(source.read_text(encoding="utf-8")) if source is not None else {}
    scenes = [StoryScene(scene=s["scene"], slug=s.get("slug", ""), description=s.get("description") or "",
                         duration=durations.get(s["scene"]),
                         characters=list(s.get("characters") or []), artifacts=list(s.get("artifacts") or []),
                         siblings=list(s.get("siblings") or []),
                         flags=[f for f in flags if f.get("scene") == s["scene"]])
              for s in sorted(document.get("scenes") or [], key=lambda s: s["scene"])]
    return StoryView(project=project, title=document.get("title") or project,
                     created=document.get("created") or "", kind=document.get("kind") or "storyboard",
                     editable=source is not None, scenes=scenes)


SWATCH_HEADER = "X-Echo-Swatch"  # rendered | pending (the draft card until the render is ready) | draft
SWATCH_ENGINE_HEADER, SWATCH_MODEL_HEADER = "X-Echo-Swatch-Engine", "X-Echo-Swatch-Model"
SWATCH_REASON_HEADER = "X-Echo-Swatch-Reason"


def _header_text(text: str) -> str:
    return " ".join(text.encode("ascii", "replace").decode("ascii").split())[:300]


@router.get(STUDIO_PATH + "/styles/{name}/swatch", tags=["studio"], response_class=FileResponse,
            responses=_errors(404))
async def style_swatch(name: Annotated[str, Path(min_length=1, max_length=200)], api: Api) -> FileResponse:
    """A small rendered sample of the named style (PNG; echo_os.studio.swatches), by the engine `auto` picks
    for the server's model, cached by the style's content hash and the model and engine. Never waits for
    the render: 202 with the draft card while it runs (ask again), then 200 with the render; 200 with the
    draft card when nothing here can render. Header X-Echo-Swatch says which (rendered, pending, draft),
    X-Echo-Swatch-Engine and -Model with what."""
    from echo_os.render.styles import all_styles
    from echo_os.studio.swatches import swatch

    style = (await run_in_threadpool(all_styles, api.settings)).get(name.strip().casefold())
    if style is None:
        raise HTTPException(status_code=404, detail=f"no style {name!r} (GET /api/styles lists them)")
    found = await run_in_threadpool(swatch, api.settings, style, api.options.default_model, api.swatches)
    headers = {"Cache-Control": "no-cache", SWATCH_HEADER: found.state, SWATCH_ENGINE_HEADER: found.engine,
               SWATCH_MODEL_HEADER: _header_text(found.model or "none"),
               SWATCH_REASON_HEADER: _header_text(found.reason)}
    # The URL names the style, not its content: the browser asks again each time (no-cache) and gets a
    # 304 while the file (its name is the content hash) is the same.
    return FileResponse(found.path, media_type="image/png", headers=headers,
                        status_code=202 if found.state == "pending" else 200)
