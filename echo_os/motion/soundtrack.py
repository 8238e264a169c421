"""A story's soundtrack: one sound cue per scene at that scene's duration, and the mixed track of an animatic.

    echo-os soundtrack "Lighthouse Keeper"          # one audio artifact per scene
    echo-os animatic "Lighthouse Keeper" --sound    # the animatic with the cues muxed in (AAC)

The scenes and their durations come from the same place as the animatic's (echo_os.motion.animatic:
the newest story.json and the story.csv it names, read again now), so a change of pacing in story.csv
re-times the sound with the pictures. A scene's cue is its `sound` cell; without one it is derived from the
scene's location, lighting, time of day, mood and description words (WORD_CUES: rain, storm, sea, forest,
night, city, fire, ...), else a quiet room tone.

Each cue is a RenderRequest with output "audio" (options.seconds = the scene's duration), rendered through the
one renderer by the first audio engine `auto` finds (a real text-to-audio pipeline when its weights are here,
else the draft tone bed), with resume: the same cue at the same length is not rendered twice.

The mix (mix_track) lays each cue at its scene's frames and crossfades at the same cut points as the
pictures: over the `fade` seconds centred on each cut, the outgoing cue ramps down while the incoming one
ramps up (the cue is looped to cover the half-fade past its scene's end), so the track is exactly the
animatic's length.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import threading

    from echo_os.artifacts.store import Artifact, ArtifactStore
    from echo_os.settings import Settings

SAMPLE_RATE = 48000  # the track's rate: AAC's usual one; cues at another rate are resampled
DEFAULT_SEED = 1  # cues are seeded so a soundtrack made again is the same one (and resumes)

# word -> the ambience it calls for, in the order they are listed in a derived cue
WORD_CUES: tuple[tuple[str, str], ...] = (
    (r"thunder|storm|tempest|gale", "wind and distant thunder"),
    (r"rain|drizzle|downpour|wet", "steady rain"),
    (r"snow|blizzard|frost|ice", "muffled wind over snow"),
    (r"wind|breeze|cliff", "wind"),
    (r"sea|ocean|harbou?r|coast|shore|beach|wave|lighthouse|port", "waves on the shore"),
    (r"river|stream|waterfall|brook", "running water"),
    (r"forest|wood|jungle|garden|meadow|field", "birdsong and rustling leaves"),
    (r"night|midnight|moon|dark", "crickets at night"),
    (r"city|street|market|traffic|town", "distant city hum"),
    (r"fire|candle|hearth|torch|forge", "crackling fire"),
    (r"cave|tunnel|dungeon|cellar", "dripping water in a cave"),
    (r"battle|fight|war", "distant clamour"),
    (r"tense|dread|eerie|ominous", "low ominous drone"),
    (r"calm|peaceful|serene|quiet", "soft calm pad"),
)
FALLBACK_CUE = "quiet room tone"


@dataclass(frozen=True)
class SceneCue:
    scene: int
    cue: str
    duration: float
    derived: bool  # True: from the scene's words; False: its `sound` cell


def derive_cue(*texts: str | None) -> str:
    """The ambience a scene's words call for (see WORD_CUES), or FALLBACK_CUE."""
    words = " ".join(text for text in texts if text).lower()
    found = [cue for pattern, cue in WORD_CUES if re.search(rf"\b(?:{pattern})", words)]
    return "ambience: " + ", ".join(dict.fromkeys(found)) if found else FALLBACK_CUE


def scene_cues(scenes: list, rows: dict) -> list[SceneCue]:
    """One cue per scene (echo_os.motion.animatic.SceneSource), at the scene's duration, from its storyboard
    row (`rows`: scene number -> row) when there is one (see the module docstring)."""
    cues = []
    for scene in scenes:
        row = rows.get(scene.scene)
        sound = getattr(row, "sound", None)
        if sound:
            cues.append(SceneCue(scene.scene, sound, scene.duration, derived=False))
        else:
            words = [getattr(row, name, None) for name in ("location", "lighting", "time_of_day", "mood")]
            cues.append(SceneCue(scene.scene, derive_cue(*words, scene.description), scene.duration, derived=True))
    return cues


def cue_request(project: str, cue: SceneCue, engine: str = "auto"):
    from echo_os.render.requests import RenderRequest, StoryFields

    return RenderRequest(prompt=cue.cue, output="audio", engine=engine, seed=DEFAULT_SEED, project=project,
                         options={"seconds": cue.duration}, story=StoryFields(scene=cue.scene))


def make_soundtrack(settings: "Settings", project: str, cues: list[SceneCue], *, store: "ArtifactStore",
                    engine: str = "auto", progress: Callable | None = None, cancel: "threading.Event | None" = None,
                    ) -> list[tuple[SceneCue, "Artifact"]]:
    """Render (or find, by resume) every cue (echo_os.motion.animatic.story_cues): [(cue, audio artifact)]."""
    from echo_os.render.scheduler import render_requests

    requests = [cue_request(project, cue, engine) for cue in cues]
    outcome = render_requests(settings, requests, store=store, progress=progress, cancel=cancel)
    by_scene = {artifact.meta.story.scene: artifact for artifact in [*outcome.resumed, *outcome.artifacts]}
    return [(cue, by_scene[cue.scene]) for cue in cues]


def cue_file(artifact: "Artifact") -> Path:
    """The sound file of a cue's artifact (make_soundtrack renders sounds: AssetMeta, kind "audio")."""
    from echo_os.artifacts.meta import AssetMeta

    if not isinstance(artifact.meta, AssetMeta):
        raise TypeError(f"artifact {artifact.id[:12]} is not a sound")
    return artifact.path / artifact.meta.file


def read_cue(path, rate: int = SAMPLE_RATE) -> np.ndarray:
    """A cue's samples as mono float32 at `rate` (linear resampling when its own rate differs)."""
    import soundfile

    samples, own_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    mono = samples.mean(1)
    if own_rate != rate and len(mono):
        positions = np.arange(int(round(len(mono) * rate / own_rate))) * own_rate / rate
        mono = np.interp(positions, np.arange(len(mono)), mono).astype(np.float32)
    return mono


def mix_track(timeline: list, cues: list[np.ndarray], fps: int, fade: float,
              rate: int = SAMPLE_RATE) -> np.ndarray:
    """The animatic's sound: cue i over scene i's frames (timeline: echo_os.motion.animatic.TimedScene),
    crossfaded over `fade` s centred on each cut."""
    total = int(round(timeline[-1].end / fps * rate))
    track = np.zeros(total, dtype=np.float64)
    half = int(round(fade / 2 * rate)) if len(timeline) > 1 else 0
    for index, (timed, cue) in enumerate(zip(timeline, cues)):
        start, end = int(round(timed.start / fps * rate)), int(round(timed.end / fps * rate))
        lead = half if index > 0 else 0
        tail = half if index + 1 < len(timeline) else 0
        first, last = max(0, start - lead), min(total, end + tail)
        if last <= first:
            continue
        piece = np.resize(cue if len(cue) else np.zeros(1, np.float32), last - first).astype(np.float64)
        gain = np.ones(last - first)
        if lead:
            ramp = np.clip((np.arange(first, last) - (start - lead) + 0.5) / (2 * lead), 0, 1)
            gain = np.minimum(gain, ramp)
        if tail:
            ramp = np.clip(((end + tail) - np.arange(first, last) - 0.5) / (2 * tail), 0, 1)
            gain = np.minimum(gain, ramp)
        track[first:last] += piece * gain
    return np.clip(track, -1.0, 1.0).astype(np.float32)
