"""`echo-os memory`: search the artifacts by text or image, find similar images and near-duplicates,
import other tools' images, and keep the index in step with the catalog."""

from __future__ import annotations

import json
from pathlib import Path

import click

from echo_os.cli import settings_from
from echo_os.cli.terminal import for_terminal, json_for_terminal
from echo_os.errors import UsageError


def _filter_options(command):
    command = click.option("--until", default=None, help="Only artifacts created on or before this ISO date.")(command)
    command = click.option("--since", default=None, help="Only artifacts created on or after this ISO date.")(command)
    command = click.option("--character", default=None, help="Only story scenes with this character.")(command)
    command = click.option("--model", default=None, help="Only this model name.")(command)
    command = click.option("--project", default=None, help="Only this project.")(command)
    return command


def _filters(project, model, character, since, until):
    from datetime import date

    from echo_os.memory.artifacts import MemoryFilters

    for name, value in (("--since", since), ("--until", until)):
        if value:
            try:
                date.fromisoformat(value[:10])
            except ValueError:
                raise click.BadParameter(f"{value!r} is not an ISO date like 2026-11-01", param_hint=name) from None
    return MemoryFilters(project=project, model=model, character=character, since=since, until=until)


def _open(ctx: click.Context, **options):
    """The workspace's memory; embedding what the index lacks (or everything, rebuild=True) shows a bar
    per embedder while it runs."""
    from echo_os.cli.progress import StageBars
    from echo_os.memory.artifacts import open_memory, print_note

    with StageBars(unit="image", labels={"minilm": "embedding prompts", "clip": "embedding images"}) as bars:
        return open_memory(settings_from(ctx), note=print_note, progress=bars, **options)


def _print_hits(hits, as_json: bool) -> None:
    if as_json:
        click.echo(json_for_terminal([h.as_dict() for h in hits]))
        return
    if not hits:
        click.echo("no matching artifacts", err=True)
        return
    for rank, hit in enumerate(hits, start=1):
        prompt = hit.row.prompt if len(hit.row.prompt) <= 56 else hit.row.prompt[:55] + "…"
        click.echo(f"{rank:>3}  {hit.row.id[:12]}  {hit.hit.score:6.3f}  {for_terminal(f'{hit.row.project:<14.14}')}  "
                   f"{for_terminal(prompt)}")
        click.echo(f"     {for_terminal(hit.image_path)}")


@click.group(invoke_without_command=True)
@click.option("--analyze", "analyze_flag", is_flag=True, help="The same as `memory analyze` (the design's spelling).")
@click.option("--learn-from", "learn_ids", multiple=True, metavar="ID",
              help="The same as `memory learn-from ID` (the design's spelling); repeat for several.")
@click.option("--name", default=None, help="With --learn-from: the style's name.")
@click.pass_context
def memory(ctx: click.Context, analyze_flag: bool, learn_ids: tuple[str, ...], name: str | None) -> None:
    """Echo Memory: every artifact embedded (MiniLM over prompts, CLIP over images when available)."""
    from echo_os.errors import UsageError

    spelled = analyze_flag or learn_ids or name is not None
    if ctx.invoked_subcommand is not None:
        if spelled:
            raise UsageError(f"--analyze, --learn-from and --name go without a subcommand; use "
                             f"`echo-os memory {ctx.invoked_subcommand} ...` alone.")
        return
    if analyze_flag and learn_ids:
        raise UsageError("give --analyze or --learn-from, not both.")
    if name is not None and not learn_ids:
        raise UsageError("--name names a style learned with --learn-from ID.")
    if analyze_flag:
        ctx.invoke(analyze)
    elif learn_ids:
        ctx.invoke(learn_from, artifact_ids=learn_ids, name=name)
    else:
        click.echo(ctx.get_help())


@memory.command("search")
@click.argument("query", required=False)
@click.option("--image", "image", type=click.Path(dir_okay=False), default=None,
              help="Search by an image instead of text (needs a CLIP model).")
