"""From a registry entry to files on this machine, offline.

resolve_model never touches the network: an `hf` entry is looked up in the local Hugging Face cache
(the documented models--ORG--NAME/refs + snapshots layout), and a model that is not there is one
ModelError saying how to get it. It also works out which weight files loading will read (the same
choice diffusers makes: the requested variant where present, safetensors before .bin), so they can be
checked and hashed before anything is loaded.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from echo_os.errors import ModelError
from echo_os.models.entry import EntryLookup, ModelEntry
from echo_os.models.weights import (
    WeightsFileInfo,
    check_weights_file,
    choose_weight_files,
    folder_has_variant,
    sdxl_single_file_problem,
    weight_file_variant,
)

ResolvedFormat = Literal["diffusers", "single-file", "folder"]

# The configs and tokenizers diffusers itself picks for an SDXL base checkpoint.
DEFAULT_SDXL_CONFIG = "stabilityai/stable-diffusion-xl-base-1.0"

_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
# model_index.json components whose classes hold no weights.
_WEIGHTLESS_CLASS_WORDS = ("Tokenizer", "Scheduler", "FeatureExtractor", "Processor")
_FOLDER_SKIP = {"onnx", "openvino", "flax", "tf", ".git", ".cache"}


class ResolveError(ModelError):
    """The model's weights are not on this machine (or not where models.toml says). `reason` is short."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ResolvedModel:
    """Where an entry's weights are on this machine and which files loading reads.

    local_path is what to load: the pipeline folder ("diffusers": from_pretrained), the model folder
    ("folder": a transformers or sentence-transformers model), or the checkpoint file itself
    ("single-file": from_single_file for sdxl; the adapter file for ip-adapter). files are the weight
    files that loading reads, in a stable order. variant is the variant to pass to from_pretrained (None
    when the folder has no files of the requested variant). commit is the Hugging Face snapshot commit.
    config_path, for a single-file sdxl checkpoint, is the local diffusers folder whose configs and
    tokenizers from_single_file must be given (config=str(config_path)): without one, diffusers would
    go to the network for them. image_encoder is the resolved CLIP vision model of an ip-adapter entry.
    """

    entry: ModelEntry
    local_path: Path
    format: ResolvedFormat
    files: tuple[Path, ...]
    variant: str | None = None
    commit: str | None = None
    config_path: Path | None = None
    image_encoder: ResolvedModel | None = None

    @property
    def source_ref(self) -> str:
        """Where the weights came from, for meta.json: 'hf:org/name@commit', 'path:/abs/dir', ..."""
        ref = f"{self.entry.kind}:{self.entry.source}"
        if self.entry.kind == "hf":
            if self.entry.subfolder:
                ref += f"/{self.entry.subfolder}"
            if self.entry.weight_name:
                ref += f"/{self.entry.weight_name}"
            if self.commit:
                ref += f"@{self.commit}"
        return ref

    @property
    def weights_size(self) -> int:
        """Bytes of weight files loading reads, image encoder included."""
        total = sum(path.stat().st_size for path in self.files if path.exists())
        return total + (self.image_encoder.weights_size if self.image_encoder else 0)


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (not at import), as huggingface_hub does."""
    env = os.environ
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    if env.get("HUGGINGFACE_HUB_CACHE"):
        return Path(env["HUGGINGFACE_HUB_CACHE"]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    xdg = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "huggingface" / "hub"


def hf_snapshot(repo_id: str, revision: str | None = None, cache_dir: Path | None = None) -> tuple[Path, str]:
    """(snapshot folder, commit) of a repo in the local Hugging Face cache; FileNotFoundError when absent."""
    cache_dir = cache_dir or hf_cache_dir()
    storage = cache_dir / f"models--{repo_id.replace('/', '--')}"
    revision = revision or "main"
    if _COMMIT_RE.match(revision):
        commit = revision
    else:
        ref = storage / "refs" / revision
        if not ref.is_file():
            raise FileNotFoundError(str(ref))
        commit = ref.read_text(encoding="utf-8").strip()
    snapshot = storage / "snapshots" / commit
    if not snapshot.is_dir():
        raise FileNotFoundError(str(snapshot))
    return snapshot, commit


def resolve_model(entry: ModelEntry, registry: "EntryLookup | None" = None,
                  hf_cache: Path | None = None, need_configs: bool = True) -> ResolvedModel:
    """Find an entry's weights on this machine, offline. Raises ResolveError (a ModelError) when absent.

    need_configs=False lets a single-file checkpoint resolve without its pipeline configs (config_path
    None), for `models verify`, which checks the file itself and reports the missing configs.
    """
    root, commit = _source_root(entry, hf_cache)
    if entry.type == "sdxl":
        if entry.single_file:
            checkpoint = _single_file(entry, root)
            try:
                config_path = _config_folder(entry, hf_cache)
            except ResolveError:
                if need_configs:
                    # A corrupt, truncated, pickle or LFS-pointer checkpoint is the error to report, not the
                    # missing configs (which would send `auto` to a draft card as if no weights were here).
                    _check_checkpoint(entry, checkpoint)
                    raise
                config_path = None
            return ResolvedModel(entry, checkpoint, "single-file", (checkpoint,), commit=commit,
                                 config_path=config_path)
        folder = _subfolder(entry, root)
        files, variant = _pipeline_weights(entry, folder)
        return ResolvedModel(entry, folder, "diffusers", files, variant=variant, commit=commit)
    if entry.type in ("video", "3d", "audio"):  # diffusers pipeline folders
        folder = _subfolder(entry, root)
        files, variant = _pipeline_weights(entry, folder)
        return ResolvedModel(entry, folder, "diffusers", files, variant=variant, commit=commit)
    if entry.type == "ip-adapter":
        adapter = _single_file(entry, root)
        encoder = _image_encoder(entry, adapter, registry, hf_cache)
        return ResolvedModel(entry, adapter, "single-file", (adapter,), commit=commit, image_encoder=encoder)
    if entry.type in ("lora", "scorer"):
        weights = _single_file(entry, root)
        return ResolvedModel(entry, weights, "single-file", (weights,), commit=commit)
    folder = _subfolder(entry, root)
    files, variant = _folder_weights(entry, folder)
    return ResolvedModel(entry, folder, "folder", files, variant=variant, commit=commit)


def check_loadable(resolved: ResolvedModel, allow_pickle: bool = False) -> list[WeightsFileInfo]:
    """Check every weights file loading will read (image encoder included) before anything is loaded.

    Pickles pass only when allow_pickle is given here or the entry says allow_pickle = true. Raises
    ModelError naming the model and the file; returns what was learned about each file.
    """
    allow = allow_pickle or resolved.entry.allow_pickle
    infos = []
    for path in resolved.files:
        try:
            infos.append(check_weights_file(path, allow_pickle=allow))
        except ModelError as error:
            raise ModelError(f"model '{resolved.entry.name}': {error}") from None
    if resolved.entry.type == "sdxl" and resolved.format == "single-file":
        problem = sdxl_single_file_problem(infos[0])
        if problem:  # diffusers would fail later with a many-line message, after reading the whole file
            raise ModelError(f"model '{resolved.entry.name}': {problem}")
    if resolved.image_encoder is not None:
        infos.extend(check_loadable(resolved.image_encoder, allow_pickle=allow))
    return infos


# --- helpers, in the order resolve_model uses them ----------------------------------------------------

def _check_checkpoint(entry: ModelEntry, checkpoint: Path) -> None:
    """ModelError naming the checkpoint when it is broken, refused, or not an SDXL one."""
    try:
        info = check_weights_file(checkpoint, allow_pickle=entry.allow_pickle)
    except ModelError as error:
        raise ModelError(f"model '{entry.name}': {error}") from None
    problem = sdxl_single_file_problem(info)
    if problem:
        raise ModelError(f"model '{entry.name}': {problem}")


def _source_root(entry: ModelEntry, hf_cache: Path | None) -> tuple[Path, str | None]:
    """The folder (or, for kind "file", the file) named by the entry's source, checked to exist."""
    if entry.kind == "hf":
        try:
            return hf_snapshot(entry.source, entry.revision, hf_cache)
        except FileNotFoundError:
            at = f" at revision {entry.revision}" if entry.revision else ""
            raise ResolveError(
                f"{entry.label} is not in the local Hugging Face cache{at} ({hf_cache or hf_cache_dir()}); "
                f"run `echo-os models pull {entry.name}` or point models.toml at a folder.",
                reason="not in the local Hugging Face cache",
            ) from None
    if entry.kind == "package":
        spec = importlib.util.find_spec(entry.source) if "." not in entry.source else None
        if spec is None or not spec.submodule_search_locations:
            raise ResolveError(f"{entry.label}: the Python package '{entry.source}' is not installed; install it "
                               "or point models.toml at a folder.", reason=f"package {entry.source} not installed")
        folder = Path(list(spec.submodule_search_locations)[0]) / "model"
        if not folder.is_dir():
            raise ResolveError(f"{entry.label}: the package has no model folder at {folder}.",
                               reason="package has no model/ folder")
        return folder, None
    path = Path(entry.source)
    if not path.exists():
        raise ResolveError(f"{entry.label}: {path} does not exist; fix models.toml ({entry.origin}).",
                           reason=f"{path} does not exist")
    if entry.kind == "path" and not path.is_dir():
        raise ResolveError(f"{entry.label}: {path} is a file, not a folder; use file = \"...\" for a single "
                           "checkpoint.", reason="path is a file, not a folder")
    if entry.kind == "file" and not path.is_file():
        raise ResolveError(f"{entry.label}: {path} is a folder, not a file; use path = \"...\" for a diffusers "
                           "folder.", reason="file is a folder")
    return path, None


