"""`echo-os batch PROJECT SOURCE`: plan a story (story.csv + STORY_BIBLE.md) or a prompt list
(@prompts.txt) and render it (echo_os.story.render), or with --dry-run show what would be rendered."""

from __future__ import annotations

import json
from pathlib import Path

import click

from echo_os.cli import settings_from
from echo_os.errors import UsageError
from echo_os.requests import SCHEDULERS
from echo_os.settings import Settings


class StoryBar:
    """A tqdm bar over scenes: scenes done/total, and images per minute rendered by this run."""

    def __init__(self, scenes: int):
        from tqdm import tqdm

        self.bar = tqdm(total=scenes, unit="scene", leave=False, disable=None, dynamic_ncols=True,
                        desc="scenes")

    def __call__(self, event) -> None:
        self.bar.n = event.scenes_done
        self.bar.set_postfix_str(f"{event.images_done}/{event.images_total} images, "
                                 f"{event.images_per_minute:.1f} images/min", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def render_plan(settings: Settings, plan, *, batch_size: int | None = None, json_output: bool = False,
                ip_adapter: str | None = "ip-adapter-sdxl", clip: str | None = None, ray=None) -> None:
    """Render every scene of a validated StoryPlan in order and print what was made."""
    from echo_os.artifacts.store import ArtifactStore
    from echo_os.cli.render import engine_announcer
    from echo_os.memory.artifacts import attach
    from echo_os.story.render import render_plan as render_story

    bar = StoryBar(len(plan.scenes))
    store = ArtifactStore(settings)
    listener = attach(store)  # every scene becomes searchable in Echo Memory (ECHO_OS_NO_MEMORY=1 skips it)
    pool = None
    try:
        if ray is not None:
            from echo_os.ray_cluster import RayPool

            pool = RayPool(settings, ray)
            click.echo(f"ray: {len(pool.actors)} render actors", err=True)
        result = render_story(settings, plan, batch_size=batch_size, ip_adapter=ip_adapter, clip=clip,
                              progress=bar, store=store,
                              on_engine=engine_announcer(listener), ray=pool)
    finally:
        bar.close()
        store.close()
        if pool is not None:
            pool.close()
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    if json_output:
        click.echo(json.dumps(result.as_dict(), ensure_ascii=False, indent=2))
        return
    for row in result.artifact_rows():
        resumed = "  (already rendered)" if row["resumed"] else ""
        click.echo(f"{row['scene']:03d}  {row['id'][:12]}  {row['image']}{resumed}")
    rate = f", {result.images_per_minute:.1f} images/min" if result.rendered else ""
    click.echo(f"{result.rendered} rendered, {result.resumed} already rendered{rate}")
    click.echo(f"story: {result.story_json}")
    click.echo(f"contact sheet: {result.contact_sheet}")
    for line in result.continuity.lines():
        click.echo(line)


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
            f"  prompt:    {request.prompt}",
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


@click.command()
@click.argument("project")
@click.argument("source")
@click.option("--bible", type=click.Path(dir_okay=False), default=None,
              help="STORY_BIBLE.md for a story CSV (default: STORY_BIBLE.md beside the CSV, if there).")
@click.option("--dry-run", is_flag=True, help="Print each scene's prompt, negative, seed and token count; render nothing.")
@click.option("--json", "json_output", is_flag=True, help="Print the plan (or the results) as JSON.")
@click.option("--engine", default="auto", show_default=True,
              help="Engine for every scene: auto (the workspace's engine order) or a registered engine.")
@click.option("--preset", default=None,
              help="A render preset (pipelines/presets): its engine, steps, cfg, size and scheduler for every "
                   "scene, where no option here gives them.")
@click.option("--model", default=None, help="Model for every scene (default: the bible's model, else sdxl).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per pipeline call (default: from free GPU memory on CUDA; 1 for CPU diffusion above "
                   "64x64; 64 for draft).")
@click.option("--ip-adapter", "ip_adapter", default="ip-adapter-sdxl", show_default=True,
              help="IP-Adapter model (models.toml) for characters with reference images; 'none' leaves them out.")
@click.option("--clip", default=None,
              help="CLIP model (models.toml) for the continuity report; default: the first one on this machine; "
                   "'none' skips it.")
@click.option("--steps", type=int, default=None, help="Override steps for every scene.")
@click.option("--cfg", type=float, default=None, help="Override the guidance scale for every scene.")
@click.option("--size", default=None, help="Override WIDTHxHEIGHT for every scene.")
@click.option("--scheduler", type=click.Choice(SCHEDULERS), default=None, help="Override the scheduler.")
@click.option("--seed", type=int, default=None,
              help="Base seed: scene N without a seed of its own gets SEED + 1000*N (see docs/story.md).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Render on Ray actors: `--ray` alone starts a local Ray instance, `--ray auto` or "
                   "`--ray HOST:PORT` joins a cluster. Needs pip install 'echo-os[ray]'.")
@click.option("--ray-actors", type=click.IntRange(1, 1024), default=None,
              help="Ray actors [default: one per GPU in the cluster, 2 without GPUs].")
@click.pass_context
def batch(ctx: click.Context, project: str, source: str, bible: str | None, dry_run: bool, json_output: bool,
          engine: str, model: str | None, batch_size: int | None, ip_adapter: str, clip: str | None,
          steps: int | None, cfg: float | None, size: str | None, scheduler: str | None, seed: int | None,
          preset: str | None, ray_address: str | None, ray_actors: int | None) -> None:
    """Render a story in scene order: SOURCE is a story.csv (with STORY_BIBLE.md) or @prompts.txt.

    One artifact per image, then story.json and contact-sheet.png in the project folder. Running the
    same command again renders only what is missing.

    \b
      echo-os batch "Lighthouse Keeper" prompts/lighthouse-keeper/story.csv --dry-run
      echo-os batch "Lighthouse Keeper" prompts/lighthouse-keeper/story.csv
      echo-os batch sketches @prompts.txt --steps 20
      echo-os batch "Lighthouse Keeper" prompts/lighthouse-keeper/story.csv --ray auto   # on a Ray cluster
    """
    from echo_os.story import PlanOptions, load_clip_tokenizer, plan_prompt_list, plan_story

    from echo_os.engines import check_engine_name

    settings = settings_from(ctx)
    if ray_address is not None and not dry_run:
        from echo_os.ray_cluster import import_ray

        import_ray()  # not installed: one line, before anything is planned or written
    if preset is not None:
        from click.core import ParameterSource

        from echo_os.engines.presets import get_preset

        chosen = get_preset(settings, preset)
        if ctx.get_parameter_source("engine") in (None, ParameterSource.DEFAULT) and chosen.engine:
            engine = chosen.engine
        steps = steps if steps is not None else chosen.steps
        cfg = cfg if cfg is not None else chosen.cfg
        size = size if size is not None else chosen.size
        scheduler = scheduler if scheduler is not None else chosen.scheduler
    check_engine_name(engine)
    options = PlanOptions(model=model, engine=engine, steps=steps, cfg=cfg, size=size, scheduler=scheduler,
                          seed=seed)
    if source.startswith("@"):
        if bible is not None:
            raise UsageError("--bible is for a story CSV; a prompt list (@file) has no bible")
        plan = plan_prompt_list(project, Path(source[1:]), options=options, tokenizer_loader=load_clip_tokenizer)
    else:
        plan = plan_story(project, Path(source), bible=bible, options=options,
                          tokenizer_loader=load_clip_tokenizer)
    if dry_run:
        if json_output:
            click.echo(json.dumps(plan.model_dump(mode="json"), ensure_ascii=False, indent=2))
        else:
            click.echo(format_dry_run(plan))
        return
    for warning in plan.warnings:
        click.echo(f"warning: {warning}", err=True)
    ray = None
    if ray_address is not None:
        from echo_os.ray_cluster import RayOptions

        ray = RayOptions(address=ray_address, actors=ray_actors)
    render_plan(settings, plan, batch_size=batch_size, json_output=json_output,
                ip_adapter=None if ip_adapter == "none" else ip_adapter, clip=clip, ray=ray)
