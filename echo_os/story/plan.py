"""Planning: a storyboard (or a prompt list) and its bible -> validated RenderRequests in scene order.

Nothing renders here. Every problem in the files is collected and raised as one StoryError (exit 2),
so an invalid storyboard never reaches an engine.

Settings for each scene, first one set wins (the front door's one order: echo_os.render.prepare,
`layer_fields`, which every host's requests go through):
    steps, cfg, size, scheduler:  CLI option (a body field) > the preset > the row's cell > the bible's
                                  defaults > the model entry's defaults (models.toml) > RenderRequest's
                                  default (the entry's before the bible's when the model is not the bible's)
    model:                        CLI --model > the preset's model > the bible's model > RenderRequest's default
    count:                        the row's count > 1
A preset is a bundle of command-line options (`--preset quality` is `--steps 40 --cfg 7 ...`), so it sits
with them, above the files. When the command line or the preset picks a model other than the bible's, that
model's entry defaults come above the bible's defaults (a row's own cell, a choice for that scene, still
wins): the bible's steps and guidance were written for the bible's model, and `--preset fast`
(SDXL-Turbo: 4 steps, cfg 0) must not render 30 steps at cfg 6.5 because the bible says so. The row has
no scheduler cell. The engine, the model name, the engine's default size and every capability check come
after planning, from echo_os.render.prepare.prepare_plan (echo_os.story.batch.prepare_batch).

Seed policy (recorded per scene as `seed.provenance`, and per image as seed + i for image i):
    1. the row's own seed (story.csv `seed` column, or `--seed` on a prompt-list line): used as is;
    2. else, with `--seed BASE` on the command line: BASE + 1000 * scene;
    3. else, in a storyboard, the scene's main character (the first id in `characters`):
       that character's seed + 1000 * scene;
    4. else the story's base: the bible's defaults.seed, or the first 4 bytes of sha256(title), + 1000 * scene;
       in a prompt list: the first 4 bytes of sha256(prompt text).
All modulo 2**32. The stride of 1000 is larger than the most images one scene may have (64), so the
seeds of two scenes never overlap.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from echo_os.errors import OptionError
from echo_os.models.registry import RenderDefaults
from echo_os.render.requests import (
    MAX_SEED,
    MAX_STEPS,
    RenderRequest,
    Scheduler,
    StoryFields,
    describe_validation_error,
    parse_size,
)
from echo_os.story.bible import Bible, LoraRef, load_bible_and_raw
from echo_os.story.compose import ComposedPrompt, compose_scene_prompt
from echo_os.story.problems import ProblemList
from echo_os.story.prompt_list import read_prompt_list
from echo_os.story.storyboard import KnownIds, SceneRow, read_storyboard
from echo_os.story.tokens import CLIP_TEXT_TOKENS, clip_token_count

BIBLE_NAME = "STORY_BIBLE.md"
SEED_STRIDE = 1000


class PresetValues(BaseModel):
    """A preset's render values (`--preset`): below the command line, above the row and the bible."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str | None = None
    steps: int | None = Field(default=None, ge=1, le=MAX_STEPS)
    cfg: float | None = Field(default=None, ge=0.0, le=100.0, allow_inf_nan=False)
    size: str | None = None
    scheduler: Scheduler | None = None


class PlanOptions(BaseModel):
    """What the command line says; None leaves the choice to the files."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str | None = None
    engine: str = "auto"
    steps: int | None = None
    cfg: float | None = None
    size: str | None = None
    scheduler: str | None = None
    seed: int | None = None
    # `--style VALUE`, resolved at the edge (echo_os.render.styles.resolve_style): applied to every scene's
    # composed prompt ({prompt} is the composed prompt) and its negative appended.
    style: str = ""
    style_name: str | None = None
    style_negative: str = ""
    # The named styles a bible's `style: NAME` may use (echo_os.render.styles.style_table(settings)): casefolded
    # name -> (name, prompt, negative). Filled at the edge, where the workspace is known.
    styles: dict[str, tuple[str, str, str]] = Field(default_factory=dict)
    preset: PresetValues = Field(default_factory=PresetValues)
    # The models.toml entries' render defaults by model name (models.defaults.model_render_defaults),
    # filled at the edge like `styles`; a model without any is absent.
    model_defaults: dict[str, RenderDefaults] = Field(default_factory=dict)


class SeedChoice(BaseModel):
    model_config = ConfigDict(frozen=True)

    value: int
    source: Literal["row", "cli", "character", "story", "prompt"]
    provenance: str  # "csv", or how it was derived


class CastMember(BaseModel):
    """A character in a scene and its consistency inputs (IP-Adapter images, LoRA), paths resolved."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    seed: int
    references: tuple[Path, ...] = ()
    ip_adapter_scale: float | None = None
    lora: LoraRef | None = None


