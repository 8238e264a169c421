"""The `video` engine: image-to-video with Stable Video Diffusion (diffusers' StableVideoDiffusionPipeline).

A registered engine plugin whose output kind is "video" (Capabilities.output): `auto` asks it only for
requests with `output = "video"`, and it renders only those. A request is one clip per seed from its
`init_image` (the scene image), through the one renderer (echo_os.render.scheduler.render_requests) like
any image, with progress, cancel and the API's exactly-once recording:

    RenderRequest(prompt=..., output="video", engine="video", model="svd", init_image=InitImage(...),
                  steps=25, cfg=3.0, width=1024, height=576, options={"frames": 14, "fps": 7})

`cfg` is SVD's max guidance; the rest of SVD's settings are the engine's options (VideoOptions). Each result
is the clip's first frame with the clip (RenderedImage.video); the renderer saves it as a video artifact
(echo_os.artifacts.video.save_clip). `render_clip(image, ClipRequest)` is the same call on an image in memory.

The pipeline comes from a models.toml entry of `type = "video"` (a diffusers pipeline folder, resolved offline
by models/resolve.py, weights checked before loading) and is kept in the one model cache
(echo_os/render/cache.py) per (weights, device, dtype, offload). Progress and cancellation go through
diffusers' callback_on_step_end (the SVD pipeline has no `interrupt` flag, so a cancel raises out of the
callback). Denoising returns latents; decoding is a separate step so that an out-of-memory while decoding
halves `decode_chunk_size` and decodes again, without denoising again. `cpu_offload` (accelerate's model CPU
offload) fits SVD on small GPUs; on a CPU it is meaningless.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from pydantic import Field

from echo_os.engines.base import (
    BaseEngine,
    Capabilities,
    EngineOptions,
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
    runs_on_cpu,
)
from echo_os.engines.hookspecs import hookimpl
from echo_os.errors import CancelledError, EchoError, OptionError, UsageError
from echo_os.render.requests import DEFAULT_VIDEO_MODEL as DEFAULT_VIDEO_MODEL
from echo_os.render.requests import MAX_FRAMES, ClipRequest
from echo_os.render.results import RenderedVideo

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from echo_os.render.requests import RenderRequest
    from echo_os.settings import Settings

log = logging.getLogger(__name__)

# A clip's source: a PIL image, or a (1, 3, H, W) tensor in [0, 1] as the pipeline takes it.
ClipImage: TypeAlias = "Image.Image | torch.Tensor"

@dataclass(frozen=True)
class ClipRuntime:
    engine: str
    device: str
    dtype: str
    model: ModelInfo
    cpu_offload: bool
    decode_chunk_size: int  # what decoding finally used (after any out-of-memory halving)


@dataclass
class ClipResult:
    frames: list[Image.Image]  # frame order
    request: ClipRequest
    width: int
    height: int
    runtime: ClipRuntime
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class LoadedVideoPipeline:
    pipe: DiffusersPipeline
    model: ModelInfo
    device: str
    dtype: str
    cpu_offload: bool
    lock: threading.Lock


# The model cache's kind of this module's entries: one pipeline per (weights, device, dtype, offload).
VIDEO_KIND = "video"


def load_video_pipeline(local_path: Path, *, device: str, dtype: str, variant: str | None, cpu_offload: bool,
                        allow_pickle: bool = False) -> DiffusersPipeline:
    """StableVideoDiffusionPipeline from local files only (never the network)."""
    quiet_model_libraries()
    from diffusers import StableVideoDiffusionPipeline

    pipe = StableVideoDiffusionPipeline.from_pretrained(  # type: ignore[no-untyped-call]
        str(local_path), local_files_only=True, variant=variant, use_safetensors=None if allow_pickle else True,
        **dtype_kwargs(dtype))
    if cpu_offload:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def clear_video_pipelines() -> None:
    """Drop every video pipeline from the model cache (tests)."""
    from echo_os.render.cache import model_cache

    model_cache().release(lambda key: key.kind == VIDEO_KIND)


class _Cancel(Exception):
    """Raised out of callback_on_step_end to stop the denoising loop."""


class VideoOptions(EngineOptions):
    """SVD's settings beyond the shared request fields (steps, cfg as the max guidance, size, seed, device)."""

    frames: int = Field(default=14, ge=2, le=MAX_FRAMES, description="Frames to generate.")
    fps: int = Field(default=7, ge=1, le=60, description="Frame rate of the clip (also conditions SVD).")
    motion_bucket: int = Field(default=127, ge=0, le=1023, description="SVD's amount of motion.")
    noise_aug: float = Field(default=0.02, ge=0.0, le=1.0, allow_inf_nan=False,
                             description="Noise added to the image before encoding.")
    min_cfg: float = Field(default=1.0, ge=0.0, le=30.0, allow_inf_nan=False,
                           description="Guidance of the first frame (it rises to cfg at the last).")
    decode_chunk_size: int | None = Field(default=None, ge=1, le=MAX_FRAMES,
                                          description="Frames per VAE decode (default: all).")
    cpu_offload: bool = Field(default=False, description="Keep only the running model on the GPU.")


