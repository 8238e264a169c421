"""`echo-os batch PROJECT SOURCE`: plan a story (story.csv + STORY_BIBLE.md) or a prompt list
(@prompts.txt) and render it (echo_os.story.render), or with --dry-run show what would be rendered."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import click

from echo_os.cli import settings_from
from echo_os.cli.terminal import json_for_terminal, only_json_on_stdout
from echo_os.errors import OptionError, UsageError
from echo_os.render.requests import SCHEDULERS
from echo_os.settings import Settings

if TYPE_CHECKING:
    from PIL import Image


class StoryBar:
    """A tqdm bar over scenes: scenes done/total, and images per minute rendered by this run."""

    def __init__(self, scenes: int):
        from tqdm import tqdm

        self.bar = tqdm(total=scenes, unit="scene", leave=False, disable=None, dynamic_ncols=True,
                        desc="scenes")

    def loading(self, what: str) -> None:
        """Say what is loading (`loading model 'sdxl' (cpu)`) until the first scene's progress."""
        self.bar.set_description(f"scenes: {what}")

    def __call__(self, event) -> None:
        self.bar.set_description("scenes", refresh=False)
        self.bar.n = event.scenes_done
        self.bar.set_postfix_str(f"{event.images_done}/{event.images_total} images, "
                                 f"{event.images_per_minute:.1f} images/min", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def render_plan(settings: Settings, plan, *, batch_size: int | None = None, json_output: bool = False,
                ip_adapter: str | None = "ip-adapter-sdxl", clip: str | None = None, resonance=None, engine=None,
                note: str | None = None, quiet_json: bool = False, ray=None, story=None):
    """Render every scene of a validated StoryPlan in order and print what was made; returns the StoryRender.
    quiet_json: print nothing in JSON mode (the caller prints a combined document)."""
    from echo_os.artifacts.store import ArtifactStore
    from echo_os.cli.feedback import interrupt_report
    from echo_os.cli.render import engine_announcer
    from echo_os.story.render import render_plan as render_story

    bar = StoryBar(len(plan.scenes))
    store = ArtifactStore(settings)
    pool = None
    try:
        if ray is not None and plan.scenes:
            from echo_os.render.ray import RayPool

            pool = RayPool(settings, ray)
            click.echo(f"ray: {len(pool.actors)} render actors", err=True)
            # chosen on an actor (its GPU); no cancel flag in its engine, as the plain batch hands none
            engine = pool.engine(plan.scenes[0].request, engine_cancel=False)
        with interrupt_report(store):
            result = render_story(settings, plan, batch_size=batch_size, ip_adapter=ip_adapter, clip=clip,
                                  progress=bar, store=store, engine=engine,
                                  on_engine=engine_announcer(note, bar=bar, model=plan.scenes[0].request.model
                                                             if plan.scenes else None),
                                  resonance=resonance, story=story)
    finally:
        bar.close()
        store.close()
        if pool is not None:
            pool.close()
    for line in result.notes:
        click.echo(f"note: {line}", err=True)
    if json_output:
        if not quiet_json:
            click.echo(json_for_terminal(result.as_dict()))
        return result
    for row in result.artifact_rows():
        resumed = "  (already rendered)" if row["resumed"] else ""
        click.echo(f"{row['scene']:03d}  {row['id'][:12]}  {row['image']}{resumed}")
    rate = f", {result.images_per_minute:.1f} images/min" if result.rendered else ""
    click.echo(f"{result.rendered} rendered, {result.resumed} already rendered{rate}")
    click.echo(f"story: {result.story_json}")
    click.echo(f"contact sheet: {result.contact_sheet}")
    for line in result.continuity.lines():
        click.echo(line)
    if result.resonance is not None:
        for line in result.resonance.lines():
            click.echo(line)
    return result


def side_by_side_sheets(settings: Settings, project: str, results: dict) -> Path:
    """The models' contact sheets next to each other, each under its model's name:
    <project folder>/compare-models.png."""
    from PIL import Image, ImageDraw

    from echo_os.artifacts.store import ArtifactStore
    from echo_os.atomic import atomic_path
    from echo_os.story.contact_sheet import _font

    sheets: dict[str, Image.Image] = {}
    for model, result in results.items():
        with Image.open(result.contact_sheet) as opened:
            sheets[model] = opened.convert("RGB")
    label_h, gap = 28, 8
    width = sum(sheet.width for sheet in sheets.values()) + gap * (len(sheets) + 1)
    height = max(sheet.height for sheet in sheets.values()) + label_h + gap
    combined = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(combined)
    left = gap
    for model, sheet in sheets.items():
        draw.text((left, 6), f"model {model}", fill="black", font=_font(16))
        combined.paste(sheet, (left, label_h))
        left += sheet.width + gap
    store = ArtifactStore(settings)
    try:
        path = store.project_dir(project) / "compare-models.png"
    finally:
        store.close()
    with atomic_path(path) as tmp:
        combined.save(tmp, format="PNG")
    return path


def _seed_text(scene) -> str:
    seeds = scene.request.seeds
    shown = str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}..{seeds[-1]}"
    return f"{shown} ({scene.seed.provenance})"


