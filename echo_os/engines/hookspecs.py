"""The plugin hooks (pluggy). Built-in engines and third-party packages implement the same ones.

A package registers engines by exposing a module in the `echo_os.engines` entry-point group:

    # pyproject.toml of the plugin
    [project.entry-points."echo_os.engines"]
    mine = "echo_os_mine"

    # echo_os_mine.py
    from echo_os.engines.hookspecs import hookimpl

    @hookimpl
    def register_engines(register):
        register(MyEngine)          # a class with name, capabilities, Options, availability, create

See docs/engines.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("echo_os")
hookimpl = pluggy.HookimplMarker("echo_os")


@hookspec
def register_engines(register: Callable[[type[Any]], object]) -> None:
    """Call register(engine_class) once per engine this plugin provides."""


@hookspec
def register_presets(register: Callable[[Any], object]) -> None:
    """Call register(preset) once per render preset (echo_os.engines.presets.Preset) this plugin provides."""


@hookspec
def register_scorers(register: Callable[[Any], object]) -> None:
    """Call register(scorer) once per image scorer (echo_os.resonance.scorers.ScorerPlugin) this plugin
    provides: `echo-os evolve --scorer NAME` ranks its candidates with it."""
