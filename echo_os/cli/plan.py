"""`echo-os plan PROJECT INTENT`: turn an intent into a plan (a prompt list, or a storyboard and a bible
skeleton) saved in the project, which `echo-os batch PROJECT` then renders. See echo_os/intent/."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, cast

import click

from echo_os.cli import settings_from
from echo_os.errors import UsageError

if TYPE_CHECKING:
    from echo_os.intent.planfile import PlanKind

MAX_PLAN_ITEMS = 500


@click.command()
@click.argument("project")
@click.argument("intent")
@click.option("--count", type=click.IntRange(1, MAX_PLAN_ITEMS), default=12, show_default=True,
              help="How many prompts (or scenes) to plan.")
@click.option("--kind", type=click.Choice(["prompts", "story", "assets", "tasks"]), default="prompts", show_default=True,
              help="prompts: a prompt list (@prompts.txt); story: story.csv and STORY_BIBLE.md, scenes with an arc; "
                   "assets (or tasks): per item a concept image, its seamless texture and its turnaround sheet, "
                   "with depends_on, in plan.json.")
@click.option("--diversity", type=click.FloatRange(0.0, 1.0), default=None,
              help="0..1: how much variety weighs against relevance to the intent (MMR lambda = 1 - diversity) "
                   "[default: 0.5].")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Where to write the list (default: prompts/<project>/prompts.txt or story.csv).")
@click.option("--seed", type=int, default=None, help="Seed of the variation: the same seed plans the same items.")
@click.option("--template", default=None,
              help="Your own variation template in the Dynamic Prompts syntax ({a|b|c}, __wildcard__), "
                   "instead of the built-in subject, palette, composition, lens and lighting.")
@click.option("--method", type=click.Choice(["auto", "offline", "llm"]), default="auto", show_default=True,
              help="auto: the language model when one is configured (echo-os.toml [planner]), else offline.")
@click.option("--context", "context_ids", multiple=True, metavar="ARTIFACT_ID",
              help="With the language model: show it this past artifact's image (repeat for several).")
@click.option("--ignore-memory", is_flag=True, help="Do not steer away from the project's past work.")
@click.option("--json", "as_json", is_flag=True, help="Print plan.json.")
@click.pass_context
def plan(ctx: click.Context, project: str, intent: str, count: int, kind: str, out: str | None, seed: int | None,
         template: str | None, method: str, context_ids: tuple[str, ...], ignore_memory: bool, as_json: bool,
         diversity: float | None) -> None:
    """Plan PROJECT from INTENT: a prompt list or a storyboard, varied and away from past work.

    INTENT is what to make, for example "warm fractal, no human forms". Exclusions ("no ...",
    "without ...") go to the negative prompt. Offline (the default), prompts are
    varied with Dynamic Prompts templates (wildcards: the built-in vocabulary and prompts/wildcards/*.txt)
    and the COUNT farthest from each other and from the project's past work are kept.

    \b
      echo-os plan "Ruzgar NFT" "warm fractal, no human forms" --count 100
      echo-os batch "Ruzgar NFT" --count 100 --style "digital art"
    """
    from echo_os.intent.intent import parse_intent
    from echo_os.intent.llm import load_planner_config
    from echo_os.intent.planfile import Constraints, PlanFile, PlanItem, save_plan

    settings = settings_from(ctx)
    if not project.strip():
        raise UsageError("the project name is empty")
    parsed = parse_intent(intent)
    if not parsed.theme.strip():
        raise UsageError(f"the intent {intent!r} only says what to leave out; say what to show, e.g. "
                         "\"warm fractal, no human forms\".")
    config = load_planner_config(settings) if method != "offline" else None
    if method == "llm" and config is None:
        raise UsageError("--method llm needs a configured endpoint: [planner] url and model in echo-os.toml "
                         "(or ECHO_OS_PLANNER_URL and ECHO_OS_PLANNER_MODEL); see docs/plan.md.")
    if context_ids and config is None:
        raise UsageError("--context shows images to a language model; configure one (docs/plan.md) or drop it.")
    if template is not None and config is not None:
        raise UsageError("--template is for the offline planner; add --method offline.")
    images = _context_images(settings, context_ids)

    from echo_os.intent.offline import measure, new_seed, plan_offline
    from echo_os.intent.past import past_work
    from echo_os.memory.artifacts import quiet_model_loading
    from echo_os.memory.embedders import MiniLMEmbedder

    quiet_model_loading()
    embedder = MiniLMEmbedder()
    embed = _embed_with_progress(embedder)
    past = None if ignore_memory else past_work(settings, project, embed)
    from echo_os.intent.offline import DEFAULT_DIVERSITY

    diversity = DEFAULT_DIVERSITY if diversity is None else diversity
    notes: list[str] = []
    story_record: dict = {}
    if config is None:
        seed = new_seed() if seed is None else seed
        if kind == "story":
            from echo_os.intent.storyplan import plan_story_offline

            story = plan_story_offline(parsed, count=count, seed=seed, past=past.vectors if past else None,
                                       embed=embed, diversity=diversity)
            parsed, items, scores, notes = story.intent, story.items, story.diversity, story.notes
            story_record = story.story
        else:
            offline = plan_offline(parsed, count=count, seed=seed, template=template,
                                   wildcards_dir=settings.home / "prompts" / "wildcards",
                                   past=past.vectors if past else None, embed=embed, diversity=diversity, kind=kind)
            parsed, scores, notes = offline.intent, offline.diversity, offline.notes
            items = [PlanItem(prompt=c.prompt, parts=c.parts) for c in offline.chosen]
        method_record = {"name": "offline", "seed": seed, "template": template, "library": "dynamicprompts",
                         "embedder": "all-MiniLM-L6-v2", "selection": "maximal marginal relevance",
                         "diversity": diversity}
    else:
        from echo_os.intent.llm import plan_with_llm
        from echo_os.intent.offline import prepare_intent
        from echo_os.intent.planfile import past_plan_prompts

        parsed, _, query, _ = prepare_intent(parsed, embed)
        past_prompts = [] if ignore_memory else _recent_prompts(settings, project) + past_plan_prompts(settings, project)
        answer = plan_with_llm(config, parsed, count=count, past_prompts=past_prompts[-50:], images=images,
                               embed=embed)
        items = [PlanItem(prompt=prompt, parts={}) for prompt in answer.prompts]
        vectors = embed(answer.prompts)
        scores = measure(vectors, past.vectors if past is not None else vectors[:0], query)
        notes = answer.notes
        method_record = {"name": "llm", "url": config.url, "model": config.model, "attempts": answer.attempts,
                         "context": [str(path) for path in images], "corrections": answer.notes}
    if kind in ("assets", "tasks"):
        from echo_os.intent.tasks import task_items

        items = task_items(items, assets=kind == "assets")
    diversity_record = scores
    method_record["memory"] = ("ignored" if past is None else
                               f"{past.artifacts} artifacts in Echo Memory, {past.planned} earlier plan items")
    plan_file = PlanFile(project=project, intent=intent, theme=parsed.theme, kind=cast("PlanKind", kind),  # a click.Choice
                         constraints=Constraints(exclusions=list(parsed.exclusions),
                                                 negative_prompt=parsed.negative_prompt),
                         method=method_record, items=items, diversity=diversity_record.as_dict(), notes=notes,
                         story=story_record)
    saved = save_plan(settings, plan_file, Path(out).resolve() if out else None)
    for line in diversity_record.lines():
        click.echo(line, err=True)
    for line in notes:
        click.echo(f"note: {line}", err=True)
    if as_json:
        click.echo(saved.model_dump_json(indent=2))
        return
    for number, item in enumerate(saved.items, start=1):
        task = f"[{item.id}{' <- ' + ', '.join(item.depends_on) if item.depends_on else ''}] " if item.id else ""
        click.echo(f"{number:3d}  {task}{item.prompt}")
    if saved.constraints.negative_prompt:
        click.echo(f"negative: {saved.constraints.negative_prompt}")
    if kind in ("assets", "tasks"):
        click.echo(f"plan: {saved.files['list']}, {len(saved.items)} tasks ({method_record['name']})", err=True)
        click.echo(f"render it: echo-os batch {shlex.quote(project)}  (in dependency order; again to resume)",
                   err=True)
        return
    click.echo(f"plan: {', '.join(saved.files.values())} and plan.json beside it ({method_record['name']})", err=True)
    click.echo(f"render it: echo-os batch {shlex.quote(project)} --count {len(saved.items)}", err=True)


def _embed_with_progress(embedder, chunk: int = 64):
    """embed(texts) with a tqdm bar (terminal only) when there are more than one chunk's worth: embedding
    a thousand candidates with MiniLM takes tens of seconds on a CPU."""
    import numpy as np

    def embed(texts):
        if len(texts) <= chunk:
            return embedder.embed_texts(texts)
        from tqdm import tqdm

        rows = []
        with tqdm(total=len(texts), unit="prompt", desc="embedding", leave=False, disable=None,
                  dynamic_ncols=True) as bar:
            for start in range(0, len(texts), chunk):
                rows.append(embedder.embed_texts(texts[start:start + chunk]))
                bar.update(len(rows[-1]))
        return np.concatenate(rows)

    return embed


def _context_images(settings, ids: tuple[str, ...]) -> list[Path]:
    if not ids:
        return []
    from echo_os.artifacts.meta import IMAGE_KINDS, require_kind
    from echo_os.artifacts.store import ArtifactStore

    store = ArtifactStore(settings)
    try:
        artifacts = [store.open(artifact_id) for artifact_id in ids]
        for artifact in artifacts:
            require_kind(artifact.id, artifact.meta, (*IMAGE_KINDS, "sheet"), "plan's context", needs="an image")
        return [artifact.image_path for artifact in artifacts]
    finally:
        store.close()


def _recent_prompts(settings, project: str, limit: int = 30) -> list[str]:
    if not settings.catalog_path.is_file():
        return []
    from echo_os.artifacts.catalog import Catalog

    with Catalog(settings.catalog_path) as catalog:
        return list(dict.fromkeys(row.prompt for row in catalog.query(project=project, limit=limit)))


