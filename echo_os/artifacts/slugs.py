"""ASCII slugs for folder names: `İskele'de sabah` -> `iskele-de-sabah`. The one slug rule of echo-os:
project folders, artifact folders and story scene slugs (echo_os.story.slug keeps `_` in scene slugs).

Prompts and metadata keep their original text; only paths are ASCII. The table handles letters that
Unicode NFKD does not decompose into an ASCII base letter (Turkish dotless ı, ø, ß, ...) and Turkish İ,
whose lower-case form in Python is `i` plus a combining dot. The rest goes through NFKD with the
combining marks dropped, so ş, ğ, ü, ö, ç, é, å, ñ lose their accents.
"""

from __future__ import annotations

import re
import unicodedata

_TRANSLITERATE = str.maketrans({
    "İ": "I", "ı": "i", "Ş": "S", "ş": "s", "Ğ": "G", "ğ": "g", "Ü": "U", "ü": "u", "Ö": "O", "ö": "o",
    "Ç": "C", "ç": "c", "ß": "ss", "ẞ": "SS", "Æ": "AE", "æ": "ae", "Œ": "OE", "œ": "oe", "Ø": "O",
    "ø": "o", "Đ": "D", "đ": "d", "Ł": "L", "ł": "l", "Þ": "TH", "þ": "th", "Ð": "D", "ð": "d",
    "’": "'", "‘": "'",
})


def to_ascii(text: str) -> str:
    """Transliterate to ASCII; characters with no ASCII form are dropped."""
    decomposed = unicodedata.normalize("NFKD", text.translate(_TRANSLITERATE))
    return decomposed.encode("ascii", "ignore").decode("ascii")


def slugify(text: str, *, max_length: int = 40, fallback: str = "untitled", keep: str = "") -> str:
    """Lower-case ASCII letters, digits, `-` and the characters in `keep`; at most max_length
    characters, cut at a dash where there is one."""
    trim = "-" + keep
    slug = re.sub(f"[^a-z0-9{re.escape(keep)}]+", "-", to_ascii(text).lower()).strip(trim)
    if len(slug) > max_length:
        cut = slug[: max_length + 1]
        slug = cut.rsplit("-", 1)[0] if "-" in cut[1:] else cut[:max_length]
        slug = slug[:max_length].strip(trim)
    return slug or fallback
