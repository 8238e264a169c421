"""Echo Memory wired to the artifact store: embedders from models.toml, the save hook, filters, reconciling.

    memory = open_memory(settings)      # reconciled with the catalog: embeds what was saved since, repairs drift
    hits = memory.search_text("stormy lighthouse", k=10, filters=MemoryFilters(project="Harbor"))

The catalog's stable int64 `num` (artifact_num(id)) is the vector id. The index is a cache: when it and
the catalog disagree, the catalog (itself rebuilt from meta.json by `artifacts reindex`) wins.
Nothing heavy is imported at module level: sentence-transformers and torch load on the first embedding.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from echo_os.artifacts.catalog import Catalog, CatalogRow, artifact_num
from echo_os.artifacts.meta import IMAGE_KINDS, artifact_kind, require_kind
from echo_os.artifacts.store import open_catalog
from echo_os.errors import NotFoundError
from echo_os.settings import Settings

if TYPE_CHECKING:
    from echo_os.memory.embedders import EmbedderChoice
    from echo_os.memory.index import ReconcileReport
    from echo_os.memory.service import Hit, Memory, MemoryItem

log = logging.getLogger(__name__)

MINILM_ENTRY = "minilm"
IMAGE_NAME = "image.png"


# -- embedders ------------------------------------------------------------------------------------------


def quiet_model_loading() -> None:
    """No "Loading weights" bars from transformers when MiniLM/CLIP load inside a CLI command.

    transformers reads huggingface_hub's switch when it is imported; after that, its own switch.
    TRANSFORMERS_VERBOSITY / HF_HUB_DISABLE_PROGRESS_BARS set by the user still win.
    """
    if "transformers" in sys.modules:
        if "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ:
            sys.modules["transformers"].utils.logging.disable_progress_bar()
    elif "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        if "huggingface_hub" in sys.modules:  # already read its environment
            sys.modules["huggingface_hub"].utils.disable_progress_bars()
        else:
            os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"

_EMBEDDER_CACHE: dict[tuple, EmbedderChoice] = {}


def build_embedders(settings: Settings) -> EmbedderChoice:
    """MiniLM from the `minilm` text-embedder entry (always), CLIP by embedders.find_clip (the rule the
    continuity report uses too).

    Resolving is offline: a clip entry whose weights are not on this machine is skipped (with the reason,
    shown by `memory stats`). Cached per process and models.toml contents, so models load once.
    """
    from echo_os.memory.embedders import ClipEmbedder, EmbedderChoice, MiniLMEmbedder, find_clip
    from echo_os.models.registry import load_registry

    quiet_model_loading()
    registry = load_registry(settings)
    key = tuple((str(p), p.stat().st_mtime_ns) for p in registry.sources if p.exists())
    if key in _EMBEDDER_CACHE:
        return _EMBEDDER_CACHE[key]
    if MINILM_ENTRY in registry and registry.get(MINILM_ENTRY).type == "text-embedder":
        minilm = MiniLMEmbedder(registry.resolve(MINILM_ENTRY).local_path)
    else:
        minilm = MiniLMEmbedder()  # the bundled package, when models.toml has no minilm entry
    choice = EmbedderChoice(embedders=[minilm])
    clip = find_clip(settings)
    if clip.folder is not None:
        choice.embedders.append(ClipEmbedder(clip.folder))
    else:
        choice.skipped["clip"] = f"{clip.why_not} (image search is off)"
    _EMBEDDER_CACHE[key] = choice
    return choice


# -- what memory embeds for an artifact --------------------------------------------------------------


def memory_item_from_meta(meta: Mapping[str, Any], image_path: Path | None) -> MemoryItem:
    """The MemoryItem of an artifact: its catalog num, prompt + story text, and image."""
    from echo_os.memory.embedders import artifact_text
    from echo_os.memory.service import MemoryItem

    return MemoryItem(id=artifact_num(meta["id"]), text=artifact_text(meta), image_path=image_path)


def row_rating(row: CatalogRow) -> int:
    """The row's rating (1..5), 0 when it has none."""
    rating = row.meta.get("rating") or {}
    value = rating.get("value") if isinstance(rating, dict) else None
    return value if isinstance(value, int) else 0


def row_characters(row: CatalogRow) -> list[str]:
    story = row.meta.get("story") or {}
    return [str(c) for c in (story.get("characters") or [])]


@dataclass(frozen=True)
class MemoryFilters:
    """Catalog filters a similarity search is restricted to. All None: no restriction."""

    project: str | None = None
    model: str | None = None
    character: str | None = None
    character_ids: tuple[str, ...] = ()  # ids the character's name stands for (bibles name them)
    since: str | None = None  # ISO date or datetime, inclusive
    until: str | None = None  # ISO date or datetime, inclusive of that day
    min_rating: int | None = None  # only images rated at least this (meta.json `rating`, 1..5)

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.project, self.model, self.character, self.since, self.until,
                                           self.min_rating))

    def allowed_ids(self, catalog: Catalog) -> list[int] | None:
        if not self.active:
            return None
        rows = catalog.query(project=self.project, model=self.model, since=self.since)
        if self.until:
            bound = self.until if len(self.until) > 10 else self.until + "\uffff"
            rows = [r for r in rows if r.created <= bound]
        if self.character:
            wanted = {self.character.casefold(), *(i.casefold() for i in self.character_ids)}
            rows = [r for r in rows if any(c.casefold() in wanted for c in row_characters(r))]
        if self.min_rating is not None:
            rows = [r for r in rows if row_rating(r) >= self.min_rating]
        return [r.num for r in rows]


