"""The request that lifts an image artifact to a 3D model (`echo-os lift ID`, the mesh task of an assets plan).

A RenderRequest with output "mesh" and the image as its init_image (by its path under the artifacts folder and
its sha256 = its id), rendered by a mesh engine that takes an image (shap-e with a ShapEImg2ImgPipeline entry);
the mesh records the image as its parent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from echo_os.artifacts.store import Artifact
    from echo_os.render.requests import Device, RenderRequest
    from echo_os.settings import Settings


def lift_request(settings: "Settings", parent: "Artifact", *, model: str, seed: int, steps: int, cfg: float,
                 grid_size: int, device: "Device") -> "RenderRequest":
    """The lift of `parent` (an image artifact; another kind is one OptionError line)."""
    from echo_os.artifacts.meta import IMAGE_KINDS, require_kind
    from echo_os.render.requests import InitImage, RenderRequest

    require_kind(parent.id, parent.meta, IMAGE_KINDS, "lift", needs="an image artifact")
    try:  # relative to the artifacts folder, so a moved workspace still finds it
        path = parent.image_path.resolve().relative_to(settings.artifacts_dir.resolve()).as_posix()
    except ValueError:
        path = str(parent.image_path)
    return RenderRequest(prompt=parent.meta.prompt, output="mesh", model=model, seed=seed, steps=steps, cfg=cfg,
                         device=device, options={"grid_size": grid_size}, project=parent.meta.project,
                         parent_id=parent.id, story=parent.meta.story,
                         init_image=InitImage(artifact_id=parent.id, path=path, sha256=parent.id, strength=1.0))
