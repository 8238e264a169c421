"""A story's reflection, after its scenes are rendered: scores, best-of-N choice, drift flags, style consistency.

    reflect_story(settings, store, plan, scenes, ResonanceOptions(best_of=3))

Order: every image of the story is scored together (each scene's candidates against the other scenes'
images); each scene keeps its `keep` best candidates by the objective (ties: the lower seed, so the
choice is reproducible); the rest stay on disk as siblings (meta.json `best_of`). Drift flags and the
story's style consistency are measured on the kept images only.

Objective (weights configurable, `--objective alignment=1,consistency=1,style=0.5,aesthetic=0.5,rating=1`):
    w_alignment * alignment/100 + w_consistency * character_consistency + w_style * style
    + w_aesthetic * aesthetic/10 + w_rating * (rating - 3)/2
Each term is on a comparable 0..1 scale (CLIP scores sit near 20-35, cosines near 0.5-0.9, LAION aesthetic
scores 1-10, ratings 1-5 map to -1..1); a term an image lacks (no characters, no head, not rated) adds 0.

Drift: a kept image is flagged when its prompt alignment (as a cosine, alignment/100) or one of its
characters' consistency is below the project's threshold; at the threshold it is not flagged.
Style consistency: the share of kept-image pairs from different scenes whose cosine is at or above
the style threshold (the product's "style consistency > 80%" target).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from echo_os.errors import UsageError
from echo_os.resonance.scores import ArtifactScores, ScoreItem, score_items, style_consistency

if TYPE_CHECKING:
    from echo_os.artifacts.store import Artifact, ArtifactStore
    from echo_os.settings import Settings
    from echo_os.story.plan import StoryPlan
    from echo_os.story.results import SceneResult

# Defaults picked for CLIP ViT-L/14: SDXL images of one look sit around 0.75-0.9 cosine to each other,
# a character against its own references around 0.7+, and a prompt it follows at a CLIP score of 22+.
DEFAULT_THRESHOLDS = {"style": 0.75, "character": 0.70, "alignment": 0.22}
DEFAULT_WEIGHTS = {"alignment": 1.0, "consistency": 1.0, "style": 0.5, "aesthetic": 0.5, "rating": 1.0}


@dataclass(frozen=True)
class Thresholds:
    style: float = DEFAULT_THRESHOLDS["style"]
    character: float = DEFAULT_THRESHOLDS["character"]
    alignment: float = DEFAULT_THRESHOLDS["alignment"]  # a cosine: CLIP score / 100

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
                raise UsageError(f"the {name} threshold must be a number from 0 to 1, got {value!r}.")


def load_thresholds(settings: "Settings", project: str, **overrides: float | None) -> Thresholds:
    """The project's thresholds: echo-os.toml [resonance] (workspace defaults), then
    [resonance.projects."PROJECT"], then what the command line gives (None: not given)."""
    values = dict(DEFAULT_THRESHOLDS)
    path = settings.home / "echo-os.toml"
    if path.is_file():
        from echo_os.models.registry import read_toml

        section = read_toml(path).get("resonance", {})
        projects = section.get("projects", {}) if isinstance(section, dict) else {}
        for where, table in (("resonance", section), (f'resonance.projects."{project}"', projects.get(project, {}))):
            if not isinstance(table, dict):
                raise UsageError(f"{path}: [{where}] must be a table.")
            for key, value in table.items():
                if key == "projects" and where == "resonance":
                    continue
                if key not in values:
                    raise UsageError(f"{path}: [{where}] {key}: unknown threshold (known: {', '.join(values)}).")
                if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
                    raise UsageError(f"{path}: [{where}] {key} must be a number from 0 to 1, got {value!r}.")
                values[key] = float(value)
    values.update({key: value for key, value in overrides.items() if value is not None})
    return Thresholds(**values)


@dataclass(frozen=True)
class Objective:
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))

    def terms(self, scores: ArtifactScores, rating: int | None) -> dict[str, float]:
        raw = {
            "alignment": None if scores.alignment is None else scores.alignment / 100.0,
            "consistency": scores.character_consistency,
            "style": scores.style,
            "aesthetic": None if scores.aesthetic is None else scores.aesthetic / 10.0,
            "rating": None if rating is None else (rating - 3) / 2.0,
        }
        return {name: value for name, value in raw.items() if value is not None}

    def value(self, scores: ArtifactScores, rating: int | None = None) -> float:
        return round(sum(self.weights.get(name, 0.0) * value for name, value in self.terms(scores, rating).items()), 6)

    def describe(self) -> str:
        scale = {"alignment": "alignment/100", "consistency": "consistency", "style": "style",
                 "aesthetic": "aesthetic/10", "rating": "(rating-3)/2"}
        return " + ".join(f"{self.weights[name]:g}*{scale[name]}" for name in scale if self.weights.get(name))


def parse_objective(text: str | None) -> Objective:
    """'alignment=1,consistency=2' -> an Objective (unnamed terms keep their default weight)."""
    weights = dict(DEFAULT_WEIGHTS)
    if text:
        for part in text.split(","):
            name, _, value = part.partition("=")
            name = name.strip()
            if name not in weights:
                raise UsageError(f"--objective: unknown term {name!r} (terms: {', '.join(weights)}).")
            try:
                weight = float(value)
            except ValueError:
                raise UsageError(f"--objective: {name} needs a number weight like {name}=1, got {value!r}.") from None
            if weight < 0:
                raise UsageError(f"--objective: {name} weight must be 0 or more, got {weight:g}.")
            weights[name] = weight
    return Objective(weights)


@dataclass
class DriftFlag:
    scene: int
    artifact: str
    kind: str  # "alignment" or "character"
    value: float
    threshold: float
    character: str | None = None
    against: dict[str, Any] = field(default_factory=dict)  # what the figure was measured on

    def line(self) -> str:
        what = f"character {self.character}" if self.character else "prompt alignment"
        return (f"drift: scene {self.scene} ({self.artifact[:12]}): {what} {self.value:.3f} < {self.threshold:.3f} "
                f"[{', '.join(f'{k}: {v}' for k, v in self.against.items())}]")


def drift_flags(scene: int, artifact_id: str, scores: ArtifactScores, thresholds: Thresholds, prompt: str = "",
                reference_paths: dict[str, list[str]] | None = None) -> list[DriftFlag]:
    """The flags one image raises: a figure strictly below its threshold."""
    flags = []
    if scores.alignment is not None and scores.alignment / 100.0 < thresholds.alignment:
        flags.append(DriftFlag(scene, artifact_id, "alignment", round(scores.alignment / 100.0, 6),
                               thresholds.alignment, against={"prompt": prompt}))
    for name, character in scores.characters.items():
        if character.score is not None and character.score < thresholds.character:
            against: dict[str, Any] = {}
            if character.reference is not None:
                against["references"] = (reference_paths or {}).get(name, [])
                against["reference_similarity"] = character.reference
            if character.scenes is not None:
                against["scenes"] = character.against_scenes
                against["scene_similarity"] = character.scenes
            flags.append(DriftFlag(scene, artifact_id, "character", character.score, thresholds.character,
                                   character=name, against=against))
    return flags


@dataclass
class ResonanceOptions:
    """What `batch` asks of the reflection. keep: scene -> images kept (the scene's count before best-of)."""

    score: bool = True
    clip: str | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)
    objective: Objective = field(default_factory=Objective)
    best_of: int = 1
    keep: dict[int, int] = field(default_factory=dict)


