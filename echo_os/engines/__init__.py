"""Engine registry: one table, name -> factory. `auto` picks in a stated order and says why.

Modules are imported only when an engine is created, so validating a request or running the draft
engine never imports torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from echo_os.engines.base import Engine
    from echo_os.requests import RenderRequest
    from echo_os.settings import Settings

# name -> "module:factory"; every factory is factory(settings, reason) -> Engine.
ENGINES: dict[str, str] = {
    "sdxl": "echo_os.engines.factories:sdxl",
    "cpu": "echo_os.engines.factories:cpu",
    "draft": "echo_os.engines.factories:draft",
}
ENGINE_NAMES: tuple[str, ...] = ("auto", *ENGINES)

AUTO_ORDER = "sdxl on a CUDA GPU, else sdxl on the CPU (engine `cpu`), else draft cards"


def choose_engine(settings: "Settings", request: "RenderRequest") -> tuple[str, str]:
    """(engine name, one-line reason). Order for `auto`: see AUTO_ORDER.

    For the engines that load weights, the weight files are checked here (headers only, fast), so a
    broken or refused file is reported before anything starts.
    """
    if request.engine == "draft":
        return "draft", "chosen with --engine draft"
    from echo_os.models import ResolveError, check_loadable, load_registry

    registry = load_registry(settings)
    registry.get(request.model)  # an unknown name is the user's error: raise
    if request.engine != "auto":
        check_loadable(registry.resolve(request.model))
        return request.engine, f"chosen with --engine {request.engine}"
    try:
        resolved = registry.resolve(request.model)
    except ResolveError as error:
        return "draft", f"no weights for model '{request.model}' here ({error.reason}); see `echo-os models list`"
    check_loadable(resolved)
    from echo_os.engines.sdxl import pick_device

    device = pick_device(request.device)  # the engine's own rule: --device cuda/mps without one is an error
    if device == "cuda":
        return "sdxl", f"weights for '{request.model}' found and a CUDA GPU is available"
    if device == "mps":
        return "sdxl", f"weights for '{request.model}' found; --device mps"
    if request.device == "cpu":
        return "cpu", "weights found; --device cpu"
    return "cpu", f"weights for '{request.model}' found but no CUDA GPU; rendering on the CPU (slow at full size)"


def create_engine(settings: "Settings", name: str, reason: str) -> "Engine":
    module_name, factory = ENGINES[name].split(":")
    return getattr(importlib.import_module(module_name), factory)(settings, reason)
