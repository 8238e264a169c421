"""Style swatches: a small rendered sample of each named style, for the studio's style picker.

A swatch is the draft engine's card (echo_os.engines.draft: a palette drawn from the light and mood words of
the prompt) of one fixed sample subject with the style applied, SWATCH_SIZE pixels a side. The draft engine
needs no weights and renders in milliseconds, so a swatch is made on demand by the route that serves it
(GET /api/studio/styles/{name}/swatch, in a thread, never in the page's way: the page loads it as an
<img>) without queueing a job or waking a GPU. A real-engine sample of every style would cost a render per
style and pollute the catalog; the card shows what the style's words do to the draft palette.

Each swatch is cached as artifacts/.cache/swatches/<key>.png, where the key is the sha256 of what the card
depends on (the style's name, words and negative, the subject, the size, SWATCH_VERSION): an edited or
re-learned style gets a new key, hence a new swatch; an unchanged one is never drawn twice.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from echo_os.render.styles import Style
    from echo_os.settings import Settings

SWATCH_SUBJECT = "a lighthouse on a cliff above the sea"
SWATCH_SIZE = 128  # pixels a side (multiples of 8, the engines' rule); the page shows it at 48 px
SWATCH_SEED = 7
SWATCH_VERSION = 1  # bump when the drawing changes: every cached swatch is then drawn again
SWATCH_DIR = "swatches"


def swatch_key(style: "Style") -> str:
    """The content hash a swatch is cached under."""
    content = {"name": style.name, "prompt": style.prompt, "negative": style.negative, "subject": SWATCH_SUBJECT,
               "size": SWATCH_SIZE, "seed": SWATCH_SEED, "version": SWATCH_VERSION}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode("utf-8")).hexdigest()


def swatch_path(settings: "Settings", style: "Style") -> Path:
    return settings.cache_dir / SWATCH_DIR / f"{swatch_key(style)}.png"


def render_swatch(settings: "Settings", style: "Style") -> Path:
    """The style's swatch PNG, drawn and cached on first use (an atomic write: two requests at once both
    end with one whole file)."""
    from echo_os.atomic import write_atomically
    from echo_os.engines.draft import draw_card
    from echo_os.render.requests import build_request

    path = swatch_path(settings, style)
    if path.is_file():
        return path
    prompt, negative = style.apply(SWATCH_SUBJECT, None)
    request = build_request(prompt=prompt, negative_prompt=negative, model="draft", engine="draft",
                            width=SWATCH_SIZE, height=SWATCH_SIZE, seed=SWATCH_SEED, steps=1)
    image = draw_card(request, SWATCH_SEED)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, buffer.getvalue())
    return path
