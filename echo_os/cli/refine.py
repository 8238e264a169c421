"""`echo-os refine`: image-to-image from an artifact (lineage in meta.json)."""

from __future__ import annotations

import json

import click

from echo_os.cli import settings_from
from echo_os.render.requests import SCHEDULERS


@click.command()
@click.argument("artifact_id")
@click.argument("prompt", required=False)
@click.option("--strength", type=float, default=0.35, show_default=True,
              help="How much of the image is repainted: more than 0, at most 1 (A1111's denoising strength).")
@click.option("--style", default=None, help="A named style or free words (default: the parent's).")
@click.option("--negative", "negative_prompt", default=None, help="Negative prompt (default: the parent's).")
@click.option("--seed", type=int, default=None, help="Seed (default: random).")
@click.option("--steps", type=int, default=None, help="Steps of the full schedule (default: the parent's); "
                                                      "img2img runs steps x strength of them.")
@click.option("--cfg", type=float, default=None, help="Guidance scale (default: the parent's).")
@click.option("--scheduler", type=click.Choice(SCHEDULERS), default=None, help="Default: the parent's.")
@click.option("--model", default=None, help="Model (default: the parent's).")
@click.option("--engine", default="auto", show_default=True, help="An engine that can refine (img2img).")
@click.option("--option", "-o", "option_specs", multiple=True, metavar="KEY=VALUE",
              help="An option of the engine (docs/engines.md), over the parent's when the engine is the parent's.")
@click.option("--count", type=int, default=1, show_default=True, help="Variations (seed, seed+1, ...).")
@click.option("--project", default=None, help="Project of the new artifacts (default: the parent's).")
@click.option("--refiner", default=None, help="A refiner model: the base denoises to --switch, the refiner the rest.")
@click.option("--switch", type=float, default=0.8, show_default=True, help="With --refiner: the base's fraction.")
@click.option("--json", "as_json", is_flag=True, help="Print the artifacts as JSON.")
@click.option("--no-memory", is_flag=True, hidden=True, help="No effect: the next memory command embeds.")
@click.pass_context
def refine(ctx: click.Context, artifact_id: str, prompt: str | None, strength: float, style: str | None,
           negative_prompt: str | None, seed: int | None, steps: int | None, cfg: float | None,
           scheduler: str | None, model: str | None, engine: str, count: int, project: str | None, as_json: bool,
           no_memory: bool, refiner: str | None, switch: float, option_specs: tuple[str, ...]) -> None:
    """Refine ARTIFACT_ID (image-to-image), with PROMPT or the parent's prompt. Each new artifact records its
    parent, the strength and the parent's sha256 (see `echo-os artifacts tree`)."""
    from echo_os.artifacts.store import ArtifactStore
    from echo_os.cli.feedback import interrupt_report
    from echo_os.cli.render import StepBar, engine_announcer, parse_engine_options, refiner_input
    from echo_os.engines import check_engine_name, create_engine
    from echo_os.iterate.refine import check_strength, prepare_refine
    from echo_os.render.requests import random_seed
    from echo_os.render.scheduler import render_requests

    settings = settings_from(ctx)
    check_strength(strength)
    check_engine_name(engine)
    options = parse_engine_options(option_specs)
    store = ArtifactStore(settings)
    try:
        parent = store.open(artifact_id)
        changes = {"refiner": refiner_input(settings, refiner, switch), "steps": steps, "cfg": cfg,
                   "scheduler": scheduler, "model": model, "engine": engine,
                   "count": count, "project": project, "seed": seed if seed is not None else random_seed()}
        prepared = prepare_refine(settings, parent, strength=strength, prompt=prompt, style=style,
                                  negative=negative_prompt, changes=changes, options=options)
        request, (name, reason) = prepared.request, (prepared.engine.name, prepared.engine.reason)
        # images are embedded into Echo Memory by the next memory command (issue 11), not here
        bar = StepBar(request.count)
        try:
            with interrupt_report(store, resumes=False):
                outcome = render_requests(settings, [request], store=store, progress=bar,
                                          on_engine=engine_announcer(bar=bar, model=request.model),
                                          engine=create_engine(settings, name, reason))
        finally:
            bar.close()
    finally:
        store.close()
    if as_json:
        # strength: an image's meta.json field (getattr: Artifact.meta may be any kind's, by its type)
        click.echo(json.dumps([a.summary() | {"parent_id": a.meta.parent_id,
                                              "strength": getattr(a.meta, "strength", None)}
                               for a in outcome.artifacts], indent=2, ensure_ascii=False))
    else:
        for artifact in outcome.artifacts:
            click.echo(f"{artifact.id[:12]}  {artifact.image_path}  (refined from {parent.id[:12]}, "
                       f"strength {strength:g})")
