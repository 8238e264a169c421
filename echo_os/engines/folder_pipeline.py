"""One loader for the engines whose models are a diffusers folder read as it is (Shap-E, Stable Audio): the
pipeline class the folder's model_index.json names, from local files only, on the device and dtype asked,
with diffusers' own progress bar off (the engines report steps through the renderer)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from echo_os.render.results import ModelInfo


@dataclass
class LoadedPipeline:
    """What a folder engine keeps in the model cache: the pipeline and how it was loaded."""

    pipe: Any
    model: ModelInfo
    device: str
    dtype: str
    lock: threading.Lock


def load_folder_pipeline(local_path: Any, *, device: str, dtype: str, allow_pickle: bool = False) -> Any:
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