@click.option("-k", "k", type=click.IntRange(1, 1000), default=10, show_default=True, help="How many results.")
@_filter_options
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.pass_context
def search(ctx: click.Context, query: str | None, image: str | None, k: int, as_json: bool, **filters) -> None:
    """Artifacts ranked by similarity to QUERY (text) or to --image PATH.

    \b
      echo-os memory search "stormy lighthouse at night" -k 5 --project "Harbor Tales"
      echo-os memory search --image sketch.png
    """
    if (query is None) == (image is None):
        raise UsageError("give either a text QUERY or --image PATH to `echo-os memory search`.")
    chosen = _filters(**filters)
    if image is not None:
        path = Path(image)
        if not path.is_file():
            raise UsageError(f"no image at {path}; give the path of a PNG or JPEG file.")
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as opened:
                picture = opened.convert("RGB")
        except (OSError, UnidentifiedImageError):
            raise UsageError(f"{path} is not an image file PIL can read.") from None
    with _open(ctx) as mem:
        if image is not None:
            hits = mem.search_image(picture, k, chosen)
        else:
            hits = mem.search_text(query, k, chosen)
    _print_hits(hits, as_json)


@memory.command("similar")
@click.argument("artifact_id")
@click.option("-k", "k", type=click.IntRange(1, 1000), default=10, show_default=True)
@_filter_options
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def similar(ctx: click.Context, artifact_id: str, k: int, as_json: bool, **filters) -> None:
    """Artifacts nearest to ARTIFACT_ID (its image with CLIP, else its prompt and story)."""
    chosen = _filters(**filters)
    with _open(ctx) as mem:
        _, hits = mem.similar(artifact_id, k, chosen)
    _print_hits(hits, as_json)


@memory.command("dupes")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), default=0.97, show_default=True,
              help="Cosine similarity of the CLIP image embeddings at or above which two images are duplicates.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def dupes(ctx: click.Context, threshold: float, as_json: bool) -> None:
    """Pairs of near-identical images (needs a CLIP model)."""
    with _open(ctx) as mem:
        pairs = mem.memory.dupes(threshold)
        rows = [(mem.catalog.get_num(p.a), mem.catalog.get_num(p.b), p.score) for p in pairs]
    rows = [(a, b, s) for a, b, s in rows if a is not None and b is not None]
    if as_json:
        click.echo(json.dumps([{"a": a.id, "b": b.id, "score": round(s, 4), "a_path": a.path, "b_path": b.path}
                               for a, b, s in rows], indent=2))
        return
    if not rows:
        click.echo(f"no near-duplicate images (cosine >= {threshold:g})", err=True)
        return
    for a, b, score in rows:
        click.echo(f"{score:.4f}  {a.id[:12]}  {b.id[:12]}  {a.path}  {b.path}")


@memory.command("stats")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def stats(ctx: click.Context, as_json: bool) -> None:
    """Vectors per embedder against artifacts in the catalog (repairs drift first)."""
    with _open(ctx) as mem:
        indexes = mem.memory.stats()
        catalog_count = mem.catalog.count()
        skipped = dict(mem.choice.skipped)
    data = {"catalog": catalog_count,
            "indexes": [{"embedder": s.embedder, "count": s.count, "dim": s.dim, "kind": s.kind,
                         "bytes": s.bytes_on_disk, "generation": s.generation} for s in indexes],
            "skipped": skipped, "scorers": _scorer_status(settings_from(ctx))}
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"catalog: {catalog_count} artifacts")
    for s in data["indexes"]:
        click.echo(f"{s['embedder']:<8} {s['count']:>8} vectors  {s['dim']}-d {s['kind']}  "
                   f"{s['bytes'] / 1024:.0f} KiB  generation {s['generation']}")
    for name, why in skipped.items():
        click.echo(f"{name:<8} off: {why}")
    for name, state in data["scorers"].items():
        click.echo(f"scorer {name:<9} {'on: ' + state['model'] if state['model'] else 'off: ' + state['missing']}")


def _scorer_status(settings) -> dict[str, dict]:
    """Which resonance scorers this workspace has (found in models.toml, nothing loaded)."""
    from echo_os.resonance.scorers import find_scorer_entry
    from echo_os.story.continuity import find_clip_model

    clip, _, clip_why = find_clip_model(settings, None)
    head, _, _, head_why = find_scorer_entry(settings)
    return {"clip": {"model": clip, "missing": clip_why}, "aesthetic": {"model": head, "missing": head_why}}


