"""The animatic: a story's scene images in scene order, timed, with camera moves and crossfades, as an MP4.

    result = make_animatic(settings, "Lighthouse Keeper", AnimaticOptions(fps=24, fade=0.5))
    result.artifact.path / "animatic.mp4"

Where things come from:
- the scenes and their images: the project's newest story.json (written by `echo-os batch`), one image per
  scene (the scene's `kept` artifact when story.json names one, else its first);
- each scene's `duration` (seconds, default 3) and `motion` (default: from the scene's camera words, else a
  slow push-in) from the story.csv that story.json names (or --story), read again now, so pacing can be
  changed in the CSV and the animatic remade without rendering anything;
- with `clips`, a scene that has an image-to-video clip (`echo-os animate`) plays the clip instead of its
  still (its newest clip; held on its last frame when the scene lasts longer).

Timing: scene i covers frames [round(T_i * fps), round(T_{i+1} * fps)) where T_i is the sum of the durations
before it, so the video has round(sum * fps) frames. A crossfade of `fade` seconds is centred on each cut
and takes half from each side: the total length does not change.

The result is a video artifact (artifacts/video.py): animatic.mp4, poster.png, meta.json with the scene ->
time map, the source artifact ids and the settings, and animatic.srt with captions (one cue per scene)
when asked for; the captions are then also burnt into the frames.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from echo_os.artifacts.encode import check_video_work
from echo_os.errors import OptionError, UsageError

if TYPE_CHECKING:
    import threading

    from echo_os.artifacts.store import Artifact, ArtifactStore
    from echo_os.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_DURATION_S = 3.0
DEFAULT_FPS = 24
DEFAULT_FADE_S = 0.5
MAX_FPS = 120
VIDEO_NAME = "animatic.mp4"
CAPTIONS_NAME = "animatic.srt"

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class AnimaticOptions:
    fps: int = DEFAULT_FPS
    size: tuple[int, int] | None = None  # None: the first scene image's size (rounded down to even sides)
    fade: float = DEFAULT_FADE_S
    captions: bool = False
    clips: bool = False
    story: Path | None = None  # story.csv to read durations and motions from (default: story.json's source)
    crf: int = 18
    preset: str = "veryfast"
    sound: bool = False  # mux the soundtrack (echo_os.motion.soundtrack: one cue per scene) as AAC

    def check(self) -> None:
        if not 1 <= self.fps <= MAX_FPS:
            raise OptionError(f"--fps must be between 1 and {MAX_FPS}, got {self.fps}.", "fps")
        if not math.isfinite(self.fade) or self.fade < 0:
            raise OptionError(f"--fade must be 0 or more seconds, got {self.fade:g}.", "fade")
        if self.size is not None:
            from echo_os.artifacts.encode import check_video_size

            check_video_size(*self.size)


@dataclass(frozen=True)
class SceneSource:
    """One scene of the animatic: its still (and clip), how long it stays and how the camera moves."""

    scene: int
    slug: str
    description: str
    artifact_id: str
    image: Path
    duration: float
    motion: str  # one of storyboard.MOTIONS, or "clip" when a clip plays instead of the still
    clip_id: str | None = None
    clip: Path | None = None
    clip_fps: int | None = None


@dataclass(frozen=True)
class TimedScene:
    source: SceneSource
    start: int  # first frame
    frames: int

    @property
    def end(self) -> int:
        return self.start + self.frames


@dataclass(frozen=True)
class StorySources:
    title: str
    project: str
    story_json: Path
    storyboard: Path | None
    scenes: list[SceneSource]


@dataclass
class AnimaticResult:
    artifact: "Artifact"
    video: Path
    captions: Path | None
    frames: int
    encode_s: float
    out: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.encode_s if self.encode_s > 0 else 0.0


# ---- where the scenes come from ----------------------------------------------------------------------

def find_story_json(settings: "Settings", project: str) -> Path:
    """The project's newest story.json (by its `created`), or a UsageError saying how to make one."""
    from echo_os.artifacts.slugs import slugify
    from echo_os.story.render import STORY_JSON

    slug = slugify(project, fallback="default")
    found: list[tuple[str, Path]] = []
    for path in settings.artifacts_dir.glob(f"*/{slug}/{STORY_JSON}"):
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            log.warning("skipping %s: %s", path, error)
            continue
        if document.get("project") == project:
            found.append((str(document.get("created", "")), path))
    if not found:
        raise UsageError(f"project {project!r} has no rendered scenes (no story.json for it in "
                         f"{settings.artifacts_dir}); render the story first: echo-os batch {project!r} story.csv")
    return max(found)[1]