def format_dry_run(plan) -> str:
    """The human-readable dry run: every scene's composed prompt, negative, seed and token count."""
    images = plan.image_count
    lines = [f"{plan.title}: {len(plan.scenes)} scene{'s' if len(plan.scenes) != 1 else ''}, "
             f"{images} image{'s' if images != 1 else ''} (dry run: nothing rendered)"]
    if plan.kind == "storyboard":
        if plan.bible_path:
            lines.append(f"bible: {plan.bible_path} (sha256 {plan.bible_hash[:16]})")
        else:
            lines.append("bible: none (no --bible and no STORY_BIBLE.md beside the storyboard)")
    lines.append(f"source: {plan.source}")
    for scene in plan.scenes:
        request = scene.request
        tokens = scene.tokens
        estimate = " (estimated: no local CLIP tokenizer)" if tokens.approximate else ""
        lines += [
            "",
            f"scene {scene.scene}  {scene.slug}",
            f"  prompt:    {request.full_prompt}"
            + (f"  (style {request.style_name})" if request.style_name else ""),
            f"  negative:  {request.negative_prompt or '(none)'}",
            f"  seed:      {_seed_text(scene)}",
            f"  tokens:    prompt {tokens.shown(tokens.prompt)}/{tokens.limit}, "
            f"negative {tokens.shown(tokens.negative)}/{tokens.limit}{estimate}",
            f"  render:    {request.count} image{'s' if request.count != 1 else ''}, {request.size}, "
            f"{request.steps} steps, cfg {request.cfg:g}, {request.scheduler}, model {request.model}, "
            f"engine {request.engine}",
        ]
        for member in scene.cast:
            if member.references or member.lora:
                refs = ", ".join(str(path) for path in member.references) or "no reference images"
                scale = f" (ip_adapter_scale {member.ip_adapter_scale:g})" if member.ip_adapter_scale is not None else ""
                lora = f", lora {member.lora.name} x{member.lora.scale:g}" if member.lora else ""
                lines.append(f"  cast:      {member.id}: {refs}{scale}{lora}")
        lines += [f"  warning:   {warning.split(': ', 1)[1]}" for warning in scene.warnings]
    if plan.warnings:
        lines += ["", f"{len(plan.warnings)} warning{'s' if len(plan.warnings) != 1 else ''}: "
                      "see the scenes above"]
    return "\n".join(lines)


def plan_source(settings: Settings, project: str, count: int | None) -> tuple[Path, str]:
    """(the list `echo-os plan` wrote for PROJECT, "prompts" or "story"); checks --count against it."""
    from echo_os.intent.planfile import list_path, load_plan

    saved = load_plan(settings, project)
    if count is not None and count > len(saved.items):
        raise UsageError(f"--count {count}: the plan of {project!r} has {len(saved.items)} items; plan more with "
                         f"`echo-os plan ... --count {count}` or ask for fewer.")
    return list_path(settings, saved), saved.kind


@click.command()
@click.argument("project")
@click.argument("source", required=False)
@click.option("--bible", type=click.Path(dir_okay=False), default=None,
              help="STORY_BIBLE.md for a story CSV (default: STORY_BIBLE.md beside the CSV, if there).")
