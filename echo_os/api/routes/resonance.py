"""Resonance over HTTP.

POST /api/artifacts/{id}/rating: what `echo-os rate` does (meta.json, then the catalog); the gallery
served by `echo-os serve` posts here from its rating buttons. DELETE: `echo-os rate ID --clear`.
GET /api/projects/{project}/resonance: `echo-os resonance PROJECT --json` (?format=html: the page).
POST /api/styles/learn: `echo-os memory learn-from` (a style learned from artifacts, saved in styles.toml).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import AliasChoices, BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from echo_os.api.deps import Api
from echo_os.api.schemas import error_responses
from echo_os.resonance.persist import MAX_NOTE, RATING_MAX, RATING_MIN

router = APIRouter()


class RatingIn(BaseModel):
    """The rating's one name is `value`, as in meta.json's `rating` and the response; `rating` (the older
    request name) is still read."""

    model_config = ConfigDict(extra="forbid")

    value: int = Field(ge=RATING_MIN, le=RATING_MAX, strict=True, description="1 (worst) to 5 (best)",
                       validation_alias=AliasChoices("value", "rating"))
    note: str | None = Field(default=None, max_length=MAX_NOTE)


class RatingOut(BaseModel):
    id: str
    value: int
    note: str | None
    rated_at: str


@router.post("/api/artifacts/{artifact_id}/rating", response_model=RatingOut, tags=["artifacts"],
             responses=error_responses(400, 403, 404, 413, 422))
async def rate_artifact(artifact_id: Annotated[str, Path(pattern=r"^[0-9a-fA-F]{12,64}$",
                                                         description="An artifact id or a unique prefix of 12+")],
                        body: RatingIn, api: Api) -> RatingOut:
    """Rate an artifact 1..5 (with an optional note); a new rating replaces the old one."""

    def save() -> dict:
        from echo_os.artifacts.catalog import Catalog
        from echo_os.resonance.persist import save_rating

        with Catalog(api.settings.catalog_path) as catalog:
            return save_rating(catalog, api.settings.artifacts_dir, artifact_id.lower(), body.value, body.note)

    return RatingOut(**await run_in_threadpool(save))


@router.delete("/api/artifacts/{artifact_id}/rating", status_code=204, tags=["artifacts"],
               responses=error_responses(400, 403, 404, 422))
async def clear_artifact_rating(artifact_id: Annotated[str, Path(pattern=r"^[0-9a-fA-F]{12,64}$",
                                                                 description="An artifact id or a unique prefix of 12+")],
                                api: Api) -> Response:
    """Remove an artifact's rating (`echo-os rate ID --clear`); 204 whether or not it had one."""

    def clear() -> None:
        from echo_os.artifacts.catalog import Catalog
        from echo_os.resonance.persist import clear_rating

        with Catalog(api.settings.catalog_path) as catalog:
            clear_rating(catalog, api.settings.artifacts_dir, artifact_id.lower())

    await run_in_threadpool(clear)
    return Response(status_code=204)


@router.api_route("/api/artifacts/{artifact_id}/rating", methods=["GET", "OPTIONS", "PUT", "PATCH"],
                  include_in_schema=False)
async def rating_other_methods() -> JSONResponse:
    # Two routes share this path; Starlette's own 405 would name only the first one's method.
    return JSONResponse({"detail": "Method Not Allowed"}, status_code=405, headers={"Allow": "POST, DELETE"})


@router.get("/api/projects/{project}/resonance", tags=["resonance"],
            responses={200: {"description": "The report as JSON, or with format=html the page",
                             "content": {"application/json": {}, "text/html": {}}},
                       **error_responses(403, 404, 422)})
async def project_resonance(project: Annotated[str, Path(min_length=1, max_length=200)], api: Api,
                            format: Annotated[str, Query(pattern="^(json|html)$")] = "json"):
    """The project's resonance report (echo_os.reflect.report): JSON, or the HTML page with charts."""
    from echo_os.reflect.report import build_report, render_page

    report = await run_in_threadpool(build_report, api.settings, project)
    if format == "html":
        return HTMLResponse(render_page(report))
    return JSONResponse(report.as_dict())


class LearnIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[Annotated[str, Field(pattern=r"^[0-9a-fA-F]{12,64}$")]] = Field(min_length=1, max_length=16)
    name: str | None = Field(default=None, min_length=1, max_length=100)
    ip_adapter: str | None = None
    scale: float = Field(default=0.5, ge=0.0, le=2.0, allow_inf_nan=False)
    reference: bool = True
    replace: bool = False


@router.post("/api/styles/learn", status_code=201, tags=["styles"], responses=error_responses(400, 403, 404, 413, 422))
async def learn_style_route(body: LearnIn, api: Api) -> JSONResponse:
    """Learn a named style from artifacts (`echo-os memory learn-from`); 201 with the style and its provenance."""

    def learn() -> dict:
        from echo_os.artifacts.store import ArtifactStore
        from echo_os.reflect.learn import learn_style

        store = ArtifactStore(api.settings)
        try:
            learned = learn_style(api.settings, store, [i.lower() for i in body.ids], name=body.name,
                                  adapter=body.ip_adapter, scale=body.scale, reference=body.reference,
                                  replace=body.replace)
        finally:
            store.close()
        return {**learned.style.as_dict(), "phrases": list(learned.phrases), "excluded": list(learned.excluded),
                "note": learned.note}

    return JSONResponse(await run_in_threadpool(learn), status_code=201)
