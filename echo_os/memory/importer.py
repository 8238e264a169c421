"""`echo-os memory import DIR`: make other tools' PNGs artifacts, so a whole image history is searchable.

Each PNG becomes an artifact folder like any render (meta.json stays the source of truth): image.png is
the file byte-for-byte, so the artifact id is the file's sha256 and a second import skips it; meta.json
holds what the A1111 / ComfyUI / InvokeAI chunks say (pngmeta.py), engine "import:<tool>", and where the
file came from. Then the new artifacts are embedded in batches.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from echo_os.artifacts.slugs import slugify
from echo_os.errors import disk_full
from echo_os.settings import Settings

if TYPE_CHECKING:
    from echo_os.artifacts.meta import ArtifactMeta
    from echo_os.memory.pngmeta import ImportedMeta

log = logging.getLogger(__name__)



@dataclass
class ImportReport:
    imported: int = 0
    skipped: int = 0  # already in the catalog
    unreadable: int = 0
    by_tool: Counter = field(default_factory=Counter)
    ids: list[str] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (file, why it was skipped), one per unreadable

    def as_dict(self) -> dict:
        return {"imported": self.imported, "skipped": self.skipped, "unreadable": self.unreadable,
                "by_tool": dict(self.by_tool), "ids": self.ids,
                "problems": [{"path": path, "reason": reason} for path, reason in self.problems]}


# A file bigger than this is not read (a PNG from an image tool is a few MB; 200 MB covers 8K renders).
MAX_IMPORT_BYTES = 200 * 1024 * 1024


def _unreadable_reason(path: Path) -> str | None:
    """Why `path` cannot be imported safely, checked before its bytes are read, or None."""
    try:
        info = path.stat()
    except OSError as error:
        return error.strerror or str(error)
    if info.st_size > MAX_IMPORT_BYTES:
        return f"{info.st_size // (1024 * 1024)} MB, more than the {MAX_IMPORT_BYTES // (1024 * 1024)} MB imported"
    return None


def imported_meta(path: Path, parsed: "ImportedMeta", *, project: str, created: datetime) -> "ArtifactMeta":
    """The ArtifactMeta of an imported image: what its chunks say; unknown seed is -1."""
    from echo_os.artifacts.meta import ArtifactMeta, EngineRecord, ModelRecord

    prompt = parsed.prompt or ""
    # What the chunks carried, as meta.json's "imported": a field beyond ArtifactMeta's own (it allows them)
    extra: dict[str, Any] = {"imported": {"tool": parsed.source, "source_path": str(path), "sampler": parsed.sampler,
                                          "model_hash": parsed.model_hash, "extra": parsed.extra, "chunks": parsed.raw,
                                          "warnings": list(parsed.warnings)}}
    return ArtifactMeta(
        created=created.isoformat(timespec="microseconds"),
        project=project,
        sequence=0,
        prompt=prompt,
        full_prompt=prompt,
        negative_prompt=parsed.negative or "",
        seed=parsed.seed if parsed.seed is not None else -1,
        steps=parsed.steps or 0,
        cfg=parsed.cfg if parsed.cfg is not None else 0.0,
        width=parsed.width or 0,
        height=parsed.height or 0,
        scheduler=parsed.echo_scheduler() or (parsed.sampler or ""),
        model=ModelRecord(name=parsed.model, source="import", kind=parsed.source) if parsed.model else None,
        engine=EngineRecord(name=f"import:{parsed.source}", reason=f"imported from {path}"),
        device="",
        dtype="",
        attention="",
        request={},
        **extra,
    )


def import_folder(settings: Settings, folder: Path, *, project: str = "imported", embed: bool = True,
                  progress: Callable[[str, int, int], None] | None = None) -> ImportReport:
    """Copy every PNG under `folder` in as an artifact, then embed the new ones.

    progress(stage, done, total): stage "copy" per file looked at, then one stage per embedder
    ("minilm", "clip") as the new artifacts are embedded.
    """
    from PIL import Image

    from echo_os.artifacts.store import ArtifactStore
    from echo_os.memory.pngmeta import parse_text_chunks, read_png_text

    report = ImportReport()
    store = ArtifactStore(settings)
    try:
        known = {row[0] for row in store.catalog.db.execute("SELECT id FROM artifacts")}
        paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() == ".png" and p.is_file())
        for done, path in enumerate(paths):
            if progress is not None:
                progress("copy", done, len(paths))
            reason = _unreadable_reason(path)
            if reason is None:
                data = path.read_bytes()
                digest = hashlib.sha256(data).hexdigest()
                if digest in known:
                    report.skipped += 1
                    continue
                try:
                    chunks, size = read_png_text(path)
                except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
                    # not an image after all, a decompression bomb, an oversized text chunk: skip this one
                    # (PIL's message repeats the path, which the report line already names)
                    reason = f"{type(error).__name__}: {error}".replace(f" {str(path)!r}", "")[:300]
            if reason is not None:
                log.info("import: skipping %s: %s", path, reason)  # the report names it (once) to the user
                report.unreadable += 1
                report.problems.append((str(path), reason))
                continue
            try:
                parsed = parse_text_chunks(chunks, size)
                created = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).astimezone()
                meta = imported_meta(path.resolve(), parsed, project=project, created=created)
                slug = slugify(parsed.prompt or path.stem, max_length=32)
                store.save_file(data, meta, scene_slug=slug)  # folder and row, or neither
            except Exception as error:
                full = disk_full(error)
                if full is not None:  # every file after it would fail the same way
                    raise full from error
                reason = f"{type(error).__name__}: {error}"[:300]
                log.warning("import: skipping %s: %s", path, reason)
                report.unreadable += 1
                report.problems.append((str(path), reason))
                continue
            known.add(digest)
            report.imported += 1
            report.by_tool[parsed.source] += 1
            report.ids.append(digest)
        if progress is not None:
            progress("copy", len(paths), len(paths))
    finally:
        store.close()
    if embed and report.imported:
        from echo_os.memory.artifacts import open_memory

        # The new catalog rows are what the index lacks: reconciling embeds exactly them, in batches,
        # and writes each index once (adding batch by batch would rewrite it per batch).
        with open_memory(settings, progress=progress):
            pass
    return report
