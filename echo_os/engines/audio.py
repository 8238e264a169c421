"""The `stable-audio` and `audioldm2` engines: text-to-audio with diffusers' StableAudioPipeline and
AudioLDM2Pipeline, output kind "audio".

    RenderRequest(prompt="rain on a tin roof, distant thunder", output="audio", engine="stable-audio",
                  model="stable-audio-open", steps=100, cfg=7.0, options={"seconds": 10})

The pipeline comes from a models.toml entry of `type = "audio"` (a diffusers pipeline folder, resolved offline,
weights checked before loading; `echo-os models pull stable-audio-open`) and is kept in the one model cache.
It renders `seconds` of sound at the VAE's sampling rate (44.1 kHz stereo for Stable Audio Open, up to the
length its transformer covers: 47 s), one per seed from a CPU generator (the same seed gives the same
samples). Progress is the pipeline's per-step callback; cancel raises out of it. Stable Audio Open's folder
names CosineDPMSolverMultistepScheduler (sigmas 0.3 to 500 on an exponential schedule, v-prediction, second
order, midpoint), the scheduler the engine keeps: it draws its SDE noise with torchsde (a dependency for that
reason) seeded from the pipeline's generator, so the same seed still gives the same samples.

    RenderRequest(prompt="rain on a tin roof, distant thunder", output="audio", engine="audioldm2",
                  model="audioldm2", steps=200, cfg=3.5, options={"seconds": 10})

The `audioldm2` engine renders AudioLDM 2 folders the same way: 16 kHz mono from the vocoder, any length the
UNet's convolutions take (the pipeline pads the mel frames to the VAE's multiple and cuts the sound back;
AudioLDM 2 was trained on 10.24 s clips). Each engine reads the folder's model_index.json before loading and
refuses the other's pipeline in one line, so `auto` takes the engine that fits the entry.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable
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


def _folder_pipeline_class(settings: "Settings", model: str) -> str | None:
    """The pipeline class a folder's model_index.json names; None when the weights are not here."""
    import json

    from echo_os.models import ResolveError, load_registry

    try:
        folder = load_registry(settings).resolve(model).local_path
        name = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))["_class_name"]
    except (ResolveError, OSError, ValueError, KeyError, TypeError):
        return None
    return name if isinstance(name, str) else None


class _TextToAudioEngine(BaseEngine):
    """What the text-to-audio folder engines share: the model checks, the model cache, the render loop (one
    sound per seed from a CPU generator, progress per step, cancel between and within sounds)."""

    capabilities = Capabilities(output="audio", needs_weights=True, max_batch=1)
    Options = StableAudioOptions
    pipeline_class = ""
    example_model = ""

    @classmethod
    def check_request(cls, settings: "Settings", request: "RenderRequest", options: Any) -> None:
        from echo_os.models import load_registry

        entry = load_registry(settings).get(request.model)
        if entry.type != "audio":
            raise OptionError(f"{entry.label} is a {entry.type} model, not a text-to-audio pipeline; pick a "
                              f"`type = \"audio\"` entry such as {cls.example_model} (see `echo-os models list`)",
                              "model")
        found = _folder_pipeline_class(settings, request.model)
        if found is not None and found != cls.pipeline_class:
            other = next((engine.name for engine in ENGINES if engine.pipeline_class == found), None)
            raise OptionError(f"{request.model} is a {found} folder; the {cls.name} engine renders "
                              f"{cls.pipeline_class} only" + (f" (use --engine {other})" if other else ""), "model")
        cls.check_length(settings, request, options)

    @classmethod
    def check_length(cls, settings: "Settings", request: "RenderRequest", options: Any) -> None:
        """Refuse a length the model cannot make, from its configs, before anything loads."""

    def runs_on_cpu(self, request: "RenderRequest") -> bool:
        return runs_on_cpu(request.device)

    def release(self, request: "RenderRequest") -> None:
        release_folder_pipelines(self.settings, request.model, AUDIO_KIND)

    def loaded(self, request: "RenderRequest") -> LoadedPipeline:
        return cached_folder_pipeline(self.settings, request, AUDIO_KIND)

    def check_pipe(self, pipe: Any, request: "RenderRequest", options: StableAudioOptions) -> int:
        """The loaded pipeline's sampling rate, after refusing a pipeline or a length it does not make."""
        if type(pipe).__name__ != self.pipeline_class:
            raise UsageError(f"model {request.model} is a {type(pipe).__name__}; the {self.name} engine renders "
                             f"{self.pipeline_class} folders only.")
        return self.sampling_rate(pipe)

    def sampling_rate(self, pipe: Any) -> int:
        raise NotImplementedError

    def sound(self, pipe: Any, request: "RenderRequest", options: StableAudioOptions, seed: int,
              on_step: Callable[[int, Any, Any], None]) -> Any:
        """One sound for `seed`: float samples of shape (frames, channels)."""
        raise NotImplementedError

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
            rate = self.check_pipe(pipe, request, options)

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
                        samples = np.clip(self.sound(pipe, request, options, seed, on_step), -1.0, 1.0)
                    except _Cancel:
                        raise CancelledError("sound cancelled; nothing was saved") from None
                    timings.denoise_s += round(time.perf_counter() - began, 4)
                    outputs.append(RenderedImage(image=audio_preview(samples, rate), seed=seed, asset=RenderedAsset(
                        kind="audio", data=samples, sample_rate=rate,
                        settings={"seconds": options.seconds, "steps": request.steps, "guidance": request.cfg,
                                  "sample_rate": rate})))
            runtime = RuntimeInfo(engine=self.name, reason=self.reason, device=loaded.device, dtype=loaded.dtype,
                                  attention="sdpa", model=loaded.model)
            results.append(RenderResult(request=request, images=outputs, runtime=runtime, timings=timings))
        return results


