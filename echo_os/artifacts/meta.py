"""meta.json: the source of truth for an artifact. The catalog and memory indexes are rebuilt from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field

from echo_os.render.requests import RenderRequest, StoryFields

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
    negative_prompt_passed: NegativePassed | None = None
    style: str = ""  # free text, or the named style's template
    style_name: str | None = None  # the named style (styles.toml or built-in); None for free text or none
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
    # img2img (echo-os refine): how much of the parent was repainted, and the sha256 of the parent's PNG
    # bytes as they were read (the parent's id, unless the file has been changed since).
    strength: float | None = None
    parent_sha256: str | None = None
    story: StoryFields = Field(default_factory=StoryFields)
    request: dict[str, Any]  # the RenderRequest that makes exactly this image (count 1, this seed)
    request_key: str | None = None  # requests.image_request_key(request): what a batch re-run skips by
    ip_adapter: ModelRecord | None = None  # adapter weights used with the request's reference images
    vae_tiling: bool = False
    profile: str | None = None  # CUDA render profile applied (engines/cuda_profile.py), None on CPU
    tile: str | None = None  # seamless tiling axes ("x", "y", "xy"), engines/tiling.py; None: not tiled
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


NegativePassed = Literal["none", "empty-string", "text"]


def negative_prompt_passed(negative: str | None) -> NegativePassed:
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


# A video artifact's meta.json (animatics and clips; echo_os/artifacts/video.py writes the folders). It lives
# here beside ArtifactMeta so the store can read both without importing the video writer.
POSTER_NAME = "poster.png"
VideoKind = Literal["animatic", "clip"]


class VideoMeta(BaseModel):
    """meta.json of a video artifact. The fields the catalog indexes (created, project, prompt, seed,
    width, height, engine, story, parent_id) mean what they mean for an image."""

    model_config = ConfigDict(extra="allow")

    meta_version: int = META_VERSION
    kind: Literal["video"] = "video"
    video_kind: VideoKind
    id: str = ""  # sha256 of the video file
    created: str
    project: str
    sequence: int = 0
    prompt: str  # what the catalog lists: the story title for an animatic, the scene prompt for a clip
    seed: int = 0
    width: int
    height: int
    fps: int
    frames: int
    duration_s: float
    codec: str = "h264"
    pix_fmt: str = "yuv420p"
    video: str  # file name inside the folder
    poster: str = POSTER_NAME
    captions: str | None = None  # .srt file name inside the folder, when captions were asked for
    engine: EngineRecord
    model: ModelRecord | None = None
    parent_id: str | None = None  # a clip's source image
    sources: list[str] = Field(default_factory=list)  # artifact ids the video is made from
    story: StoryFields = Field(default_factory=StoryFields)
    settings: dict[str, Any] = Field(default_factory=dict)
    scenes: list[dict[str, Any]] = Field(default_factory=list)  # animatic: the scene -> time map
    versions: dict[str, str] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict)
    request_key: str | None = None  # never a resume key: batch re-runs look for images only

    def to_json(self) -> str:
        import json

        return json.dumps(self.model_dump(mode="json"), ensure_ascii=False, indent=2, sort_keys=True) + "\n"

    @property
    def full_prompt(self) -> str:  # what Artifact.summary lists, as for an image
        return self.prompt

    @classmethod
    def read(cls, path: Path) -> "VideoMeta":
        return cls.model_validate_json(path.read_text(encoding="utf-8"))


AssetKind = Literal["mesh", "audio"]
PREVIEW_NAME = "image.png"  # an asset's preview has an image's file name, so memory embeds it by its picture


class AssetMeta(BaseModel):
    """meta.json of a mesh or sound artifact (echo_os/artifacts/assets.py writes the folders): the file, its
    preview image and what made it. `id` is the sha256 of the file; `content_sha256` hashes what replay
    compares (a mesh's vertices and faces, a sound's 16-bit samples), which a re-encode does not change."""

    model_config = ConfigDict(extra="allow")

    meta_version: int = META_VERSION
    kind: AssetKind
    id: str = ""
    created: str
    project: str
    sequence: int = 0
    prompt: str
    seed: int = 0
    width: int  # of the preview image
    height: int
    file: str  # mesh.glb / sound.flac
    preview: str = PREVIEW_NAME
    placeholder: bool = False  # a draft engine's labelled stand-in, not a generated model or sound
    content_sha256: str = ""
    vertices: int | None = None
    faces: int | None = None
    duration_s: float | None = None
    sample_rate: int | None = None
    channels: int | None = None
    turntable: str | None = None  # a mesh's turntable.mp4 (frames at fps: one turn)
    turntable_frames: int | None = None
    turntable_fps: int | None = None
    engine: EngineRecord
    model: ModelRecord | None = None
    parent_id: str | None = None  # lift: the source image
    sources: list[str] = Field(default_factory=list)
    story: StoryFields = Field(default_factory=StoryFields)
    settings: dict[str, Any] = Field(default_factory=dict)
    request: RenderRequest | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict)
    request_key: str | None = None

    @property
    def full_prompt(self) -> str:
        return self.prompt

    def replay_request(self) -> RenderRequest:
        if self.request is None:
            raise ValueError("meta.json has no request")
        return self.request

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), ensure_ascii=False, indent=2, sort_keys=True) + "\n"

    @classmethod
    def read(cls, path: Path) -> "AssetMeta":
        return cls.model_validate_json(path.read_text(encoding="utf-8"))


# What a meta.json holds: an image's ArtifactMeta, a video's VideoMeta ("kind": "video") or a mesh's or
# sound's AssetMeta ("kind": "mesh" / "audio"). Artifact.meta is one of these; code that needs one narrows
# with isinstance (or require_kind first, then isinstance for the type checker).
AnyMeta: TypeAlias = "ArtifactMeta | VideoMeta | AssetMeta"


# What an artifact is, for the commands that take an id: each says in one line which kinds it needs.
# "image": rendered by an engine here (replayable); "imported": a PNG brought in by `memory import` (what its
# chunks carried, no request); "sheet": a compare grid sheet drawn from its cells; "video": an animatic or clip;
# "mesh" / "audio": a 3D model or a sound (AssetMeta).
ArtifactKind = Literal["image", "imported", "sheet", "video", "mesh", "audio"]
IMAGE_KINDS: tuple[ArtifactKind, ...] = ("image", "imported")
SHEET_ENGINE = "compare"  # the engine name a grid sheet records (echo_os.iterate.compare.save_grid)
IMPORT_ENGINE_PREFIX = "import:"  # echo_os.memory.importer.imported_meta: "import:a1111", ...


def artifact_kind(meta: "AnyMeta | dict[str, Any]") -> ArtifactKind:
    """The kind of an artifact from its meta.json (a model or the catalog row's dict)."""
    data = meta if isinstance(meta, dict) else meta.model_dump(mode="json")
    if data.get("kind") in ("video", "mesh", "audio"):
        return data["kind"]
    engine = (data.get("engine") or {}).get("name", "") if isinstance(data.get("engine"), dict) else ""
    if data.get("grid") is not None or engine == SHEET_ENGINE:
        return "sheet"
    if engine.startswith(IMPORT_ENGINE_PREFIX):
        return "imported"
    return "image"


def describe_kind(meta: "AnyMeta | dict[str, Any]") -> str:
    """'a video (animatic)', 'a compare grid sheet', 'an imported image', 'an image'."""
    kind = artifact_kind(meta)
    if kind == "video":
        data = meta if isinstance(meta, dict) else meta.model_dump(mode="json")
        return f"a video ({data.get('video_kind', 'video')})"
    return {"mesh": "a 3D model", "audio": "a sound", "sheet": "a compare grid sheet",
            "imported": "an imported image", "image": "an image"}[kind]


def require_kind(artifact_id: str, meta: "AnyMeta | dict[str, Any]",
                 allowed: tuple[ArtifactKind, ...], command: str, *, needs: str = "an image artifact",
                 option: str = "artifact_id") -> None:
    """One line (an OptionError on `option`: exit 2 at the CLI, 422 in the API) when the artifact is not
    of an allowed kind: what the command needs, and what the id is."""
    from echo_os.errors import OptionError

    if artifact_kind(meta) not in allowed:
        raise OptionError(f"{command} needs {needs}; {artifact_id[:12]} is {describe_kind(meta)}", option)