class TokenCounts(BaseModel):
    """CLIP text tokens of the prompt and negative prompt; `approximate` when estimated."""

    model_config = ConfigDict(frozen=True)

    prompt: int
    negative: int
    approximate: bool
    limit: int = CLIP_TEXT_TOKENS

    def shown(self, count: int) -> str:
        return f"{'~' if self.approximate else ''}{count}"


class PlannedScene(BaseModel):
    model_config = ConfigDict(frozen=True)

    row: SceneRow
    request: RenderRequest
    seed: SeedChoice
    cast: tuple[CastMember, ...] = ()
    tokens: TokenCounts
    warnings: tuple[str, ...] = ()

    @property
    def scene(self) -> int:
        return self.row.scene

    @property
    def slug(self) -> str:
        return self.row.slug


class StoryPlan(BaseModel):
    model_config = ConfigDict(frozen=True)

    title: str
    project: str
    kind: Literal["storyboard", "prompts"]
    source: Path
    bible_path: Path | None = None
    bible_hash: str | None = None
    ip_adapter: str | None = None  # the bible's `ip_adapter` (None: the host's default)
    scenes: tuple[PlannedScene, ...]
    warnings: tuple[str, ...] = ()

    @property
    def requests(self) -> list[RenderRequest]:
        """The validated requests, in scene order."""
        return [scene.request for scene in self.scenes]

    @property
    def image_count(self) -> int:
        return sum(scene.request.count for scene in self.scenes)


# ---- seeds -----------------------------------------------------------------------------------------

def text_seed(text: str) -> int:
    """A stable seed from text: the first 4 bytes of its sha256."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:4], "big")


def _derived(base: int, scene: int) -> int:
    return (base + SEED_STRIDE * scene) % (MAX_SEED + 1)


def choose_seed(row: SceneRow, bible: Bible | None, cli_seed: int | None, kind: str, label: str) -> SeedChoice:
    """The scene's seed by the policy in this module's docstring."""
    stride = f"{SEED_STRIDE}*scene {row.scene}"
    if row.seed is not None:
        provenance = "csv" if kind == "storyboard" else f"{label} line {row.row} --seed"
        return SeedChoice(value=row.seed, source="row", provenance=provenance)
    if cli_seed is not None:
        return SeedChoice(value=_derived(cli_seed, row.scene), source="cli",
                          provenance=f"derived from --seed {cli_seed} + {stride}")
    if kind == "prompts":
        return SeedChoice(value=text_seed(row.description), source="prompt",
                          provenance="derived from sha256 of the prompt")
    if bible is not None and row.characters:
        main = row.characters[0]
        seed = bible.front.characters[main].seed
        return SeedChoice(value=_derived(seed, row.scene), source="character",
                          provenance=f"derived from character {main} seed {seed} + {stride}")
    if bible is not None and bible.front.defaults.seed is not None:
        base = bible.front.defaults.seed
        return SeedChoice(value=_derived(base, row.scene), source="story",
                          provenance=f"derived from defaults.seed {base} + {stride}")
    title = bible.title if bible is not None else ""
    base = text_seed(title)
    return SeedChoice(value=_derived(base, row.scene), source="story",
                      provenance=f"derived from sha256 of the title ({base}) + {stride}")


# ---- planning --------------------------------------------------------------------------------------

def find_bible(storyboard: Path, bible: str | Path | None) -> Path | None:
    """--bible if given, else STORY_BIBLE.md beside the storyboard if it exists, else None."""
    if bible is not None:
        return Path(bible)
    beside = storyboard.parent / BIBLE_NAME
    return beside if beside.is_file() else None


def _check_options(options: PlanOptions, project: str) -> None:
    """Command-line values are checked once, before the files, and named as options."""
    from echo_os.engines import check_engine_name

    check_engine_name(options.engine)
    fields: dict[str, Any] = {"prompt": "options check", "engine": options.engine, "project": project}
    for name in ("model", "steps", "cfg", "scheduler"):
        if getattr(options, name) is not None:
            fields[name] = getattr(options, name)
    if options.seed is not None:
        fields["seed"] = options.seed
    if options.size is not None:
        fields["width"], fields["height"] = parse_size(options.size)
    try:
        RenderRequest(**fields)
    except ValidationError as error:
        message = describe_validation_error(error)
        field = str(error.errors()[0]["loc"][0])
        option = {"width": "size", "height": "size"}.get(field, field)
        raise OptionError(message.replace(f"invalid {field}", f"invalid --{option}", 1), option) from None


def _request_fields(row: SceneRow, bible: Bible | None, options: PlanOptions) -> dict[str, Any]:
    """The scene's RenderRequest fields by the front door's layering (echo_os.render.prepare.layer_fields):
    the command line > the preset > the row's cells > the bible's model and defaults > the model entry's."""
    from echo_os.render.prepare import FileLayer, layer_fields

    given: dict[str, Any] = {name: getattr(options, name) for name in ("model", "steps", "cfg", "scheduler")
                             if getattr(options, name) is not None}
    if options.size:
        given["width"], given["height"] = parse_size(options.size)
    preset = {name: value for name, value in options.preset.model_dump().items() if value is not None}
    if "size" in preset:
        preset["width"], preset["height"] = parse_size(preset.pop("size"))
    row_layer = FileLayer({"steps": row.steps, "cfg": row.cfg, "width": row.width, "height": row.height})
    files = [row_layer]
    if bible is not None:
        defaults = bible.front.defaults
        bible_w, bible_h = parse_size(defaults.size) if defaults.size else (None, None)
        files.append(FileLayer({"model": bible.front.model, "steps": defaults.steps, "cfg": defaults.cfg,
                                "scheduler": defaults.scheduler, "width": bible_w, "height": bible_h},
                               written_for=bible.front.model, follows_model=True))
    fields = layer_fields({"engine": options.engine, **given}, set(given), preset=preset, files=files,
                          entry=options.model_defaults.get)
    if row.count:
        fields["count"] = row.count
    return fields


