"""`echo-os compare`: one prompt over up to three axes, one artifact per cell, and a labelled grid sheet."""

from __future__ import annotations

import json

import click

from echo_os.cli import settings_from


@click.command()
@click.argument("prompt")
# Each axis takes the singular spelling every other command uses and the plural, repeated or comma-separated:
# --model sdxl --model juggernaut, --models sdxl,juggernaut and --model sdxl,juggernaut are the same axis.
@click.option("--model", "--models", "models", multiple=True,
              help="Models, repeatable or comma-separated (e.g. sdxl,juggernaut). Default: sdxl.")
@click.option("--scheduler", "--schedulers", "schedulers", multiple=True,
              help="Schedulers, repeatable or comma-separated (e.g. euler,dpmpp_2m_karras).")
@click.option("--cfg", multiple=True, help="Guidance scales, repeatable or comma-separated (e.g. 5,7). Default: 7.")
@click.option("--steps", multiple=True, help="Steps, repeatable or comma-separated (e.g. 20,30). Default: 30.")
@click.option("--seed", "--seeds", "seeds", multiple=True,
              help="Seeds, repeatable or comma-separated. Default: one random seed for every cell.")
@click.option("--style", "--styles", "styles", multiple=True,
              help="Named styles, repeatable or comma-separated (`echo-os styles list`).")
@click.option("--engine", "--engines", "engines", multiple=True,
              help="Engines, repeatable or comma-separated. Default: auto.")
@click.option("--negative", "negative_prompt", default=None, help="Negative prompt for every cell.")
@click.option("--size", default=None, help="WIDTHxHEIGHT for every cell. Default: the model entry's, else "
                                         "1024x1024; 512x512 when the cpu engine renders (ECHO_OS_CPU_SIZE).")
@click.option("--project", default="compare", show_default=True, help="Project of the cells and the grid.")
@click.option("--max-cells", type=click.IntRange(1), default=64, show_default=True,
              help="Refuse more cells than this (raise it on purpose).")
@click.option("--json", "as_json", is_flag=True, help="Print the cells and the grid as JSON.")
@click.option("--no-memory", is_flag=True, hidden=True, help="No effect: the next memory command embeds.")
@click.pass_context
def compare(ctx: click.Context, prompt: str, models: tuple[str, ...], schedulers: tuple[str, ...],
            cfg: tuple[str, ...], steps: tuple[str, ...], seeds: tuple[str, ...], styles: tuple[str, ...],
            engines: tuple[str, ...],
            negative_prompt: str | None, size: str | None, project: str, max_cells: int, as_json: bool,
            no_memory: bool) -> None:
    """Render PROMPT for every combination of the options given several values (up to three axes).

    \b
      echo-os compare "a lighthouse" --cfg 5,7 --steps 20,30 --seeds 1,2
      echo-os compare "a lighthouse" --models sdxl,juggernaut --schedulers euler,dpmpp_2m_karras

    A re-run renders only the missing cells (the same grid is not written again).
    """
    from echo_os.artifacts.store import ArtifactStore
    from echo_os.cli.feedback import interrupt_report
    from echo_os.cli.render import StepBar, engine_announcer
    from echo_os.engines import check_engine_name
    from echo_os.iterate.compare import parse_list, plan_compare, render_compare
    from echo_os.render.requests import random_seed

    settings = settings_from(ctx)
    def axis(values: tuple[str, ...]) -> str | None:
        """Repeated values joined to the comma-separated ones: one list per axis."""
        return ",".join(values) or None

    lists = {
        "models": parse_list(axis(models), "models"),
        "schedulers": parse_list(axis(schedulers), "schedulers"),
        "cfg": parse_list(axis(cfg), "cfg", float),
        "steps": parse_list(axis(steps), "steps", int),
        "seeds": parse_list(axis(seeds), "seeds", int) or (random_seed(),),
        "styles": parse_list(axis(styles), "styles"),
        "engines": parse_list(axis(engines), "engines"),
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
        drawn = lists["seeds"][0] if not seeds else None  # a random seed: the same command would draw another
        with interrupt_report(store, seed=drawn):  # a re-run renders only the cells not saved yet
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
