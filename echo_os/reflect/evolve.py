"""`echo-os evolve`: the automatic variation loop (issue 28).

Each round makes K variations of the current best artifact, renders them through the one render path
(echo_os.render.scheduler.render_requests, resume on), scores the parent and the candidates with one
scorer and the `--best-of` Objective (echo_os.resonance.story), and keeps the best as the parent of the
next round. It stops after N rounds, or when a round improves the objective by less than `min_gain`.

Variation operators, in turn (candidate i of a round uses operator i mod the number available):
    seed     the parent's request with a new seed
    prompt   the parent's prompt with one phrase added: from the project's well-scored prompts (objective
             at or above the project's median) and from the planner's vocabulary (lighting, lens, palette,
             composition), never a phrase the prompt already has
    refine   image-to-image from the parent at one of `strengths` (only on an engine that can: img2img)
    style    one of the workspace's learned styles (`echo-os memory learn-from`), when there are any

Every choice comes from a random.Random seeded with the run id and the round, so the same command makes
the same requests: after Ctrl-C it finds what was rendered (by request key) and goes on from there. The
run's record (rounds, candidates, scores, gains) is artifacts/evolve/<run-id>.json, rewritten after each
round; each candidate's meta.json gets an `evolve` entry (run, round, operator) and its `parent_id` is
the round's parent, so `echo-os artifacts tree` shows the rounds.

Scorers: `clip` (CLIP alignment, style against the story's other kept scenes, aesthetic head when there
is one; scores saved to meta.json as `echo-os score` does), a plugin's (hook `register_scorers`), or
`ratings` (the user rates each candidate 1..5; when no CLIP is on the machine).
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from echo_os.artifacts.meta import VideoMeta
from echo_os.errors import CancelledError, EchoError, UsageError
from echo_os.resonance.scores import ArtifactScores
from echo_os.resonance.story import Objective

if TYPE_CHECKING:
    from echo_os.artifacts.store import Artifact, ArtifactStore
    from echo_os.render.requests import RenderRequest
    from echo_os.resonance.scorers import ScorerPlugin
    from echo_os.settings import Settings

EVOLVE_DIR = "evolve"
DEFAULT_STRENGTHS = (0.3, 0.5, 0.7)
DEFAULT_MIN_GAIN = 0.001
VOCABULARY_PARTS = ("lighting", "lens", "palette", "composition")
RECORD_VERSION = 1

Progress = Callable[[str, int, int], None]  # (stage, done, total), as cli.progress.StageBars draws it


@dataclass(frozen=True)
class EvolveOptions:
    rounds: int = 3
    per_round: int = 4
    objective: Objective = field(default_factory=Objective)
    scorer: str = "clip"
    min_gain: float = DEFAULT_MIN_GAIN
    strengths: tuple[float, ...] = DEFAULT_STRENGTHS
    seed: int = 0  # another seed, another run (other choices)

    def check(self) -> None:
        if not 1 <= self.rounds <= 100:
            raise UsageError(f"--rounds must be from 1 to 100, got {self.rounds}.")
        if not 1 <= self.per_round <= 64:
            raise UsageError(f"--per-round must be from 1 to 64, got {self.per_round}.")
        if not self.min_gain >= 0:
            raise UsageError(f"--min-gain must be 0 or more, got {self.min_gain:g}.")
        if not self.strengths or not all(0 < s <= 1 for s in self.strengths):
            raise UsageError("--strengths must be numbers more than 0 and at most 1, e.g. 0.3,0.5,0.7.")


@dataclass
class Candidate:
    id: str
    operator: str  # seed, prompt, refine, style
    detail: str  # the new seed, the phrase added, the strength, the style
    score: float
    terms: dict[str, float]


@dataclass
class Round:
    round: int
    parent: str
    parent_score: float
    candidates: list[Candidate]
    best: str
    best_score: float
    gain: float  # best_score - parent_score (0 when no candidate beat the parent)
    gain_pct: float | None  # gain / |parent_score| x 100 (None when the parent scored 0)

    def line(self) -> str:
        kept = "kept the parent" if self.best == self.parent else f"best {self.best[:12]}"
        return (f"round {self.round}: {self.parent_score:.4f} -> {self.best_score:.4f} ({self.gain:+.4f}, "
                f"{_pct(self.gain_pct)}), {kept}, {len(self.candidates)} candidates")


@dataclass
class EvolveRun:
    run_id: str
    start: str
    start_score: float
    objective: str
    scorer: str
    options: dict[str, Any]
    rounds: list[Round] = field(default_factory=list)
    stopped: str = ""  # why it stopped: "rounds", "gain below min_gain", "" while running
    created: str = ""

    @property
    def best(self) -> str:
        return self.rounds[-1].best if self.rounds else self.start

    @property
    def best_score(self) -> float:
        return self.rounds[-1].best_score if self.rounds else self.start_score

    @property
    def gain(self) -> float:
        return round(self.best_score - self.start_score, 6)

    @property
    def gain_pct(self) -> float | None:
        return percent(self.gain, self.start_score)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update({"record_version": RECORD_VERSION, "best": self.best, "best_score": self.best_score,
                     "gain": self.gain, "gain_pct": self.gain_pct})
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EvolveRun":
        rounds = [Round(**{**r, "candidates": [Candidate(**c) for c in r["candidates"]]}) for r in data["rounds"]]
        keys = {"run_id", "start", "start_score", "objective", "scorer", "options", "stopped", "created"}
        return cls(**{k: v for k, v in data.items() if k in keys}, rounds=rounds)

    def lines(self) -> list[str]:
        out = [r.line() for r in self.rounds]
        out.append(f"overall: {self.start_score:.4f} -> {self.best_score:.4f} ({self.gain:+.4f}, {_pct(self.gain_pct)}) "
                   f"in {len(self.rounds)} round{'s' if len(self.rounds) != 1 else ''}; best {self.best[:12]}"
                   + (f"; stopped: {self.stopped}" if self.stopped else ""))
        return out


def percent(gain: float, base: float) -> float | None:
    return None if base == 0 else round(100.0 * gain / abs(base), 4)


def _pct(value: float | None) -> str:
    return "n/a %" if value is None else f"{value:+.1f}%"


# ---- the scorers --------------------------------------------------------------------------------------

class ClipScorer:
    """CLIP alignment (and the aesthetic head, and style against the story's other kept scenes when the
    artifact is a story scene): the scores `echo-os score` and `--best-of` use."""

    name = "clip"

    def __init__(self, settings: "Settings"):
        from echo_os.resonance.scorers import load_scorers

        self.scorers = load_scorers(settings)
        if not self.scorers.available:
            raise UsageError(f"no scorer on this machine ({self.scorers.missing.get('clip')}); rate the candidates "
                             "yourself with --scorer ratings, or add a clip entry to models.toml.")

    def score(self, settings: "Settings", artifacts: list["Artifact"]) -> dict[str, ArtifactScores]:
        from echo_os.resonance.scores import ScoreItem, score_items
        from echo_os.resonance.story import load_story_json

        items, context = [], []
        for artifact in artifacts:
            story = artifact.meta.story
            items.append(ScoreItem(id=artifact.id, image=_open_rgb(artifact.image_path), prompt=artifact.meta.prompt,
                                   scene=story.scene, characters=tuple(story.characters or ())))
        scenes = {a.meta.story.scene for a in artifacts if a.meta.story.scene is not None}
        if scenes:  # the story's other kept scenes are what style and character consistency compare with
            from echo_os.reflect.versions import selection_of

            document = load_story_json(settings, artifacts[0].meta.project) or {}
            for scene, kept in selection_of(document).items():
                path = _image_of(settings, kept)
                if scene not in scenes and path is not None:
                    context.append(ScoreItem(id=kept, image=_open_rgb(path), prompt="", scene=scene))
        # each candidate is scored against the context only, never against its rivals of the same scene
        scores, _ = score_items(self.scorers, items + context)
        return {artifact.id: scores[artifact.id] for artifact in artifacts}


class RatingScorer:
    """No scorer: the user rates (1..5) each image not rated yet; `ask(artifacts)` returns id -> rating."""

    name = "ratings"

    def __init__(self, ask: Callable[[list["Artifact"]], dict[str, int]]):
        self.ask = ask

    def score(self, settings: "Settings", artifacts: list["Artifact"]) -> dict[str, ArtifactScores]:
        return {artifact.id: ArtifactScores() for artifact in artifacts}


def _open_rgb(path: Path):
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return image.convert("RGB")


def _image_of(settings: "Settings", artifact_id: str) -> Path | None:
    from echo_os.artifacts.store import open_catalog

    with open_catalog(settings) as catalog:
        row = catalog.get(artifact_id)
    return settings.artifacts_dir / row.path / "image.png" if row is not None else None


def find_scorer(settings: "Settings", name: str, ask: Callable | None = None) -> "ScorerPlugin":
    """`clip`, `ratings` (needs `ask`) or a plugin's scorer by name."""
    from echo_os.resonance.scorers import scorer_plugins

    if name == "clip":
        return ClipScorer(settings)
    if name == "ratings":
        if ask is None:
            raise UsageError("--scorer ratings asks you to rate each candidate; run it in a terminal.")
        return RatingScorer(ask)
    plugins = scorer_plugins()
    if name not in plugins:
        known = ", ".join(["clip", "ratings", *sorted(plugins)])
        raise UsageError(f"--scorer {name!r} is no scorer here (scorers: {known}).")
    return plugins[name]


