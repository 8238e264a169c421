"""The `shap-e` engine: text-to-3D with OpenAI's Shap-E (diffusers' ShapEPipeline), output kind "mesh".

    RenderRequest(prompt="sword design", output="mesh", engine="shap-e", model="shap-e", steps=64, cfg=15.0,
                  options={"grid_size": 128})

The pipeline comes from a models.toml entry of `type = "3d"` (a diffusers pipeline folder, resolved offline,
weights checked before loading; `echo-os models pull shap-e`) and is kept in the one model cache
(echo_os/render/cache.py). The prior denoises the latent (`steps`, guidance `cfg`); the pipeline is asked for
the latent and the mesh is decoded here with its own renderer (ShapERenderer.decode_to_mesh) at `grid_size`
(marching cubes over grid_size**3 SDF queries: 128 is the published setting, smaller is faster and coarser).
The vertex colours the renderer predicts go into the mesh (GLB COLOR_0).

ShapEPipeline takes no step callback, so progress and cancel hook the prior: a forward pre-hook counts its
calls (Heun: 2 x steps - 1 per mesh) and raises out of the loop when cancel is set. One mesh per pipeline
call (max_batch 1), each from a CPU generator seeded with its seed: the same seed gives the same vertices.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from pydantic import Field

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
from echo_os.engines.draft_assets import MeshOptions
from echo_os.engines.folder_pipeline import LoadedPipeline, cached_folder_pipeline, release_folder_pipelines
from echo_os.engines.hookspecs import hookimpl
from echo_os.errors import CancelledError, OptionError, UsageError
from echo_os.render.results import RenderedAsset

if TYPE_CHECKING:
    from echo_os.render.requests import RenderRequest
    from echo_os.settings import Settings

log = logging.getLogger(__name__)
SHAP_E_KIND = "shap-e"  # the model cache's kind of this module's entries


class ShapEOptions(MeshOptions):
    grid_size: int = Field(default=128, ge=8, le=256, description="Marching-cubes grid (the mesh's resolution).")




class _Cancel(Exception):
    pass




def mesh_from_output(output: Any) -> Any:
    """A trimesh.Trimesh from the renderer's MeshDecoderOutput (vertex colours from its R, G, B channels)."""
    import numpy as np
    import trimesh

    vertices = output.verts.detach().float().cpu().numpy()
    faces = output.faces.detach().cpu().numpy()
    colours = None
    channels = output.vertex_channels or {}
    if all(name in channels for name in "RGB"):
        rgb = np.stack([channels[name].detach().float().cpu().numpy() for name in "RGB"], axis=1)
        colours = np.concatenate([np.clip(rgb * 255, 0, 255), np.full((len(rgb), 1), 255)], axis=1).astype(np.uint8)
    return trimesh.Trimesh(vertices=vertices, faces=faces, vertex_colors=colours, process=False)


