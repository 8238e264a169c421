"""`echo-os lift ID`: an image artifact (a concept image) -> a 3D model, through an image-to-3D engine.

The request is a RenderRequest with output "mesh" and the image as its init_image (lift_request), rendered
through the one renderer by the mesh engine `auto` finds for it (shap-e with a ShapEImg2ImgPipeline entry,
`type = "3d"`); the mesh artifact records the image as its parent.
"""

from __future__ import annotations

import json
from typing import Any

import click

from echo_os.cli import settings_from
from echo_os.iterate.lift import lift_request


@click.command()
@click.argument("artifact_id", metavar="ID")
@click.option("--model", default="shap-e-img2img", show_default=True,
              help="An image-to-3D pipeline (models.toml, type = \"3d\").")
@click.option("--seed", type=int, default=None, help="Seed (default: the image's own seed).")
@click.option("--steps", type=click.IntRange(1, 200), default=64, show_default=True,
              help="Denoising steps of the image-to-3D model (1-200).")
@click.option("--cfg", type=float, default=3.0, show_default=True, help="Guidance scale.")
@click.option("--grid-size", type=click.IntRange(8, 256), default=128, show_default=True,
              help="Marching-cubes grid (the mesh's resolution).")
@click.option("--device", type=click.Choice(["auto", "cuda", "cpu", "mps"]), default="auto", show_default=True,
              help="Where the model runs (auto: CUDA when present, else the CPU).")
@click.option("--json", "as_json", is_flag=True, help="Print the artifact as JSON.")
@click.pass_context
def lift(ctx: click.Context, artifact_id: str, model: str, seed: int | None, steps: int, cfg: float, grid_size: int,
         device: str, as_json: bool) -> None:
    """Lift an image artifact to a 3D model (mesh.glb + turntable), its parent the image.

    \b
      echo-os models pull shap-e-img2img
      echo-os lift 3f9a1c2b7d4e
    """
    from echo_os.artifacts.store import ArtifactStore
    from echo_os.cli.render import StepBar
    from echo_os.render.scheduler import render_requests

    settings = settings_from(ctx)
    store = ArtifactStore(settings)
    try:
        parent = store.open(artifact_id)
        request = lift_request(settings, parent, model=model, seed=parent.meta.seed if seed is None else seed,
                               steps=steps, cfg=cfg, grid_size=grid_size,
                               device=device)  # type: ignore[arg-type]
        bar = StepBar(1)
        try:
            outcome = render_requests(settings, [request], store=store, progress=bar)
        finally:
            bar.close()
    finally:
        store.close()
    artifact = (outcome.artifacts or outcome.resumed)[0]
    meta: Any = artifact.meta  # an AssetMeta (kind "mesh")
    if as_json:
        click.echo(json.dumps({**artifact.summary(), "mesh": str(artifact.path / meta.file),
                               "parent_id": artifact.meta.parent_id}, indent=2))
        return
    click.echo(f"{artifact.id[:12]}  {artifact.path / meta.file}")
    click.echo(f"{meta.vertices} vertices, {meta.faces} faces, from {parent.id[:12]}")
