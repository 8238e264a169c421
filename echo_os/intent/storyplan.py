"""`echo-os plan --kind story`: scenes in one place with one cast, told as an arc.

The place is the intent's theme; the scenes' subjects are the on-topic members of the subject vocabulary
(relevance.py), chosen by maximal marginal relevance so each scene shows something else of the place. Two
of them recur as the cast (bible `characters`, each with its own seed, so they stay the same across the
scenes that list them): continuity of characters and props. The scenes follow four phases, as a
storyboard writer would: a beginning, a turn, a climax and an aftermath, each with its light, weather,
time of day and mood (golden and calm -> threatening -> storm -> calm dawn); the camera changes from
scene to scene (an establishing shot first, never the same framing twice in a row).
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass

import numpy as np

from echo_os.intent.intent import Intent
from echo_os.intent.offline import Diversity, measure, mmr_relevance, palettes_for, prepare_intent, theme_words
from echo_os.intent.planfile import PlanItem
from echo_os.story.slug import slugify


@dataclass(frozen=True)
class Phase:
    name: str
    action: str
    lighting: str
    time_of_day: str
    mood: str


PHASES = (
    Phase("beginning", "at rest, everything in its place", "golden late-afternoon light, calm air", "late afternoon",
          "peaceful"),
    Phase("turn", "as the wind rises and clouds gather", "threatening sky, low bruised clouds, gusting wind",
          "dusk", "uneasy"),
    Phase("climax", "battered by the storm", "storm light, driving rain, a flash of lightning", "night", "dramatic"),
    Phase("aftermath", "in the stillness after the storm", "calm dawn, clearing sky, soft pink light, wet surfaces",
          "dawn", "quiet relief"),
)
CAMERAS = ("wide establishing shot, 24mm lens", "medium shot, 35mm lens", "close-up on detail, 85mm lens",
           "low angle looking up, 28mm lens", "high angle looking down, 35mm lens", "long lens across the scene, 135mm",
           "framed through a foreground opening, 50mm lens")


# Subjects made of these are the setting, not a cast member that can recur scene to scene.
SCENERY = set("water sky light mist fog shore view field fields forest sea lake river hills valley line wall "
              "seawall dunes meadow clearing floor rooftops square street lane".split())


@dataclass(frozen=True)
class StoryPlan:
    intent: Intent
    items: list[PlanItem]
    diversity: Diversity
    notes: list[str]
    story: dict


def phase_of(index: int, count: int) -> Phase:
    """Scene `index` of `count`: the four phases in order, each about a quarter (3 scenes: begin, climax, after)."""
    if count < 4:
        return (PHASES[0], PHASES[2], PHASES[3])[min(index, 2)] if count == 3 else PHASES[(0, 3)[index] if count == 2 else 0]
    return PHASES[min(3, index * 4 // count)]


def plan_story_offline(intent: Intent, *, count: int, seed: int, past: np.ndarray | None, embed,
                       diversity: float) -> StoryPlan:
    from echo_os.intent.relevance import on_topic_subjects

    intent, vocabulary, query, excluded = prepare_intent(intent, embed)
    subjects = on_topic_subjects(intent, vocabulary, query, excluded)
    notes = []
    if len(subjects) < max(3, count // 2):
        notes.append(f"the vocabulary has {len(subjects)} subjects on the topic {intent.theme!r}; scenes repeat them "
                     "under a changing light. For more, write the story.csv yourself or use the language-model "
                     "planner (--method llm).")
    rng = random.Random(seed)
    cast_subjects = [s for s in subjects if not set(s.noun.split()) & SCENERY][:2]
    cast = {slugify(s.noun, fallback=f"cast{n}")[:60]: {"name": s.noun, "description": s.noun,
                                                          "seed": zlib.crc32(f"{seed}:{s.noun}".encode()) % 2**31}
            for n, s in enumerate(cast_subjects, start=1)}
    cast_ids = list(cast)
    location_id = slugify(intent.english or intent.theme, fallback="place")[:60]
    head = theme_words(intent)
    palette = rng.choice(palettes_for(intent))  # one palette for the whole story: the look holds together
    scenery = [s for s in subjects if all(s is not c for c in cast_subjects)] or subjects
    vectors = np.array([s.vector for s in scenery]) if scenery else np.zeros((0, len(query)), np.float32)
    relevance = np.array([s.relevance for s in scenery], dtype=np.float32)
    past_rows = past if past is not None and len(past) else np.zeros((0, len(query)), np.float32)
    order = mmr_relevance(vectors, relevance, past_rows, count, 1.0 - diversity) if len(scenery) else []
    items: list[PlanItem] = []
    camera_index = 0
    for index in range(count):
        phase = phase_of(index, count)
        subject = scenery[order[index % len(order)]].noun if order else intent.theme
        present = [cast_ids[0]] if cast_ids else []
        if len(cast_ids) > 1 and index % 2 == 1:
            present.append(cast_ids[1])
        camera = CAMERAS[0] if index == 0 else CAMERAS[1 + (camera_index % (len(CAMERAS) - 1))]
        camera_index += index > 0
        description = f"{subject}, {phase.action}"
        cast_words = ", ".join(cast[c]["description"] for c in present)
        prompt = ", ".join(p for p in (head, cast_words, description, palette, phase.lighting, camera) if p)
        items.append(PlanItem(prompt=prompt, parts={
            "description": description, "characters": ";".join(present), "location": location_id,
            "camera": camera, "lighting": f"{phase.lighting}, {palette}", "time_of_day": phase.time_of_day,
            "mood": phase.mood, "phase": phase.name}))
    scores = measure(embed([item.prompt for item in items]), past_rows, query)
    story = {"location": {"id": location_id, "description": head}, "cast": cast,
             "phases": [item.parts["phase"] for item in items]}
    return StoryPlan(intent=intent, items=items, diversity=scores, notes=notes, story=story)
