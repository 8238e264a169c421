"""/api/artifacts: the catalog, an artifact's meta.json, its image and its video."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool

from echo_os.api.deps import IMAGE_TYPES, Api, artifact_image_path, artifact_video_path, convert_image
from echo_os.api.events import image_url
from echo_os.api.routes.common import ArtifactId
from echo_os.api.schemas import ArtifactPage, ArtifactView, error_responses

router = APIRouter()


def artifact_view(row, *, with_meta: bool = False) -> ArtifactView:
    from echo_os.artifacts.meta import artifact_kind

    return ArtifactView(id=row.id, created=row.created, project=row.project, model=row.model, engine=row.engine,
                        prompt=row.prompt, seed=row.seed, size=f"{row.width}x{row.height}", scene=row.scene,
                        parent_id=row.parent_id, kind=artifact_kind(row.meta), image_url=image_url(row.id),
                        meta=row.meta if with_meta else None)


# -- artifacts -----------------------------------------------------------------------------------------


@router.get("/api/artifacts", response_model=ArtifactPage, tags=["artifacts"])
async def list_artifacts(api: Api, project: Annotated[str | None, Query(max_length=200)] = None,
                         model: Annotated[str | None, Query(max_length=200)] = None,
                         since: Annotated[str | None, Query(max_length=40, pattern=r"^\d{4}-\d{2}-\d{2}",
                                                            description="ISO date or time")] = None,
                         min_rating: Annotated[int | None, Query(ge=1, le=5,
                                                                 description="only images rated at least this")] = None,
                         limit: Annotated[int, Query(ge=1, le=500)] = 50,
                         offset: Annotated[int, Query(ge=0, le=10**9)] = 0) -> ArtifactPage:
    """Newest first; `min_rating` keeps only images rated at least that (1..5), as /api/memory/search."""
    if since is not None:
        try:
            (datetime if "T" in since else date).fromisoformat(since)
        except ValueError:
            raise RequestValidationError([{"type": "value_error", "loc": ("query", "since"),
                                           "msg": f"{since!r} is not an ISO date like 2026-11-01",
                                           "input": since}]) from None
    rows = await run_in_threadpool(api.catalog.query, project=project, model=model, since=since,
                                   min_rating=min_rating, limit=limit + 1, offset=offset)
    more = len(rows) > limit
    return ArtifactPage(items=[artifact_view(row) for row in rows[:limit]], limit=limit, offset=offset,
                        next_offset=offset + limit if more else None)


@router.get("/api/artifacts/{artifact_id}", response_model=ArtifactView, tags=["artifacts"],
            responses=error_responses(404, 422))
async def get_artifact(artifact_id: ArtifactId, api: Api) -> ArtifactView:
    row = await run_in_threadpool(api.catalog.resolve, artifact_id.lower())
    return artifact_view(row, with_meta=True)


@router.get("/api/artifacts/{artifact_id}/image", tags=["artifacts"], response_class=FileResponse,
            responses={200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}},
                       **error_responses(404, 422)})
async def get_artifact_image(artifact_id: ArtifactId, api: Api,
                             format: Annotated[str, Query(pattern="^(png|jpeg|webp)$")] = "png") -> Response:
    """The PNG as saved (its metadata chunks included), or converted to jpeg / webp."""
    path = await run_in_threadpool(artifact_image_path, api, artifact_id.lower())
    if format == "png":
        return FileResponse(path, media_type=IMAGE_TYPES["png"])
    data = await run_in_threadpool(convert_image, path.read_bytes(), format)
    return Response(data, media_type=IMAGE_TYPES[format])


@router.get("/api/artifacts/{artifact_id}/video", tags=["artifacts"], response_class=FileResponse,
            responses={200: {"content": {"video/mp4": {}}}, **error_responses(404, 422)})
async def get_artifact_video(artifact_id: ArtifactId, api: Api) -> Response:
    """The MP4 of a video artifact (an animatic from POST /api/animatic, a clip); range requests work,
    so a browser's <video> can seek. `/image` of a video artifact is its poster frame."""
    path = await run_in_threadpool(artifact_video_path, api, artifact_id.lower())
    return FileResponse(path, media_type="video/mp4")
