"""Prompt composition: one scene row plus the bible -> the prompt SDXL sees.

The order is fixed (CLIP weighs earlier tokens more, and the same order in every scene keeps a story
coherent):

    1. style        the bible's style.prompt
    2. characters   each character's description, in the order the row lists them
    3. location     the location's description
    4. scene        the row's description
    5. props        each prop's description, in the row's order
    6. camera       the row's camera text
    7. lighting     the row's lighting text
    8. time of day  the row's time_of_day text
    9. mood         the row's mood text

Parts are joined with ", ". Each part is stripped of surrounding whitespace and trailing `,;.`, and
runs of whitespace inside it (line breaks in a CSV cell) become one space; nothing else changes, so
non-ASCII text (İ, ı, ş, ğ, ü, ö, ç) reaches the prompt exactly as written. Empty parts are skipped.
Character names are not in the prompt (the model does not know who "Elias" is); they are metadata.

The negative prompt is the bible's style.negative, then the row's negative, joined the same way.

The bible's inline style is composed into the prompt, so it leaves the RenderRequest's own `style` field
empty. A named style (the bible's `style: NAME`, or `batch --style`) is the exception: the planner puts it in
the request's `style`, and RenderRequest.full_prompt places the composed prompt at its `{prompt}`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from echo_os.story.bible import Bible
from echo_os.story.storyboard import SceneRow

PartKind = Literal["style", "character", "location", "scene", "prop", "camera", "lighting", "time_of_day",
                   "mood"]
COMPOSITION_ORDER: tuple[PartKind, ...] = ("style", "character", "location", "scene", "prop", "camera",
                                           "lighting", "time_of_day", "mood")
SEPARATOR = ", "
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class PromptPart:
    kind: PartKind
    text: str
    source: str = ""  # the id for characters, locations and props


@dataclass(frozen=True)
class ComposedPrompt:
    prompt: str
    negative: str
    parts: tuple[PromptPart, ...]


def clean_part(text: str | None) -> str:
    """Whitespace runs -> one space, trailing separators removed; the characters themselves unchanged."""
    if not text:
        return ""
    return _SPACES.sub(" ", text).strip().rstrip(",;.").strip()


def join_parts(texts: list[str]) -> str:
    return SEPARATOR.join(part for part in (clean_part(text) for text in texts) if part)


def compose_scene_prompt(row: SceneRow, bible: Bible | None) -> ComposedPrompt:
    """The scene's prompt and negative prompt. Ids must already be checked against the bible."""
    front = bible.front if bible else None
    parts: list[PromptPart] = []

    def add(kind: PartKind, text: str | None, source: str = "") -> None:
        cleaned = clean_part(text)
        if cleaned:
            parts.append(PromptPart(kind, cleaned, source))

    if front:
        add("style", front.style.prompt)
        for character in row.characters:
            add("character", front.characters[character].description, character)
        if row.location:
            add("location", front.locations[row.location], row.location)
    add("scene", row.description)
    if front:
        for prop in row.props:
            add("prop", front.props[prop], prop)
    add("camera", row.camera)
    add("lighting", row.lighting)
    add("time_of_day", row.time_of_day)
    add("mood", row.mood)
    negative = join_parts([front.style.negative if front else "", row.negative or ""])
    return ComposedPrompt(prompt=SEPARATOR.join(part.text for part in parts), negative=negative,
                          parts=tuple(parts))
