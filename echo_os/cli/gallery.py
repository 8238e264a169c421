"""`echo-os gallery`: write the static HTML gallery of the workspace and print where it is."""

from __future__ import annotations

import click

from echo_os.cli import settings_from


@click.command()
@click.option("--project", default=None,
              help="Only this project, written beside the full page as gallery/project-<slug>.html.")
@click.option("--open", "open_page", is_flag=True, help="Open the page in the default web browser.")
@click.option("--filter", "which", type=click.Choice(["all", "best"]), default="all", show_default=True,
              help="best: rated images first, then by the --best-of objective (most recent until images have "
                   "scores or ratings; it says so), on a page of its own (gallery/index-best.html).")
@click.option("--limit", type=click.IntRange(1), default=24, show_default=True, help="How many images --filter best keeps.")
@click.pass_context
def gallery(ctx: click.Context, project: str | None, open_page: bool, which: str, limit: int) -> None:
    """Write artifacts/gallery/index.html: thumbnails, filters, storyboards, full image and metadata on click."""
    from echo_os.cli.progress import StageBars
    from echo_os.gallery.build import build_gallery

    with StageBars(unit="image") as bars:
        result = build_gallery(settings_from(ctx), project=project, progress=bars,
                               best=limit if which == "best" else None)
    if result.note:
        click.echo(f"note: {result.note}", err=True)
    click.echo(str(result.page))
    click.echo(f"{result.artifacts} artifacts, {result.thumbnails_made} new thumbnails", err=True)
    if open_page:
        import webbrowser

        if not webbrowser.open(result.page.as_uri()):
            click.echo(f"--open: no web browser found here; open {result.page} in one yourself.", err=True)
