"""Echo Memory search and the gallery over HTTP: the same functions as `echo-os memory` and `echo-os gallery`.

GET /api/memory/search?q=... searches by text; POST /api/memory/search takes an image as the raw request
body (image/png, image/jpeg or image/webp) and needs a CLIP entry in models.toml. GET /api/gallery builds
the static gallery page and redirects to it; the page and the files it links (thumbnails, images) are
served from /api/gallery/files/, which answers only for the page, image, video, sound, GLB and viewer-script
files inside the artifacts folder.
With `serve --token`, a browser signs in once with GET /api/gallery?token=T: the Guard (api/security.py)
checks it, sets the session cookie and redirects here without the token, so these routes never see it.
"""

from __future__ import annotations

import io
import warnings
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, RedirectResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from echo_os.api.deps import Api, field_error
from echo_os.api.schemas import error_responses
from echo_os.api.security import resolve_inside
from echo_os.errors import UsageError

router = APIRouter()

MAX_QUERY_IMAGE_BYTES = 20 * 1024 * 1024
GALLERY_FILE_TYPES = {".html": "text/html; charset=utf-8", ".png": "image/png", ".webp": "image/webp",
                      ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
                      # what a video, mesh or sound card links: the MP4 (animatic, clip, turntable), the sound,
                      # the GLB, and the GLB as the script the lightbox viewer loads (gallery/build.py)
                      ".mp4": "video/mp4", ".flac": "audio/flac", ".glb": "model/gltf-binary",
                      ".js": "text/javascript; charset=utf-8"}


class MemoryHit(BaseModel):
    id: str
    score: float
    scores: dict[str, float]
    prompt: str
    project: str
    engine: str
    created: str
    scene: int | None = None
    image_url: str


def _search(api, run) -> list[MemoryHit]:
    from echo_os.memory.artifacts import open_memory
    from echo_os.ml_imports import import_ml_libraries

    import_ml_libraries()  # not beside the render worker's imports (echo_os.ml_imports)
    with open_memory(api.settings) as memory:
        hits = run(memory)
    return [MemoryHit(**{k: v for k, v in hit.as_dict().items() if k not in ("num", "path")},
                      image_url=f"/api/artifacts/{hit.row.id}/image") for hit in hits]


def _filters(project, model, character, since, settings=None, min_rating=None):
    from echo_os.memory.artifacts import MemoryFilters
    from echo_os.story.bible import character_ids_named

    # a bible name (`Elias Marr`) finds what its id (`keeper`) does, as `memory search --character`
    ids = character_ids_named(settings, character) if character and settings is not None else ()
    return MemoryFilters(project=project, model=model, character=character, character_ids=ids, since=since,
                         min_rating=min_rating)


IMAGE_BODY = {"required": False, "content": {
    "image/png": {"schema": {"type": "string", "format": "binary"}},
    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
    "image/webp": {"schema": {"type": "string", "format": "binary"}}}}


# One route for both methods, so OPTIONS and 405 answers list GET and POST together.


@router.api_route("/api/memory/search", methods=["GET", "POST"], response_model=list[MemoryHit], tags=["memory"],
                  openapi_extra={"requestBody": IMAGE_BODY}, responses=error_responses(413, 422))
async def memory_search(
    request: Request,
    api: Api,
    q: Annotated[str | None, Query(max_length=2000, description="GET: what to look for")] = None,
    k: Annotated[int, Query(ge=1, le=200)] = 10,
    project: str | None = None,
    model: str | None = None,
    character: str | None = None,
    since: Annotated[str | None, Query(pattern=r"^\d{4}-\d{2}-\d{2}")] = None,
    min_rating: Annotated[int | None, Query(ge=1, le=5, description="only images rated at least this")] = None,
) -> list[MemoryHit]:
    """GET ?q=: artifacts ranked by similarity to a text query (prompt and story fields; CLIP images when
    present). POST with an image body (image/png, image/jpeg, image/webp): artifacts whose images look
    like it (needs a CLIP entry in models.toml)."""
    filters = await run_in_threadpool(_filters, project, model, character, since, api.settings, min_rating)
    if request.method == "GET":
        if q is None or not q.strip():
            raise field_error(("query", "q"), "q is empty; give words to search for", q)
        return await run_in_threadpool(_search, api, lambda memory: memory.search_text(q, k, filters))
    return await _search_by_image(request, api, k, filters)


SEARCH_OPERATION_IDS = {"get": "memory_search_text", "post": "memory_search_image"}


def name_search_operations(app: FastAPI) -> None:
    """Give GET and POST /api/memory/search their own operationId in /openapi.json.

    FastAPI names every method of a multi-method route the same (and warns); OpenAPI wants them unique,
    and client generators need them so. One route is kept because Starlette then answers OPTIONS and
    other methods with a 405 whose Allow header lists both GET and POST.
    """
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = app.openapi_schema
        if schema is None:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Duplicate Operation ID memory_search", category=UserWarning)
                schema = build()  # kept as app.openapi_schema
            for method, operation_id in SEARCH_OPERATION_IDS.items():
                schema["paths"]["/api/memory/search"][method]["operationId"] = operation_id
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


async def _search_by_image(request: Request, api, k: int, filters) -> list[MemoryHit]:
    from PIL import Image, UnidentifiedImageError

    body = await request.body()
    if not body:
        raise field_error("body", "post the query image as the request body (image/png, image/jpeg or image/webp)")
    if len(body) > MAX_QUERY_IMAGE_BYTES:
        raise HTTPException(status_code=413, detail="query image larger than 20 MB")
    try:
        image = Image.open(io.BytesIO(body))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        raise field_error("body", f"the request body is not an image Pillow can read ({error})") from None
    rgb = image.convert("RGB")
    try:
        return await run_in_threadpool(_search, api, lambda memory: memory.search_image(rgb, k, filters))
    except UsageError as error:  # no CLIP model: say so as a 422 on the body
        raise field_error("body", str(error)) from None


@router.get("/api/gallery", tags=["gallery"], response_class=RedirectResponse, status_code=307,
            responses=error_responses(422))
async def gallery(api: Api, project: str | None = None) -> RedirectResponse:
    """Build the gallery page (thumbnails made once) and redirect to it.

    With a server token, open `/api/gallery?token=<token>` in a browser once: it sets an HttpOnly session
    cookie (path /api) and redirects to this route without the token; the page's rating buttons use it.
    """
    from echo_os.gallery.build import build_gallery

    result = await run_in_threadpool(build_gallery, api.settings, project=project)
    relative = result.page.relative_to(api.settings.artifacts_dir).as_posix()
    return RedirectResponse(f"/api/gallery/files/{relative}", status_code=307)


@router.get("/api/gallery/files/{path:path}", tags=["gallery"], response_class=FileResponse,
            responses={200: {"content": {"text/html": {}, "image/png": {}, "image/webp": {}, "image/jpeg": {}}},
                       **error_responses(404)})
async def gallery_file(path: str, api: Api) -> FileResponse:
    """The gallery page and the thumbnails and images it links, from inside the artifacts folder only."""
    target = resolve_inside(api.settings.artifacts_dir, path)
    media_type = GALLERY_FILE_TYPES.get(target.suffix.lower())
    if media_type is None or not target.is_file():
        raise HTTPException(status_code=404, detail="not found")
    return FileResponse(target, media_type=media_type)
