"""`echo-os bundle DIR`: everything a machine without network needs to install echo-os and render
(a wheelhouse, the named models with a sha256 manifest, INSTALL.md). See echo_os/bundle.py."""

from __future__ import annotations

import re
from pathlib import Path

import click

from echo_os.cli import settings_from


def installed_torch_build() -> str | None:
    """The build of the torch installed here, from its version's local label ("2.13.0+cpu" -> "cpu");
    None when torch is not installed or its version names no build."""
    from importlib import metadata

    try:
        version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None
    label = version.partition("+")[2]
    return label if re.fullmatch(r"cpu|cu\d+|rocm[\d.]+", label) else None


@click.command("bundle")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--model", "models", multiple=True, metavar="NAME",
              help="A models.toml entry to copy into the bundle (repeat for several).")
@click.option("--torch", "torch_build", default=None, metavar="BUILD",
              help="The PyTorch build for the target: cpu, or a CUDA build like cu128. Default: the build "
                   "installed here, else cpu. `none` leaves torch out.")
@click.option("--torch-index", default=None, metavar="URL",
              help="Where to get that torch build. Default: the PyTorch index of the build "
                   "(https://download.pytorch.org/whl/BUILD); `none`: only pip's configured indexes.")
@click.option("--no-deps", is_flag=True,
              help="Only echo-os's own wheel, for a target that already has the dependencies.")
@click.pass_context
def bundle(ctx: click.Context, folder: Path, models: tuple[str, ...], torch_build: str | None,
           torch_index: str | None, no_deps: bool) -> None:
    """Write FOLDER: wheels/ (echo-os and its pinned dependencies), models/ (each --model with a sha256
    manifest) and INSTALL.md, for installing on a machine without network.

    \b
      echo-os bundle /media/usb/echo-os --model sdxl --model minilm --torch cu128
      # on the target:
      pip install --no-index --find-links /media/usb/echo-os/wheels echo-os
      echo-os models import /media/usb/echo-os/models
    """
    from echo_os.bundle import write_bundle
    from echo_os.errors import UsageError

    build = torch_build or installed_torch_build() or "cpu"
    if build != "none" and not re.fullmatch(r"cpu|cu\d+|rocm[\d.]+", build):
        raise UsageError(f"--torch {build!r}: give cpu, a CUDA build like cu128, a ROCm build like rocm6.3, or none.")
    if folder.exists() and any(folder.iterdir()):
        raise UsageError(f"{folder} is not empty; give a new or empty folder.")
    write_bundle(settings_from(ctx), folder, models=list(models), deps=not no_deps,
                 torch=None if build == "none" else build, torch_index=torch_index)
    click.echo(f"Wrote {folder}: wheels/, models/ ({', '.join(models) or 'none'}), INSTALL.md")
