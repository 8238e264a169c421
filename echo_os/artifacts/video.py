"""Video artifacts (an animatic, a scene clip): a folder with the MP4, a poster frame and meta.json.

    artifacts/<yyyy-mm-dd>/<project-slug>/<folder name>/{animatic.mp4 | clip.mp4, poster.png, meta.json[, *.srt]}

The id is the sha256 of the MP4 bytes, as an image's is of its PNG. The files are written by the caller
into a temporary folder (`VideoFolder.path`, under artifacts/.tmp/) so a long encode streams to disk;
`commit` hashes the video, writes meta.json, fsyncs and renames the folder into place in one step, then
adds the catalog row. A failure (or leaving the `with` block by an exception) leaves nothing listed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from echo_os.artifacts.meta import POSTER_NAME, VideoKind, VideoMeta  # noqa: F401  (they live with ArtifactMeta)
from echo_os.artifacts.store import (
    META_NAME,
    Artifact,
    ArtifactStore,
    _fsync_dir,
    _model_record,
    _write_durably,
)

if TYPE_CHECKING:
    from echo_os.artifacts.meta import AssetMeta
    from echo_os.render.requests import RenderRequest
    from echo_os.render.results import RenderResult

CLIP_NAME = "clip.mp4"


def is_video_meta(meta: dict) -> bool:
    return meta.get("kind") == "video"


class VideoFolder:
    """A video artifact being written: files go into `path`; `commit(meta)` puts it in place.

        with VideoFolder(store, project, "animatic") as folder:
            encode(..., folder.path / "animatic.mp4")
            artifact = folder.commit(meta)
    """

    def __init__(self, store: ArtifactStore, project: str, name: str, created: datetime | None = None):
        self.store = store
        self.project = project
        self.name = name
        self.created = created or datetime.now(timezone.utc).astimezone()
        tmp_root = store.root / ".tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        self.path = tmp_root / uuid.uuid4().hex
        self.path.mkdir()
        self.committed: Path | None = None

    def __enter__(self) -> "VideoFolder":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.committed is None:
            shutil.rmtree(self.path, ignore_errors=True)

    def content_file(self, meta) -> Path:
        """The file whose sha256 is the artifact's id (echo_os.artifacts.assets: the mesh or the sound)."""
        return self.path / meta.video

    def commit(self, meta: VideoMeta | AssetMeta) -> Artifact:
        video = self.content_file(meta)
        digest = hashlib.sha256()
        with open(video, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        meta.id = digest.hexdigest()
        meta.created = self.created.isoformat(timespec="microseconds")
        for child in self.path.iterdir():  # the encoder's files are closed; make them durable
            with open(child, "rb+") as handle:
                os.fsync(handle.fileno())
        _write_durably(self.path / META_NAME, meta.to_json().encode("utf-8"))
        _fsync_dir(self.path)
        project_dir = self.store.project_dir(self.project, self.created)
        project_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(project_dir / ".lock")):
            final = self.store._free_name(project_dir, f"{self.name}_{self.created:%Y-%m-%d_%H-%M-%S}")
            os.rename(self.path, final)
            _fsync_dir(project_dir)
        self.committed = final
        self.store.catalog.upsert(meta.model_dump(mode="json"), str(final.relative_to(self.store.root)))
        return Artifact(id=meta.id, path=final, meta=meta)


def output_request(result: "RenderResult", index: int) -> tuple["RenderRequest", str | None]:
    """Output `index` of `result` as a request of its own (its seed, count 1), and the id of its parent
    artifact: the init image's, else the request's parent_id. Clips and assets are saved from it."""
    rendered = result.images[index]
    request = result.request.model_copy(update={"seed": rendered.seed, "count": 1})
    parent_id = request.init_image.artifact_id if request.init_image is not None else request.parent_id
    return request, parent_id


def output_folder_name(request: "RenderRequest", suffix: str, fallback: str) -> str:
    """A clip's or an asset's folder name: <scene>-<slug>-<suffix>, or <slug>-<suffix> outside a story; the
    slug is the story's, else made from the prompt (`fallback` when the prompt gives none)."""
    from echo_os.artifacts.slugs import slugify

    story = request.story
    slug = story.slug or slugify(request.prompt, max_length=32, fallback=fallback)
    return f"{story.scene:03d}-{slug}-{suffix}" if story.scene is not None else f"{slug}-{suffix}"


def save_clip(store: ArtifactStore, result: "RenderResult", index: int) -> Artifact:
    """Save output `index` of a video engine's result (RenderedImage.video) as a clip artifact: clip.mp4 (H.264,
    yuv420p, at the clip's fps), poster.png (the first frame) and meta.json, in the source image's project
    folder, named after its scene, with parent_id = the source image (the request's init_image)."""
    import time

    from echo_os.artifacts.encode import PIX_FMT, Mp4Writer
    from echo_os.artifacts.meta import EngineRecord, collect_versions
    from echo_os.render.requests import image_request_key

    started = time.perf_counter()
    rendered = result.images[index]
    video = rendered.video
    if video is None:
        raise ValueError(f"output {index} of the result is an image, not a clip")
    request, parent_id = output_request(result, index)
    sequence = 0
    if parent_id is not None:
        sequence = store.open(parent_id).meta.sequence
    story = request.story
    name = output_folder_name(request, "clip", fallback="image")
    width, height = rendered.image.size
    # Recorded as an image's meta.json records them (VideoMeta keeps extra fields).
    extra: dict[str, Any] = {"device": result.runtime.device, "request": request.model_dump(mode="json")}
    with VideoFolder(store, request.project, name) as folder:
        with Mp4Writer(folder.path / CLIP_NAME, width - width % 2, height - height % 2, video.fps) as writer:
            for frame in video.frames:
                writer.write(frame.crop((0, 0, writer.width, writer.height)))
        rendered.image.save(folder.path / POSTER_NAME)
        runtime, model = result.runtime, result.runtime.model
        meta = VideoMeta(
            video_kind="clip", created="", project=request.project, sequence=sequence, prompt=request.prompt,
            seed=rendered.seed, width=writer.width, height=writer.height, fps=video.fps, frames=len(video.frames),
            duration_s=round(len(video.frames) / video.fps, 3), pix_fmt=PIX_FMT, video=CLIP_NAME,
            engine=EngineRecord(name=runtime.engine, reason=runtime.reason),
            model=_model_record(model),
            parent_id=parent_id, sources=[parent_id] if parent_id else [], story=story, settings=video.settings,
            versions=collect_versions(), request_key=image_request_key(request),
            timings={**result.timings.as_dict(), "save_s": round(time.perf_counter() - started, 4)},
            **extra)
        return folder.commit(meta)
