"""`echo-os animate ID`: a scene image -> an image-to-video clip -> a video artifact, as an engine call.

The clip is a RenderRequest with `output = "video"` and the image as its init_image (clip_render_request),
rendered through the one renderer (echo_os.render.scheduler.render_requests) by whichever engine of kind
"video" `auto` finds (engines/video.py: Stable Video Diffusion): progress, cancel and, for an API job, the
worker's exactly-once recording come with it. The renderer saves it (echo_os.artifacts.video.save_clip): the
clip's folder sits in the image's project folder, named after the scene, and holds clip.mp4 (H.264, yuv420p,
at the request's fps), poster.png and meta.json with parent_id = the image, its story fields, the seed and
every setting, and the model's weights record. `echo-os animatic --clips` plays it in place of the still.
Without --seed the clip takes the image's own seed, so animating the same image twice gives the same clip.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from echo_os.artifacts.video import CLIP_NAME
from echo_os.errors import UsageError

if TYPE_CHECKING:
    import threading

    from echo_os.artifacts.store import Artifact, ArtifactStore
    from echo_os.engines.base import Engine, ProgressEvent
    from echo_os.engines.video import ClipRequest
    from echo_os.render.requests import Device, Dtype, RenderRequest
    from echo_os.settings import Settings


@dataclass
class ClipArtifact:
    artifact: "Artifact"
    parent: "Artifact"
    video_path: object
    seconds: float


def clip_render_request(settings: "Settings", parent: "Artifact", clip: "ClipRequest") -> "RenderRequest":
    """The RenderRequest that makes `clip` from the image artifact `parent` (its prompt, project and story)."""
    from PIL import Image

    from echo_os.engines.video import ClipRequest, clip_size
    from echo_os.render.requests import InitImage, RenderRequest

    if getattr(parent.meta, "kind", None) == "video":
        raise UsageError(f"artifact {parent.id[:12]} is a video; `echo-os animate` takes an image artifact id.")
    clip.check()
    with Image.open(parent.image_path) as picture:
        width, height = clip_size(picture, clip)
    try:  # relative to the artifacts folder when it is inside it, so a moved workspace still finds it
        path = parent.image_path.resolve().relative_to(settings.artifacts_dir.resolve()).as_posix()
    except ValueError:
        path = str(parent.image_path)
    defaults = ClipRequest(seed=0)
    options = {name: getattr(clip, name) for name in ("frames", "fps", "motion_bucket", "noise_aug", "min_cfg",
                                                      "decode_chunk_size", "cpu_offload")
               if getattr(clip, name) != getattr(defaults, name)}
    return RenderRequest(prompt=parent.meta.prompt, output="video", model=clip.model, seed=clip.seed,
                         steps=clip.steps, cfg=clip.max_cfg, width=width, height=height,
                         # ClipRequest keeps the option's text; RenderRequest checks it is one of its values
                         device=cast("Device", clip.device), dtype=cast("Dtype", clip.dtype), options=options,
                         project=parent.meta.project, parent_id=parent.id,
                         story=parent.meta.story,
                         init_image=InitImage(artifact_id=parent.id, path=path, sha256=parent.id, strength=1.0))


def make_clip(settings: "Settings", artifact_id: str, request: "ClipRequest", *, store: "ArtifactStore",
              engine: "Engine | None" = None, progress: "Callable[[ProgressEvent], None] | None" = None,
              cancel: "threading.Event | None" = None) -> ClipArtifact:
    """Render and save the clip of `request` from the image `artifact_id` (engine: None, `auto`'s choice)."""
    from echo_os.render.scheduler import render_requests

    started = time.perf_counter()
    parent = store.open(artifact_id)
    render_request = clip_render_request(settings, parent, request)
    outcome = render_requests(settings, [render_request], store=store, engine=engine, progress=progress,
                              cancel=cancel)
    [artifact] = outcome.artifacts
    return ClipArtifact(artifact=artifact, parent=parent, video_path=artifact.path / CLIP_NAME,
                        seconds=time.perf_counter() - started)