def _token_warnings(row: SceneRow, tokens: TokenCounts) -> list[str]:
    warnings = []
    for what, count in (("prompt", tokens.prompt), ("negative prompt", tokens.negative)):
        if count > tokens.limit:
            estimate = " by estimate" if tokens.approximate else ""
            warnings.append(
                f"scene {row.scene}: the {what} is {tokens.shown(count)} CLIP tokens{estimate}; SDXL reads "
                f"{tokens.limit} (77 with start and end) and drops the rest; shorten it")
    return warnings


def join_negative(negative: str | None, style_negative: str) -> str | None:
    from echo_os.render.styles import join_negative as join

    return join(negative, style_negative)


def _plan_rows(rows: list[SceneRow], *, project: str, kind: Literal["storyboard", "prompts"], label: str,
               bible: Bible | None, options: PlanOptions, tokenizer: Any,
               tokenizer_loader: Callable[[str], Any] | None,
               problems: ProblemList) -> list[PlannedScene]:
    planned: list[PlannedScene] = []
    loaded_for: set[str] = set()
    for row in rows:
        composed: ComposedPrompt = compose_scene_prompt(row, bible)
        seed = choose_seed(row, bible, options.seed, kind, label)
        story = StoryFields(
            scene=row.scene, slug=row.slug, description=row.description, characters=row.characters,
            location=row.location, props=row.props, camera=row.camera, lighting=row.lighting,
            time_of_day=row.time_of_day, mood=row.mood, bible_hash=bible.sha256 if bible else None)
        try:
            negative = join_negative(composed.negative or None, options.style_negative)
            request = RenderRequest(prompt=composed.prompt, negative_prompt=negative, style=options.style,
                                    style_name=options.style_name, seed=seed.value, project=project, story=story,
                                    **_request_fields(row, bible, options))
        except ValidationError as error:
            where = {"row": row.row} if kind == "storyboard" else {"line": row.row}
            problems.add(label, describe_validation_error(error), **where)
            continue
        if tokenizer is None and tokenizer_loader is not None and request.model not in loaded_for:
            loaded_for.add(request.model)
            tokenizer = tokenizer_loader(request.model)
        # What the model reads: the prompt with its style, and the negative with the style's.
        prompt_tokens = clip_token_count(request.full_prompt, tokenizer)
        negative_tokens = clip_token_count(request.negative_prompt or "", tokenizer)
        tokens = TokenCounts(prompt=prompt_tokens.count, negative=negative_tokens.count,
                             approximate=prompt_tokens.approximate)
        cast = tuple(
            CastMember(id=cid, name=bible.front.characters[cid].name, seed=bible.front.characters[cid].seed,
                       references=bible.reference_paths(cid),
                       ip_adapter_scale=bible.front.characters[cid].ip_adapter_scale,
                       lora=bible.front.characters[cid].lora)
            for cid in row.characters) if bible else ()
        planned.append(PlannedScene(row=row, request=request, seed=seed, cast=cast, tokens=tokens,
                                    warnings=tuple(_token_warnings(row, tokens))))
    return planned