def _pull_hint(entry: ModelEntry) -> str:
    return f"; run `echo-os models pull {entry.name}`" if entry.kind == "hf" else ""


def _subfolder(entry: ModelEntry, root: Path) -> Path:
    folder = root / entry.subfolder if entry.subfolder else root
    if not folder.is_dir():
        raise ResolveError(f"{entry.label}: no folder {folder}{_pull_hint(entry)}.",
                           reason=f"no subfolder {entry.subfolder}")
    return folder


def _single_file(entry: ModelEntry, root: Path) -> Path:
    if entry.kind == "file":
        return root
    assert entry.weight_name is not None, "a single-file entry is kind file or names its weight_name"
    path = _subfolder(entry, root) / entry.weight_name
    if not path.is_file():
        raise ResolveError(f"{entry.label}: {path} does not exist{_pull_hint(entry)}.",
                           reason=f"{entry.weight_name} missing")
    return path


def _read_json(path: Path, entry: ModelEntry) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResolveError(f"{entry.label}: {path} does not exist.", reason=f"no {path.name}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"{entry.label}: {path} is not valid JSON ({error}).") from None
    if not isinstance(data, dict):
        raise ModelError(f"{entry.label}: {path} is not a JSON object.")
    return data


def pipeline_components(model_index: dict) -> dict[str, tuple[str, str]]:
    """model_index.json's components: name -> (library, class), skipping empty ones (like image_encoder)."""
    components = {}
    for name, value in model_index.items():
        if name.startswith("_") or not isinstance(value, list) or len(value) != 2:
            continue
        library, class_name = value
        if library and class_name:
            components[name] = (str(library), str(class_name))
    return components


def component_has_weights(class_name: str) -> bool:
    return not any(word in class_name for word in _WEIGHTLESS_CLASS_WORDS)


def _pipeline_weights(entry: ModelEntry, folder: Path) -> tuple[tuple[Path, ...], str | None]:
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise ResolveError(f"{entry.label}: {folder} has no model_index.json, so it is not a diffusers pipeline "
                           f"folder (for a single checkpoint use file = \"...\"){_pull_hint(entry)}.",
                           reason="no model_index.json")
    components = pipeline_components(_read_json(index_path, entry))
    listings: dict[str, list[str]] = {}
    for name, (_, class_name) in components.items():
        if not component_has_weights(class_name):
            continue
        component_dir = folder / name
        if not component_dir.is_dir():
            raise ResolveError(f"{entry.label}: model_index.json lists '{name}' but {component_dir} is missing"
                               f"{_pull_hint(entry)}.",
                               reason=f"component {name} missing")
        listings[name] = sorted(child.name for child in component_dir.iterdir())
    variant = entry.variant
    if variant is not None and not any(folder_has_variant(names, variant) for names in listings.values()):
        variant = None  # diffusers falls back to the plain files per component; say so to the caller
    files: list[Path] = []
    for name, names in listings.items():
        chosen = choose_weight_files(names, variant)
        if not chosen:
            raise ResolveError(f"{entry.label}: {folder / name} has no weights file (expected "
                               f"diffusion_pytorch_model.safetensors or model.safetensors)"
                               f"{_variant_hint(names) or _pull_hint(entry)}.", reason=f"no weights in {name}/")
        files.extend(folder / name / file_name for file_name in chosen)
    return tuple(sorted(files)), variant


def _variant_hint(names: list[str]) -> str:
    """'; it has fp16 files only: set variant = "fp16"' when a folder holds nothing but variant weights."""
    variants = sorted({found for name in names if (found := weight_file_variant(name)[1])})
    return f"; it has only {' and '.join(variants)} variant files: set variant = \"{variants[0]}\"" if variants else ""


def _folder_weights(entry: ModelEntry, folder: Path) -> tuple[tuple[Path, ...], str | None]:
    """Weights of a transformers / sentence-transformers folder: the top level plus module subfolders."""
    if not (folder / "config.json").is_file():
        raise ResolveError(f"{entry.label}: {folder} has no config.json, so it is not a model folder.",
                           reason="no config.json")
    top = sorted(child.name for child in folder.iterdir())
    variant = entry.variant if entry.variant and folder_has_variant(top, entry.variant) else None
    files = [folder / name for name in choose_weight_files(top, variant)]
    if not files:
        raise ResolveError(f"{entry.label}: {folder} has no weights file (expected model.safetensors)"
                           f"{_variant_hint(top) or _pull_hint(entry)}.", reason="no weights file")
    for child in sorted(folder.iterdir()):
        if child.is_dir() and child.name not in _FOLDER_SKIP and not child.name.startswith("."):
            names = sorted(grandchild.name for grandchild in child.iterdir())
            files.extend(child / name for name in choose_weight_files(names, variant))
    return tuple(sorted(files)), variant


def sdxl_config_source(entry: ModelEntry) -> str:
    """Where a single-file sdxl checkpoint's configs come from: its config, else SDXL base's (as diffusers)."""
    return entry.config or DEFAULT_SDXL_CONFIG


def _config_folder(entry: ModelEntry, hf_cache: Path | None) -> Path:
    """The local diffusers folder giving from_single_file its configs and tokenizers."""
    config = sdxl_config_source(entry)
    if os.path.isabs(config):
        folder = Path(config)
        where = str(folder)
    else:
        try:
            folder, _ = hf_snapshot(config, None, hf_cache)
        except FileNotFoundError:
            raise ResolveError(f"{entry.label}: needs the SDXL pipeline configs of {config}, which are not in the "
                               f"local Hugging Face cache; run `echo-os models pull {entry.name}` (configs only, a "
                               "few MB) or set config to a local diffusers SDXL folder.",
                               reason=f"configs of {config} not in the local cache") from None
        where = f"{config} ({folder})"
    if not (folder / "model_index.json").is_file():
        raise ResolveError(f"{entry.label}: config {where} has no model_index.json; it must be a diffusers SDXL "
                           "folder.", reason="config has no model_index.json")
    return folder


def _image_encoder(entry: ModelEntry, adapter: Path, registry: "EntryLookup | None",
                   hf_cache: Path | None) -> ResolvedModel:
    """An ip-adapter's CLIP vision model: a named entry, a folder, or image_encoder/ beside the adapter."""
    if entry.image_encoder is not None and not os.path.isabs(entry.image_encoder):
        if registry is None:
            raise ModelError(f"{entry.label}: image_encoder names the entry '{entry.image_encoder}'; resolve it "
                             "through the registry (registry.resolve(name)).")
        if entry.image_encoder not in registry:
            raise ModelError(f"{entry.label}: image_encoder '{entry.image_encoder}' is not a model in models.toml "
                             "(give the name of a clip entry, or a folder as ./path).")
        encoder_entry = registry.get(entry.image_encoder)
        if encoder_entry.type != "clip":
            raise ModelError(f"{entry.label}: image_encoder '{encoder_entry.name}' is of type {encoder_entry.type}, "
                             "not clip.")
        return resolve_model(encoder_entry, registry=registry, hf_cache=hf_cache)
    folder = Path(entry.image_encoder) if entry.image_encoder else adapter.parent / "image_encoder"
    if not folder.is_dir():
        why = "" if entry.image_encoder else " (no image_encoder/ folder beside the adapter; set image_encoder)"
        hint = f"; run `echo-os models pull {entry.name}`" if entry.kind == "hf" and not entry.image_encoder else ""
        raise ResolveError(f"{entry.label}: image encoder folder {folder} does not exist{why}{hint}.",
                           reason="image encoder missing")
    encoder_entry = ModelEntry(name=f"{entry.name}:image_encoder", type="clip", kind="path", source=str(folder),
                               allow_pickle=entry.allow_pickle, origin=entry.origin)
    return resolve_model(encoder_entry, registry=registry, hf_cache=hf_cache)
