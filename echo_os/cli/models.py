"""`echo-os models`: list, add, verify and pull the models named in models.toml."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from echo_os.cli import settings_from
from echo_os.errors import EchoError, ModelError, UsageError
from echo_os.models.registry import (
    HF_ID_RE,
    MODEL_TYPES,
    NAME_RE,
    ModelEntry,
    load_registry,
    parse_models_document,
    write_model_entry,
)
from echo_os.models.resolve import ResolveError, check_loadable, resolve_model, sdxl_config_source
from echo_os.models.weights import format_bytes


@click.group()
def models() -> None:
    """Named models and where their weights are (models.toml)."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per model, as a list.")
@click.pass_context
def list_models(ctx: click.Context, as_json: bool) -> None:
    """Every model in the registry and whether its weights are on this machine."""
    settings = settings_from(ctx)
    registry = load_registry(settings)
    rows: list[dict[str, Any]] = []  # one JSON record per entry
    for entry in registry.entries():
        row: dict[str, Any] = {
            "name": entry.name, "type": entry.type, "kind": entry.kind, "source": entry.source,
            "origin": str(entry.origin), "description": entry.description, "resolves": False, "reason": None,
            "local_path": None, "format": None, "size_bytes": None}
        try:
            resolved = resolve_model(entry, registry=registry)
        except EchoError as error:
            row["reason"] = getattr(error, "reason", None) or str(error)
            row["error"] = str(error)
        else:
            row.update(resolves=True, local_path=str(resolved.local_path), format=resolved.format,
                       size_bytes=resolved.weights_size)
        rows.append(row)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = [("NAME", "TYPE", "KIND", "SOURCE", "HERE", "SIZE")]
    for row in rows:
        here = "yes" if row["resolves"] else f"no: {row['reason']}"
        table.append((row["name"], row["type"], row["kind"], _shorten(row["source"]), here,
                      format_bytes(row["size_bytes"])))
    widths = [max(len(line[column]) for line in table) for column in range(len(table[0]) - 1)]
    for line in table:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths)) + "  " + line[-1])
    click.echo(f"\nfrom: {', '.join(str(path) for path in registry.sources)}")


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else "..." + text[-(limit - 3):]


@models.command("add")
@click.argument("name")
@click.option("--path", "folder", help="A diffusers (or transformers) model folder.")
@click.option("--file", "checkpoint", help="A single-file checkpoint (.safetensors), as ComfyUI and A1111 use.")
@click.option("--hf", "repo_id", help="A Hugging Face repo id, resolved from the local cache (see `models pull`).")
@click.option("--type", "model_type", type=click.Choice(MODEL_TYPES), default="sdxl", show_default=True,
              help="What the model is for: an SDXL checkpoint, a LoRA, an IP-Adapter, CLIP, video, ...")
@click.option("--config", help="For --file: a local diffusers folder or an HF repo id giving configs and tokenizers.")
@click.option("--variant", help="Weights variant to load, like fp16.")
@click.option("--revision", help="For --hf: branch, tag or commit.")
@click.option("--subfolder", help="Folder inside the model holding the weights.")
@click.option("--weight-name", help="One weights file inside the model (ip-adapter, or a checkpoint in an HF repo).")
@click.option("--image-encoder", help="For ip-adapter: a clip entry's name or a folder.")
@click.option("--description", help="A note shown by `models list --json`.")
@click.option("--allow-pickle", is_flag=True, help="Accept pickle weights (.ckpt/.bin), which can run code when loaded.")
@click.option("--force", is_flag=True, help="Replace an entry of the same name in this workspace's models.toml.")
@click.pass_context
def add_model(ctx: click.Context, name: str, folder: str | None, checkpoint: str | None, repo_id: str | None,
              model_type: str, config: str | None, variant: str | None, revision: str | None,
              subfolder: str | None, weight_name: str | None, image_encoder: str | None,
              description: str | None, allow_pickle: bool, force: bool) -> None:
    """Add a model to this workspace's models.toml (checked before it is written)."""
    settings = settings_from(ctx)
    given = [(key, value) for key, value in (("path", folder), ("file", checkpoint), ("hf", repo_id)) if value]
    if len(given) != 1:
        raise UsageError("give exactly one of --path DIR, --file FILE or --hf REPO_ID.")
    if not NAME_RE.match(name):
        raise UsageError(f"model name '{name}': use letters, digits, '.', '_' or '-' (at most 64, starting with a "
                         "letter or digit).")
    kind, value = given[0]
    if kind == "hf" and not HF_ID_RE.match(value):
        raise UsageError(f"--hf '{value}' is not a Hugging Face repo id (like org/name).")
    fields: dict[str, str | bool] = {}
    if model_type != "sdxl":
        fields["type"] = model_type
    fields[kind] = _stored_path(value, settings.home) if kind != "hf" else value
    for key, option in (("variant", variant), ("revision", revision), ("config", config), ("subfolder", subfolder),
                        ("weight_name", weight_name), ("image_encoder", image_encoder),
                        ("description", description)):
        if option:
            local = (key == "config" and _is_local(option)) or (key == "image_encoder" and _looks_like_path(option))
            fields[key] = _stored_path(option, settings.home, dot=True) if local else option
    if allow_pickle:
        fields["allow_pickle"] = True

    toml_path = settings.models_toml
    entry = parse_models_document({"models": {name: fields}}, toml_path)[name]
    registry = load_registry(settings)
    workspace_names = {e.name for e in registry.entries() if e.origin == toml_path} if toml_path.exists() else set()
    if name in workspace_names and not force:
        raise UsageError(f"{toml_path} already has a model named '{name}'; use --force to replace it.")
    note = _check_new_entry(entry, registry, allow_pickle)
    write_model_entry(toml_path, name, fields, replace=force)
    verb = "Replaced" if name in workspace_names else "Added"
    overrides = " (overrides the default entry)" if name in registry and name not in workspace_names else ""
    click.echo(f"{verb} '{name}' in {toml_path}{overrides}.")
    if note:
        click.echo(note)