def plan_story(project: str, storyboard: str | Path, *, bible: str | Path | None = None,
               options: PlanOptions | None = None, tokenizer: Any = None,
               tokenizer_loader: Callable[[str], Any] | None = None,
               workspace: Path | None = None) -> StoryPlan:
    """Read story.csv and its bible, check everything, compose every scene. Reference images must be
    readable images inside the bible's folder or `workspace` (bible.reference_image_problem).

    Raises StoryError listing every problem in both files, or UsageError for a bad option.
    Token counts are exact with `tokenizer` (a CLIP tokenizer), or with what `tokenizer_loader(model)`
    returns for the plan's model (see tokens.load_clip_tokenizer); else estimated.
    """
    options = options or PlanOptions()
    _check_options(options, project)
    storyboard = Path(storyboard)
    problems = ProblemList()
    bible_path = find_bible(storyboard, bible)
    loaded, raw = load_bible_and_raw(bible_path, problems, workspace=workspace) if bible_path is not None else (None, None)
    ids = None
    if bible_path is not None and loaded is None:
        ids = KnownIds.from_raw(raw, storyboard.name)
    rows = read_storyboard(storyboard, problems, loaded, ids)
    if loaded is not None and loaded.front.style.name and not (options.style or options.style_name):
        named = options.styles.get(loaded.front.style.name.casefold())
        if named is None:
            known = ", ".join(sorted(n for n, _, _ in options.styles.values())) or "none"
            problems.add(loaded.path.name, f"style {loaded.front.style.name!r} is not a named style here "
                                           f"(known: {known}; see `echo-os styles list`)")
        else:
            options = options.model_copy(update={"style_name": named[0], "style": named[1],
                                                 "style_negative": named[2]})
    problems.raise_if_any()
    scenes = _plan_rows(rows, project=project, kind="storyboard", label=storyboard.name, bible=loaded,
                        options=options, tokenizer=tokenizer, tokenizer_loader=tokenizer_loader,
                        problems=problems)
    problems.raise_if_any()
    return StoryPlan(title=loaded.title if loaded else project, project=project, kind="storyboard",
                     source=storyboard.resolve(), bible_path=loaded.path if loaded else None,
                     bible_hash=loaded.sha256 if loaded else None, scenes=tuple(scenes),
                     ip_adapter=loaded.front.ip_adapter if loaded else None,
                     warnings=tuple(warning for scene in scenes for warning in scene.warnings))


def plan_prompt_list(project: str, path: str | Path, *, options: PlanOptions | None = None,
                     tokenizer: Any = None, tokenizer_loader: Callable[[str], Any] | None = None) -> StoryPlan:
    """Plan `@prompts.txt`: one prompt per line, per-line options, no bible."""
    options = options or PlanOptions()
    _check_options(options, project)
    path = Path(path)
    problems = ProblemList()
    rows = read_prompt_list(path, problems)
    problems.raise_if_any()
    scenes = _plan_rows(rows, project=project, kind="prompts", label=path.name, bible=None,
                        options=options, tokenizer=tokenizer, tokenizer_loader=tokenizer_loader,
                        problems=problems)
    problems.raise_if_any()
    return StoryPlan(title=project, project=project, kind="prompts", source=path.resolve(),
                     scenes=tuple(scenes),
                     warnings=tuple(warning for scene in scenes for warning in scene.warnings))
