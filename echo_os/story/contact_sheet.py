"""The contact sheet: every image of a story in scene order on one PNG, numbered and captioned.

People look at a storyboard before they look at files, so each cell shows the picture, `#N slug`
(with `1/2` when a scene has several images) and the scene's description, wrapped to three lines.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL.Image import Image

BACKGROUND = (244, 241, 236)
CARD = (255, 255, 255)
BORDER = (221, 215, 206)
INK = (34, 34, 38)
MUTED = (104, 102, 98)
ACCENT = (176, 84, 38)

THUMB_WIDTH = 320
MAX_COLUMNS = 4
MARGIN = 32
GAP = 20
PAD = 12
CAPTION_LINES = 3


@dataclass
class SheetCell:
    scene: int
    slug: str
    caption: str
    image: "Image"
    index: int = 1  # image i of n in its scene
    of: int = 1


def _font(size: int):
    from echo_os.fonts import drawing_font  # one font with accents and other scripts for every picture

    return drawing_font(size)


def wrap_text(draw, text: str, font, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to `width` pixels; the last line ends with … when text was left out."""
    from echo_os.fonts import wrap_to_width

    lines = wrap_to_width(draw, text, font, width)
    if len(lines) > max_lines:
        # Shorten the last line by whole words until "…" fits (a caption is never cut mid-word); only a
        # single word too wide for the cell on its own is cut by characters.
        last = lines[max_lines - 1].split()
        while len(last) > 1 and draw.textlength(" ".join(last) + " …", font=font) > width:
            last.pop()
        text = " ".join(last)
        while text and draw.textlength(text + " …", font=font) > width:
            text = text[:-1]
        lines = lines[: max_lines - 1] + [text.rstrip() + " …"]
    return lines


def render_contact_sheet(title: str, subtitle: str, cells: list[SheetCell]) -> "Image":
    from PIL import Image, ImageDraw

    columns = max(1, min(MAX_COLUMNS, len(cells)))
    rows = max(1, -(-len(cells) // columns))
    first = cells[0].image if cells else None
    thumb_height = round(THUMB_WIDTH * first.height / first.width) if first else THUMB_WIDTH * 2 // 3
    title_font, subtitle_font = _font(30), _font(15)
    label_font, caption_font = _font(17), _font(14)
    line = caption_font.size + 5
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    captions = [wrap_text(measure, cell.caption, caption_font, THUMB_WIDTH, CAPTION_LINES) for cell in cells]
    caption_lines = max((len(lines) for lines in captions), default=0)
    cell_width = THUMB_WIDTH + 2 * PAD
    cell_height = PAD + thumb_height + 10 + label_font.size + 8 + caption_lines * line + PAD
    header = MARGIN + title_font.size + 10 + subtitle_font.size + 24
    width = 2 * MARGIN + columns * cell_width + (columns - 1) * GAP
    height = header + rows * cell_height + (rows - 1) * GAP + MARGIN

    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    draw.text((MARGIN, MARGIN), title, font=title_font, fill=INK)
    draw.text((MARGIN, MARGIN + title_font.size + 10), subtitle, font=subtitle_font, fill=MUTED)

    for n, cell in enumerate(cells):
        row, column = divmod(n, columns)
        x = MARGIN + column * (cell_width + GAP)
        y = header + row * (cell_height + GAP)
        draw.rounded_rectangle((x, y, x + cell_width - 1, y + cell_height - 1), radius=8, fill=CARD, outline=BORDER)
        thumb = cell.image.convert("RGB")
        thumb.thumbnail((THUMB_WIDTH, thumb_height), Image.Resampling.LANCZOS)
        if thumb.width < THUMB_WIDTH and thumb.height < thumb_height:  # small renders: scale up to the cell
            scale = min(THUMB_WIDTH / thumb.width, thumb_height / thumb.height)
            thumb = thumb.resize((round(thumb.width * scale), round(thumb.height * scale)), Image.Resampling.LANCZOS)
        box_x, box_y = x + PAD, y + PAD
        draw.rectangle((box_x, box_y, box_x + THUMB_WIDTH - 1, box_y + thumb_height - 1), fill=(232, 228, 221))
        sheet.paste(thumb, (box_x + (THUMB_WIDTH - thumb.width) // 2, box_y + (thumb_height - thumb.height) // 2))

        text_y = box_y + thumb_height + 10
        number = f"#{cell.scene}"
        draw.text((box_x, text_y), number, font=label_font, fill=ACCENT)
        label_x = box_x + draw.textlength(number + " ", font=label_font)
        slug = cell.slug + (f"  {cell.index}/{cell.of}" if cell.of > 1 else "")
        slug_lines = wrap_text(draw, slug, label_font, THUMB_WIDTH - int(label_x - box_x), 1)
        draw.text((label_x, text_y), slug_lines[0] if slug_lines else "", font=label_font, fill=INK)
        caption_y = text_y + label_font.size + 8
        for i, text in enumerate(captions[n]):
            draw.text((box_x, caption_y + i * line), text, font=caption_font, fill=MUTED)
    return sheet


def save_png_atomically(image: "Image", path: Path) -> None:
    from echo_os.atomic import write_atomically

    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    write_atomically(path, buffer.getvalue())
