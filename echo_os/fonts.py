"""The one font of every picture echo-os draws: contact sheets, draft cards, animatic captions and compare
grid labels all call `drawing_font(size)`; `wrap_to_width` lays text out in it by measured width.

Pillow's built-in font has no glyph for é, İ, ş or Ж: they were drawn as empty boxes. This is a TrueType
font with wide coverage (Latin with its accents, Greek, Cyrillic): Roboto, which the `font-roboto` package
ships (a dependency; Apache 2.0), so a draft card looks the same on every machine. ECHO_OS_FONT picks
another: a .ttf/.otf/.ttc path, or a family name looked up through fontconfig (`fc-match`), e.g.
"Noto Sans CJK JP" for scripts Roboto lacks. When neither is there: fontconfig's sans-serif, and Pillow's
own font as the last resort (logged once).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from PIL import ImageDraw, ImageFont

# What drawing_font gives: a TrueType font, or Pillow's own bitmap font where no TrueType one loads.
DrawingFont: TypeAlias = "ImageFont.FreeTypeFont | ImageFont.ImageFont"

log = logging.getLogger(__name__)

FONT_ENV = "ECHO_OS_FONT"


def shipped_font(bold: bool = False) -> Path | None:
    """Roboto from the font-roboto package, or None when it is not installed."""
    try:
        import font_roboto
    except ImportError:
        return None
    path = Path(font_roboto.font_directory) / ("Roboto-Bold.ttf" if bold else "Roboto-Regular.ttf")
    return path if path.is_file() else None


def fontconfig_font(pattern: str) -> Path | None:
    """The file fontconfig matches for `pattern` (a family name such as "DejaVu Sans"), or None."""
    fc_match = shutil.which("fc-match")
    if fc_match is None:
        return None
    try:
        found = subprocess.run([fc_match, "--format=%{file}", pattern], capture_output=True, text=True,
                               timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(found) if found and Path(found).is_file() else None


@functools.lru_cache(maxsize=8)
def font_path(bold: bool = False) -> Path | None:
    """The font file to draw with (see the module docstring for the order), None: Pillow's own."""
    wanted = os.environ.get(FONT_ENV, "").strip()
    if wanted:
        path = Path(wanted).expanduser()
        found = path if path.is_file() else fontconfig_font(wanted + (":bold" if bold else ""))
        if found is not None:
            return found
        log.warning("%s=%r is neither a font file nor a font fontconfig knows; using the default font",
                    FONT_ENV, wanted)
    found = shipped_font(bold) or fontconfig_font("sans-serif" + (":bold" if bold else ""))
    if found is None:
        log.warning("no TrueType font (font-roboto is not installed and fontconfig found none): "
                    "accented letters may be drawn as boxes")
    return found


@functools.lru_cache(maxsize=64)
def drawing_font(size: int, bold: bool = False) -> DrawingFont:
    """A PIL font of `size` pixels for drawing text on an image."""
    from PIL import ImageFont

    size = max(1, int(size))
    path = font_path(bold)
    if path is not None:
        try:
            return ImageFont.truetype(str(path), size)
        except OSError as error:
            log.warning("cannot load font %s (%s); using Pillow's own", path, error)
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the bitmap font has one size
        return ImageFont.load_default()


def wrap_to_width(draw: ImageDraw.ImageDraw, text: str, font: DrawingFont, width: float) -> list[str]:
    """`text` wrapped greedily to lines at most `width` pixels wide as `draw` measures them in `font`.

    A word wider than a line on its own is cut at the longest prefix that fits (one character at the
    least), its rest starting the next line. Draft cards and contact-sheet captions wrap with it.
    """
    lines: list[str] = []
    line = ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if draw.textlength(candidate, font=font) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
        line = word
        while draw.textlength(line, font=font) > width and len(line) > 1:  # one word wider than a line
            cut = len(line)
            while cut > 1 and draw.textlength(line[:cut], font=font) > width:
                cut -= 1
            lines.append(line[:cut])
            line = line[cut:]
    if line:
        lines.append(line)
    return lines
