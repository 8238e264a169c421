"""`echo-os styles`: list, show, add, rm and import the named styles of the workspace (styles.toml)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from echo_os.cli import settings_from


@click.group()
def styles() -> None:
    """Named styles for --style NAME: the built-ins and the workspace's styles.toml."""


@styles.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def list_styles(ctx: click.Context, as_json: bool) -> None:
    """Every style by name (built-ins marked)."""
    from echo_os.render.styles import all_styles

    found = sorted(all_styles(settings_from(ctx)).values(), key=lambda s: s.name.casefold())
    if as_json:
        click.echo(json.dumps([s.as_dict() for s in found], indent=2, ensure_ascii=False))
        return
    for style in found:
        prompt = style.prompt if len(style.prompt) <= 70 else style.prompt[:69] + "…"
        click.echo(f"{style.name:<20} {'built-in ' if style.builtin else 'workspace'}  {prompt}")


@styles.command("show")
@click.argument("name")
@click.pass_context
def show_style(ctx: click.Context, name: str) -> None:
    """A style's prompt and negative, and what it makes of an example prompt."""
    from echo_os.render.styles import get_style

    style = get_style(settings_from(ctx), name, option="NAME")
    click.echo(json.dumps({**style.as_dict(), "source": style_source(style),
                           "example": style.apply("a lighthouse at dusk", None)[0]}, indent=2, ensure_ascii=False))


def style_source(style) -> str:
    """Where a style came from, in words: built in, written in styles.toml, or learned from artifacts."""
    if style.builtin:
        return "built in"
    if style.learned is not None:
        ids = ", ".join(source[:12] for source in style.learned.sources)
        reference = (f"; reference image {style.reference.path} ({style.reference.adapter}, scale {style.reference.scale:g})"
                     if style.reference is not None else "")
        return f"learned from {ids} on {style.learned.created or 'an unknown date'} by `echo-os memory learn-from`{reference}"
    return "styles.toml"


@styles.command("add")
@click.argument("name")
@click.option("--prompt", "prompt", required=True,
              help="The style's text; {prompt} marks where the prompt goes (else it is appended after ', ').")
@click.option("--negative", default="", help="Appended to the negative prompt.")
@click.option("--replace", is_flag=True, help="Overwrite a workspace style of the same name.")
@click.pass_context
def add_style(ctx: click.Context, name: str, prompt: str, negative: str, replace: bool) -> None:
    """Add a style to styles.toml (names are unique ignoring case)."""
    from echo_os.errors import OptionError
    from echo_os.render.styles import (
        Style,
        check_name,
        check_style_text,
        read_workspace_styles,
        write_workspace_styles,
    )

    settings = settings_from(ctx)
    name = check_name(name, option="NAME")
    check_style_text(prompt, "--prompt")
    check_style_text(negative, "--negative")
    if not prompt.strip() and not negative.strip():
        raise OptionError("--prompt is empty; give the style's words (with {prompt} where the prompt goes)", "prompt")
    current = read_workspace_styles(settings)
    if name.casefold() in current and not replace:
        raise OptionError(f"style {current[name.casefold()].name!r} is already in styles.toml; "
                          "--replace overwrites it", "NAME")
    current[name.casefold()] = Style(name, prompt.strip(), negative.strip())
    write_workspace_styles(settings, current)
    click.echo(f"style {name!r} saved in {settings.styles_toml}")


@styles.command("rm")
@click.argument("name")
@click.pass_context
def remove_style(ctx: click.Context, name: str) -> None:
    """Remove a style from styles.toml (built-ins cannot be removed)."""
    from echo_os.errors import OptionError
    from echo_os.render.styles import builtin_styles, read_workspace_styles, write_workspace_styles

    settings = settings_from(ctx)
    current = read_workspace_styles(settings)
    removed = current.pop(name.strip().casefold(), None)
    if removed is None:
        where = "a built-in style and cannot be removed" if name.casefold() in builtin_styles() else "not in styles.toml"
        raise OptionError(f"style {name!r} is {where} (see `echo-os styles list`)", "NAME")
    write_workspace_styles(settings, current)
    click.echo(f"style {removed.name!r} removed")


@styles.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--replace", is_flag=True, help="Overwrite workspace styles of the same name.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def import_file(ctx: click.Context, file: Path, replace: bool, as_json: bool) -> None:
    """Import an A1111 styles.csv or a Fooocus style JSON; reports what was skipped and why."""
    from echo_os.render.styles import import_styles

    report = import_styles(settings_from(ctx), file, replace=replace)
    if as_json:
        click.echo(json.dumps({"added": report.added, "replaced": report.replaced, "skipped": report.skipped},
                              indent=2, ensure_ascii=False))
        return
    click.echo(f"imported {len(report.added) + len(report.replaced)} style(s) from {file.name}"
               f" ({len(report.added)} new, {len(report.replaced)} replaced), skipped {len(report.skipped)}")
    for line in report.skipped:
        click.echo(f"  skipped {line}", err=True)


@click.group("style")
def style_group() -> None:
    """The design's spelling of `styles`: `echo-os style create NAME DESCRIPTION`."""


@style_group.command("create")
@click.argument("name")
@click.argument("description")
@click.option("--negative", default="", help="Appended to the negative prompt.")
@click.option("--replace", is_flag=True, help="Overwrite a workspace style of the same name.")
@click.pass_context
def create_style(ctx: click.Context, name: str, description: str, negative: str, replace: bool) -> None:
    """Add a style: the same as `echo-os styles add NAME --prompt DESCRIPTION`."""
    ctx.invoke(add_style, name=name, prompt=description, negative=negative, replace=replace)


styles.add_command(create_style, "create")
