"""The scores of a set of images, from CLIP embeddings (every vector L2-normalised, so a dot is a cosine).

- alignment: the CLIP score, 100 x cosine(image, its prompt), floored at 0 (Hessel et al. 2021 use
  2.5 x max(cos, 0); 100 x is the scale torchmetrics and most papers report).
- characters[C]: for each character in the image, the mean cosine to C's reference images ("reference")
  and to C's images in other scenes ("scenes"); its "score" is the mean of the two that exist.
- character_consistency: the lowest character score (the character that drifted most decides).
- style: the mean cosine to every image of the story's other scenes.
- aesthetic: the aesthetic head over the image embedding, when a scorer entry is present.

Two images of one scene are never compared for consistency: that is a choice between takes, not drift.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from PIL.Image import Image

    from echo_os.resonance.scorers import Scorers

SCORES_VERSION = 1


@dataclass(frozen=True)
class ScoreItem:
    """One image to score and what it is compared with: its prompt, story scene and characters."""

    id: str
    image: "Image"
    prompt: str
    scene: int | None = None
    characters: tuple[str, ...] = ()


@dataclass
class CharacterScore:
    reference: float | None = None
    references: int = 0
    scenes: float | None = None
    scene_pairs: int = 0
    against_scenes: list[int] = field(default_factory=list)
    score: float | None = None


@dataclass
class ArtifactScores:
    alignment: float | None = None
    style: float | None = None
    style_pairs: int = 0
    aesthetic: float | None = None
    characters: dict[str, CharacterScore] = field(default_factory=dict)
    character_consistency: float | None = None
    clip: str | None = None
    aesthetic_model: str | None = None
    version: int = SCORES_VERSION

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_stored(cls, scores: dict[str, Any] | None) -> "ArtifactScores":
        """The four scores an Objective weighs, from a catalog row's meta["scores"] (None: not scored)."""
        scores = scores or {}
        return cls(alignment=scores.get("alignment"), style=scores.get("style"), aesthetic=scores.get("aesthetic"),
                   character_consistency=scores.get("character_consistency"))


def clip_score(image_vector: np.ndarray, text_vector: np.ndarray) -> float:
    """100 x cosine of two L2-normalised vectors, floored at 0."""
    return max(0.0, 100.0 * float(np.dot(image_vector, text_vector)))


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 6) if values else None


def score_items(scorers: "Scorers", items: list[ScoreItem],
                references: dict[str, list["Image"]] | None = None) -> tuple[dict[str, ArtifactScores], np.ndarray]:
    """Scores for every item, by id, and the items' CLIP image embeddings (one row per item, in order).
    Needs scorers.clip (the caller checks scorers.available)."""
    if scorers.clip is None:
        raise ValueError("score_items needs a CLIP model (check Scorers.available first)")
    references = references or {}
    images = scorers.clip.embed_images([item.image for item in items]).astype(np.float64)
    texts = scorers.clip.embed_texts([item.prompt for item in items]).astype(np.float64)
    reference_vectors = {name: scorers.clip.embed_images(pictures).astype(np.float64)
                         for name, pictures in references.items() if pictures}
    head = scorers.aesthetic
    aesthetic = head(images) if head is not None else None
    similarity = images @ images.T
    out: dict[str, ArtifactScores] = {}
    for i, item in enumerate(items):
        result = ArtifactScores(alignment=round(clip_score(images[i], texts[i]), 4), clip=scorers.clip_name)
        if head is not None and aesthetic is not None:
            result.aesthetic = round(float(aesthetic[i]), 4)
            result.aesthetic_model = head.name
        if item.scene is not None:
            others = [j for j, other in enumerate(items) if other.scene is not None and other.scene != item.scene]
            result.style = _mean([similarity[i, j] for j in others])
            result.style_pairs = len(others)
        for name in item.characters:
            character = CharacterScore()
            if name in reference_vectors:
                character.reference = _mean(list(reference_vectors[name] @ images[i]))
                character.references = len(reference_vectors[name])
            if item.scene is not None:
                mates = [j for j, other in enumerate(items)
                         if name in other.characters and other.scene is not None and other.scene != item.scene]
                character.scenes = _mean([similarity[i, j] for j in mates])
                character.scene_pairs = len(mates)
                character.against_scenes = sorted({scene for j in mates if (scene := items[j].scene) is not None})
            parts = [v for v in (character.reference, character.scenes) if v is not None]
            character.score = _mean(parts)
            result.characters[name] = character
        scored = [c.score for c in result.characters.values() if c.score is not None]
        result.character_consistency = min(scored) if scored else None
        out[item.id] = result
    return out, images