@dataclass
class StoryReflection:
    note: str | None = None  # why nothing was scored, when nothing was
    clip: str | None = None
    aesthetic: str | None = None
    missing: dict[str, str] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    objective: str = ""
    best_of: int = 1
    style_consistency: float | None = None
    style_pairs: int = 0
    style_pairs_at_or_above: int = 0
    flags: list[DriftFlag] = field(default_factory=list)
    kept: dict[int, list[str]] = field(default_factory=dict)
    siblings: dict[int, list[str]] = field(default_factory=dict)
    objective_values: dict[str, float] = field(default_factory=dict)
    scores: dict[str, dict] = field(default_factory=dict)

    @property
    def flagged_scenes(self) -> list[int]:
        return sorted({flag.scene for flag in self.flags})

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["flagged_scenes"] = self.flagged_scenes
        data["kept"] = {str(k): v for k, v in self.kept.items()}
        data["siblings"] = {str(k): v for k, v in self.siblings.items()}
        return data

    def lines(self) -> list[str]:
        """The batch summary's resonance lines."""
        if self.note:
            return [f"scores: skipped ({self.note})"]
        lines = []
        if self.style_consistency is not None:
            lines.append(f"style consistency: {100 * self.style_consistency:.0f}% ({self.style_pairs_at_or_above}/"
                         f"{self.style_pairs} scene pairs >= {self.thresholds['style']:g})  [CLIP {self.clip}]")
        if self.best_of > 1:
            lines.append(f"best of {self.best_of}: kept by {self.objective}")
        lines += [flag.line() for flag in self.flags]
        if not self.flags:
            lines.append("drift: no scene flagged")
        lines += [f"scorer off: {name}: {why}" for name, why in self.missing.items() if name != "clip"]
        return lines


