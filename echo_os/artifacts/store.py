"""The artifact store: one folder per image, written atomically, then indexed in the catalog.

Layout: artifacts/<yyyy-mm-dd>/<project-slug>/<seq>-<scene-slug>_<yyyy-mm-dd_HH-MM-SS>/{image.png,meta.json}.
A folder is built under artifacts/.tmp/, every file fsynced, then renamed into place in one step, so a
killed process leaves either a whole artifact or nothing that is listed. The folder is the source of
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
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from filelock import FileLock

from echo_os.artifacts.catalog import Catalog
from echo_os.artifacts.meta import ArtifactMeta, EngineRecord, ModelRecord, collect_versions, negative_prompt_passed
from echo_os.artifacts.pnginfo import A1111_SAMPLER_NAMES, a1111_parameters, png_info
from echo_os.artifacts.slugs import slugify
from echo_os.requests import image_request_key
from echo_os.settings import Settings

if TYPE_CHECKING:
    from echo_os.results import RenderResult

log = logging.getLogger(__name__)

IMAGE_NAME = "image.png"
META_NAME = "meta.json"
_SEQ_RE = re.compile(r"^(\d+)-")


@dataclass(frozen=True)
class Artifact:
    id: str
    path: Path  # the artifact folder
    meta: ArtifactMeta

    @property
    def image_path(self) -> Path:
        return self.path / IMAGE_NAME

    @property
    def meta_path(self) -> Path:
        return self.path / META_NAME

    @classmethod
    def from_row(cls, root: Path, row) -> "Artifact":
        """The artifact a catalog row describes (root: the artifacts folder its path is relative to)."""
        return cls(id=row.id, path=root / row.path, meta=ArtifactMeta.model_validate(row.meta))

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


class ArtifactStore:
    def __init__(self, settings: Settings, catalog: Catalog | None = None):
        self.settings = settings
        self.root = settings.artifacts_dir
        self.root.mkdir(parents=True, exist_ok=True)
        self._catalog = catalog
        self.listeners: list[SaveListener] = []

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = Catalog(self.settings.catalog_path)
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
            seed=seed,
            steps=request.steps,
            cfg=request.cfg,
            width=request.width,
            height=request.height,
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
            story=request.story,
            request=one_image.model_dump(mode="json"),
            request_key=image_request_key(one_image),
            ip_adapter=_model_record(runtime.ip_adapter),
            vae_tiling=runtime.vae_tiling,
            profile=runtime.profile,
            provenance=result.images[index].provenance,
        )

    @staticmethod
    def encode_png(image, meta: ArtifactMeta) -> bytes:
        model_name = meta.model.name if meta.model else meta.engine.name
        extra = {"Engine": meta.engine.name, "Version": f"echo-os {meta.versions.get('echo_os', '')}"}
        loras = meta.request.get("loras") or []
        if loras:  # our own key: A1111's "Lora hashes" uses a hash of the tensors only, not the file sha256
            extra["LoRAs"] = ", ".join(f"{Path(lora['name']).stem}: {lora['scale']:g} (sha256 {lora['sha256'][:12]})"
                                       for lora in loras)
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
        fsync, rename; then the catalog row. A failure leaves no folder and no row."""
        project_dir = self._project_dir(created, project)
        project_dir.mkdir(parents=True, exist_ok=True)
        tmp_root = self.root / ".tmp"
        tmp_root.mkdir(exist_ok=True)
        tmp_dir = tmp_root / uuid.uuid4().hex
        tmp_dir.mkdir()
        try:
            with FileLock(str(project_dir / ".lock")):
                seq = sequence if sequence is not None else self._next_sequence(project_dir)
                png, meta = build(seq)
                _write_durably(tmp_dir / IMAGE_NAME, png)
                _write_durably(tmp_dir / META_NAME, meta.to_json().encode("utf-8"))
                _fsync_dir(tmp_dir)
                final = self._free_name(project_dir, f"{seq:03d}-{scene_slug}_{created:%Y-%m-%d_%H-%M-%S}")
                os.rename(tmp_dir, final)
                _fsync_dir(project_dir)
        except BaseException:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            raise
        self.catalog.upsert(meta.model_dump(mode="json"), str(final.relative_to(self.root)))
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
        return Artifact(id=row.id, path=folder, meta=ArtifactMeta.read(folder / META_NAME))

    def scan(self) -> list[tuple[ArtifactMeta, Path]]:
        """Every artifact folder on disk (meta.json next to image.png), skipping the temp area."""
        found = []
        for meta_path in sorted(self.root.glob(f"*/*/*/{META_NAME}")):
            if meta_path.parts[-4] == ".tmp":
                continue
            try:
                found.append((ArtifactMeta.read(meta_path), meta_path.parent))
            except ValueError as error:
                log.warning("skipping %s: unreadable meta.json (%s)", meta_path, error)
        return found

    def index_unlisted(self, project: str) -> int:
        """Catalog the project's folders that are on disk but not in the catalog (a process killed
        between the folder's rename and its catalog row). Returns how many were added."""
        known = {row.path for row in self.catalog.query(project=project)}
        added = 0
        for meta_path in sorted(self.root.glob(f"*/{slugify(project, fallback='default')}/*/{META_NAME}")):
            relative = str(meta_path.parent.relative_to(self.root))
            if relative in known or meta_path.parts[-4] == ".tmp":
                continue
            try:
                meta = ArtifactMeta.read(meta_path)
            except ValueError as error:
                log.warning("skipping %s: unreadable meta.json (%s)", meta_path, error)
                continue
            if meta.project == project:
                self.catalog.upsert(meta.model_dump(mode="json"), relative)
                added += 1
        return added

    def reindex(self) -> int:
        """Rebuild the catalog from the folders; drop leftovers of interrupted writes."""
        shutil.rmtree(self.root / ".tmp", ignore_errors=True)
        rows = [(meta.model_dump(mode="json"), str(folder.relative_to(self.root))) for meta, folder in self.scan()]
        self.catalog.replace_all(rows)
        return len(rows)
