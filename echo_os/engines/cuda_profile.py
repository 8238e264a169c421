"""Render profiles: the numeric and compiler set-up an SDXL pipeline runs under, as data.

A `RenderProfile` says how a pipeline runs (dtype, memory format, torch.compile, SDPA kernel, VAE batch,
CFG cut-off), never what it renders. `apply_profile` puts one on a loaded StableDiffusionXLPipeline,
`warm_up` pays torch.compile once per shape, `sdpa_context` wraps each call, `pick_batch_size` turns
free memory into a batch size for the scheduler.

Exact profiles ("default-cuda", "eager", "cpu") keep the image the same as the unoptimised bf16 path
within bf16 rounding; image-changing profiles are opt-in and say so (`image_changing=True`).

Where the figures come from: benchmarks/gpu_throughput.py measures every profile setting (see
benchmarks/RESULTS.md). Until a GPU run exists, "default-cuda" is chosen from documented reasoning, not
from a measurement; its docstring below says which parts.

In an engine:

    profile = get_profile("default-cuda")
    applied = apply_profile(pipe, profile, "cuda", cache_dir=settings.cache_dir)   # -> meta.json
    free = torch.cuda.mem_get_info()[0]
    warm_up(pipe, profile, 1024, 1024, log2_batches(max_batch_for(profile, free, 1024, 1024)))
    extra = profile_call_kwargs(profile)               # CFG cut-off callback, when the profile has one
    callback = combine_step_callbacks(extra.pop("callback_on_step_end", None), engine_progress_callback)
    with sdpa_context(profile, "cuda"):
        pipe(..., callback_on_step_end=callback, **extra)

(the progress callback then needs the tensor inputs list from `extra` too, or ["latents"] when none.)

torch is imported inside the functions: this module is imported by the CLI.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

if TYPE_CHECKING:
    import threading

    import numpy as np
    import numpy.typing as npt
    import torch
    from PIL import Image

    from echo_os.engines.devices import DiffusersPipeline

SdpaBackend = Literal["flash", "cudnn", "efficient", "math"]
DTYPE_NAMES = ("bfloat16", "float16", "float32")
# Tensor inputs the CFG cut-off callback edits; pass as callback_on_step_end_tensor_inputs.
CFG_CUTOFF_TENSOR_INPUTS = ("prompt_embeds", "add_text_embeds", "add_time_ids")
# cuDNN attention gave wrong results for sequence lengths not divisible by 128 before cuDNN 9.15.1
# (pytorch/pytorch#169849); SDXL's cross-attention keys are 77 long, so older cuDNN falls back to flash.
# PyTorch itself prefers cuDNN on sm90/sm100 only from the same version (check_prefer_cudnn_attention).
MIN_CUDNN_FOR_CUDNN_SDPA = 91501
# Images per VAE call when a decode must stay cancellable and no profile gives a vae_batch: a cancel waits
# at most this many images' decode (about 1 s each for 1024x1024 on a CPU).
DECODE_CHUNK_IMAGES = 1


@dataclass(frozen=True)
class RenderProfile:
    """How a pipeline runs. `image_changing` profiles trade image fidelity for speed and are opt-in."""

    name: str
    dtype: str = "bfloat16"
    channels_last: bool = False
    compile: bool = False
    compile_mode: str | None = None
    fullgraph: bool = True
    sdpa_backend: SdpaBackend | None = None
    vae_batch: int | None = None
    cfg_cutoff: float | None = None
    taesd_preview: bool = False
    image_changing: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_NAMES:
            raise ValueError(f"profile {self.name!r}: dtype must be one of {DTYPE_NAMES}, got {self.dtype!r}")
        if self.sdpa_backend not in (None, "flash", "cudnn", "efficient", "math"):
            raise ValueError(f"profile {self.name!r}: unknown sdpa_backend {self.sdpa_backend!r}")
        if self.cfg_cutoff is not None and not 0.0 < self.cfg_cutoff <= 1.0:
            raise ValueError(f"profile {self.name!r}: cfg_cutoff must be in (0, 1], got {self.cfg_cutoff}")
        if self.cfg_cutoff is not None and not self.image_changing:
            raise ValueError(f"profile {self.name!r}: a CFG cut-off changes the image; set image_changing")
        if self.vae_batch is not None and self.vae_batch < 1:
            raise ValueError(f"profile {self.name!r}: vae_batch must be at least 1, got {self.vae_batch}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


PROFILES: dict[str, RenderProfile] = {
    profile.name: profile
    for profile in (
        RenderProfile(
            name="default-cuda",
            dtype="bfloat16",
            channels_last=True,
            compile=True,
            compile_mode="max-autotune",
            fullgraph=True,
            sdpa_backend="cudnn",
            description=(
                "bf16, channels_last, torch.compile(max-autotune, fullgraph) on the UNet and VAE decode, "
                "cuDNN attention (flash where cuDNN < 9.15.1). Not yet measured on a GPU: chosen from the "
                "diffusers and PyTorch guidance (compile + channels_last for SDXL; cuDNN SDPA preferred "
                "on sm90 by PyTorch itself from cuDNN 9.15.1). benchmarks/gpu_throughput.py measures it."
            ),
        ),
        RenderProfile(
            name="eager",
            dtype="bfloat16",
            description="bf16 with PyTorch's own SDPA choice and no compile: the unoptimised reference.",
        ),
        RenderProfile(
            name="cpu",
            dtype="float32",
            description="float32, no compile: the no-GPU fallback (bf16 on most CPUs is slower).",
        ),
        RenderProfile(
            name="cfg-cutoff",
            dtype="bfloat16",
            channels_last=True,
            compile=True,
            compile_mode="max-autotune",
            fullgraph=True,
            sdpa_backend="cudnn",
            cfg_cutoff=0.4,
            image_changing=True,
            description=(
                "default-cuda, with classifier-free guidance off after 40% of the steps (the UNet then "
                "runs at half the batch). Changes the image; opt-in."
            ),
        ),
    )
}


def get_profile(name: str) -> RenderProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown render profile {name!r}; choose one of: {', '.join(PROFILES)}") from None


@dataclass
class AppliedProfile:
    """What apply_profile actually did on this machine (recorded in meta.json and benchmark JSON)."""

    profile: RenderProfile
    device: str
    dtype: str
    channels_last: bool
    compiled: list[str] = field(default_factory=list)
    compile_mode: str | None = None
    sdpa_backend: str | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["profile"] = self.profile.name
        return data


def torch_dtype(name: str) -> "torch.dtype":
    import torch

    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


def configure_compile_cache(cache_dir: str | os.PathLike[str]) -> Path:
    """Keep inductor's compiled kernels and autotuning results in the workspace, so compile is paid once.

    A TORCHINDUCTOR_CACHE_DIR the user set wins. torch itself writes its default (a folder under /tmp)
    into that variable the first time anything asks inductor for its cache folder, so the default is
    not taken as the user's choice.
    """
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    path = Path(cache_dir).resolve() / "torchinductor"
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is None or os.path.abspath(current) == os.path.abspath(default_cache_dir()):
        path.mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


def resolve_sdpa_backend(requested: str | None, device: str) -> tuple[str | None, str | None]:
    """The backend to use here and, when it differs from the request, why."""
    if requested is None:
        return None, None
    if device.startswith("cpu"):
        # On CPU only the flash and math kernels exist.
        if requested in ("flash", "math"):
            return requested, None
        return None, f"sdpa {requested} has no CPU kernel; PyTorch's own choice used"
    if requested == "cudnn":
        import torch

        version = torch.backends.cudnn.version() or 0  # type: ignore[no-untyped-call]  # unannotated in torch
        if version < MIN_CUDNN_FOR_CUDNN_SDPA:
            return "flash", f"cuDNN {version} < {MIN_CUDNN_FOR_CUDNN_SDPA}: cuDNN attention replaced by flash"
    return requested, None


def apply_profile(
    pipe: DiffusersPipeline,
    profile: RenderProfile,
    device: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
) -> AppliedProfile:
    """Move `pipe` to `device` in the profile's dtype and memory format, and compile what it says.

    Compiling is lazy: the cost is paid by the first call at each shape (see `warm_up`). Each batch size
    is its own static shape (dynamic=False), which is what CUDA graphs under max-autotune want.
    """
    import torch

    dtype = torch_dtype(profile.dtype)
    applied = AppliedProfile(profile=profile, device=device, dtype=profile.dtype,
                             channels_last=profile.channels_last)
    pipe.to(device=device, dtype=dtype)
    if device.startswith("cuda"):
        # cuDNN picks the fastest convolution algorithm per shape once; our shapes repeat.
        torch.backends.cudnn.benchmark = True
    if profile.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    applied.sdpa_backend, note = resolve_sdpa_backend(profile.sdpa_backend, device)
    if note:
        applied.notes.append(note)
    if profile.compile:
        if cache_dir is not None:
            configure_compile_cache(cache_dir)
        import torch._dynamo.config as dynamo_config
        import torch._inductor.config as inductor_config

        # One compiled graph per batch shape: 5 batch sizes, with and without CFG, UNet and VAE.
        dynamo_config.cache_size_limit = max(dynamo_config.cache_size_limit, 64)
        if device.startswith("cuda"):
            # The settings diffusers' SDXL speed-up guide uses with max-autotune.
            inductor_config.conv_1x1_as_mm = True
            inductor_config.coordinate_descent_tuning = True
            inductor_config.epilogue_fusion = False
            inductor_config.coordinate_descent_check_all_directions = True
        mode = profile.compile_mode
        if mode is not None and mode.startswith("max-autotune") and not device.startswith("cuda"):
            applied.notes.append(f"compile mode {mode} is for CUDA; default mode used on {device}")
            mode = None
        pipe.unet.compile(mode=mode, fullgraph=profile.fullgraph, dynamic=False)
        pipe.vae.decode = torch.compile(pipe.vae.decode, mode=mode, fullgraph=profile.fullgraph, dynamic=False)
        applied.compiled = ["unet", "vae.decode"]
        applied.compile_mode = mode or "default"
    return applied


def sdpa_context(profile: RenderProfile, device: str = "cuda") -> contextlib.AbstractContextManager[object]:
    """Restrict scaled_dot_product_attention to the profile's kernel for the calls inside."""
    backend, _ = resolve_sdpa_backend(profile.sdpa_backend, device)
    return sdpa_backend_context(backend)