@click.option("--dry-run", is_flag=True, help="Print each scene's prompt, negative, seed and token count; render nothing.")
@click.option("--json", "json_output", is_flag=True, help="Print the plan (or the results) as JSON.")
@click.option("--engine", default="auto", show_default=True,
              help="Engine for every scene: auto (the workspace's engine order) or a registered engine.")
@click.option("--preset", default=None,
              help="A render preset (pipelines/presets; `fast` for a few-step model on a CPU): its engine and "
                   "model, and its steps, cfg, size and scheduler where neither an option here nor the story's "
                   "rows or bible give them.")
@click.option("--model", default=None, help="Model for every scene (default: the bible's model, else sdxl).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per pipeline call (default: from free GPU memory on CUDA; 1 for CPU diffusion above "
                   "64x64; 64 for draft).")
@click.option("--ip-adapter", "ip_adapter", default=None,
              help="IP-Adapter model (models.toml) for characters with reference images; 'none' leaves them out. "
                   "Default: the bible's `ip_adapter`, else ip-adapter-sdxl.")
@click.option("--clip", default=None,
              help="CLIP model (models.toml) for the continuity report; default: the first one on this machine; "
                   "'none' skips it.")
@click.option("--steps", type=int, default=None, help="Override steps for every scene.")
@click.option("--cfg", type=float, default=None, help="Override the guidance scale for every scene.")
@click.option("--size", default=None, help="Override WIDTHxHEIGHT for every scene.")
@click.option("--scheduler", type=click.Choice(SCHEDULERS), default=None, help="Override the scheduler.")
@click.option("--style", default=None,
              help="A named style (`echo-os styles list`) or free words, for every scene's composed prompt.")
@click.option("--compare-models", default=None,
              help="Models, comma-separated: the story once per model (project 'PROJECT [MODEL]'), then their "
                   "contact sheets side by side in PROJECT's folder (compare-models.png).")
@click.option("--seed", type=int, default=None,
              help="Base seed: scene N without a seed of its own gets SEED + 1000*N (see docs/story.md).")
@click.option("--best-of", "best_of", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Render N candidates per scene (seeds seed..seed+N-1) and keep the best by --objective; the "
                   "others stay as siblings.")
@click.option("--reroll-flagged", is_flag=True,
              help="Re-render only the scenes the last run flagged for drift, from new seeds (with --best-of N: N each).")
@click.option("--objective", default=None,
              help="Best-of weights, e.g. alignment=1,consistency=1,style=0.5,aesthetic=0.5,rating=1 (the defaults).")
@click.option("--no-score", is_flag=True, help="Do not score the images (no drift flags, no style consistency).")
@click.option("--style-threshold", type=click.FloatRange(0.0, 1.0), default=None,
              help="Cosine at or above which two scenes share a style (default: echo-os.toml [resonance], else 0.75).")
@click.option("--character-threshold", type=click.FloatRange(0.0, 1.0), default=None,
              help="Character consistency below which a scene is flagged (default 0.70).")
@click.option("--alignment-threshold", type=click.FloatRange(0.0, 1.0), default=None,
              help="Prompt alignment (CLIP cosine, score/100) below which a scene is flagged (default 0.22).")
@click.option("--count", type=click.IntRange(min=1), default=None,
              help="Render only the first COUNT prompts or scenes (of the project's plan, or of SOURCE).")
@click.option("--no-cache", is_flag=True, help="Hosted engines: ask the provider again even for a request "
                                               "already answered (its response cache is not read).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Render on Ray actors: `--ray` alone starts a local Ray instance, `--ray auto` or "
                   "`--ray HOST:PORT` joins a cluster. Needs pip install 'echo-os[ray]'.")
@click.option("--ray-actors", type=click.IntRange(1, 1024), default=None,
              help="Ray actors [default: one per GPU in the cluster, 2 without GPUs].")
