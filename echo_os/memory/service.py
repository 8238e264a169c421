"""Echo Memory: one VectorIndex per embedder over the catalog's ids, and the searches the CLI and API offer.

The catalog is not imported here. Whoever wires memory to it passes:
- ids: the catalog's stable int64 row ids (`num`);
- MemoryItem(id, text, image_path): what to embed for an artifact (text = artifact_text(meta.json));
- `allowed_ids` for filters (project, character, model, date), resolved by a catalog query;
- `load_item(id) -> MemoryItem | None` for reconciliation and reindexing.

    memory = Memory(settings.memory_dir, memory.artifacts.build_embedders(settings).embedders)
    memory.add([MemoryItem(num, artifact_text(meta), folder / "image.png")])   # on every artifact save
    hits = memory.search_text("stormy lighthouse at night", k=10, allowed_ids=project_ids)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from echo_os.errors import NotFoundError, UsageError
from echo_os.memory.embedders import Embedder
from echo_os.memory.index import (
    DEFAULT_HNSW_THRESHOLD,
    DupePair,
    IndexStats,
    MemoryLock,
    ReconcileReport,
    VectorIndex,
    open_reconciled,
)

if TYPE_CHECKING:
    from PIL.Image import Image

logger = logging.getLogger(__name__)

# Reciprocal rank fusion constant (Cormack et al. 2009): ranks from different indexes are merged as
# sum(1 / (RRF_K + rank)); cosines of different embedders are not on one scale.
RRF_K = 60
DUPE_THRESHOLD = 0.97
# The CLIP entry of the default models.toml (echo_os/models/default_models.toml), named in error messages.
DEFAULT_CLIP_ENTRY = "clip-vit-l-14"


class NoImageEmbedderError(UsageError):
    """Image search, similar-image search and dupes need a CLIP embedder."""


@dataclass(frozen=True)
class MemoryItem:
    """What memory embeds for one artifact."""

    id: int  # the catalog's stable int64 id
    text: str  # artifact_text(meta): prompt and story fields
    image_path: Path | None = None  # image.png, for CLIP


@dataclass(frozen=True)
class Hit:
    """One search result.

    score: the cosine similarity when one index answered; when several did (text search with both
    MiniLM and CLIP), their reciprocal-rank fusion scaled so 1.0 means first in every index.
    scores: the cosine per embedder that found it.
    """

    id: int
    score: float
    scores: dict[str, float] = field(default_factory=dict)


def fuse(rankings: dict[str, list[tuple[int, float]]], k: int) -> list[Hit]:
    """Merge per-embedder rankings: the cosine itself for one, reciprocal rank fusion for several."""
    answered = {name: ranked for name, ranked in rankings.items() if ranked}
    if not answered:
        return []
    if len(answered) == 1:
        name, ranked = next(iter(answered.items()))
        return [Hit(id=i, score=s, scores={name: s}) for i, s in ranked[:k]]
    fused: dict[int, float] = {}
    scores: dict[int, dict[str, float]] = {}
    for name, ranked in answered.items():
        for rank, (item, score) in enumerate(ranked, start=1):
            fused[item] = fused.get(item, 0.0) + 1.0 / (RRF_K + rank)
            scores.setdefault(item, {})[name] = score
    best = len(answered) / (RRF_K + 1)
    order = sorted(fused, key=lambda i: (-fused[i], -max(scores[i].values()), i))
    return [Hit(id=i, score=round(fused[i] / best, 6), scores=scores[i]) for i in order[:k]]


class Memory:
    """The indexes of all embedders in one memory folder, kept in step with each other and the catalog."""

    def __init__(self, memory_dir: Path, embedders: Sequence[Embedder], *,
                 hnsw_threshold: int = DEFAULT_HNSW_THRESHOLD):
        if not embedders:
            raise ValueError("Memory needs at least one embedder")
        self.memory_dir = Path(memory_dir)
        self.embedders = list(embedders)
        self.hnsw_threshold = hnsw_threshold
        self._indexes: dict[str, VectorIndex] = {}

    # ---- indexes

    def embedder(self, kind: str) -> Embedder | None:
        return next((e for e in self.embedders if e.kind == kind), None)

    def _image_embedder(self, what: str) -> Embedder:
        clip = self.embedder("clip")
        if clip is None:
            raise NoImageEmbedderError(
                f"{what} needs a CLIP model: `echo-os models pull {DEFAULT_CLIP_ENTRY}` (the models.toml entry), "
                "or add an entry of type clip to models.toml."
            )
        return clip

    def index(self, embedder: Embedder) -> VectorIndex:
        """The open index of an embedder, reloaded when another process saved a newer generation.

        Raises IndexCorruptError / IndexMismatchError when it must be rebuilt (`reconcile` does that).
        """
        index = self._indexes.get(embedder.name)
        if index is None:
            index = VectorIndex.open(self.memory_dir, embedder.name, embedder.dim,
                                     fingerprint=embedder.fingerprint, hnsw_threshold=self.hnsw_threshold)
            self._indexes[embedder.name] = index
        else:
            index.refresh()
        return index

    # ---- writing

    def embed(self, embedder: Embedder, items: Sequence[MemoryItem]) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of the items this embedder can embed (CLIP skips items whose image is missing)."""
        if embedder.kind == "text":
            ids = [item.id for item in items]
            return np.asarray(ids, dtype=np.int64), embedder.embed_texts([item.text for item in items])
        from PIL import Image, UnidentifiedImageError

        ids, images = [], []
        for item in items:
            if item.image_path is None:
                continue
            try:
                with Image.open(item.image_path) as image:
                    images.append(image.convert("RGB"))
                ids.append(item.id)
            except (OSError, UnidentifiedImageError) as error:
                logger.warning("memory: cannot read image of artifact %d (%s): %s", item.id, item.image_path, error)
        if not ids:
            return np.zeros(0, dtype=np.int64), np.zeros((0, embedder.dim), dtype=np.float32)
        return np.asarray(ids, dtype=np.int64), embedder.embed_images(images)

    def add(self, items: Sequence[MemoryItem]) -> None:
        """Embed items (outside the lock: it is the slow part) and add them to every index, under the lock."""
        if not items:
            return
        embedded = {e.name: self.embed(e, items) for e in self.embedders}
        with MemoryLock(self.memory_dir):
            for embedder in self.embedders:
                ids, vectors = embedded[embedder.name]
                index = self.index(embedder)
                with index.writing():
                    index.add(ids, vectors)

    def remove(self, ids: Iterable[int]) -> None:
        ids = np.asarray(list(ids), dtype=np.int64)
        with MemoryLock(self.memory_dir):
            for embedder in self.embedders:
                index = self.index(embedder)
                with index.writing():
                    index.remove(ids)

    # ---- searching

    def search_text(self, query: str, k: int = 10, allowed_ids: Iterable[int] | None = None) -> list[Hit]:
        """Artifacts matching a text query: MiniLM over prompts and story fields, CLIP over the images."""
        if not query.strip():
            raise UsageError("The search query is empty; give some words to search for.")
        allowed = None if allowed_ids is None else np.asarray(list(allowed_ids), dtype=np.int64)
        rankings = {}
        for embedder in self.embedders:
            vector = embedder.embed_texts([query])[0]
            rankings[embedder.name] = self.index(embedder).search(vector, k, allowed_ids=allowed)
        return fuse(rankings, k)

    def search_image(self, image: Image | Path, k: int = 10, allowed_ids: Iterable[int] | None = None) -> list[Hit]:
        """Artifacts whose images look like `image` (CLIP)."""
        clip = self._image_embedder("Image search")
        if isinstance(image, (str, Path)):  # a file to open, not a picture
            from PIL import Image as PILImage

            try:
                with PILImage.open(image) as opened:
                    image = opened.convert("RGB")
            except OSError as error:
                raise UsageError(f"Cannot read the image {image}: {error}") from None
        vector = clip.embed_images([image])[0]
        return fuse({clip.name: self.index(clip).search(vector, k, allowed_ids=allowed_ids)}, k)

    def similar(self, item: int, k: int = 10, allowed_ids: Iterable[int] | None = None) -> list[Hit]:
        """Artifacts nearest to a stored one, from its stored vectors (nothing is re-embedded).

        Uses the CLIP index (the image) when there is one, else MiniLM (prompt and story).
        """
        embedder = self.embedder("clip") or self.embedders[0]
        index = self.index(embedder)
        if item not in index:
            raise NotFoundError(f"Artifact {item} is not in the {embedder.name} index; run `echo-os memory reindex`.")
        found = index.search(index.vector(item), k + 1, allowed_ids=allowed_ids)
        return fuse({embedder.name: [(i, s) for i, s in found if i != item]}, k)

    def dupes(self, threshold: float = DUPE_THRESHOLD) -> list[DupePair]:
        """Pairs of near-identical images (CLIP cosine >= threshold), highest first."""
        return self.index(self._image_embedder("Finding duplicate images")).dupes(threshold)

    # ---- upkeep

    def stats(self) -> list[IndexStats]:
        return [self.index(embedder).stats() for embedder in self.embedders]

    def reconcile(self, catalog_ids: Iterable[int], load_item: Callable[[int], MemoryItem | None], *,
                  rebuild: bool = False, progress: Callable[[str, int, int], None] | None = None,
                  ) -> list[ReconcileReport]:
        """Make every index hold exactly the catalog's ids; a corrupt or foreign index is rebuilt.

        rebuild=True discards the indexes and re-embeds everything (`echo-os memory reindex`).
        load_item(id) returns what to embed, or None when the artifact is gone.
        """
        catalog_ids = np.unique(np.asarray(list(catalog_ids), dtype=np.int64))
        reports = []
        with MemoryLock(self.memory_dir):
            for embedder in self.embedders:

                def fetch(ids: Sequence[int], embedder: Embedder = embedder) -> tuple[np.ndarray, np.ndarray]:
                    items = [item for item in (load_item(int(i)) for i in ids) if item is not None]
                    return self.embed(embedder, items)

                def step(done: int, total: int, name: str = embedder.name) -> None:
                    if progress is not None:
                        progress(name, done, total)

                index, report = open_reconciled(
                    self.memory_dir, embedder.name, embedder.dim, catalog_ids, fetch,
                    fingerprint=embedder.fingerprint, hnsw_threshold=self.hnsw_threshold, rebuild=rebuild,
                    progress=step)
                self._indexes[embedder.name] = index
                reports.append(report)
        return reports
