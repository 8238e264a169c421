"""The draft engine: storyboard cards for planning, no weights, instant, always available.

A card is plainly a card: a palette drawn from the light and mood words of the prompt, the prompt laid
out legibly, "DRAFT" in the corner, and the seed and size in small print. It is deterministic, so a
replay of a draft artifact reports 0.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from echo_os.engines.base import (
    BaseEngine,
    Capabilities,
    ProgressCallback,
    ProgressEvent,
    RenderedImage,
    RenderResult,
    RuntimeInfo,
    Timings,
)
from echo_os.engines.hookspecs import hookimpl
from echo_os.errors import CancelledError
from echo_os.render.requests import RenderRequest

if TYPE_CHECKING:
    from PIL import Image

    from echo_os.settings import Settings

# Light and mood words -> (background top, background bottom, accent). First match in the prompt wins
# for each slot, in prompt order.
PALETTE_WORDS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, int, int]]] = {
    "golden": ((250, 200, 110), (190, 110, 50), (255, 240, 200)),
    "warm": ((240, 170, 110), (150, 70, 50), (255, 225, 190)),
    "sunset": ((250, 140, 90), (90, 40, 90), (255, 210, 150)),
    "morning": ((255, 220, 160), (150, 180, 210), (255, 245, 220)),
    "dawn": ((230, 190, 200), (120, 140, 190), (250, 235, 235)),
    "storm": ((70, 80, 95), (25, 30, 40), (190, 200, 215)),
    "night": ((20, 25, 60), (5, 5, 20), (180, 190, 255)),
    "moon": ((40, 50, 90), (10, 15, 35), (220, 225, 255)),
    "fog": ((185, 190, 195), (120, 125, 135), (240, 240, 245)),
    "rain": ((95, 110, 125), (45, 55, 70), (200, 215, 230)),
    "snow": ((235, 240, 250), (170, 185, 205), (255, 255, 255)),
    "neon": ((40, 10, 70), (10, 0, 30), (255, 60, 200)),
    "forest": ((70, 110, 70), (20, 45, 25), (200, 230, 180)),
    "sea": ((60, 120, 160), (15, 50, 80), (200, 235, 250)),
    "ocean": ((60, 120, 160), (15, 50, 80), (200, 235, 250)),
    "fire": ((240, 110, 40), (90, 20, 10), (255, 220, 120)),
    "calm": ((190, 210, 220), (130, 160, 180), (245, 250, 255)),
    "dark": ((45, 45, 55), (10, 10, 15), (200, 200, 210)),
    "threatening": ((90, 90, 100), (35, 35, 45), (220, 200, 150)),
    "fractal": ((120, 60, 160), (30, 20, 70), (250, 200, 255)),
}
NEUTRAL = ((215, 210, 200), (150, 145, 140), (250, 248, 240))


def palette_for(text: str) -> tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, int, int]]:
    lowered = text.lower()
    hits = sorted((lowered.find(word), colours) for word, colours in PALETTE_WORDS.items() if word in lowered)
    if not hits:
        return NEUTRAL
    if len(hits) == 1:
        return hits[0][1]
    # Two words: the first sets the sky, the second the ground.
    first, second = hits[0][1], hits[1][1]
    return first[0], second[1], first[2]


def _luminance(rgb: tuple[int, int, int]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _ink_on(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Dark text on a light background, light text on a dark one."""
    return (20, 20, 25) if _luminance(rgb) > 140 else (245, 245, 245)


