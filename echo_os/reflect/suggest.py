"""`echo-os suggest PROJECT`: next prompts, each with the reason it is suggested (issue 28).

Three sources, in this order:
- what worked: a phrase found in the project's well-valued prompts (objective over the recorded scores
  and ratings at or above the median, or rated 4+) but missing from its best image's prompt,
  added to that prompt; the reason names how often it appears among the best and the mean values.
- what is missing: plan items (prompts/<slug>/plan.json) never rendered; characters of the current story
  (and its bible) seen in fewer than half of its scenes.
- what was never tried: planner vocabulary (lighting, lens, palette, composition) sharing no word with
  any of the project's prompts, in the vocabulary's order, added to the best prompt.

Nothing is rendered; the prompts are there to copy into `echo-os render` or a storyboard.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from echo_os.errors import NotFoundError
from echo_os.resonance.scores import ArtifactScores
from echo_os.resonance.story import Objective

if TYPE_CHECKING:
    from echo_os.settings import Settings

_WORD = re.compile(r"[a-z]+")
STOP = {"a", "an", "the", "of", "in", "on", "at", "and", "with", "to", "by", "for", "from", "light", "lens", "shot"}


@dataclass(frozen=True)
class Suggestion:
    kind: str  # worked, missing, untried
    prompt: str
    why: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _value(row, objective: Objective) -> float | None:
    scores = row.meta.get("scores")
    rating = (row.meta.get("rating") or {}).get("value")
    if not isinstance(scores, dict) and not isinstance(rating, int):
        return None
    stored = ArtifactScores.from_stored(scores if isinstance(scores, dict) else None)
    return objective.value(stored, rating if isinstance(rating, int) else None)


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in STOP and len(w) > 2}


def suggest(settings: "Settings", project: str, *, limit: int = 10,
            objective: Objective | None = None) -> list[Suggestion]:
    from echo_os.artifacts.store import open_catalog
    from echo_os.intent.vocabulary import VOCABULARY
    from echo_os.resonance.analyze import prompt_phrases

    objective = objective or Objective()
    with open_catalog(settings) as catalog:
        rows = [r for r in catalog.query(project=project) if r.meta.get("kind") != "video"]
    if not rows:
        raise NotFoundError(f"project {project!r} has no images in this workspace (see `echo-os artifacts list`).")
    valued = [(v, r) for r in rows if (v := _value(r, objective)) is not None]
    base = max(valued, key=lambda item: item[0])[1] if valued else rows[0]  # rows are newest first
    base_phrases = set(prompt_phrases(base.prompt))
    out: list[Suggestion] = []

    # 1. what worked
    if len(valued) >= 2:
        values = sorted(v for v, _ in valued)
        cut = values[len(values) // 2]  # the upper half (at or above the median)
        best = [(v, r) for v, r in valued if v >= cut or ((r.meta.get("rating") or {}).get("value") or 0) >= 4]
        rest = [v for v, r in valued if (v, r) not in best]
        counts: dict[str, list[float]] = {}
        for value, row in best:
            for phrase in set(prompt_phrases(row.prompt)):
                counts.setdefault(phrase, []).append(value)
        ranked = sorted(counts.items(), key=lambda item: (-len(item[1]), -sum(item[1]) / len(item[1]), item[0]))
        for phrase, found in ranked:
            if phrase in base_phrases or len(found) < 2:
                continue
            mean_best = sum(found) / len(found)
            others = f"; the other scored images average {sum(rest) / len(rest):.3f}" if rest else ""
            out.append(Suggestion("worked", f"{base.prompt}, {phrase}",
                                  f"'{phrase}' is in {len(found)} of the project's {len(best)} best-valued images "
                                  f"(mean {mean_best:.3f}){others}; added to the best image's prompt "
                                  f"({base.id[:12]})"))
            if len(out) >= 3:
                break

    # 2. what is missing
    rendered = {r.prompt.strip().lower() for r in rows}
    try:
        from echo_os.intent.planfile import load_plan

        plan = load_plan(settings, project)
        for index, item in enumerate(plan.items, start=1):
            if item.prompt.strip().lower() not in rendered:
                out.append(Suggestion("missing", item.prompt, f"plan item {index} of {len(plan.items)} "
                                                             "(prompts/.../plan.json) has never been rendered"))
    except NotFoundError:
        pass
    from echo_os.resonance.story import load_story_json

    story = load_story_json(settings, project) or {}
    scenes = story.get("scenes") or []
    if scenes:
        seen: dict[str, int] = {}
        for scene in scenes:
            for character in scene.get("characters") or []:
                seen[character] = seen.get(character, 0) + 1
        for character in _bible_characters(story):
            seen.setdefault(character, 0)
        for character, count in sorted(seen.items(), key=lambda item: (item[1], item[0])):
            if count < len(scenes) / 2:
                where = "in no scene" if count == 0 else f"in only {count} of {len(scenes)} scenes"
                out.append(Suggestion("missing", f"{character} in a new scene: add a storyboard row with "
                                                 f"characters={character}",
                                      f"character {character!r} is {where} of the current story"))

    # 3. what was never tried
    past = set().union(*(_words(r.prompt) for r in rows))
    tried = 0
    for part in ("lighting", "lens", "palette", "composition"):
        for entry in VOCABULARY.get(part, []):
            if _words(entry) and not (_words(entry) & past):
                out.append(Suggestion("untried", f"{base.prompt}, {entry}",
                                      f"no prompt of this project's {len(rows)} images has the {part} '{entry}' "
                                      "or any of its words"))
                tried += 1
                break
        if tried >= 3:
            break
    return out[:limit]


def _bible_characters(story: dict[str, Any]) -> list[str]:
    from pathlib import Path

    path = (story.get("bible") or {}).get("path")
    if not path or not Path(path).is_file():
        return []
    from echo_os.story.bible import load_bible
    from echo_os.story.problems import ProblemList

    bible = load_bible(path, ProblemList())
    return sorted(bible.front.characters) if bible is not None else []
