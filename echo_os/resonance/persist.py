"""Scores and ratings are written to meta.json (the source of truth) and then to the catalog row.

meta.json gains two keys, both optional: `scores` (scores.ArtifactScores.as_dict() plus `scored_at`) and
`rating` ({"value": 1..5, "note": str | null, "rated_at": ISO time}). The PNG is never touched, so the
artifact id (the PNG's sha256) stays the same. The catalog's alignment / character_consistency / style /
aesthetic / rating columns are generated from the meta column (migration 3), so one upsert updates them.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from echo_os.errors import UsageError

if TYPE_CHECKING:
    from echo_os.artifacts.catalog import Catalog

RATING_MIN, RATING_MAX = 1, 5
MAX_NOTE = 2000


def _now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def update_meta(catalog: "Catalog", artifacts_root: Path, relative_path: str, updates: dict[str, Any]) -> dict:
    """Set top-level keys of an artifact's meta.json (atomic replace), then its catalog row. Returns the meta."""
    from echo_os.atomic import write_atomically

    meta_path = artifacts_root / relative_path / "meta.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta.update(updates)
    text = json.dumps(meta, ensure_ascii=False, indent=2, sort_keys=True) + "\n"
    write_atomically(meta_path, text.encode("utf-8"))
    catalog.upsert(meta, relative_path)
    return meta


def save_scores(catalog: "Catalog", artifacts_root: Path, relative_path: str, scores: dict[str, Any]) -> dict:
    return update_meta(catalog, artifacts_root, relative_path, {"scores": {**scores, "scored_at": _now()}})


def check_rating(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not RATING_MIN <= value <= RATING_MAX:
        raise UsageError(f"rating {value!r} is not a whole number from {RATING_MIN} to {RATING_MAX}.")
    return value


def save_rating(catalog: "Catalog", artifacts_root: Path, artifact_id: str, value: int,
                note: str | None = None) -> dict:
    """Rate an artifact (id or a unique prefix of 12+ hex characters) 1..5, with an optional note."""
    check_rating(value)
    if note is not None and len(note) > MAX_NOTE:
        raise UsageError(f"a rating note is at most {MAX_NOTE} characters (got {len(note)}).")
    from echo_os.artifacts.meta import require_kind

    row = catalog.resolve_id(artifact_id)
    # a grid sheet is a picture of other artifacts: rate its cells (a video, a whole animatic, can be rated)
    require_kind(row.id, row.meta, ("image", "imported", "video"), "a rating",
                 needs="an image or a video", option="artifact_id")
    rating = {"value": value, "note": note, "rated_at": _now()}
    update_meta(catalog, artifacts_root, row.path, {"rating": rating})
    return {"id": row.id, **rating}