# ---- variations ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Variation:
    operator: str
    detail: str
    request: "RenderRequest"


def mutation_phrases(settings: "Settings", project: str, objective: Objective) -> list[str]:
    """Phrases to add to a prompt: those of the project's well-scored prompts (objective at or above the
    median of its scored artifacts, or rated 4+), then the planner's vocabulary."""
    from echo_os.artifacts.store import open_catalog
    from echo_os.intent.vocabulary import VOCABULARY
    from echo_os.resonance.analyze import prompt_phrases

    with open_catalog(settings) as catalog:
        rows = catalog.query(project=project)
    valued = []
    for row in rows:
        scores = row.meta.get("scores")
        rating = (row.meta.get("rating") or {}).get("value")
        if isinstance(scores, dict) or isinstance(rating, int):
            stored = ArtifactScores.from_stored(scores if isinstance(scores, dict) else None)
            valued.append((objective.value(stored, rating), row.prompt))
    phrases: list[str] = []
    if valued:
        values = sorted(v for v, _ in valued)
        median = values[len(values) // 2]
        for value, prompt in valued:
            if value >= median:
                phrases += [p for p in prompt_phrases(prompt) if p not in phrases]
    for part in VOCABULARY_PARTS:
        phrases += [p for p in VOCABULARY.get(part, []) if p not in phrases]
    return phrases


def learned_styles(settings: "Settings") -> list[str]:
    from echo_os.render.styles import read_workspace_styles

    return sorted(s.name for s in read_workspace_styles(settings).values() if getattr(s, "learned", None))


def variations(settings: "Settings", parent: "Artifact", k: int, rng: random.Random, phrases: list[str],
               strengths: tuple[float, ...], styles: list[str]) -> list[Variation]:
    """K requests varying `parent`, one image each, every one naming the parent as its parent."""
    from echo_os.engines import get_engine
    from echo_os.iterate.refine import refine_request
    from echo_os.render.requests import MAX_SEED, RenderRequest
    from echo_os.render.styles import style_fields

    assert not isinstance(parent.meta, VideoMeta)  # resolve_start refuses a video; rounds render images
    base = parent.meta.replay_request().model_copy(update={"count": 1, "parent_id": parent.id})
    operators = ["seed", "prompt"]
    try:
        can_refine = get_engine(parent.meta.engine.name).capabilities.img2img
    except EchoError:  # an engine no longer installed: vary without it
        can_refine = False
    if can_refine:
        operators.append("refine")
    if styles:
        operators.append("style")
    own = {p.strip().lower() for p in base.prompt.split(",")}
    fresh = [p for p in phrases if p.lower() not in own]
    out = []
    for index in range(k):
        operator = operators[index % len(operators)]
        seed = rng.randint(0, MAX_SEED)
        if operator == "prompt" and fresh:
            phrase = fresh[rng.randrange(len(fresh))]
            request = base.model_copy(update={"seed": seed, "prompt": f"{base.prompt}, {phrase}"})
            out.append(Variation("prompt", phrase, request))
        elif operator == "refine":
            strength = strengths[rng.randrange(len(strengths))]
            request = refine_request(settings, parent, strength=strength,
                                     changes={"seed": seed, "count": 1, "engine": parent.meta.engine.name})
            out.append(Variation("refine", f"strength {strength:g}", request))
        elif operator == "style":
            name = styles[rng.randrange(len(styles))]
            negative = base.negative_prompt
            if base.style_name:  # the parent's own style's negative is not carried into another style's
                negative = None
            fields = {**base.model_dump(), "seed": seed, **style_fields(settings, name, negative, adapter=base.ip_adapter)}
            request = RenderRequest.model_validate(fields)  # validated: the style's reference is given as a dict
            out.append(Variation("style", name, request))
        else:
            out.append(Variation("seed", str(seed), base.model_copy(update={"seed": seed})))
    return out


# ---- the loop -----------------------------------------------------------------------------------------

def run_id_of(start: str, options: EvolveOptions) -> str:
    key = json.dumps({"start": start, "rounds": options.rounds, "per_round": options.per_round,
                      "objective": options.objective.weights, "scorer": options.scorer,
                      "strengths": list(options.strengths), "seed": options.seed}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def run_path(settings: "Settings", run_id: str) -> Path:
    return settings.artifacts_dir / EVOLVE_DIR / f"{run_id}.json"


def _save_run(settings: "Settings", run: EvolveRun) -> None:
    from echo_os.atomic import write_atomically

    write_atomically(run_path(settings, run.run_id),
                     (json.dumps(run.as_dict(), ensure_ascii=False, indent=2) + "\n").encode("utf-8"))


def resolve_start(settings: "Settings", store: "ArtifactStore", target: str,
                  objective: Objective) -> "Artifact":
    """An artifact id (12+ hex characters), or a project: its highest-scoring artifact (objective over
    recorded scores and ratings), else its newest."""
    from echo_os.artifacts.store import Artifact

    text = target.strip()
    if len(text) >= 12 and all(c in "0123456789abcdef" for c in text.lower()):
        artifact = store.open(text)
        if isinstance(artifact.meta, VideoMeta):
            raise UsageError(f"evolve starts from an image; {artifact.id[:12]} is a video.")
        return artifact
    rows = [row for row in store.catalog.query(project=text) if row.meta.get("kind") != "video"]
    if not rows:
        raise UsageError(f"{target!r} is neither an artifact id nor a project with images here "
                         "(see `echo-os artifacts list`).")

    def value(row) -> float:
        return objective.value(ArtifactScores.from_stored(row.meta.get("scores")),
                               (row.meta.get("rating") or {}).get("value"))

    best = max(rows, key=lambda row: (value(row), row.created))
    return Artifact.from_row(store.root, best)


def evolve(settings: "Settings", store: "ArtifactStore", target: str, options: EvolveOptions, *,
           scorer: "ScorerPlugin", progress: Progress | None = None, cancel: threading.Event | None = None,
           on_round: Callable[[Round], None] | None = None) -> EvolveRun:
    """Run (or resume) the loop from `target` (artifact id or project); returns the run's record."""
    from echo_os.render.scheduler import render_requests

    options.check()
    start = resolve_start(settings, store, target, options.objective)
    run_id = run_id_of(start.id, options)
    path = run_path(settings, run_id)
    scores: dict[str, float] = {}
    terms: dict[str, dict[str, float]] = {}

    def score(artifacts: list["Artifact"]) -> None:
        todo = [a for a in artifacts if a.id not in scores]
        if not todo:
            return
        ratings = scorer.ask(todo) if isinstance(scorer, RatingScorer) else {}
        found = scorer.score(settings, todo)
        for artifact in todo:
            result = found[artifact.id]
            rating = ratings.get(artifact.id)
            if rating is not None:
                from echo_os.resonance.persist import save_rating

                save_rating(store.catalog, store.root, artifact.id, rating)
            else:
                rating = _rating_of(store, artifact.id)
            if isinstance(scorer, ClipScorer):
                from echo_os.resonance.persist import save_scores

                save_scores(store.catalog, store.root, _relative(store, artifact), result.as_dict())
            terms[artifact.id] = {k: round(v, 6) for k, v in options.objective.terms(result, rating).items()}
            scores[artifact.id] = options.objective.value(result, rating)

    if path.is_file():
        run = EvolveRun.from_dict(json.loads(path.read_text(encoding="utf-8")))
        for r in run.rounds:  # what earlier rounds measured stands: the record is not rescored
            scores[r.parent] = r.parent_score
            for c in r.candidates:
                scores[c.id], terms[c.id] = c.score, c.terms
    else:
        score([start])
        run = EvolveRun(run_id=run_id, start=start.id, start_score=scores[start.id],
                        objective=options.objective.describe(), scorer=scorer.name,
                        options={"rounds": options.rounds, "per_round": options.per_round,
                                 "min_gain": options.min_gain, "strengths": list(options.strengths),
                                 "seed": options.seed},
                        created=datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"))
        _save_run(settings, run)
    if run.stopped:
        return run
    phrases = mutation_phrases(settings, start.meta.project, options.objective)
    styles = learned_styles(settings)
    while len(run.rounds) < options.rounds:
        number = len(run.rounds) + 1
        parent = store.open(run.best)
        rng = random.Random(f"{run_id}:{number}")
        planned = variations(settings, parent, options.per_round, rng, phrases, options.strengths, styles)

        rendered = [0]
        total = len(planned)

        def on_image(done, _n=number, _rendered=rendered, _total=total) -> None:
            if progress is not None:
                _rendered[0] += 1
                progress(f"round {_n}", _rendered[0], _total)

        outcome = render_requests(settings, [v.request for v in planned], store=store, resume=True,
                                  on_image=on_image, cancel=cancel)
        made = [*outcome.resumed, *outcome.artifacts]
        artifacts = [_find(made, variation) for variation in planned]
        score([parent, *artifacts])
        candidates = [Candidate(id=a.id, operator=v.operator, detail=v.detail, score=scores[a.id], terms=terms[a.id])
                      for v, a in zip(planned, artifacts)]
        for index, (variation, artifact) in enumerate(zip(planned, artifacts), start=1):
            from echo_os.resonance.persist import update_meta

            update_meta(store.catalog, store.root, _relative(store, artifact),
                        {"evolve": {"run": run_id, "round": number, "index": index, "operator": variation.operator,
                                    "detail": variation.detail, "objective": scores[artifact.id]}})
        parent_score = scores[parent.id]
        best = max(candidates, key=lambda c: c.score)
        if best.score > parent_score:
            best_id, best_score = best.id, best.score
        else:
            best_id, best_score = parent.id, parent_score
        gain = round(best_score - parent_score, 6)
        done = Round(round=number, parent=parent.id, parent_score=parent_score, candidates=candidates,
                     best=best_id, best_score=best_score, gain=gain, gain_pct=percent(gain, parent_score))
        run.rounds.append(done)
        if gain < options.min_gain:
            run.stopped = f"round {number} gained {gain:+.4f}, less than --min-gain {options.min_gain:g}"
        elif len(run.rounds) >= options.rounds:
            run.stopped = f"{options.rounds} rounds"
        _save_run(settings, run)
        if on_round is not None:
            on_round(done)
        if run.stopped:
            break
        if cancel is not None and cancel.is_set():
            raise CancelledError(f"evolve cancelled after round {number}; run the same command to go on.")
    return run


def _find(made: list["Artifact"], variation: Variation) -> "Artifact":
    """The artifact rendered for a variation: the one whose seed, prompt, style and strength match."""
    wanted = variation.request
    for artifact in made:
        if isinstance(artifact.meta, VideoMeta):  # never a variation's
            continue
        request = artifact.meta.replay_request()
        if request.init_image is None or wanted.init_image is None:
            same_init = request.init_image is None and wanted.init_image is None
        else:
            same_init = request.init_image.strength == wanted.init_image.strength
        if (request.seed == wanted.seed and request.prompt == wanted.prompt and request.style == wanted.style
                and same_init):
            return artifact
    raise RuntimeError(f"no artifact was saved for the {variation.operator} variation ({variation.detail})")


def _relative(store: "ArtifactStore", artifact: "Artifact") -> str:
    return artifact.path.resolve().relative_to(store.root.resolve()).as_posix()


def _rating_of(store: "ArtifactStore", artifact_id: str) -> int | None:
    row = store.catalog.get(artifact_id)
    value = ((row.meta if row is not None else {}).get("rating") or {}).get("value")
    return value if isinstance(value, int) else None
