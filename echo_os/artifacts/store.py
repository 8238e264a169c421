"""The artifact store: one folder per image, written atomically, then indexed in the catalog.

Layout: artifacts/<yyyy-mm-dd>/<project-slug>/<seq>-<scene-slug>_<yyyy-mm-dd_HH-MM-SS>/{image.png,meta.json}.
A folder is built under artifacts/.tmp/, every file fsynced, then renamed into place in one step, so a
killed process leaves either a whole artifact or nothing that is listed. Each staging folder belongs to the
process writing it: `.tmp/<pid>-<uuid>/` is created while that process holds the lock file
`.tmp/<pid>-<uuid>.lock`, so `reindex` and every store start remove only orphans (folders whose lock nobody
holds: the writer died), never a render in progress in another process or thread. The folder is the source of
truth; the catalog row comes after and can always be rebuilt (`reindex`).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock, Timeout

from echo_os.artifacts.catalog import Catalog
from echo_os.artifacts.meta import (
    AnyMeta,
    ArtifactMeta,
    AssetMeta,
    EngineRecord,
    ModelRecord,
    VideoMeta,
    collect_versions,
    negative_prompt_passed,
)
from echo_os.artifacts.pnginfo import A1111_SAMPLER_NAMES, META_KEY, a1111_parameters, png_info
from echo_os.artifacts.slugs import slugify
from echo_os.errors import EchoError, NotFoundError, disk_full
from echo_os.render.requests import image_request_key
from echo_os.settings import Settings

if TYPE_CHECKING:
    from echo_os.artifacts.catalog import CatalogRow
    from echo_os.render.results import RenderResult

log = logging.getLogger(__name__)

IMAGE_NAME = "image.png"
META_NAME = "meta.json"
STAGING_NAME = ".tmp"
_SEQ_RE = re.compile(r"^(\d+)-")


@dataclass(frozen=True)
class Artifact:
    id: str
    path: Path  # the artifact folder
    meta: AnyMeta

    @property
    def image_path(self) -> Path:
        return self.path / IMAGE_NAME

    @property
    def meta_path(self) -> Path:
        return self.path / META_NAME

    @classmethod
    def from_row(cls, root: Path, row: "CatalogRow") -> "Artifact":
        """The artifact a catalog row describes (root: the artifacts folder its path is relative to)."""
        kind = row.meta.get("kind")
        model: type[AnyMeta] = (VideoMeta if kind == "video" else AssetMeta if kind in ("mesh", "audio")
                                else ArtifactMeta)
        return cls(id=row.id, path=root / row.path, meta=model.model_validate(row.meta))

    def summary(self) -> dict:
        return {"id": self.id, "path": str(self.path), "image": str(self.image_path),
                "prompt": self.meta.full_prompt, "seed": self.meta.seed, "engine": self.meta.engine.name,
                "project": self.meta.project, "size": f"{self.meta.width}x{self.meta.height}"}


SaveListener = Callable[[Artifact], None]


def _model_record(info) -> ModelRecord | None:
    if info is None:
        return None
    return ModelRecord(name=info.name, source=info.source, kind=info.kind, weights_sha256=info.weights_sha256)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def scan_folders(root: Path, restored: list[Path] | None = None,
                 known_ids: dict[str, str] | None = None) -> list[tuple[AnyMeta, Path]]:
    """Every artifact folder under `root` (meta.json next to image.png), skipping the staging area.

    A folder whose meta.json is gone gets it back from its PNG's `echo-os` chunk (restore_meta; one warning
    each, and the folder is appended to `restored`); one that cannot be restored is skipped with a warning.
    known_ids: folder (relative to root, as the catalog has it) -> the id the catalog knows it by; a PNG
    whose bytes no longer have that id (changed since it was made) is not restored from.
    """
    found: list[tuple[AnyMeta, Path]] = []
    folders = {path.parent for name in (META_NAME, IMAGE_NAME) for path in root.glob(f"*/*/*/{name}")}
    for folder in sorted(folders):
        if folder.parts[-3] == STAGING_NAME:
            continue
        meta_path = folder / META_NAME
        try:
            if meta_path.exists():
                found.append((read_any_meta(meta_path), folder))
                continue
        except ValueError as error:
            log.warning("skipping %s: unreadable meta.json (%s)", meta_path, error)
            continue
        try:
            expected = (known_ids or {}).get(folder.relative_to(root).as_posix())
            found.append((restore_meta(folder, expected_id=expected), folder))
        except EchoError as error:
            log.warning("skipping %s: %s", folder, error)
            continue
        if restored is not None:
            restored.append(folder)
    return found


def read_embedded_meta(png: bytes) -> ArtifactMeta | None:
    """The ArtifactMeta our renders embed in the PNG (`echo-os` iTXt chunk), or None when there is none.
    Reads only the chunks, never the pixels."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(png)) as image:
            text = image.info.get(META_KEY)  # our chunks come before the pixel data
    except Exception:  # noqa: BLE001 - any unreadable PNG simply carries no meta
        return None
    if not isinstance(text, str):
        return None
    try:
        return ArtifactMeta.model_validate_json(text)
    except ValueError:
        return None


