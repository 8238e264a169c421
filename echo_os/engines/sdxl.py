"""The sdxl engine: diffusers' StableDiffusionXLPipeline, in-process, loaded once and kept warm.

Every image gets its own torch.Generator seeded from its own seed, so image i of a batch equals the same
prompt rendered alone. The pipeline runs to latents and we decode them here: that splits the denoise and
decode timings and lets the VAE decode run as its own batch. Requests with reference images get
IP-Adapter embeddings (engines/ip_adapter.py); `vae_tiling` comes with a call (the scheduler's OOM back-off,
or replay of an image that was decoded tile by tile). Pipelines live in the one model cache
(echo_os/render/cache.py), which may drop one that has not been used for a while.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from echo_os.engines.base import (
    BaseEngine,
    Capabilities,
    EngineOptions,
    MemoryInfo,
    ModelInfo,
    ProgressCallback,
    ProgressEvent,
    RenderedImage,
    RenderResult,
    RuntimeInfo,
    Timings,
)
from echo_os.engines.devices import (
    DiffusersPipeline,
    check_device,
    dtype_kwargs,
    pick_device,
    pick_dtype,
    quiet_model_libraries,
)
from echo_os.engines.hookspecs import hookimpl
from echo_os.engines.inputs import load_init_image
from echo_os.engines.ip_adapter import AdapterState, ensure_adapters, reference_embeds
from echo_os.engines.lora import LoraState, apply_loras
from echo_os.errors import CancelledError, ModelError, OptionError, UsageError
from echo_os.render.preview import PREVIEW_BUDGET, PreviewThrottle, latent_preview, preview_decoder
from echo_os.render.requests import RenderRequest

if TYPE_CHECKING:
    from echo_os.engines.cuda_profile import RenderProfile
    from echo_os.settings import Settings

log = logging.getLogger(__name__)

# scheduler name -> (diffusers class name, config overrides)
SCHEDULER_CLASSES: dict[str, tuple[str, dict[str, Any]]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                                  "use_karras_sigmas": False}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                                         "use_karras_sigmas": True}),
    "ddim": ("DDIMScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    # Few-step distilled models: LCM and LCM-LoRA; TCD (and TCD-LoRA); SDXL-Turbo and SDXL-Lightning, which
    # their authors run with Euler and timesteps spaced from the end ("trailing").
    "lcm": ("LCMScheduler", {}),
    "tcd": ("TCDScheduler", {}),
    "euler_trailing": ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
}


def make_scheduler(name: str, base_config: dict[str, Any]) -> Any:
    """A fresh diffusers scheduler `name` (SCHEDULER_CLASSES) over the pipeline's own scheduler config."""
    import diffusers

    class_name, overrides = SCHEDULER_CLASSES[name]
    return getattr(diffusers, class_name).from_config(base_config, **overrides)


@dataclass
class LoadedPipeline:
    pipe: DiffusersPipeline
    base_scheduler_config: dict[str, Any]
    model: ModelInfo
    device: str
    dtype: str
    attention: str
    load_s: float
    lock: threading.Lock
    ip_adapter: AdapterState = field(default_factory=AdapterState)
    lora: LoraState = field(default_factory=LoraState)
    profile: RenderProfile | None = None  # applied at load, None off CUDA
    img2img: DiffusersPipeline | None = None  # StableDiffusionXLImg2ImgPipeline over `pipe`'s components, made on first refine


def img2img_pipeline(loaded: LoadedPipeline) -> DiffusersPipeline:
    """The img2img pipeline sharing the loaded text-to-image pipeline's modules (no second copy of the
    weights: from_pipe hands over the same UNet, VAE and text encoders), made once per loaded pipeline."""
    if loaded.img2img is None:
        from diffusers import StableDiffusionXLImg2ImgPipeline

        loaded.img2img = StableDiffusionXLImg2ImgPipeline.from_pipe(loaded.pipe)
        loaded.img2img.set_progress_bar_config(disable=True)
    return loaded.img2img


