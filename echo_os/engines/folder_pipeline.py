"""One loader for the engines whose models are a diffusers folder read as it is (Shap-E, Stable Audio): the
pipeline class the folder's model_index.json names, from local files only, on the device and dtype asked
(engines/devices.py), with diffusers' own progress bar off (the engines report steps through the renderer),
kept in the one model cache (echo_os/render/cache.py) under the engine's cache kind, one per (weights,
device, dtype)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from echo_os.engines.devices import DiffusersPipeline
from echo_os.render.results import ModelInfo

if TYPE_CHECKING:
    from echo_os.render.requests import RenderRequest
    from echo_os.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class LoadedPipeline:
    """What a folder engine keeps in the model cache: the pipeline and how it was loaded."""

    pipe: DiffusersPipeline
    model: ModelInfo
    device: str
    dtype: str
    lock: threading.Lock


def load_folder_pipeline(local_path: Path, *, device: str, dtype: str,
                         allow_pickle: bool = False) -> DiffusersPipeline:
    """The folder's pipeline (model_index.json names it) from local files only (never the network)."""
    from echo_os.engines.devices import dtype_kwargs, quiet_model_libraries

    quiet_model_libraries()
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(local_path), local_files_only=True,  # type: ignore[no-untyped-call]
                                             use_safetensors=None if allow_pickle else True,
                                             **dtype_kwargs(dtype))
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def cached_folder_pipeline(settings: "Settings", request: "RenderRequest", kind: str) -> LoadedPipeline:
    """`request`'s model, on the device and dtype it asks, from the model cache (loaded on a miss, its
    weights checked first)."""
    from echo_os.engines.devices import pick_device, pick_dtype
    from echo_os.models import check_loadable, load_registry, model_info
    from echo_os.render.cache import CacheKey, model_cache, weights_bytes

    resolved = load_registry(settings).resolve(request.model)
    device = pick_device(request.device)
    dtype = pick_dtype(request.dtype, device)

    def load() -> LoadedPipeline:
        check_loadable(resolved)
        started = time.perf_counter()
        pipe = load_folder_pipeline(resolved.local_path, device=device, dtype=dtype,
                                    allow_pickle=resolved.entry.allow_pickle)
        log.info("loaded %s on %s/%s in %.1fs", resolved.entry.name, device, dtype, time.perf_counter() - started)
        return LoadedPipeline(pipe=pipe, model=model_info(settings, resolved), device=device, dtype=dtype,
                              lock=threading.Lock())

    key = CacheKey(kind, str(resolved.local_path), device, (dtype,))
    return model_cache().get(key, load, label=resolved.entry.name, settings=settings,
                             estimate_bytes=weights_bytes(str(resolved.local_path)))


def release_folder_pipelines(settings: "Settings", model: str, kind: str) -> None:
    """Drop `model`'s pipelines of cache kind `kind` (every device and dtype) from the model cache."""
    from echo_os.models import load_registry
    from echo_os.render.cache import model_cache

    path = str(load_registry(settings).resolve(model).local_path)
    model_cache().release(lambda key: key.kind == kind and key.path == path)
