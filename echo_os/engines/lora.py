"""LoRA weights on the cached SDXL pipeline (diffusers' PEFT backend).

Each LoRA file is loaded once per pipeline as a named adapter (its sha256 names it); a pipeline call then
activates exactly the request's LoRAs at their scales, or disables them all. Loading changes nothing for
requests without LoRAs: their images stay equal to a pipeline that never saw one (the tests check it).

    from echo_os.engines.lora import resolve_lora, apply_loras
    lora = resolve_lora(settings, "keeper-lora", scale=0.8)   # a models.toml `lora` entry or a file path
    apply_loras(settings, loaded, request.loras)             # before the pipeline call
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from echo_os.errors import UsageError
from echo_os.render.requests import LoraInput

if TYPE_CHECKING:
    from echo_os.settings import Settings


@dataclass
class LoraState:
    """The LoRAs loaded into one cached pipeline: sha256 -> adapter name, and whether any is active."""

    adapters: dict[str, str] = field(default_factory=dict)
    active: bool = False


def lora_path(name: str, base: Path | None) -> Path:
    """Where a LoRA named by path (not a models.toml entry) is: `~` expanded, relative to `base`."""
    path = Path(name).expanduser()
    return base / path if not path.is_absolute() and base is not None else path


def resolve_lora(settings: "Settings", name: str, *, scale: float = 1.0, base: Path | None = None) -> LoraInput:
    """A LoRA by models.toml name (type = "lora"), else a .safetensors path (relative to `base`)."""
    from echo_os.models import check_loadable, load_registry
    from echo_os.models.hashing import file_sha256

    registry = load_registry(settings)
    if name in registry:
        resolved = registry.resolve(name)
        if resolved.entry.type != "lora":
            raise UsageError(f"{resolved.entry.label} is a {resolved.entry.type} model, not a LoRA; "
                             "give a `lora` entry of models.toml or a .safetensors file.")
        check_loadable(resolved)
        path = resolved.local_path
    else:
        path = lora_path(name, base)
        if not path.is_file():
            raise UsageError(f"LoRA '{name}' is neither a models.toml entry nor a file ({path}); add it with "
                             "`echo-os models add NAME --file F --type lora` or fix the path.")
        from echo_os.models.weights import check_weights_file

        check_weights_file(path)  # pickles refused (a models.toml entry can set allow_pickle), corrupt files named
    return LoraInput(name=name, path=str(path), sha256=file_sha256(settings, path), scale=scale)


def apply_loras(settings: "Settings", loaded: Any, loras: tuple[LoraInput, ...]) -> None:
    """Make exactly `loras` active on the pipeline, at their scales (none: every LoRA off)."""
    from echo_os.models.hashing import require_unchanged

    state: LoraState = loaded.lora
    pipe = loaded.pipe
    for lora in loras:
        if lora.sha256 in state.adapters:
            continue
        path = require_unchanged(settings, lora.path, lora.sha256, "LoRA file")
        adapter = f"lora_{lora.sha256[:16]}"
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter,
                               local_files_only=True)
        state.adapters[lora.sha256] = adapter
    if loras:
        if not state.active:
            pipe.enable_lora()
        pipe.set_adapters([state.adapters[lora.sha256] for lora in loras],
                          adapter_weights=[lora.scale for lora in loras])
        state.active = True
    elif state.active:
        pipe.disable_lora()
        state.active = False


def model_lora_inputs(settings: "Settings", model: str | None) -> tuple[LoraInput, ...]:
    """The models.toml entry's own `lora` (a distillation LoRA such as LCM-LoRA), resolved and checked;
    () when the entry names none (echo_os.models.defaults)."""
    from echo_os.models.defaults import model_render_defaults

    defaults = model_render_defaults(settings, model)
    if defaults is None or defaults.lora is None:
        return ()
    return (resolve_lora(settings, defaults.lora),)