def restore_meta(folder: Path, expected_id: str | None = None) -> ArtifactMeta:
    """Write `folder`/meta.json again from its image.png's `echo-os` chunk and return it.

    The id is the sha256 of the PNG bytes, checked against `expected_id` (the catalog's) when given; a
    PNG without the chunk, or one whose bytes no longer match the id, is an EchoError (nothing written).
    """
    image_path = folder / IMAGE_NAME
    try:
        png = image_path.read_bytes()
    except OSError as error:
        raise NotFoundError(f"{folder} has neither meta.json nor a readable image.png ({error.strerror})") from None
    digest = hashlib.sha256(png).hexdigest()
    if expected_id is not None and digest != expected_id:
        raise EchoError(f"{image_path} no longer matches artifact {expected_id[:12]} (sha256 {digest[:12]}) "
                        "and its meta.json is missing; it cannot be restored")
    meta = read_embedded_meta(png)
    if meta is None:
        raise EchoError(f"{folder} has no meta.json and its image.png carries no echo-os chunk to restore it from")
    meta.id = digest
    staged = folder / f".{META_NAME}.{os.getpid()}.tmp"
    _write_durably(staged, meta.to_json().encode("utf-8"))
    os.replace(staged, folder / META_NAME)
    _fsync_dir(folder)
    log.warning("restored %s/%s from its PNG's echo-os chunk (artifact %s)", folder, META_NAME, digest[:12])
    return meta


def open_catalog(settings: Settings) -> Catalog:
    """The workspace's catalog, usable whatever state catalog.db was left in: a corrupt file is moved
    aside (one warning on stderr naming where) and a new, empty or missing one is rebuilt from the
    meta.json folders, the source of truth. Everything that reads the catalog opens it here."""
    catalog = Catalog(settings.catalog_path)
    if not (catalog.fresh or catalog.quarantined):
        return catalog
    try:
        rows = [(meta.model_dump(mode="json"), str(folder.relative_to(settings.artifacts_dir)))
                for meta, folder in scan_folders(settings.artifacts_dir)]
        if rows:
            catalog.replace_all(rows)
    except BaseException:
        catalog.close()
        raise
    if catalog.quarantined:
        log.warning("%s was corrupt (%s); moved it to %s and rebuilt the catalog from %d artifact folders",
                    settings.catalog_path.name, catalog.corruption, catalog.quarantined.name, len(rows))
    elif rows:
        log.warning("%s was missing or empty; rebuilt it from %d artifact folders",
                    settings.catalog_path.name, len(rows))
    return catalog


@contextmanager
def staging_folder(staging_root: Path) -> Iterator[Path]:
    """A fresh folder under `staging_root`, owned by this process and call: its lock file is held from before
    the folder exists until after it is gone (renamed into place, or removed on failure)."""
    staging_root.mkdir(parents=True, exist_ok=True)
    name = f"{os.getpid()}-{uuid.uuid4().hex}"
    lock_path = staging_root / f"{name}.lock"
    folder = staging_root / name
    try:
        with FileLock(str(lock_path)):
            folder.mkdir()
            try:
                yield folder
            finally:
                shutil.rmtree(folder, ignore_errors=True)  # gone already when it was renamed into place
    finally:
        lock_path.unlink(missing_ok=True)