@memory.command("analyze")
@click.option("--project", default=None, help="Only this project.")
@click.option("--k", "k", default="auto", show_default=True, help="Motifs per clustering, or 'auto' (best silhouette).")
@click.option("--no-images", is_flag=True, help="Cluster by prompt only, even when CLIP is here.")
@click.option("--export-styles", is_flag=True, help="Write the strongest motifs to styles.toml as named styles.")
@click.option("--json", "as_json", is_flag=True, help="Print the analysis as JSON.")
@click.pass_context
def analyze(ctx: click.Context, project: str | None, k: str, no_images: bool, export_styles: bool, as_json: bool) -> None:
    """Recurring motifs: artifacts clustered by prompt (MiniLM) and by image (CLIP, when present).

    Per motif: recurring phrases, typical settings, best-rated and best-scored members, change over time.

    \b
      echo-os memory analyze --project "Harbour Watch"
      echo-os memory analyze --k 4 --export-styles
    """
    from echo_os.resonance.analyze import analyze_memory, save_analysis
    from echo_os.resonance.analyze import export_styles as write_styles

    if k == "auto":
        chosen = None
    else:
        try:
            chosen = int(k)
        except ValueError:
            raise UsageError(f"--k must be a whole number or 'auto', got {k!r}.") from None
        if chosen < 1:
            raise UsageError(f"--k must be 1 or more, got {chosen}.")
    settings = settings_from(ctx)
    result = analyze_memory(settings, project=project, k=chosen, images=not no_images)
    save_analysis(settings, result)  # the gallery's motifs section shows the latest analysis
    written: list[str] = []
    skipped: dict[str, str] = {}
    if export_styles:
        export = write_styles(settings, result.clusterings[0].motifs)
        written, skipped = export.written, export.skipped
        if export.kept:
            click.echo(f"styles.toml already has {', '.join(export.kept)}: left as they are", err=True)
        for name, why in export.skipped.items():
            click.echo(f"not a style: {name}: {why}", err=True)
    if as_json:
        data = result.as_dict()
        data["exported_styles"] = written
        if export_styles:
            data["skipped_styles"] = skipped
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
        return
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(f"{result.artifacts} artifacts" + (f" in {project}" if project else ""))
    for clustering in result.clusterings:
        how = "auto" if clustering.k_auto else "given"
        click.echo(f"\nby {clustering.by} ({clustering.embedder}): {clustering.k} motifs (k {how}, "
                   f"silhouette {clustering.silhouette})")
        for motif in clustering.motifs:
            click.echo(f"  motif {motif.motif}: {motif.name}  ({motif.size} artifacts, cohesion {motif.cohesion:.3f})")
            click.echo(f"    phrases:  {'; '.join(f'{p} ({n})' for p, n in motif.phrases)}")
            settings_text = ", ".join(f"{key} {v['value']} ({100 * v['share']:.0f}%)" for key, v in motif.settings.items())
            click.echo(f"    settings: {settings_text}")
            if motif.best_rated:
                rated = ", ".join(f"{m['id'][:12]} ({m['rating']})" for m in motif.best_rated)
                click.echo(f"    best rated:  {rated}")
            if motif.best_scored:
                scored = ", ".join(f"{m['id'][:12]} ({m['objective']:.3f})" for m in motif.best_scored)
                click.echo(f"    best scored: {scored}")
            click.echo("    over time: " + " -> ".join(f"{p.start[:16].replace('T', ' ')}: {', '.join(p.phrases) or '-'}"
                                                    for p in motif.over_time))
    if written:
        click.echo(f"\nstyles.toml: wrote {', '.join(written)}")