def _open_rgb(path: Path):
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return image.convert("RGB")


def _rating(artifact: "Artifact") -> int | None:
    extra = artifact.meta.model_extra or {}
    rating = extra.get("rating")
    return rating.get("value") if isinstance(rating, dict) else None


def reflect_story(settings: "Settings", store: "ArtifactStore", plan: "StoryPlan", scenes: list["SceneResult"],
                  options: ResonanceOptions) -> StoryReflection:
    """Score the story's images, keep each scene's best, flag drift. Narrows each SceneResult's
    artifacts to the kept ones (the rest go to scene.siblings) and writes scores into meta.json."""
    from echo_os.resonance.persist import update_meta
    from echo_os.resonance.scorers import load_scorers

    reflection = StoryReflection(thresholds=asdict(options.thresholds), objective=options.objective.describe(),
                                 best_of=options.best_of)
    if not options.score:
        reflection.note = "--no-score"
        return reflection
    candidates = [(scene, artifact) for scene in scenes for artifact in scene.artifacts
                  if artifact.meta.engine.name != "draft"]
    if not candidates:
        reflection.note = "the images are draft cards, not diffusion renders"
        return reflection
    scorers = load_scorers(settings, options.clip)
    reflection.missing = dict(scorers.missing)
    if not scorers.available:
        reflection.note = scorers.missing["clip"]
        return reflection
    reflection.clip = scorers.clip_name
    reflection.aesthetic = scorers.aesthetic.name if scorers.aesthetic else None

    reference_paths: dict[str, list[str]] = {}
    for planned in plan.scenes:
        for member in planned.cast:
            if member.references:
                reference_paths.setdefault(member.id, [str(path) for path in member.references])
    references = {name: [_open_rgb(Path(p)) for p in paths] for name, paths in reference_paths.items()}
    items = [ScoreItem(id=artifact.id, image=_open_rgb(artifact.image_path), prompt=artifact.meta.prompt,
                       scene=scene.scene, characters=tuple(scene.characters)) for scene, artifact in candidates]
    scores, vectors = score_items(scorers, items, references)
    vector_of = {item.id: vectors[i] for i, item in enumerate(items)}

    kept_vectors, kept_scenes = [], []
    for scene in scenes:
        scored = [a for a in scene.artifacts if a.id in scores]
        values = {a.id: options.objective.value(scores[a.id], _rating(a)) for a in scored}
        reflection.objective_values.update(values)
        keep = options.keep.get(scene.scene, len(scene.artifacts))
        ranked = sorted(scored, key=lambda a: (-values[a.id], a.meta.seed))
        kept_ids = {a.id for a in ranked[:keep]} | {a.id for a in scene.artifacts if a.id not in scores}
        kept = [(a, r) for a, r in zip(scene.artifacts, scene.resumed) if a.id in kept_ids]
        siblings = [a for a in scene.artifacts if a.id not in kept_ids]
        for artifact in scored:
            updates: dict[str, Any] = {"scores": {**scores[artifact.id].as_dict(), "objective": values[artifact.id]}}
            if len(scored) > keep:
                updates["best_of"] = {"kept": artifact.id in kept_ids, "of": len(scored),
                                      "objective": options.objective.describe(),
                                      "rank": ranked.index(artifact) + 1,
                                      "siblings": [a.id for a in scored if a.id != artifact.id]}
            update_meta(store.catalog, store.root, str(artifact.path.relative_to(store.root)), updates)
            reflection.scores[artifact.id] = updates["scores"]
        scene.artifacts = [a for a, _ in kept]
        scene.resumed = [r for _, r in kept]
        scene.siblings = siblings
        reflection.kept[scene.scene] = [a.id for a in scene.artifacts]
        if siblings:
            reflection.siblings[scene.scene] = [a.id for a in siblings]
        for artifact in scene.artifacts:
            if artifact.id in scores:
                reflection.flags += drift_flags(scene.scene, artifact.id, scores[artifact.id], options.thresholds,
                                                artifact.meta.prompt, reference_paths)
                kept_vectors.append(vector_of[artifact.id])
                kept_scenes.append(scene.scene)
    share, above, pairs = style_consistency(kept_vectors, kept_scenes, options.thresholds.style)
    reflection.style_consistency, reflection.style_pairs_at_or_above, reflection.style_pairs = share, above, pairs
    return reflection


