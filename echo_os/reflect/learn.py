"""`echo-os memory learn-from ID [ID ...]`: a named style learned from artifacts the user likes (issue 28).

What is learned, from each source artifact:
- its style phrases: the comma phrases of its prompt that name light, palette, lens (and framing),
  medium or mood (the words `memory analyze` finds recurring in a motif), never its subject: a phrase
  with no style word is left out, so is the prompt's first phrase unless it is short or a vocabulary
  entry (that is where a prompt names its subject), and so is any phrase holding the story's own
  description, characters or location. Across several sources, phrases shared by more come first.
- its palette: k-means (FAISS, Euclidean, seeded) over its pixels, each centre named with the nearest
  colour of COLOUR_NAMES; the names of clusters with at least MIN_SHARE of the pixels, largest first.
- its negative prompt (the sources' phrases, once each).
- with an IP-Adapter on this machine (a models.toml `ip-adapter` entry that resolves), the first source
  image as a style reference at `scale`: a render with `--style NAME` gets it as one more IP-Adapter input.

The style is written to styles.toml with its provenance (`learned`: source ids, method, palette, time)
and shown by `echo-os styles show NAME`.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import numpy as np

from echo_os.artifacts.meta import ArtifactMeta
from echo_os.errors import UsageError

if TYPE_CHECKING:
    from echo_os.artifacts.store import Artifact, ArtifactStore
    from echo_os.render.styles import Style
    from echo_os.settings import Settings

PALETTE_K = 5
MIN_SHARE = 0.08  # a colour on less than 8% of the image is a detail, not the palette
PALETTE_PIXELS = 4096  # pixels sampled per image: the palette of a 1024x1024 image does not need a million
DEFAULT_SCALE = 0.5  # a style reference should steer the look, not copy the picture (characters use 0.6)
SHORT_PHRASE_WORDS = 4

# Style words by kind, written for echo-os; the planner's vocabulary lists (echo_os.intent.vocabulary) count too.
STYLE_WORDS: dict[str, tuple[str, ...]] = {
    "light": ("light", "lighting", "lit", "sunlight", "sunset", "sunrise", "dusk", "dawn", "twilight", "golden hour",
              "blue hour", "glow", "glowing", "shadow", "shadows", "moonlight", "neon", "chiaroscuro", "backlit",
              "rim", "candlelight", "firelight", "overcast", "haze", "hazy", "god rays", "volumetric", "softbox",
              "aurora", "bioluminescent", "sun", "night"),
    "palette": ("palette", "tones", "toned", "monochrome", "pastel", "muted", "saturated", "desaturated", "sepia",
                "black and white", "colour", "color", "colours", "colors", "hues", "amber", "teal", "indigo",
                "crimson", "ochre", "emerald", "cobalt", "magenta", "silver", "gold", "grey", "gray"),
    "lens": ("lens", "mm", "f/", "bokeh", "depth of field", "shot", "angle", "close-up", "close up", "wide",
             "telephoto", "macro", "fisheye", "tilt-shift", "anamorphic", "panoramic", "aerial", "bird's-eye",
             "view", "composition", "rule of thirds", "framing", "framed", "symmetrical", "isometric"),
    "medium": ("photo", "photograph", "photography", "painting", "watercolor", "watercolour", "oil", "ink",
               "illustration", "render", "3d", "film", "grain", "sketch", "drawing", "gouache", "charcoal",
               "digital art", "concept art", "matte painting", "analog", "polaroid", "kodak", "cinematic", "still",
               "engraving", "woodcut", "pixel art", "anime", "documentary", "brushwork", "linework", "art"),
    "mood": ("calm", "serene", "moody", "eerie", "melancholic", "melancholy", "dramatic", "dreamy", "mysterious",
             "peaceful", "tense", "uneasy", "ominous", "joyful", "cozy", "nostalgic", "somber", "sombre",
             "atmospheric", "whimsical", "gloomy", "fierce", "quiet", "lonely", "mood", "epic"),
}

# Named colours (sRGB), written for echo-os: enough names to tell a palette apart, few enough to read.
COLOUR_NAMES: dict[str, tuple[int, int, int]] = {
    "black": (15, 15, 15), "charcoal": (54, 54, 58), "slate grey": (96, 104, 112), "grey": (128, 128, 128),
    "silver": (192, 192, 196), "ivory": (240, 236, 222), "white": (250, 250, 250), "cream": (238, 225, 190),
    "beige": (210, 190, 150), "sand": (194, 170, 120), "tan": (170, 130, 90), "brown": (110, 70, 40),
    "chocolate": (70, 40, 25), "rust": (160, 70, 35), "terracotta": (195, 95, 65), "burnt orange": (205, 100, 30),
    "orange": (240, 140, 40), "amber": (240, 175, 40), "gold": (212, 175, 55), "ochre": (200, 150, 50),
    "yellow": (240, 220, 60), "olive": (110, 110, 40), "sage": (150, 170, 130), "moss green": (90, 110, 50),
    "green": (60, 150, 60), "emerald": (20, 130, 80), "forest green": (30, 75, 40), "mint": (170, 230, 200),
    "teal": (20, 120, 120), "turquoise": (60, 200, 200), "cyan": (80, 220, 240), "sky blue": (130, 190, 235),
    "blue": (40, 90, 200), "cobalt": (0, 70, 170), "navy": (20, 30, 80), "indigo": (60, 40, 120),
    "violet": (140, 80, 200), "lavender": (190, 170, 225), "purple": (110, 40, 120), "magenta": (200, 40, 150),
    "pink": (240, 160, 190), "dusty rose": (190, 130, 140), "coral": (240, 120, 100), "red": (200, 30, 30),
    "crimson": (160, 20, 40), "maroon": (100, 20, 30), "peach": (250, 200, 160),
}

METHOD = (f"learn-from: style phrases of the prompt (light, palette, lens, medium, mood; not the subject), "
          f"palette by k-means (k={PALETTE_K}) over the pixels named with COLOUR_NAMES, the negative prompt")


@dataclass(frozen=True)
class LearnedStyle:
    style: "Style"
    phrases: tuple[str, ...]
    excluded: tuple[str, ...]  # the prompt phrases left out (the subject)
    palette: tuple[str, ...]
    note: str | None = None  # why there is no reference image, when there is none


# ---- phrases ------------------------------------------------------------------------------------------

def _has_word(text: str, word: str) -> bool:
    return re.search(rf"(?<![\w]){re.escape(word)}(?![\w])", text) is not None


def style_kind(phrase: str) -> str | None:
    """light, palette, lens, medium or mood when the phrase names one; None (its subject) otherwise."""
    from echo_os.intent.vocabulary import VOCABULARY

    text = phrase.lower()
    for part, kind in (("lighting", "light"), ("palette", "palette"), ("lens", "lens"), ("composition", "lens")):
        if text in VOCABULARY.get(part, []):
            return kind
    if re.search(r"\d+\s?mm\b|f/\d", text):
        return "lens"
    for kind, words in STYLE_WORDS.items():
        if any(_has_word(text, word) for word in words):
            return kind
    return None


def _story_texts(artifact: "Artifact") -> list[str]:
    story = artifact.meta.story
    return [t.lower() for t in (story.description, story.location, *story.characters, *story.props) if t]


def style_phrases(artifact: "Artifact") -> tuple[list[str], list[str]]:
    """(style phrases, excluded phrases) of one artifact's prompt."""
    from echo_os.intent.vocabulary import VOCABULARY
    from echo_os.resonance.analyze import prompt_phrases

    vocabulary = {entry for values in VOCABULARY.values() for entry in values}
    subject_texts = _story_texts(artifact)
    kept: list[str] = []
    excluded: list[str] = []
    for index, phrase in enumerate(prompt_phrases(artifact.meta.prompt)):
        kind = style_kind(phrase)
        first_and_long = index == 0 and phrase not in vocabulary and len(phrase.split()) > SHORT_PHRASE_WORDS
        names_subject = any(text in phrase or phrase in text for text in subject_texts)
        (excluded if kind is None or first_and_long or names_subject else kept).append(phrase)
    story = artifact.meta.story
    for extra in (story.lighting, story.camera, story.mood):  # the storyboard's own style columns
        if extra and extra.lower() not in kept:
            kept.append(extra.lower())
    return kept, excluded