@memory.command("reindex")
@click.pass_context
def reindex(ctx: click.Context) -> None:
    """Rebuild every index from the catalog (re-embeds everything)."""
    from echo_os.artifacts.store import ArtifactStore

    settings = settings_from(ctx)
    store = ArtifactStore(settings)
    try:
        if store.catalog.count() == 0 and (found := store.reindex()):
            click.echo(f"catalog was empty: rebuilt it from the folders ({found} artifacts)", err=True)
    finally:
        store.close()
    with _open(ctx, rebuild=True) as mem:
        counts = ", ".join(f"{s.embedder} {s.count}" for s in mem.memory.stats())
    click.echo(f"memory rebuilt: {counts} vectors")


@memory.command("import")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--project", default="imported", show_default=True, help="Project the imported images belong to.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def import_images(ctx: click.Context, folder: str, project: str, as_json: bool) -> None:
    """Index the PNGs under FOLDER made by other tools (A1111, ComfyUI, InvokeAI metadata is read).

    Each image becomes an artifact (byte-for-byte copy, so its id is the file's sha256, and a meta.json
    with what its chunks say). Images imported before are skipped.
    """
    from echo_os.cli.progress import StageBars
    from echo_os.memory.importer import import_folder

    root = Path(folder)
    if not root.is_dir():
        raise UsageError(f"no folder at {root}; give a folder holding PNG images.")
    settings = settings_from(ctx)
    with StageBars(unit="image", labels={"copy": "importing", "minilm": "embedding prompts", "clip": "embedding images"}) as bars:
        report = import_folder(settings, root, project=project, progress=bars)
    if as_json:
        click.echo(json_for_terminal(report.as_dict()))
        return
    for path, reason in report.problems:
        click.echo(f"skipped {for_terminal(path)}: {for_terminal(reason)}", err=True)
    tools = ", ".join(f"{tool} {n}" for tool, n in sorted(report.by_tool.items())) or "none"
    click.echo(f"imported {report.imported} images ({tools}); {report.skipped} already imported, "
               f"{report.unreadable} unreadable")


@memory.command("learn-from")
@click.argument("artifact_ids", nargs=-1, required=True)
@click.option("--name", default=None, help="The style's name (default: learned-<first id>).")
@click.option("--ip-adapter", "adapter", default=None,
              help="The IP-Adapter for the reference image (default: the first ip-adapter entry here).")
@click.option("--scale", type=float, default=0.5, show_default=True, help="The reference image's IP-Adapter scale.")
@click.option("--no-reference", is_flag=True, help="Learn the words and palette only, not the image.")
@click.option("--replace", is_flag=True, help="Overwrite a workspace style of the same name.")
@click.option("--json", "as_json", is_flag=True, help="Print the learned style as JSON.")
@click.pass_context
def learn_from(ctx: click.Context, artifact_ids: tuple[str, ...], name: str | None = None, adapter: str | None = None,
               scale: float = 0.5, no_reference: bool = False, replace: bool = False, as_json: bool = False) -> None:
    """Learn a named style from ARTIFACT_ID... : the style phrases of the prompt (light, palette, lens, medium,
    mood; not the subject), the palette of the pixels, the negative and, with an IP-Adapter here, the image
    as a reference. Saved in styles.toml; render with --style NAME.

    \b
      echo-os memory learn-from 3f2a9c1b7d4e --name harbour-dusk
    """
    from echo_os.artifacts.store import ArtifactStore
    from echo_os.reflect.learn import learn_style

    settings = settings_from(ctx)
    store = ArtifactStore(settings)
    try:
        learned = learn_style(settings, store, list(artifact_ids), name=name, adapter=adapter, scale=scale,
                              reference=not no_reference, replace=replace)
    finally:
        store.close()
    style = learned.style
    if as_json:
        click.echo(json.dumps({**style.as_dict(), "phrases": list(learned.phrases), "excluded": list(learned.excluded),
                               "note": learned.note}, indent=2, ensure_ascii=False))
        return
    click.echo(f"style {style.name!r} saved in {settings.styles_toml}")
    click.echo(f"prompt:   {style.prompt}")
    click.echo(f"negative: {style.negative or '-'}")
    click.echo(f"left out (subject): {'; '.join(learned.excluded) or '-'}")
    if style.reference is not None:
        click.echo(f"reference: {style.reference.path} through {style.reference.adapter}, scale {style.reference.scale:g}")
    elif learned.note:
        click.echo(f"note: {learned.note}", err=True)
