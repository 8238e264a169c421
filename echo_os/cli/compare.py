"""`echo-os compare`: one prompt over up to three axes, one artifact per cell, and a labelled grid sheet."""

from __future__ import annotations

import json

import click

from echo_os.cli import settings_from


@click.command()
@click.argument("prompt")
@click.option("--models", default=None, help="Models, comma-separated (e.g. sdxl,juggernaut). Default: sdxl.")
@click.option("--schedulers", default=None, help="Schedulers, comma-separated (e.g. euler,dpmpp_2m_karras).")
@click.option("--cfg", default=None, help="Guidance scales, comma-separated (e.g. 5,7). Default: 7.")
@click.option("--steps", default=None, help="Steps, comma-separated (e.g. 20,30). Default: 30.")
@click.option("--seeds", default=None, help="Seeds, comma-separated. Default: one random seed for every cell.")
@click.option("--styles", default=None, help="Named styles, comma-separated (`echo-os styles list`).")
@click.option("--engines", default=None, help="Engines, comma-separated. Default: auto.")
@click.option("--negative", "negative_prompt", default=None, help="Negative prompt for every cell.")
@click.option("--size", default=None, help="WIDTHxHEIGHT for every cell. Default: the model entry's, else "
                                         "1024x1024; 512x512 when the cpu engine renders (ECHO_OS_CPU_SIZE).")
@click.option("--project", default="compare", show_default=True, help="Project of the cells and the grid.")
@click.option("--max-cells", type=click.IntRange(1), default=64, show_default=True,
              help="Refuse more cells than this (raise it on purpose).")
@click.option("--json", "as_json", is_flag=True, help="Print the cells and the grid as JSON.")
@click.option("--no-memory", is_flag=True, hidden=True, help="No effect: the next memory command embeds.")
@click.pass_context
def compare(ctx: click.Context, prompt: str, models: str | None, schedulers: str | None, cfg: str | None,
            steps: str | None, seeds: str | None, styles: str | None, engines: str | None,
            negative_prompt: str | None, size: str | None, project: str, max_cells: int, as_json: bool,
            no_memory: bool) -> None:
    """Render PROMPT for every combination of the options given several values (up to three axes).

    \b
      echo-os compare "a lighthouse" --cfg 5,7 --steps 20,30 --seeds 1,2
      echo-os compare "a lighthouse" --models sdxl,juggernaut --schedulers euler,dpmpp_2m_karras

    A re-run renders only the missing cells (the same grid is not written again).
    """
    from echo_os.artifacts.store import ArtifactStore
    from echo_os.cli.render import StepBar, engine_announcer
    from echo_os.engines import check_engine_name
    from echo_os.iterate.compare import parse_list, plan_compare, render_compare
    from echo_os.render.requests import random_seed

    settings = settings_from(ctx)
    lists = {
        "models": parse_list(models, "models"),
        "schedulers": parse_list(schedulers, "schedulers"),
        "cfg": parse_list(cfg, "cfg", float),
        "steps": parse_list(steps, "steps", int),
        "seeds": parse_list(seeds, "seeds", int) or (random_seed(),),
        "styles": parse_list(styles, "styles"),
        "engines": parse_list(engines, "engines"),
    }
    for engine in lists["engines"]:
        check_engine_name(engine, "engines")
    base = {"prompt": prompt, "negative_prompt": negative_prompt or None, "size": size, "project": project}
    plan = plan_compare(settings, base, {k: v for k, v in lists.items() if v}, max_cells=max_cells,
                        given={"size"} if size is not None else set())
    store = ArtifactStore(settings)
    # images are embedded into Echo Memory by the next memory command (issue 11), not here
    bar = StepBar(len(plan.cells))
    try:
        title = f"{prompt}: " + " x ".join(f"{axis.label} ({len(axis.values)})" for axis in plan.axes)
        outcome = render_compare(settings, plan, store, progress=bar, on_engine=engine_announcer(),
                                 title=title if plan.axes else prompt)
    finally:
        bar.close()
        store.close()
    if as_json:
        click.echo(json.dumps({
            "grid": outcome.grid.summary(), "rendered": outcome.rendered, "resumed": outcome.resumed,
            "cells": [{"label": cell.label(plan.axes), "id": artifact.id, "image": str(artifact.image_path)}
                      for cell, artifact in zip(plan.cells, outcome.artifacts)]}, indent=2, ensure_ascii=False))
        return
    for cell, artifact in zip(plan.cells, outcome.artifacts):
        click.echo(f"{artifact.id[:12]}  {cell.label(plan.axes) or 'single cell'}")
    click.echo(f"grid {outcome.grid.id[:12]}  {outcome.grid.image_path}"
               f"{'' if outcome.grid_written else ' (already there)'}")
    click.echo(f"{len(plan.cells)} cells: {outcome.rendered} rendered, {outcome.resumed} already there", err=True)
