"""The files echo-os ships inside its package (the wheel is the product): render presets and ComfyUI
templates (echo_os/pipelines/), the default model registry (echo_os/models/default_models.toml) and the
studio's static web assets (echo_os/studio/static/).

They are found with importlib.resources, so a wheel, `pip install .`, pipx and an editable install all
read the same files; a workspace's own `pipelines/` folder is read on top of them by the modules that use
them (presets, the ComfyUI engine) and wins by name. pyproject.toml's [tool.setuptools.package-data] lists
these folders; the wheel smoke test in .ci/run checks they arrive.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from echo_os.errors import EchoError


def package_folder(*parts: str) -> Path:
    """The folder `parts` inside the installed echo_os package, as a filesystem path.

    pip and setuptools always install a wheel unpacked, so the resource root is a real folder; a zipped
    install (zipimport) is refused with a clear message instead of failing later on a missing file.
    """
    root = files("echo_os")
    if not isinstance(root, Path):
        raise EchoError(f"echo-os is installed as a zip ({root}); install it unpacked with pip.")
    return root.joinpath(*parts)


def pipelines_folder(kind: str) -> Path:
    """echo_os/pipelines/<kind> ("presets" or "comfyui"): the built-in render recipes."""
    return package_folder("pipelines", kind)


def studio_static_folder() -> Path:
    """echo_os/studio/static: the browser studio's HTML, CSS and scripts (served as they are, no CDN)."""
    return package_folder("studio", "static")
