"""A reel: a short animatic of a few still artifacts, without a story (an asset plan's `animatic-N` task).

    artifact = make_reel(settings, store, "Armory", "longsword", [concept, texture, turnaround])
    artifact.path / "animatic.mp4"

Each still holds REEL_SECONDS under a slow camera move (push-in, pan, pull-out in turn), with the animatic's
crossfades at the cuts (echo_os/motion/animatic.py draws the frames, the H.264 encoder writes them), at
REEL_FPS. The result is a video artifact like an animatic (video_kind "animatic"): animatic.mp4, poster.png,
meta.json with the still -> time map and the stills as its sources; its duration is what a sound made after
it (the asset plan's sound-N task) lasts.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from echo_os.motion import animatic

if TYPE_CHECKING:
    from echo_os.artifacts.store import Artifact, ArtifactStore

REEL_SECONDS = 2.0
REEL_FPS = 12
REEL_FADE_S = 0.5
REEL_MOTIONS = ("push-in", "pan-right", "pull-out")


def make_reel(store: "ArtifactStore", project: str, title: str, stills: list["Artifact"],
              seconds: float = REEL_SECONDS) -> "Artifact":
    """Encode the stills (image artifacts, in order) as a reel video artifact of `project`."""
    from echo_os.artifacts.encode import CODEC, PIX_FMT, Mp4Writer, check_video_work
    from echo_os.artifacts.meta import EngineRecord, collect_versions
    from echo_os.artifacts.video import VideoFolder, VideoMeta

    if not stills:
        raise ValueError("a reel needs at least one still")
    scenes = [animatic.SceneSource(scene=number, slug=still.meta.story.slug or f"still-{number}",
                          description=still.meta.prompt, artifact_id=still.id, image=still.image_path,
                          duration=seconds, motion=REEL_MOTIONS[(number - 1) % len(REEL_MOTIONS)])
              for number, still in enumerate(stills, start=1)]
    options = animatic.AnimaticOptions(fps=REEL_FPS, fade=REEL_FADE_S)
    timeline = animatic.plan_timeline(scenes, options.fps, options.fade)
    size = animatic.output_size(options, scenes)
    total = timeline[-1].end
    check_video_work(*size, options.fps, total)
    started = time.perf_counter()
    with VideoFolder(store, project, "reel") as folder:
        poster = None
        with Mp4Writer(folder.path / animatic.VIDEO_NAME, *size, options.fps) as writer:
            for frame in animatic.animatic_frames(timeline, size, options.fps, options.fade, captions=False):
                writer.write(frame)
                poster = poster or frame
        encode_s = time.perf_counter() - started
        assert poster is not None
        poster.save(folder.path / "poster.png")
        meta = VideoMeta(
            video_kind="animatic", created="", project=project, prompt=title, width=size[0], height=size[1],
            fps=options.fps, frames=total, duration_s=round(total / options.fps, 3), codec="h264", pix_fmt=PIX_FMT,
            video=animatic.VIDEO_NAME,
            engine=EngineRecord(name="animatic", reason=f"PyAV {CODEC}: a reel of {len(stills)} stills"),
            sources=[still.id for still in stills],
            settings={"fps": options.fps, "size": f"{size[0]}x{size[1]}", "fade": options.fade, "reel": True,
                      "seconds_each": seconds},
            scenes=[{"scene": t.source.scene, "slug": t.source.slug, "description": t.source.description,
                     "start_frame": t.start, "frames": t.frames, "start_s": round(t.start / options.fps, 3),
                     "end_s": round(t.end / options.fps, 3), "duration_s": t.source.duration,
                     "motion": t.source.motion, "source": t.source.artifact_id, "clip": None} for t in timeline],
            versions=collect_versions(), timings={"encode_s": round(encode_s, 3)})
        return folder.commit(meta)
