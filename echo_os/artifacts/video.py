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
from typing import Any, Literal

from filelock import FileLock
from pydantic import BaseModel, ConfigDict, Field

from echo_os.artifacts.meta import META_VERSION, EngineRecord, ModelRecord
from echo_os.artifacts.store import META_NAME, Artifact, ArtifactStore, _fsync_dir, _write_durably
from echo_os.requests import StoryFields

POSTER_NAME = "poster.png"
VideoKind = Literal["animatic", "clip"]


class VideoMeta(BaseModel):
    """meta.json of a video artifact. The fields the catalog indexes (created, project, prompt, seed,
    width, height, engine, story, parent_id) mean what they mean for an image."""

    model_config = ConfigDict(extra="allow")

    meta_version: int = META_VERSION
    kind: Literal["video"] = "video"
    video_kind: VideoKind
    id: str = ""  # sha256 of the video file
    created: str
    project: str
    sequence: int = 0
    prompt: str  # what the catalog lists: the story title for an animatic, the scene prompt for a clip
    seed: int = 0
    width: int
    height: int
    fps: int
    frames: int
    duration_s: float
    codec: str = "h264"
    pix_fmt: str = "yuv420p"
    video: str  # file name inside the folder
    poster: str = POSTER_NAME
    captions: str | None = None  # .srt file name inside the folder, when captions were asked for
    engine: EngineRecord
    model: ModelRecord | None = None
    parent_id: str | None = None  # a clip's source image
    sources: list[str] = Field(default_factory=list)  # artifact ids the video is made from
    story: StoryFields = Field(default_factory=StoryFields)
    settings: dict[str, Any] = Field(default_factory=dict)
    scenes: list[dict[str, Any]] = Field(default_factory=list)  # animatic: the scene -> time map
    versions: dict[str, str] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict)
    request_key: str | None = None  # never a resume key: batch re-runs look for images only

    def to_json(self) -> str:
        import json

        return json.dumps(self.model_dump(mode="json"), ensure_ascii=False, indent=2, sort_keys=True) + "\n"

    @classmethod
    def read(cls, path: Path) -> "VideoMeta":
        return cls.model_validate_json(path.read_text(encoding="utf-8"))


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

    def commit(self, meta: VideoMeta) -> Artifact:
        video = self.path / meta.video
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
        return Artifact(id=meta.id, path=final, meta=meta)  # type: ignore[arg-type]
