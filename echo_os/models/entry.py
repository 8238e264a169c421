"""A models.toml entry as a value (ModelEntry, RenderDefaults) and the lookup resolving needs.

The bottom layer of echo_os.models: registry.py parses models.toml into these, resolve.py finds an
entry's files on this machine. resolve.py reads other entries (an IP-Adapter's image encoder) through
EntryLookup, which the registry satisfies, so neither module imports the other for its types.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

ModelType = Literal["sdxl", "ip-adapter", "lora", "clip", "text-embedder", "video", "scorer", "3d", "audio", "taesd"]
SourceKind = Literal["path", "hf", "file", "package"]

MODEL_TYPES: tuple[str, ...] = ("sdxl", "ip-adapter", "lora", "clip", "text-embedder", "video", "scorer", "3d",
                                "audio", "taesd")  # taesd: a tiny VAE for live previews (render/preview.py)
PIPELINE_TYPES: tuple[str, ...] = ("video", "3d", "audio")  # diffusers pipeline folders other than sdxl
SOURCE_KEYS: tuple[SourceKind, ...] = ("path", "hf", "file", "package")
STRING_KEYS: tuple[str, ...] = ("type", *SOURCE_KEYS, "variant", "revision", "config", "subfolder", "weight_name",
                                "image_encoder", "description")
# Render defaults of an sdxl entry (few-step models: SDXL-Turbo, Lightning, LCM): used when the command
# line, the preset and the story bible leave the value unset. `lora` names a lora entry applied with it.
DEFAULT_KEYS: tuple[str, ...] = ("steps", "cfg", "scheduler", "size", "lora")


class EntryLookup(Protocol):
    """What resolving needs of a registry: is a name there, and its entry (the ModelRegistry is one)."""

    def __contains__(self, name: object) -> bool: ...

    def get(self, name: str) -> "ModelEntry": ...


@dataclass(frozen=True)
class ModelEntry:
    """One [models.NAME] table, validated.

    kind says where the weights are and source holds that place: an absolute path for "path" (a folder)
    and "file" (one checkpoint), a repo id for "hf" (resolved from the local Hugging Face cache only), a
    package name for "package" (the model/ folder inside that installed package). config is an absolute
    path when it names a local folder, else a Hugging Face repo id; image_encoder is an absolute path
    when it names a folder, else the name of another entry.
    """

    name: str
    type: ModelType
    kind: SourceKind
    source: str
    variant: str | None = None
    revision: str | None = None
    config: str | None = None
    subfolder: str | None = None
    weight_name: str | None = None
    image_encoder: str | None = None
    description: str | None = None
    allow_pickle: bool = False
    origin: Path | None = None
    defaults: "RenderDefaults | None" = None

    @property
    def label(self) -> str:
        """'model NAME (kind source)', the way every message names a model."""
        return f"model '{self.name}' ({self.kind} {self.source})"

    @property
    def single_file(self) -> bool:
        """True when the weights are one checkpoint file rather than a folder of components."""
        return self.kind == "file" or self.weight_name is not None


@dataclass(frozen=True)
class RenderDefaults:
    """What a model entry says it renders best with (DEFAULT_KEYS), each None when not given."""

    steps: int | None = None
    cfg: float | None = None
    scheduler: str | None = None
    size: str | None = None
    lora: str | None = None

    def fields(self) -> dict:
        """RenderRequest fields (size as width/height); the lora is resolved by the caller."""
        from echo_os.render.requests import parse_size

        out = {key: getattr(self, key) for key in ("steps", "cfg", "scheduler") if getattr(self, key) is not None}
        if self.size is not None:
            out["width"], out["height"] = parse_size(self.size)
        return out
