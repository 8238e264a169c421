"""`echo-os models pull NAME`: the one command that downloads (an `hf` entry, into the Hugging Face cache).

Only the files loading will read are fetched: for SDXL base that is the fp16 (or full precision)
component weights and their configs, about 7 GB, not the 70 GB of every format the repo also holds
(single-file checkpoints, .bin, ONNX, OpenVINO, Flax).
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from echo_os.errors import ModelError
from echo_os.models.registry import ModelEntry, ModelRegistry, load_registry
from echo_os.models.resolve import (
    ResolvedModel,
    check_loadable,
    component_has_weights,
    hf_cache_dir,
    pipeline_components,
    resolve_model,
    sdxl_config_source,
)
from echo_os.models.weights import choose_weight_files, format_bytes, weight_file_variant

if TYPE_CHECKING:
    from echo_os.settings import Settings

# Small files a model folder needs besides its weights: configs, tokenizer vocabularies.
_CONFIG_SUFFIXES = (".json", ".txt", ".model", ".tiktoken")
_SKIP_DIRS = {"onnx", "openvino", "flax", "tf", "coreml"}


def _folder_files(repo_files: list[str], folder: str, variant: str | None, depth: int,
                  weights: bool = True) -> list[str]:
    """Configs and chosen weights of a model folder (and, with depth 2, of its module subfolders)."""
    prefix = f"{folder}/" if folder else ""
    by_dir: dict[str, list[str]] = {}
    for path in repo_files:
        if not path.startswith(prefix):
            continue
        rest = path[len(prefix):]
        parts = rest.split("/")
        if len(parts) > depth or (len(parts) > 1 and (parts[0] in _SKIP_DIRS or parts[0].startswith("."))):
            continue
        by_dir.setdefault(posixpath.dirname(rest), []).append(posixpath.basename(rest))
    chosen: list[str] = []
    for directory, names in sorted(by_dir.items()):
        chosen_weights = choose_weight_files(names, variant) if weights else []
        keep = {name for name in names if name.endswith(_CONFIG_SUFFIXES) and not _is_weights_index(name)}
        keep |= set(chosen_weights) | _matching_indexes(names, chosen_weights)
        base = f"{prefix}{directory}/" if directory else prefix
        chosen.extend(base + name for name in sorted(keep))
    return chosen


def _is_weights_index(name: str) -> bool:
    return ".index" in name and name.endswith(".json") and (".safetensors." in name or ".bin." in name)


def _matching_indexes(names: list[str], weights: list[str]) -> set[str]:
    """The shard index for the chosen weights (diffusers reads the index whenever one is present)."""
    if not any("-of-" in name for name in weights):
        return set()
    _, variant, ext = weight_file_variant(weights[0])
    keep = set()
    for name in names:
        if not _is_weights_index(name) or f".{ext}." not in name:
            continue
        if (variant is None and name.endswith(".index.json") and name.count(".") == 3) or (
                variant is not None and f".{variant}." in name):
            keep.add(name)
    return keep


def select_pull_files(entry: ModelEntry, repo_files: list[str], model_index: dict | None = None) -> list[str]:
    """Which files of an hf repo to download for an entry (repo_files: every path in the repo)."""
    sub = entry.subfolder or ""
    join = (lambda *parts: posixpath.join(sub, *parts)) if sub else posixpath.join
    if entry.weight_name is not None:
        files = [join(entry.weight_name)]
        if entry.type == "ip-adapter" and entry.image_encoder is None:
            files += _folder_files(repo_files, join("image_encoder"), None, depth=1)
        return files
    if entry.type in ("sdxl", "video", "3d", "audio"):
        if model_index is None:
            raise ValueError(f"an {entry.type} pipeline needs its model_index.json to choose files")
        files = [join("model_index.json")]
        for name, (_, class_name) in pipeline_components(model_index).items():
            variant = entry.variant if component_has_weights(class_name) else None
            files += _folder_files(repo_files, join(name), variant, depth=1)
        return files
    return _folder_files(repo_files, sub, entry.variant, depth=2)


def select_config_files(repo_files: list[str], model_index: dict) -> list[str]:
    """The configs and tokenizers of a diffusers pipeline repo, no weights: what from_single_file needs."""
    files = ["model_index.json"]
    for name in pipeline_components(model_index):
        files += _folder_files(repo_files, name, None, depth=1, weights=False)
    return files


@dataclass(frozen=True)
class _Download:
    repo_id: str
    revision: str
    files: list[str]
    size: int


def pull_model(settings: "Settings", name: str, registry: ModelRegistry | None = None,
               echo: Callable[[str], None] = print) -> ResolvedModel:
    """Download what an entry needs into the local Hugging Face cache, then resolve and check it.

    An hf entry: the files loading reads. A single-file sdxl checkpoint (file, or hf with weight_name)
    whose config is a repo id: also that repo's configs and tokenizers (a few MB, no weights).
    """
    registry = registry or load_registry(settings)
    entry = registry.get(name)
    configs_repo = None
    if entry.type == "sdxl" and entry.single_file and not os.path.isabs(sdxl_config_source(entry)):
        configs_repo = sdxl_config_source(entry)
    if entry.kind != "hf" and configs_repo is None:
        raise ModelError(f"{entry.label}: only hf entries (and the configs of a single-file sdxl checkpoint) can be "
                         f"pulled; this one is a local {entry.kind}, nothing to download (check it with "
                         f"`echo-os models verify {name}`).")
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    cache = hf_cache_dir()
    api = HfApi()
    # huggingface_hub resumes a dropped download itself (a few tries, with Range) and logs each try as a
    # warning: those lines would come before the one error line; its progress bars stay.
    import logging

    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)
    try:
        plan = []
        if entry.kind == "hf":
            plan.append(_plan_model(entry, api, hf_hub_download, cache))
        if configs_repo is not None:
            plan.append(_plan_configs(configs_repo, api, hf_hub_download, cache))
        for download in plan:
            echo(f"Pulling {len(download.files)} files ({format_bytes(download.size)}) of "
                 f"{download.repo_id}@{download.revision} into {cache}")
            snapshot_download(download.repo_id, revision=download.revision, allow_patterns=download.files,
                              cache_dir=cache)
    except ModelError:
        raise
    except Exception as error:  # network, auth and Hub errors become one line for the user, in words
        raise ModelError(f"{entry.label}: download failed: {_download_words(error)}; files already complete are "
                         "kept in the cache, run the same command again to fetch the rest") from error
    finally:
        hub_log.setLevel(level)
    resolved = resolve_model(entry, registry=registry)
    check_loadable(resolved)
    return resolved


def _download_words(error: BaseException) -> str:
    """What went wrong with a download, in one line of words: a dropped or refused connection as
    echo_os.errors.connection_words says it, a Hub error by its own first line (the class name left out)."""
    from echo_os.errors import connection_words

    cause: BaseException | None = error
    for _ in range(10):  # huggingface_hub wraps the connection's error in its own (LocalEntryNotFoundError)
        if cause is None:
            break
        if "TransportError" in {cls.__name__ for cls in type(cause).__mro__} or (
                isinstance(cause, OSError) and cause.errno is not None):
            return connection_words(cause)
        cause = cause.__cause__ or cause.__context__
    lines = str(error).strip().splitlines()
    return "".join(c if c.isprintable() else "?" for c in lines[0])[:300] if lines else "no details"


def _repo_sizes(api, repo_id: str, revision: str) -> dict[str, int]:
    info = api.model_info(repo_id, revision=revision, files_metadata=True)
    return {sibling.rfilename: sibling.size or 0 for sibling in info.siblings or []}


def _model_index(repo_id: str, index_name: str, revision: str, hf_hub_download, cache) -> dict:
    index_path = hf_hub_download(repo_id, index_name, revision=revision, cache_dir=cache)
    with open(index_path, encoding="utf-8") as handle:
        return json.load(handle)


def _plan_model(entry: ModelEntry, api, hf_hub_download, cache) -> _Download:
    revision = entry.revision or "main"
    sizes = _repo_sizes(api, entry.source, revision)
    model_index = None
    if entry.type in ("sdxl", "video", "3d", "audio") and entry.weight_name is None:
        index_name = posixpath.join(entry.subfolder or "", "model_index.json")
        if index_name not in sizes:
            raise ModelError(f"{entry.label}: the repo has no {index_name}; it is not a diffusers pipeline (for a "
                             "single checkpoint in it, set weight_name).")
        model_index = _model_index(entry.source, index_name, revision, hf_hub_download, cache)
    files = select_pull_files(entry, list(sizes), model_index)
    absent = [path for path in files if path not in sizes]
    if absent:
        raise ModelError(f"{entry.label}: the repo has no {absent[0]}; check subfolder and weight_name in "
                         "models.toml.")
    pickles = [path for path in files if path.endswith(".bin") and weight_file_variant(posixpath.basename(path))[0]]
    if pickles and not entry.allow_pickle:
        raise ModelError(f"{entry.label}: the repo has only pickle weights for {pickles[0]}; pickle can run code "
                         "when loaded: set allow_pickle = true on the entry if you trust it.")
    return _Download(entry.source, revision, files, sum(sizes[path] for path in files))


def _plan_configs(repo_id: str, api, hf_hub_download, cache) -> _Download:
    sizes = _repo_sizes(api, repo_id, "main")
    if "model_index.json" not in sizes:
        raise ModelError(f"config {repo_id} has no model_index.json; it is not a diffusers pipeline repo.")
    files = select_config_files(list(sizes), _model_index(repo_id, "model_index.json", "main", hf_hub_download, cache))
    return _Download(repo_id, "main", files, sum(sizes.get(path, 0) for path in files))
