"""`echo-os plan --kind story`: scenes in one place with one cast, told as an arc.

The place is the intent's theme; the scenes' subjects are the on-topic members of the subject vocabulary
(relevance.py), chosen by maximal marginal relevance so each scene shows something else of the place. Up
to two things or creatures near the intent (the vocabulary's asset domains: a fox cub, an oil lantern;
else the setting's own recurring props and creatures, subjects.SCENE_CAST: a moored rowing boat and a
gull in a harbour; never a place such as a jetty) recur as the cast (bible `characters`, each with
its own seed, so they stay the same across the scenes that list them): continuity of characters and
props. The scenes follow four phases, as a storyboard writer would: a beginning, a turn, a climax and an
aftermath, each with its light, weather, time of day and mood (golden and calm -> threatening -> storm ->
calm dawn; indoors, INDOOR_PHASES: no weather, the light and mood alone change), the scenes of a phase
taking its actions and lights in turn, and a palette per phase (a
colour script); the camera changes from scene to scene (an establishing shot first, never the same
framing twice in a row). A scene's prompt opens with its own subject, then the place and the cast.
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
    actions: tuple[str, ...]  # what happens to the scene's subject; scenes of a phase take them in turn
    lightings: tuple[str, ...]  # the phase's light and weather, one per scene in turn (each names the phase's key)
    time_of_day: str
    mood: str
    temperature: str  # the colour script: the palette family the phase leans to (when the intent names none)

    @property
    def action(self) -> str:
        return self.actions[0]

    @property
    def lighting(self) -> str:
        return self.lightings[0]


PHASES = (
    Phase("beginning", ("at rest, everything in its place", "in the last warm hour of the day",
                        "catching the low sun, long shadows across it"),
          ("golden late-afternoon light, calm air", "golden low sun raking across, long soft shadows",
           "golden haze, still air, warm reflections"), "late afternoon", "peaceful", "warm"),
    Phase("turn", ("as the wind rises and clouds gather", "as the first gusts arrive and the light drains away",
                   "under a darkening sky, loose things stirring"),
          ("threatening sky, low bruised clouds, gusting wind", "dusk under a threatening slate sky, first spits of rain",
           "a threatening squall line on the horizon, cold wind"), "dusk", "uneasy", "neutral"),
    Phase("climax", ("battered by the storm", "lashed by rain and spray", "half lost in the storm's darkness"),
          ("storm light, driving rain, a flash of lightning", "storm at night, sheets of rain in a lamp's glow",
           "storm surge, wind-torn spray, lightning behind"), "night", "dramatic", "cool"),
    Phase("aftermath", ("in the stillness after the storm", "washed clean, debris scattered, all quiet again",
                        "steaming gently as the first sun reaches it"),
          ("calm dawn, clearing sky, soft pink light, wet surfaces", "pale dawn mist lifting, puddles mirroring the sky",
           "dawn sun breaking through thinning cloud, glistening wet"), "dawn", "quiet relief", "pastel"),
)
# Indoors a story changes its light and mood, never its weather: no rain, storm or sky in a room.
INDOOR_PHASES = (
    Phase("beginning", ("at rest, everything in its place", "in the calm of an ordinary hour",
                        "catching the soft light, long quiet shadows"),
          ("warm even interior light, a calm hum", "soft lamplight pooling across, gentle shadows",
           "warm light from the fittings, still air"), "evening", "peaceful", "warm"),
    Phase("turn", ("as the lights begin to dim", "as the shadows lengthen and the hum falters",
                   "under flickering lights, the room growing uneasy"),
          ("dimming light, deepening shadows", "flickering light, cold shadows gathering in the corners",
           "a cool half-light, one lamp stuttering"), "late evening", "uneasy", "neutral"),
    Phase("climax", ("in near darkness, one harsh light left", "caught in stark flickering light",
                     "half lost in shadow, hard-edged glare"),
          ("hard chiaroscuro, a single harsh light source", "stark red warning light, deep black shadows",
           "one bare bulb swinging, hard moving shadows"), "night", "dramatic", "cool"),
    Phase("aftermath", ("in the stillness afterwards", "quiet again, everything settling",
                        "as soft light returns"),
          ("soft pale light returning, calm", "gentle morning light, dust motes in the air",
           "even restored light, quiet and clear"), "morning", "quiet relief", "pastel"),
)
CAMERAS = ("wide establishing shot, 24mm lens", "medium shot, 35mm lens", "close-up on detail, 85mm lens",
           "low angle looking up, 28mm lens", "high angle looking down, 35mm lens", "long lens across the scene, 135mm",
           "framed through a foreground opening, 50mm lens")


# Subjects made of these are the setting, not a cast member that can recur scene to scene.
SCENERY = set("water sky light mist fog shore view field fields forest sea lake river hills valley line wall "
              "seawall dunes meadow clearing floor rooftops square street lane sand sandstorm snow rain window "
              "grass dune horizon".split())


# ... and these are places: a scene happens in them, they do not recur as a character or a prop.
PLACES = set("jetty pier quay wharf dock slipway breakwater boathouse lighthouse house hut shed sheds cottage "
             "tower bridge station market hall office church chapel landing harbour port marina pontoons steps "
             "room kitchen library attic cellar corridor bay deck module dome airlock courtyard garden".split())


@dataclass(frozen=True)
class StoryPlan:
    intent: Intent
    items: list[PlanItem]
    diversity: Diversity
    notes: list[str]
    story: dict


CAST_RELEVANCE = 0.45  # a thing or creature this near the intent can be a recurring cast member


def cast_for(intent: Intent, vocabulary, query: np.ndarray, excluded: np.ndarray, subjects: list) -> list:
    """Up to two recurring cast members: things and creatures (the vocabulary's asset domains: a fox cub, a
    gardening robot, an oil lantern) near the intent; else two of the place's own subjects that are not
    scenery."""
    from echo_os.intent.relevance import on_topic_subjects
    from echo_os.intent.subjects import DOMAINS

    things = {d.name for d in DOMAINS if d.framing == "asset"}
    cast = [s for s in on_topic_subjects(intent, vocabulary, query, excluded, domains=things)
            if s.relevance >= CAST_RELEVANCE][:2]
    if cast:
        return cast
    from echo_os.intent.relevance import Scored
    from echo_os.intent.subjects import SCENE_CAST

    if subjects:  # the setting's own recurring props and creatures (a moored rowing boat, a gull)
        domain = subjects[0].domain
        own = [Scored(domain, noun, subjects[0].relevance, query) for noun in SCENE_CAST.get(domain.name, ())
               if not intent.mentions_excluded(noun)]
        if own:
            return own[:2]
    return [s for s in subjects if not set(s.noun.split()) & (SCENERY | PLACES)][:2]


def phase_palettes(intent: Intent, rng: random.Random) -> dict[str, str]:
    """A palette per phase (a colour script): warm for the beginning, muted for the turn, cool for the
    climax, soft for the aftermath, each among the palettes consistent with the intent; an intent that names
    its colours keeps one palette for the whole story."""
    from echo_os.intent.subjects import COLOUR_WORDS, PALETTES

    allowed = palettes_for(intent)
    words = {w.strip(".").lower() for w in (intent.theme + " " + intent.english).replace(",", " ").split()}
    if words & set(COLOUR_WORDS):
        one = rng.choice(allowed)
        return {phase.name: one for phase in PHASES}
    temperature = {name: temp for name, temp, _ in PALETTES}
    soft = {name for name, _, hues in PALETTES if {"pink", "white"} & set(hues)}
    chosen: dict[str, str] = {}
    for phase in PHASES:
        fits = [p for p in allowed if (p in soft if phase.temperature == "pastel" else temperature.get(p) == phase.temperature)
                and p not in chosen.values()]
        chosen[phase.name] = rng.choice(fits or allowed)
    return chosen


def phase_of(index: int, count: int, phases: tuple[Phase, ...] = PHASES) -> Phase:
    """Scene `index` of `count`: the four phases in order, each about a quarter (3 scenes: begin, climax, after)."""
    if count < 4:
        return (phases[0], phases[2], phases[3])[min(index, 2)] if count == 3 else phases[(0, 3)[index] if count == 2 else 0]
    return phases[min(3, index * 4 // count)]


def is_indoors(intent: Intent, subjects: list) -> bool:
    """The setting is indoors: the intent says so (a room, a station, a library), or, saying neither
    indoors nor outdoors, its nearest subject is in an indoor domain (a cafe, a room, a space station)."""
    from echo_os.intent.relevance import intent_words
    from echo_os.intent.subjects import INDOOR_DOMAINS, INDOOR_WORDS, OUTDOOR_WORDS

    words = intent_words(intent)
    if words & INDOOR_WORDS:
        return True
    if words & OUTDOOR_WORDS:
        return False
    return bool(subjects) and subjects[0].domain.name in INDOOR_DOMAINS


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
    cast_subjects = cast_for(intent, vocabulary, query, excluded, subjects)
    cast = {slugify(s.noun, fallback=f"cast{n}")[:60]: {"name": s.noun, "description": s.noun,
                                                          "seed": zlib.crc32(f"{seed}:{s.noun}".encode()) % 2**31}
            for n, s in enumerate(cast_subjects, start=1)}
    cast_ids = list(cast)
    location_id = slugify(intent.english or intent.theme, fallback="place")[:60]
    head = theme_words(intent)
    palettes = phase_palettes(intent, rng)  # the colour script: one palette per phase, the look holds in each
    cast_nouns = {s.noun for s in cast_subjects}
    scenery = [s for s in subjects if s.noun not in cast_nouns] or subjects
    phases = INDOOR_PHASES if is_indoors(intent, subjects) else PHASES
    vectors = np.array([s.vector for s in scenery]) if scenery else np.zeros((0, len(query)), np.float32)
    relevance = np.array([s.relevance for s in scenery], dtype=np.float32)
    past_rows = past if past is not None and len(past) else np.zeros((0, len(query)), np.float32)
    order = mmr_relevance(vectors, relevance, past_rows, count, 1.0 - diversity) if len(scenery) else []
    items: list[PlanItem] = []
    camera_index = 0
    in_phase = 0
    for index in range(count):
        phase = phase_of(index, count, phases)
        in_phase = in_phase + 1 if index and phase_of(index - 1, count, phases) is phase else 0
        subject = scenery[order[index % len(order)]].noun if order else intent.theme
        present = [cast_ids[0]] if cast_ids else []
        if len(cast_ids) > 1 and index % 2 == 1:
            present.append(cast_ids[1])
        camera = CAMERAS[0] if index == 0 else CAMERAS[1 + (camera_index % (len(CAMERAS) - 1))]
        camera_index += index > 0
        description = f"{subject}, {phase.actions[in_phase % len(phase.actions)]}"
        lighting = phase.lightings[in_phase % len(phase.lightings)]
        palette = palettes[phase.name]
        cast_words = ", ".join(cast[c]["description"] for c in present)
        # The scene's own subject first, then the place and the cast: every scene names the place, and the
        # scene's subject is what tells it apart from the others.
        prompt = ", ".join(p for p in (description, head, cast_words, palette, lighting, camera) if p)
        items.append(PlanItem(prompt=prompt, parts={
            "description": description, "characters": ";".join(present), "location": location_id,
            "camera": camera, "lighting": f"{lighting}, {palette}", "time_of_day": phase.time_of_day,
            "mood": phase.mood, "phase": phase.name}))
    scores = measure(embed([item.prompt for item in items]), past_rows, query)
    story = {"location": {"id": location_id, "description": head}, "cast": cast,
             "phases": [item.parts["phase"] for item in items]}
    return StoryPlan(intent=intent, items=items, diversity=scores, notes=notes, story=story)
