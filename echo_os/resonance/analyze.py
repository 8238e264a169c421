"""`echo-os memory analyze`: recurring motifs in a workspace's artifacts, and a style codebook from them.

Artifacts are clustered twice: by prompt (all-MiniLM-L6-v2 embeddings of the prompt text) and, when a
CLIP model is on this machine, by image (CLIP image embeddings). Clustering is FAISS k-means on the
L2-normalised vectors (FAISS is already how Echo Memory searches, so no new dependency), seeded, with
several restarts; `--k auto` tries k = 2..10 and keeps the k with the best mean silhouette (cosine
distance), the usual way to pick k when nothing else says.

Per motif: its size, recurring phrases (the comma-separated prompt phrases most members share, then
words that are much more frequent in the motif than in the workspace), typical settings (model,
scheduler, cfg, steps, style, size: the most common value and its share), its best-rated and
best-scored members, its representative prompt (the member nearest the centre), and how it changed over
time (members in created order, split into up to three periods, with each period's leading phrases).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from echo_os.artifacts.meta import IMAGE_KINDS, artifact_kind
from echo_os.errors import UsageError

if TYPE_CHECKING:
    from echo_os.artifacts.catalog import CatalogRow
    from echo_os.settings import Settings

K_AUTO_RANGE = (2, 10)
DEFAULT_SEED = 1234
_WORD_RE = re.compile(r"[a-z][a-z'-]+")
# Words too common in image prompts to say anything about a motif.
_STOPWORDS = frozenset("""a an the and or of in on at to with by for from into over under his her its their
this that is are was were be as it he she they them very highly detailed photo image picture""".split())
_SETTING_KEYS = ("model", "scheduler", "cfg", "steps", "style", "size")


@dataclass
class Period:
    start: str
    end: str
    members: int
    phrases: list[str]


@dataclass
class Motif:
    motif: int
    name: str
    size: int
    prompt: str  # the member nearest the centre
    negative: str
    phrases: list[list[Any]]  # [phrase, members having it]
    settings: dict[str, dict[str, Any]]
    best_rated: list[dict[str, Any]]
    best_scored: list[dict[str, Any]]
    over_time: list[Period]
    members: list[str]
    cohesion: float  # mean cosine of the members to their centre
    mean_rating: float | None = None  # over rated members
    strength: float = 0.0  # what --export-styles ranks by: size x cohesion, raised or lowered by ratings


@dataclass
class Clustering:
    by: str  # "prompt" or "image"
    embedder: str
    k: int
    k_auto: bool
    silhouette: float | None
    motifs: list[Motif] = field(default_factory=list)


@dataclass
class Analysis:
    project: str | None
    artifacts: int
    clusterings: list[Clustering] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- clustering ------------------------------------------------------------------------------------------

def kmeans(vectors: np.ndarray, k: int, seed: int = DEFAULT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(labels, centroids) of spherical k-means (FAISS), seeded: the same input gives the same labels."""
    import faiss

    from echo_os.memory.index import _omp_threads

    data = np.ascontiguousarray(vectors, dtype=np.float32)
    model = faiss.Kmeans(data.shape[1], k, niter=50, nredo=5, seed=seed, spherical=True, verbose=False,
                         min_points_per_centroid=1, max_points_per_centroid=100000)
    # Under ~10k artifacts one thread is fastest: OpenMP's barrier on shared cores cost 2.2 s against
    # 0.07 s for 60 x 384 vectors, k = 3 (2 busy cores), the effect memory/index.py measured for queries.
    with _omp_threads(1 if len(data) < 10_000 else faiss.omp_get_max_threads()):
        model.train(data)
        _, labels = model.index.search(data, 1)
    assert model.centroids is not None  # train() sets them
    return labels[:, 0].astype(int), model.centroids