def _is_local(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~")) or Path(value).expanduser().exists()


def _looks_like_path(value: str) -> bool:
    return "/" in value or value.startswith((".", "~"))


def _stored_path(value: str, home: Path, dot: bool = False) -> str:
    """A path typed on the command line, as models.toml should hold it: relative inside the workspace.

    dot: write "./x" so keys that also accept a name or repo id (config, image_encoder) read it as a path.
    """
    absolute = Path(os.path.abspath(Path(value).expanduser()))
    try:
        relative = absolute.relative_to(home).as_posix()
    except ValueError:
        return str(absolute)
    if relative == ".":
        return "."
    return f"./{relative}" if dot else relative


def _check_new_entry(entry: ModelEntry, registry, allow_pickle: bool) -> str | None:
    """Resolve and check local weights before writing; an hf model may still be absent (pull comes later)."""
    try:
        resolved = resolve_model(entry, registry=registry, need_configs=False)
    except ResolveError as error:
        if entry.kind == "hf":
            return f"Not in the local Hugging Face cache yet: run `echo-os models pull {entry.name}`."
        raise UsageError(str(error)) from None
    check_loadable(resolved, allow_pickle=allow_pickle)
    if entry.type == "sdxl" and resolved.format == "single-file" and resolved.config_path is None:
        return (f"Its SDXL pipeline configs ({sdxl_config_source(entry)}) are not in the local Hugging Face cache "
                f"yet: run `echo-os models pull {entry.name}` (configs only, a few MB).")
    return None


@models.command("verify")
@click.argument("name")
@click.option("--allow-pickle", is_flag=True, help="Accept pickle weights for this check.")
@click.option("--json", "as_json", is_flag=True, help="The report as JSON.")
@click.pass_context
def verify(ctx: click.Context, name: str, allow_pickle: bool, as_json: bool) -> None:
    """Check a model's files (safetensors headers, SDXL layout) and print its sha256. Loads nothing."""
    from echo_os.models.verify import verify_model

    settings = settings_from(ctx)
    report = verify_model(settings, name, allow_pickle=allow_pickle, show_progress=not as_json)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        resolved = report.resolved
        click.echo(f"{name}: {resolved.source_ref}")
        click.echo(f"  {resolved.format} at {resolved.local_path}"
                   + (f" (variant {resolved.variant})" if resolved.variant else ""))
        if resolved.config_path:
            click.echo(f"  configs from {resolved.config_path}")
        for file_report in report.files:
            status = "ok " if file_report.problem is None else "BAD"
            tensors = f"{file_report.tensor_count} tensors" if file_report.tensor_count is not None else ""
            click.echo(f"  {status} {file_report.relative}  {file_report.format or '?'}  {tensors}  "
                       f"{format_bytes(file_report.size)}")
        for line in report.layout:
            click.echo(f"  layout: {line}")
        for problem in report.problems:
            click.echo(f"  problem: {problem}")
        if report.sha256:
            click.echo(f"  sha256: {report.sha256}")
        if report.image_encoder_sha256:
            click.echo(f"  image encoder sha256: {report.image_encoder_sha256}")
    if not report.ok:
        more = f" (and {len(report.problems) - 1} more above)" if len(report.problems) > 1 else ""
        raise ModelError(f"model '{name}' failed verification: {report.problems[0]}{more}")
    if not as_json:
        click.echo("OK")


@models.command("import")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace entries of the same names in this workspace's models.toml.")
@click.pass_context
def import_bundle(ctx: click.Context, folder: Path, force: bool) -> None:
    """Add the models of a bundle's models/ FOLDER (`echo-os bundle`) to this workspace's models.toml,
    after checking every file against the sha256 in its manifest (nothing is added if one differs)."""
    from echo_os.bundle import import_models

    names = import_models(settings_from(ctx), folder, force=force)
    click.echo(f"Checked and added {', '.join(names) or 'nothing'} to {settings_from(ctx).models_toml}.")


@models.command("pull")
@click.argument("name")
@click.pass_context
def pull(ctx: click.Context, name: str) -> None:
    """Download an hf model into the Hugging Face cache (the only command that uses the network)."""
    from echo_os.models.pull import pull_model

    resolved = pull_model(settings_from(ctx), name, echo=click.echo)
    click.echo(f"{name}: {resolved.source_ref} ({format_bytes(resolved.weights_size)} of weights) is ready.")