# ---- palette ------------------------------------------------------------------------------------------

def colour_name(rgb: np.ndarray) -> str:
    """The nearest COLOUR_NAMES entry, by a perceptual weighting of RGB distance ("redmean")."""
    r, g, b = (float(v) for v in rgb)
    best, best_distance = "", float("inf")
    for name, (nr, ng, nb) in COLOUR_NAMES.items():
        mean_r = (r + nr) / 2
        distance = (2 + mean_r / 256) * (r - nr) ** 2 + 4 * (g - ng) ** 2 + (2 + (255 - mean_r) / 256) * (b - nb) ** 2
        if distance < best_distance:
            best, best_distance = name, distance
    return best


def image_palette(image, k: int = PALETTE_K, seed: int = 0) -> list[tuple[str, float]]:
    """(colour name, share of pixels) of the image's main colours, largest first; one name once."""
    import faiss

    pixels = np.asarray(image.convert("RGB"), dtype=np.float32).reshape(-1, 3)
    if len(pixels) > PALETTE_PIXELS:
        pixels = pixels[np.random.default_rng(seed).choice(len(pixels), PALETTE_PIXELS, replace=False)]
    k = max(1, min(k, len(np.unique(pixels, axis=0))))
    model = faiss.Kmeans(3, k, niter=25, seed=seed, spherical=False, verbose=False, min_points_per_centroid=1)
    model.train(np.ascontiguousarray(pixels))
    _, labels = model.index.search(np.ascontiguousarray(pixels), 1)
    shares = Counter(labels[:, 0].tolist())
    named: dict[str, float] = {}
    assert model.centroids is not None  # train() sets them
    for label, count in shares.most_common():
        name = colour_name(model.centroids[label])
        named[name] = named.get(name, 0.0) + count / len(pixels)
    return sorted(named.items(), key=lambda item: -item[1])


