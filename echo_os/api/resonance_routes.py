"""Ratings over HTTP: POST /api/artifacts/{id}/rating, what `echo-os rate` does (meta.json, then the catalog).

The gallery served by `echo-os serve` posts here from its rating buttons.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from echo_os.api.deps import Api
from echo_os.api.schemas import error_responses
from echo_os.resonance.persist import MAX_NOTE, RATING_MAX, RATING_MIN

router = APIRouter()


class RatingIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rating: int = Field(ge=RATING_MIN, le=RATING_MAX, strict=True, description="1 (worst) to 5 (best)")
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
            return save_rating(catalog, api.settings.artifacts_dir, artifact_id.lower(), body.rating, body.note)

    return RatingOut(**await run_in_threadpool(save))
