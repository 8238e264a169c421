"""Render presets: named render recipes as data (steps, cfg, scheduler, size, engine, engine options).

They come through the same plugin registry as engines (the register_presets hook). This module is the
built-in plugin that registers the TOML files shipped in the package (echo_os/pipelines/presets/, read
with importlib.resources, so a wheel has them too); a workspace's own `pipelines/presets/*.toml` are read
on top (presets()) and win by name.
A preset fills in what the user did not give: an explicit --steps beats the preset's steps.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from echo_os.engines.hookspecs import hookimpl
from echo_os.errors import OptionError, UsageError
from echo_os.package_data import pipelines_folder
from echo_os.render.requests import MAX_STEPS, OptionValue, Scheduler, parse_size

if TYPE_CHECKING:
    from echo_os.settings import Settings

PRESETS_DIR = Path("pipelines") / "presets"


class Preset(BaseModel):
    """One preset file. Every field but the name is optional: a preset sets only what it names."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    description: str = ""
    engine: str | None = None
    model: str | None = None  # a models.toml name; its own render defaults fill what the preset leaves
    steps: int | None = Field(default=None, ge=1, le=MAX_STEPS)
    cfg: float | None = Field(default=None, ge=0.0, le=100.0, allow_inf_nan=False)
    scheduler: Scheduler | None = None
    size: str | None = None
    options: dict[str, OptionValue] = Field(default_factory=dict)
    path: str | None = None  # the file it came from, for messages

    def fields(self) -> dict[str, Any]:
        """RenderRequest fields this preset sets (size as width/height)."""
        out: dict[str, Any] = {key: getattr(self, key) for key in ("engine", "model", "steps", "cfg", "scheduler")
                               if getattr(self, key) is not None}
        if self.size is not None:
            out["width"], out["height"] = parse_size(self.size)
        if self.options:
            out["options"] = dict(self.options)
        return out


def read_preset(path: Path) -> Preset:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        preset = Preset(name=path.stem, path=str(path), **data)
        if preset.size is not None:
            parse_size(preset.size)
        return preset
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise UsageError(f"preset {path} cannot be read ({error}).") from None
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        raise UsageError(f"preset {path}: {where}: {first.get('msg')}.") from None
    except UsageError as error:
        raise UsageError(f"preset {path}: {error}") from None


def read_preset_folder(folder: Path) -> list[Preset]:
    return [read_preset(path) for path in sorted(folder.glob("*.toml"))] if folder.is_dir() else []


@hookimpl
def register_presets(register: Callable[[Preset], object]) -> None:
    for preset in read_preset_folder(pipelines_folder("presets")):
        register(preset)


@functools.cache
def preset_table() -> dict[str, Preset]:
    """name -> preset from every plugin's register_presets hook (first registration of a name wins)."""
    from echo_os.engines.plugins import plugin_manager

    table: dict[str, Preset] = {}
    for impl in plugin_manager().hook.register_presets.get_hookimpls():  # registration order, as engine_table
        impl.function(register=lambda preset: table.setdefault(preset.name, preset))
    return table


def presets(settings: "Settings") -> dict[str, Preset]:
    """The registered presets with the workspace's pipelines/presets/*.toml on top."""
    table = dict(preset_table())
    table.update({preset.name: preset for preset in read_preset_folder(settings.home / PRESETS_DIR)})
    return table


def get_preset(settings: "Settings", name: str) -> Preset:
    table = presets(settings)
    if name not in table:
        raise OptionError(f"unknown preset {name!r}; choose one of: {', '.join(sorted(table)) or 'none'}", "preset")
    return table[name]