class ShapEEngine(BaseEngine):
    """A mesh per seed from a text prompt (Shap-E)."""

    name = "shap-e"
    # img2img: `echo-os lift ID` (the init image conditions ShapEImg2ImgPipeline; strength does not apply)
    capabilities = Capabilities(output="mesh", needs_weights=True, img2img=True, max_batch=1)
    Options = ShapEOptions

    @classmethod
    def check_request(cls, settings: "Settings", request: "RenderRequest", options: Any) -> None:
        from echo_os.models import load_registry

        entry = load_registry(settings).get(request.model)
        if entry.type != "3d":
            raise OptionError(f"{entry.label} is a {entry.type} model, not a 3D pipeline; pick a `type = \"3d\"` "
                              "entry such as shap-e (see `echo-os models list`)", "model")

    def runs_on_cpu(self, request: "RenderRequest") -> bool:
        return runs_on_cpu(request.device)

    def release(self, request: "RenderRequest") -> None:
        release_folder_pipelines(self.settings, request.model, SHAP_E_KIND)

    def loaded(self, request: "RenderRequest") -> LoadedPipeline:
        from echo_os.models import load_registry

        entry = load_registry(self.settings).get(request.model)
        if entry.type != "3d":
            raise UsageError(f"{entry.label} is a {entry.type} model, not a 3D pipeline.")
        return cached_folder_pipeline(self.settings, request, SHAP_E_KIND)

    def render(self, requests: list["RenderRequest"], *, progress: ProgressCallback | None = None,
               cancel: threading.Event | None = None) -> list[RenderResult]:
        import torch

        from echo_os.artifacts.assets import turntable_sheet

        meshes_total = sum(request.count for request in requests)
        results = []
        done = 0
        calls_per_mesh: dict[int, int] = {}
        for request in requests:
            options = ShapEOptions.model_validate(dict(request.options))
            timings = Timings()
            started = time.perf_counter()
            loaded = self.loaded(request)
            timings.load_s = round(time.perf_counter() - started, 4)
            pipe = loaded.pipe
            if request.steps not in calls_per_mesh:  # Heun evaluates the prior twice per step but the last
                pipe.scheduler.set_timesteps(request.steps)
                calls_per_mesh[request.steps] = len(pipe.scheduler.timesteps)
            total = sum(calls_per_mesh.get(r.steps, 2 * r.steps - 1) * r.count for r in requests)

            def on_prior_call(module: Any, args: Any, total: int = total) -> None:
                nonlocal done
                if cancel is not None and cancel.is_set():
                    raise _Cancel()
                done += 1
                if progress is not None:
                    progress(ProgressEvent(step=min(done, total), total_steps=total, images=meshes_total))

            image = None
            if request.init_image is not None:
                from echo_os.engines.inputs import load_init_image

                image = load_init_image(self.settings, request.init_image)
            lifts = type(pipe).__name__ == "ShapEImg2ImgPipeline"
            if lifts != (image is not None):
                raise UsageError(f"model {request.model} is {'an image' if lifts else 'a text'}-to-3D pipeline: "
                                 + ("give it an image (`echo-os lift ID`)." if lifts else
                                    "lift an image with an image-to-3D entry such as shap-e-img2img."))
            outputs = []
            with loaded.lock, torch.inference_mode():
                for seed in request.seeds:
                    if cancel is not None and cancel.is_set():
                        raise CancelledError("3D render cancelled; nothing was saved")
                    hook = pipe.prior.register_forward_pre_hook(on_prior_call)
                    began = time.perf_counter()
                    try:
                        latents = pipe(image if lifts else request.prompt, num_inference_steps=request.steps,
                                       guidance_scale=request.cfg, output_type="latent",
                                       generator=torch.Generator("cpu").manual_seed(seed)).images
                    except _Cancel:
                        raise CancelledError("3D render cancelled; nothing was saved") from None
                    finally:
                        hook.remove()
                    timings.denoise_s += round(time.perf_counter() - began, 4)
                    began = time.perf_counter()
                    decoded = pipe.shap_e_renderer.decode_to_mesh(latents[0][None], loaded.device,
                                                                  grid_size=options.grid_size)
                    mesh = mesh_from_output(decoded)
                    timings.decode_s += round(time.perf_counter() - began, 4)
                    outputs.append(RenderedImage(image=turntable_sheet(mesh), seed=seed, asset=RenderedAsset(
                        kind="mesh", data=mesh, settings={"steps": request.steps, "guidance": request.cfg,
                                                          "grid_size": options.grid_size,
                                                          "formats": options.format_list})))
            runtime = RuntimeInfo(engine=self.name, reason=self.reason, device=loaded.device, dtype=loaded.dtype,
                                  attention="sdpa", model=loaded.model)
            results.append(RenderResult(request=request, images=outputs, runtime=runtime, timings=timings))
        return results


@hookimpl
def register_engines(register: Any) -> None:
    register(ShapEEngine)
