"""The offline planner: Dynamic Prompts templates for variety, MiniLM and maximal marginal relevance for
choosing N prompts that differ from each other and from the project's past work.

1. Candidates: the intent's theme followed by the variation template (vocabulary.DEFAULT_TEMPLATE, or the
   user's own), expanded by the `dynamicprompts` package (the `{a|b}` and `__wildcard__` syntax of the
   A1111/ComfyUI Dynamic Prompts extension), seeded, so the same seed gives the same candidates. Wildcards
   are the built-in vocabulary plus the files in prompts/wildcards/. Candidates naming an excluded thing
   are dropped (the exclusions go to the negative prompt only).
2. Choice: every candidate and every past prompt embedded with all-MiniLM-L6-v2 (the model Echo Memory
   indexes prompts with). Greedy MMR (Carbonell & Goldstein, 1998): each pick maximises
   LAMBDA * similarity to the theme - (1 - LAMBDA) * the largest similarity to anything already picked or
   made before. A low LAMBDA favours variety: every candidate already carries the theme.
3. Report: the mean pairwise cosine similarity of the chosen prompts (lower is more varied) and the mean
   similarity of each chosen prompt to its nearest past prompt (lower is newer).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from echo_os.errors import UsageError
from echo_os.intent.intent import Intent
from echo_os.intent.vocabulary import DEFAULT_TEMPLATE, PART, PART_NAMES, VOCABULARY

LAMBDA = 0.3
MIN_CANDIDATES = 120
MAX_CANDIDATES = 1500
CANDIDATES_PER_ITEM = 12


@dataclass(frozen=True)
class Candidate:
    prompt: str
    parts: dict[str, str]


@dataclass(frozen=True)
class Diversity:
    mean_pairwise_similarity: float
    past_items: int
    mean_nearest_past_similarity: float | None  # None without past work

    def lines(self) -> list[str]:
        lines = [f"diversity: mean pairwise similarity {self.mean_pairwise_similarity:.3f} "
                 "(MiniLM cosine; lower is more varied)"]
        if self.mean_nearest_past_similarity is None:
            lines.append("past work: none in this project yet")
        else:
            lines.append(f"past work: mean similarity to the nearest of {self.past_items} earlier prompts "
                         f"{self.mean_nearest_past_similarity:.3f} (lower is newer)")
        return lines

    def as_dict(self) -> dict[str, Any]:
        return {"mean_pairwise_similarity": round(self.mean_pairwise_similarity, 4), "past_items": self.past_items,
                "mean_nearest_past_similarity": None if self.mean_nearest_past_similarity is None
                else round(self.mean_nearest_past_similarity, 4)}


def wildcard_manager(wildcards_dir: Path | None):
    from dynamicprompts.wildcards import WildcardManager

    roots: list[Any] = [{name: list(values) for name, values in VOCABULARY.items()}]
    if wildcards_dir is not None and wildcards_dir.is_dir():
        roots.append(wildcards_dir)  # later roots win: a file replaces the built-in list of its name
    return WildcardManager(root_map={"": roots})


def _wildcard_names(command: Any) -> list[str]:
    from dynamicprompts.commands import WildcardCommand

    names = []
    if isinstance(command, WildcardCommand) and isinstance(command.wildcard, str):
        names.append(command.wildcard)
    for child in getattr(command, "tokens", None) or []:
        names += _wildcard_names(child)
    for option in getattr(command, "variants", None) or []:
        names += _wildcard_names(option.value)
    return names


def check_template(template: str, manager: Any, label: str) -> None:
    """UsageError naming the first problem: unbalanced braces, syntax Dynamic Prompts cannot parse, or a
    __wildcard__ that neither the vocabulary nor prompts/wildcards/ has."""
    from dynamicprompts.parser.parse import parse
    from pyparsing import ParseBaseException

    depth = 0
    for position, char in enumerate(template):
        depth += (char == "{") - (char == "}")
        if depth < 0:
            raise UsageError(f"{label}: a '}}' at character {position + 1} closes no '{{' in {template!r}; "
                             "variants look like {a|b|c}.")
    if depth:
        raise UsageError(f"{label}: a '{{' is never closed in {template!r}; variants look like {{a|b|c}}.")
    try:
        parsed = parse(template)
    except ParseBaseException as error:
        raise UsageError(f"{label}: cannot read the template {template!r} ({error.msg} at character "
                         f"{error.loc + 1}); variants look like {{a|b|c}}, wildcards like __name__.") from None
    known = sorted(manager.get_collection_names())
    for name in _wildcard_names(parsed):
        if not manager.get_all_values(name):
            raise UsageError(f"{label}: unknown wildcard __{name}__; known: {', '.join(known)} "
                             "(add prompts/wildcards/{name}.txt, one value per line).".replace("{name}", name))


def generate_candidates(intent: Intent, *, count: int, seed: int, template: str | None,
                        wildcards_dir: Path | None) -> list[Candidate]:
    """Distinct candidates (at most MAX_CANDIDATES), in a seeded order; none mentions an excluded thing."""
    from dynamicprompts.generators import RandomPromptGenerator

    manager = wildcard_manager(wildcards_dir)
    check_template(intent.theme, manager, "the intent")
    variation = DEFAULT_TEMPLATE if template is None else template
    if template is not None:
        check_template(template, manager, "--template")
    full = PART.join(part for part in (intent.theme, variation) if part.strip())
    generator = RandomPromptGenerator(wildcard_manager=manager, seed=seed)
    wanted = min(MAX_CANDIDATES, max(MIN_CANDIDATES, count * CANDIDATES_PER_ITEM))
    names = ("theme", *PART_NAMES) if template is None and intent.theme.strip() else None
    seen: dict[str, Candidate] = {}
    for text in generator.generate(full, wanted):
        pieces = [" ".join(piece.split()).strip(" ,") for piece in text.split(PART)]
        pieces = [piece for piece in pieces if piece]
        prompt = ", ".join(pieces)
        if not prompt or prompt in seen or intent.mentions_excluded(", ".join(pieces[1:] if intent.theme else pieces)):
            continue
        parts = dict(zip(names, pieces)) if names and len(pieces) == len(names) else {"prompt": prompt}
        seen[prompt] = Candidate(prompt=prompt, parts=parts)
    return list(seen.values())


def mmr_select(candidates: np.ndarray, query: np.ndarray, past: np.ndarray, count: int,
               lam: float = LAMBDA) -> list[int]:
    """Indices of `count` rows of `candidates` (L2-normalised) chosen by maximal marginal relevance
    against `query` (one vector) and `past` (rows already made, maybe none)."""
    relevance = candidates @ query
    nearest = (candidates @ past.T).max(axis=1) if len(past) else np.full(len(candidates), -1.0, dtype=np.float32)
    chosen: list[int] = []
    available = np.ones(len(candidates), dtype=bool)
    for _ in range(min(count, len(candidates))):
        scores = lam * relevance - (1 - lam) * np.maximum(nearest, -1.0)
        if not len(past) and not chosen:
            scores = relevance.copy()  # the first pick: the candidate closest to the intent
        scores[~available] = -np.inf
        pick = int(np.argmax(scores))
        chosen.append(pick)
        available[pick] = False
        nearest = np.maximum(nearest, candidates @ candidates[pick])
    return chosen


def measure(chosen: np.ndarray, past: np.ndarray) -> Diversity:
    n = len(chosen)
    if n > 1:
        similarity = chosen @ chosen.T
        pairwise = float((similarity.sum() - np.trace(similarity)) / (n * (n - 1)))
    else:
        pairwise = 0.0
    nearest = float((chosen @ past.T).max(axis=1).mean()) if len(past) and n else None
    return Diversity(mean_pairwise_similarity=pairwise, past_items=len(past), mean_nearest_past_similarity=nearest)


def plan_offline(intent: Intent, *, count: int, seed: int, template: str | None, wildcards_dir: Path | None,
                 past: np.ndarray | None, embed) -> tuple[list[Candidate], Diversity]:
    """Choose `count` candidates; `embed(texts) -> normalised rows` (MiniLM in the CLI); `past`: the
    normalised MiniLM vectors of the project's past work (None: none)."""
    candidates = generate_candidates(intent, count=count, seed=seed, template=template, wildcards_dir=wildcards_dir)
    if len(candidates) < count:
        raise UsageError(f"the template makes only {len(candidates)} distinct prompts without the excluded words; "
                         f"add variants ({{a|b|c}}) or wildcards, or ask for --count {len(candidates)} or fewer.")
    vectors = embed([c.prompt for c in candidates])
    query = embed([intent.theme or intent.text])[0]
    if past is None or not len(past):
        past = np.zeros((0, vectors.shape[1]), dtype=np.float32)
    picks = mmr_select(vectors, query, past, count)
    return [candidates[i] for i in picks], measure(vectors[picks], past)


def new_seed() -> int:
    return random.SystemRandom().randrange(2**31)



