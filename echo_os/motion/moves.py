"""Camera moves over a still: for each frame, the box of the source image that fills the frame.

A move starts from the largest centred box of the output's aspect ratio (the still is cropped to fill the
frame, never letterboxed). push-in / pull-out scale that box by up to ZOOM; pans and tilts use the box
shrunk by ZOOM and slide it across the whole width or height. Progress is eased (smoothstep) so a move
starts and stops without a jolt; static keeps the full box, so its frames are the still itself, scaled.
"""

from __future__ import annotations

import re

from echo_os.story.storyboard import MOTIONS

ZOOM = 1.15  # how far a move travels: 15% closer, or a pan over the 13% of width that zoom frees
DEFAULT_MOTION = "push-in"

# Camera words in a storyboard's `camera` cell -> the move they suggest; the first that matches wins.
_CAMERA_WORDS: tuple[tuple[str, str], ...] = (
    (r"\b(push(es|ing)?|dolly|zoom(s|ing)?|track(s|ing)?|move(s)?)[ -]?in\b", "push-in"),
    (r"\b(pull(s|ing)?|dolly|zoom(s|ing)?|track(s|ing)?)[ -]?(out|back)\b", "pull-out"),
    (r"\bpan(s|ning)?[ -]?left\b", "pan-left"),
    (r"\bpan(s|ning)?[ -]?right\b", "pan-right"),
    (r"\btilt(s|ing)?[ -]?up\b", "tilt-up"),
    (r"\btilt(s|ing)?[ -]?down\b", "tilt-down"),
    (r"\b(static|locked[ -]?off|still|tripod|fixed)\b", "static"),
)

Box = tuple[float, float, float, float]


def default_motion(camera: str | None) -> str:
    """The move a scene's camera words suggest ("slow dolly in" -> push-in), else a slow push-in."""
    text = (camera or "").lower()
    for pattern, motion in _CAMERA_WORDS:
        if re.search(pattern, text):
            return motion
    return DEFAULT_MOTION


def cover_box(source_size: tuple[int, int], output_size: tuple[int, int]) -> Box:
    """The largest centred box of the output's aspect ratio inside the source: (left, top, right, bottom)."""
    sw, sh = source_size
    ow, oh = output_size
    if sw * oh > sh * ow:  # source wider than the output: crop the sides
        width = sh * ow / oh
        return ((sw - width) / 2, 0.0, (sw + width) / 2, float(sh))
    height = sw * oh / ow
    return (0.0, (sh - height) / 2, float(sw), (sh + height) / 2)


def ease(progress: float) -> float:
    progress = min(1.0, max(0.0, progress))
    return progress * progress * (3.0 - 2.0 * progress)


def move_box(motion: str, progress: float, source_size: tuple[int, int], output_size: tuple[int, int]) -> Box:
    """The source box shown at `progress` (0 at the scene's first frame, 1 at its last) of `motion`."""
    if motion not in MOTIONS:
        raise ValueError(f"unknown motion {motion!r} (known: {', '.join(MOTIONS)})")
    left, top, right, bottom = cover_box(source_size, output_size)
    width, height = right - left, bottom - top
    t = ease(progress)
    if motion == "static":
        return (left, top, right, bottom)
    if motion in ("push-in", "pull-out"):
        scale = 1.0 + (ZOOM - 1.0) * (t if motion == "push-in" else 1.0 - t)
        w, h = width / scale, height / scale
        cx, cy = left + width / 2, top + height / 2
        return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    w, h = width / ZOOM, height / ZOOM
    x = left + (width - w) / 2
    y = top + (height - h) / 2
    if motion == "pan-left":  # the camera turns left: the view slides from the right edge to the left
        x = left + (width - w) * (1.0 - t)
    elif motion == "pan-right":
        x = left + (width - w) * t
    elif motion == "tilt-up":  # the view rises from the bottom edge to the top
        y = top + (height - h) * (1.0 - t)
    elif motion == "tilt-down":
        y = top + (height - h) * t
    return (x, y, x + w, y + h)