def load_refiner(settings: "Settings", name: str, device: str, dtype: str) -> DiffusersPipeline:
    """StableDiffusionXLImg2ImgPipeline from a models.toml sdxl entry (the SDXL refiner), local files only;
    one per (weights, device, dtype), kept in the model cache."""
    from echo_os.models import check_loadable, load_registry
    from echo_os.render.cache import CacheKey, model_cache, weights_bytes

    resolved = load_registry(settings).resolve(name)
    if resolved.entry.type != "sdxl" or resolved.format == "single-file":
        raise UsageError(f"--refiner {name}: a refiner is an sdxl entry in diffusers format (a folder with "
                         "model_index.json); see `echo-os models list`.")

    def load() -> DiffusersPipeline:
        check_loadable(resolved)
        quiet_model_libraries()
        from diffusers import StableDiffusionXLImg2ImgPipeline

        refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(  # type: ignore[no-untyped-call]
            str(resolved.local_path), local_files_only=True, variant=resolved.variant,
            use_safetensors=None if resolved.entry.allow_pickle else True, **dtype_kwargs(dtype))
        refiner.to(device)
        refiner.set_progress_bar_config(disable=True)
        return refiner

    key = CacheKey(REFINER_KIND, str(resolved.local_path), device, (dtype,))
    return model_cache().get(key, load, label=f"{resolved.entry.name} (refiner)", settings=settings,
                             estimate_bytes=weights_bytes(str(resolved.local_path)))


def img2img_steps(steps: int, strength: float) -> int:
    """Denoising steps an img2img call runs: diffusers skips the first (1 - strength) of the schedule."""
    return min(int(steps * strength), steps)


def choose_profile(device: str, dtype: str) -> RenderProfile | None:
    """The render profile for a pipeline: on CUDA the measured default ("default-cuda": bf16, channels_last,
    torch.compile, the fastest SDPA kernel), or ECHO_OS_PROFILE (e.g. "eager" to skip compiling). Only
    exact profiles are chosen here: image-changing ones must be recorded per request. None off CUDA, or when
    the dtype asked for is not the profile's."""
    import os

    from echo_os.engines.cuda_profile import get_profile

    if device != "cuda":
        return None
    name = os.environ.get("ECHO_OS_PROFILE", "default-cuda")
    try:
        profile = get_profile(name)
    except (KeyError, ValueError) as error:
        raise UsageError(f"ECHO_OS_PROFILE={name!r} is not a render profile ({error}).") from None
    if profile.image_changing:
        raise UsageError(f"ECHO_OS_PROFILE={name!r} changes the image; only exact profiles can be the default.")
    if profile.dtype != dtype:
        log.info("render profile %s skipped: it runs in %s, %s was asked for", name, profile.dtype, dtype)
        return None
    return profile


# The model cache's kinds of this module's entries: one pipeline per (weights, device, dtype, attention),
# its img2img view and IP-Adapters inside it; one refiner per (weights, device, dtype).
PIPELINE_KIND = "sdxl"
REFINER_KIND = "sdxl-refiner"


def load_sdxl_pipeline(local_path: Path, *, single_file: bool, device: str, dtype: str, attention: str,
                       config: str | None = None, variant: str | None = None,
                       allow_pickle: bool = False) -> DiffusersPipeline:
    """StableDiffusionXLPipeline from local files only (never the network)."""

    quiet_model_libraries()
    from diffusers import StableDiffusionXLPipeline

    loading_dtype = dtype_kwargs(dtype)
    if single_file:
        # Without a local config folder diffusers would fetch the configs and tokenizers from the Hub.
        if not config:
            raise UsageError(f"single-file checkpoint {local_path} needs a local config folder "
                             "(`config` in models.toml); see docs/models.md.")
        pipe = StableDiffusionXLPipeline.from_single_file(str(local_path), config=config, local_files_only=True,
                                                          **loading_dtype)
    else:
        pipe = StableDiffusionXLPipeline.from_pretrained(  # type: ignore[no-untyped-call]
            str(local_path), local_files_only=True, variant=variant,
            use_safetensors=None if allow_pickle else True, **loading_dtype)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    if attention == "xformers":
        try:
            import xformers  # noqa: F401 - only to check it imports (find_spec would not)
        except ImportError:
            raise UsageError("--attention xformers needs the xformers package: pip install 'echo-os[xformers]'; "
                             "or use --attention sdpa.") from None
        pipe.enable_xformers_memory_efficient_attention()
    return pipe