@dataclass(frozen=True)
class ArtifactHit:
    """A search hit joined with its catalog row."""

    hit: Hit
    row: CatalogRow
    image_path: Path

    def as_dict(self) -> dict:
        return {"id": self.row.id, "num": self.row.num, "score": round(self.hit.score, 4),
                "scores": {k: round(v, 4) for k, v in self.hit.scores.items()}, "path": str(self.image_path),
                "prompt": self.row.prompt, "project": self.row.project, "engine": self.row.engine,
                "created": self.row.created, "scene": self.row.scene}


# -- the memory of a workspace -------------------------------------------------------------------------


@dataclass
class ArtifactMemory:
    """Memory over a workspace's catalog: searches take filters and return catalog rows."""

    settings: Settings
    memory: Memory
    catalog: Catalog
    choice: EmbedderChoice
    reports: list[ReconcileReport] = field(default_factory=list)

    def close(self) -> None:
        self.catalog.close()

    def __enter__(self) -> ArtifactMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def load_item(self, num: int) -> MemoryItem | None:
        row = self.catalog.get_num(num)
        # a mesh or a sound is found by its prompt and by its preview (image.png: turntable, waveform)
        if row is None or artifact_kind(row.meta) not in (*IMAGE_KINDS, "mesh", "audio"):
            return None
        image = self.settings.artifacts_dir / row.path / IMAGE_NAME
        if not image.exists():
            return None  # the folder is gone: `artifacts reindex` drops its row
        return memory_item_from_meta(row.meta, image)

    def reconcile(self, *, rebuild: bool = False,
                  progress: Callable[[str, int, int], None] | None = None) -> list[ReconcileReport]:
        self.reports = self.memory.reconcile(self.catalog.image_nums(), self.load_item, rebuild=rebuild,
                                             progress=progress)
        return self.reports

    def _joined(self, hits: Sequence[Hit]) -> list[ArtifactHit]:
        joined = []
        for hit in hits:
            row = self.catalog.get_num(hit.id)
            if row is not None:
                joined.append(ArtifactHit(hit, row, self.settings.artifacts_dir / row.path / IMAGE_NAME))
        return joined

    def search_text(self, query: str, k: int = 10, filters: MemoryFilters = MemoryFilters()) -> list[ArtifactHit]:
        return self._joined(self.memory.search_text(query, k, filters.allowed_ids(self.catalog)))

    def search_image(self, image: Any, k: int = 10, filters: MemoryFilters = MemoryFilters()) -> list[ArtifactHit]:
        return self._joined(self.memory.search_image(image, k, filters.allowed_ids(self.catalog)))

    def similar(self, artifact_id: str, k: int = 10,
                filters: MemoryFilters = MemoryFilters()) -> tuple[CatalogRow, list[ArtifactHit]]:
        row = self.catalog.resolve_id(artifact_id)
        require_kind(row.id, row.meta, IMAGE_KINDS, "memory similar")
        try:
            hits = self.memory.similar(row.num, k, filters.allowed_ids(self.catalog))
        except NotFoundError:
            raise NotFoundError(f"artifact {row.id[:12]} is not in the memory index; run `echo-os memory reindex`") from None
        return row, self._joined(hits)


def describe_reports(reports: Sequence[ReconcileReport]) -> str | None:
    """One line saying what reconciling repaired, or None when nothing was broken or stale.

    Embedding artifacts the index has not seen yet is routine (renders are embedded by the next memory
    command, see "when artifacts are embedded" below) and is not reported on its own.
    """
    parts = []
    for report in reports:
        if not (report.rebuilt or report.removed):
            continue
        bits = []
        if report.rebuilt:
            bits.append(f"rebuilt ({report.reason})" if report.reason else "rebuilt")
        if report.removed:
            bits.append(f"dropped {len(report.removed)} stale")
        if report.added:
            bits.append(f"embedded {len(report.added)} missing")
        parts.append(f"{report.embedder}: {', '.join(bits)}")
    return ("memory index repaired from the catalog: " + "; ".join(parts)) if parts else None


def open_memory(settings: Settings, *, reconcile: bool = True, rebuild: bool = False,
                note: Callable[[str], None] | None = None,
                progress: Callable[[str, int, int], None] | None = None) -> ArtifactMemory:
    """The workspace's memory, brought in line with the catalog (drift repaired, broken files rebuilt).

    `note` receives one line when anything was repaired (the CLI prints it on stderr).
    """
    from echo_os.memory.service import Memory

    choice = build_embedders(settings)
    memory = ArtifactMemory(settings, Memory(settings.memory_dir, choice.embedders),
                            open_catalog(settings), choice)
    if reconcile or rebuild:
        try:
            reports = memory.reconcile(rebuild=rebuild, progress=progress)
        except BaseException:
            memory.close()
            raise
        line = describe_reports(reports)
        if line and note is not None and not rebuild:
            note(line)
    return memory


# -- when artifacts are embedded ---------------------------------------------------------------------
#
# Never on the render path. `render`, `batch`, `replay --save` and the API worker only save artifacts; the
# next user of the memory (an `echo-os memory` command, an /api/memory route) opens it through
# open_memory, whose reconcile embeds every catalog artifact the indexes lack. Loading MiniLM and CLIP costs
# seconds (about half of a tiny-model CLI render, issue 11), and a thread loading them beside the render
# raced the render's own transformers imports (ImportError, issue 11) and could still be loading at
# interpreter exit (abort, exit 134, issue 12): so no command starts one.


def print_note(line: str) -> None:
    print(line, file=sys.stderr)
