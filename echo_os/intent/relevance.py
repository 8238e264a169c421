"""Relevance of the subject vocabulary to an intent (MiniLM), the widened exclusions, and the cache.

The vocabulary (subjects.subject_texts: one line per noun with its domain, and each domain's label) and
the words of the exclusion groups are embedded once with all-MiniLM-L6-v2 and cached on disk
(`vocabulary_cache_dir()`: $ECHO_OS_CACHE_DIR, else $XDG_CACHE_HOME/echo-os, else ~/.cache/echo-os), in a
file named by the sha256 of the texts, so an edited vocabulary is embedded again and nothing stale is read.

A subject's relevance is the mean of its own similarity to the intent and its domain's: "bow (medieval
and fantasy weapons)" scores high for "medieval fantasy weapons" on both counts, a nebula on neither.
On topic (and at least MIN_RELEVANCE): in the domain whose label is nearest the intent, a noun within
TOP_DOMAIN_SPAN of that domain's best noun; elsewhere, a subject within ON_TOPIC_MARGIN of the best
subject's relevance, in a domain whose label is within DOMAIN_TIE of the nearest one. Nothing off topic is
ever offered to the planner.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from echo_os.intent.intent import EXCLUSION_GROUPS, Intent, to_english
from echo_os.intent.subjects import DOMAINS, TRADITION_DOMAINS, TRADITION_WORDS, Domain, subject_index, subject_texts

ON_TOPIC_MARGIN = 0.12
MIN_RELEVANCE = 0.22
TOP_DOMAIN_SPAN = 0.15  # in the domain nearest the intent: nouns this close to its best noun are on topic
TOP_DOMAIN_OWN = 0.4  # ... or this near the intent themselves
DOMAIN_TIE = 0.05  # another domain counts only when its label is this close to the nearest domain's
GROUP_SIMILARITY = 0.5  # an excluded phrase this near (MiniLM cosine) to a group word takes the whole group
SUBJECT_EXCLUSION_SIMILARITY = 0.5


def vocabulary_cache_dir() -> Path:
    if os.environ.get("ECHO_OS_CACHE_DIR"):
        return Path(os.environ["ECHO_OS_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "echo-os"


@dataclass(frozen=True)
class Vocabulary:
    subjects: list[tuple[Domain, str]]
    subject_vectors: np.ndarray
    domain_vectors: np.ndarray  # one row per DOMAINS entry
    group_words: list[tuple[str, str]]  # (group, word)
    group_vectors: np.ndarray


def _texts() -> tuple[list[str], list[str], list[tuple[str, str]]]:
    groups = [(group, word) for group, words in EXCLUSION_GROUPS.items() for word in words]
    return subject_texts(), [d.label for d in DOMAINS], groups


_LOADED: dict[str, Vocabulary] = {}


def load_vocabulary(embed) -> Vocabulary:
    """The embedded vocabulary: from the disk cache, else embedded now (once per vocabulary version)."""
    subjects, labels, groups = _texts()
    everything = subjects + labels + [word for _, word in groups]
    digest = hashlib.sha256("\n".join(["all-MiniLM-L6-v2", *everything]).encode()).hexdigest()[:16]
    if digest in _LOADED:
        return _LOADED[digest]
    path = vocabulary_cache_dir() / f"plan-vocabulary-{digest}.npy"
    vectors = None
    if path.is_file():
        try:
            vectors = np.load(path)
        except (OSError, ValueError):
            vectors = None
        if vectors is not None and vectors.shape[0] != len(everything):
            vectors = None
    if vectors is None:
        vectors = np.asarray(embed(everything), dtype=np.float32)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp.npy")
        np.save(temporary, vectors.astype(np.float16))
        os.replace(temporary, path)
    vectors = vectors.astype(np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    a, b = len(subjects), len(subjects) + len(labels)
    vocabulary = Vocabulary(subjects=subject_index(), subject_vectors=vectors[:a], domain_vectors=vectors[a:b],
                            group_words=groups, group_vectors=vectors[b:])
    _LOADED[digest] = vocabulary
    return vocabulary


def exclusion_terms(intent: Intent, vocabulary: Vocabulary, embed) -> tuple[str, ...]:
    """The words of every exclusion group near (by meaning) to one of the intent's exclusions."""
    if not intent.exclusions:
        return ()
    english = [to_english(e) for e in intent.exclusions]
    vectors = embed(english)
    similarity = vectors @ vocabulary.group_vectors.T  # exclusions x group words
    picked: list[str] = []
    for row in similarity:
        for index in np.flatnonzero(row >= GROUP_SIMILARITY):
            group = vocabulary.group_words[index][0]
            if group not in picked:
                picked.append(group)
    terms = [word for group in picked for word in EXCLUSION_GROUPS[group]]
    return tuple(dict.fromkeys(terms))


