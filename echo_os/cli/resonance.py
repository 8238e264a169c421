"""`echo-os resonance PROJECT`: the project's scores, consistency, drift, ratings and gains over time
(echo_os/reflect/report.py), as text, --json, and an HTML page with charts."""

from __future__ import annotations

import json

import click

from echo_os.cli import settings_from


@click.command()
@click.argument("project")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--no-html", is_flag=True, help="Do not write the HTML page.")
@click.pass_context
def resonance(ctx: click.Context, project: str, as_json: bool, no_html: bool) -> None:
    """Is PROJECT getting better? Scores per day and per version, style consistency against its target,
    drift flags, ratings, best-of and evolve gains, motifs; the page is artifacts/gallery/resonance-SLUG.html."""
    from echo_os.reflect.report import build_report, write_page

    settings = settings_from(ctx)
    report = build_report(settings, project)
    page = None if no_html else write_page(settings, report)
    if as_json:
        click.echo(json.dumps({**report.as_dict(), "page": str(page) if page else None}, ensure_ascii=False, indent=2))
        return
    for line in report.lines():
        click.echo(line)
    if page is not None:
        click.echo(f"page: {page}")


@click.command()
@click.argument("project")
@click.option("--limit", type=click.IntRange(1, 100), default=10, show_default=True, help="Suggestions at most.")
@click.option("--json", "as_json", is_flag=True, help="Print the suggestions as JSON.")
@click.pass_context
def suggest(ctx: click.Context, project: str, limit: int, as_json: bool) -> None:
    """Next prompts for PROJECT, each with why: what worked (phrases of its best-valued images), what is
    missing (plan items never rendered, characters in few scenes), what was never tried (vocabulary)."""
    from echo_os.reflect.suggest import suggest as make_suggestions

    found = make_suggestions(settings_from(ctx), project, limit=limit)
    if as_json:
        click.echo(json.dumps([s.as_dict() for s in found], ensure_ascii=False, indent=2))
        return
    if not found:
        click.echo("no suggestions: nothing scored or rated, no plan, and every vocabulary entry tried")
    for number, item in enumerate(found, start=1):
        click.echo(f"{number}. [{item.kind}] {item.prompt}")
        click.echo(f"   why: {item.why}")
