"""Draft engines for the other modalities: `draft-mesh` (output kind "mesh") and `draft-audio` ("audio").

Like the `draft` card for images they need no weights, so a fresh machine can plan and lay out game assets
and a story's soundtrack before any model is pulled; and like the card they never pass for a generated
result: the artifact's meta.json says `placeholder: true`, the GLB's scene extras carry the prompt and the
flag, and the preview is labelled PLACEHOLDER.

- draft-mesh: a blade-like primitive (a tapered blade, a crossguard, a grip and a pommel, trimesh's boxes,
  cylinder and sphere) whose proportions come from the seed: the same seed gives the same vertices.
- draft-audio: a quiet tone bed (a soft chord of sines with a slow swell and a little seeded noise, peaking
  near -24 dBFS, faded in and out) of `seconds` at `sample_rate`, mono; the chord's root comes from the seed.

Both are deterministic and batch freely (each output depends on its seed alone). Progress is one step per
output; cancel is checked before each.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field, field_validator

from echo_os.engines.base import (
    BaseEngine,
    Capabilities,
    EngineOptions,
    ProgressCallback,
    ProgressEvent,
    RenderedImage,
    RenderResult,
    RuntimeInfo,
    Timings,
)
from echo_os.engines.hookspecs import hookimpl
from echo_os.errors import CancelledError
from echo_os.render.results import RenderedAsset

if TYPE_CHECKING:
    from echo_os.render.requests import RenderRequest

PLACEHOLDER = "PLACEHOLDER"
MAX_SECONDS = 600.0


class MeshOptions(EngineOptions):
    formats: str = Field(default="", description="Files beside mesh.glb, comma-separated: obj, ply.")

    @field_validator("formats")
    @classmethod
    def _known(cls, value: str) -> str:
        from echo_os.artifacts.assets import MESH_FORMATS

        for name in filter(None, value.split(",")):
            if name.strip() not in MESH_FORMATS:
                raise ValueError(f"format {name.strip()!r} is not one of {', '.join(MESH_FORMATS)}")
        return value

    @property
    def format_list(self) -> list[str]:
        return [name.strip() for name in self.formats.split(",") if name.strip() and name.strip() != "glb"]


class AudioOptions(EngineOptions):
    seconds: float = Field(default=5.0, gt=0.0, le=MAX_SECONDS, allow_inf_nan=False, description="Length.")
    sample_rate: int = Field(default=32000, ge=8000, le=96000, description="Samples per second.")


def placeholder_mesh(seed: int) -> Any:
    """A blade-like primitive, its proportions drawn from `seed` (see the module docstring)."""
    import trimesh

    rng = np.random.default_rng(seed)
    length, width = float(rng.uniform(0.8, 1.2)), float(rng.uniform(0.06, 0.12))
    guard = float(rng.uniform(0.25, 0.4))
    blade = trimesh.creation.box(extents=(width, length, width / 4))
    tip = blade.vertices[:, 1] > 0  # taper the blade towards its tip
    blade.vertices[tip, 0] *= 0.35
    blade.apply_translation((0, length / 2, 0))
    crossguard = trimesh.creation.box(extents=(guard, 0.04, 0.06))
    grip = trimesh.creation.cylinder(radius=0.025, height=0.22, sections=12)
    grip.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, (1, 0, 0)))  # type: ignore[no-untyped-call]
    grip.apply_translation((0, -0.13, 0))
    pommel = trimesh.creation.icosphere(subdivisions=1, radius=0.04)
    pommel.apply_translation((0, -0.26, 0))
    return trimesh.util.concatenate([blade, crossguard, grip, pommel])


def tone_bed(seed: int, seconds: float, sample_rate: int) -> np.ndarray:
    """A quiet chord bed, float32 mono (frames, 1); see the module docstring."""
    rng = np.random.default_rng(seed)
    frames = max(1, int(round(seconds * sample_rate)))
    t = np.arange(frames) / sample_rate
    root = 110.0 * 2 ** (int(rng.integers(0, 12)) / 12)
    signal = np.zeros(frames)
    for ratio, level in ((1.0, 1.0), (1.5, 0.6), (2.0, 0.45), (2.52, 0.3)):
        signal += level * np.sin(2 * np.pi * root * ratio * t + rng.uniform(0, 2 * np.pi))
    swell = 0.75 + 0.25 * np.sin(2 * np.pi * rng.uniform(0.05, 0.2) * t)
    noise = np.convolve(rng.standard_normal(frames), np.ones(32) / 32, mode="same")  # soft, low
    signal = signal / 2.35 * swell + 0.15 * noise
    fade = min(frames // 4, int(0.5 * sample_rate))
    if fade:
        ramp = np.linspace(0.0, 1.0, fade)
        signal[:fade] *= ramp
        signal[-fade:] *= ramp[::-1]
    peak = float(np.abs(signal).max()) or 1.0
    return (signal / peak * 0.063).astype(np.float32)[:, None]  # about -24 dBFS


class _DraftAsset(BaseEngine):
    def make(self, request: "RenderRequest", seed: int) -> RenderedImage:
        raise NotImplementedError

    def render(self, requests: list["RenderRequest"], *, progress: ProgressCallback | None = None,
               cancel: threading.Event | None = None) -> list[RenderResult]:
        total = sum(request.count for request in requests)
        done = 0
        results = []
        for request in requests:
            started = time.perf_counter()
            outputs = []
            for seed in request.seeds:
                if cancel is not None and cancel.is_set():
                    raise CancelledError(f"{self.name} cancelled; nothing was saved")
                outputs.append(self.make(request, seed))
                done += 1
                if progress is not None:
                    progress(ProgressEvent(step=done, total_steps=total, images=total))
            timings = Timings(denoise_s=round(time.perf_counter() - started, 4))
            runtime = RuntimeInfo(engine=self.name, reason=self.reason, device="cpu", dtype="float32",
                                  attention="none", model=None)
            results.append(RenderResult(request=request, images=outputs, runtime=runtime, timings=timings))
        return results


class DraftMeshEngine(_DraftAsset):
    """A labelled placeholder mesh per seed (no weights)."""

    name = "draft-mesh"
    capabilities = Capabilities(output="mesh", needs_weights=False, max_batch=16)
    Options = MeshOptions

    def make(self, request: "RenderRequest", seed: int) -> RenderedImage:
        from echo_os.artifacts.assets import turntable_sheet

        options = MeshOptions.model_validate(dict(request.options))
        mesh = placeholder_mesh(seed)
        return RenderedImage(image=turntable_sheet(mesh, PLACEHOLDER), seed=seed, asset=RenderedAsset(
            kind="mesh", data=mesh, placeholder=True,
            settings={"generator": "placeholder blade primitive", "formats": options.format_list}))


class DraftAudioEngine(_DraftAsset):
    """A quiet labelled tone bed per seed (no weights)."""

    name = "draft-audio"
    capabilities = Capabilities(output="audio", needs_weights=False, max_batch=16)
    Options = AudioOptions

    def make(self, request: "RenderRequest", seed: int) -> RenderedImage:
        from echo_os.artifacts.assets import audio_preview

        options = AudioOptions.model_validate(dict(request.options))
        samples = tone_bed(seed, options.seconds, options.sample_rate)
        return RenderedImage(image=audio_preview(samples, options.sample_rate, f"{PLACEHOLDER} tone bed"), seed=seed,
                             asset=RenderedAsset(kind="audio", data=samples, sample_rate=options.sample_rate,
                                                 placeholder=True,
                                                 settings={"generator": "placeholder tone bed",
                                                           "seconds": options.seconds,
                                                           "sample_rate": options.sample_rate}))


@hookimpl
def register_engines(register: Any) -> None:
    register(DraftMeshEngine)
    register(DraftAudioEngine)