class SDXLOptions(EngineOptions):
    """Options of the sdxl and cpu engines beyond the shared request fields (`--option KEY=VALUE`)."""

    guidance_rescale: float = Field(default=0.0, ge=0.0, le=1.0, allow_inf_nan=False,
                                    description="Rescale of the guided noise (diffusers' guidance_rescale).")
    clip_skip: int | None = Field(default=None, ge=1, le=10,
                                  description="Text-encoder layers skipped from the end (diffusers' clip_skip).")


class SDXLEngine(BaseEngine):
    """SDXL in-process, on a CUDA GPU (or --device mps). `auto` asks it first in the default order."""

    name = "sdxl"
    capabilities = Capabilities(txt2img=True, img2img=True, refiner=True, reference_images=True, loras=True,
                                max_batch=16, needs_weights=True, tiled_decode=True, tiling=True)
    Options = SDXLOptions
    force_device: str | None = None

    def __init__(self, settings: "Settings", reason: str = "", *, name: str | None = None,
                 force_device: str | None = None):
        if name is not None:
            self.name = name  # the cpu engine's instances, when made directly (tests, benchmarks)
        if force_device is not None:
            self.force_device = force_device
        super().__init__(settings, reason)
        # Latent previews on the progress events (throttled; benchmarks/previews.py measures the cost).
        self.previews = True
        self.preview_budget = PREVIEW_BUDGET  # the share of render time previews may take (render/preview.py)

    @classmethod
    def availability(cls, settings: "Settings", request: RenderRequest) -> str | None:
        device = pick_device(request.device)  # --device cuda/mps without one is the user's error: raises
        if device == "cpu":
            return "--device cpu" if request.device == "cpu" else "no CUDA GPU"
        return None

    @classmethod
    def check_request(cls, settings: "Settings", request: RenderRequest, options: EngineOptions) -> None:
        """Its model must be an sdxl entry (wherever the weights are): `auto` skips it for another kind."""
        from echo_os.models import load_registry

        entry = load_registry(settings).get(request.model)
        if entry.type != "sdxl":
            raise OptionError(f"{entry.label} is a {entry.type} model, not an SDXL pipeline; pick an sdxl entry "
                              "(see `echo-os models list`)", "model")

    @classmethod
    def check_runtime(cls, settings: "Settings", request: RenderRequest) -> None:
        """A device this machine lacks, or xformers attention without the xformers package: refused before
        anything is queued (the same rules loading applies)."""
        import importlib.util


        check_device(request.device)
        if request.attention == "xformers" and importlib.util.find_spec("xformers") is None:
            raise OptionError("attention xformers needs the xformers package (pip install 'echo-os[xformers]'); "
                              "or use attention sdpa", "attention")

    def runs_on_cpu(self, request: RenderRequest) -> bool:
        """Whether `request` would render on the CPU (the scheduler batches differently there)."""
        return pick_device(self.force_device or request.device) == "cpu"

    def free_memory(self, request: RenderRequest) -> MemoryInfo | None:
        """Free GPU memory after loading `request`'s pipeline; None off CUDA (no memory limit to size by)."""
        if pick_device(self.force_device or request.device) != "cuda":
            return None
        loaded = self.loaded(request)
        import torch

        free, _total = torch.cuda.mem_get_info()
        return MemoryInfo(free_bytes=int(free), dtype=loaded.dtype)

    def release(self, request: RenderRequest) -> None:
        """Drop the warm pipelines of `request`'s weights (every device and dtype), and its refiner, from the
        model cache and free their memory."""
        from echo_os.models import load_registry
        from echo_os.render.cache import model_cache

        registry = load_registry(self.settings)
        paths = {str(registry.resolve(request.model).local_path)}
        if request.refiner is not None:
            paths.add(str(registry.resolve(request.refiner.model).local_path))
        model_cache().release(lambda key: key.kind in (PIPELINE_KIND, REFINER_KIND) and key.path in paths)

    # -- loading ----------------------------------------------------------------------------------
    def loaded(self, request: RenderRequest) -> LoadedPipeline:
        from echo_os.models import check_loadable, load_registry, model_info

        resolved = load_registry(self.settings).resolve(request.model)
        if resolved.entry.type != "sdxl":
            raise UsageError(f"{resolved.entry.label} is a {resolved.entry.type} model, not an SDXL pipeline; "
                             "pick an sdxl entry (see `echo-os models list`).")
        device = pick_device(self.force_device or request.device)
        dtype = pick_dtype(request.dtype, device)
        from echo_os.render.cache import CacheKey, model_cache, weights_bytes

        def load() -> LoadedPipeline:
            check_loadable(resolved)
            started = time.perf_counter()
            pipe = load_sdxl_pipeline(
                resolved.local_path, single_file=resolved.format == "single-file", device=device, dtype=dtype,
                attention=request.attention, config=str(resolved.config_path) if resolved.config_path else None,
                variant=resolved.variant, allow_pickle=resolved.entry.allow_pickle)
            loaded = LoadedPipeline(pipe=pipe, base_scheduler_config=dict(pipe.scheduler.config),
                                    model=model_info(self.settings, resolved), device=device, dtype=dtype,
                                    attention=request.attention, load_s=time.perf_counter() - started,
                                    lock=threading.Lock(), profile=choose_profile(device, dtype))
            if loaded.profile is not None:
                from echo_os.engines.cuda_profile import apply_profile

                # Compiling is lazy: each new (batch, size) shape pays it once on its first call.
                apply_profile(pipe, loaded.profile, device, cache_dir=self.settings.cache_dir / "torch-compile")
            log.info("loaded %s on %s/%s in %.1fs", resolved.entry.name, device, dtype, loaded.load_s)
            return loaded

        key = CacheKey(PIPELINE_KIND, str(resolved.local_path), device, (dtype, request.attention))
        return model_cache().get(key, load, label=resolved.entry.name, settings=self.settings,
                                 estimate_bytes=weights_bytes(str(resolved.local_path)))

    # -- rendering --------------------------------------------------------------------------------
    def render(self, requests: list[RenderRequest], *, progress: ProgressCallback | None = None,
               cancel: threading.Event | None = None, vae_tiling: bool = False) -> list[RenderResult]:
        """vae_tiling: decode tile by tile (capabilities.tiled_decode): one image that does not fit otherwise."""
        if not requests:
            return []
        keys = {request.batch_key() for request in requests}
        if len(keys) > 1:
            # The scheduler groups compatible requests; mixed ones are rendered one group at a time.
            results: dict[int, RenderResult] = {}
            for key in keys:
                group = [(i, r) for i, r in enumerate(requests) if r.batch_key() == key]
                for (i, _), result in zip(group, self.render([r for _, r in group], progress=progress, cancel=cancel,
                                                             vae_tiling=vae_tiling)):
                    results[i] = result
            return [results[i] for i in range(len(requests))]

        loaded = self.loaded(requests[0])
        with loaded.lock:
            return self._render_batch(loaded, requests, progress, cancel, vae_tiling)

    def _render_batch(self, loaded: LoadedPipeline, requests: list[RenderRequest], progress: ProgressCallback | None,
                      cancel: threading.Event | None, vae_tiling: bool) -> list[RenderResult]:
        import torch

        first = requests[0]
        pipe = loaded.pipe
        pipe.scheduler = make_scheduler(first.scheduler, loaded.base_scheduler_config)
        call_args: dict[str, Any] = {"width": first.width, "height": first.height}
        total_steps = first.steps
        if first.init_image is not None:  # refine: img2img over the same modules (batch_key: one init image)
            if img2img_steps(first.steps, first.init_image.strength) < 1:
                raise UsageError(f"--strength {first.init_image.strength:g} with {first.steps} steps denoises no "
                                 "step; raise --strength or --steps.")
            init = load_init_image(self.settings, first.init_image)
            pipe = img2img_pipeline(loaded)
            pipe.scheduler = make_scheduler(first.scheduler, loaded.base_scheduler_config)
            call_args = {"image": [init] * sum(r.count for r in requests), "strength": first.init_image.strength}
            total_steps = img2img_steps(first.steps, first.init_image.strength)
        adapter_info = ensure_adapters(self.settings, loaded, first.ip_adapter)
        apply_loras(self.settings, loaded, first.loras)  # requests in one call share their LoRAs (batch_key)
        extra: dict[str, Any] = {}
        if first.ip_adapter is not None:
            guidance = first.cfg > 1 and pipe.unet.config.time_cond_proj_dim is None  # as the pipeline decides
            extra["ip_adapter_image_embeds"] = reference_embeds(self.settings, loaded, first.ip_adapter, guidance)
        if vae_tiling:
            pipe.vae.enable_tiling()
        else:
            pipe.vae.disable_tiling()
        options = SDXLOptions.model_validate(dict(first.options)).model_dump(exclude_defaults=True)
        prompts, negatives, generators = [], [], []
        for request in requests:
            for seed in request.seeds:
                prompts.append(request.full_prompt)
                negatives.append(request.negative_prompt)
                # CPU generators on every device: the same seed gives the same noise on any machine.
                generators.append(torch.Generator("cpu").manual_seed(seed))
        images_total = len(prompts)

        steps_done = [0]  # across the base and the refiner stage
        # TAESD-XL when models.toml has one here (sharper previews), else None: the linear latent map. Loaded
        # before the throttle starts its clock, so a first load does not count as render time in its budget.
        decoder = None
        if self.previews and progress is not None:
            decoder = preview_decoder(self.settings, loaded.device, pipe.unet.dtype)
        throttle = PreviewThrottle(budget=self.preview_budget) if self.previews else None

        def on_step_end(pipeline: DiffusersPipeline, step: int, timestep: Any,
                        callback_kwargs: dict[str, Any]) -> dict[str, Any]:
            steps_done[0] += 1
            if progress is not None and steps_done[0] <= total_steps:
                preview = None
                if throttle is not None and throttle.due(steps_done[0], total_steps):
                    started_preview = time.perf_counter()
                    if decoder is not None and throttle.affords(decoder.cost_s):  # sharp when it fits the budget
                        preview = decoder.decode(callback_kwargs["latents"])
                    else:
                        preview = latent_preview(callback_kwargs["latents"])
                    throttle.spend(time.perf_counter() - started_preview)
                progress(ProgressEvent(step=steps_done[0], total_steps=total_steps, images=images_total,
                                       preview=preview))
            if cancel is not None and cancel.is_set():
                pipeline._interrupt = True
            return callback_kwargs

        started = time.perf_counter()
        if loaded.profile is not None:
            from echo_os.engines.cuda_profile import sdpa_context

            attention_kernel = sdpa_context(loaded.profile, loaded.device)
        else:
            import contextlib

            attention_kernel = contextlib.nullcontext()
        from echo_os.engines.tiling import tiled_convolutions

        # Tiling covers the denoise and the decode (UNet and VAE), and is undone before the next call.
        with torch.inference_mode(), attention_kernel, tiled_convolutions(pipe, first.tile):
            if first.refiner is not None:
                call_args["denoising_end"] = first.refiner.switch
            latents = pipe(
                # No negative prompt given (None; batch_key keeps None and text apart): pass none, so the
                # model's force_zeros_for_empty_prompt decides, as a plain pipe(prompt=...) does.
                prompt=prompts, negative_prompt=None if first.negative_prompt is None else negatives,
                generator=generators,
                num_inference_steps=first.steps, guidance_scale=first.cfg, output_type="latent", **call_args,
                callback_on_step_end=on_step_end, **options, **extra,
            ).images
            if first.refiner is not None and not (cancel is not None and cancel.is_set()):
                # SDXL's ensemble of experts: the refiner denoises the rest of the same schedule from the
                # base's latents, with the same per-image generators carrying on.
                refiner = load_refiner(self.settings, first.refiner.model, loaded.device, loaded.dtype)
                refiner.scheduler = make_scheduler(first.scheduler, dict(refiner.scheduler.config))
                if vae_tiling:
                    refiner.vae.enable_tiling()
                else:
                    refiner.vae.disable_tiling()
                latents = refiner(
                    prompt=prompts, negative_prompt=None if first.negative_prompt is None else negatives,
                    image=latents, generator=generators, num_inference_steps=first.steps,
                    guidance_scale=first.cfg, denoising_start=first.refiner.switch, output_type="latent",
                    callback_on_step_end=on_step_end,
                ).images
                pipe = refiner  # its VAE decodes (the refiner's own, as a direct two-stage call does)
            if cancel is not None and cancel.is_set():
                raise CancelledError("render cancelled; unfinished images were not saved")
            if not bool(torch.isfinite(latents).all()):  # decoded, NaN becomes a black image saved as if fine
                raise ModelError(f"model {first.model} denoised to NaN or infinite values (weights holding NaN, "
                                 f"or {loaded.dtype} overflowing): nothing was saved; check the weights with "
                                 f"`echo-os models verify {first.model}`, or try --dtype float32")
            if loaded.device == "cuda":
                torch.cuda.synchronize()
            denoised = time.perf_counter()
            # The VAE decode, separate so the profile's vae_batch (CUDA) can chunk it, in chunks that look
            # at the cancel flag between them.
            from echo_os.engines.cuda_profile import decode_latents

            vae_batch = loaded.profile.vae_batch if loaded.profile is not None else None
            pil_images = decode_latents(pipe, latents, vae_batch, output_type="pil", cancel=cancel)
        decoded = time.perf_counter()

        runtime = RuntimeInfo(engine=self.name, reason=self.reason, device=loaded.device, dtype=loaded.dtype,
                              attention=loaded.attention, model=loaded.model, ip_adapter=adapter_info,
                              vae_tiling=vae_tiling,
                              profile=loaded.profile.name if loaded.profile is not None else None)
        results, offset = [], 0
        for request in requests:
            rendered = [RenderedImage(image=pil_images[offset + i], seed=seed) for i, seed in enumerate(request.seeds)]
            offset += request.count
            share = request.count / images_total
            timings = Timings(load_s=loaded.load_s, denoise_s=(denoised - started) * share,
                              decode_s=(decoded - denoised) * share)
            results.append(RenderResult(request=request, images=rendered, runtime=runtime, timings=timings))
        loaded.load_s = 0.0  # paid once; later renders record 0
        return results


