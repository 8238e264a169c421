"""ASCII slugs for folder names: `İskele'de sabah` -> `iskele-de-sabah`.

The table handles letters that Unicode NFKD does not decompose into an ASCII base letter (Turkish
dotless ı, ø, ß, ...) and Turkish İ, whose lower-case form in Python is `i` plus a combining dot. The
rest goes through NFKD with the combining marks dropped, so ş, ğ, ü, ö, ç, é, å, ñ lose their accents.
"""

from __future__ import annotations

import re
import unicodedata

MAX_SLUG_LENGTH = 48

_TRANSLITERATE = str.maketrans({
    "İ": "I", "ı": "i", "Ş": "S", "ş": "s", "Ğ": "G", "ğ": "g", "Ü": "U", "ü": "u", "Ö": "O", "ö": "o",
    "Ç": "C", "ç": "c", "ß": "ss", "ẞ": "SS", "Æ": "AE", "æ": "ae", "Œ": "OE", "œ": "oe", "Ø": "O",
    "ø": "o", "Đ": "D", "đ": "d", "Ł": "L", "ł": "l", "Þ": "TH", "þ": "th", "Ð": "D", "ð": "d",
    "’": "'", "‘": "'",
})
_NOT_SLUG = re.compile(r"[^a-z0-9_]+")


def to_ascii(text: str) -> str:
    """Transliterate to ASCII; characters with no ASCII form are dropped."""
    decomposed = unicodedata.normalize("NFKD", text.translate(_TRANSLITERATE))
    return decomposed.encode("ascii", "ignore").decode("ascii")


def slugify(text: str, max_length: int = MAX_SLUG_LENGTH, fallback: str = "scene") -> str:
    """Lower-case ASCII letters, digits, `_` and `-`; at most max_length characters, cut at a dash."""
    slug = _NOT_SLUG.sub("-", to_ascii(text).lower()).strip("-_")
    if len(slug) > max_length:
        cut = slug[: max_length + 1]
        slug = cut.rsplit("-", 1)[0] if "-" in cut[1:] else cut[:max_length]
        slug = slug[:max_length].strip("-_")
    return slug or fallback


def scene_slug(description: str, max_words: int = 6) -> str:
    """A slug from the first words of a scene description."""
    words = description.split()
    return slugify(" ".join(words[:max_words]))