def remove_orphan_staging(staging_root: Path) -> int:
    """Remove staging folders whose writer is gone (its lock is free), and stray lock files. A folder whose
    lock is held belongs to a render in progress (any process, any thread) and is left alone.
    Returns how many folders were removed."""
    try:
        entries = list(staging_root.iterdir())
    except FileNotFoundError:
        return 0
    removed = 0
    for entry in entries:
        if entry.suffix == ".lock":
            if not entry.with_suffix("").exists():
                _remove_if_unlocked(entry, None)
            continue
        if entry.is_dir() and _remove_if_unlocked(entry.parent / f"{entry.name}.lock", entry):
            removed += 1
    if removed:
        log.info("removed %d staging folders left by stopped processes in %s", removed, staging_root)
    return removed


def _remove_if_unlocked(lock_path: Path, folder: Path | None) -> bool:
    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return False  # its writer is alive
    try:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        lock.release()
        lock_path.unlink(missing_ok=True)
    return True


def read_any_meta(path: Path) -> AnyMeta:
    """An image's ArtifactMeta, a video's VideoMeta ("kind": "video") or a mesh's or sound's AssetMeta."""
    import json

    try:
        kind = json.loads(path.read_text(encoding="utf-8")).get("kind")
    except (ValueError, AttributeError) as error:
        raise ValueError(str(error)) from None
    if kind == "video":
        return VideoMeta.read(path)
    if kind in ("mesh", "audio"):
        return AssetMeta.read(path)
    return ArtifactMeta.read(path)


