"""`echo-os commit | log | diff | checkout`: the version history of a project (echo_os/reflect/versions.py)."""

from __future__ import annotations

import json

import click

from echo_os.cli import settings_from


def _store(ctx: click.Context):
    from echo_os.artifacts.store import ArtifactStore

    return ArtifactStore(settings_from(ctx))


@click.command()
@click.argument("project")
@click.argument("message")
@click.option("--minutes", type=float, default=None, help="How long this version took (recorded, shown by `log`).")
@click.option("--json", "as_json", is_flag=True, help="Print the version as JSON.")
@click.pass_context
def commit(ctx: click.Context, project: str, message: str, minutes: float | None, as_json: bool) -> None:
    """Record PROJECT's current selection (scene -> kept image, bible, storyboard, styles, plan, scores)
    as an immutable version.

    \b
      echo-os commit "Lighthouse Keeper" "storm scenes darker" --minutes 120
    """
    from echo_os.reflect.versions import changed_scenes, list_versions
    from echo_os.reflect.versions import commit as commit_version

    settings = settings_from(ctx)
    store = _store(ctx)
    try:
        version = commit_version(settings, store, project, message, minutes)
        earlier = [v for v in list_versions(settings, store, project) if v.number < version.number]
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(version.as_dict(), ensure_ascii=False, indent=2))
        return
    changed = changed_scenes(earlier[-1].selection, version.selection) if earlier else sorted(version.selection)
    click.echo(f"v{version.number}  {version.project}: {version.message}  "
               f"({len(version.selection)} scenes, {len(changed)} changed{_minutes(version.minutes)})")


def _minutes(minutes: float | None) -> str:
    return "" if minutes is None else f", {minutes:g} min"


@click.command()
@click.argument("project")
@click.option("--json", "as_json", is_flag=True, help="Print the versions as JSON.")
@click.pass_context
def log(ctx: click.Context, project: str, as_json: bool) -> None:
    """List PROJECT's versions, newest first: number, time, minutes, message, scenes changed."""
    from echo_os.errors import NotFoundError
    from echo_os.reflect.versions import changed_scenes, list_versions

    settings = settings_from(ctx)
    store = _store(ctx)
    try:
        versions = list_versions(settings, store, project)
    finally:
        store.close()
    if not versions:
        raise NotFoundError(f"project {project!r} has no versions yet; record one with "
                            f"`echo-os commit {project!r} MESSAGE`.")
    rows = []
    for index, version in enumerate(versions):
        before = versions[index - 1].selection if index else {}
        rows.append((version, changed_scenes(before, version.selection)))
    if as_json:
        click.echo(json.dumps([{**{k: v for k, v in version.as_dict().items() if k != "story"},
                                "changed_scenes": changed} for version, changed in reversed(rows)],
                              ensure_ascii=False, indent=2))
        return
    for version, changed in reversed(rows):
        scenes = ", ".join(str(s) for s in changed) or "none"
        click.echo(f"v{version.number}  {version.created}{_minutes(version.minutes).replace(', ', '  ')}  "
                   f"{version.message}  (scenes changed: {scenes})")


@click.command()
@click.argument("project")
@click.argument("a")
@click.argument("b")
@click.option("--no-sheet", is_flag=True, help="Do not write the side-by-side sheet.")
@click.option("--json", "as_json", is_flag=True, help="Print the difference as JSON.")
@click.pass_context
def diff(ctx: click.Context, project: str, a: str, b: str, no_sheet: bool, as_json: bool) -> None:
    """Which scenes differ between versions A and B of PROJECT, and a side-by-side sheet of them."""
    from echo_os.reflect.versions import diff as diff_versions
    from echo_os.reflect.versions import parse_version

    number_a, number_b = parse_version(a), parse_version(b)
    settings = settings_from(ctx)
    store = _store(ctx)
    try:
        result = diff_versions(settings, store, project, number_a, number_b, sheet=not no_sheet)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(result.as_dict(), ensure_ascii=False, indent=2))
        return
    for change in result.changed:
        click.echo(f"{change.scene:03d} {change.slug}  {(change.before or '-')[:12]} -> {(change.after or '-')[:12]}")
    click.echo(f"{len(result.changed)} scene{'s' if len(result.changed) != 1 else ''} changed, "
               f"{len(result.same)} the same")
    for key, (before, after) in result.hashes.items():
        click.echo(f"{key} changed: {(before or '-')[:12]} -> {(after or '-')[:12]}")
    if result.sheet:
        click.echo(f"sheet: {result.sheet}")


@click.command()
@click.argument("project")
@click.argument("version")
@click.option("--force", is_flag=True, help="Check out even when the current selection is in no version.")
@click.pass_context
def checkout(ctx: click.Context, project: str, version: str, force: bool) -> None:
    """Make VERSION of PROJECT the current selection again (story.json, contact sheet, animatic input).
    No artifact is deleted."""
    from echo_os.reflect.versions import checkout as checkout_version
    from echo_os.reflect.versions import parse_version

    number = parse_version(version)
    settings = settings_from(ctx)
    store = _store(ctx)
    try:
        done = checkout_version(settings, store, project, number, force=force)
    finally:
        store.close()
    click.echo(f"v{done.version.number} ({done.version.message}) is the current selection")
    click.echo(f"story: {done.story_json}")
    if done.contact_sheet:
        click.echo(f"contact sheet: {done.contact_sheet}")