class CPUEngine(SDXLEngine):
    """The same SDXL pipelines on the CPU: the no-GPU fallback, at a smaller default size."""

    name = "cpu"
    force_device = "cpu"

    @classmethod
    def availability(cls, settings: "Settings", request: RenderRequest) -> str | None:
        if request.device not in ("auto", "cpu"):
            return f"--device {request.device}"
        return None

    @classmethod
    def default_size(cls, settings: "Settings") -> tuple[int, int]:
        """settings.cpu_size (ECHO_OS_CPU_SIZE, default 512x512): SDXL at 1024x1024 takes many minutes an
        image on a CPU; 512x512 is a quarter of the pixels, still SDXL."""
        from echo_os.render.requests import MAX_SIDE, parse_size

        try:
            width, height = parse_size(settings.cpu_size)
        except UsageError:
            width = height = 0
        if not all(0 < side <= MAX_SIDE and side % 8 == 0 for side in (width, height)):
            raise UsageError(f"ECHO_OS_CPU_SIZE must be WIDTHxHEIGHT in multiples of 8 up to {MAX_SIDE} "
                             f"(for example 512x512), got {settings.cpu_size!r}.")
        return width, height


@hookimpl
def register_engines(register: Callable[[type[Any]], object]) -> None:
    register(SDXLEngine)
    register(CPUEngine)


def loaded_pipelines() -> list[LoadedPipeline]:
    """The SDXL pipelines the model cache holds now."""
    from echo_os.render.cache import model_cache

    cache = model_cache()
    return [value for key in cache.keys() if key.kind == PIPELINE_KIND and (value := cache.peek(key)) is not None]


def clear_pipeline_cache() -> None:
    """Drop every SDXL pipeline and refiner from the model cache (tests, benchmarks)."""
    from echo_os.render.cache import model_cache

    model_cache().release(lambda key: key.kind in (PIPELINE_KIND, REFINER_KIND))