def _storyboard_rows(path: Path) -> dict[int, object]:
    from echo_os.story.problems import ProblemList
    from echo_os.story.storyboard import KnownIds, read_storyboard

    problems = ProblemList()
    # Ids were checked against the bible when the story was planned; here only timing and motion matter.
    rows = read_storyboard(path, problems, ids=KnownIds(check=False, csv_name=path.name))
    problems.raise_if_any()
    return {row.scene: row for row in rows}


def _resolve_source(text: str, settings: "Settings") -> Path | None:
    path = Path(text).expanduser()
    for candidate in ([path] if path.is_absolute() else [Path.cwd() / path, settings.home / path]):
        if candidate.is_file():
            return candidate
    return None


def load_story_sources(settings: "Settings", store: "ArtifactStore", project: str,
                       options: AnimaticOptions) -> StorySources:
    """The scenes of the project's newest story in order, with their images, durations, motions (and clips)."""
    from echo_os.artifacts.store import IMAGE_NAME
    from echo_os.motion.moves import default_motion

    story_json = find_story_json(settings, project)
    document = json.loads(story_json.read_text(encoding="utf-8"))
    scenes = document.get("scenes") or []
    if not scenes:
        raise UsageError(f"project {project!r} has no scenes in {story_json}; render the story first with "
                         "`echo-os batch`.")
    storyboard: Path | None = None
    if options.story is not None:
        storyboard = Path(options.story)
        if not storyboard.is_file():
            raise OptionError(f"--story {storyboard}: file not found.", "story")
    elif document.get("kind") == "storyboard":
        storyboard = _resolve_source(str(document.get("source", "")), settings)
        if storyboard is None:
            raise UsageError(f"the storyboard {document.get('source')!r} named in {story_json} is not there; pass "
                             "--story PATH/story.csv (durations and motions are read from it).")
    rows = _storyboard_rows(storyboard) if storyboard is not None else {}
    clips = _newest_clips(store, project) if options.clips else {}
    sources = []
    for entry in scenes:
        number = int(entry["scene"])
        ids, paths = entry.get("artifacts") or [], entry.get("paths") or []
        if not ids:
            raise UsageError(f"scene {number} of {project!r} has no image in {story_json}; re-run `echo-os batch`.")
        kept = entry.get("kept") or ids[0]
        index = ids.index(kept) if kept in ids else 0
        image = settings.artifacts_dir / paths[index] / IMAGE_NAME
        if not image.is_file():
            raise UsageError(f"scene {number}: its image {image} is missing; re-run `echo-os batch` to render it.")
        row = rows.get(number)
        camera = getattr(row, "camera", None) or _camera_of(image.parent)
        motion = (getattr(row, "motion", None) or default_motion(camera))
        duration = getattr(row, "duration", None) or DEFAULT_DURATION_S
        clip = clips.get(ids[index])
        sources.append(SceneSource(
            scene=number, slug=str(entry.get("slug") or ""), description=str(entry.get("description") or ""),
            artifact_id=ids[index], image=image, duration=float(duration),
            motion="clip" if clip else motion, clip_id=clip[0] if clip else None,
            clip=clip[1] if clip else None, clip_fps=clip[2] if clip else None))
    return StorySources(title=str(document.get("title") or project), project=project, story_json=story_json,
                        storyboard=storyboard, scenes=sources)


def clip_notes(scenes: list[SceneSource], project: str) -> list[str]:
    """What --clips used: which scenes play a clip and which their still, or that no scene has a clip."""
    with_clip = [s.scene for s in scenes if s.clip is not None]
    stills = [s.scene for s in scenes if s.clip is None]
    if not with_clip:
        return [f"--clips: no scene of {project!r} has a clip yet, so every scene is its still; make one with "
                "`echo-os animate ID` (ID: a scene's image)"]
    if stills:
        return [f"--clips: scenes {', '.join(map(str, with_clip))} play their clip; scenes "
                f"{', '.join(map(str, stills))} have none and are their still"]
    return []


def _camera_of(folder: Path) -> str | None:
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return (meta.get("story") or {}).get("camera")


