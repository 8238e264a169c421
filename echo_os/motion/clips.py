"""`echo-os animate ID`: a scene image -> an image-to-video clip (engines/video.py) -> a video artifact.

The clip's folder sits in the image's project folder, named after the scene, and holds clip.mp4 (H.264,
yuv420p, at the request's fps), poster.png and meta.json with parent_id = the image, its story fields, the
seed and every setting, and the model's weights record. `echo-os animatic --clips` plays it in place of the
still. Without --seed the clip takes the image's own seed, so animating the same image twice gives the same clip.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from echo_os.errors import UsageError

if TYPE_CHECKING:
    import threading

    from echo_os.artifacts.store import Artifact, ArtifactStore
    from echo_os.engines.base import ProgressEvent
    from echo_os.engines.video import ClipRequest, VideoEngine
    from echo_os.settings import Settings

CLIP_NAME = "clip.mp4"


@dataclass
class ClipArtifact:
    artifact: "Artifact"
    parent: "Artifact"
    video_path: object
    seconds: float


def make_clip(settings: "Settings", artifact_id: str, request: "ClipRequest", *, store: "ArtifactStore",
              engine: "VideoEngine | None" = None, progress: "Callable[[ProgressEvent], None] | None" = None,
              cancel: "threading.Event | None" = None) -> ClipArtifact:
    from PIL import Image

    from echo_os.artifacts.meta import EngineRecord, ModelRecord, collect_versions
    from echo_os.artifacts.video import VideoFolder, VideoMeta
    from echo_os.engines.video import VideoEngine
    from echo_os.motion.encode import PIX_FMT, Mp4Writer

    parent = store.open(artifact_id)
    if getattr(parent.meta, "kind", None) == "video":
        raise UsageError(f"artifact {parent.id[:12]} is a video; `echo-os animate` takes an image artifact id.")
    request.check()
    engine = engine or VideoEngine(settings)
    with Image.open(parent.image_path) as picture:
        image = picture.convert("RGB")
    started = time.perf_counter()
    clip = engine.render(image, request, progress=progress, cancel=cancel)
    story = parent.meta.story
    from echo_os.artifacts.slugs import slugify

    slug = story.slug or slugify(parent.meta.prompt, max_length=32, fallback="image")
    name = f"{story.scene:03d}-{slug}-clip" if story.scene is not None else f"{slug}-clip"
    with VideoFolder(store, parent.meta.project, name) as folder:
        with Mp4Writer(folder.path / CLIP_NAME, clip.width - clip.width % 2, clip.height - clip.height % 2,
                       request.fps) as writer:
            for frame in clip.frames:
                writer.write(frame.crop((0, 0, writer.width, writer.height)))
        clip.frames[0].save(folder.path / "poster.png")
        model = clip.runtime.model
        meta = VideoMeta(
            video_kind="clip", created="", project=parent.meta.project, sequence=parent.meta.sequence,
            prompt=parent.meta.prompt, seed=request.seed, width=writer.width, height=writer.height, fps=request.fps,
            frames=len(clip.frames), duration_s=round(len(clip.frames) / request.fps, 3), pix_fmt=PIX_FMT,
            video=CLIP_NAME, engine=EngineRecord(name=clip.runtime.engine, reason="echo-os animate"),
            model=ModelRecord(name=model.name, source=model.source, kind=model.kind,
                              weights_sha256=model.weights_sha256),
            parent_id=parent.id, sources=[parent.id], story=story,
            settings={**dataclasses.asdict(request), "width": clip.width, "height": clip.height,
                      "device": clip.runtime.device, "dtype": clip.runtime.dtype,
                      "decode_chunk_size_used": clip.runtime.decode_chunk_size},
            versions=collect_versions(), timings={**clip.timings, "total_s": round(time.perf_counter() - started, 3)})
        artifact = folder.commit(meta)
    return ClipArtifact(artifact=artifact, parent=parent, video_path=artifact.path / CLIP_NAME,
                        seconds=time.perf_counter() - started)
