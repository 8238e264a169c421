"""Scene slugs: the one slug rule (echo_os.artifacts.slugs), keeping `_`, at most 48 characters."""

from __future__ import annotations

from echo_os.artifacts.slugs import slugify as _slugify
from echo_os.artifacts.slugs import to_ascii

__all__ = ["MAX_SLUG_LENGTH", "scene_slug", "slugify", "to_ascii"]

MAX_SLUG_LENGTH = 48


def slugify(text: str, max_length: int = MAX_SLUG_LENGTH, fallback: str = "scene") -> str:
    """A storyboard's slug: lower-case ASCII letters, digits, `_` and `-`."""
    return _slugify(text, max_length=max_length, fallback=fallback, keep="_")


def scene_slug(description: str, max_words: int = 6) -> str:
    """A slug from the first words of a scene description."""
    words = description.split()
    return slugify(" ".join(words[:max_words]))
