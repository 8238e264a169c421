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
from echo_os.intent.intent import Intent, to_english
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
    mean_similarity_to_intent: float | None = None

    def lines(self) -> list[str]:
        lines = []
        if self.mean_similarity_to_intent is not None:
            lines.append(f"relevance: mean similarity to the intent {self.mean_similarity_to_intent:.3f} "
                         "(MiniLM cosine; higher is nearer what was asked)")
        lines.append(f"diversity: mean pairwise similarity {self.mean_pairwise_similarity:.3f} "
                     "(MiniLM cosine; lower is more varied)")
        if self.mean_nearest_past_similarity is None:
            lines.append("past work: none in this project yet")
        else:
            lines.append(f"past work: mean similarity to the nearest of {self.past_items} earlier prompts "
                         f"{self.mean_nearest_past_similarity:.3f} (lower is newer)")
        return lines

    def as_dict(self) -> dict[str, Any]:
        return {"mean_similarity_to_intent": None if self.mean_similarity_to_intent is None
                else round(self.mean_similarity_to_intent, 4),
                "mean_pairwise_similarity": round(self.mean_pairwise_similarity, 4), "past_items": self.past_items,
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


def measure(chosen: np.ndarray, past: np.ndarray, query: np.ndarray | None = None) -> Diversity:
    n = len(chosen)
    if n > 1:
        similarity = chosen @ chosen.T
        pairwise = float((similarity.sum() - np.trace(similarity)) / (n * (n - 1)))
    else:
        pairwise = 0.0
    nearest = float((chosen @ past.T).max(axis=1).mean()) if len(past) and n else None
    to_intent = float((chosen @ query).mean()) if query is not None and n else None
    return Diversity(mean_pairwise_similarity=pairwise, past_items=len(past), mean_nearest_past_similarity=nearest,
                     mean_similarity_to_intent=to_intent)


def new_seed() -> int:
    return random.SystemRandom().randrange(2**31)





# -- the vocabulary planner (no --template) ----------------------------------------------------------

DEFAULT_DIVERSITY = 0.5  # lambda = 1 - diversity: relevance and variety weigh the same
VARIANTS_PER_SUBJECT = 3
ERA_WORDS = set("medieval victorian steampunk gothic retro ottoman baroque viking ancient futuristic sci-fi "
                "colonial renaissance edwardian art-deco deco nouveau byzantine elven dwarven orcish "
                "mid-century 1920s 1950s iznik".split())


@dataclass(frozen=True)
class OfflinePlan:
    chosen: list[Candidate]
    diversity: Diversity
    intent: Intent  # with its widened exclusions (excluded_terms)
    framing: str  # asset, texture, pattern or scene
    on_topic_subjects: int
    notes: list[str]


def framing_for(intent: Intent, top_domain, kind: str) -> str:
    from echo_os.intent.subjects import FRAMING_WORDS

    if kind == "story":
        return "scene"
    words = [w.lower() for w in (intent.theme + " " + intent.english).replace(",", " ").split()]
    for wanted in ("texture", "pattern", "asset", "scene"):
        if any(FRAMING_WORDS.get(word) == wanted for word in words):
            return wanted
    return top_domain.framing if top_domain is not None else "scene"


def palettes_for(intent: Intent, framing: str = "scene", domain: str | None = None) -> list[str]:
    """Palettes consistent with the intent's colour and temperature words (all of them when it names none;
    the neutral ones for a texture, whose material has its own colours). A domain with palettes of its own
    (subjects.DOMAIN_PALETTES: weapons in steel, iron, leather and wood; a tile tradition in its glazes)
    uses those that fit the intent, the general ones only when none does."""
    from echo_os.intent.subjects import COLOUR_WORDS, COOL_WORDS, DOMAIN_PALETTES, PALETTES, WARM_WORDS

    words = {w.strip(".").lower() for w in (intent.theme + " " + intent.english).replace(",", " ").split()}
    families = {COLOUR_WORDS[w] for w in words if w in COLOUR_WORDS}
    temperature = "warm" if words & WARM_WORDS else "cool" if words & COOL_WORDS else None

    def fitting(palettes) -> list[str]:
        return [name for name, temp, hues in palettes
                if (not families or families & set(hues))
                and (temperature is None or temp in (temperature, "neutral") and (temp == temperature or not families))
                and not intent.mentions_excluded(name)]

    own = fitting(DOMAIN_PALETTES.get(domain or "", ()))
    if own:
        return own
    chosen = fitting(PALETTES)
    if framing == "texture" and not families and temperature is None:
        chosen = [name for name, temp, _ in PALETTES if temp == "neutral"]
    return chosen or [name for name, temp, _ in PALETTES if temperature is None or temp == temperature]


def lighting_for(intent: Intent) -> list[str]:
    from echo_os.intent.subjects import LIGHTING, MOOD_WORDS

    words = {w.lower() for w in (intent.theme + " " + intent.english).replace(",", " ").replace("'s", "").split()}
    moods = list(dict.fromkeys(MOOD_WORDS[w] for w in words if w in MOOD_WORDS))
    return [light for mood in (moods or list(LIGHTING)) for light in LIGHTING[mood]]


def subject_phrase(domain, noun: str, rng: random.Random, intent: Intent) -> str:
    """The noun with two or three of its domain's attributes ("a battle-worn longsword of damascus steel,
    with runic engravings"); axes the intent already fixes (an era it names) or that name an excluded
    thing are left out."""
    intent_words = set((intent.theme + " " + intent.english).lower().replace(",", " ").split())
    axes = {axis: [v for v in values if not intent.mentions_excluded(v)]
            for axis, values in domain.attributes.items()}
    if intent_words & ERA_WORDS:
        axes.pop("era", None)
    axes = {axis: values for axis, values in axes.items() if values}
    picked = rng.sample(sorted(axes), k=min(len(axes), rng.choice((3, 4))))
    value = {axis: rng.choice(axes[axis]) for axis in picked}
    front = " ".join(v for axis in ("condition", "scale", "era") if (v := value.get(axis))
                     and not (axis == "scale" and " " in v))
    phrase = f"{front} {noun}".strip()
    if "material" in value:
        phrase += f" of {value['material']}" if domain.framing != "texture" else ""
        if domain.framing == "texture":
            phrase = f"{value['material']} {phrase}"
    if "ornament" in value:
        phrase += f", {value['ornament']}"
    if "scale" in value and " " in value["scale"]:
        phrase += f", {value['scale']}"
    return phrase


def _scene_parts(rng: random.Random, lights: list[str]) -> list[str]:
    from echo_os.intent.subjects import COMPOSITIONS, LENSES

    return [f"{rng.choice(COMPOSITIONS)}, {rng.choice(LENSES)}", rng.choice(lights)]


def theme_words(intent: Intent) -> str:
    """The intent's own words first; its English reading after them when the glossary changed something."""
    english = intent.english
    return intent.theme if english.lower() == intent.theme.lower() else f"{intent.theme} ({english})"


def vocabulary_candidates(intent: Intent, subjects, framing: str, seed: int, count: int) -> list[Candidate]:
    """Per on-topic subject, VARIANTS_PER_SUBJECT prompts: the subject varied along its domain's axes, then
    the intent's words, a palette consistent with the intent, and the framing (a scene: composition, lens
    and lighting)."""
    from echo_os.intent.subjects import FRAMINGS

    rng = random.Random(seed)
    by_domain: dict[str | None, list[str]] = {}

    def palettes(domain: str | None) -> list[str]:
        if domain not in by_domain:
            by_domain[domain] = palettes_for(intent, framing, domain)
        return by_domain[domain]

    lights = lighting_for(intent)
    head = theme_words(intent)
    seen: dict[str, Candidate] = {}
    pool = list(subjects[: max(count * 3, 40)])
    own = [None] * max(0, count - len(pool))  # too few subjects: vary the intent's own words
    for scored in pool + own:
        for _ in range(VARIANTS_PER_SUBJECT):
            subject = subject_phrase(scored.domain, scored.noun, rng, intent) if scored else ""
            palette = rng.choice(palettes(scored.domain.name if scored else None))
            tail = [FRAMINGS[framing]] if framing in FRAMINGS else _scene_parts(rng, lights)
            # The subject first, then the intent's words: the item's own subject leads (SDXL weighs early
            # tokens more), and the intent, repeated word for word at the head of every item, would
            # otherwise make every prompt open the same way.
            pieces = [subject, head, palette, *tail]
            pieces = [p for p in pieces if p]
            prompt = ", ".join(pieces)
            if prompt in seen or intent.mentions_excluded(", ".join(p for p in pieces if p != head)):
                continue
            parts = {"theme": head, "subject": subject or head, "palette": palette}
            if framing == "scene":
                parts.update({"camera": tail[0], "lighting": tail[1]})
            else:
                parts["framing"] = tail[0]
            seen[prompt] = Candidate(prompt=prompt, parts=parts)
    return list(seen.values())


def mmr_relevance(candidates: np.ndarray, relevance: np.ndarray, past: np.ndarray, count: int,
                  lam: float) -> list[int]:
    """Greedy maximal marginal relevance (Carbonell & Goldstein 1998): each pick maximises
    lam * relevance - (1 - lam) * max similarity to what is chosen or was made before."""
    nearest = (candidates @ past.T).max(axis=1) if len(past) else np.zeros(len(candidates), dtype=np.float32)
    chosen: list[int] = []
    available = np.ones(len(candidates), dtype=bool)
    for _ in range(min(count, len(candidates))):
        scores = lam * relevance - (1 - lam) * nearest
        scores[~available] = -np.inf
        pick = int(np.argmax(scores))
        chosen.append(pick)
        available[pick] = False
        nearest = np.maximum(nearest, candidates @ candidates[pick])
    return chosen


def prepare_intent(intent: Intent, embed):
    """(the intent with its widened exclusions, the vocabulary, the intent's vector, the exclusions' vectors)."""
    import dataclasses

    from echo_os.intent.relevance import exclusion_terms, load_vocabulary

    vocabulary = load_vocabulary(embed)
    intent = dataclasses.replace(intent, excluded_terms=exclusion_terms(intent, vocabulary, embed))
    query = embed([intent.english or intent.text])[0]
    excluded = embed([to_english(e) for e in intent.exclusions]) if intent.exclusions else np.zeros((0, len(query)),
                                                                                                   np.float32)
    return intent, vocabulary, query, excluded


def plan_offline(intent: Intent, *, count: int, seed: int, template: str | None, wildcards_dir: Path | None,
                 past: np.ndarray | None, embed, diversity: float = DEFAULT_DIVERSITY,
                 kind: str = "prompts") -> OfflinePlan:
    """Choose `count` candidates; `embed(texts) -> normalised rows` (MiniLM in the CLI); `past`: the
    normalised MiniLM vectors of the project's past work (None: none). With a template, its Dynamic
    Prompts expansions are the candidates; else the subject vocabulary's on-topic members, varied."""
    from echo_os.intent.relevance import on_topic_subjects

    lam = 1.0 - diversity
    intent, vocabulary, query, excluded = prepare_intent(intent, embed)
    if past is None or not len(past):
        past = np.zeros((0, len(query)), dtype=np.float32)
    notes: list[str] = []
    if template is not None:
        candidates = generate_candidates(intent, count=count, seed=seed, template=template,
                                         wildcards_dir=wildcards_dir)
        if len(candidates) < count:
            raise UsageError(f"the template makes only {len(candidates)} distinct prompts without the excluded "
                             f"words; add variants ({{a|b|c}}) or wildcards, or ask for --count {len(candidates)} "
                             "or fewer.")
        framing, on_topic = "template", len(candidates)
        vectors = embed([c.prompt for c in candidates])
        relevance = vectors @ query
    else:
        manager = wildcard_manager(wildcards_dir)
        check_template(intent.theme, manager, "the intent")
        subjects = on_topic_subjects(intent, vocabulary, query, excluded)
        framing = framing_for(intent, subjects[0].domain if subjects else None, kind)
        candidates = vocabulary_candidates(intent, subjects, framing, seed, count)
        on_topic = len(subjects)
        if on_topic < count:
            notes.append(f"the vocabulary has {on_topic} subject{'s' if on_topic != 1 else ''} on the topic "
                         f"{intent.theme!r}; the other items vary the intent's own words. For more variety write "
                         "a --template, add prompts/wildcards/, or use the language-model planner (--method llm).")
        vectors = embed([c.prompt for c in candidates])
        by_subject = {s.noun: s.relevance for s in subjects}
        relevance = np.array([0.5 * float(v @ query) + 0.5 * by_subject.get(_noun_of(c, subjects), 0.0)
                              for c, v in zip(candidates, vectors)], dtype=np.float32)
    picks = mmr_relevance(vectors, relevance, past, count, lam)
    chosen = vectors[picks]
    return OfflinePlan(chosen=[candidates[i] for i in picks], diversity=measure(chosen, past, query),
                       intent=intent, framing=framing, on_topic_subjects=on_topic, notes=notes)


def _noun_of(candidate: Candidate, subjects) -> str:
    subject = candidate.parts.get("subject", "")
    for scored in subjects:
        if scored.noun in subject:
            return scored.noun
    return ""
