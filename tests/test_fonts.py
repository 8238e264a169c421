"""The font of every picture echo-os draws (echo_os/fonts.py; issue 24, bug 5): Turkish, French, Greek and
Cyrillic letters are drawn as themselves, not as the .notdef box Pillow's built-in font gave them."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

NOT_A_GLYPH = "\ue000"  # a private-use code point no font here has: it draws as the font's .notdef box
SAMPLES = {"turkish": "İşğ", "french": "éèçÉ", "greek": "Ωαβ", "cyrillic": "Жжя"}


@pytest.mark.parametrize("script", SAMPLES)
def test_each_letter_is_a_glyph_of_its_own_not_the_notdef_box(script):
    from echo_os.fonts import drawing_font

    font = drawing_font(32)
    notdef = font.getmask(NOT_A_GLYPH)
    notdef_pixels = (notdef.size, bytes(notdef))
    for letter in SAMPLES[script]:
        mask = font.getmask(letter)
        assert (mask.size, bytes(mask)) != notdef_pixels, f"{letter!r} is drawn as the .notdef box"
        assert max(bytes(mask)) > 0, f"{letter!r} draws nothing"


def _differ(a: Image.Image, b: Image.Image) -> bool:
    return bool(np.any(np.asarray(a.convert("RGB")) != np.asarray(b.convert("RGB"))))


def _draft(text: str) -> Image.Image:
    from echo_os.engines.draft import draw_card
    from echo_os.render.requests import RenderRequest

    return draw_card(RenderRequest(prompt=text, width=256, height=256, engine="draft"), 7)


def _sheet(text: str) -> Image.Image:
    from echo_os.story.contact_sheet import SheetCell, render_contact_sheet

    cell = SheetCell(scene=1, slug="s", caption=text, image=Image.new("RGB", (64, 64), "grey"))
    return render_contact_sheet(text, "", [cell])


def _caption(text: str) -> Image.Image:
    from echo_os.motion.animatic import caption_overlay

    band, _ = caption_overlay(text, (320, 180))
    return band


@pytest.mark.parametrize("draw", [_draft, _sheet, _caption], ids=["draft card", "contact sheet", "animatic caption"])
def test_every_drawing_site_draws_accented_and_cyrillic_letters(draw):
    """Before, `İşğ é Ж` and three .notdef boxes drew the same pixels at each of these sites."""
    for text in ("İşğ", "été", "Жжя"):
        assert _differ(draw(text), draw(NOT_A_GLYPH * len(text))), f"{text!r} is drawn as boxes by {draw.__name__}"


@pytest.mark.parametrize("width", [40, 56, 120, 232, 462])
def test_wrapped_lines_never_overflow_and_keep_every_character(width):
    """Draft cards and contact sheets wrap with fonts.wrap_to_width. The draft card's own copy cut a word
    wider than the card at a proportional guess, which could overflow it (463 px on a 462 px line)."""
    from PIL import ImageDraw

    from echo_os.fonts import drawing_font, wrap_to_width

    draw = ImageDraw.Draw(Image.new("RGB", (10, 10)))
    font = drawing_font(36)
    text = ("Supercalifragilisticexpialidocious-antidisestablishmentarianism-pneumonoultramicroscopic "
            "a lamp at dusk over the quay, é ş Ж")
    lines = wrap_to_width(draw, text, font, width)
    assert all(draw.textlength(line, font=font) <= width for line in lines if len(line) > 1)
    assert "".join(lines).replace(" ", "") == text.replace(" ", "")
    assert wrap_to_width(draw, "a lamp at dusk", font, 10_000) == ["a lamp at dusk"]