def sdpa_backend_context(backend: str | None) -> contextlib.AbstractContextManager[object]:
    if backend is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kernels = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
    }
    return sdpa_kernel(kernels[backend])


# diffusers' callback_on_step_end: (pipeline, step index, timestep, tensors by name) -> the tensors to go on with.
StepCallback = Callable[[Any, int, Any, dict[str, Any]], dict[str, Any]]


def cfg_cutoff_step(fraction: float, num_steps: int) -> int:
    """Steps [0, result) run with CFG; the rest run the conditional branch alone."""
    return min(num_steps, max(1, round(fraction * num_steps)))


def cfg_cutoff_callback(fraction: float) -> StepCallback:
    """A callback_on_step_end that turns classifier-free guidance off after `fraction` of the steps.

    This is diffusers' documented dynamic-CFG recipe: at the end of the last guided step it sets
    `pipe._guidance_scale = 0.0` and keeps the conditional half of prompt_embeds, add_text_embeds and
    add_time_ids, so the UNet runs at half the batch from then on. Pass
    `callback_on_step_end_tensor_inputs=list(CFG_CUTOFF_TENSOR_INPUTS)` with it. fraction=1.0 changes
    nothing.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"the CFG cut-off fraction must be in (0, 1], got {fraction}")

    def callback(pipe: Any, step_index: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        cutoff = cfg_cutoff_step(fraction, pipe.num_timesteps)
        if step_index != cutoff - 1 or cutoff >= pipe.num_timesteps or not pipe.do_classifier_free_guidance:
            return callback_kwargs
        for name in CFG_CUTOFF_TENSOR_INPUTS:
            callback_kwargs[name] = callback_kwargs[name].chunk(2)[-1]
        pipe._guidance_scale = 0.0
        return callback_kwargs

    return callback


def combine_step_callbacks(*callbacks: StepCallback | None) -> StepCallback | None:
    """One callback_on_step_end running several in order (CFG cut-off, then progress/cancel)."""
    active = [cb for cb in callbacks if cb is not None]
    if not active:
        return None
    if len(active) == 1:
        return active[0]

    def callback(pipe: Any, step_index: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        for cb in active:
            callback_kwargs = cb(pipe, step_index, timestep, callback_kwargs) or callback_kwargs
        return callback_kwargs

    return callback


def profile_call_kwargs(profile: RenderProfile) -> dict[str, Any]:
    """Extra StableDiffusionXLPipeline.__call__ arguments a profile needs."""
    if profile.cfg_cutoff is None:
        return {}
    return {
        "callback_on_step_end": cfg_cutoff_callback(profile.cfg_cutoff),
        "callback_on_step_end_tensor_inputs": list(CFG_CUTOFF_TENSOR_INPUTS),
    }


@overload
def decode_latents(pipe: DiffusersPipeline, latents: "torch.Tensor", vae_batch: int | None,
                   output_type: Literal["np"] = "np", cancel: "threading.Event | None" = None,
                   ) -> "npt.NDArray[np.float32]": ...


@overload
def decode_latents(pipe: DiffusersPipeline, latents: "torch.Tensor", vae_batch: int | None,
                   output_type: Literal["pil"], cancel: "threading.Event | None" = None) -> "list[Image.Image]": ...


def decode_latents(pipe: DiffusersPipeline, latents: "torch.Tensor", vae_batch: int | None,
                   output_type: Literal["np", "pil"] = "np", cancel: "threading.Event | None" = None,
                   ) -> "npt.NDArray[np.float32] | list[Image.Image]":
    """VAE-decode pipeline latents (output_type="latent") in chunks of `vae_batch`, as the pipeline would.

    Mirrors the end of StableDiffusionXLPipeline.__call__ (latent denormalisation, fp16 upcast when the
    VAE asks for it), so decoding separately gives the pipeline's own images. With `cancel`, the flag is
    looked at before each chunk and after the last, and a set flag raises CancelledError: a decode of a
    big batch is the longest stretch without a denoising step to stop at. Without `vae_batch`, a
    cancellable decode goes DECODE_CHUNK_IMAGES at a time (off CUDA the VAE costs the same per image
    whatever the chunk).
    """
    import torch

    from echo_os.errors import CancelledError

    def check_cancel() -> None:
        if cancel is not None and cancel.is_set():
            raise CancelledError("render cancelled during the VAE decode; unfinished images were not saved")

    vae = pipe.vae
    needs_upcasting = vae.dtype == torch.float16 and vae.config.force_upcast
    if needs_upcasting:
        vae.to(dtype=torch.float32)  # what the deprecated pipe.upcast_vae() did
    try:
        latents = latents.to(next(iter(vae.post_quant_conv.parameters())).dtype)
        mean = getattr(vae.config, "latents_mean", None)
        std = getattr(vae.config, "latents_std", None)
        if mean is not None and std is not None:
            mean_t = torch.tensor(mean).view(1, 4, 1, 1).to(latents.device, latents.dtype)
            std_t = torch.tensor(std).view(1, 4, 1, 1).to(latents.device, latents.dtype)
            latents = latents * std_t / vae.config.scaling_factor + mean_t
        else:
            latents = latents / vae.config.scaling_factor
        chunk_size = vae_batch or (DECODE_CHUNK_IMAGES if cancel is not None else latents.shape[0])
        chunks = torch.split(latents, chunk_size)
        with torch.inference_mode():
            decoded = []
            for chunk in chunks:
                check_cancel()
                image = vae.decode(chunk, return_dict=False)[0]
                # Under CUDA graphs (max-autotune) the next replay overwrites this output: keep a copy.
                decoded.append(image.clone() if len(chunks) > 1 else image)
            check_cancel()
            images = torch.cat(decoded) if len(decoded) > 1 else decoded[0]
    finally:
        if needs_upcasting:
            vae.to(dtype=torch.float16)
    decoded_images: npt.NDArray[np.float32] | list[Image.Image] = pipe.image_processor.postprocess(
        images, output_type=output_type)
    return decoded_images


@dataclass(frozen=True)
class WarmUpRecord:
    batch_size: int
    seconds: float


def warm_up(
    pipe: DiffusersPipeline,
    profile: RenderProfile,
    width: int,
    height: int,
    batch_sizes: list[int] | tuple[int, ...],
    *,
    device: str = "cuda",
    steps: int = 2,
    guidance_scale: float = 7.0,
) -> list[WarmUpRecord]:
    """Run every batch shape, so compile (and CUDA-graph capture) is paid on load, not on a request.

    Two steps cover every UNet shape; with a CFG cut-off the second step runs the half batch too. The VAE
    is warmed at the profile's vae_batch, or at each batch size when it decodes the whole batch.
    """
    import time

    import torch

    # CUDA graphs (max-autotune) are recorded on the call after the compiling one: run each shape twice.
    cudagraphs = (profile.compile and device.startswith("cuda") and (profile.compile_mode or "").startswith(
        "max-autotune") and not (profile.compile_mode or "").endswith("no-cudagraphs"))
    records = []
    for batch_size in [size for size in batch_sizes for _ in range(2 if cudagraphs else 1)]:
        generators = [torch.Generator("cpu").manual_seed(i) for i in range(batch_size)]
        kwargs = profile_call_kwargs(profile)
        if profile.cfg_cutoff is not None:
            # Cut after the first of two steps so both the full and the half batch get compiled.
            kwargs["callback_on_step_end"] = cfg_cutoff_callback(0.5)
        started = time.perf_counter()
        with sdpa_context(profile, device), torch.inference_mode():
            result = pipe(
                prompt=["warm-up"] * batch_size,
                negative_prompt=["warm-up"] * batch_size,
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
                width=width,
                height=height,
                generator=generators,
                output_type="latent" if profile.vae_batch else "np",
                **kwargs,
            )
            if profile.vae_batch:
                decode_latents(pipe, result.images, profile.vae_batch)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        records.append(WarmUpRecord(batch_size=batch_size, seconds=time.perf_counter() - started))
    return records


# --- Memory model for pick_batch_size --------------------------------------------------------------
# Peak activation bytes per image at 1024x1024 in a 2-byte dtype, for SDXL base, eager, with SDPA not
# materialising the attention matrix (flash/cuDNN/efficient). Derived, not measured on a GPU:
# `python benchmarks/gpu_throughput.py --memory-model` runs the real modules on the meta device under
# torch.distributed._tools.mem_tracker.MemTracker and prints these figures (UNet forward at batch 2 for
# one CFG image: 316 MiB; VAE decode of one image: 1536 MiB). They scale with the pixel count.
UNET_ACT_BYTES_PER_IMAGE_CFG_1024 = 316 * 2**20
VAE_DECODE_ACT_BYTES_PER_IMAGE_1024 = 1536 * 2**20
# The caching allocator's fragmentation, cuDNN/cuBLAS workspaces and compiled-graph (CUDA graph) pools
# are not in the model above; leave twice the estimate plus a fixed reserve.
MEMORY_SAFETY_FACTOR = 2.0
MEMORY_RESERVE_BYTES = 2 * 2**30
MAX_BATCH = 16


def activation_bytes(batch_size: int, width: int, height: int, dtype: str = "bfloat16", *,
                     cfg: bool = True, vae_batch: int | None = None) -> int:
    """Estimated peak activation bytes of one pipeline call (UNet step or VAE decode, whichever is larger)."""
    scale = (width * height) / (1024 * 1024) * (4 if dtype == "float32" else 2) / 2
    unet = UNET_ACT_BYTES_PER_IMAGE_CFG_1024 * (1.0 if cfg else 0.5) * batch_size
    vae = VAE_DECODE_ACT_BYTES_PER_IMAGE_1024 * min(batch_size, vae_batch or batch_size)
    return int(max(unet, vae) * scale)


def pick_batch_size(free_bytes: int, width: int, height: int, dtype: str = "bfloat16", *,
                    cfg: bool = True, vae_batch: int | None = None, max_batch: int = MAX_BATCH) -> int:
    """The largest power of two (1..max_batch) whose estimated activations fit in `free_bytes`.

    `free_bytes` is what is free once the weights are loaded (torch.cuda.mem_get_info()[0] after load).
    Always at least 1: whether one image fits is the OOM back-off's business, not this estimate's.
    """
    best = 1
    size = 2
    while size <= max_batch:
        need = MEMORY_SAFETY_FACTOR * activation_bytes(size, width, height, dtype, cfg=cfg, vae_batch=vae_batch)
        if need + MEMORY_RESERVE_BYTES > free_bytes:
            break
        best = size
        size *= 2
    return best


def max_batch_for(profile: RenderProfile, free_bytes: int, width: int, height: int) -> int:
    """pick_batch_size with the profile's dtype, VAE batch and CFG set-up."""
    return pick_batch_size(free_bytes, width, height, profile.dtype, vae_batch=profile.vae_batch)


def log2_batches(max_batch: int) -> list[int]:
    """1, 2, 4, ... up to max_batch: the shapes warm_up should compile."""
    return [2**i for i in range(int(math.log2(max(1, max_batch))) + 1)]

