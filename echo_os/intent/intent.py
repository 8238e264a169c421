"""Split an intent into what to show (the theme) and what to keep out (exclusions for the negative prompt).

"warm fractal, no human forms" -> theme "warm fractal", exclusions ["human forms"]. A clause that starts
with, or contains, "no", "without", "avoid", "excluding" or "never" is an exclusion from that word on:
"a quiet beach without people" -> theme "a quiet beach", exclusion "people".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_CLAUSES = re.compile(r"[,;\n]+")
_EXCLUSION = re.compile(r"(?:^|\s)(?:no|without|avoid|avoiding|excluding|exclude|never|not)\s+(.+)$", re.IGNORECASE)
_WORD = re.compile(r"[a-z][a-z'-]{2,}")
_STOP = {"the", "and", "any", "with", "for", "from", "forms", "form", "kind", "kinds", "type", "types", "things"}


@dataclass(frozen=True)
class Intent:
    text: str
    theme: str
    exclusions: tuple[str, ...]

    @property
    def negative_prompt(self) -> str:
        return ", ".join(self.exclusions)

    def excluded_words(self) -> set[str]:
        """Content words of the exclusions (singular and plural), to keep them out of the positive prompt."""
        words: set[str] = set()
        for exclusion in self.exclusions:
            for word in _WORD.findall(exclusion.lower()):
                if word in _STOP:
                    continue
                stem = word[:-1] if word.endswith("s") and len(word) > 3 else word
                words |= {stem, stem + "s"}
        return words

    def mentions_excluded(self, text: str) -> bool:
        excluded = self.excluded_words()
        return any(word in excluded for word in _WORD.findall(text.lower()))


def _clauses(text: str) -> list[str]:
    """Split on , ; and newlines outside Dynamic Prompts braces ({a, b|c} stays one clause)."""
    clauses, current, depth = [], [], 0
    for char in text:
        depth += char == "{"
        depth -= char == "}" and depth > 0
        if depth == 0 and _CLAUSES.fullmatch(char):
            clauses.append("".join(current))
            current = []
        else:
            current.append(char)
    clauses.append("".join(current))
    return clauses


def parse_intent(text: str) -> Intent:
    theme_parts: list[str] = []
    exclusions: list[str] = []
    for clause in _clauses(text):
        clause = clause.strip()
        if not clause:
            continue
        match = _EXCLUSION.search(clause)
        if match:
            before = clause[: match.start()].strip()
            if before:
                theme_parts.append(before)
            exclusions.extend(part.strip() for part in re.split(r"\s+or\s+|\s+and\s+", match.group(1)) if part.strip())
        else:
            theme_parts.append(clause)
    return Intent(text=text, theme=", ".join(theme_parts), exclusions=tuple(dict.fromkeys(exclusions)))