def clip_request(request: "RenderRequest", seed: int | None = None) -> ClipRequest:
    """The ClipRequest of a video RenderRequest (the request's seed, or `seed`)."""
    options = VideoOptions.model_validate(dict(request.options))
    return ClipRequest(seed=request.seed if seed is None else seed, model=request.model, frames=options.frames,
                       fps=options.fps, motion_bucket=options.motion_bucket, noise_aug=options.noise_aug,
                       steps=request.steps, min_cfg=options.min_cfg, max_cfg=request.cfg, width=request.width,
                       height=request.height, decode_chunk_size=options.decode_chunk_size,
                       cpu_offload=options.cpu_offload, device=request.device, dtype=request.dtype)


class VideoEngine(BaseEngine):
    """Clips from images: one per seed of each request, from its init_image."""

    name = "video"
    capabilities = Capabilities(output="video", txt2img=False, img2img=True, needs_weights=True, max_batch=1)
    Options = VideoOptions

    def __init__(self, settings: "Settings", reason: str = ""):
        super().__init__(settings, reason)

    @classmethod
    def check_request(cls, settings: "Settings", request: "RenderRequest", options: EngineOptions) -> None:
        """What SVD refuses on any machine: no source image, cfg below min_cfg, a chunk above the frames."""
        from echo_os.models import load_registry

        if request.init_image is None:
            raise OptionError("a clip starts from an image: give the image (init_image)", "init_image")
        clip_request(request).check()
        entry = load_registry(settings).get(request.model)
        if entry.type != "video":  # wherever its weights are
            raise OptionError(f"{entry.label} is a {entry.type} model, not an image-to-video pipeline; pick a "
                              "`type = \"video\"` entry (see `echo-os models list`)", "model")

    @classmethod
    def check_runtime(cls, settings: "Settings", request: "RenderRequest") -> None:
        check_device(request.device)

    def runs_on_cpu(self, request: "RenderRequest") -> bool:
        return runs_on_cpu(request.device)

    def release(self, request: "RenderRequest") -> None:
        """Drop `request`'s video pipelines from the model cache."""
        from echo_os.models import load_registry
        from echo_os.render.cache import model_cache

        path = str(load_registry(self.settings).resolve(request.model).local_path)
        model_cache().release(lambda key: key.kind == VIDEO_KIND and key.path == path)

    def render(self, requests: list["RenderRequest"], *, progress: ProgressCallback | None = None,
               cancel: threading.Event | None = None) -> list[RenderResult]:
        """One clip per seed of each request; progress counts the steps of every clip of the call in turn."""
        from echo_os.engines.inputs import load_init_image

        clips_total = sum(request.count for request in requests)
        total_steps = sum(request.count * request.steps for request in requests)
        done_steps = 0
        results = []
        for request in requests:
            if request.init_image is None:
                raise UsageError("a clip starts from an image: the request has no init_image.")
            image = load_init_image(self.settings, request.init_image)
            rendered, timings, runtime = [], Timings(), None
            for seed in request.seeds:
                def on_step(event: ProgressEvent, before: int = done_steps) -> None:
                    if progress is not None:
                        progress(ProgressEvent(step=before + event.step, total_steps=total_steps, images=clips_total))

                clip = self.render_clip(image, clip_request(request, seed), progress=on_step, cancel=cancel)
                done_steps += request.steps
                settings = {**dataclasses.asdict(clip.request), "width": clip.width, "height": clip.height,
                            "device": clip.runtime.device, "dtype": clip.runtime.dtype,
                            "decode_chunk_size_used": clip.runtime.decode_chunk_size}
                rendered.append(RenderedImage(image=clip.frames[0], seed=seed,
                                              video=RenderedVideo(frames=clip.frames, fps=clip.request.fps,
                                                                  settings=settings)))
                timings.load_s += clip.timings.get("load_s", 0.0)
                timings.denoise_s += clip.timings["denoise_s"]
                timings.decode_s += clip.timings["decode_s"]
                runtime = RuntimeInfo(engine=self.name, reason=self.reason, device=clip.runtime.device,
                                      dtype=clip.runtime.dtype, attention=request.attention, model=clip.runtime.model)
            assert runtime is not None
            results.append(RenderResult(request=request, images=rendered, runtime=runtime, timings=timings))
        return results

    def loaded(self, request: ClipRequest) -> LoadedVideoPipeline:
        from echo_os.models import check_loadable, load_registry, model_info

        registry = load_registry(self.settings)
        entry = registry.get(request.model)
        if entry.type != "video":  # before resolving: the type is wrong wherever the weights are
            raise UsageError(f"{entry.label} is a {entry.type} model, not an image-to-video pipeline; pick a "
                             "`type = \"video\"` entry (see `echo-os models list`).")
        resolved = registry.resolve(request.model)
        device = pick_device(request.device)
        dtype = pick_dtype(request.dtype, device)
        if device == "cuda" and dtype == "bfloat16":
            dtype = "float16"  # SVD's weights are published in fp16; its VAE upcasts itself for decoding
        offload = request.cpu_offload and device != "cpu"
        from echo_os.render.cache import CacheKey, model_cache, weights_bytes

        def load() -> LoadedVideoPipeline:
            check_loadable(resolved)
            started = time.perf_counter()
            pipe = load_video_pipeline(resolved.local_path, device=device, dtype=dtype, variant=resolved.variant,
                                       cpu_offload=offload, allow_pickle=resolved.entry.allow_pickle)
            log.info("loaded %s on %s/%s in %.1fs", resolved.entry.name, device, dtype, time.perf_counter() - started)
            return LoadedVideoPipeline(pipe=pipe, model=model_info(self.settings, resolved), device=device,
                                       dtype=dtype, cpu_offload=offload, lock=threading.Lock())

        # With CPU offload the weights wait in RAM and visit the GPU a module at a time: they count as RAM.
        key = CacheKey(VIDEO_KIND, str(resolved.local_path), "cpu" if offload else device, (dtype, offload))
        return model_cache().get(key, load, label=resolved.entry.name, settings=self.settings,
                                 estimate_bytes=weights_bytes(str(resolved.local_path)))

    def render_clip(self, image: ClipImage, request: ClipRequest, *,
                    progress: Callable[[ProgressEvent], None] | None = None,
                    cancel: threading.Event | None = None) -> ClipResult:
        """A clip from `image` (a PIL image, or a (1, 3, H, W) tensor in [0, 1] as the pipeline takes it)."""
        import torch

        request.check()
        width, height = clip_size(image, request)
        loading = time.perf_counter()
        loaded = self.loaded(request)
        load_s = round(time.perf_counter() - loading, 4)  # ~0 when the model cache had it
        pipe = loaded.pipe
        image = encoder_input(pipe, image)

        def on_step_end(pipeline: DiffusersPipeline, step: int, timestep: Any,
                        callback_kwargs: dict[str, Any]) -> dict[str, Any]:
            if progress is not None:
                progress(ProgressEvent(step=step + 1, total_steps=request.steps, images=1))
            if cancel is not None and cancel.is_set():
                raise _Cancel()
            return callback_kwargs

        timings: dict[str, float] = {"load_s": load_s}
        with loaded.lock, torch.inference_mode():
            started = time.perf_counter()
            try:
                latents = pipe(
                    image, height=height, width=width, num_frames=request.frames,
                    num_inference_steps=request.steps, min_guidance_scale=request.min_cfg,
                    max_guidance_scale=request.max_cfg, fps=request.fps, motion_bucket_id=request.motion_bucket,
                    noise_aug_strength=request.noise_aug, generator=torch.Generator("cpu").manual_seed(request.seed),
                    output_type="latent", callback_on_step_end=on_step_end,
                ).frames
            except _Cancel:
                raise CancelledError("clip cancelled; nothing was saved") from None
            except Exception as error:
                from echo_os.errors import is_out_of_memory

                if is_out_of_memory(error):
                    raise EchoError("out of GPU memory while denoising the clip; try --cpu-offload, fewer --frames "
                                    "or a smaller --size.") from None
                raise
            timings["denoise_s"] = round(time.perf_counter() - started, 4)
            started = time.perf_counter()
            frames, chunk = decode_frames(pipe, latents, request.frames, request.decode_chunk_size or request.frames)
            timings["decode_s"] = round(time.perf_counter() - started, 4)
        runtime = ClipRuntime(engine=self.name, device=loaded.device, dtype=loaded.dtype, model=loaded.model,
                              cpu_offload=loaded.cpu_offload, decode_chunk_size=chunk)
        return ClipResult(frames=frames, request=request, width=width, height=height, runtime=runtime, timings=timings)


