"""The plugin manager: built-in plugin modules loaded by name, third-party ones through entry points.

Built-ins are imported by module name (as llm's DEFAULT_PLUGINS are) rather than through echo-os's own
entry-point metadata, so they are there whatever install of echo-os is on the path. Both kinds then go
through the same hooks (echo_os/engines/hookspecs.py). ECHO_OS_NO_PLUGINS=1 skips the third-party ones.
"""

from __future__ import annotations

import functools
import importlib
import os

import pluggy

from echo_os.engines import hookspecs

ENTRY_POINT_GROUP = "echo_os.engines"
DEFAULT_PLUGINS = (
    "echo_os.engines.sdxl",
    "echo_os.engines.draft",
    "echo_os.engines.video",
    "echo_os.engines.shap_e",
    "echo_os.engines.audio",
    "echo_os.engines.draft_assets",
    "echo_os.engines.openai_images",
    "echo_os.engines.comfyui",
    "echo_os.engines.presets",
)


@functools.cache
def plugin_manager() -> pluggy.PluginManager:
    """Built once per process; echo_os.engines.reset_plugins() forgets it (tests that add a plugin)."""
    pm = pluggy.PluginManager("echo_os")
    pm.add_hookspecs(hookspecs)
    for name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(name), name=name)
    if os.environ.get("ECHO_OS_NO_PLUGINS", "") in ("", "0"):
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    return pm
