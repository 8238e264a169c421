"""The continuity report: does each character look like itself across its scenes, and like its reference?

Per character: the mean cosine similarity of CLIP image embeddings over every pair of its images that
come from different scenes (two images of one scene are not a continuity question), and the mean
similarity of its images to its reference images. The embedder is any callable
`embed_images(list[PIL.Image]) -> np.ndarray` (one row per image); `clip_image_embedder` makes one from
a models.toml `clip` entry (a transformers CLIPModel folder). With no CLIP model the report is skipped
with a note saying why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from PIL.Image import Image

    from echo_os.settings import Settings

EmbedImages = Callable[[list["Image"]], "np.ndarray"]


@dataclass
class CharacterContinuity:
    id: str
    name: str
    scenes: list[int]
    images: int
    scene_similarity: float | None = None  # mean over pairs of images from different scenes
    scene_pairs: int = 0
    reference_similarity: float | None = None  # mean over (image, reference image) pairs
    references: int = 0


@dataclass
class ContinuityReport:
    model: str | None = None
    note: str | None = None  # why the report was skipped, when it was
    characters: list[CharacterContinuity] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        """One line per character, for the terminal."""
        if self.note:
            return [f"continuity: skipped ({self.note})"]
        lines = []
        for character in self.characters:
            parts = []
            if character.scene_similarity is not None:
                parts.append(f"across scenes {character.scene_similarity:.3f} ({character.scene_pairs} pairs)")
            else:
                parts.append("in one scene only")
            if character.reference_similarity is not None:
                parts.append(f"to its reference {character.reference_similarity:.3f}")
            lines.append(f"continuity: {character.id} ({character.name}): {', '.join(parts)}  [CLIP {self.model}]")
        return lines or ["continuity: no characters in this story"]


@dataclass
class CastImage:
    """One image of a character: which scene it belongs to and the picture."""

    scene: int
    image: "Image"


@dataclass
class CastEntry:
    id: str
    name: str
    images: list[CastImage]
    references: list["Image"] = field(default_factory=list)


def _normalised(vectors) -> "np.ndarray":
    import numpy as np

    array = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return array / np.where(norms == 0, 1.0, norms)


def continuity_report(cast: list[CastEntry], embed_images: EmbedImages, model: str | None = None) -> ContinuityReport:
    """Similarities for every character in `cast`, embedding each image once."""
    report = ContinuityReport(model=model)
    for entry in cast:
        scenes = sorted({item.scene for item in entry.images})
        result = CharacterContinuity(id=entry.id, name=entry.name, scenes=scenes, images=len(entry.images),
                                     references=len(entry.references))
        if entry.images:
            vectors = _normalised(embed_images([item.image for item in entry.images]))
            pairs = [(i, j) for i, j in combinations(range(len(entry.images)), 2)
                     if entry.images[i].scene != entry.images[j].scene]
            if pairs:
                result.scene_similarity = round(float(sum(vectors[i] @ vectors[j] for i, j in pairs) / len(pairs)), 4)
                result.scene_pairs = len(pairs)
            if entry.references:
                references = _normalised(embed_images(entry.references))
                result.reference_similarity = round(float((vectors @ references.T).mean()), 4)
        report.characters.append(result)
    return report


# ---- CLIP from models.toml -------------------------------------------------------------------------

def find_clip_model(settings: "Settings", requested: str | None) -> tuple[str | None, Path | None, str | None]:
    """(name, folder, None) of the CLIP model to use, or (None, None, why not): memory.embedders.find_clip,
    the rule Echo Memory and `memory dupes` use."""
    from echo_os.memory.embedders import find_clip

    choice = find_clip(settings, requested)
    return choice.name, choice.folder, choice.why_not


def clip_image_embedder(folder: Path, device: str = "cpu") -> EmbedImages:
    """embed_images from a local CLIPModel folder, through Echo Memory's loader (memory.embedders.ClipEmbedder)."""
    from echo_os.memory.embedders import ClipEmbedder

    return ClipEmbedder(folder, device=device).embed_images
