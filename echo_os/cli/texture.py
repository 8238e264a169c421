"""`echo-os texture-check ID`: how visible an artifact's wrap-around seam is, and a tiled preview of it."""

from __future__ import annotations

import json

import click

from echo_os.cli import settings_from


def tiled_preview_path(settings, artifact_id: str):
    """artifacts/.cache/tiled/<id>.png: the 2x2 preview (made once: an artifact's image never changes)."""
    return settings.cache_dir / "tiled" / f"{artifact_id}.png"


@click.command("texture-check")
@click.argument("artifact_id")
@click.option("--json", "as_json", is_flag=True, help="Print the measure as JSON.")
@click.pass_context
def texture_check(ctx: click.Context, artifact_id: str, as_json: bool) -> None:
    """Measure the seam of ARTIFACT_ID and write a 2x2 tiled preview.

    The ratio is the mean difference across the wrap edge (last column to first, last row to first)
    over the mean difference between neighbouring columns/rows inside the image: about 1 means the edges
    meet like any other neighbours. The seam is |ln ratio|: 0 is a perfect wrap, and the larger it is the
    more a line shows when the image is tiled (look at the preview).
    """
    import os

    from PIL import Image

    from echo_os.artifacts.meta import IMAGE_KINDS, ArtifactMeta, require_kind
    from echo_os.artifacts.store import ArtifactStore
    from echo_os.engines.tiling import seam_score, tiled_preview

    settings = settings_from(ctx)
    store = ArtifactStore(settings)
    try:
        artifact = store.open(artifact_id)
    finally:
        store.close()
    require_kind(artifact.id, artifact.meta, IMAGE_KINDS, "texture-check")
    assert isinstance(artifact.meta, ArtifactMeta)  # the image kinds' meta.json
    axes = artifact.meta.tile or "xy"  # an untiled image is measured on both axes, for comparison
    with Image.open(artifact.image_path) as image:
        image.load()
    score = seam_score(image, axes)
    preview = tiled_preview_path(settings, artifact.id)
    if not preview.exists():
        preview.parent.mkdir(parents=True, exist_ok=True)
        temporary = preview.with_suffix(f".{os.getpid()}.tmp")
        tiled_preview(image, axes).save(temporary, format="PNG")
        os.replace(temporary, preview)
    report = {"id": artifact.id, "tile": artifact.meta.tile, "seam": score.as_dict(), "verdict": score.verdict,
              "preview": str(preview)}
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    tiled = f"tiled {artifact.meta.tile}" if artifact.meta.tile else "not rendered with --tile"
    parts = ", ".join(f"{axis} {score.seams[axis]:.3f} (ratio {ratio:.2f})" for axis, ratio in score.ratios.items())
    click.echo(f"{artifact.id[:12]} ({tiled}): seam {parts}; 0 = the wrap edge looks like any other neighbours")
    advice = {"seamless": "it tiles without a line",
              "faint seam": "a line may show when tiled; look at the preview",
              "visible seam": "a line shows when tiled" + ("" if artifact.meta.tile else "; render it with --tile")}
    click.echo(f"verdict: {score.verdict}: {advice[score.verdict]}")
    click.echo(f"tiled preview: {preview}")