class StableAudioEngine(_TextToAudioEngine):
    """A sound per seed from a text prompt (Stable Audio)."""

    name = "stable-audio"
    pipeline_class = "StableAudioPipeline"
    example_model = "stable-audio-open"

    @classmethod
    def check_length(cls, settings: "Settings", request: "RenderRequest", options: Any) -> None:
        longest = _longest_seconds(settings, request.model)
        if longest is not None and options.seconds > longest + 1e-9:
            raise OptionError(f"--seconds {options.seconds:g} is longer than {request.model} makes "
                              f"({longest:g} s at most)", "seconds")

    def check_pipe(self, pipe: Any, request: "RenderRequest", options: StableAudioOptions) -> int:
        rate = super().check_pipe(pipe, request, options)
        longest = pipe.transformer.config.sample_size * pipe.vae.hop_length / rate
        if options.seconds > longest + 1e-9:
            raise OptionError(f"--seconds {options.seconds:g} is longer than {request.model} makes "
                              f"({longest:g} s at most)", "seconds")
        return rate

    def sampling_rate(self, pipe: Any) -> int:
        return int(pipe.vae.config.sampling_rate)

    def sound(self, pipe: Any, request: "RenderRequest", options: StableAudioOptions, seed: int,
              on_step: Callable[[int, Any, Any], None]) -> Any:
        import torch

        with warnings.catch_warnings():
            # torchsde's Brownian tree notes float rounding at the schedule's ends (sigma 0.3 and 500) each step
            warnings.filterwarnings("ignore", message="Should have t", category=UserWarning)
            audios = pipe(request.prompt, negative_prompt=request.negative_prompt, audio_end_in_s=options.seconds,
                          num_inference_steps=request.steps, guidance_scale=request.cfg,
                          generator=torch.Generator("cpu").manual_seed(seed), callback=on_step,
                          callback_steps=1).audios
        return audios[0].float().cpu().numpy().T  # (frames, channels)


class AudioLDM2Engine(_TextToAudioEngine):
    """A sound per seed from a text prompt (AudioLDM 2: 16 kHz mono)."""

    name = "audioldm2"
    pipeline_class = "AudioLDM2Pipeline"
    example_model = "audioldm2"

    def check_pipe(self, pipe: Any, request: "RenderRequest", options: StableAudioOptions) -> int:
        import math

        rate = super().check_pipe(pipe, request, options)
        shortest = math.prod(pipe.vocoder.config.upsample_rates) / rate * pipe.vae_scale_factor
        if options.seconds < shortest - 1e-9:
            raise OptionError(f"--seconds {options.seconds:g} is shorter than {request.model} makes "
                              f"({shortest:g} s at least)", "seconds")
        return rate

    def sampling_rate(self, pipe: Any) -> int:
        return int(pipe.vocoder.config.sampling_rate)

    def sound(self, pipe: Any, request: "RenderRequest", options: StableAudioOptions, seed: int,
              on_step: Callable[[int, Any, Any], None]) -> Any:
        import numpy as np
        import torch

        audios = pipe(request.prompt, negative_prompt=request.negative_prompt, audio_length_in_s=options.seconds,
                      num_inference_steps=request.steps, guidance_scale=request.cfg, num_waveforms_per_prompt=1,
                      generator=torch.Generator("cpu").manual_seed(seed), callback=on_step, callback_steps=1,
                      output_type="np").audios
        return np.asarray(audios[0], dtype=np.float32).reshape(-1, 1)  # mono: (frames, 1)


ENGINES: tuple[type[_TextToAudioEngine], ...] = (StableAudioEngine, AudioLDM2Engine)


@hookimpl
def register_engines(register: Any) -> None:
    for engine in ENGINES:
        register(engine)