def load_story_json(settings: "Settings", project: str) -> dict | None:
    """The project's newest story.json (by its `created`), or None."""
    import json

    from echo_os.artifacts.slugs import slugify

    found = []
    for path in settings.artifacts_dir.glob(f"*/{slugify(project, fallback='default')}/story.json"):
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if document.get("project") == project:
            found.append((document.get("created", ""), str(path), document))
    return max(found, key=lambda item: item[:2])[2] if found else None


def candidate_plan(plan: "StoryPlan", best_of: int = 1, previous: dict | None = None,
                   reroll_flagged: bool = False) -> tuple["StoryPlan", dict[int, int]]:
    """The plan to render and, per scene, how many images to keep.

    best_of N: each scene renders max(N, count) candidates, seeds seed..seed+N-1 (one batched call per
    compatible group), and keeps its `count` best. reroll_flagged (needs `previous`, the last story.json):
    scenes flagged there render new candidates from the seed after the last one they tried; the other
    scenes render exactly the candidates they had (so they are found on disk, not rendered again).
    """
    keep = {scene.scene: scene.request.count for scene in plan.scenes}
    tried: dict[int, list[int]] = {}
    flagged: set[int] = set()
    if reroll_flagged:
        if previous is None:
            raise UsageError(f"--reroll-flagged: project {plan.project!r} has no story.json yet; render it first.")
        resonance = previous.get("resonance") or {}
        flagged = set(resonance.get("flagged_scenes") or [])
        tried = {entry["scene"]: entry.get("seeds_tried") or entry.get("seeds") or [] for entry in previous.get("scenes", [])}
        keep.update({entry["scene"]: len(entry.get("artifacts") or []) or keep.get(entry["scene"], 1)
                     for entry in previous.get("scenes", []) if entry["scene"] in keep})
    scenes = []
    for scene in plan.scenes:
        update: dict[str, int] = {}
        if reroll_flagged and tried.get(scene.scene):
            seeds = tried[scene.scene]
            if scene.scene in flagged:
                update = {"seed": max(seeds) + 1, "count": max(best_of, keep[scene.scene])}
            else:
                update = {"seed": min(seeds), "count": len(seeds)}
        elif best_of > 1:
            update = {"count": max(best_of, scene.request.count)}
        scenes.append(scene.model_copy(update={"request": scene.request.model_copy(update=update)}) if update else scene)
    return plan.model_copy(update={"scenes": scenes}), keep
