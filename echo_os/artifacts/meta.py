"""meta.json: the source of truth for an artifact. The catalog and memory indexes are rebuilt from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from echo_os.requests import RenderRequest, StoryFields

META_VERSION = 1


class ModelRecord(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    source: str = ""
    kind: str = ""
    weights_sha256: str | None = None


class EngineRecord(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    reason: str = ""


class ArtifactMeta(BaseModel):
    """Everything needed to know, and redo, how an image was made."""

    model_config = ConfigDict(extra="allow")

    meta_version: int = META_VERSION
    id: str = ""  # sha256 of image.png; empty inside the PNG's own chunk (it cannot hash itself)
    created: str
    project: str
    sequence: int
    prompt: str
    full_prompt: str
    negative_prompt: str = ""
    # What the engine was given as the negative prompt: "none" (no negative prompt, the model's config
    # decides), "empty-string" (the rule before that; replays of such artifacts keep it) or "text".
    # None in artifacts made before this was recorded (they were all given "" when the field was empty).
    negative_prompt_passed: Literal["none", "empty-string", "text"] | None = None
    style: str = ""
    seed: int
    steps: int
    cfg: float
    width: int
    height: int
    scheduler: str
    model: ModelRecord | None = None
    engine: EngineRecord
    device: str
    dtype: str
    attention: str
    versions: dict[str, str] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict)
    batch: dict[str, int] = Field(default_factory=dict)
    parent_id: str | None = None
    story: StoryFields = Field(default_factory=StoryFields)
    request: dict[str, Any]  # the RenderRequest that makes exactly this image (count 1, this seed)
    request_key: str | None = None  # requests.image_request_key(request): what a batch re-run skips by
    ip_adapter: ModelRecord | None = None  # adapter weights used with the request's reference images
    vae_tiling: bool = False
    profile: str | None = None  # CUDA render profile applied (engines/cuda_profile.py), None on CPU
    # A remote engine's record of the image (RenderedImage.provenance): provider, model, response id,
    # usage, revised prompt, whether it came from the response cache and whether it can be reproduced.
    provenance: dict[str, Any] | None = None

    def replay_request(self) -> RenderRequest:
        return RenderRequest.model_validate(self.request)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), ensure_ascii=False, indent=2, sort_keys=True) + "\n"

    @classmethod
    def read(cls, path: Path) -> "ArtifactMeta":
        return cls.model_validate_json(path.read_text(encoding="utf-8"))


def negative_prompt_passed(negative: str | None) -> str:
    if negative is None:
        return "none"
    return "empty-string" if negative == "" else "text"


def collect_versions() -> dict[str, str]:
    """Versions of what made the image. Only reads versions of modules already imported (no heavy import)."""
    import platform
    import sys
    from importlib import metadata

    from echo_os import __version__

    versions = {"echo_os": __version__, "python": platform.python_version()}
    for package, module in (("torch", "torch"), ("diffusers", "diffusers"), ("transformers", "transformers")):
        if module in sys.modules:
            try:
                versions[package] = metadata.version(package)
            except metadata.PackageNotFoundError:
                pass
    return versions
