"""A model entry's render defaults (models.toml `steps`, `cfg`, `scheduler`, `size`, `lora`) applied to a
request being built: the one rule every edge uses (`render`, `batch`, `refine`, `compare`, and their API
routes, /v1/images/generations included).

Precedence, first one set wins:
    what the user gave (a command-line option, a body field) > the storyboard row > the bible's defaults
    > the preset > the model entry's defaults > RenderRequest's defaults

Each edge knows which names the layers above the model entry gave (click's ParameterSource, pydantic's
`model_fields_set`, the planner's row and bible) and passes them as `given`; `fill_model_defaults` fills
every other field the entry names. A few-step model (SDXL-Turbo, Lightning, LCM, TCD) then renders with
its own steps, guidance and scheduler wherever it is chosen. The entry's `lora` (a distillation LoRA) is
applied unless the user named LoRAs (echo_os.engines.lora.model_lora_inputs).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from echo_os.models.registry import RenderDefaults
    from echo_os.settings import Settings

# RenderRequest fields an entry may set; "size" in `given` stands for width and height together.
DEFAULTED_FIELDS: tuple[str, ...] = ("steps", "cfg", "scheduler", "width", "height")


def model_render_defaults(settings: "Settings", model: str | None) -> "RenderDefaults | None":
    """The render defaults of models.toml entry `model`; None when it has none or there is no such entry
    (an unknown name is reported where the weights are checked)."""
    from echo_os.models.registry import load_registry

    registry = load_registry(settings)
    return registry.get(model).defaults if model is not None and model in registry else None


def fill_model_defaults(fields: dict[str, Any], defaults: "RenderDefaults | None", given: Collection[str], *,
                        size: bool = True) -> dict[str, Any]:
    """`fields` (RenderRequest names) with the entry's value for every field not in `given`.

    `given` names what a layer above the model entry set (see the module docstring), in RenderRequest
    names or "size" for width and height. size=False leaves the size alone (refine keeps its image's)."""
    if defaults is None:
        return dict(fields)
    given = set(given)
    if "size" in given:
        given |= {"width", "height"}
    out = dict(fields)
    for key, value in defaults.fields().items():
        if key in given or (not size and key in ("width", "height")):
            continue
        out[key] = value
    return out



def all_render_defaults(settings: "Settings") -> dict[str, "RenderDefaults"]:
    """Every entry's render defaults by model name (entries without any left out): what the story planner
    is given at the edge (PlanOptions.model_defaults), as it is given the named styles."""
    from echo_os.models.registry import load_registry

    return {entry.name: entry.defaults for entry in load_registry(settings).entries() if entry.defaults is not None}
