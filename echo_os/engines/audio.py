"""The `stable-audio` engine: text-to-audio with diffusers' StableAudioPipeline, output kind "audio".

    RenderRequest(prompt="rain on a tin roof, distant thunder", output="audio", engine="stable-audio",
                  model="stable-audio-open", steps=100, cfg=7.0, options={"seconds": 10})

The pipeline comes from a models.toml entry of `type = "audio"` (a diffusers pipeline folder, resolved offline,
weights checked before loading; `echo-os models pull stable-audio-open`) and is kept in the one model cache.
It renders `seconds` of sound at the VAE's sampling rate (44.1 kHz stereo for Stable Audio Open, up to the
length its transformer covers: 47 s), one per seed from a CPU generator (the same seed gives the same
samples). Progress is the pipeline's per-step callback; cancel raises out of it. Stable Audio Open's folder
names CosineDPMSolverMultistepScheduler, which needs torchsde (a dependency for that reason).

AudioLDM 2 folders (AudioLDM2Pipeline) are not rendered by this engine yet: an entry of that pipeline is
refused in one line.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from echo_os.engines.base import (
    BaseEngine,
    Capabilities,
    ProgressCallback,
    ProgressEvent,
    RenderedImage,
    RenderResult,
    RuntimeInfo,
    Timings,
)
from echo_os.engines.devices import runs_on_cpu
from echo_os.engines.draft_assets import AudioOptions
from echo_os.engines.folder_pipeline import LoadedPipeline, cached_folder_pipeline, release_folder_pipelines
from echo_os.engines.hookspecs import hookimpl
from echo_os.errors import CancelledError, OptionError, UsageError
from echo_os.render.results import RenderedAsset

if TYPE_CHECKING:
    from echo_os.render.requests import RenderRequest
    from echo_os.settings import Settings

log = logging.getLogger(__name__)
AUDIO_KIND = "audio-pipeline"  # the model cache's kind of this module's entries


class StableAudioOptions(AudioOptions):
    """`seconds` as the draft's; `sample_rate` does not apply (the model's own rate is used)."""




class _Cancel(Exception):
    pass




def _longest_seconds(settings: "Settings", model: str) -> float | None:
    """The longest sound a Stable Audio folder makes (transformer sample_size x VAE hop / sampling rate), read
    from its configs before anything loads; None when the weights are not here or the folder is another kind."""
    import json
    import math

    from echo_os.models import ResolveError, load_registry

    try:
        folder = load_registry(settings).resolve(model).local_path
        transformer = json.loads((folder / "transformer" / "config.json").read_text(encoding="utf-8"))
        vae = json.loads((folder / "vae" / "config.json").read_text(encoding="utf-8"))
        hop = math.prod(vae["downsampling_ratios"])
        return float(transformer["sample_size"] * hop / vae["sampling_rate"])
    except (ResolveError, OSError, ValueError, KeyError, TypeError):
        return None


class StableAudioEngine(BaseEngine):
    """A sound per seed from a text prompt (Stable Audio)."""

    name = "stable-audio"
    capabilities = Capabilities(output="audio", needs_weights=True, max_batch=1)
    Options = StableAudioOptions

    @classmethod
    def check_request(cls, settings: "Settings", request: "RenderRequest", options: Any) -> None:
        from echo_os.models import load_registry

        entry = load_registry(settings).get(request.model)
        if entry.type != "audio":
            raise OptionError(f"{entry.label} is a {entry.type} model, not a text-to-audio pipeline; pick a "
                              "`type = \"audio\"` entry such as stable-audio-open (see `echo-os models list`)", "model")
        longest = _longest_seconds(settings, request.model)
        if longest is not None and options.seconds > longest + 1e-9:
            raise OptionError(f"--seconds {options.seconds:g} is longer than {request.model} makes "
                              f"({longest:g} s at most)", "seconds")

    def runs_on_cpu(self, request: "RenderRequest") -> bool:
        return runs_on_cpu(request.device)

    def release(self, request: "RenderRequest") -> None:
        release_folder_pipelines(self.settings, request.model, AUDIO_KIND)

    def loaded(self, request: "RenderRequest") -> LoadedPipeline:
        return cached_folder_pipeline(self.settings, request, AUDIO_KIND)

    def render(self, requests: list["RenderRequest"], *, progress: ProgressCallback | None = None,
               cancel: threading.Event | None = None) -> list[RenderResult]:
        import numpy as np
        import torch

        from echo_os.artifacts.assets import audio_preview

        total = sum(request.count * request.steps for request in requests)
        sounds = sum(request.count for request in requests)
        done = 0
        results = []
        for request in requests:
            options = StableAudioOptions.model_validate(dict(request.options))
            timings = Timings()
            started = time.perf_counter()
            loaded = self.loaded(request)
            timings.load_s = round(time.perf_counter() - started, 4)
            pipe = loaded.pipe
            if type(pipe).__name__ != "StableAudioPipeline":
                raise UsageError(f"model {request.model} is a {type(pipe).__name__}; the stable-audio engine renders "
                                 "StableAudioPipeline folders only (AudioLDM 2 is not wired yet).")
            rate = int(pipe.vae.config.sampling_rate)
            longest = pipe.transformer.config.sample_size * pipe.vae.hop_length / rate
            if options.seconds > longest + 1e-9:
                raise OptionError(f"--seconds {options.seconds:g} is longer than {request.model} makes "
                                  f"({longest:g} s at most)", "seconds")

            def on_step(step: int, timestep: Any, latents: Any) -> None:
                nonlocal done
                done += 1
                if progress is not None:
                    progress(ProgressEvent(step=done, total_steps=total, images=sounds))
                if cancel is not None and cancel.is_set():
                    raise _Cancel()

            outputs = []
            with loaded.lock, torch.inference_mode():
                for seed in request.seeds:
                    if cancel is not None and cancel.is_set():
                        raise CancelledError("sound cancelled; nothing was saved")
                    began = time.perf_counter()
                    try:
                        audios = pipe(request.prompt, negative_prompt=request.negative_prompt,
                                      audio_end_in_s=options.seconds, num_inference_steps=request.steps,
                                      guidance_scale=request.cfg, generator=torch.Generator("cpu").manual_seed(seed),
                                      callback=on_step, callback_steps=1).audios
                    except _Cancel:
                        raise CancelledError("sound cancelled; nothing was saved") from None
                    timings.denoise_s += round(time.perf_counter() - began, 4)
                    samples = np.clip(audios[0].float().cpu().numpy().T, -1.0, 1.0)  # (frames, channels)
                    outputs.append(RenderedImage(image=audio_preview(samples, rate), seed=seed, asset=RenderedAsset(
                        kind="audio", data=samples, sample_rate=rate,
                        settings={"seconds": options.seconds, "steps": request.steps, "guidance": request.cfg,
                                  "sample_rate": rate})))
            runtime = RuntimeInfo(engine=self.name, reason=self.reason, device=loaded.device, dtype=loaded.dtype,
                                  attention="sdpa", model=loaded.model)
            results.append(RenderResult(request=request, images=outputs, runtime=runtime, timings=timings))
        return results


@hookimpl
def register_engines(register: Any) -> None:
    register(StableAudioEngine)