def style_consistency(vectors: npt.ArrayLike, scenes: list[int], threshold: float) -> tuple[float | None, int, int]:
    """(share, pairs at or above threshold, pairs) over pairs of images from different scenes."""
    vectors = np.asarray(vectors, dtype=np.float64)
    pairs = above = 0
    for i in range(len(scenes)):
        for j in range(i + 1, len(scenes)):
            if scenes[i] == scenes[j]:
                continue
            pairs += 1
            above += bool(float(vectors[i] @ vectors[j]) >= threshold)
    return (round(above / pairs, 6) if pairs else None), above, pairs


# ---- scoring catalog rows (`echo-os score`, and renders as they save) ---------------------------------------

def _references_of(meta: dict) -> dict[str, list[str]]:
    """character -> reference image paths, from the request's IP-Adapter inputs (what the render was given)."""
    adapter = (meta.get("request") or {}).get("ip_adapter") or {}
    return {ref["name"]: [image["path"] for image in ref.get("images", [])]
            for ref in adapter.get("references", []) if ref.get("name")}


def score_rows(settings, catalog, scorers: "Scorers", targets: list, *, progress=None) -> dict[str, dict]:
    """Score catalog rows `targets` and write the scores (meta.json, catalog). Story scenes are scored
    against the other scenes of their project (style, character); a draft card is not scored.
    Returns id -> scores written. progress(done, total) after each project."""
    from PIL import Image

    from echo_os.resonance.persist import save_scores

    def open_rgb(path):
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")

    from echo_os.artifacts.meta import IMAGE_KINDS, artifact_kind

    def scorable(row) -> bool:  # images only: a draft card, a grid sheet or a video has nothing to score
        return row.engine != "draft" and artifact_kind(row.meta) in IMAGE_KINDS

    written: dict[str, dict] = {}
    targets = [row for row in targets if scorable(row)]
    by_project: dict[str, list] = {}
    for row in targets:
        by_project.setdefault(row.project, []).append(row)
    for done, (project, rows) in enumerate(sorted(by_project.items()), start=1):
        wanted = {row.id for row in rows}
        context = {row.id: row for row in rows}
        if any(row.scene is not None for row in rows):  # the project's other scenes are the comparison
            for row in catalog.query(project=project):
                if row.scene is not None and scorable(row):
                    context.setdefault(row.id, row)
        ordered = list(context.values())
        references: dict[str, list[str]] = {}
        for row in ordered:
            for name, paths in _references_of(row.meta).items():
                references.setdefault(name, [p for p in paths if Path(p).is_file()])
        items = [ScoreItem(id=row.id, image=open_rgb(settings.artifacts_dir / row.path / "image.png"),
                           prompt=row.prompt, scene=row.scene,
                           characters=tuple((row.meta.get("story") or {}).get("characters") or ()))
                 for row in ordered]
        scores, _ = score_items(scorers, items, {name: [open_rgb(Path(p)) for p in paths]
                                                 for name, paths in references.items() if paths})
        for row in ordered:
            if row.id in wanted:
                data = scores[row.id].as_dict()
                save_scores(catalog, settings.artifacts_dir, row.path, data)
                written[row.id] = data
        if progress is not None:
            progress(done, len(by_project))
    return written