# ---- the style ----------------------------------------------------------------------------------------

def find_style_adapter(settings: "Settings", name: str | None) -> tuple[str | None, str | None]:
    """(adapter entry, None) when one resolves here, else (None, why). name: a models.toml entry, or None
    for the first `ip-adapter` entry that resolves."""
    from echo_os.engines.ip_adapter import resolve_adapter
    from echo_os.errors import EchoError
    from echo_os.models import load_registry

    if name is not None:
        resolve_adapter(settings, name)  # a named adapter that is not here is an error, with what to do
        return name, None
    reasons = []
    for entry in sorted((e for e in load_registry(settings).entries() if e.type == "ip-adapter"), key=lambda e: e.name):
        try:
            resolve_adapter(settings, entry.name)
            return entry.name, None
        except EchoError as error:
            reasons.append(f"{entry.name}: {error}")
    return None, "; ".join(reasons) or "no ip-adapter entry in models.toml, so no reference image"


def learn_style(settings: "Settings", store: "ArtifactStore", ids: list[str], *, name: str | None = None,
                adapter: str | None = None, scale: float = DEFAULT_SCALE, reference: bool = True,
                replace: bool = False) -> LearnedStyle:
    """Learn a style from the artifacts `ids` and save it in styles.toml (see the module docstring)."""
    from PIL import Image

    from echo_os.render.styles import (
        Style,
        StyleReference,
        StyleSource,
        check_name,
        read_workspace_styles,
        write_workspace_styles,
    )

    if not ids:
        raise UsageError("learn-from: give at least one artifact id (see `echo-os artifacts list`).")
    if not 0.0 <= scale <= 2.0:
        raise UsageError(f"--scale must be from 0 to 2, got {scale:g}.")
    artifacts = [store.open(artifact_id) for artifact_id in ids]
    if any(a.meta.model_dump().get("kind") == "video" for a in artifacts):
        raise UsageError("learn-from takes images, not videos.")
    name = check_name(name or f"learned-{artifacts[0].id[:8]}", option="name")
    current = read_workspace_styles(settings)
    if name.casefold() in current and not replace:
        raise UsageError(f"style {current[name.casefold()].name!r} is already in styles.toml; --replace overwrites it.")
    adapter_name, why = (find_style_adapter(settings, adapter) if reference
                         else (None, "no reference image asked for (--no-reference)"))

    counts: Counter[str] = Counter()
    order: list[str] = []
    excluded: list[str] = []
    negatives: list[str] = []
    palette_share: dict[str, float] = {}
    for artifact in artifacts:
        kept, left_out = style_phrases(artifact)
        counts.update(set(kept))
        order += [p for p in kept if p not in order]
        excluded += [p for p in left_out if p not in excluded]
        negative = artifact.meta.negative_prompt if isinstance(artifact.meta, ArtifactMeta) else ""
        for phrase in (negative or "").split(","):
            if phrase.strip() and phrase.strip() not in negatives:
                negatives.append(phrase.strip())
        with Image.open(artifact.image_path) as image:
            image.load()
            for colour, share in image_palette(image):
                palette_share[colour] = palette_share.get(colour, 0.0) + share / len(artifacts)
    phrases = sorted(order, key=lambda p: (-counts[p], order.index(p)))
    palette = tuple(c for c, share in sorted(palette_share.items(), key=lambda item: -item[1]) if share >= MIN_SHARE)
    words = [*phrases, *([f"palette of {', '.join(palette[:4])}"] if palette else [])]
    prompt = "{prompt}" + ("".join(f", {w}" for w in words))
    style_reference = None
    if adapter_name is not None:
        first = artifacts[0]
        style_reference = StyleReference(
            adapter=adapter_name, path=first.image_path.resolve().relative_to(settings.artifacts_dir.resolve()).as_posix(),
            sha256=hashlib.sha256(first.image_path.read_bytes()).hexdigest(), scale=scale)
    method = METHOD + (f", the image {artifacts[0].id[:12]} as an IP-Adapter reference ({adapter_name}, scale {scale:g})"
                       if style_reference else "")
    style = Style(name, prompt, ", ".join(negatives),
                  learned=StyleSource(sources=tuple(a.id for a in artifacts), method=method, palette=palette,
                                      created=datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")),
                  reference=style_reference)
    current[name.casefold()] = style
    write_workspace_styles(settings, current)
    return LearnedStyle(style=style, phrases=tuple(phrases), excluded=tuple(excluded), palette=palette,
                        note=None if style_reference else why)