def _newest_clips(store: "ArtifactStore", project: str) -> dict[str, tuple[str, Path, int]]:
    """parent image id -> (clip id, clip.mp4, fps) of its newest clip in the project."""
    found: dict[str, tuple[str, Path, int]] = {}
    for row in store.catalog.query(project=project):  # newest first
        meta = row.meta
        if meta.get("kind") == "video" and meta.get("video_kind") == "clip" and row.parent_id:
            if row.parent_id not in found:
                found[row.parent_id] = (row.id, store.root / row.path / meta["video"], int(meta["fps"]))
    return found


# ---- timing ----------------------------------------------------------------------------------------

def plan_timeline(scenes: list[SceneSource], fps: int, fade: float) -> list[TimedScene]:
    """Frame ranges per scene; a UsageError when a scene is shorter than a frame or than the crossfade."""
    timeline, elapsed = [], 0.0
    for source in scenes:
        start = round(elapsed * fps)
        elapsed += source.duration
        frames = round(elapsed * fps) - start
        if frames < 1:
            raise UsageError(f"scene {source.scene}: duration {source.duration:g} s is shorter than one frame at "
                             f"{fps} fps; make it longer in story.csv.")
        timeline.append(TimedScene(source=source, start=start, frames=frames))
    shortest = min(timeline, key=lambda timed: timed.source.duration)
    if len(timeline) > 1 and fade > shortest.source.duration:
        raise OptionError(f"--fade {fade:g} is longer than scene {shortest.source.scene} "
                          f"({shortest.source.duration:g} s); use a shorter fade or a longer scene.", "fade")
    return timeline


def fade_frames(fade: float, fps: int) -> int:
    """Frames each side of a cut that take part in the crossfade."""
    return int(round(fade * fps / 2))


# ---- frames ----------------------------------------------------------------------------------------

class SceneFrames:
    """Frames of one scene at the output size: its still under the camera move, or its clip, with the
    caption on top. Out-of-range frame numbers hold the first or last frame (used by crossfades)."""

    def __init__(self, timed: TimedScene, size: tuple[int, int], fps: int, caption: bool):
        from PIL import Image

        self.timed = timed
        self.size = size
        self.fps = fps
        source = timed.source
        with Image.open(source.image) as image:
            self.still = image.convert("RGB")
        self.clip_frames: list | None = None
        if source.clip is not None:
            from echo_os.artifacts.encode import read_frames

            self.clip_frames = [Image.fromarray(array) for array in read_frames(source.clip)]
        self.caption = caption_overlay(source.description, size) if caption and source.description else None
        self._last: tuple | None = None

    def frame(self, index: int):
        from PIL import Image

        from echo_os.motion.moves import cover_box, move_box

        timed = self.timed
        if self.clip_frames:
            seconds = max(0, index) / self.fps
            picture = self.clip_frames[min(int(seconds * (timed.source.clip_fps or self.fps)),
                                           len(self.clip_frames) - 1)]
            box = cover_box(picture.size, self.size)
        else:
            picture = self.still
            progress = index / (timed.frames - 1) if timed.frames > 1 else 0.0
            box = move_box(timed.source.motion, progress, picture.size, self.size)
        if self._last is not None and self._last[0] is picture and self._last[1] == box:
            return self._last[2]  # a static still: every frame is the same (frames are never changed in place)
        frame = picture.resize(self.size, Image.Resampling.BILINEAR, box=box)
        if self.caption is not None:
            band, top = self.caption
            frame.paste(band, (0, top), band)
        self._last = (picture, box, frame)
        return frame


