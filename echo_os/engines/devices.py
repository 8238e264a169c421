"""Where an in-process engine's weights run, in what precision, and how diffusers is asked to load them: one
rule for every engine that loads weights here (sdxl and cpu, video, shap-e, stable audio).

    device = pick_device(request.device)         # "auto" -> "cuda" when PyTorch sees a GPU, else "cpu"
    dtype = pick_dtype(request.dtype, device)    # "auto" -> bfloat16/float16 on CUDA, float32 elsewhere
    pipe = SomePipeline.from_pretrained(path, **dtype_kwargs(dtype))

A device asked for by name that this machine lacks is the user's error (OptionError naming `device`), raised
when the request is checked (`check_device`) as well as when it is loaded.
"""

from __future__ import annotations

import os
from typing import Any, TypeAlias

from echo_os.errors import OptionError

# A loaded diffusers pipeline (StableDiffusionXLPipeline, StableVideoDiffusionPipeline, ...). diffusers attaches
# a pipeline's modules (unet, vae, scheduler, ...) with setattr at load and its `to`/`__call__` are untyped, so
# no static type names what the engines use; the alias says where such a value is meant.
DiffusersPipeline: TypeAlias = Any


def pick_device(requested: str) -> str:
    """The torch device of `requested` ("auto", "cpu", "cuda", "mps"); a named device that is missing raises."""
    import torch

    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise OptionError("--device cuda was asked for but no CUDA GPU is visible to PyTorch; use --device cpu.",
                          "device")
    if requested == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise OptionError("--device mps was asked for but the MPS backend is not available; use --device cpu.",
                          "device")
    return requested


def pick_dtype(requested: str, device: str) -> str:
    """CUDA: bfloat16 where the GPU supports it, else float16 (the VAE then decodes in float32).
    CPU: float32 (half precision on CPU is slow and inexact)."""
    if requested != "auto":
        return requested
    if device == "cuda":
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"


def runs_on_cpu(requested: str) -> bool:
    """Whether a request for device `requested` renders on the CPU (the scheduler batches differently there)."""
    return pick_device(requested) == "cpu"


def check_device(requested: str) -> None:
    """Refuse, before anything is queued, a device asked for by name that this machine lacks (engines'
    check_runtime): an OptionError naming the request field `device`."""
    if requested in ("cuda", "mps"):
        try:
            pick_device(requested)
        except OptionError as error:
            raise OptionError(str(error).replace("--device", "device"), "device") from None


def dtype_kwargs(dtype: str) -> dict[str, Any]:
    """The from_pretrained keyword for loading in `dtype` ("float16", ...): diffusers >= 0.36 names it `dtype`
    and deprecates `torch_dtype`."""
    import torch
    from diffusers.pipelines import pipeline_utils

    torch_dtype = getattr(torch, dtype)
    return {"dtype": torch_dtype} if hasattr(pipeline_utils, "_resolve_dtype") else {"torch_dtype": torch_dtype}


def quiet_model_libraries() -> None:
    """Our own progress bar and one engine line replace the libraries' loading bars and notices.
    TRANSFORMERS_VERBOSITY / DIFFUSERS_VERBOSITY, when set, still win."""
    import diffusers
    import transformers

    # transformers' logging helpers carry no annotations (mypy counts them as untyped calls).
    if "TRANSFORMERS_VERBOSITY" not in os.environ:
        transformers.utils.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    if "DIFFUSERS_VERBOSITY" not in os.environ:
        diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    diffusers.utils.logging.disable_progress_bar()