def draw_card(request: RenderRequest, seed: int) -> "Image.Image":
    """A storyboard card: a gradient in the prompt's colours, a seed-placed disc in the band above the
    text, the prompt wrapped to the card's width, and a footer that fits (each text in the ink that reads
    on the colour behind it)."""
    from PIL import Image, ImageDraw

    from echo_os.fonts import drawing_font, wrap_to_width

    width, height = request.width, request.height
    top, bottom, accent = palette_for(request.full_prompt + " " + (request.story.lighting or "")
                                      + " " + (request.story.mood or ""))

    def colour_at(y: int) -> tuple[int, int, int]:
        t = min(max(y, 0), height - 1) / max(1, height - 1)
        return tuple(round(a + (b - a) * t) for a, b in zip(top, bottom))  # type: ignore[return-value]

    # Vertical gradient: one row of colours stretched to full size (fast at any size).
    column = Image.new("RGB", (1, height))
    for y in range(height):
        column.putpixel((0, y), colour_at(y))
    card = column.resize((width, height), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(card)
    margin = max(4, width // 24)
    title_size = max(8, min(width, height) // 18)
    font = drawing_font(title_size)
    small_size = max(6, title_size * 5 // 8)  # the size asked (Pillow's bitmap fallback font has no .size)
    small = drawing_font(small_size)
    text_top = height // 3

    # A seed-placed accent disc, so cards of one prompt with different seeds are told apart. It stays in
    # the band between the DRAFT label and the prompt, never over the text.
    digest = hashlib.sha256(f"{seed}".encode()).digest()
    label_bottom = margin + small_size + 2
    radius = max(2, min(min(width, height) // 10, (text_top - label_bottom - 4) // 2))
    cx = margin + radius + digest[0] * max(1, width - 2 * (margin + radius)) // 255
    low, high = label_bottom + radius, max(label_bottom + radius, text_top - radius - 2)
    cy = low + digest[1] * (high - low) // 255
    draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=accent)
    draw.text((margin, margin), "DRAFT", font=small, fill=_ink_on(colour_at(margin)))

    footer_line = small_size + 2
    scene = f"scene {request.story.scene} · " if request.story.scene is not None else ""
    footer = wrap_to_width(draw, f"{scene}seed {seed} · {width}x{height} · draft card, not a diffusion render",
                           small, width - 2 * margin)
    footer_top = height - margin - footer_line * len(footer)
    lines = wrap_to_width(draw, request.full_prompt, font, width - 2 * margin)
    max_lines = max(1, (footer_top - text_top - 4) // (title_size + 4))
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        while lines[-1] and draw.textlength(lines[-1] + "…", font=font) > width - 2 * margin:
            lines[-1] = lines[-1][:-1]
        lines[-1] += "…"
    y = text_top
    for line in lines:
        draw.text((margin, y), line, font=font, fill=_ink_on(colour_at(y + title_size // 2)))
        y += title_size + 4
    for line in footer:
        draw.text((margin, footer_top), line, font=small, fill=_ink_on(colour_at(footer_top + small_size // 2)))
        footer_top += footer_line
    return card


class DraftEngine(BaseEngine):
    """Always available (the default availability), so it ends the default `auto` order."""

    name = "draft"
    capabilities = Capabilities(txt2img=True, max_batch=64, needs_weights=False)

    def __init__(self, settings: "Settings | None" = None, reason: str = ""):
        from pathlib import Path

        from echo_os.settings import Settings

        # The cards read nothing of a workspace: one made without settings (tests) gets the current folder's.
        super().__init__(settings if settings is not None else Settings(home=Path.cwd()), reason)

    def render(self, requests: list[RenderRequest], *, progress: ProgressCallback | None = None,
               cancel: threading.Event | None = None) -> list[RenderResult]:
        results = []
        for request in requests:
            started = time.perf_counter()
            images = []
            for seed in request.seeds:
                if cancel is not None and cancel.is_set():
                    raise CancelledError("render cancelled")
                images.append(RenderedImage(image=draw_card(request, seed), seed=seed))
            if progress is not None:
                progress(ProgressEvent(step=1, total_steps=1, images=request.count))
            runtime = RuntimeInfo(engine=self.name, reason=self.reason, device="cpu", dtype="none", attention="none")
            results.append(RenderResult(request=request, images=images, runtime=runtime,
                                        timings=Timings(denoise_s=time.perf_counter() - started)))
        return results


@hookimpl
def register_engines(register: Callable[[type[Any]], object]) -> None:
    register(DraftEngine)