def caption_overlay(text: str, size: tuple[int, int]):
    """`text` on a translucent dark band, wrapped to the frame's width: (band RGBA image, its top row)."""
    from PIL import Image, ImageDraw

    from echo_os.fonts import drawing_font

    width, height = size
    font_size = max(12, height // 24)
    font = drawing_font(font_size)
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    lines, words = [], text.split()
    line = ""
    for word in words:
        attempt = f"{line} {word}".strip()
        if line and draw.textlength(attempt, font=font) > width * 0.9:
            lines.append(line)
            line = word
        else:
            line = attempt
    if line:
        lines.append(line)
    lines = lines[:3]
    line_height = int(font_size * 1.3)
    band_top = height - line_height * len(lines) - font_size
    draw.rectangle((0, band_top, width, height), fill=(0, 0, 0, 150))
    y = band_top + font_size // 2
    for line in lines:
        draw.text(((width - draw.textlength(line, font=font)) / 2, y), line, font=font, fill=(255, 255, 255, 255))
        y += line_height
    return layer.crop((0, band_top, width, height)), band_top


def animatic_frames(timeline: list[TimedScene], size: tuple[int, int], fps: int, fade: float,
                    captions: bool) -> Iterator:
    """Every frame of the animatic in order, as PIL images of `size`."""
    from PIL import Image

    half = fade_frames(fade, fps) if len(timeline) > 1 else 0
    loaded: dict[int, SceneFrames] = {}

    def scene(index: int) -> SceneFrames:
        if index not in loaded:
            for old in [key for key in loaded if key < index - 1]:
                del loaded[old]  # only the scene being left and the one coming are kept
            loaded[index] = SceneFrames(timeline[index], size, fps, captions)
        return loaded[index]

    for index, timed in enumerate(timeline):
        for frame_number in range(timed.start, timed.end):
            local = frame_number - timed.start
            frame = scene(index).frame(local)
            if half:
                if index + 1 < len(timeline) and frame_number >= timed.end - half:  # fading out to the next
                    mix = (frame_number - (timed.end - half) + 0.5) / (2 * half)
                    frame = Image.blend(frame, scene(index + 1).frame(frame_number - timed.end), mix)
                elif index > 0 and local < half:  # fading in from the previous
                    mix = (local + half + 0.5) / (2 * half)
                    before = timeline[index - 1]
                    frame = Image.blend(scene(index - 1).frame(frame_number - before.start), frame, mix)
            yield frame


def srt_text(timeline: list[TimedScene], fps: int) -> str:
    """One SubRip cue per scene with a description, timed to the scene's frames."""

    def stamp(frame: int) -> str:
        millis = round(frame * 1000 / fps)
        hours, millis = divmod(millis, 3_600_000)
        minutes, millis = divmod(millis, 60_000)
        seconds, millis = divmod(millis, 1000)
        return f"{hours:02d}:{minutes:02d}:{seconds:02d},{millis:03d}"

    cues: list[str] = []
    for timed in timeline:
        text = " ".join(timed.source.description.split())
        if text:
            cues.append(f"{len(cues) + 1}\n{stamp(timed.start)} --> {stamp(timed.end)}\n{text}\n")
    return "\n".join(cues)


# ---- the whole thing -------------------------------------------------------------------------------

def output_size(options: AnimaticOptions, scenes: list[SceneSource]) -> tuple[int, int]:
    if options.size is not None:
        return options.size
    from PIL import Image

    with Image.open(scenes[0].image) as image:
        width, height = image.size
    return max(16, width - width % 2), max(16, height - height % 2)


@dataclass(frozen=True)
class AnimaticPlan:
    """What an animatic of the project would be now: its scenes, frame count and size (nothing encoded)."""

    scenes: int
    frames: int
    size: tuple[int, int]


def check_animatic(settings: "Settings", project: str, options: AnimaticOptions) -> AnimaticPlan:
    """Everything make_animatic checks before encoding (the options, the story, its images, durations and
    motions, the fade against the shortest scene), without a store: the HTTP API's check at submit time.
    Clips only change what a scene plays, not its timing, so they are not looked up here."""
    options.check()
    from dataclasses import replace

    sources = load_story_sources(settings, None, project, replace(options, clips=False))  # type: ignore[arg-type]
    timeline = plan_timeline(sources.scenes, options.fps, options.fade)
    size = output_size(options, sources.scenes)
    check_video_work(*size, options.fps, timeline[-1].end)
    return AnimaticPlan(scenes=len(timeline), frames=timeline[-1].end, size=size)


def make_animatic(settings: "Settings", project: str, options: AnimaticOptions | None = None, *,
                  store: "ArtifactStore | None" = None, out: Path | None = None,
                  progress: Progress | None = None, cancel: "threading.Event | None" = None) -> AnimaticResult:
    """Encode the project's animatic as a video artifact (and copy it to `out` when given).

    `cancel` is looked at before each frame: once set, CancelledError is raised and nothing is written
    (the temporary folder goes, no artifact is listed)."""
    from echo_os.artifacts.encode import CODEC, PIX_FMT, Mp4Writer
    from echo_os.artifacts.meta import EngineRecord, collect_versions
    from echo_os.artifacts.store import ArtifactStore
    from echo_os.artifacts.video import VideoFolder, VideoMeta
    from echo_os.errors import CancelledError

    options = options or AnimaticOptions()
    options.check()
    own_store = store is None
    store = store or ArtifactStore(settings)
    try:
        # 1. Everything is checked before anything is written.
        sources = load_story_sources(settings, store, project, options)
        timeline = plan_timeline(sources.scenes, options.fps, options.fade)
        size = output_size(options, sources.scenes)
        check_video_work(*size, options.fps, timeline[-1].end)  # size, fps, length, memory: before encoding
        if out is not None and out.is_dir():
            raise OptionError(f"--out {out} is a folder; give a file name such as {out / 'animatic.mp4'}.", "out")
        total = timeline[-1].end
        cue_ids: list[str] = []
        audio = None
        if options.sound:  # the cues (rendered now, or found by resume), mixed at the same cut points
            from echo_os.motion.soundtrack import SAMPLE_RATE, cue_file, make_soundtrack, mix_track, read_cue

            cues = make_soundtrack(settings, project, story_cues(settings, project), store=store, cancel=cancel)
            cue_ids = [artifact.id for _, artifact in cues]
            audio = (mix_track(timeline, [read_cue(cue_file(a)) for _, a in cues], options.fps,
                               options.fade), SAMPLE_RATE)
        # 2. Encode into the artifact's temporary folder.
        started = time.perf_counter()
        with VideoFolder(store, project, "animatic") as folder:
            poster = None
            with Mp4Writer(folder.path / VIDEO_NAME, *size, options.fps, crf=options.crf,
                           preset=options.preset, audio=audio) as writer:
                for done, frame in enumerate(animatic_frames(timeline, size, options.fps, options.fade,
                                                             options.captions), start=1):
                    if cancel is not None and cancel.is_set():
                        raise CancelledError("animatic cancelled; nothing was saved")
                    writer.write(frame)
                    if poster is None:
                        poster = frame
                    if progress is not None:
                        progress("encode", done, total)
            encode_s = time.perf_counter() - started
            assert poster is not None  # a timeline has at least one frame
            poster.save(folder.path / "poster.png")
            if options.captions:
                (folder.path / CAPTIONS_NAME).write_text(srt_text(timeline, options.fps), encoding="utf-8")
            # 3. meta.json: the scene -> time map, the sources, the settings; then the folder goes in place.
            meta = VideoMeta(
                video_kind="animatic", created="", project=project, prompt=sources.title,
                width=size[0], height=size[1], fps=options.fps, frames=total, duration_s=round(total / options.fps, 3),
                codec="h264", pix_fmt=PIX_FMT, video=VIDEO_NAME,
                captions=CAPTIONS_NAME if options.captions else None,
                engine=EngineRecord(name="animatic", reason=f"PyAV {CODEC}"),
                sources=[timed.source.artifact_id for timed in timeline]
                + [timed.source.clip_id for timed in timeline if timed.source.clip_id] + cue_ids,
                settings={"fps": options.fps, "size": f"{size[0]}x{size[1]}", "fade": options.fade,
                          "captions": options.captions, "clips": options.clips, "crf": options.crf,
                          "sound": options.sound, "sound_cues": cue_ids,
                          "preset": options.preset, "story_json": str(sources.story_json),
                          "storyboard": str(sources.storyboard) if sources.storyboard else None},
                scenes=[{"scene": t.source.scene, "slug": t.source.slug, "description": t.source.description,
                         "start_frame": t.start, "frames": t.frames, "start_s": round(t.start / options.fps, 3),
                         "end_s": round(t.end / options.fps, 3), "duration_s": t.source.duration,
                         "motion": t.source.motion, "source": t.source.artifact_id, "clip": t.source.clip_id}
                        for t in timeline],
                versions=collect_versions(), timings={"encode_s": round(encode_s, 3)})
            artifact = folder.commit(meta)
        video = artifact.path / VIDEO_NAME
        captions = artifact.path / CAPTIONS_NAME if options.captions else None
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(video, out)
            if captions is not None:
                shutil.copyfile(captions, out.with_suffix(".srt"))
        return AnimaticResult(artifact=artifact, video=video, captions=captions, frames=total, encode_s=encode_s,
                              out=out, notes=clip_notes(sources.scenes, project) if options.clips else [])
    finally:
        if own_store:
            store.close()


def story_cues(settings: "Settings", project: str) -> list:
    """The sound cue of each scene of the project's story (echo_os.motion.soundtrack.scene_cues): its durations
    and storyboard rows read as the animatic reads them."""
    from echo_os.motion.soundtrack import scene_cues

    sources = load_story_sources(settings, None, project, AnimaticOptions())  # type: ignore[arg-type]
    rows = _storyboard_rows(sources.storyboard) if sources.storyboard is not None else {}
    return scene_cues(sources.scenes, rows)