def decode_frames(pipe: DiffusersPipeline, latents: "torch.Tensor", frames: int,
                  chunk: int) -> tuple[list[Image.Image], int]:
    """The pipeline's own decode (decode_latents + postprocess_video), halving the chunk on out-of-memory."""
    import torch

    from echo_os.errors import is_out_of_memory

    while True:
        try:
            decoded = pipe.decode_latents(latents, frames, chunk)
            clip: list[Image.Image] = pipe.video_processor.postprocess_video(video=decoded, output_type="pil")[0]
            return clip, chunk
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            if chunk == 1:
                raise EchoError("out of GPU memory decoding the clip even one frame at a time; try --cpu-offload "
                                "or a smaller --size.") from None
            torch.cuda.empty_cache()
            chunk = max(1, chunk // 2)
            log.warning("out of memory decoding the clip; decoding %d frames at a time", chunk)


def encoder_input(pipe: DiffusersPipeline, image: ClipImage) -> ClipImage:
    """What to hand the pipeline. It resizes a PIL image to 224x224 for its CLIP image encoder (SVD's is trained
    at 224); an encoder of another size gets the image as a (1, 3, S, S) tensor in [0, 1] at its own size,
    which the pipeline passes through as is. Tensors are passed through unchanged."""
    size = int(getattr(pipe.image_encoder.config, "image_size", 224))
    from PIL import Image

    if size == 224 or not isinstance(image, Image.Image):
        return image
    import numpy as np
    import torch

    square = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(square, dtype=np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0)


def clip_size(image: ClipImage, request: ClipRequest) -> tuple[int, int]:
    """(width, height) of the clip: the request's, else the image's rounded down to multiples of 64."""
    if request.width is not None and request.height is not None:
        return request.width, request.height
    from PIL import Image

    if isinstance(image, Image.Image):
        width, height = image.size
    else:  # a tensor (..., H, W)
        height, width = int(image.shape[-2]), int(image.shape[-1])
    width, height = request.width or max(64, width - width % 64), request.height or max(64, height - height % 64)
    return width, height


@hookimpl
def register_engines(register: Callable[[type[Any]], object]) -> None:
    register(VideoEngine)
