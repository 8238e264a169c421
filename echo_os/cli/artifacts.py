"""`echo-os artifacts`: list, show and reindex the artifact catalog."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from echo_os.cli import settings_from
from echo_os.cli.terminal import for_terminal, json_for_terminal

if TYPE_CHECKING:
    from echo_os.artifacts.catalog import CatalogRow


@click.group()
def artifacts() -> None:
    """Browse the artifacts of this workspace."""


@artifacts.command("list")
@click.option("--project", default=None, help="Only this project: its name or its folder's slug (fog-tests = Fog Tests).")
@click.option("--model", default=None, help="Only this model name.")
@click.option("--since", default=None, help="Only artifacts created on or after this ISO date (2026-11-01).")
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True,
              help="Most artifacts listed, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print the artifacts as JSON.")
@click.pass_context
def list_artifacts(ctx: click.Context, project: str | None, model: str | None, since: str | None, limit: int,
                   as_json: bool) -> None:
    """Newest artifacts first."""
    from echo_os.artifacts.store import open_catalog

    settings = settings_from(ctx)
    if since:
        from datetime import date

        try:
            date.fromisoformat(since[:10])
        except ValueError:
            raise click.BadParameter(f"{since!r} is not an ISO date like 2026-11-01", param_hint="--since") from None
    from echo_os.cli.feedback import nothing_rendered_here

    if nothing_rendered_here(settings):
        if as_json:
            click.echo("[]")
        return
    with open_catalog(settings) as catalog:
        rows = catalog.query(project=project, model=model, since=since, limit=limit + 1)  # +1: are there more?
    more = len(rows) > limit
    rows = rows[:limit]
    if as_json:
        click.echo(json_for_terminal([row.summary() for row in rows]))
    elif not rows:
        click.echo("no artifacts yet; make one with: echo-os render \"warm fractal\"", err=True)
    else:
        for line in artifact_table(rows):
            click.echo(line)
    if more:
        click.echo(f"the newest {limit} shown; more match: --limit {limit * 4} shows more (--project, --model, "
                   "--since narrow the list)", err=True)


def _scene_text(row) -> tuple[str, str]:
    """(scene column, text column): a story scene shows its number and its description (the prompt is the
    description with the bible's style and character words around it); anything else its prompt."""
    story = row.meta.get("story") or {}
    description = story.get("description") if isinstance(story, dict) else None
    scene = str(row.scene) if row.scene is not None else "-"
    return scene, description or row.prompt


def artifact_table(rows) -> list[str]:
    """A header and one line per artifact; columns as wide as their longest value (projects are not cut)."""
    cells = []
    for row in rows:
        scene, text = _scene_text(row)
        text = text if len(text) <= 60 else text[:59] + "…"
        cells.append([row.id[:12], row.created[:19].replace("T", " "), row.project, row.engine,
                      f"{row.width}x{row.height}", str(row.seed), scene, text])
    header = ["ID", "CREATED", "PROJECT", "ENGINE", "SIZE", "SEED", "SCENE", "PROMPT / DESCRIPTION"]
    widths = [max(len(header[i]), *(len(c[i]) for c in cells)) for i in range(len(header) - 1)]
    return ["  ".join(for_terminal(value.ljust(width) if i < len(widths) else value)
                      for i, (value, width) in enumerate(zip(line, [*widths, 0])))
            for line in [header, *cells]]


@artifacts.command("show")
@click.argument("artifact_id")
@click.pass_context
def show_artifact(ctx: click.Context, artifact_id: str) -> None:
    """Print an artifact's meta.json (id or a unique prefix of 12+ hex characters)."""
    from echo_os.artifacts.store import ArtifactStore

    store = ArtifactStore(settings_from(ctx))
    try:
        artifact = store.open(artifact_id)
    finally:
        store.close()
    meta = artifact.meta.model_dump(mode="json")
    meta["path"] = str(artifact.path)
    click.echo(json_for_terminal(meta))


@artifacts.command("reindex")
@click.pass_context
def reindex(ctx: click.Context) -> None:
    """Rebuild catalog.db from the meta.json files on disk."""
    from echo_os.artifacts.store import ArtifactStore

    store = ArtifactStore(settings_from(ctx))
    restored: list = []
    try:
        count = store.reindex(restored)
    finally:
        store.close()
    for folder in restored:
        click.echo(f"restored {for_terminal(folder)}/meta.json from its image.png", err=True)
    click.echo(f"catalog rebuilt: {count} artifacts" + (f" ({len(restored)} meta.json restored)" if restored else ""))


def _tree_label(row) -> str:
    meta = row.meta
    prompt = row.prompt if len(row.prompt) <= 50 else row.prompt[:49] + "…"
    how = f"strength {meta['strength']:g}, " if meta.get("strength") is not None else ""
    evolve = meta.get("evolve")
    if isinstance(evolve, dict):  # a candidate of `echo-os evolve`: its round and how it varied its parent
        how = f"evolve round {evolve.get('round')} {evolve.get('operator')} ({evolve.get('objective')}), " + how
    return f"{row.id[:12]}  {how}seed {row.seed}  {for_terminal(prompt)}"


@artifacts.command("tree")
@click.argument("artifact_id")
@click.option("--json", "as_json", is_flag=True, help="Print the lineage as JSON.")
@click.pass_context
def tree(ctx: click.Context, artifact_id: str, as_json: bool) -> None:
    """An artifact's lineage: its ancestors (what it was refined from) and its descendants."""
    from echo_os.artifacts.store import open_catalog

    settings = settings_from(ctx)
    with open_catalog(settings) as catalog:
        row = catalog.resolve_id(artifact_id)
        ancestors: list[tuple[str, CatalogRow | None]] = []  # None: the parent is not in this catalog
        seen = {row.id}
        parent_id = row.parent_id
        while parent_id and parent_id not in seen:
            seen.add(parent_id)
            parent = catalog.get(parent_id)
            if parent is None:  # deleted, or from another workspace: named, not followed
                ancestors.append((parent_id, None))
                break
            ancestors.append((parent_id, parent))
            parent_id = parent.parent_id

        def descend(node, depth: int, out: list) -> None:
            for child in catalog.children(node.id):
                if child.id in seen:
                    continue
                seen.add(child.id)
                out.append((depth, child))
                descend(child, depth + 1, out)

        descendants: list = []
        descend(row, 1, descendants)
    if as_json:
        click.echo(json_for_terminal({"id": row.id, "ancestors": [a for a, _ in ancestors],
                                      "descendants": [{"id": c.id, "parent_id": c.parent_id, "depth": d}
                                                      for d, c in descendants]}))
        return
    chain = list(reversed(ancestors))
    for depth, (ancestor_id, ancestor) in enumerate(chain):
        label = _tree_label(ancestor) if ancestor is not None else f"{ancestor_id[:12]}  (not in this workspace)"
        click.echo("  " * depth + label)
    base = len(chain)
    click.echo("  " * base + _tree_label(row) + "   <- this")
    for depth, child in descendants:
        click.echo("  " * (base + depth) + _tree_label(child))