class ArtifactStore:
    def __init__(self, settings: Settings, catalog: Catalog | None = None):
        self.settings = settings
        self.root = settings.artifacts_dir
        self.root.mkdir(parents=True, exist_ok=True)
        self._catalog = catalog
        self.listeners: list[SaveListener] = []
        remove_orphan_staging(self.root / STAGING_NAME)

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = open_catalog(self.settings)
        return self._catalog

    def close(self) -> None:
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None

    # -- building meta --------------------------------------------------------------------------
    def build_meta(self, result: "RenderResult", index: int, *, sequence: int, created: datetime,
                   batch_size: int) -> ArtifactMeta:
        request = result.request
        seed = request.seeds[index]
        runtime = result.runtime
        one_image = request.model_copy(update={"seed": seed, "count": 1, "engine": runtime.engine})
        model = _model_record(runtime.model)
        return ArtifactMeta(
            created=created.isoformat(timespec="microseconds"),
            project=request.project,
            sequence=sequence,
            prompt=request.prompt,
            full_prompt=request.full_prompt,
            negative_prompt=request.negative_prompt or "",
            negative_prompt_passed=negative_prompt_passed(request.negative_prompt),
            style=request.style,
            style_name=request.style_name,
            seed=seed,
            steps=request.steps,
            cfg=request.cfg,
            # What arrived, which a server (openai, comfyui) may make other than what was asked
            # (meta.request keeps the asked size).
            width=result.images[index].image.width,
            height=result.images[index].image.height,
            scheduler=request.scheduler,
            model=model,
            engine=EngineRecord(name=runtime.engine, reason=runtime.reason),
            device=runtime.device,
            dtype=runtime.dtype,
            attention=runtime.attention,
            versions=collect_versions(),
            timings=result.timings.as_dict(),
            batch={"index": index, "images": len(request.seeds), "size": batch_size},
            parent_id=request.parent_id,
            strength=request.init_image.strength if request.init_image is not None else None,
            parent_sha256=request.init_image.sha256 if request.init_image is not None else None,
            story=request.story,
            request=one_image.model_dump(mode="json"),
            request_key=image_request_key(one_image),
            ip_adapter=_model_record(runtime.ip_adapter),
            vae_tiling=runtime.vae_tiling,
            profile=runtime.profile,
            tile=request.tile,
            provenance=result.images[index].provenance,
        )

    @staticmethod
    def encode_png(image, meta: ArtifactMeta) -> bytes:
        model_name = meta.model.name if meta.model else meta.engine.name
        extra = {"Engine": meta.engine.name, "Version": f"echo-os {meta.versions.get('echo_os', '')}"}
        if meta.strength is not None and (meta.provenance or {}).get("strength_sent", True):
            # A hosted edit takes no strength (engines/openai_images.py): the chunk does not claim one.
            extra["Denoising strength"] = f"{meta.strength:g}"
        if meta.style_name:
            extra["Style"] = meta.style_name
        refiner = meta.request.get("refiner")
        if refiner:
            extra["Refiner"] = refiner["model"]
            extra["Refiner switch at"] = f"{refiner['switch']:g}"
        loras = meta.request.get("loras") or []
        if loras:  # our own key: A1111's "Lora hashes" uses a hash of the tensors only, not the file sha256
            extra["LoRAs"] = ", ".join(f"{Path(lora['name']).stem}: {lora['scale']:g} (sha256 {lora['sha256'][:12]})"
                                       for lora in loras)
        if meta.tile:  # A1111 writes "Tiling: True" (both axes); the axes are ours
            extra["Tiling"] = "True"
            if meta.tile != "xy":
                extra["Tiling axes"] = meta.tile
        parameters = a1111_parameters(
            meta.full_prompt, meta.negative_prompt, steps=meta.steps,
            sampler=A1111_SAMPLER_NAMES.get(meta.scheduler, meta.scheduler), cfg=meta.cfg, seed=meta.seed,
            width=meta.width, height=meta.height, model=model_name, extra=extra)
        embedded = meta.model_dump(mode="json", exclude={"id"})
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", pnginfo=png_info(parameters, embedded), compress_level=4)
        return buffer.getvalue()

    # -- saving ---------------------------------------------------------------------------------
    def _project_dir(self, created: datetime, project: str) -> Path:
        return self.root / created.strftime("%Y-%m-%d") / slugify(project, fallback="default")

    def project_dir(self, project: str, when: datetime | None = None) -> Path:
        """artifacts/<yyyy-mm-dd>/<project-slug> for `when` (default: now, local time)."""
        return self._project_dir(when or datetime.now(timezone.utc).astimezone(), project)

    @staticmethod
    def _next_sequence(project_dir: Path) -> int:
        highest = 0
        if project_dir.is_dir():
            for child in project_dir.iterdir():
                match = _SEQ_RE.match(child.name)
                if match:
                    highest = max(highest, int(match.group(1)))
        return highest + 1

    def save_result(self, result: "RenderResult", *, batch_size: int = 1) -> list["Artifact"]:
        """One artifact per image in `result`, in seed order."""
        return [self.save(result, index, batch_size=batch_size) for index in range(len(result.images))]

    def save(self, result: "RenderResult", index: int, *, batch_size: int = 1) -> Artifact:
        """Write one image as an artifact. Its folder number is the story scene when there is one
        (so a storyboard reads 001-, 002-, ... in scene order), else the next free number."""
        created = datetime.now(timezone.utc).astimezone()
        request = result.request
        scene_slug = request.story.slug or slugify(request.story.description or request.prompt, max_length=32)

        def build(seq: int) -> tuple[bytes, ArtifactMeta]:
            started = time.perf_counter()
            result.timings.save_s = 0.0
            meta = self.build_meta(result, index, sequence=seq, created=created, batch_size=batch_size)
            png = self.encode_png(result.images[index].image, meta)
            meta.id = hashlib.sha256(png).hexdigest()
            meta.timings["save_s"] = round(time.perf_counter() - started, 4)
            return png, meta

        final, meta = self._write_folder(created, request.project, scene_slug, build, sequence=request.story.scene)
        artifact = Artifact(id=meta.id, path=final, meta=meta)
        for listener in self.listeners:
            try:
                listener(artifact)
            except Exception:  # a cache (memory index) failing must not lose the saved image
                log.exception("after-save hook failed for %s; `echo-os artifacts reindex` repairs caches", meta.id)
        return artifact

    def save_file(self, png: bytes, meta: ArtifactMeta, *, scene_slug: str) -> Artifact:
        """Keep an existing PNG byte-for-byte as an artifact (its id is the file's sha256), with `meta`.

        For images made elsewhere (`echo-os memory import`); meta.created dates the folder. Same atomic
        folder write and catalog row as `save`; listeners are not called (the importer embeds in batches).
        """
        meta.id = hashlib.sha256(png).hexdigest()

        def build(seq: int) -> tuple[bytes, ArtifactMeta]:
            meta.sequence = seq
            return png, meta

        final, meta = self._write_folder(datetime.fromisoformat(meta.created), meta.project, scene_slug, build)
        return Artifact(id=meta.id, path=final, meta=meta)

    def _write_folder(self, created: datetime, project: str, scene_slug: str,
                      build: Callable[[int], tuple[bytes, ArtifactMeta]], *,
                      sequence: int | None = None) -> tuple[Path, ArtifactMeta]:
        """The atomic artifact write both saves share: `build(seq)` makes the PNG and meta under the
        project's lock (seq: `sequence`, else the next free number), they go to a temporary folder,
        fsync, rename; then the catalog row. A failure leaves no folder and no row: when the row cannot be
        written (a full disk), the folder that was just renamed into place goes again, so the answer
        "nothing was saved" is true and no folder is left without its row."""
        catalog = self.catalog  # opened (and repaired, if it must be) before the folder exists
        project_dir = self._project_dir(created, project)
        project_dir.mkdir(parents=True, exist_ok=True)
        with staging_folder(self.root / STAGING_NAME) as tmp_dir, FileLock(str(project_dir / ".lock")):
            seq = sequence if sequence is not None else self._next_sequence(project_dir)
            png, meta = build(seq)
            _write_durably(tmp_dir / IMAGE_NAME, png)
            _write_durably(tmp_dir / META_NAME, meta.to_json().encode("utf-8"))
            _fsync_dir(tmp_dir)
            final = self._free_name(project_dir, f"{seq:03d}-{scene_slug}_{created:%Y-%m-%d_%H-%M-%S}")
            os.rename(tmp_dir, final)
            try:
                _fsync_dir(project_dir)
                catalog.upsert(meta.model_dump(mode="json"), str(final.relative_to(self.root)))
            except BaseException as error:
                shutil.rmtree(final, ignore_errors=True)  # saved and recorded, or neither
                full = disk_full(error)
                if full is not None:
                    raise full from error
                raise
        return final, meta

    @staticmethod
    def _free_name(parent: Path, name: str) -> Path:
        candidate, n = parent / name, 2
        while candidate.exists():
            candidate, n = parent / f"{name}-{n}", n + 1
        return candidate

    # -- reading --------------------------------------------------------------------------------
    def open(self, id_or_prefix: str) -> Artifact:
        row = self.catalog.resolve_id(id_or_prefix)
        folder = self.root / row.path
        if not (folder / META_NAME).exists():
            if not folder.is_dir():
                raise NotFoundError(f"artifact {row.id[:12]}'s folder {folder} is gone; "
                                    "`echo-os artifacts reindex` drops it from the catalog")
            return Artifact(id=row.id, path=folder, meta=restore_meta(folder, expected_id=row.id))
        return Artifact(id=row.id, path=folder, meta=read_any_meta(folder / META_NAME))

    def scan(self) -> list[tuple[AnyMeta, Path]]:
        """Every artifact folder on disk (meta.json next to image.png, or a video's: artifacts/video.py),
        skipping the temp area."""
        return scan_folders(self.root)

    def index_unlisted(self, project: str) -> int:
        """Catalog the project's folders that are on disk but not in the catalog (a process killed
        between the folder's rename and its catalog row). Returns how many were added."""
        known = {row.path for row in self.catalog.query(project=project)}
        added = 0
        slug = slugify(project, fallback="default")
        folders = {path.parent for name in (META_NAME, IMAGE_NAME) for path in self.root.glob(f"*/{slug}/*/{name}")}
        for folder in sorted(folders):
            relative = str(folder.relative_to(self.root))
            if relative in known or folder.parts[-3] == STAGING_NAME:
                continue
            try:
                meta = read_any_meta(folder / META_NAME) if (folder / META_NAME).exists() else restore_meta(folder)
            except (ValueError, EchoError) as error:
                log.warning("skipping %s: %s", folder, error)
                continue
            if slugify(meta.project, fallback="default") == slugify(project, fallback="default"):
                self.catalog.upsert(meta.model_dump(mode="json"), relative)
                added += 1
        return added

    def reindex(self, restored: list[Path] | None = None) -> int:
        """Rebuild the catalog from the folders; drop leftovers of interrupted writes (only orphans: a
        render running meanwhile keeps its staging folder). A missing meta.json is restored from its PNG
        (each such folder appended to `restored`)."""
        remove_orphan_staging(self.root / STAGING_NAME)
        # What the catalog knows each folder as: a PNG changed since then is not restored from.
        known = {Path(row.path).as_posix(): row.id for row in self.catalog.query()}
        rows = [(meta.model_dump(mode="json"), str(folder.relative_to(self.root)))
                for meta, folder in scan_folders(self.root, restored, known)]
        self.catalog.replace_all(rows)
        return len(rows)