def intent_words(intent: Intent) -> set[str]:
    return {w.strip(".!?;:'\"()").lower() for w in (intent.theme + " " + intent.english).replace(",", " ").split()}


def tradition_of(intent: Intent) -> str | None:
    """The tile tradition's domain the intent names ("iznik blue tiles": ornament_iznik), else None."""
    for word in sorted(intent_words(intent)):
        if word in TRADITION_WORDS:
            return TRADITION_WORDS[word]
    return None


@dataclass(frozen=True)
class Scored:
    domain: Domain
    noun: str
    relevance: float
    vector: np.ndarray


def on_topic_subjects(intent: Intent, vocabulary: Vocabulary, query: np.ndarray, exclusion_vectors: np.ndarray,
                      domains: set[str] | None = None) -> list[Scored]:
    """The vocabulary's subjects near the intent, best first, none excluded (by word or by meaning). An
    intent naming a tile tradition (Iznik, azulejo, zellige, Delft, Talavera) gets none of the other
    traditions' subjects, nor the general ornament domain's."""
    tradition = tradition_of(intent)
    if tradition is not None:
        others = (TRADITION_DOMAINS | {"ornament"}) - {tradition}
        domains = {d.name for d in DOMAINS if d.name not in others} & (domains if domains is not None
                                                                          else {d.name for d in DOMAINS})
    own = vocabulary.subject_vectors @ query
    by_domain = {d.name: float(v @ query) for d, v in zip(DOMAINS, vocabulary.domain_vectors)}
    relevance = np.array([(own[i] + by_domain[d.name]) / 2 for i, (d, _) in enumerate(vocabulary.subjects)])
    if len(exclusion_vectors):
        near_excluded = (vocabulary.subject_vectors @ exclusion_vectors.T).max(axis=1) >= SUBJECT_EXCLUSION_SIMILARITY
    else:
        near_excluded = np.zeros(len(relevance), dtype=bool)
    allowed = [i for i, (d, noun) in enumerate(vocabulary.subjects)
               if not near_excluded[i] and not intent.mentions_excluded(noun)
               and (domains is None or d.name in domains)]
    if not allowed:
        return []
    best = max(relevance[i] for i in allowed)
    floor = max(MIN_RELEVANCE, best - ON_TOPIC_MARGIN)
    top = max({vocabulary.subjects[i][0].name for i in allowed}, key=lambda name: by_domain[name])
    own_best = max(own[i] for i in allowed if vocabulary.subjects[i][0].name == top)

    def on_topic(i: int) -> bool:
        name = vocabulary.subjects[i][0].name
        if relevance[i] < MIN_RELEVANCE:
            return False
        if name == top:
            return bool(own[i] >= min(own_best - TOP_DOMAIN_SPAN, TOP_DOMAIN_OWN) or relevance[i] >= floor)
        return bool(relevance[i] >= floor and by_domain[name] >= by_domain[top] - DOMAIN_TIE)

    chosen = sorted((i for i in allowed if on_topic(i)), key=lambda i: -relevance[i])
    return [Scored(vocabulary.subjects[i][0], vocabulary.subjects[i][1], float(relevance[i]),
                   vocabulary.subject_vectors[i]) for i in chosen]
