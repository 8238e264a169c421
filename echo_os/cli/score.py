"""`echo-os score` (CLIP alignment, consistency and aesthetic scores) and `echo-os rate` (the user's 1..5)."""

from __future__ import annotations

import json

import click

from echo_os.cli import settings_from
from echo_os.errors import EchoError, UsageError


def _figure(value, scale: str = "{:.3f}") -> str:
    return "-" if value is None else scale.format(value)


@click.command()
@click.argument("artifact_ids", nargs=-1)
@click.option("--project", default=None, help="Score this project's artifacts.")
@click.option("--rescore", is_flag=True, help="Score again what already has scores.")
@click.option("--clip", default=None, help="CLIP model (models.toml); default: the first clip entry on this machine.")
@click.option("--json", "as_json", is_flag=True, help="Print the scores as JSON.")
@click.pass_context
def score(ctx: click.Context, artifact_ids: tuple[str, ...], project: str | None, rescore: bool, clip: str | None,
          as_json: bool) -> None:
    """Score artifacts that have no scores yet: ARTIFACT_ID..., a --project, or (neither) every artifact.

    Prompt alignment (CLIP score), character and style consistency against the project's other scenes,
    and an aesthetic score when models.toml has a `type = "scorer"` entry. Says which scorers are missing.

    \b
      echo-os score --project "Harbour Watch"
      echo-os score 3f2a9c1b7d4e
    """
    from echo_os.artifacts.catalog import Catalog
    from echo_os.cli.progress import StageBars
    from echo_os.resonance.scorers import load_scorers
    from echo_os.resonance.scores import score_rows

    if artifact_ids and project:
        raise UsageError("give artifact ids or --project, not both.")
    settings = settings_from(ctx)
    with Catalog(settings.catalog_path) as catalog:
        if artifact_ids:
            from echo_os.artifacts.meta import IMAGE_KINDS, require_kind

            rows = list({row.id: row for row in (catalog.resolve_id(i) for i in artifact_ids)}.values())
            for row in rows:
                require_kind(row.id, row.meta, IMAGE_KINDS, "score")
        else:
            rows = catalog.query(project=project, newest_first=False)
            if project and not rows:
                raise UsageError(f"no artifacts in project {project!r} (see `echo-os artifacts list`).")
        targets = [row for row in rows if rescore or artifact_ids or "scores" not in row.meta]
        scorers = load_scorers(settings, clip)
        for line in scorers.describe():
            click.echo(f"scorer {line}", err=True)
        if not scorers.available:
            raise EchoError(f"nothing scored: no CLIP model ({scorers.missing['clip']}).")
        with StageBars(unit="project", labels={"score": "scoring"}) as bars:
            written = score_rows(settings, catalog, scorers, targets,
                                 progress=lambda done, total: bars("score", done, total))
    if as_json:
        click.echo(json.dumps({"scored": written, "missing": scorers.missing}, indent=2, ensure_ascii=False))
        return
    skipped = len(rows) - len(written)
    for artifact_id, data in written.items():
        click.echo(f"{artifact_id[:12]}  alignment {_figure(data['alignment'], '{:.1f}')}  "
                   f"consistency {_figure(data['character_consistency'])}  style {_figure(data['style'])}  "
                   f"aesthetic {_figure(data['aesthetic'], '{:.2f}')}")
    click.echo(f"{len(written)} scored, {skipped} skipped (already scored, draft cards, grid sheets or videos)")


@click.command()
@click.argument("artifact_id")
@click.argument("value", type=click.IntRange(1, 5))
@click.option("--note", default=None, help="Why: kept with the rating in meta.json.")
@click.pass_context
def rate(ctx: click.Context, artifact_id: str, value: int, note: str | None) -> None:
    """Rate ARTIFACT_ID from 1 to 5. Ratings count in `batch --best-of` and `memory analyze`.

    \b
      echo-os rate 3f2a9c1b7d4e 5 --note "the lamp light is right"
    """
    from echo_os.artifacts.catalog import Catalog
    from echo_os.resonance.persist import save_rating

    settings = settings_from(ctx)
    with Catalog(settings.catalog_path) as catalog:
        rating = save_rating(catalog, settings.artifacts_dir, artifact_id, value, note)
    click.echo(f"{rating['id'][:12]} rated {value}" + (f" ({note})" if note else ""))