def silhouette(vectors: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette with cosine distance (1 - cos; rows are L2-normalised)."""
    distance = 1.0 - np.asarray(vectors, dtype=np.float64) @ np.asarray(vectors, dtype=np.float64).T
    values = []
    clusters = sorted(set(labels.tolist()))
    for i, label in enumerate(labels):
        own = labels == label
        if own.sum() <= 1:
            values.append(0.0)
            continue
        a = distance[i, own].sum() / (own.sum() - 1)
        b = min(distance[i, labels == other].mean() for other in clusters if other != label)
        values.append((b - a) / max(a, b) if max(a, b) > 0 else 0.0)
    return float(np.mean(values))


def choose_k(vectors: np.ndarray, seed: int = DEFAULT_SEED) -> tuple[int, np.ndarray, np.ndarray, float]:
    """The k in K_AUTO_RANGE (at most n - 1) with the best silhouette: (k, labels, centroids, silhouette)."""
    best = None
    low, high = K_AUTO_RANGE
    for k in range(low, min(high, len(vectors) - 1) + 1):
        labels, centroids = kmeans(vectors, k, seed)
        if len(set(labels.tolist())) < 2:
            continue
        score = silhouette(vectors, labels)
        if best is None or score > best[3] + 1e-9:
            best = (k, labels, centroids, score)
    if best is None:
        labels = np.zeros(len(vectors), dtype=int)
        return 1, labels, np.asarray(vectors, dtype=np.float32).mean(axis=0, keepdims=True), 0.0
    return best


# ---- describing a motif ----------------------------------------------------------------------------------

def prompt_phrases(prompt: str) -> list[str]:
    return [p for p in (part.strip().lower() for part in prompt.split(",")) if p]


def recurring_phrases(member_prompts: list[str], all_prompts: list[str], top: int = 6) -> list[list[Any]]:
    """Comma phrases shared by at least two members (most shared first), then distinctive words."""
    phrase_counts = Counter(p for prompt in member_prompts for p in set(prompt_phrases(prompt)))
    found: list[list[Any]] = [[phrase, n] for phrase, n in phrase_counts.most_common() if n >= 2][:top]
    if len(found) < top:
        words = Counter(w for prompt in member_prompts for w in set(_WORD_RE.findall(prompt.lower()))
                        if w not in _STOPWORDS)
        overall = Counter(w for prompt in all_prompts for w in set(_WORD_RE.findall(prompt.lower())))
        share = len(member_prompts) / max(1, len(all_prompts))
        scored = sorted(((n / len(member_prompts)) * (n / overall[w] - share), w, n)
                        for w, n in words.items() if n >= 2)
        taken = {phrase for phrase, _ in found}
        for _, word, n in reversed(scored):
            if len(found) >= top:
                break
            if word not in taken and not any(word in phrase.split() for phrase in taken):
                found.append([word, n])
    return found


def _setting(row: "CatalogRow", key: str) -> Any:
    meta = row.meta
    if key == "model":
        return row.model or row.engine
    if key == "size":
        return f"{row.width}x{row.height}"
    return meta.get(key)


def typical_settings(rows: list["CatalogRow"]) -> dict[str, dict[str, Any]]:
    out = {}
    for key in _SETTING_KEYS:
        counts = Counter(str(value) for value in (_setting(row, key) for row in rows) if value not in (None, ""))
        if counts:
            value, n = counts.most_common(1)[0]
            out[key] = {"value": value, "share": round(n / len(rows), 3)}
    return out


def _objective(row: "CatalogRow") -> float | None:
    from echo_os.resonance.scores import ArtifactScores
    from echo_os.resonance.story import Objective

    scores = row.meta.get("scores")
    if not isinstance(scores, dict):
        return None
    return Objective().value(ArtifactScores.from_stored(scores))


def _over_time(rows: list["CatalogRow"], all_prompts: list[str]) -> list[Period]:
    ordered = sorted(rows, key=lambda row: row.created)
    periods = min(3, len(ordered))
    out = []
    for chunk in np.array_split(np.arange(len(ordered)), periods):
        members = [ordered[i] for i in chunk]
        phrases: list[list[Any]]  # [phrase, count]
        phrases = recurring_phrases([m.prompt for m in members], all_prompts, top=3) if len(members) > 1 else \
            [[p, 1] for p in prompt_phrases(members[0].prompt)[:3]]
        out.append(Period(start=members[0].created, end=members[-1].created, members=len(members),
                          phrases=[p for p, _ in phrases]))
    return out


def describe_motifs(rows: list["CatalogRow"], vectors: np.ndarray, labels: np.ndarray,
                    centroids: np.ndarray) -> list[Motif]:
    from echo_os.artifacts.slugs import slugify

    all_prompts = [row.prompt for row in rows]
    motifs = []
    for label in sorted(set(labels.tolist())):
        index = [i for i, value in enumerate(labels) if value == label]
        members = [rows[i] for i in index]
        centre = centroids[label] / max(float(np.linalg.norm(centroids[label])), 1e-12)
        similarity = np.asarray(vectors, dtype=np.float64)[index] @ centre
        nearest = members[int(np.argmax(similarity))]
        phrases = recurring_phrases([m.prompt for m in members], all_prompts)
        rated = sorted((m for m in members if isinstance(m.meta.get("rating"), dict)),
                       key=lambda m: (-m.meta["rating"]["value"], m.created))[:3]
        scored = sorted(((value, m) for m in members if (value := _objective(m)) is not None),
                        key=lambda item: (-item[0], item[1].created))[:3]
        negatives = Counter(m.meta.get("negative_prompt") or "" for m in members)
        name = slugify(" ".join(p for p, _ in phrases[:2]) or nearest.prompt, max_length=40) or f"motif-{label}"
        motifs.append(Motif(
            motif=0, name=name, size=len(members), prompt=nearest.prompt, negative=negatives.most_common(1)[0][0],
            phrases=phrases, settings=typical_settings(members),
            best_rated=[{"id": m.id, "rating": m.meta["rating"]["value"], "note": m.meta["rating"].get("note")}
                        for m in rated],
            best_scored=[{"id": m.id, "objective": round(v, 4)} for v, m in scored],
            over_time=_over_time(members, all_prompts), members=[m.id for m in members],
            cohesion=round(float(similarity.mean()), 4)))
        ratings = [m.meta["rating"]["value"] for m in members if isinstance(m.meta.get("rating"), dict)]
        motif = motifs[-1]
        motif.mean_rating = round(float(np.mean(ratings)), 3) if ratings else None
        # A motif the user rates 5 counts half again as strong; one rated 1, half as strong.
        bonus = 0.0 if motif.mean_rating is None else (motif.mean_rating - 3) / 4
        motif.strength = round(motif.size * motif.cohesion * (1 + bonus), 4)
    motifs.sort(key=lambda m: (-m.size, -m.cohesion, m.name))
    for number, motif in enumerate(motifs, start=1):
        motif.motif = number
    return motifs


# ---- the command's work ----------------------------------------------------------------------------------

def _open_rgb(path: Path):
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return image.convert("RGB")


def analyze_memory(settings: "Settings", *, project: str | None = None, k: int | None = None,
                   seed: int = DEFAULT_SEED, images: bool = True) -> Analysis:
    """Motifs by prompt, and by image when CLIP is here. k None: chosen by silhouette."""
    from echo_os.artifacts.catalog import Catalog
    from echo_os.memory.artifacts import build_embedders

    with Catalog(settings.catalog_path) as catalog:
        rows = [row for row in catalog.query(project=project, newest_first=False)
                if row.prompt.strip() and artifact_kind(row.meta) in IMAGE_KINDS]  # motifs are of images
    if len(rows) < 3:
        raise UsageError(f"memory analyze needs at least 3 artifacts with prompts{f' in project {project!r}' if project else ''}"
                         f" (found {len(rows)}).")
    if k is not None and not 1 <= k <= len(rows):
        raise UsageError(f"--k must be from 1 to the number of artifacts ({len(rows)}), got {k}.")
    analysis = Analysis(project=project, artifacts=len(rows))
    choice = build_embedders(settings)
    text = choice.by_kind("text")
    assert text is not None  # build_embedders always has MiniLM
    jobs = [("prompt", text)]
    clip = choice.by_kind("clip")
    if images and clip is not None:
        jobs.append(("image", clip))
    elif images:
        analysis.notes.append(f"image motifs off: {choice.skipped.get('clip', 'no CLIP model')}")
    for by, embedder in jobs:
        if by == "prompt":
            vectors = embedder.embed_texts([row.prompt for row in rows])
        else:
            vectors = embedder.embed_images([_open_rgb(settings.artifacts_dir / row.path / "image.png") for row in rows])
        score: float | None  # None: one cluster, no silhouette
        if k is None:
            chosen, labels, centroids, score = choose_k(vectors, seed)
        else:
            labels, centroids = kmeans(vectors, k, seed) if k > 1 else (np.zeros(len(rows), dtype=int),
                                                                       vectors.mean(axis=0, keepdims=True))
            chosen, score = k, (silhouette(vectors, labels) if len(set(labels.tolist())) > 1 else None)
        analysis.clusterings.append(Clustering(by=by, embedder=embedder.name, k=chosen, k_auto=k is None,
                                               silhouette=None if score is None else round(score, 4),
                                               motifs=describe_motifs(rows, vectors, labels, centroids)))
    return analysis


MOTIFS_JSON = "motifs.json"


def save_analysis(settings: "Settings", analysis: Analysis) -> Path:
    """artifacts/memory/motifs.json: the latest analysis, which `echo-os gallery` shows as its motifs section."""
    import json

    from echo_os.atomic import write_atomically

    path = settings.memory_dir / MOTIFS_JSON
    write_atomically(path, (json.dumps(analysis.as_dict(), ensure_ascii=False, indent=2) + "\n").encode("utf-8"))
    return path


# ---- the style codebook ----------------------------------------------------------------------------------

# A motif becomes a style only when it is one: enough members, and phrases about how the image looks (light,
# palette, lens, medium, mood), not what is in it ("un phare" is a subject; a style of it would paint a
# lighthouse into every prompt).
MIN_STYLE_MEMBERS = 3
STYLE_WORDS = frozenset("""
    light lights lighting lit glow glowing backlit backlight rim sunlight moonlight candlelight shadows chiaroscuro
    golden hour dusk-lit volumetric warm cool palette colour color colours colors colorful colourful tones toned hues
    monochrome monochromatic pastel sepia muted vivid saturated desaturated neon duotone black-and-white teal
    lens lenses bokeh aperture telephoto wide-angle macro fisheye anamorphic tilt-shift depth field focus
    shot close-up closeup angle composition framing symmetrical isometric panoramic
    painting painted paint watercolor watercolour oil gouache acrylic ink pencil charcoal sketch drawing
    illustration illustrated art artwork concept digital render rendered 3d cgi photo photograph photography
    photographic film analog kodak polaroid grain grainy cinematic anime manga comic engraving woodcut
    poster style stylized minimalist surreal impressionist expressionist baroque noir moody dramatic ethereal
    dreamy soft matte glossy hdr vintage retro
""".split())
_MM_RE = re.compile(r"^\d+mm$|^f/\d")


def is_style_phrase(phrase: str) -> bool:
    """Does the phrase say how the image looks (light, palette, lens, medium, mood)?"""
    words = re.findall(r"[\w/.-]+", phrase.lower())
    return any(word in STYLE_WORDS or _MM_RE.match(word) for word in words)


def style_phrases(motif: Motif) -> list[str]:
    """The motif's recurring style-like phrases (shared by two members or more), most shared first."""
    return [phrase for phrase, count in motif.phrases if count >= 2 and is_style_phrase(phrase)][:4]


def style_entry(motif: Motif) -> dict[str, str]:
    """A motif as a named style: its recurring style phrases after the user's `{prompt}`, its usual negative."""
    return {"prompt": ", ".join(["{prompt}", *style_phrases(motif)]), "negative": motif.negative}


def why_not_a_style(motif: Motif) -> str | None:
    """Why the motif is not exported as a style, or None when it is one."""
    if motif.size < MIN_STYLE_MEMBERS:
        return f"{motif.size} artifact{'s' if motif.size != 1 else ''} (a style needs {MIN_STYLE_MEMBERS} or more)"
    if not style_phrases(motif):
        shared = "; ".join(phrase for phrase, count in motif.phrases if count >= 2) or "none"
        return f"no shared phrase about light, palette, lens or medium (shared: {shared})"
    return None


@dataclass
class StyleExport:
    """What --export-styles did: styles written, names left as they were, motifs skipped and why."""

    written: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # style name -> why


def export_styles(settings: "Settings", motifs: list[Motif], *, top: int = 5) -> StyleExport:
    """Append the `top` strongest motifs (Motif.strength: size x cohesion x ratings) that make a style
    (why_not_a_style) to styles.toml as [styles.NAME] tables.

    A name already in styles.toml is left as it is (the user may have edited it).
    The format: [styles.NAME] prompt = "{prompt}, phrase, ..." negative = "..." ({prompt}: the user's prompt).
    """
    from echo_os.atomic import write_atomically
    from echo_os.models.registry import read_toml, toml_key, toml_string

    path = settings.styles_toml
    existing = read_toml(path).get("styles", {}) if path.is_file() else {}
    report = StyleExport()
    candidates = []
    for motif in sorted(motifs, key=lambda m: (-m.strength, m.motif)):
        reason = why_not_a_style(motif)
        if reason is None:
            candidates.append(motif)
        else:
            report.skipped[f"motif-{motif.name}"] = reason
    blocks = []
    for motif in candidates[:top]:
        name = f"motif-{motif.name}"
        if name in existing or name in report.written:
            report.kept.append(name)
            continue
        entry = style_entry(motif)
        blocks.append(f"\n# from `echo-os memory analyze`: motif {motif.motif}, {motif.size} artifacts\n"
                      f"[styles.{toml_key(name)}]\nprompt = {toml_string(entry['prompt'])}\n"
                      f"negative = {toml_string(entry['negative'])}\n")
        report.written.append(name)
    if blocks:
        before = path.read_text(encoding="utf-8") if path.is_file() else ""
        write_atomically(path, (before + "".join(blocks)).encode("utf-8"))
    return report