@click.pass_context
def batch(ctx: click.Context, project: str, source: str | None, bible: str | None, dry_run: bool, json_output: bool,
          engine: str, model: str | None, batch_size: int | None, ip_adapter: str | None, clip: str | None,
          steps: int | None, cfg: float | None, size: str | None, scheduler: str | None, seed: int | None,
          preset: str | None, best_of: int, reroll_flagged: bool, objective: str | None, no_score: bool,
          style_threshold: float | None, character_threshold: float | None,
          alignment_threshold: float | None, count: int | None, style: str | None,
          compare_models: str | None, no_cache: bool, ray_address: str | None,
          ray_actors: int | None) -> None:
    """Render a story in scene order: SOURCE is a story.csv (with STORY_BIBLE.md) or @prompts.txt;
    without SOURCE, the list `echo-os plan PROJECT ...` made.

    One artifact per image, then story.json and contact-sheet.png in the project folder. Running the
    same command again renders only what is missing.

    \b
      echo-os batch "Lighthouse Keeper" prompts/lighthouse-keeper/story.csv --dry-run
      echo-os batch "Lighthouse Keeper" prompts/lighthouse-keeper/story.csv
      echo-os batch sketches @prompts.txt --steps 20
      echo-os batch "Ruzgar NFT" --count 100 --style "digital art"
      echo-os batch "Lighthouse Keeper" prompts/lighthouse-keeper/story.csv --ray auto   # on a Ray cluster
    """
    from click.core import ParameterSource

    from echo_os.engines import create_engine
    from echo_os.story.batch import batch_options, prepare_batch

    settings = settings_from(ctx)
    if no_cache:
        settings = dataclasses.replace(settings, response_cache=False)
    if ray_address is not None and not dry_run:
        from echo_os.render.ray import import_ray

        import_ray()  # not installed: one line, before anything is planned or written
    # The options, the preset (its engine when --engine is not given) and the style as POST /api/batch
    # takes them (echo_os.story.batch); the planner layers them over the rows and the bible.
    base_options = batch_options(settings, model=model, engine=engine, steps=steps, cfg=cfg, size=size,
                                 scheduler=scheduler, seed=seed, style=style, preset=preset,
                                 engine_given=ctx.get_parameter_source("engine") not in (None, ParameterSource.DEFAULT))
    engine = base_options.engine
    from echo_os.render.styles import StyleChoice
    from echo_os.resonance.story import (
        ResonanceOptions,
        candidate_plan,
        load_story_json,
        load_thresholds,
        parse_objective,
    )

    if no_score and (best_of > 1 or reroll_flagged):
        raise UsageError("--best-of and --reroll-flagged choose by scores; they cannot be used with --no-score.")
    resonance = ResonanceOptions(score=not no_score, clip=clip, objective=parse_objective(objective), best_of=best_of,
                                 thresholds=load_thresholds(settings, project, style=style_threshold,
                                                            character=character_threshold,
                                                            alignment=alignment_threshold))
    chosen_style = StyleChoice(base_options.style_name, base_options.style, base_options.style_negative)
    if source is None:
        from echo_os.intent.tasks import batch_task_plan  # a task plan (plan --kind assets) runs on its own

        if batch_task_plan(settings, project, count=count, dry_run=dry_run, json_output=json_output, engine=engine,
                           model=model, size=size, steps=steps, cfg=cfg, seed=seed, style=chosen_style,
                           echo=click.echo):
            return
        planned, planned_kind = plan_source(settings, project, count)
        source = f"@{planned}" if planned_kind == "prompts" else str(planned)
    if source.startswith("@") and bible is not None:
        raise UsageError("--bible is for a story CSV; a prompt list (@file) has no bible")

    from echo_os.story.tokens import workspace_tokenizer_loader

    tokenizer_for = workspace_tokenizer_loader(settings)  # a models.toml name or a folder; as /api/batch

    kind: Literal["storyboard", "prompts"] = "prompts" if source.startswith("@") else "storyboard"
    path = Path(source[1:] if kind == "prompts" else source)

    def prepared_plan(project_name: str = project, options=base_options):
        """The story planned and checked through the front door (echo_os.story.batch.prepare_batch), as
        POST /api/batch plans it: the engine chosen once (choosing checks the model and its weights, so a
        dry run reports what the real run would), and its default size rule, which depends on it."""
        return prepare_batch(settings, project_name, path, kind=kind, options=options,
                             bible=Path(bible) if bible else None, count=count, tokenizer_loader=tokenizer_for)

    def adapter_for(plan) -> str | None:
        """--ip-adapter, else the bible's `ip_adapter`, else the default; `none` leaves references out."""
        from echo_os.story.batch import adapter_for

        return adapter_for(plan, ip_adapter)

    if compare_models is not None:
        from echo_os.iterate.compare import parse_list

        if model is not None:
            raise OptionError("--compare-models names the models; leave out --model", "compare-models")
        models = parse_list(compare_models, "compare-models")
        if len(models) < 2:
            raise OptionError("--compare-models needs at least two models, e.g. sdxl,juggernaut", "compare-models")
        plans = {name: prepared_plan(f"{project} [{name}]", base_options.model_copy(update={"model": name})).plan
                 for name in models}  # every plan checked before anything renders
        if dry_run:
            for plan in plans.values():
                click.echo(json_for_terminal(plan.model_dump(mode="json")) if json_output else format_dry_run(plan))
            return
        results = {name: render_plan(settings, plan, batch_size=batch_size, json_output=json_output,
                                     ip_adapter=adapter_for(plan), clip=clip, quiet_json=True)
                   for name, plan in plans.items()}
        sheet = side_by_side_sheets(settings, project, results)
        if json_output:
            click.echo(json_for_terminal({"models": {name: result.as_dict() for name, result in results.items()},
                                          "compare_sheet": str(sheet)}))
        else:
            click.echo(f"models side by side: {sheet}")
        return

    prepared = prepared_plan()
    plan, note = prepared.plan, prepared.note
    choice = (prepared.engine.name, prepared.engine.reason) if prepared.engine is not None else None
    if dry_run:
        check_plan(settings, plan, adapter_for(plan), clip)
        if choice is not None:
            from echo_os.cli.render import engine_line
            from echo_os.render.prepare import EngineChoice

            click.echo(engine_line(EngineChoice(*choice), note), err=True)
        if json_output:
            click.echo(json_for_terminal(plan.model_dump(mode="json")))
        else:
            click.echo(format_dry_run(plan))
        return
    previous = load_story_json(settings, plan.project) if reroll_flagged else None
    plan, resonance.keep = candidate_plan(plan, best_of, previous, reroll_flagged)
    if reroll_flagged:
        flagged = ((previous or {}).get("resonance") or {}).get("flagged_scenes") or []
        click.echo(f"reroll: scenes {', '.join(map(str, flagged))}" if flagged else "reroll: no scene was flagged",
                   err=True)
    for warning in plan.warnings:
        click.echo(f"warning: {warning}", err=True)
    ray = None
    if ray_address is not None:
        from echo_os.render.ray import RayOptions

        ray = RayOptions(address=ray_address, actors=ray_actors)
    # --count renders a part; story.json and the contact sheet still describe the whole story rendered so far
    story = prepared.whole
    def run(quiet_json: bool = False):
        return render_plan(settings, plan, batch_size=batch_size, json_output=json_output,
                           ip_adapter=adapter_for(plan), clip=clip,
                           engine=create_engine(settings, *choice) if choice and ray is None else None, note=note,
                           resonance=resonance, ray=ray, story=story, quiet_json=quiet_json)

    if ray is not None and json_output:  # stdout is the JSON document only, whatever Ray prints meanwhile
        with only_json_on_stdout():
            result = run(quiet_json=True)
        click.echo(json_for_terminal(result.as_dict()))
    else:
        run()


def check_plan(settings: Settings, plan, ip_adapter: str | None, clip: str | None) -> None:
    """What the real run checks before its first scene: the characters' adapters and LoRAs and the
    --clip model (the model and weights were checked by choosing the engine). Raises the same errors."""
    from echo_os.story.continuity import find_clip_model
    from echo_os.story.render import scene_requests

    scene_requests(settings, plan, ip_adapter)
    if clip is not None:
        find_clip_model(settings, clip)
