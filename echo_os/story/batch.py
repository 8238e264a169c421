"""A story batch, planned the one way every host plans it: `echo-os batch` (a story CSV, @prompts.txt, the
project's plan.json, --count) and POST /api/batch.

    options = batch_options(settings, preset="quick", steps=20, ...)   # what the host was given
    prepared = prepare_batch(settings, "Harbour", Path("story.csv"), kind="storyboard", options=options)
    prepared.plan.requests   # the scenes' requests, layered and checked

The host's values become PlanOptions here (the preset read, its engine taken when none was named, the
style resolved, the named styles and the models' entry defaults filled in); the planner layers every scene
with the front door's order (echo_os.render.prepare.layer_fields: the host's values > the preset > the
row > the bible > the model entry); echo_os.render.prepare.prepare_plan then checks the engine and model
names, chooses the engine and applies its default size, and every capability is checked on the final
requests. `plan_batch` is POST /api/batch's part on top: the texts a client sent written to the job's
folder, and the checks a server makes on a story it did not write (files inside the workspace).
Errors are OptionError naming the value at fault (the API's body field) or StoryError listing the files'
problems.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from echo_os.errors import EchoError, OptionError
from echo_os.story.plan import PlanOptions, PresetValues, StoryPlan, plan_prompt_list, plan_story

if TYPE_CHECKING:
    from echo_os.render.prepare import EngineChoice
    from echo_os.render.requests import RenderRequest
    from echo_os.settings import Settings

StoryKind = Literal["storyboard", "prompts"]


def batch_options(settings: "Settings", *, model: str | None = None, engine: str = "auto", engine_given: bool = False,
                  steps: int | None = None, cfg: float | None = None, size: str | None = None,
                  scheduler: str | None = None, seed: int | None = None, style: str | None = None,
                  preset: str | None = None) -> PlanOptions:
    """PlanOptions from what a host was given (None: not given). The preset (pipelines/presets) is a layer
    of its own, below these values and above the files; its engine applies when none was named
    (engine_given False). An unknown preset or style is an OptionError on `preset` or `style`."""
    from echo_os.engines import check_engine_name
    from echo_os.models.defaults import all_render_defaults
    from echo_os.render.styles import resolve_style, style_table

    values = PresetValues()
    if preset is not None:
        from echo_os.engines.presets import get_preset

        chosen = get_preset(settings, preset)
        if not engine_given and chosen.engine:
            engine = chosen.engine
        values = PresetValues(model=chosen.model, steps=chosen.steps, cfg=chosen.cfg, size=chosen.size,
                              scheduler=chosen.scheduler)
    check_engine_name(engine)
    named = resolve_style(settings, style)
    return PlanOptions(model=model, engine=engine, steps=steps, cfg=cfg, size=size, scheduler=scheduler, seed=seed,
                       style=named.text, style_name=named.name, style_negative=named.negative,
                       styles=style_table(settings), preset=values, model_defaults=all_render_defaults(settings))


def first_scenes(plan: StoryPlan, count: int) -> StoryPlan:
    """The first `count` scenes of a StoryPlan (`echo-os plan` put the most varied first)."""
    return plan.model_copy(update={"scenes": tuple(plan.scenes[:count])})


def plan_file(project: str, source: Path, *, kind: StoryKind, options: PlanOptions, bible: Path | None = None,
              tokenizer_loader: Callable[[str], Any] | None = None, workspace: Path | None = None) -> StoryPlan:
    """The story in `source` (a story CSV with its bible, or a prompt list) planned with `options`."""
    if kind == "prompts":
        return plan_prompt_list(project, source, options=options, tokenizer_loader=tokenizer_loader)
    return plan_story(project, source, bible=bible, options=options, tokenizer_loader=tokenizer_loader,
                      workspace=workspace)


@dataclass(frozen=True)
class PreparedBatch:
    """A planned, checked batch. plan: the scenes to render (the first --count ones); options: what it was
    planned with last (`size` is the engine's default size when that applied); engine: the engine chosen
    (None: no scenes); note: why the size changed; whole: the whole story when --count cut it (story.json
    and the contact sheet describe the whole story rendered so far)."""

    plan: StoryPlan
    options: PlanOptions
    engine: "EngineChoice | None" = None
    note: str | None = None
    whole: StoryPlan | None = None

    @property
    def size(self) -> str | None:
        return self.options.size


def prepare_batch(settings: "Settings", project: str, source: Path, *, kind: StoryKind, options: PlanOptions,
                  bible: Path | None = None, count: int | None = None,
                  tokenizer_loader: Callable[[str], Any] | None = None) -> PreparedBatch:
    """Plan the story and take its requests through the rest of the front door (prepare_plan): the engine
    and model names, the engine chosen once for the story, its default size (the cpu engine: 512x512) when
    neither a size nor steps were given (the preset's count), every capability check."""
    from echo_os.render.prepare import check_plan_requests, prepare_plan

    def make(options: PlanOptions) -> tuple[StoryPlan, StoryPlan]:
        whole = plan_file(project, source, kind=kind, options=options, bible=bible, tokenizer_loader=tokenizer_loader,
                          workspace=settings.home)
        return (first_scenes(whole, count) if count is not None else whole), whole

    plan, whole = make(options)
    if not plan.scenes:
        return PreparedBatch(plan, options, whole=whole if count is not None else None)
    size_given = bool(options.size or options.steps or options.preset.size or options.preset.steps)
    prepared = prepare_plan(settings, plan.requests, size_given=size_given)
    if prepared.size is not None:
        options = options.model_copy(update={"size": prepared.size})
        plan, whole = make(options)
    check_plan_requests(settings, plan.requests, prepared.engine)
    return PreparedBatch(plan, options, prepared.engine, prepared.note, whole if count is not None else None)


# ---- POST /api/batch ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class PlannedBatch:
    """A story a client sent, planned: its requests (one per scene, with the characters' references and
    LoRAs), where its files were written, and the IP-Adapter it asked for ("none" -> None)."""

    prepared: PreparedBatch
    requests: list["RenderRequest"]
    kind: StoryKind
    source: Path
    bible: Path | None
    ip_adapter: str | None

    @property
    def plan(self) -> StoryPlan:
        return self.prepared.plan


def plan_batch(settings: "Settings", *, project: str, folder: Path, options: PlanOptions,
               storyboard: str | None = None, bible: str | None = None, prompts: list[str] | None = None,
               ip_adapter: str | None = None, count: int | None = None) -> PlannedBatch:
    """Plan a story sent as text (`storyboard` with an optional `bible`, or `prompts`) as `echo-os batch`
    plans a file: its texts go to `folder` (the planner reads files), then prepare_batch (`count`: only the
    first scenes, as `--count`), then the checks a server makes on a story it did not write. OptionError
    names the body field at fault ("prompts.N" for a prompt line); the caller removes `folder` on any error."""
    from echo_os.story.tokens import workspace_tokenizer_loader

    if (storyboard is None) == (prompts is None):
        raise OptionError("send either `storyboard` (story.csv text) or `prompts`, not both", "storyboard")
    if bible is not None and storyboard is None:
        raise OptionError("a bible goes with a storyboard; a prompt list has none", "bible")
    for index, prompt in enumerate(prompts or ()):
        if not prompt.strip() or "\n" in prompt or "\r" in prompt or "\x00" in prompt:
            raise OptionError("each prompt is one non-empty line of text", f"prompts.{index}")
    folder.mkdir(parents=True, exist_ok=True)
    bible_path = None
    if prompts is not None:
        kind: StoryKind = "prompts"
        source = folder / "prompts.txt"
        source.write_text("\n".join(prompts) + "\n", encoding="utf-8")
    else:
        kind = "storyboard"
        source = folder / "story.csv"
        source.write_text(storyboard or "", encoding="utf-8")
        if bible is not None:
            bible_path = folder / "STORY_BIBLE.md"
            bible_path.write_text(bible, encoding="utf-8")
    try:
        prepared = prepare_batch(settings, project, source, kind=kind, options=options, bible=bible_path, count=count,
                                 tokenizer_loader=workspace_tokenizer_loader(settings))  # the CLI's counter
    except OptionError as error:
        chosen = options.model or options.preset.model  # a model the story's bible named: the bible's fault
        option = "bible" if error.option == "model" and chosen is None and kind == "storyboard" else error.option
        raise OptionError(str(error), {"width": "size", "height": "size"}.get(option, option)) from None
    check_plan_paths(settings, prepared.plan)
    adapter = adapter_for(prepared.plan, ip_adapter)
    return PlannedBatch(prepared, _scene_requests(settings, prepared.plan, adapter), kind, source, bible_path,
                        adapter)


def adapter_for(plan: StoryPlan, ip_adapter: str | None) -> str | None:
    """The IP-Adapter asked for (--ip-adapter, the body's `ip_adapter`), else the bible's `ip_adapter`, else the
    default; `none` leaves reference images out (None)."""
    from echo_os.story.render import DEFAULT_IP_ADAPTER

    chosen = ip_adapter or plan.ip_adapter or DEFAULT_IP_ADAPTER
    return None if chosen == "none" else chosen


def _scene_requests(settings: "Settings", plan: StoryPlan, ip_adapter: str | None) -> list["RenderRequest"]:
    """The scenes' requests as `echo-os batch` renders them (story.render.scene_requests); an adapter this
    machine lacks is an error on `ip_adapter`, a LoRA it cannot find one on `bible`."""
    from echo_os.engines.ip_adapter import AdapterMissing
    from echo_os.story.render import scene_requests

    try:
        return scene_requests(settings, plan, ip_adapter)
    except AdapterMissing as error:
        raise OptionError(str(error), "ip_adapter") from None
    except OptionError:
        raise
    except EchoError as error:
        raise OptionError(str(error), "bible") from None


# One answer whether the file exists outside the workspace, exists inside it unreadable, or does not
# exist: a client may not learn which files the server's machine has.
REFERENCE_REFUSED = ("reference image is missing, unreadable or outside the workspace; use an image file "
                     "inside the workspace folder")


def check_plan_paths(settings: "Settings", plan: StoryPlan) -> None:
    """A bible sent over HTTP may only point at files inside the workspace (OptionError on `bible`)."""
    from echo_os.engines.lora import lora_path
    from echo_os.models import load_registry

    home = settings.home.resolve()
    registry = load_registry(settings)
    for scene in plan.scenes:
        for member in scene.cast:
            for index, reference in enumerate(member.references):
                if not Path(reference).resolve().is_relative_to(home):
                    raise OptionError(f"STORY_BIBLE.md, key characters.{member.id}.reference[{index}]: "
                                      f"{REFERENCE_REFUSED}", "bible")
            lora = member.lora.name if member.lora else None
            if lora is None or lora in registry or plan.bible_path is None:
                continue
            # The same rule resolve_lora reads the file by.
            if not lora_path(lora, plan.bible_path.parent).resolve().is_relative_to(home):
                raise OptionError(f"character {member.id}: lora {lora} is outside the workspace", "bible")
